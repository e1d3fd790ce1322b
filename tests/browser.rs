//! Real browsers through tether (headless Chromium over the DevTools protocol, headless
//! Firefox over Marionette): the demo page over https with HTTP/2, a `wss://` WebSocket
//! that reaches its principal's owner and echoes; a cookie tether issues pins the
//! browser from its first page on.

mod common;

use common::browser::Browser;
use common::pki::Pki;
use common::*;
use tether::principal::Principal;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_through_tether_in_headless_chromium() {
    if let Some(browser) = Browser::launch().await {
        wss_demo_over_h2(browser, "chromium").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_through_tether_in_headless_firefox() {
    if let Some(browser) = Browser::firefox().await {
        wss_demo_over_h2(browser, "firefox").await;
    }
}

/// The demo page over https through a TLS listener: its `wss://` message echoes from
/// the node placement names, the page came over h2, and the WebSocket was an RFC 8441
/// stream on that connection. Saves a screenshot.
async fn wss_demo_over_h2(mut browser: Browser, name: &str) {
    let pki = Pki::new();
    let leaf = pki.leaf("default", &["localhost"]);
    let nodes = nodes(&["node-a", "node-b", "node-c"]).await;
    let toml = config(
        &nodes,
        r#"principal = ["query:user", "cookie:demo_user"]"#,
        "",
    )
    .replacen(
        "bind = \"127.0.0.1:0\"\n",
        &format!(
            "bind = \"127.0.0.1:0\"\n[listener.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            leaf.cert, leaf.key
        ),
        1,
    );
    let proxy = Proxy::start(&toml).await;

    browser
        .navigate(&format!("https://localhost:{}/#connect", proxy.addr.port()))
        .await;
    let log = browser
        .wait_for("(t => t.includes('echo:') && t)(document.getElementById('log').textContent)")
        .await;
    let log = log.as_str().unwrap().to_owned();
    assert!(log.contains("echo: hello from the browser"), "{log}");
    // The user the page picked, and the node it says it reached.
    let user = browser
        .eval("document.querySelector('#table td').textContent")
        .await;
    let node = browser
        .eval("document.querySelector('#table td + td').textContent")
        .await;
    let snap = proxy.live.load();
    let owner = snap
        .upstream("app")
        .unwrap()
        .owner(Principal::from_bytes(user.as_str().unwrap().as_bytes()).key())
        .unwrap();
    assert_eq!(node.as_str().unwrap(), &*owner.id, "log: {log}");
    // The page itself came over HTTP/2 (ALPN h2 with a real browser).
    let protocol = browser
        .eval("performance.getEntriesByType('navigation')[0].nextHopProtocol")
        .await;
    assert_eq!(protocol, "h2");
    // The browser opened its WebSocket on that connection with an extended CONNECT
    // (RFC 8441), which tether answered 200 and tunnelled to the HTTP/1.1 node.
    assert_eq!(upgrades_ok(&proxy, "h2"), 1);
    assert_eq!(upgrades_ok(&proxy, "http/1.1"), 0);
    let shot = std::env::temp_dir().join(format!("tether-wss-demo-{name}.png"));
    browser.screenshot(&shot).await;
    eprintln!("screenshot: {}", shot.display());
    proxy.stop().await;
}

/// `fallback = "cookie"` in a real browser: the first page load gets tether's cookie
/// (HttpOnly, so read through the DevTools protocol), and the page, its WebSocket and
/// its later requests all reach the cookie's owner — where a Spring-like app would
/// have made the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issued_cookie_pins_a_browser_from_its_first_page_on() {
    let Some(mut browser) = Browser::launch().await else {
        return;
    };
    let nodes = nodes(&["node-a", "node-b", "node-c"]).await;
    let toml = config(
        &nodes,
        "principal = [\"cookie:tid\"]\nfallback = \"cookie\"",
        "",
    );
    let proxy = Proxy::start(&toml).await;
    browser
        .navigate(&format!("http://127.0.0.1:{}/#connect", proxy.addr.port()))
        .await;
    browser
        .wait_for("document.getElementById('log').textContent.includes('echo:')")
        .await;
    let cookies = browser
        .call("Network.getCookies", serde_json::json!({}))
        .await;
    let tid = cookies["cookies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "tid")
        .unwrap_or_else(|| panic!("no tid cookie: {cookies}"));
    assert_eq!(tid["httpOnly"], true);
    let value = tid["value"].as_str().unwrap();
    let owner = proxy
        .live
        .load()
        .upstream("app")
        .unwrap()
        .owner(Principal::from_bytes(value.as_bytes()).key())
        .unwrap()
        .id
        .to_string();
    let page = browser
        .eval("document.querySelector('p b').textContent")
        .await;
    let socket = browser
        .eval("document.querySelector('#table td + td').textContent")
        .await;
    assert_eq!(
        (page.as_str(), socket.as_str()),
        (Some(&*owner), Some(&*owner))
    );
    for _ in 0..5 {
        let node = browser
            .eval("fetch('/info').then(r => r.json()).then(j => j.node)")
            .await;
        assert_eq!(node.as_str(), Some(&*owner));
    }
    proxy.stop().await;
}
