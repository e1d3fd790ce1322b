//! Stickiness end to end: every principal source pins WebSockets and plain HTTP to
//! the same node, reconnect after reconnect, in agreement with the placement function
//! (`tether owner`), a principal tether issues as a cookie holds from the first
//! request on, and 3 nodes share 3,000 principals evenly.

mod common;

use std::collections::HashMap;

use common::*;
use tether::principal::Principal;

const ALL_SOURCES: &str =
    r#"principal = ["cookie:JSESSIONID", "header:X-User-Id", "query:userId", "path:3"]"#;

/// The node the placement function names for `key` in `proxy`'s upstream `app`.
fn owner(proxy: &Proxy, key: &str) -> String {
    let snap = proxy.live.load();
    let up = snap.upstream("app").unwrap();
    up.owner(Principal::from_bytes(key.as_bytes()).key())
        .unwrap()
        .id
        .to_string()
}

#[tokio::test]
async fn same_principal_same_node_over_many_reconnects_ws_and_http() {
    let nodes = nodes(&["a", "b", "c"]).await;
    let proxy = Proxy::start(&config(&nodes, ALL_SOURCES, "")).await;
    for user in ["alice", "bob", "carol", "dave"] {
        let expected = owner(&proxy, user);
        let path = format!("/ws?userId={user}");
        for _ in 0..10 {
            assert_eq!(ws_node(proxy.addr, &path, &[]).await, expected, "ws {user}");
            assert_eq!(
                http_node(proxy.addr, &path, &[]).await,
                expected,
                "http {user}"
            );
        }
    }
    proxy.stop().await;
}

#[tokio::test]
async fn each_source_pins_by_its_value() {
    let nodes = nodes(&["a", "b", "c"]).await;
    let proxy = Proxy::start(&config(&nodes, ALL_SOURCES, "")).await;
    // Find two keys with different owners, so a source that was ignored would show.
    let keys: Vec<String> = (0..50).map(|i| format!("k{i}")).collect();
    let k1 = &keys[0];
    let k2 = keys
        .iter()
        .find(|k| owner(&proxy, k) != owner(&proxy, k1))
        .unwrap();
    for key in [k1, k2] {
        let want = owner(&proxy, key);
        let cookie = format!("other=1; JSESSIONID={key}");
        let cases: Vec<(String, Vec<(&str, &str)>)> = vec![
            ("/ws".into(), vec![("cookie", cookie.as_str())]),
            ("/ws".into(), vec![("x-user-id", key.as_str())]),
            (format!("/ws?userId={key}"), vec![]),
            (format!("/stomp/123/{key}/websocket"), vec![]),
        ];
        for (path, headers) in &cases {
            assert_eq!(
                ws_node(proxy.addr, path, headers).await,
                want,
                "ws {path} {headers:?}"
            );
            assert_eq!(
                http_node(proxy.addr, path, headers).await,
                want,
                "http {path} {headers:?}"
            );
        }
    }
    // Source order: the cookie wins over the header when both are present.
    let cookie = format!("JSESSIONID={k1}");
    let both = [("cookie", cookie.as_str()), ("x-user-id", k2.as_str())];
    assert_eq!(
        http_node(proxy.addr, "/info", &both).await,
        owner(&proxy, k1)
    );
    proxy.stop().await;
}

