//! The admin listener and the logs: /metrics parsed with a real exposition parser
//! around traffic, a backend's death and reloads; /api/owner agreeing with where real
//! connections land; /healthz, /readyz and the token; the status page in a real
//! browser; JSON access logs; and no raw principal anywhere in logs or metrics.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;

use bytes::Bytes;
use common::browser::Browser;
use common::*;
use http_body_util::{BodyExt, Empty};
use prometheus_parse::{Scrape, Value};
use serde_json::Value as Json;

/// GET `path` on the admin listener; status and body.
async fn admin(addr: SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
    let mut headers = vec![];
    let bearer;
    if let Some(t) = token {
        bearer = format!("Bearer {t}");
        headers.push(("authorization", bearer.as_str()));
    }
    let (status, _, body) = http(addr, get("admin", path, &headers)).await;
    (status.as_u16(), String::from_utf8_lossy(&body).into_owned())
}

async fn scrape(addr: SocketAddr) -> Scrape {
    let (status, body) = admin(addr, "/metrics", None).await;
    assert_eq!(status, 200, "{body}");
    Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).unwrap()
}

/// `/metrics` speaks both formats: OpenMetrics to a scraper that asks for it (as
/// Prometheus does), the classic text format to everyone else, which promtool accepts
/// without a complaint (checked when promtool is installed; CI installs it and sets
/// TETHER_REQUIRE_PROMTOOL=1).
async fn exposition_formats(admin_addr: SocketAddr) {
    let accept = [(
        "accept",
        "application/openmetrics-text;version=1.0.0,text/plain;q=0.5",
    )];
    let (status, headers, body) = http(admin_addr, get("admin", "/metrics", &accept)).await;
    assert_eq!(status, 200);
    let open = String::from_utf8(body.to_vec()).unwrap();
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    assert!(open.ends_with("# EOF\n"), "{open}");
    assert!(open.contains("# TYPE tether_reloads counter\n"));
    let (status, headers, body) = http(admin_addr, get("admin", "/metrics", &[])).await;
    assert_eq!(status, 200);
    let text = String::from_utf8(body.to_vec()).unwrap();
    assert_eq!(
        headers["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    assert!(!text.contains("# EOF"));
    assert!(text.contains("# TYPE tether_reloads_total counter\n"));
    let promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let Ok(mut promtool) = promtool else {
        assert!(
            std::env::var("TETHER_REQUIRE_PROMTOOL").is_err(),
            "promtool is required (apt-get install prometheus)"
        );
        eprintln!("promtool not installed (apt-get install prometheus): format lint skipped");
        return;
    };
    use std::io::Write as _;
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The sum of the samples named `name` whose labels include `labels`.
fn value(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    s.samples
        .iter()
        .filter(|x| x.metric == name && labels.iter().all(|(k, v)| x.labels.get(k) == Some(v)))
        .map(|x| match &x.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
            Value::Summary(_) => 0.0,
        })
        .sum()
}

/// How many samples named `name` carry `labels`: a series that reads 0 is there, a
/// missing one is not.
fn series(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> usize {
    s.samples
        .iter()
        .filter(|x| x.metric == name && labels.iter().all(|(k, v)| x.labels.get(k) == Some(v)))
        .count()
}

const ADMIN: &str = "[admin]\nbind = \"127.0.0.2:0\"\n";
const FAST_PROBES: &str = "[upstream.app.health]\ninterval = \"100ms\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_traffic_a_backend_death_and_reloads() {
    let mut nodes = nodes(&["a", "b", "c"]).await;
    let toml = format!(
        "{ADMIN}{}",
        config(&nodes, r#"principal = ["query:u"]"#, FAST_PROBES)
    );
    let (_dir, path) = write_config(&toml);
    let mut bin = Binary::spawn(&["run", "--config", &path]);
    let addr = bin.wait_listening();
    let admin_addr = bin.wait_admin();
    let started = bin.wait_for("tether started");
    let max_connections: f64 = started
        .split("max_connections=")
        .nth(1)
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("max_connections in the start line");

    let before = scrape(admin_addr).await;
    exposition_formats(admin_addr).await;
    assert_eq!(value(&before, "tether_http_requests_total", &[]), 0.0);
    assert_eq!(
        value(
            &before,
            "tether_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    assert_eq!(value(&before, "tether_backend_up", &[]), 3.0);
    // The process's own figures, as every Prometheus client library exports them.
    let fds = value(&before, "process_open_fds", &[]);
    assert!(
        fds >= 5.0 && fds <= value(&before, "process_max_fds", &[]),
        "{fds}"
    );
    assert!(value(&before, "process_resident_memory_bytes", &[]) > 1e6);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let start = value(&before, "process_start_time_seconds", &[]);
    assert!(
        (now - 600.0..=now).contains(&start),
        "{start} against {now}"
    );
    assert_eq!(series(&before, "process_cpu_seconds_total", &[]), 1);
    assert_eq!(
        series(&before, "tether_tunnels_live", &[("route", "/")]),
        3,
        "every backend's gauge exists before its first tunnel"
    );

    for i in 0..10 {
        http_node(addr, &format!("/info?u={i}"), &[]).await;
    }
    // One answer from the backend that is not a success, counted by its class.
    let (status, _, _) = http(addr, get("t", "/status/404", &[])).await;
    assert_eq!(status, 404);
    let mut sockets = Vec::new();
    for i in 0..6 {
        let (mut s, _) = ws(addr, &format!("/ws?u=w{i}"), &[]).await;
        send_text(&mut s, "0123456789").await;
        next_text(&mut s).await;
        sockets.push(s);
    }
    for mut s in sockets.drain(..2) {
        s.close(None).await.unwrap();
        while let Some(Ok(_)) = futures_util::StreamExt::next(&mut s).await {}
    }
    // An upgrade tether refuses itself (no Host on HTTP/1.1: 400) is counted too.
    let no_host = upgrade_request("/ws?u=x").replace("Host: test\r\n", "");
    let (_refused, head) = raw_head(addr, no_host.as_bytes()).await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    let after = eventually(|| async {
        let s = scrape(admin_addr).await;
        (value(&s, "tether_tunnels_closed_total", &[("reason", "client")]) == 2.0).then_some(s)
    })
    .await;
    assert_eq!(
        value(
            &after,
            "tether_http_requests_total",
            &[("route", "/"), ("class", "2xx")]
        ),
        10.0
    );
    assert_eq!(
        value(&after, "tether_http_requests_total", &[("class", "4xx")]),
        1.0
    );
    assert_eq!(
        value(
            &after,
            "tether_upgrades_total",
            &[("result", "ok"), ("protocol", "http/1.1")]
        ),
        6.0
    );
    assert_eq!(
        value(
            &after,
            "tether_upgrades_total",
            &[
                ("route", "-"),
                ("result", "refused"),
                ("protocol", "http/1.1")
            ]
        ),
        1.0
    );
    assert_eq!(
        value(
            &after,
            "tether_upgrade_duration_seconds",
            &[("result", "ok")]
        ),
        6.0,
        "histogram count: upgrades tried on a backend"
    );
    assert_eq!(
        value(
            &after,
            "tether_upgrade_duration_seconds",
            &[("result", "failed")]
        ),
        0.0
    );
    assert_eq!(value(&after, "tether_tunnels_live", &[("route", "/")]), 4.0);
    // Each open WebSocket holds a connection slot, of max_connections.
    let max = value(&after, "tether_connections_max", &[]);
    assert_eq!(max, max_connections);
    let held = value(&after, "tether_connections", &[]);
    assert!((4.0..max).contains(&held), "{held} of {max}");
    assert!(value(&after, "tether_tunnel_bytes_total", &[("direction", "up")]) >= 6.0 * 16.0);
    assert!(
        value(
            &after,
            "tether_tunnel_bytes_total",
            &[("direction", "down")]
        ) > 6.0 * 12.0
    );

    // A backend dies: its gauge drops, its tunnels are counted closed.
    let on_b = value(&after, "tether_tunnels_live", &[("backend", "b")]);
    let b = nodes.remove(1);
    b.stop().await;
    let dead = eventually(|| async {
        let s = scrape(admin_addr).await;
        (value(&s, "tether_backend_up", &[("backend", "b")]) == 0.0).then_some(s)
    })
    .await;
    assert_eq!(value(&dead, "tether_backend_up", &[]), 2.0);
    let closed_by_b = value(
        &dead,
        "tether_tunnels_closed_total",
        &[("reason", "backend")],
    ) + value(
        &dead,
        "tether_tunnels_closed_total",
        &[("reason", "backend-down")],
    ) + value(
        &dead,
        "tether_tunnels_closed_total",
        &[("reason", "backend-error")],
    );
    assert_eq!(closed_by_b, on_b, "every tunnel on b was counted closed");
    assert_eq!(
        value(&dead, "tether_tunnels_live", &[("backend", "b")]),
        0.0
    );
    assert_eq!(
        series(&dead, "tether_tunnels_live", &[("backend", "b")]),
        1,
        "b's gauge reads 0, not gone"
    );

    // Reloads, good and bad. The good one removes a: its tunnels close as `reload`.
    let on_a = value(&dead, "tether_tunnels_live", &[("backend", "a")]);
    assert!(on_a >= 1.0, "a tunnel on a to see closed");
    let only_c = format!(
        "removal_grace = \"100ms\"\n{ADMIN}{}",
        config(&nodes[1..], r#"principal = ["query:u"]"#, FAST_PROBES)
    );
    std::fs::write(&path, only_c).unwrap();
    bin.signal("HUP");
    bin.wait_for("configuration reloaded");
    eventually(|| async {
        let s = scrape(admin_addr).await;
        (value(&s, "tether_tunnels_closed_total", &[("reason", "reload")]) == on_a).then_some(())
    })
    .await;
    std::fs::write(&path, "broken = [").unwrap();
    bin.signal("HUP");
    bin.wait_for("reload failed");
    let reloaded = scrape(admin_addr).await;
    assert_eq!(
        value(&reloaded, "tether_reloads_total", &[("result", "ok")]),
        1.0
    );
    assert_eq!(
        value(&reloaded, "tether_reloads_total", &[("result", "error")]),
        1.0
    );
    bin.signal("TERM");
    assert!(bin.wait_exit().success());
}

/// The owner API's answer for `key`: (owner now, owner when all are up).
async fn owner_api(admin_addr: SocketAddr, key: &str) -> (String, String) {
    let (status, body) = admin(
        admin_addr,
        &format!("/api/owner?upstream=app&key={key}"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v: Json = serde_json::from_str(&body).unwrap();
    (
        v["owner"]["id"].as_str().unwrap().to_owned(),
        v["owner_when_all_up"]["id"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_api_agrees_with_where_connections_land() {
    let mut nodes = nodes(&["a", "b", "c"]).await;
    let proxy = Proxy::start(&format!(
        "{ADMIN}{}",
        config(&nodes, r#"principal = ["query:u"]"#, FAST_PROBES)
    ))
    .await;
    let admin_addr = proxy.admin.unwrap();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Empty<Bytes>>();
    let lands = async |key: &str| -> String {
        let resp = client
            .get(
                format!("http://{}/info?u={key}", proxy.addr)
                    .parse()
                    .unwrap(),
            )
            .await
            .unwrap();
        let v: Json =
            serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
        v["node"].as_str().unwrap().to_owned()
    };
    let keys: Vec<String> = (0..1000).map(|i| format!("principal-{i}")).collect();
    let mut all_up = HashMap::new();
    for (i, key) in keys.iter().enumerate() {
        let (now, when_all_up) = owner_api(admin_addr, key).await;
        assert_eq!(now, when_all_up);
        assert_eq!(lands(key).await, now, "{key}");
        if i % 20 == 0 {
            assert_eq!(
                ws_node(proxy.addr, &format!("/ws?u={key}"), &[]).await,
                now,
                "ws {key}"
            );
        }
        all_up.insert(key.clone(), now);
    }

    let b = nodes.remove(1);
    b.stop().await;
    eventually(|| async {
        let (_, body) = admin(admin_addr, "/api/backends", None).await;
        let v: Json = serde_json::from_str(&body).unwrap();
        let b = v["upstreams"][0]["backends"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["id"] == "b")
            .unwrap()
            .clone();
        (b["state"] == "down").then_some(())
    })
    .await;
    for (i, key) in keys.iter().enumerate() {
        let (now, when_all_up) = owner_api(admin_addr, key).await;
        assert_eq!(when_all_up, all_up[key], "the all-up owner never changes");
        if all_up[key] == "b" {
            assert_ne!(now, "b");
        } else {
            assert_eq!(now, all_up[key], "{key} moved although its owner is up");
        }
        assert_eq!(lands(key).await, now, "{key}");
        if i % 20 == 0 {
            assert_eq!(
                ws_node(proxy.addr, &format!("/ws?u={key}"), &[]).await,
                now,
                "ws {key}"
            );
        }
    }
    proxy.stop().await;
}

#[tokio::test]
async fn health_readiness_and_the_token() {
    let nodes = nodes(&["a"]).await;
    let token = "0123456789abcdef0123";
    let toml = format!(
        "[admin]\nbind = \"127.0.0.2:0\"\ntoken = \"{token}\"\n{}",
        config(&nodes, "", FAST_PROBES)
    );
    let proxy = Proxy::start(&toml).await;
    let admin_addr = proxy.admin.unwrap();
    assert_eq!(admin(admin_addr, "/healthz", None).await.0, 200);
    assert_eq!(admin(admin_addr, "/readyz", None).await.0, 200);
    for path in [
        "/metrics",
        "/api/backends",
        "/api/owner?upstream=app&key=x",
        "/status",
    ] {
        assert_eq!(
            admin(admin_addr, path, None).await.0,
            401,
            "{path} without the token"
        );
        assert_eq!(
            admin(admin_addr, path, Some("wrong-token-wrong-token"))
                .await
                .0,
            401,
            "{path}"
        );
        assert_eq!(
            admin(admin_addr, path, Some(token)).await.0,
            200,
            "{path} with the token"
        );
    }
    // In a URL the token opens the status page only (which sends it on as the header).
    assert_eq!(
        admin(admin_addr, &format!("/status?token={token}"), None)
            .await
            .0,
        200
    );
    assert_eq!(
        admin(admin_addr, &format!("/api/backends?token={token}"), None)
            .await
            .0,
        401
    );
    let (status, body) = admin(admin_addr, "/api/owner?upstream=nope&key=x", Some(token)).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(
        admin(admin_addr, "/api/owner?upstream=app", Some(token))
            .await
            .0,
        400
    );

    // Not ready once an upstream has no backend up.
    nodes.into_iter().next().unwrap().stop().await;
    eventually(|| async {
        let (status, body) = admin(admin_addr, "/readyz", None).await;
        (status == 503 && body.contains("app")).then_some(())
    })
    .await;
    assert_eq!(admin(admin_addr, "/healthz", None).await.0, 200);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_a_stopped_backend_as_down() {
    let Some(mut browser) = Browser::launch().await else {
        return;
    };
    let mut nodes = nodes(&["a", "b", "c"]).await;
    // With a token: the page is opened with it in the URL and sends it on.
    let token = "status-page-token-0123";
    let proxy = Proxy::start(&format!(
        "{ADMIN}token = \"{token}\"\n{}",
        config(&nodes, r#"principal = ["query:u"]"#, FAST_PROBES)
    ))
    .await;
    let admin_addr = proxy.admin.unwrap();
    let mut sockets = Vec::new();
    for i in 0..12 {
        sockets.push(ws(proxy.addr, &format!("/ws?u=s{i}"), &[]).await.0);
    }
    browser
        .navigate(&format!("http://{admin_addr}/status?token={token}"))
        .await;
    let up = "document.querySelector('tr[data-backend=\"b\"] .state')?.textContent === 'up'";
    browser.wait_for(up).await;
    let b = nodes.remove(1);
    b.stop().await;
    let down = "document.querySelector('tr[data-backend=\"b\"] .state')?.textContent === 'down'";
    browser.wait_for(down).await;
    // The others stay up, and the events list says what happened.
    for id in ["a", "c"] {
        let state = browser
            .eval(&format!(
                "document.querySelector('tr[data-backend=\"{id}\"] .state').textContent"
            ))
            .await;
        assert_eq!(state, "up");
    }
    browser
        .wait_for("document.getElementById('events').textContent.includes('b is down')")
        .await;
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-backend-down.png");
    browser.screenshot(&shot).await;
    eprintln!("status page screenshot: {}", shot.display());
    proxy.stop().await;
}

#[tokio::test]
async fn access_logs_are_json_on_request_and_carry_no_raw_principal() {
    let nodes = nodes(&["a", "b"]).await;
    let planted = "planted-SECRET-7d3f";
    let client_ip = "203.0.113.77";
    let routes = r#"principal = ["cookie:SID", "header:X-User", "query:u", "path:2"]"#;
    let toml = format!(
        "{ADMIN}{}\n[[route]]\npath = \"/ipwise/\"\nupstream = \"app\"\nfallback = \"ip\"\n",
        config(&nodes, routes, "")
    )
    .replacen(
        "bind = \"127.0.0.1:0\"\n",
        "bind = \"127.0.0.1:0\"\ntrusted_proxies = [\"127.0.0.0/8\"]\n",
        1,
    );
    let (_dir, path) = write_config(&toml);
    let mut bin = Binary::spawn_env(
        &["run", "--config", &path, "--log-json"],
        &[("RUST_LOG", "trace")],
    );
    let addr = bin.wait_listening_json();
    let admin_addr = bin.wait_admin();

    let cookie = format!("SID={planted}");
    let cases = [
        (format!("/ws/{planted}"), vec![]),
        ("/x".to_owned(), vec![("cookie", cookie.as_str())]),
        ("/x".to_owned(), vec![("x-user", planted)]),
        (format!("/x?u={planted}"), vec![]),
    ];
    for (p, headers) in &cases {
        http_node(addr, p, headers).await;
        let (mut s, _) = ws(addr, p, headers).await;
        send_text(&mut s, "hi").await;
        next_text(&mut s).await;
        s.close(None).await.unwrap();
    }
    http_node(addr, "/ipwise/x", &[("x-forwarded-for", client_ip)]).await;
    let metrics = admin(admin_addr, "/metrics", None).await.1;
    let backends = admin(admin_addr, "/api/backends", None).await.1;
    let owner = admin(
        admin_addr,
        &format!("/api/owner?upstream=app&key={planted}"),
        None,
    )
    .await
    .1;
    bin.signal("TERM");
    assert!(bin.wait_exit().success());
    let logs = bin.output();

    for (what, text) in [
        ("logs", &logs),
        ("metrics", &metrics),
        ("backends", &backends),
        ("owner API", &owner),
    ] {
        assert!(
            !text.contains(planted),
            "the raw principal appears in the {what}"
        );
        assert!(
            !text.contains(client_ip),
            "the client address (an ip principal) appears in the {what}"
        );
    }
    // Every line is JSON; access events carry the fields operators filter on.
    let events: Vec<Json> = logs
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(events.len() > 10);
    let access: Vec<&Json> = events
        .iter()
        .filter(|e| e["target"] == "tether::access")
        .collect();
    let http = access
        .iter()
        .find(|e| e["kind"] == "http")
        .expect("no http access event");
    for field in [
        "route",
        "backend",
        "status",
        "duration_ms",
        "principal",
        "method",
    ] {
        assert!(
            !http[field].is_null(),
            "http access event lacks {field}: {http}"
        );
    }
    let tunnel = access
        .iter()
        .find(|e| e["kind"] == "tunnel")
        .expect("no tunnel access event");
    for field in [
        "route",
        "backend",
        "reason",
        "bytes_up",
        "bytes_down",
        "duration_ms",
        "principal",
    ] {
        assert!(
            !tunnel[field].is_null(),
            "tunnel access event lacks {field}: {tunnel}"
        );
    }
    assert_eq!(
        tunnel["principal"].as_str().unwrap().len(),
        8,
        "a fingerprint, not a value"
    );
}

#[tokio::test]
async fn the_grafana_dashboard_uses_only_exported_metrics() {
    let dashboard: Json = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/conf/grafana-dashboard.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            exprs.push(target["expr"].as_str().unwrap().to_owned());
        }
    }
    assert!(exprs.len() >= 8, "{exprs:?}");
    // A scrape with some traffic, so every family has samples.
    let nodes = nodes(&["a"]).await;
    let proxy = Proxy::start(&format!("{ADMIN}{}", config(&nodes, "", ""))).await;
    http_node(proxy.addr, "/info", &[]).await;
    let (_s, _) = ws(proxy.addr, "/ws", &[]).await;
    let (_, text) = admin(proxy.admin.unwrap(), "/metrics", None).await;
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
    let exported: std::collections::HashSet<&str> =
        scrape.samples.iter().map(|s| s.metric.as_str()).collect();
    for expr in &exprs {
        for name in expr
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("tether_"))
        {
            let base = name
                .trim_end_matches("_bucket")
                .trim_end_matches("_sum")
                .trim_end_matches("_count");
            let known = exported.contains(name)
                || exported
                    .iter()
                    .any(|e| e.starts_with(base) && base.ends_with("_seconds"));
            assert!(
                known,
                "the dashboard queries {name}, which tether does not export ({expr})"
            );
        }
    }
    proxy.stop().await;
}

/// A backend whose answer breaks off mid-body: the access event says the response was
/// cut and that the backend failed (not that the client left), and a warning names
/// it, as nginx logs "upstream prematurely closed connection".
#[tokio::test]
async fn a_backend_failing_mid_body_is_logged_as_the_backends_doing() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && s.read(&mut byte).await.unwrap_or(0) == 1 {
                    head.push(byte[0]);
                }
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nx")
                    .await;
                // Reset, one byte of a hundred sent.
                let _ = s.set_zero_linger();
            });
        }
    });
    let toml = format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\n[[route]]\npath = \"/\"\nupstream = \"app\"\n\
         [upstream.app]\nbackends = [\"{backend}\"]\n"
    );
    let (_dir, path) = write_config(&toml);
    let mut bin = Binary::spawn(&["run", "--config", &path]);
    let addr = bin.wait_listening();
    let (mut s, head) = raw_head(addr, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest).await;
    assert!(rest.len() < 100, "the whole body arrived");
    let event = bin.wait_for("tether::access");
    for field in [
        "status=200",
        "bytes_down=1",
        "aborted=true",
        "backend_failed=true",
    ] {
        assert!(event.contains(field), "{field} missing: {event}");
    }
    let warning = bin.wait_for("failed mid-body");
    assert!(warning.contains("WARN"), "{warning}");
    bin.signal("TERM");
    assert!(bin.wait_exit().success());
}

/// A reload removes a backend that holds tunnels: until `removal_grace` closes them,
/// `/api/backends` lists it as `removed` with its tunnels, so the rows add up to the
/// upstream's count; a backend the reload adds says so.
#[tokio::test]
async fn backends_removed_by_a_reload_are_listed_while_they_hold_tunnels() {
    let nodes = nodes(&["a", "b"]).await;
    let route = r#"principal = ["query:u"]"#;
    let both = format!("{ADMIN}{}", config(&nodes, route, ""));
    let proxy = Proxy::start(&both).await;
    let admin_addr = proxy.admin.unwrap();
    let mut sockets = Vec::new();
    for i in 0..8 {
        sockets.push(ws(proxy.addr, &format!("/ws?u=r{i}"), &[]).await);
    }
    let on_b = sockets.iter().filter(|(_, g)| g["node"] == "b").count();
    assert!(on_b > 0, "no tunnel on b");
    // b out, c in; tunnels on b stay until the grace ends (the library reload).
    let c = tether::demo::Node::start("c").await.unwrap();
    let next = both.replace(
        &format!("\"{}\", name = \"b\"", nodes[1].addr),
        &format!("\"{}\", name = \"c\"", c.addr),
    );
    assert_ne!(next, both);
    proxy
        .live
        .replace(&tether::config::Config::parse(&next, "t").unwrap());
    let body: Json =
        serde_json::from_str(&admin(admin_addr, "/api/backends", None).await.1).unwrap();
    let app = &body["upstreams"][0];
    let row = |id: &str| {
        app["backends"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["id"] == id)
            .cloned()
    };
    let b = row("b").expect("no row for the removed b");
    assert_eq!(b["state"], "removed");
    assert_eq!(b["tunnels"], on_b);
    let sum: u64 = app["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["tunnels"].as_u64().unwrap())
        .sum();
    assert_eq!(app["tunnels"].as_u64().unwrap(), sum);
    let added = row("c").expect("no row for c");
    assert!(
        added["reason"]
            .as_str()
            .unwrap()
            .starts_with("added by a reload"),
        "{added}"
    );
    assert!(
        row("a").unwrap()["reason"]
            .as_str()
            .unwrap()
            .starts_with("started")
    );
    drop(sockets);
    c.stop().await;
    proxy.stop().await;
}

/// A request the admin listener refuses for its token is logged (at most once a
/// second), without the token it carried.
#[tokio::test]
async fn refused_admin_requests_are_logged_without_their_token() {
    let nodes = nodes(&["a"]).await;
    let toml = format!(
        "{ADMIN}token = \"the-right-token-0123\"\n{}",
        config(&nodes, "", "")
    );
    let (_dir, path) = write_config(&toml);
    let mut bin = Binary::spawn(&["run", "--config", &path]);
    bin.wait_listening();
    let admin_addr = bin.wait_admin();
    let wrong = "a-wrong-token-98765";
    assert_eq!(admin(admin_addr, "/metrics", Some(wrong)).await.0, 401);
    let line = bin.wait_for("without a valid token");
    assert!(line.contains("WARN") && line.contains("/metrics"), "{line}");
    bin.signal("TERM");
    assert!(bin.wait_exit().success());
    assert!(!bin.output().contains(wrong));
}
