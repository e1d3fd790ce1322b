//! WebSocket protocol conformance through tether: the Autobahn TestSuite's cases, run
//! by kosoku (a Python 3 runner of Autobahn's own case files). Through the real binary
//! both ways — the fuzzing client through tether to a `ws` echo server, and a `ws`
//! client through tether to the fuzzing server — so every framing, fragmentation,
//! UTF-8, close and compression case crosses tether's frame tracking in both
//! directions; and over HTTP/2 (RFC 8441), every case a stream of one shared h2
//! connection. Each must pass as it does without tether. The driver is
//! `tests/conformance/run.py`.
//!
//! Needs `pip install kosoku` and `npm ci` in `tests/interop` (`.ci/run` does both).
//! Where either is missing the tests say so and pass, unless
//! TETHER_REQUIRE_CONFORMANCE=1 (set by CI) makes that a failure.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use bytes::Bytes;
use common::pki::Pki;
use common::*;
use http_body_util::Empty;
use hyper::Request;
use hyper::client::conn::http2::SendRequest;
use hyper::ext::Protocol;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// The selection in run.py holds 305 cases; fewer passing means cases went missing.
const CASES: usize = 305;

fn here() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/conformance")
}

/// Whether kosoku and `ws` are installed; if not, whether that may be skipped.
fn prerequisites() -> bool {
    let has_kosoku = Command::new("python3")
        .args(["-c", "import kosoku"])
        .output()
        .is_ok_and(|o| o.status.success());
    let has_ws = here().join("../interop/node_modules/ws").exists()
        && Command::new("node")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
    if !has_kosoku || !has_ws {
        assert!(
            std::env::var("TETHER_REQUIRE_CONFORMANCE").is_err(),
            "needs `pip install kosoku` (found: {has_kosoku}), node and `npm ci` in tests/interop (found: {has_ws})"
        );
        eprintln!("skipped: needs `pip install kosoku`, node and `npm ci` in tests/interop");
    }
    has_kosoku && has_ws
}

/// Runs run.py with `args`; asserts it passed every case of each of `modes`.
fn run_py(args: &[&str], modes: &[&str]) {
    let out = Command::new("python3")
        .arg(here().join("run.py"))
        .args(args)
        .output()
        .expect("python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}\n{stdout}\n{stderr}", out.status);
    for mode in modes {
        let passed: usize = stdout
            .lines()
            .find_map(|l| {
                l.strip_prefix(&format!("{mode}: "))?
                    .strip_suffix(" cases passed")
            })
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {mode} summary:\n{stdout}\n{stderr}"));
        assert_eq!(passed, CASES, "{mode}: cases went missing:\n{stdout}");
    }
}

#[test]
fn autobahn_cases_pass_through_tether_both_ways() {
    if prerequisites() {
        run_py(
            &[env!("CARGO_BIN_EXE_tether")],
            &["fuzzingclient", "fuzzingserver"],
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn autobahn_cases_pass_over_http2_websockets() {
    if !prerequisites() {
        return;
    }
    let echo = Echo::start();
    let echo_port = echo.port;

    let pki = Pki::new();
    let leaf = pki.leaf("default", &["chat.example.com"]);
    let proxy = Proxy::start(&format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\n[listener.tls]\ncert = \"{}\"\nkey = \"{}\"\n\n\
         [[route]]\npath = \"/\"\nupstream = \"app\"\nprincipal = [\"query:agent\"]\nfallback = \"ip\"\n\n\
         [upstream.app]\nbackends = [\"127.0.0.1:{echo_port}\"]\n",
        leaf.cert, leaf.key
    ))
    .await;

    // One HTTP/2 connection to tether carries every case, each as an extended CONNECT
    // stream; kosoku speaks HTTP/1.1, so a bridge turns its upgrades into those.
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let name = ServerName::try_from("chat.example.com").unwrap();
    let tls = TlsConnector::from(pki.client_config(&[b"h2"], false))
        .connect(name, tcp)
        .await
        .unwrap();
    let (h2, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let bridge = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let at = bridge.local_addr().unwrap();
    let port = proxy.addr.port();
    tokio::spawn(async move {
        while let Ok((client, _)) = bridge.accept().await {
            tokio::spawn(bridge_one(client, h2.clone(), port));
        }
    });

    tokio::task::spawn_blocking(move || {
        run_py(&["--server-at", &format!("ws://{at}")], &["fuzzingclient"])
    })
    .await
    .unwrap();
    // Every case's connection was closed end to end: no tunnel outlives its client.
    eventually(|| async { proxy.live.registry.is_empty().then_some(()) }).await;
    proxy.stop().await;
}

/// The `ws` echo server of peers.mjs, killed when dropped.
struct Echo {
    child: std::process::Child,
    port: u16,
}

impl Echo {
    fn start() -> Echo {
        use std::io::BufRead;
        let mut child = Command::new("node")
            .arg(here().join("peers.mjs"))
            .arg("echo")
            .stdout(Stdio::piped())
            .spawn()
            .expect("node");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(PATIENCE)
            .expect("echo server did not start");
        let port = line.trim().strip_prefix("listening ").map(str::parse);
        let port = port
            .and_then(Result::ok)
            .unwrap_or_else(|| panic!("{line}"));
        Echo { child, port }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One kosoku connection: its HTTP/1.1 upgrade becomes an RFC 8441 extended CONNECT to
/// tether (extensions passed through, the accept key answered here), then bytes flow
/// both ways until each side has ended.
async fn bridge_one(mut client: TcpStream, mut h2: SendRequest<Empty<Bytes>>, port: u16) {
    let head = read_head(&mut client).await;
    let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    };
    let mut req = Request::connect(format!("https://chat.example.com:{port}{path}"))
        .header("sec-websocket-version", "13")
        .extension(Protocol::from_static("websocket"));
    if let Some(ext) = header("sec-websocket-extensions") {
        req = req.header("sec-websocket-extensions", ext);
    }
    let req = req.body(Empty::<Bytes>::new()).unwrap();
    let Ok(mut resp) = h2.send_request(req).await else {
        return;
    };
    if resp.status() != 200 {
        let reply = format!("HTTP/1.1 {}\r\ncontent-length: 0\r\n\r\n", resp.status());
        let _ = client.write_all(reply.as_bytes()).await;
        return;
    }
    let key = header("sec-websocket-key").unwrap_or_default();
    let mut reply = format!(
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\
         sec-websocket-accept: {}\r\n",
        derive_accept_key(key.as_bytes())
    );
    if let Some(ext) = resp.headers().get("sec-websocket-extensions") {
        reply += &format!("sec-websocket-extensions: {}\r\n", ext.to_str().unwrap());
    }
    reply += "\r\n";
    if client.write_all(reply.as_bytes()).await.is_err() {
        return;
    }
    let Ok(upgraded) = hyper::upgrade::on(&mut resp).await else {
        return;
    };
    let _ = tokio::io::copy_bidirectional(&mut client, &mut TokioIo::new(upgraded)).await;
}