#[tokio::test]
async fn sockjs_polling_and_websocket_of_one_session_meet() {
    // SockJS: /{prefix}/{server}/{session}/{transport}; path:3 pins every transport.
    let nodes = nodes(&["a", "b", "c"]).await;
    let proxy = Proxy::start(&config(&nodes, r#"principal = ["path:3"]"#, "")).await;
    for session in ["s1x9", "q8d2", "zz01"] {
        let want = owner(&proxy, session);
        for transport in ["xhr", "xhr_send", "xhr_streaming", "eventsource"] {
            let path = format!("/stomp/{}/{session}/{transport}", session.len());
            assert_eq!(http_node(proxy.addr, &path, &[]).await, want);
        }
        let ws = format!("/stomp/7/{session}/websocket");
        assert_eq!(ws_node(proxy.addr, &ws, &[]).await, want);
    }
    proxy.stop().await;
}

#[tokio::test]
async fn push_route_meets_the_socket_route_on_the_same_key() {
    let nodes = nodes(&["a", "b", "c"]).await;
    let toml = format!(
        "{}\n[[route]]\npath = \"/push\"\nupstream = \"app\"\nprincipal = [\"path:2\"]\n",
        config(&nodes, r#"principal = ["path:2"]"#, "")
    );
    let proxy = Proxy::start(&toml).await;
    for user in ["u1", "u2", "u3", "u4", "u5", "u6"] {
        let socket_node = ws_node(proxy.addr, &format!("/ws/{user}"), &[]).await;
        let push_node = http_node(proxy.addr, &format!("/push/{user}"), &[]).await;
        assert_eq!(socket_node, push_node, "{user}");
    }
    proxy.stop().await;
}

#[tokio::test]
async fn fallback_ip_and_reject() {
    let nodes = nodes(&["a", "b", "c"]).await;
    let ip = Proxy::start(&config(
        &nodes,
        "principal = [\"query:u\"]\nfallback = \"ip\"",
        "",
    ))
    .await;
    // Every test client is 127.0.0.1, so ip fallback puts them all on its owner.
    let want = owner(&ip, "127.0.0.1");
    for _ in 0..5 {
        assert_eq!(http_node(ip.addr, "/info", &[]).await, want);
        assert_eq!(ws_node(ip.addr, "/ws", &[]).await, want);
    }
    ip.stop().await;

    let reject = Proxy::start(&config(
        &nodes,
        "principal = [\"query:u\", \"cookie:S\"]\nfallback = \"reject\"",
        "",
    ))
    .await;
    let (status, _, body) = http(reject.addr, get("t", "/", &[])).await;
    assert_eq!(status, 400);
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains("by query:u or cookie:S;"), "{body}");
    // The same route works once a source is present.
    assert_eq!(
        http_node(reject.addr, "/info?u=x", &[]).await,
        owner(&reject, "x")
    );
    let raw = raw(reject.addr, b"GET /ws HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").await;
    assert!(raw.starts_with("HTTP/1.1 400"), "{raw}");
    reject.stop().await;
}

/// `fallback = "cookie"`: a client without the cookie gets one, made up by tether and
/// placed like any principal, so the node that served its first request (and made a
/// session there, as Spring does) serves all the others, WebSocket included.
#[tokio::test]
async fn an_issued_cookie_pins_a_client_from_its_first_request_on() {
    let nodes = nodes(&["a", "b", "c"]).await;
    // Behind a trusted balancer that ends TLS, as README's scenario has it.
    let toml = config(
        &nodes,
        "principal = [\"cookie:tid\", \"path:3\"]\nfallback = \"cookie\"",
        "",
    )
    .replacen(
        "bind = \"127.0.0.1:0\"\n",
        "bind = \"127.0.0.1:0\"\ntrusted_proxies = [\"127.0.0.1/32\"]\n",
        1,
    );
    let proxy = Proxy::start(&toml).await;
    let mut seen = HashMap::new();
    for _ in 0..30 {
        let (status, headers, body) = http(proxy.addr, get("test", "/info", &[])).await;
        assert_eq!(status, 200);
        let set = headers["set-cookie"].to_str().unwrap();
        let value = set
            .strip_prefix("tid=")
            .and_then(|rest| rest.strip_suffix("; Path=/; HttpOnly; SameSite=Lax"))
            .unwrap_or_else(|| panic!("Set-Cookie: {set}"));
        assert_eq!(value.len(), 32, "{set}");
        let first: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let node = first["node"].as_str().unwrap().to_owned();
        assert_eq!(node, owner(&proxy, value));

        let cookie = format!("JSESSIONID=made-on-{node}; tid={value}");
        let (_, again, body) = http(proxy.addr, get("test", "/info", &[("cookie", &cookie)])).await;
        assert!(again.get("set-cookie").is_none(), "issued twice: {again:?}");
        let again: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(again["node"], node.as_str());
        assert_eq!(
            ws_node(proxy.addr, "/ws", &[("cookie", &cookie)]).await,
            node
        );
        *seen.entry(node).or_insert(0) += 1;
    }
    // Every new client gets its own value, so new clients spread over the nodes.
    assert_eq!(seen.len(), 3, "{seen:?}");
    // The client reached the balancer over https: the cookie is for https only.
    let https = [("x-forwarded-proto", "https")];
    let (_, headers, _) = http(proxy.addr, get("test", "/info", &https)).await;
    let set = headers["set-cookie"].to_str().unwrap();
    assert!(set.ends_with("; SameSite=Lax; Secure"), "{set}");
    // A source that matches wins over issuing (a SockJS client without cookies).
    let (_, headers, _) = http(proxy.addr, get("test", "/stomp/0/s1/xhr", &[])).await;
    assert!(headers.get("set-cookie").is_none());
    proxy.stop().await;
}

#[tokio::test]
async fn three_nodes_share_3000_principals_evenly() {
    let nodes = nodes(&["a", "b", "c"]).await;
    let proxy = Proxy::start(&config(&nodes, r#"principal = ["query:u"]"#, "")).await;
    let mut counts: HashMap<String, usize> = HashMap::new();
    for i in 0..3000 {
        let key = format!("user-{i}");
        let node = http_node(proxy.addr, &format!("/info?u={key}"), &[]).await;
        assert_eq!(node, owner(&proxy, &key));
        *counts.entry(node).or_default() += 1;
    }
    assert_eq!(counts.len(), 3);
    for (node, n) in &counts {
        let share = *n as f64 / 3000.0;
        assert!(
            (share - 1.0 / 3.0).abs() < 0.04,
            "{node}: {share} ({counts:?})"
        );
    }
    proxy.stop().await;
}
