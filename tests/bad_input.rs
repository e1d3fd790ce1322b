//! Hostile and broken requests get their status codes and cost only their own
//! connection: an established tunnel keeps echoing and new requests keep working.

mod common;

use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BAD: &[(&str, &[u8], &str)] = &[
    ("garbage request line", b"GARBAGE\r\n\r\n", "HTTP/1.1 400"),
    (
        "binary noise",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
        "HTTP/1.1 400",
    ),
    (
        "HTTP/1.1 without Host",
        b"GET / HTTP/1.1\r\n\r\n",
        "HTTP/1.1 400",
    ),
    (
        "two Host headers",
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        "HTTP/1.1 400",
    ),
    (
        "a Host that is not host[:port]",
        b"GET / HTTP/1.1\r\nHost: evil.com/x?\r\n\r\n",
        "HTTP/1.1 400",
    ),
    (
        "a Host with userinfo",
        b"GET / HTTP/1.1\r\nHost: user@chat.example.com\r\n\r\n",
        "HTTP/1.1 400",
    ),
    (
        "invalid header name",
        b"GET / HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n",
        "HTTP/1.1 400",
    ),
    (
        "bad chunk size",
        b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        "HTTP/1.1 400",
    ),
    (
        // The body would reach the backend still gzipped, with nothing saying so.
        "a transfer coding besides chunked",
        b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        "HTTP/1.1 501",
    ),
    (
        "chunked twice",
        b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "HTTP/1.1 501",
    ),
    (
        "CONNECT",
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
        "HTTP/1.1 405",
    ),
    (
        // RFC 9112 §3.2.3: the authority form is CONNECT's alone (nginx: 400).
        "a host:port target on GET",
        b"GET example.com:80 HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n",
        "HTTP/1.1 400",
    ),
    (
        // RFC 9112 §3.2.4: `*` is OPTIONS's alone.
        "a `*` target on GET",
        b"GET * HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        "HTTP/1.1 400",
    ),
    (
        // Else the name would match no host route and fall through to a catch-all.
        "a Host with a port that is not a number",
        b"GET /ws HTTP/1.1\r\nHost: chat.example.com:abc\r\nConnection: close\r\n\r\n",
        "HTTP/1.1 400",
    ),
    (
        "a Host with an empty label",
        b"GET /ws HTTP/1.1\r\nHost: chat..example.com\r\nConnection: close\r\n\r\n",
        "HTTP/1.1 400",
    ),
    (
        "unrouted host",
        b"GET / HTTP/1.1\r\nHost: other.example\r\nConnection: close\r\n\r\n",
        "HTTP/1.1 404",
    ),
    (
        "unrouted path",
        b"GET /nope HTTP/1.1\r\nHost: chat.example.com\r\nConnection: close\r\n\r\n",
        "HTTP/1.1 404",
    ),
];

#[tokio::test]
async fn bad_requests_get_their_codes_and_nothing_else_breaks() {
    let nodes = nodes(&["a", "b"]).await;
    let toml = config(&nodes, "", "").replace(
        "path = \"/\"\nupstream = \"app\"",
        "path = \"/ws\"\nhost = \"chat.example.com\"\nupstream = \"app\"",
    ) + "\n[[route]]\npath = \"/echo\"\nupstream = \"app\"\n";
    let proxy = Proxy::start(&toml).await;

    // A tunnel established before the abuse, which must survive it.
    let (mut bystander, _) = ws(proxy.addr, "/ws", &[("host", "chat.example.com")]).await;

    for (what, bytes, want) in BAD {
        let got = raw(proxy.addr, bytes).await;
        assert!(got.starts_with(want), "{what}: got {got:?}");
    }
    let huge = format!(
        "GET /ws HTTP/1.1\r\nHost: chat.example.com\r\nX-Big: {}\r\n\r\n",
        "x".repeat(40 * 1024)
    );
    let got = raw(proxy.addr, huge.as_bytes()).await;
    assert!(got.starts_with("HTTP/1.1 431"), "oversize headers: {got:?}");

    send_text(&mut bystander, "still alive").await;
    assert_eq!(next_text(&mut bystander).await, "still alive");
    let (status, _, _) = http(proxy.addr, get("chat.example.com", "/ws/info", &[])).await;
    assert_eq!(status, 200);
    proxy.stop().await;
}

