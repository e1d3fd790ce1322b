//! The binary's subcommands: `check` (summary or file:line:col and exit 1), `owner`
//! (the same placement the proxy uses, pinned to independently computed answers),
//! `run` (serves, exits 0 on SIGTERM, names file and address when a port is taken) and `demo` (three nodes behind tether);
//! and that README's TOML examples are configs `check` accepts.

mod common;

use std::process::Command;

use common::*;

fn tether(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_accepts_the_shipped_example_and_summarises_it() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/tether.toml");
    let (code, out, err) = tether(&["check", "--config", path]);
    assert_eq!(code, 0, "{err}");
    for expect in [
        "listeners:",
        "127.0.0.1:8080",
        "routes:",
        "chat.example.com /push/ -> app",
        "follow socket",
        "upstreams:",
        "share  50.0%",
        "c ",
    ] {
        assert!(out.contains(expect), "missing {expect:?} in:\n{out}");
    }
    assert!(!out.contains("warnings:"), "{out}");
}

/// Every TOML example in README is a config `tether check` accepts, once completed with
/// what it leaves out (a listener, the upstreams its routes name) and with certificates
/// where it names `conf/certs/` files: a reader who copies one gets no unknown key.
#[test]
fn check_accepts_every_toml_example_in_the_readme() {
    let readme = include_str!("../README.md");
    let pki = pki::Pki::new();
    pki.leaf("default", &["localhost"]);
    pki.leaf("chat", &["chat.example.com"]);
    let certs = format!("{}/", pki.dir.path().display());
    let examples: Vec<&str> = readme
        .split("```toml\n")
        .skip(1)
        .map(|rest| rest.split_once("```").expect("an unclosed ```toml block").0)
        .collect();
    assert!(examples.len() >= 8, "found {} examples", examples.len());
    for example in examples {
        let mut text = example.replace("conf/certs/", &certs);
        if !text.contains("[[listener]]") {
            text.push_str("\n[[listener]]\nbind = \"127.0.0.1:0\"\n");
        }
        let named: Vec<&str> = example
            .lines()
            .filter_map(|l| l.trim().strip_prefix("upstream = \""))
            .filter_map(|rest| rest.split_once('"').map(|(name, _)| name))
            .collect();
        for name in named {
            if !text.contains(&format!("[upstream.{name}]")) {
                text.push_str(&format!(
                    "\n[upstream.{name}]\nbackends = [\"127.0.0.1:1\"]\n"
                ));
            }
        }
        let (_dir, path) = write_config(&text);
        let (code, _, err) = tether(&["check", "--config", &path]);
        assert_eq!(
            code, 0,
            "README example:\n{example}\ncompleted as:\n{text}\n{err}"
        );
    }
}

#[test]
fn check_warns_of_what_is_valid_but_probably_not_meant() {
    let (_dir, path) = write_config(
        "[[listener]]\nbind = \"127.0.0.1:0\"\n[upstream.spare]\nbackends = [\"127.0.0.1:1\"]\n",
    );
    let (code, out, err) = tether(&["check", "--config", &path]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("warnings:\n  no [[route]]"), "{out}");
    assert!(
        out.contains("upstream `spare` is used by no route"),
        "{out}"
    );
}

/// `tether check | head -0`: a reader that went away is not a reason to panic.
#[test]
fn check_into_a_closed_pipe_still_exits_0() {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let status = Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(["check", "--config", "conf/tether.toml"])
        .stdout(writer)
        .status()
        .unwrap();
    assert!(status.success(), "{status:?}");
}

/// Any other failure to write the output is one: `tether check > /dev/full`.
#[cfg(target_os = "linux")]
#[test]
fn check_into_a_full_disk_exits_1() {
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(["check", "--config", "conf/tether.toml"])
        .stdout(full)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("No space left on device"));
}

