//! WebSocket protocol conformance through the real binary: the Autobahn TestSuite's
//! cases, run by kosoku (a Python 3 runner of Autobahn's own case files), both ways —
//! the fuzzing client through tether to a `ws` echo server, and a `ws` client through
//! tether to the fuzzing server — so every framing, fragmentation, UTF-8, close and
//! compression case crosses tether's frame tracking in both directions and must pass
//! as it does without tether. The driver is `tests/conformance/run.py`.
//!
//! Needs `pip install kosoku` and `npm ci` in `tests/interop` (`.ci/run` does both).
//! Where either is missing the test says so and passes, unless
//! TETHER_REQUIRE_CONFORMANCE=1 (set by CI) makes that a failure.

use std::path::Path;
use std::process::Command;

#[test]
fn autobahn_cases_pass_through_tether_both_ways() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let has_kosoku = Command::new("python3")
        .args(["-c", "import kosoku"])
        .output()
        .is_ok_and(|o| o.status.success());
    let has_ws = root.join("tests/interop/node_modules/ws").exists();
    if !has_kosoku || !has_ws {
        assert!(
            std::env::var("TETHER_REQUIRE_CONFORMANCE").is_err(),
            "needs `pip install kosoku` (found: {has_kosoku}) and `npm ci` in tests/interop (found: {has_ws})"
        );
        eprintln!("skipped: needs `pip install kosoku` and `npm ci` in tests/interop");
        return;
    }
    let out = Command::new("python3")
        .arg(root.join("tests/conformance/run.py"))
        .arg(env!("CARGO_BIN_EXE_tether"))
        .output()
        .expect("python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for mode in ["fuzzingclient", "fuzzingserver"] {
        let passed: usize = stdout
            .lines()
            .find_map(|l| {
                l.strip_prefix(&format!("{mode}: "))?
                    .strip_suffix(" cases passed")
            })
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {mode} summary:\n{stdout}\n{stderr}"));
        // The selection in run.py holds 305 cases; fewer means cases went missing.
        assert!(passed >= 300, "{mode}: only {passed} cases ran:\n{stdout}");
    }
}
