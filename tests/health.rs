//! Backend death and return with live clients: a dead node's clients (and only they)
//! are closed with 1012 and reconnect to their next node; when the node returns, its
//! principals are drained back at the configured rate after the hold time; hung
//! backends are timed out and routed around; bounded load caps every backend; each
//! transition is logged once.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use tether::principal::Principal;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

const CLIENTS: usize = 300;

/// What a roaming client saw, in order.
#[derive(Debug, Clone)]
enum Event {
    On(String),
    Closed(Option<u16>, Instant),
}

/// 300 clients, one principal each, that reconnect whenever they are closed.
struct Crowd {
    logs: Vec<(String, Arc<Mutex<Vec<Event>>>)>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Crowd {
    async fn start(addr: std::net::SocketAddr) -> Crowd {
        let mut crowd = Crowd {
            logs: Vec::new(),
            tasks: Vec::new(),
        };
        for i in 0..CLIENTS {
            let key = format!("user-{i}");
            let log = Arc::new(Mutex::new(Vec::new()));
            crowd
                .tasks
                .push(tokio::spawn(roam(addr, key.clone(), log.clone())));
            crowd.logs.push((key, log));
        }
        crowd.wait(|_, e| e.len() == 1).await;
        crowd
    }

    fn events(&self, key: &str) -> Vec<Event> {
        let (_, log) = self.logs.iter().find(|(k, _)| k == key).unwrap();
        log.lock().unwrap().clone()
    }

    /// Waits until `done(key, events)` holds for every client.
    async fn wait(&self, done: impl Fn(&str, &[Event]) -> bool) {
        eventually(|| async {
            self.logs
                .iter()
                .all(|(k, log)| done(k, &log.lock().unwrap()))
                .then_some(())
        })
        .await;
    }

    /// No node holds more than bounded load's cap for `factor` over three nodes.
    fn assert_within(&self, factor: f64) {
        let cap = (factor * CLIENTS as f64 / 3.0).ceil() as usize;
        let mut load: HashMap<String, usize> = HashMap::new();
        for node in self.nodes().into_values() {
            *load.entry(node).or_default() += 1;
        }
        assert!(load.values().all(|l| *l <= cap), "cap {cap}: {load:?}");
    }

    fn nodes(&self) -> HashMap<String, String> {
        self.logs
            .iter()
            .map(|(k, log)| {
                let last = log.lock().unwrap().iter().rev().find_map(|e| match e {
                    Event::On(n) => Some(n.clone()),
                    Event::Closed(..) => None,
                });
                (k.clone(), last.unwrap())
            })
            .collect()
    }
}

impl Drop for Crowd {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn roam(addr: std::net::SocketAddr, key: String, log: Arc<Mutex<Vec<Event>>>) {
    let url = format!("ws://{addr}/ws?u={key}");
    loop {
        let Ok((mut ws, _)) = tokio_tungstenite::connect_async(url.as_str()).await else {
            // Bounded by the test's own patience; a refused connect is retried.
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let greeting = match ws.next().await {
            Some(Ok(Message::Text(t))) => t,
            _ => continue,
        };
        let v: serde_json::Value = serde_json::from_str(&greeting).unwrap();
        log.lock()
            .unwrap()
            .push(Event::On(v["node"].as_str().unwrap().to_owned()));
        let code = loop {
            match ws.next().await {
                Some(Ok(Message::Close(f))) => break f.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => break None,
            }
        };
        log.lock()
            .unwrap()
            .push(Event::Closed(code, Instant::now()));
    }
}

fn order(proxy: &Proxy, key: &str) -> Vec<String> {
    let snap = proxy.live.load();
    let up = snap.upstream("app").unwrap();
    let k = Principal::from_bytes(key.as_bytes()).key();
    up.table
        .order(k)
        .into_iter()
        .map(|i| up.backends[i].id.to_string())
        .collect()
}

fn next_after(proxy: &Proxy, key: &str, dead: &str) -> String {
    order(proxy, key).into_iter().find(|n| n != dead).unwrap()
}

const PROBES: &str = "rebalance_hold = \"500ms\"\nrebalance_rate = 40\n\
                      [upstream.app.health]\ninterval = \"100ms\"\ntimeout = \"500ms\"\nrise = 2\nfall = 2\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_clients_move_with_1012_and_drain_back_at_the_rate_when_it_returns() {
    let mut nodes = nodes(&["a", "b", "c"]).await;
    let proxy = Proxy::start(&config(&nodes, r#"principal = ["query:u"]"#, PROBES)).await;
    let crowd = Crowd::start(proxy.addr).await;
    let on_b: Vec<String> = crowd
        .logs
        .iter()
        .map(|(k, _)| k.clone())
        .filter(|k| order(&proxy, k)[0] == "b")
        .collect();
    assert!(
        (70..130).contains(&on_b.len()),
        "{} of {CLIENTS} on b",
        on_b.len()
    );
    for (k, node) in crowd.nodes() {
        assert_eq!(node, order(&proxy, &k)[0], "{k} is not on its owner");
    }

    // b dies (its process exits: its sockets close, no WebSocket close frames).
    let b = nodes.remove(1);
    let b_addr = b.addr;
    b.stop().await;
    crowd
        .wait(|k, e| !on_b.iter().any(|b| b == k) || e.len() >= 3)
        .await;
    for k in &on_b {
        let e = crowd.events(k);
        assert!(matches!(e[1], Event::Closed(Some(1012), _)), "{k}: {e:?}");
        assert!(
            matches!(&e[2], Event::On(n) if *n == next_after(&proxy, k, "b")),
            "{k}: {e:?}"
        );
    }
    for (k, _) in crowd.logs.iter().filter(|(k, _)| !on_b.contains(k)) {
        assert_eq!(
            crowd.events(k).len(),
            1,
            "{k} was disturbed: {:?}",
            crowd.events(k)
        );
    }

    // b comes back: after rise + hold its principals drain back, 40 per second at most.
    let back = Instant::now();
    let b = tether::demo::Node::start_on("b", b_addr).await.unwrap();
    crowd
        .wait(|k, e| !on_b.iter().any(|b| b == k) || e.len() >= 5)
        .await;
    let mut closes = Vec::new();
    for k in &on_b {
        let e = crowd.events(k);
        match (&e[3], &e[4]) {
            (Event::Closed(Some(1012), at), Event::On(n)) if n == "b" => closes.push(*at),
            _ => panic!("{k} did not drain back to b: {e:?}"),
        }
    }
    closes.sort();
    assert!(
        closes[0] - back >= Duration::from_millis(500),
        "drained before the hold: {:?}",
        closes[0] - back
    );
    for (i, t) in closes.iter().enumerate() {
        let within_a_second = closes[i..]
            .iter()
            .take_while(|u| **u - *t < Duration::from_secs(1))
            .count();
        assert!(
            within_a_second <= 40 + 2,
            "{within_a_second} closes within one second"
        );
    }
    for (k, _) in crowd.logs.iter().filter(|(k, _)| !on_b.contains(k)) {
        assert_eq!(
            crowd.events(k).len(),
            1,
            "{k} was disturbed: {:?}",
            crowd.events(k)
        );
    }
    // In the end every client and every registered tunnel sits on its owner.
    for (k, node) in crowd.nodes() {
        assert_eq!(node, order(&proxy, &k)[0], "{k}");
    }
    let snap = proxy.live.load();
    let app = snap.upstream("app").unwrap();
    for entry in proxy.live.registry.entries() {
        assert_eq!(entry.backend.id, app.owner(entry.key).unwrap().id);
    }
    drop(crowd);
    b.stop().await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_node_is_found_by_probes_and_only_its_clients_are_closed() {
    let nodes = nodes(&["a", "b", "c"]).await;
    let proxy = Proxy::start(&config(&nodes, r#"principal = ["query:u"]"#, PROBES)).await;
    let crowd = Crowd::start(proxy.addr).await;
    let on_b: Vec<String> = crowd
        .logs
        .iter()
        .map(|(k, _)| k.clone())
        .filter(|k| order(&proxy, k)[0] == "b")
        .collect();

    // b hangs: it refuses new connections and says nothing on its open ones, no FIN.
    let frozen_at = Instant::now();
    nodes[1].freeze();
    crowd
        .wait(|k, e| !on_b.iter().any(|b| b == k) || e.len() >= 3)
        .await;
    let mut last_close = frozen_at;
    for k in &on_b {
        let e = crowd.events(k);
        match (&e[1], &e[2]) {
            (Event::Closed(Some(1012), at), Event::On(n)) if *n == next_after(&proxy, k, "b") => {
                last_close = last_close.max(*at)
            }
            _ => panic!("{k}: {e:?}"),
        }
    }
    for (k, _) in crowd.logs.iter().filter(|(k, _)| !on_b.contains(k)) {
        assert_eq!(crowd.events(k).len(), 1, "{k} was disturbed");
    }
    eprintln!(
        "probe interval 100ms, fall 2: {} clients of a silent node closed {:?} after it went silent",
        on_b.len(),
        last_close - frozen_at
    );
    drop(crowd);
    proxy.stop().await;
    for n in nodes {
        n.stop().await;
    }
}

/// A backend that accepts connections and never answers.
async fn hung_backend() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    (addr, task)
}

#[tokio::test]
async fn a_hung_backend_is_timed_out_and_routed_around() {
    let live = nodes(&["a", "b"]).await;
    let (hung, task) = hung_backend().await;
    // Probes off the path (a TCP probe would pass anyway); many failures allowed, so
    // every request below meets the hung node first.
    let toml = format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\n[[route]]\npath = \"/\"\nupstream = \"app\"\nprincipal = [\"query:u\"]\n\
         [upstream.app]\nbackends = [{{ addr = \"{}\", name = \"a\" }}, {{ addr = \"{}\", name = \"b\" }}, {{ addr = \"{hung}\", name = \"hung\" }}]\n\
         upgrade_timeout = \"300ms\"\nresponse_timeout = \"300ms\"\n\
         [upstream.app.health]\ninterval = \"1h\"\npassive_fails = 1000\n",
        live[0].addr, live[1].addr
    );
    let proxy = Proxy::start(&toml).await;
    let keys: Vec<String> = (0..300)
        .map(|i| format!("k{i}"))
        .filter(|k| order(&proxy, k)[0] == "hung")
        .take(3)
        .collect();
    for k in &keys {
        let next = next_after(&proxy, k, "hung");
        assert_eq!(
            http_node(proxy.addr, &format!("/info?u={k}"), &[]).await,
            next
        );
        assert_eq!(ws_node(proxy.addr, &format!("/ws?u={k}"), &[]).await, next);
    }
    // A request with a body that already went out cannot be sent twice: 504.
    let body = format!(
        "POST /echo?u={} HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello",
        keys[0]
    );
    let (_, head) = raw_head(proxy.addr, body.as_bytes()).await;
    assert!(head.starts_with("HTTP/1.1 504"), "{head}");
    task.abort();
    proxy.stop().await;
}

/// A live backend with no WebSocket handler where upgrades are sent: it answers every
/// plain request at once, but holds an upgrade request without answering (as a
/// long-poll endpoint does).
async fn holding_backend() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut s, _)) = l.accept().await {
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf).await {
                    Ok(n) if n > 0 => head.extend_from_slice(&buf[..n]),
                    _ => break,
                }
            }
            if String::from_utf8_lossy(&head)
                .to_ascii_lowercase()
                .contains("upgrade: websocket")
            {
                held.push(s);
            } else {
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    )
                    .await;
            }
        }
    });
    (addr, task)
}

