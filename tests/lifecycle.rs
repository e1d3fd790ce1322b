//! Lifecycle of the real binary under real signals: SIGHUP reloads (valid, invalid,
//! adding and removing backends, moving listeners) under live traffic without dropping
//! anything that survives; SIGTERM drains gracefully; a second signal exits at once;
//! systemd is told READY / RELOADING / STOPPING.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tether::demo::Node;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

/// A config over `backends`, with rebalancing off and a short removal grace.
fn cfg(backends: &[&Node], extra: &str) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|n| format!("{{ addr = \"{}\", name = \"{}\" }}", n.addr, n.name))
        .collect();
    format!(
        "removal_grace = \"1s\"\n{extra}\n[[listener]]\nbind = \"127.0.0.1:0\"\n\n\
         [[route]]\npath = \"/\"\nupstream = \"app\"\nprincipal = [\"query:u\"]\n\n\
         [upstream.app]\nbackends = [{}]\nrebalance = \"off\"\n\
         [upstream.app.health]\ninterval = \"200ms\"\n",
        list.join(", ")
    )
}

/// What a talking client ended with.
#[derive(Debug)]
struct Talk {
    node: String,
    exchanged: u64,
    /// The close code if the tunnel was closed on it (`Some(None)`: closed without one).
    closed: Option<Option<u16>>,
}

