//! What the backend receives: `Host` exactly as sent (port included), the
//! `X-Forwarded-*` set and `X-Real-IP`, spoofing from untrusted peers discarded, the
//! chain extended behind a trusted proxy, and hop-by-hop headers removed.

mod common;

use common::*;
use serde_json::Value;

fn header<'a>(v: &'a Value, name: &str) -> Option<&'a str> {
    v["headers"][name].as_str()
}

async fn seen_http(proxy: &Proxy, host: &str, headers: &[(&str, &str)]) -> Value {
    let (status, _, body) = http(proxy.addr, get(host, "/info?u=1", headers)).await;
    assert_eq!(status, 200);
    serde_json::from_slice(&body).unwrap()
}

#[tokio::test]
async fn host_with_port_and_forwarding_headers_reach_the_backend() {
    let nodes = nodes(&["a", "b"]).await;
    let proxy = Proxy::start(&config(&nodes, r#"principal = ["query:u"]"#, "")).await;
    let spoof = [
        ("x-forwarded-for", "6.6.6.6"),
        ("x-real-ip", "6.6.6.6"),
        ("x-forwarded-host", "evil.example"),
        ("x-forwarded-proto", "https"),
        ("forwarded", "for=6.6.6.6"),
        // Not set by tether, but believed by apps (Spring, Rack): dropped as well.
        ("x-forwarded-ssl", "on"),
        ("x-forwarded-prefix", "/admin"),
        // The same with `_`, which CGI-style servers read as `-`.
        ("x_forwarded_proto", "https"),
        ("x_real_ip", "6.6.6.6"),
    ];
    let http_seen = seen_http(&proxy, "chat.example.com:8080", &spoof).await;
    let (_ws, ws_seen) = ws(proxy.addr, "/ws?u=1", &spoof).await;
    // tungstenite sets Host from the URL: 127.0.0.1:<port>.
    let ws_host = proxy.addr.to_string();
    for (seen, host, port) in [
        (&http_seen, "chat.example.com:8080", "8080"),
        (&ws_seen, ws_host.as_str(), &*proxy.addr.port().to_string()),
    ] {
        assert_eq!(header(seen, "host"), Some(host));
        assert_eq!(header(seen, "x-forwarded-for"), Some("127.0.0.1"));
        assert_eq!(header(seen, "x-real-ip"), Some("127.0.0.1"));
        assert_eq!(header(seen, "x-forwarded-proto"), Some("http"));
        assert_eq!(header(seen, "x-forwarded-host"), Some(host));
        assert_eq!(header(seen, "x-forwarded-port"), Some(port));
        assert_eq!(header(seen, "forwarded"), None);
        assert_eq!(header(seen, "x-forwarded-ssl"), None);
        assert_eq!(header(seen, "x-forwarded-prefix"), None);
        assert_eq!(header(seen, "x_forwarded_proto"), None);
        assert_eq!(header(seen, "x_real_ip"), None);
    }
    // The upgrade reached the backend as an upgrade.
    assert_eq!(header(&ws_seen, "upgrade"), Some("websocket"));
    assert_eq!(header(&ws_seen, "connection"), Some("upgrade"));
    proxy.stop().await;
}

#[tokio::test]
async fn a_trusted_proxy_extends_the_chain_and_sets_the_client() {
    let nodes = nodes(&["a", "b", "c"]).await;
    let toml = config(&nodes, "principal = []\nfallback = \"ip\"", "").replace(
        "bind = \"127.0.0.1:0\"",
        "bind = \"127.0.0.1:0\"\ntrusted_proxies = [\"127.0.0.0/8\"]",
    );
    let proxy = Proxy::start(&toml).await;
    let outer = [
        ("x-forwarded-for", "203.0.113.9"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-port", "443"),
    ];
    let seen = seen_http(&proxy, "chat.example.com", &outer).await;
    assert_eq!(
        header(&seen, "x-forwarded-for"),
        Some("203.0.113.9, 127.0.0.1")
    );
    assert_eq!(header(&seen, "x-real-ip"), Some("203.0.113.9"));
    assert_eq!(header(&seen, "x-forwarded-proto"), Some("https"));
    assert_eq!(header(&seen, "x-forwarded-port"), Some("443"));
    assert_eq!(header(&seen, "host"), Some("chat.example.com"));
    // The client cannot strip what the balancer added by naming it in `Connection`
    // (which the balancer passed on).
    let named = [
        (
            "connection",
            "X-Forwarded-For, X-Forwarded-Proto, x-real-ip",
        ),
        ("x-forwarded-for", "203.0.113.9"),
        ("x-forwarded-proto", "https"),
    ];
    let seen = seen_http(&proxy, "chat.example.com", &named).await;
    assert_eq!(
        header(&seen, "x-forwarded-for"),
        Some("203.0.113.9, 127.0.0.1")
    );
    assert_eq!(header(&seen, "x-real-ip"), Some("203.0.113.9"));
    assert_eq!(header(&seen, "x-forwarded-proto"), Some("https"));
    // The ip fallback places by the real client, not by the balancer in front.
    let snap = proxy.live.load();
    let app = snap.upstream("app").unwrap();
    // A balancer may write the hop with its port; the address still counts.
    let seen = seen_http(&proxy, "a", &[("x-forwarded-for", "192.0.2.77:4444")]).await;
    assert_eq!(header(&seen, "x-real-ip"), Some("192.0.2.77"));
    for (hop, client) in [
        ("203.0.113.9", "203.0.113.9"),
        ("198.51.100.4", "198.51.100.4"),
        ("192.0.2.77:4444", "192.0.2.77"),
        ("[2001:db8::5]:1234", "2001:db8::5"),
        ("203.0.113.200", "203.0.113.200"),
    ] {
        let want = app
            .owner(tether::principal::Principal::from_bytes(client.as_bytes()).key())
            .unwrap();
        let got = http_node(proxy.addr, "/info", &[("x-forwarded-for", hop)]).await;
        assert_eq!(got, &*want.id, "{hop}");
    }
    proxy.stop().await;
}

#[tokio::test]
async fn hop_by_hop_headers_do_not_cross() {
    let nodes = nodes(&["a"]).await;
    let proxy = Proxy::start(&config(&nodes, "", "")).await;
    let seen = seen_http(
        &proxy,
        "h:1",
        &[
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("proxy-connection", "keep-alive"),
            ("expect", "100-continue"),
            ("x-kept", "yes"),
        ],
    )
    .await;
    // `Expect` is answered by tether (see tests/http.rs), never passed on.
    for gone in ["x-secret", "keep-alive", "te", "proxy-connection", "expect"] {
        assert_eq!(header(&seen, gone), None, "{gone} was forwarded");
    }
    assert_eq!(header(&seen, "x-kept"), Some("yes"));
    assert_eq!(header(&seen, "host"), Some("h:1"));
    proxy.stop().await;
}