#[tokio::test]
async fn an_unanswered_upgrade_takes_a_silent_node_down_but_not_a_live_one() {
    // Anyone can send an upgrade to a path that holds it; if that took the node down,
    // one request would close every tunnel on it, and then on the next node.
    let live = nodes(&["a"]).await;
    let (holding, holding_task) = holding_backend().await;
    let (silent, silent_task) = hung_backend().await;
    let toml = format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\n[[route]]\npath = \"/\"\nupstream = \"app\"\nprincipal = [\"query:u\"]\n\
         [upstream.app]\nbackends = [{{ addr = \"{}\", name = \"a\" }}, {{ addr = \"{holding}\", name = \"holding\" }}, {{ addr = \"{silent}\", name = \"silent\" }}]\n\
         upgrade_timeout = \"300ms\"\n[upstream.app.health]\ninterval = \"1h\"\ntimeout = \"2s\"\npassive_fails = 1\n",
        live[0].addr
    );
    let proxy = Proxy::start(&toml).await;
    let key_of = |first: &str| {
        (0..1000)
            .map(|i| format!("k{i}"))
            .find(|k| order(&proxy, k)[..2] == [first.to_owned(), "a".to_owned()])
            .unwrap()
    };
    let health = |id: &str| {
        let snap = proxy.live.load();
        snap.upstream("app")
            .unwrap()
            .backend(id)
            .unwrap()
            .health
            .clone()
    };
    // The upgrade moves on at once; whether the node answers anything is asked beside
    // it (the check starts before the upgrade moves on).
    let k = key_of("holding");
    assert_eq!(ws_node(proxy.addr, &format!("/ws?u={k}"), &[]).await, "a");
    let holding = health("holding");
    eventually(|| async { (!holding.checking()).then_some(()) }).await;
    assert!(holding.is_up(), "a held upgrade took a live node down");
    let k = key_of("silent");
    assert_eq!(ws_node(proxy.addr, &format!("/ws?u={k}"), &[]).await, "a");
    let silent = health("silent");
    // The client was served while the check still waits on the silent node.
    assert!(silent.checking(), "the upgrade waited for the check");
    eventually(|| async { (!silent.is_up()).then_some(()) }).await;
    holding_task.abort();
    silent_task.abort();
    proxy.stop().await;
}