#[tokio::test]
async fn an_http_1_0_request_without_host_uses_host_less_routes() {
    let nodes = nodes(&["a"]).await;
    let proxy = Proxy::start(&config(&nodes, "", "")).await;
    let got = raw(proxy.addr, b"GET /info HTTP/1.0\r\n\r\n").await;
    assert!(
        got.starts_with("HTTP/1.0 200") || got.starts_with("HTTP/1.1 200"),
        "{got}"
    );
    assert!(got.contains("\"node\":\"a\""), "{got}");
    // HTTP/1.1, which the backend speaks, needs a Host: the backend's own address.
    let host = format!("\"host\":\"{}\"", nodes[0].addr);
    assert!(got.contains(&host), "{host} not in {got}");
    proxy.stop().await;
}

#[tokio::test]
async fn past_max_connections_clients_wait_for_a_slot_and_a_tunnel_holds_one() {
    let nodes = nodes(&["a"]).await;
    let proxy = Proxy::start(&format!("max_connections = 2\n{}", config(&nodes, "", ""))).await;
    // Both slots taken: a WebSocket tunnel (its HTTP phase long over) and an idle
    // connection.
    let (mut tunnel, _) = ws(proxy.addr, "/ws", &[]).await;
    let _idle = TcpStream::connect(proxy.addr).await.unwrap();
    // The kernel completes a third connection, but tether does not take it up.
    let mut third = TcpStream::connect(proxy.addr).await.unwrap();
    third
        .write_all(b"GET /info HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 16];
    // A window under test, not a synchronisation: nothing may arrive in it.
    let early = tokio::time::timeout(Duration::from_millis(500), third.read(&mut first)).await;
    assert!(early.is_err(), "served past max_connections: {early:?}");
    // The tunnel's end gives its slot back, and the waiting client is served.
    tunnel.close(None).await.unwrap();
    while let Some(Ok(_)) = tunnel.next().await {}
    let answer = read_until_closed(&mut third, "the waiting client was never served").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    proxy.stop().await;
}

#[tokio::test]
async fn an_idle_listener_holds_no_connection_slot() {
    // With one slot and two listeners, the idle one must not sit on the slot between
    // the busy one's connections.
    let nodes = nodes(&["a"]).await;
    let toml = format!(
        "max_connections = 1\n[[listener]]\nbind = \"127.0.0.2:0\"\n{}",
        config(&nodes, "", "")
    );
    let proxy = Proxy::start(&toml).await;
    for _ in 0..3 {
        let (_, head) = raw_head(
            proxy.addr,
            b"GET /info HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    }
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_descriptors_is_not_blamed_on_the_backends() {
    let nodes = nodes(&["a", "b"]).await;
    // A low open-file limit and a connection limit above it, so a flood of idle
    // connections exhausts tether's descriptors; probes every 50 ms, one failure
    // enough to take a backend down.
    let toml = format!(
        "max_connections = 10000\n{}",
        config(
            &nodes,
            r#"principal = ["query:u"]"#,
            "[upstream.app.health]\ninterval = \"50ms\"\nfall = 1\n"
        )
    );
    let (_dir, path) = write_config(&toml);
    let mut bin = Binary::spawn_limited(&["run", "--config", &path], 64);
    let addr = bin.wait_listening();
    let mut flood = Vec::new();
    for _ in 0..64 {
        flood.push(TcpStream::connect(addr).await.unwrap());
    }
    // The shortage reaches the probes, which must not count it.
    let seen = bin.wait_for_any(&["cannot probe for want of local resources", "backend down"]);
    assert!(!seen.contains("backend down"), "{seen}");
    drop(flood);
    for i in 0..10 {
        http_node(addr, &format!("/info?u={i}"), &[]).await;
    }
    let out = bin.output();
    assert!(
        !out.contains("backend down"),
        "a backend was taken down by tether's own shortage:\n{out}"
    );
    bin.signal("TERM");
    assert!(bin.wait_exit().success());
}