#[test]
fn check_reports_file_line_column_and_exits_1() {
    let (_dir, path) = write_config(
        "[[listener]]\nbind = \"127.0.0.1:0\"\n\n[[route]]\npath = \"/\"\nupstream = \"nope\"\n",
    );
    let (code, out, err) = tether(&["check", "--config", &path]);
    assert_eq!(code, 1);
    assert!(out.is_empty(), "{out}");
    assert_eq!(
        err.trim(),
        format!("{path}:6:12: unknown upstream `nope`; defined: none")
    );

    let (code, _, err) = tether(&["check", "--config", "/nonexistent/tether.toml"]);
    assert_eq!(code, 1);
    assert_eq!(
        err.trim(),
        "/nonexistent/tether.toml: cannot read: No such file or directory (os error 2)",
        "the cause once"
    );

    let (_dir, path) = write_config(
        "[[listener]]\nbind = \"127.0.0.1:0\"\n[[route]]\npath = \"/\"\nupstream = \"app\"\n\
         [upstream.app]\nbackends = [\"127.0.0.1:1\"]\nconnect_timeout = \"0s\"\n",
    );
    let (code, _, err) = tether(&["check", "--config", &path]);
    assert_eq!(code, 1);
    assert_eq!(
        err.trim(),
        format!("{path}:8:19: a duration must be more than 0")
    );
}

#[test]
fn owner_prints_the_placement_answer() {
    let (_dir, path) = write_config(
        "[[listener]]\nbind = \"127.0.0.1:0\"\n[upstream.app]\nbackends = [{ addr = \"127.0.0.1:1\", name = \"a\" }, \
         { addr = \"127.0.0.1:2\", name = \"b\" }, { addr = \"127.0.0.1:3\", name = \"c\" }]\n",
    );
    // Computed with the README formula by an independent implementation (Python).
    for (key, want) in [
        ("alice", "b"),
        ("bob", "c"),
        ("carol", "c"),
        ("dave", "c"),
        ("erin", "b"),
    ] {
        let (code, out, err) = tether(&["owner", "--config", &path, "--upstream", "app", key]);
        assert_eq!(code, 0, "{err}");
        assert_eq!(out.trim(), want, "{key}");
    }
    let (code, _, err) = tether(&["owner", "--config", &path, "--upstream", "nope", "x"]);
    assert_eq!(code, 1);
    assert!(err.contains("no upstream `nope`"), "{err}");
    // A key may start with a dash; an empty one is never a principal.
    let (code, out, err) = tether(&["owner", "--config", &path, "--upstream", "app", "-x"]);
    assert_eq!(code, 0, "{err}");
    assert!(["a", "b", "c"].contains(&out.trim()), "{out}");
    let (code, _, err) = tether(&["owner", "--config", &path, "--upstream", "app", ""]);
    assert_eq!(code, 1);
    assert!(err.contains("KEY is empty"), "{err}");

    // Placement depends on ids and weights alone: an app server asking without the
    // proxy's certificates or its view of DNS gets the same answer.
    let (_dir, elsewhere) = write_config(
        "[[listener]]\nbind = \"127.0.0.1:0\"\n[listener.tls]\ncert = \"/nonexistent.pem\"\n\
         key = \"/nonexistent.key\"\n[upstream.app]\nbackends = [{ addr = \"a.invalid:1\", name = \"a\" }, \
         { addr = \"b.invalid:2\", name = \"b\" }, { addr = \"c.invalid:3\", name = \"c\" }]\n",
    );
    let (code, out, err) = tether(&[
        "owner",
        "--config",
        &elsewhere,
        "--upstream",
        "app",
        "alice",
    ]);
    assert_eq!((code, out.trim()), (0, "b"), "{err}");
    // What placement does depend on is still checked, at its position.
    let (_dir, twice) = write_config(
        "[[listener]]\nbind = \"127.0.0.1:0\"\n[upstream.app]\nbackends = [\"a.invalid:1\", \"a.invalid:1\"]\n",
    );
    let (code, _, err) = tether(&["owner", "--config", &twice, "--upstream", "app", "alice"]);
    assert_eq!(code, 1);
    assert!(err.contains(":4:") && err.contains("used twice"), "{err}");
}

