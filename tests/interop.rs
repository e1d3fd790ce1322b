//! Real framework peers through the real binary: Socket.IO (polling, then the upgrade
//! to WebSocket), SockJS with STOMP inside over its websocket, xhr-streaming and
//! xhr-polling transports, and `ws` with permessage-deflate and a subprotocol, each
//! with its own server library on three nodes and its own client library, checked
//! against `tether owner`; then a node crashes and its Socket.IO clients must reconnect
//! to their next node while no other client is disturbed. The scenario lives in
//! `tests/interop/run.mjs`.
//!
//! Needs Node.js and `npm ci` in `tests/interop` (`.ci/run` does both). Where the
//! modules are missing the test says so and passes, unless TETHER_REQUIRE_INTEROP=1
//! (set by CI) makes that a failure.

use std::path::Path;
use std::process::Command;

#[test]
fn socket_io_sockjs_stomp_and_ws_clients_reach_their_owner() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop");
    if !dir.join("node_modules").exists() {
        assert!(
            std::env::var("TETHER_REQUIRE_INTEROP").is_err(),
            "run `npm ci` in {}",
            dir.display()
        );
        eprintln!("skipped: no node_modules in {} (npm ci)", dir.display());
        return;
    }
    let out = Command::new("node")
        .arg("run.mjs")
        .arg(env!("CARGO_BIN_EXE_tether"))
        .current_dir(&dir)
        .output()
        .expect("node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for line in ["socket.io:", "sockjs+stomp:", "ws:", "failover:"] {
        assert!(stdout.contains(line), "{line} missing:\n{stdout}");
    }
}
