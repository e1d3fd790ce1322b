//! README's placement reference implementation (Python) agrees with tether on 2,000
//! keys, for equal and mixed weights. This is what lets an app compute owners itself.
//!
//! Needs `python3` with the `xxhash` package (`.ci/run` installs it). Where it is
//! missing the test says so and passes, unless TETHER_REQUIRE_REFERENCE=1 (set by CI).

use std::io::Write;
use std::process::{Command, Stdio};

use tether::balance::Table;
use tether::principal::Principal;

fn readme_snippet() -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme
        .find("# placement-reference")
        .expect("README lost its reference snippet");
    let end = start + readme[start..].find("```").unwrap();
    readme[start..end].to_owned()
}

#[test]
fn readme_reference_implementation_agrees() {
    let probe = Command::new("python3")
        .args(["-c", "import xxhash"])
        .status();
    if !matches!(probe, Ok(s) if s.success()) {
        assert!(
            std::env::var("TETHER_REQUIRE_REFERENCE").is_err(),
            "python3 with xxhash is required (pip install xxhash)"
        );
        eprintln!("skipped: python3 with the xxhash package is not installed");
        return;
    }
    let setups: [&[(&str, u32)]; 2] = [
        &[("a", 1), ("b", 1), ("c", 1), ("10.0.0.4:8080", 1)],
        &[
            ("node-1", 1),
            ("node-2", 3),
            ("node-3", 2),
            ("node-4", 1),
            ("node-5", 5),
        ],
    ];
    for backends in setups {
        let table = Table::new(backends.iter().copied());
        let keys: Vec<String> = (0..1000).map(|i| format!("user-{i}@example.com")).collect();
        let script = format!(
            "{}\nimport json, sys\nd = json.load(sys.stdin)\nfor k in d['keys']:\n    print(order(k.encode(), [tuple(b) for b in d['backends']])[0])\n",
            readme_snippet()
        );
        let input = serde_json::json!({ "keys": keys, "backends": backends }).to_string();
        let mut child = Command::new("python3")
            .args(["-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let python: Vec<String> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect();
        assert_eq!(python.len(), keys.len());
        for (key, py) in keys.iter().zip(&python) {
            let ours = backends[table
                .owner(Principal::from_bytes(key.as_bytes()).key())
                .unwrap()]
            .0;
            assert_eq!(ours, py, "{key}");
        }
    }
}