#[tokio::test]
async fn a_slow_answer_reroutes_but_does_not_take_the_node_down() {
    // One slow endpoint must not walk every node down in turn (each down closes all
    // its tunnels): a response timeout is the request's problem, not the node's.
    let live = nodes(&["a"]).await;
    let (hung, task) = hung_backend().await;
    let toml = format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\n[[route]]\npath = \"/\"\nupstream = \"app\"\nprincipal = [\"query:u\"]\n\
         [upstream.app]\nbackends = [{{ addr = \"{}\", name = \"a\" }}, {{ addr = \"{hung}\", name = \"hung\" }}]\n\
         response_timeout = \"200ms\"\n[upstream.app.health]\ninterval = \"1h\"\n",
        live[0].addr
    );
    let proxy = Proxy::start(&toml).await;
    let k = (0..300)
        .map(|i| format!("k{i}"))
        .find(|k| order(&proxy, k)[0] == "hung")
        .unwrap();
    for _ in 0..3 {
        assert_eq!(
            http_node(proxy.addr, &format!("/info?u={k}"), &[]).await,
            "a"
        );
    }
    let snap = proxy.live.load();
    let hung = snap.upstream("app").unwrap().backend("hung").unwrap();
    assert!(hung.health.is_up(), "a slow answer took the node down");
    task.abort();
    proxy.stop().await;
}

