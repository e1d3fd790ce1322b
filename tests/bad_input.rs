//! Hostile and broken requests get their status codes and cost only their own
//! connection: an established tunnel keeps echoing and new requests keep working.

mod common;

use common::*;

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
    proxy.stop().await;
}