/// A client that sends a numbered message every 100 ms and checks that each echo comes
/// back in order, until `stop` or until its tunnel is closed.
async fn talker(
    addr: std::net::SocketAddr,
    key: String,
    stop: watch::Receiver<bool>,
    echoes: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<Talk> {
    let (mut ws, greeting) = ws(addr, &format!("/ws?u={key}"), &[]).await;
    let node = greeting["node"].as_str().unwrap().to_owned();
    tokio::spawn(async move {
        let mut stop = stop;
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut n = 0u64;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return Talk { node, exchanged: n, closed: None },
            }
            if ws.send(Message::text(format!("{key}:{n}"))).await.is_err() {
                return Talk {
                    node,
                    exchanged: n,
                    closed: Some(None),
                };
            }
            match ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    assert_eq!(t.as_str(), format!("{key}:{n}"), "lost or reordered");
                    n += 1;
                    echoes.fetch_add(1, Ordering::Relaxed);
                }
                Some(Ok(Message::Close(f))) => {
                    return Talk {
                        node,
                        exchanged: n,
                        closed: Some(f.map(|f| f.code.into())),
                    };
                }
                // Anything else (an error, the end of the stream) is a close without code.
                _ => {
                    return Talk {
                        node,
                        exchanged: n,
                        closed: Some(None),
                    };
                }
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_reloads_under_live_traffic_drop_nothing_that_survives() {
    let nodes = nodes(&["a", "b", "c", "d"]).await;
    let [a, b, c, d] = [&nodes[0], &nodes[1], &nodes[2], &nodes[3]];
    let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    let (_dir, path) = write_config(&cfg(&[a, b, c], ""));
    let mut bin = Binary::spawn(&["run", "--config", &path]);
    let addr = bin.wait_listening();

    // 500 tunnels exchanging messages, and a stream of plain requests.
    let (stop_tx, stop_rx) = watch::channel(false);
    let echoes = Arc::new(AtomicU64::new(0));
    let mut talkers = Vec::new();
    for i in 0..500 {
        talkers.push(talker(addr, format!("u{i}"), stop_rx.clone(), echoes.clone()).await);
    }
    let http_loop = tokio::spawn({
        let mut stop = stop_rx.clone();
        async move {
            let client =
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .build_http::<http_body_util::Empty<bytes::Bytes>>();
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !*stop.borrow_and_update() {
                let uri: hyper::Uri = format!("http://{addr}/info?u=h{ok}").parse().unwrap();
                match client.get(uri).await {
                    Ok(r) if r.status() == 200 => ok += 1,
                    Ok(r) => failed.push(r.status().to_string()),
                    Err(e) => failed.push(e.to_string()),
                }
            }
            (ok, failed)
        }
    });

    // Valid and invalid reloads over a backend set; the set itself changes twice.
    let mixed = |set: &[&Node]| -> Vec<(String, bool)> {
        let base = cfg(set, "");
        vec![
            (base.clone(), true),
            (base.replace("[[route]]", "[[route"), false),
            (
                base.clone() + "[[route]]\npath = \"/api\"\nupstream = \"app\"\n",
                true,
            ),
            (cfg(set, "bogus = 1"), false),
            (
                base.clone() + "[[route]]\npath = \"/x\"\nupstream = \"nope\"\n",
                false,
            ),
            (
                base.replace(
                    "bind = \"127.0.0.1:0\"",
                    "bind = \"127.0.0.1:0\"\ntrusted_proxies = [\"10.0.0.0/8\"]",
                ),
                true,
            ),
            (
                base.clone() + &format!("[[listener]]\nbind = \"127.0.0.1:{taken_port}\"\n"),
                false,
            ),
            (cfg(set, "drain_timeout = \"nonsense\""), false),
        ]
    };
    let mut rounds: Vec<(String, bool)> = mixed(&[a, b, c])[..5].to_vec();
    rounds.push((cfg(&[a, b, c, d], ""), true)); // adds d
    rounds.extend_from_slice(&mixed(&[a, b, c, d])[..5]);
    rounds.push((cfg(&[a, b, d], ""), true)); // removes c
    rounds.extend(mixed(&[a, b, d]));
    assert_eq!(rounds.len(), 20);
    for (round, (text, valid)) in rounds.iter().enumerate() {
        std::fs::write(&path, text).unwrap();
        let before = echoes.load(Ordering::Relaxed);
        bin.signal("HUP");
        let line = bin.wait_for_any(&["configuration reloaded", "reload failed"]);
        assert_eq!(
            line.contains("configuration reloaded"),
            *valid,
            "round {round}: {line}"
        );
        // Let traffic flow between reloads: most tunnels exchange once.
        eventually(|| async { (echoes.load(Ordering::Relaxed) >= before + 300).then_some(()) })
            .await;
    }

    // c was removed: after the grace its clients are told 1001; then one more round of
    // exchanges so every talker has noticed.
    bin.wait_for("closed the tunnels of removed backends");
    let settled = echoes.load(Ordering::Relaxed);
    eventually(|| async { (echoes.load(Ordering::Relaxed) >= settled + 700).then_some(()) }).await;
    stop_tx.send(true).unwrap();
    let mut on = std::collections::HashMap::<String, usize>::new();
    for t in talkers {
        let talk = t.await.unwrap();
        *on.entry(talk.node.clone()).or_default() += 1;
        if talk.node == "c" {
            assert_eq!(talk.closed, Some(Some(1001)), "{talk:?}");
        } else {
            assert_eq!(
                talk.closed, None,
                "a tunnel on a surviving backend was dropped: {talk:?}"
            );
            assert!(talk.exchanged >= 20, "{talk:?}");
        }
    }
    assert!(on["c"] > 100 && on["a"] > 100 && on["b"] > 100, "{on:?}");
    let (ok, failed) = http_loop.await.unwrap();
    eprintln!(
        "20 reloads: {on:?} tunnels, {} echoes, {ok} HTTP requests",
        echoes.load(Ordering::Relaxed)
    );
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        ok as usize + failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(ok > 50, "only {ok} requests");
    bin.signal("TERM");
    assert!(bin.wait_exit().success());
    drop(taken);
}

#[tokio::test]
async fn a_broken_reload_keeps_the_old_behaviour_and_says_where() {
    let nodes = nodes(&["a", "b"]).await;
    let good = cfg(&[&nodes[0]], "");
    let (_dir, path) = write_config(&good);
    let mut bin = Binary::spawn(&["run", "--config", &path]);
    let addr = bin.wait_listening();
    assert_eq!(http_node(addr, "/info", &[]).await, "a");

    // Points everything at b, but with a typo on line 2.
    let broken = cfg(&[&nodes[1]], "drain_timout = \"1s\"");
    std::fs::write(&path, &broken).unwrap();
    bin.signal("HUP");
    let line = bin.wait_for("reload failed");
    assert!(
        line.contains(&format!("{path}:2:1: unknown field `drain_timout`")),
        "{line}"
    );
    assert_eq!(
        http_node(addr, "/info", &[]).await,
        "a",
        "the broken file took effect"
    );

    // A new listener on a port someone else holds: refused as a whole, too.
    let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = taken.local_addr().unwrap().port();
    std::fs::write(
        &path,
        cfg(&[&nodes[1]], "") + &format!("[[listener]]\nbind = \"127.0.0.1:{port}\"\n"),
    )
    .unwrap();
    bin.signal("HUP");
    let line = bin.wait_for("reload failed");
    assert!(
        line.contains(&format!("{path}: cannot listen on 127.0.0.1:{port}")),
        "{line}"
    );
    assert_eq!(http_node(addr, "/info", &[]).await, "a");

    // Fixed: it applies.
    std::fs::write(&path, cfg(&[&nodes[1]], "")).unwrap();
    bin.signal("HUP");
    bin.wait_for("configuration reloaded");
    assert_eq!(http_node(addr, "/info", &[]).await, "b");
    bin.signal("TERM");
    assert!(bin.wait_exit().success());
}

#[tokio::test]
async fn a_listener_moved_by_reload_opens_the_new_and_closes_the_old() {
    let nodes = nodes(&["a"]).await;
    let (_dir, path) = write_config(&cfg(&[&nodes[0]], ""));
    let mut bin = Binary::spawn(&["run", "--config", &path]);
    let old = bin.wait_listening();
    let (mut kept, _) = ws(old, "/ws", &[]).await;

    // 127.0.0.2 is loopback too: a different bind, again on an ephemeral port.
    std::fs::write(
        &path,
        cfg(&[&nodes[0]], "").replace("127.0.0.1:0", "127.0.0.2:0"),
    )
    .unwrap();
    bin.signal("HUP");
    let new = bin.wait_listening_on("bind=127.0.0.2:0");
    bin.wait_for("configuration reloaded");
    assert_eq!(http_node(new, "/info", &[]).await, "a");
    eventually(|| async { TcpStream::connect(old).await.is_err().then_some(()) }).await;
    // A tunnel accepted by the old listener carries on.
    send_text(&mut kept, "still here").await;
    assert_eq!(next_text(&mut kept).await, "still here");
    bin.signal("TERM");
    assert!(bin.wait_exit().success());
}

#[tokio::test]
async fn sigterm_closes_tunnels_with_1001_finishes_requests_and_exits_0() {
    let nodes = nodes(&["a"]).await;
    let held = HeldBackend::start().await;
    let text = cfg(&[&nodes[0]], "drain_timeout = \"30s\"")
        + &format!(
            "[[route]]\npath = \"/held\"\nupstream = \"held\"\n[upstream.held]\nbackends = [\"{}\"]\n",
            held.addr
        );
    let (_dir, path) = write_config(&text);
    let mut bin = Binary::spawn(&["run", "--config", &path]);
    let addr = bin.wait_listening();
    let mut sockets = Vec::new();
    for i in 0..5 {
        sockets.push(ws(addr, &format!("/ws?u={i}"), &[]).await.0);
    }
    let mut held = held;
    let in_flight = tokio::spawn(http(addr, get("t", "/held", &[])));
    held.arrived.recv().await.unwrap();

    bin.signal("TERM");
    for s in &mut sockets {
        match tokio::time::timeout(PATIENCE, s.next()).await.unwrap() {
            Some(Ok(Message::Close(Some(f)))) => assert_eq!(u16::from(f.code), 1001),
            other => panic!("expected Close 1001, got {other:?}"),
        }
    }
    // The listening socket is gone at once: a new instance could bind the port now,
    // while this one still drains the request in flight.
    eventually(|| async { std::net::TcpListener::bind(addr).is_ok().then_some(()) }).await;
    held.release();
    let (status, _, body) = in_flight.await.unwrap();
    assert_eq!((status.as_u16(), &body[..]), (200, &b"held"[..]));
    let exit = bin.wait_exit();
    assert!(exit.success(), "{exit:?}");
}

/// Logs go to stderr. When whatever reads them goes away (a log shipper restarting,
/// `| head`), tether loses log lines, not traffic, and still exits 0.
#[tokio::test]
async fn a_closed_log_pipe_loses_log_lines_not_traffic() {
    let nodes = nodes(&["a"]).await;
    let (_dir, path) = write_config(&cfg(&[&nodes[0]], ""));
    let mut bin = Binary::spawn(&["run", "--config", &path]);
    let addr = bin.wait_listening();
    bin.close_output();
    // Each request writes an access log line; the first ones close the pipe.
    for i in 0..20 {
        assert_eq!(http_node(addr, &format!("/info?u={i}"), &[]).await, "a");
    }
    let (mut s, _) = ws(addr, "/ws?u=x", &[]).await;
    send_text(&mut s, "still proxying").await;
    assert_eq!(next_text(&mut s).await, "still proxying");
    bin.signal("TERM");
    let exit = bin.wait_exit();
    assert!(exit.success(), "{exit:?}");
}

/// `workers = 1` runs tether on a current-thread runtime (what the benchmark pins to one
/// core): it must serve, reload and drain exactly like the multi-threaded one.
#[tokio::test]
async fn one_worker_serves_reloads_and_drains_like_many() {
    let nodes = nodes(&["a", "b"]).await;
    let (_dir, path) = write_config(&cfg(&[&nodes[0]], "workers = 1"));
    let mut bin = Binary::spawn(&["run", "--config", &path]);
    let addr = bin.wait_listening();
    assert!(bin.output().contains("workers=1"));
    // One thread in all: the runtime runs on the main thread, no worker beside it.
    assert_eq!(bin.proc_status_kb("Threads:"), 1);
    let (mut kept, _) = ws(addr, "/ws?u=k", &[]).await;

    std::fs::write(&path, cfg(&[&nodes[0], &nodes[1]], "workers = 1")).unwrap();
    bin.signal("HUP");
    bin.wait_for("configuration reloaded");
    let mut seen = std::collections::HashSet::new();
    for i in 0..40 {
        seen.insert(http_node(addr, &format!("/info?u={i}"), &[]).await);
    }
    assert_eq!(
        seen.len(),
        2,
        "the added backend joined placement: {seen:?}"
    );
    send_text(&mut kept, "still here").await;
    assert_eq!(next_text(&mut kept).await, "still here");
    // `workers` is read at start: a reload that changes it says so.
    std::fs::write(&path, cfg(&[&nodes[0], &nodes[1]], "workers = 2")).unwrap();
    bin.signal("HUP");
    bin.wait_for("`workers` is read at start: restart tether to apply");

    bin.signal("TERM");
    match tokio::time::timeout(PATIENCE, kept.next()).await.unwrap() {
        Some(Ok(Message::Close(Some(f)))) => assert_eq!(u16::from(f.code), 1001),
        other => panic!("expected Close 1001, got {other:?}"),
    }
    assert!(bin.wait_exit().success());
}

#[tokio::test]
async fn a_second_signal_exits_without_waiting_for_the_drain() {
    let held = HeldBackend::start().await;
    let text = format!(
        "drain_timeout = \"1h\"\n[[listener]]\nbind = \"127.0.0.1:0\"\n[[route]]\npath = \"/\"\nupstream = \"held\"\n\
         [upstream.held]\nbackends = [\"{}\"]\n",
        held.addr
    );
    let (_dir, path) = write_config(&text);
    let mut bin = Binary::spawn(&["run", "--config", &path]);
    let addr = bin.wait_listening();
    let mut held = held;
    let _in_flight = tokio::spawn(http(addr, get("t", "/", &[])));
    held.arrived.recv().await.unwrap();
    bin.signal("TERM");
    bin.wait_for("shutting down");
    // A reload during the drain is declined, and says so.
    bin.signal("HUP");
    bin.wait_for("SIGHUP received while shutting down: not reloading");
    bin.signal("INT");
    let exit = bin.wait_exit();
    assert_eq!(exit.code(), Some(1));
    assert!(bin.output().contains("SIGINT received while shutting down"));
}

#[tokio::test]
async fn surviving_backends_keep_their_health_across_a_reload() {
    let nodes = nodes(&["a", "b"]).await;
    let one = cfg(&[&nodes[0], &nodes[1]], "").replace("interval = \"200ms\"", "interval = \"1h\"");
    let config = tether::config::Config::parse(&one, "t").unwrap();
    let live = Arc::new(tether::Live::new(&config));
    let server = tether::Server::start(live.clone(), Vec::new());
    let snap = live.load();
    let a = snap.upstream("app").unwrap().backend("a").unwrap();
    let t = snap.upstream("app").unwrap().config.health.thresholds;
    assert!(a.health.passive_failure(&t, "test").is_some());
    let c = Node::start("c").await.unwrap();
    let two =
        cfg(&[&nodes[0], &nodes[1], &c], "").replace("interval = \"200ms\"", "interval = \"1h\"");
    server.reload(
        &tether::config::Config::parse(&two, "t").unwrap(),
        Vec::new(),
    );
    let after = live.load();
    let a2 = after.upstream("app").unwrap().backend("a").unwrap();
    assert!(Arc::ptr_eq(&a.health, &a2.health));
    assert!(!a2.health.is_up(), "a's down state was lost");
    assert!(
        after
            .upstream("app")
            .unwrap()
            .backend("c")
            .unwrap()
            .health
            .is_up()
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_shorter_probe_interval_applies_at_once() {
    let mut nodes = nodes(&["a", "b"]).await;
    let slow =
        cfg(&[&nodes[0], &nodes[1]], "").replace("interval = \"200ms\"", "interval = \"1h\"");
    let live = Arc::new(tether::Live::new(
        &tether::config::Config::parse(&slow, "t").unwrap(),
    ));
    let server = tether::Server::start(live.clone(), Vec::new());
    // Let the supervisor start the probers and each begin its hour-long wait.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    let fast =
        cfg(&[&nodes[0], &nodes[1]], "").replace("interval = \"200ms\"", "interval = \"50ms\"");
    server.reload(
        &tether::config::Config::parse(&fast, "t").unwrap(),
        Vec::new(),
    );
    nodes.remove(0).stop().await;
    // Found by the new interval, not after the hour the old one had left to run.
    eventually(|| async {
        let snap = live.load();
        (!snap.upstream("app")?.backend("a")?.health.is_up()).then_some(())
    })
    .await;
    server.shutdown().await;
}

#[tokio::test]
async fn systemd_is_told_ready_reloading_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = tokio::net::UnixDatagram::bind(&sock_path).unwrap();
    let nodes = nodes(&["a"]).await;
    let (_cfg_dir, path) = write_config(&cfg(&[&nodes[0]], ""));
    let mut bin = Binary::spawn_env(
        &["run", "--config", &path],
        &[("NOTIFY_SOCKET", sock_path.to_str().unwrap())],
    );
    let mut buf = [0u8; 256];
    let mut next = async || {
        let n = tokio::time::timeout(PATIENCE, sock.recv(&mut buf))
            .await
            .expect("no notification")
            .unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert_eq!(next().await, "READY=1\n");
    let addr = bin.wait_listening();
    assert_eq!(http_node(addr, "/info", &[]).await, "a");
    bin.signal("HUP");
    let reloading = next().await;
    assert!(
        reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "{reloading}"
    );
    let usec: u64 = reloading
        .trim_end()
        .rsplit('=')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(usec > 0);
    assert_eq!(next().await, "READY=1\nSTATUS=configuration reloaded\n");
    // A broken file: the reload is over (READY=1) and its failure shows in the status.
    std::fs::write(&path, "[[listener]]\nbind = 1\n").unwrap();
    bin.signal("HUP");
    assert!(next().await.starts_with("RELOADING=1\n"));
    let failed = next().await;
    assert!(
        failed.starts_with("READY=1\nSTATUS=reload failed, the running configuration stays: ")
            && failed.contains("tether.toml:2:8"),
        "{failed}"
    );
    bin.signal("TERM");
    assert_eq!(next().await, "STOPPING=1\n");
    assert!(bin.wait_exit().success());
}