#[tokio::test]
async fn when_every_backend_hangs_the_client_hears_504_not_502() {
    let (hung, task) = hung_backend().await;
    let toml = format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\n[[route]]\npath = \"/\"\nupstream = \"app\"\n\
         [upstream.app]\nbackends = [{{ addr = \"{hung}\", name = \"hung\" }}]\n\
         upgrade_timeout = \"200ms\"\nresponse_timeout = \"200ms\"\n\
         [upstream.app.health]\ninterval = \"1h\"\npassive_fails = 1000\n"
    );
    let proxy = Proxy::start(&toml).await;
    // The backend accepted: "no backend accepted a connection" would be false.
    let (status, _, body) = http(proxy.addr, get("t", "/info", &[])).await;
    assert_eq!(status, 504, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("`hung` did not answer in time"));
    let (_, head) = raw_head(proxy.addr, upgrade_request("/ws").as_bytes()).await;
    assert!(head.starts_with("HTTP/1.1 504"), "{head}");
    task.abort();
    proxy.stop().await;
}

#[tokio::test]
async fn bounded_load_keeps_every_backend_under_its_cap() {
    let nodes = nodes(&["a", "b", "c"]).await;
    let proxy = Proxy::start(&config(
        &nodes,
        "principal = [\"query:u\"]\nfollow_socket = true",
        "balance_factor = 1.25",
    ))
    .await;
    // A skewed crowd: every principal is owned by a.
    let keys: Vec<String> = (0..1000)
        .map(|i| format!("k{i}"))
        .filter(|k| order(&proxy, k)[0] == "a")
        .take(60)
        .collect();
    let mut sockets = Vec::new();
    let mut load: HashMap<String, usize> = HashMap::new();
    let mut placed = Vec::new();
    for (n, k) in keys.iter().enumerate() {
        let (s, greeting) = ws(proxy.addr, &format!("/ws?u={k}"), &[]).await;
        sockets.push(s);
        let node = greeting["node"].as_str().unwrap().to_owned();
        placed.push((k, node.clone()));
        *load.entry(node).or_default() += 1;
        let cap = (1.25 * (n + 1) as f64 / 3.0).ceil() as usize;
        for (node, l) in &load {
            assert!(
                *l <= cap,
                "{node} holds {l} tunnels, cap {cap} after {} tunnels",
                n + 1
            );
        }
    }
    assert_eq!(
        load["a"], 25,
        "the owner fills up to its cap first: {load:?}"
    );
    // On a `follow_socket` route a plain request of a principal ("push to user X")
    // goes where its socket is, also for the principals that overflowed.
    for (k, node) in &placed {
        assert_eq!(
            &http_node(proxy.addr, &format!("/info?u={k}"), &[]).await,
            node,
            "{k}"
        );
    }
    proxy.stop().await;
}