#[tokio::test]
async fn run_serves_and_exits_0_on_sigterm() {
    let nodes = nodes(&["a"]).await;
    let (_dir, path) = write_config(&config(&nodes, "", ""));
    let mut bin = Binary::spawn(&["run", "--config", &path]);
    let addr = bin.wait_listening();
    // No transparent huge pages, whatever the host's THP mode (src/heap.rs).
    let status = std::fs::read_to_string(format!("/proc/{}/status", bin.child.id())).unwrap();
    assert!(status.contains("THP_enabled:\t0"), "{status}");
    assert_eq!(http_node(addr, "/info", &[]).await, "a");
    // Text access events quote their strings alike, for requests and tunnels.
    let request = bin.wait_for("tether::access: request");
    assert!(request.contains(r#"route="/" backend="a""#), "{request}");
    let (mut s, _) = ws(addr, "/ws", &[]).await;
    futures_util::SinkExt::close(&mut s).await.unwrap();
    // Read to the end: the node (on this test's runtime) answers the Close meanwhile.
    while let Some(Ok(_)) = futures_util::StreamExt::next(&mut s).await {}
    let tunnel = bin.wait_for("tunnel closed");
    assert!(tunnel.contains(r#"route="/" backend="a""#), "{tunnel}");
    assert!(tunnel.contains(r#"reason="client""#), "{tunnel}");
    bin.signal("TERM");
    assert!(bin.wait_exit().success());
}

/// A port that cannot be had at start is an error naming the file and the address.
#[test]
fn run_names_the_file_when_a_port_is_taken() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let (_dir, path) = write_config(&format!(
        "[[listener]]\nbind = \"{addr}\"\n[upstream.app]\nbackends = [\"127.0.0.1:1\"]\n"
    ));
    let (code, _, err) = tether(&["run", "--config", &path]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("{path}: cannot listen on {addr}")),
        "{err}"
    );
}

#[tokio::test]
async fn demo_starts_three_nodes_behind_tether() {
    // Both ports chosen, so the test never takes the default 8080 or 9090.
    let admin_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let admin_arg = format!("127.0.0.1:{admin_port}");
    let mut bin = Binary::spawn(&["demo", "--listen", "127.0.0.1:0", "--admin", &admin_arg]);
    let line = bin.wait_for("Open http://");
    let addr: std::net::SocketAddr = line
        .split("http://")
        .nth(1)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();

    // As `run` does: a demo tried with many connections is not held to 1024.
    bin.wait_for("open-file limit");
    let (_s, greeting) = ws(addr, "/ws?user=alice", &[]).await;
    assert_eq!(greeting["principal"], "alice");
    let node = greeting["node"].as_str().unwrap().to_owned();
    assert!(
        ["node-a", "node-b", "node-c"].contains(&node.as_str()),
        "{node}"
    );
    for _ in 0..5 {
        assert_eq!(ws_node(addr, "/ws?user=alice", &[]).await, node);
    }
    let (status, _, page) = http(addr, get("localhost", "/", &[])).await;
    assert_eq!(status, 200);
    let page = String::from_utf8_lossy(&page).into_owned();
    assert!(page.contains("tether demo"));
    // The page links to tether's status page, which answers.
    let status_url = page
        .split("href=\"http://")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_owned();
    let (admin, path) = status_url.split_once('/').unwrap();
    assert_eq!(admin, admin_arg);
    let (status, _, body) = http(
        admin.parse().unwrap(),
        get("localhost", &format!("/{path}"), &[]),
    )
    .await;
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&body).contains("tether status"));
    // Connections are capped by what the open-file limit allows, as under `run`.
    let (_, _, metrics) = http(admin.parse().unwrap(), get("localhost", "/metrics", &[])).await;
    let metrics = String::from_utf8_lossy(&metrics).into_owned();
    let cap: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("tether_connections_max "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no tether_connections_max in {metrics}"));
    assert!((1..1 << 20).contains(&cap), "{cap}");
    bin.signal("INT");
    assert!(bin.wait_exit().success());
}