/// Everyone connects at once (tether or a node restarted): bounded load counts the
/// upgrades still on their way, so no backend goes over its cap. Counting live tunnels
/// alone, all 300 upgrades were placed before the first was answered, by owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounded_load_holds_when_everyone_connects_at_once() {
    let nodes = nodes(&["a", "b", "c"]).await;
    let proxy = Proxy::start(&config(
        &nodes,
        r#"principal = ["query:u"]"#,
        "balance_factor = 1.05",
    ))
    .await;
    let crowd = Crowd::start(proxy.addr).await;
    crowd.assert_within(1.05);
    drop(crowd);
    proxy.stop().await;
}

/// With bounded load, a node dies and returns: the drain moves only tunnels towards
/// backends their principals prefer, each judged when its turn comes, so no client
/// is closed twice, none sitting on its owner is closed at all, and none is closed
/// only to land where it was. Before, every tunnel of a backend over its cap looked
/// misplaced: the drain closed nearly all 300, several times over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_bounded_load_the_drain_moves_only_the_tunnels_that_belong_elsewhere() {
    let mut nodes = nodes(&["a", "b", "c"]).await;
    let upstream = format!(
        "balance_factor = 1.05
{}",
        PROBES.replace("rebalance_rate = 40", "rebalance_rate = 200")
    );
    let proxy = Proxy::start(&config(&nodes, r#"principal = ["query:u"]"#, &upstream)).await;
    let crowd = Crowd::start(proxy.addr).await;
    let b = nodes.remove(1);
    let b_addr = b.addr;
    b.stop().await;
    let on_b: Vec<String> = crowd
        .nodes()
        .into_iter()
        .filter(|(_, n)| n == "b")
        .map(|(k, _)| k)
        .collect();
    crowd
        .wait(|k, e| !on_b.iter().any(|b| b == k) || e.len() >= 3)
        .await;

    let before: HashMap<String, (usize, String)> = crowd
        .nodes()
        .into_iter()
        .map(|(k, n)| (crowd.events(&k).len(), n, k))
        .map(|(len, n, k)| (k, (len, n)))
        .collect();
    let returned = tether::demo::Node::start_on("b", b_addr).await.unwrap();
    // Settled: b is back, every client is connected, and no tunnel belongs elsewhere.
    eventually(|| async {
        let snap = proxy.live.load();
        let app = snap.upstream("app").unwrap();
        let b_up = app.backend("b").unwrap().health.is_up();
        let entries = proxy.live.registry.entries();
        let settled = b_up
            && entries.len() == CLIENTS
            && entries.iter().all(|e| {
                app.destination(e.key, &e.backend, &proxy.live.registry)
                    .is_none()
            })
            && crowd
                .logs
                .iter()
                .all(|(_, log)| matches!(log.lock().unwrap().last(), Some(Event::On(_))));
        settled.then_some(())
    })
    .await;

    let mut moved = 0;
    for (k, (len, node)) in &before {
        let events = crowd.events(k);
        let after = &events[*len..];
        match after {
            [] => {}
            [Event::Closed(Some(1012), _), Event::On(now)] => {
                moved += 1;
                assert_ne!(now, node, "{k} was closed only to land back on {node}");
                assert_ne!(
                    *node,
                    order(&proxy, k)[0],
                    "{k} sat on its owner and was moved"
                );
            }
            _ => panic!("{k} after b's return: {after:?}"),
        }
    }
    assert!(moved > 0, "nothing drained back to b");
    crowd.assert_within(1.05);
    drop(crowd);
    returned.stop().await;
    proxy.stop().await;
}

/// A node returns while its principals' sockets sit on their next node and nothing
/// moves them back (`rebalance = "off"`; with `drain` the same holds until the drain
/// reaches them). On a `follow_socket` route a push for such a principal reaches its
/// socket, one for a principal without a socket reaches the owner, and once the
/// socket closes its pushes go to the owner again. Other routes place by the owner
/// throughout (a polling transport must meet its upgrade there).
#[tokio::test]
async fn a_push_reaches_the_socket_while_it_sits_away_from_its_returned_owner() {
    let live = nodes(&["a", "b"]).await;
    let dead = dead_addr().await;
    let toml = format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\n[[route]]\npath = \"/\"\nupstream = \"app\"\nprincipal = [\"query:u\"]\n\
         follow_socket = true\n\
         [[route]]\npath = \"/\"\nhost = \"poll.test\"\nupstream = \"app\"\nprincipal = [\"query:u\"]\n\
         [upstream.app]\nbackends = [{{ addr = \"{}\", name = \"a\" }}, {{ addr = \"{}\", name = \"b\" }}, {{ addr = \"{dead}\", name = \"c\" }}]\n\
         rebalance = \"off\"\n[upstream.app.health]\ninterval = \"100ms\"\n[admin]\nbind = \"127.0.0.1:0\"\n",
        live[0].addr, live[1].addr
    );
    let proxy = Proxy::start(&toml).await;
    let keys: Vec<String> = (0..200)
        .map(|i| format!("k{i}"))
        .filter(|k| order(&proxy, k)[0] == "c")
        .take(2)
        .collect();
    let (with_socket, without) = (&keys[0], &keys[1]);
    let next = next_after(&proxy, with_socket, "c");
    let (mut s, greeting) = ws(proxy.addr, &format!("/ws?u={with_socket}"), &[]).await;
    assert_eq!(greeting["node"], next.as_str());

    let revived = tether::demo::Node::start_on("c", dead).await.unwrap();
    eventually(|| async {
        (http_node(proxy.addr, &format!("/info?u={without}"), &[]).await == "c").then_some(())
    })
    .await;
    let push = format!("/info?u={with_socket}");
    assert_eq!(http_node(proxy.addr, &push, &[]).await, next);
    let (_, _, body) = http(proxy.addr, get("poll.test", &push, &[])).await;
    let polled: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        polled["node"], "c",
        "a route without follow_socket places by owner"
    );
    // The owner API tells both: where a new socket goes, and where the socket is.
    let api = format!("/api/owner?upstream=app&key={with_socket}");
    let (_, _, body) = http(proxy.admin.unwrap(), get("admin", &api, &[])).await;
    let answer: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(answer["owner"]["id"], "c", "{answer}");
    assert_eq!(answer["sockets"][0]["id"], next.as_str(), "{answer}");
    assert_eq!(answer["sockets"].as_array().unwrap().len(), 1, "{answer}");
    send_text(&mut s, "still here").await;
    assert_eq!(next_text(&mut s).await, "still here");

    s.close(None).await.unwrap();
    eventually(|| async { proxy.live.registry.is_empty().then_some(()) }).await;
    assert_eq!(http_node(proxy.addr, &push, &[]).await, "c");
    revived.stop().await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_transition_is_logged_once() {
    let mut nodes = nodes(&["a", "b"]).await;
    let (_dir, path) = write_config(&config(&nodes, r#"principal = ["query:u"]"#, PROBES));
    let mut bin = Binary::spawn(&["run", "--config", &path]);
    let addr = bin.wait_listening();
    let crowd = Crowd::start(addr).await;
    let on_b: Vec<String> = crowd
        .logs
        .iter()
        .filter(|(_, log)| matches!(&log.lock().unwrap()[0], Event::On(n) if n == "b"))
        .map(|(k, _)| k.clone())
        .collect();
    let b = nodes.remove(1);
    let b_addr = b.addr;
    b.stop().await;
    bin.wait_for("backend down");
    crowd
        .wait(|k, e| !on_b.iter().any(|b| b == k) || e.len() >= 3)
        .await;
    let b = tether::demo::Node::start_on("b", b_addr).await.unwrap();
    bin.wait_for("backend up");
    bin.wait_for("rebalanced");
    crowd
        .wait(|k, e| !on_b.iter().any(|b| b == k) || e.len() >= 5)
        .await;
    drop(crowd);
    bin.signal("TERM");
    assert!(bin.wait_exit().success());
    let out = bin.output();
    for line in ["backend down", "backend up", "rebalanced"] {
        assert_eq!(
            out.matches(line).count(),
            1,
            "{line:?} not logged exactly once:\n{out}"
        );
    }
    assert!(
        out.contains(&format!("closed={} found={}", on_b.len(), on_b.len())),
        "{out}"
    );
    b.stop().await;
}
