//! Backend death without health checks: a stopped node's principals move to their
//! next node while every other principal stays put; a refused or timed-out connect
//! reroutes before anything is sent and takes the node down (passive health), so one dead node
//! costs one failed connect; nothing reachable is a 502.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use tether::principal::Principal;
use tokio::net::{TcpSocket, TcpStream};

fn order(proxy: &Proxy, key: &str) -> Vec<String> {
    let snap = proxy.live.load();
    let up = snap.upstream("app").unwrap();
    up.table
        .order(Principal::from_bytes(key.as_bytes()).key())
        .into_iter()
        .map(|i| up.backends[i].id.to_string())
        .collect()
}

fn connect_failures(proxy: &Proxy, id: &str) -> u64 {
    proxy
        .live
        .load()
        .upstream("app")
        .unwrap()
        .backend(id)
        .unwrap()
        .health
        .connect_failures()
}

#[tokio::test]
async fn a_stopped_nodes_principals_move_to_their_next_node_and_no_one_else_moves() {
    let mut nodes = nodes(&["a", "b", "c"]).await;
    // Probes so slow they never run here: the first refusal on live traffic is what
    // takes b down, and then nobody tries it again.
    let proxy = Proxy::start(&config(
        &nodes,
        r#"principal = ["query:u"]"#,
        "[upstream.app.health]\ninterval = \"1h\"",
    ))
    .await;
    let keys: Vec<String> = (0..300).map(|i| format!("p{i}")).collect();
    let mut before = HashMap::new();
    for k in &keys {
        before.insert(
            k.clone(),
            http_node(proxy.addr, &format!("/info?u={k}"), &[]).await,
        );
    }
    let b = nodes.remove(1);
    assert_eq!(b.name, "b");
    b.stop().await;

    let mut moved = 0;
    for k in &keys {
        let now = http_node(proxy.addr, &format!("/info?u={k}"), &[]).await;
        let ws_now = ws_node(proxy.addr, &format!("/ws?u={k}"), &[]).await;
        assert_eq!(now, ws_now, "{k}: HTTP and WebSocket disagree");
        if before[k] == "b" {
            let next = order(&proxy, k).into_iter().find(|n| n != "b").unwrap();
            assert_eq!(now, next, "{k} did not move to its next node");
            moved += 1;
        } else {
            assert_eq!(now, before[k], "{k} moved although its node is up");
        }
    }
    assert!(moved > 50, "only {moved} keys were on b");
    // One dead node costs one failed connect, not one per request.
    assert_eq!(connect_failures(&proxy, "b"), 1);
    proxy.stop().await;
}

#[tokio::test]
async fn a_refused_connect_reroutes_and_marks_the_node_down_until_probes_bring_it_back() {
    let live = nodes(&["a", "b"]).await;
    let dead = dead_addr().await;
    let toml = format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\n[[route]]\npath = \"/\"\nupstream = \"app\"\nprincipal = [\"query:u\"]\n\
         [upstream.app]\nbackends = [{{ addr = \"{}\", name = \"a\" }}, {{ addr = \"{}\", name = \"b\" }}, {{ addr = \"{dead}\", name = \"dead\" }}]\n\
         [upstream.app.health]\ninterval = \"100ms\"\nrise = 2\n",
        live[0].addr, live[1].addr
    );
    let proxy = Proxy::start(&toml).await;
    let dead_keys: Vec<String> = (0..200)
        .map(|i| format!("k{i}"))
        .filter(|k| order(&proxy, k)[0] == "dead")
        .take(10)
        .collect();
    assert_eq!(dead_keys.len(), 10);
    for k in &dead_keys {
        let next = order(&proxy, k)[1].clone();
        assert_eq!(
            http_node(proxy.addr, &format!("/info?u={k}"), &[]).await,
            next
        );
        assert_eq!(ws_node(proxy.addr, &format!("/ws?u={k}"), &[]).await, next);
    }
    // At most one request paid a failed connect (the probes may have been first).
    assert!(connect_failures(&proxy, "dead") <= 1);
    assert!(
        !proxy
            .live
            .load()
            .upstream("app")
            .unwrap()
            .backend("dead")
            .unwrap()
            .health
            .is_up()
    );

    // The node comes back on its address: probes bring it up and its keys return.
    let revived = tether::demo::Node::start_on("dead", dead).await.unwrap();
    eventually(|| async {
        let k = &dead_keys[0];
        (http_node(proxy.addr, &format!("/info?u={k}"), &[]).await == "dead").then_some(())
    })
    .await;
    for k in &dead_keys {
        assert_eq!(
            http_node(proxy.addr, &format!("/info?u={k}"), &[]).await,
            "dead"
        );
    }
    revived.stop().await;
    proxy.stop().await;
}

#[tokio::test]
async fn a_connect_that_times_out_reroutes() {
    // A listener whose accept queue is full: the kernel drops further SYNs, so a
    // connect neither succeeds nor is refused — the hung-host case, on loopback.
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let full = socket.listen(0).unwrap();
    let hung = full.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(Ok(s)) =
            tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(hung)).await
        {
            fillers.push(s);
        }
    }
    let live = nodes(&["a"]).await;
    let toml = format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\n[[route]]\npath = \"/\"\nupstream = \"app\"\nprincipal = [\"query:u\"]\n\
         [upstream.app]\nbackends = [{{ addr = \"{}\", name = \"a\" }}, {{ addr = \"{hung}\", name = \"hung\" }}]\n\
         connect_timeout = \"200ms\"\n[upstream.app.health]\ninterval = \"1h\"\n",
        live[0].addr
    );
    // Whichever comes first meets the timeout (the upgrade's own connect, or the pool's
    // connector); the one after skips the backend that just failed.
    for upgrade_first in [true, false] {
        let proxy = Proxy::start(&toml).await;
        let k = (0..100)
            .map(|i| format!("k{i}"))
            .find(|k| order(&proxy, k)[0] == "hung")
            .unwrap();
        let (ws_path, http_path) = (format!("/ws?u={k}"), format!("/info?u={k}"));
        if upgrade_first {
            assert_eq!(ws_node(proxy.addr, &ws_path, &[]).await, "a");
            assert_eq!(http_node(proxy.addr, &http_path, &[]).await, "a");
        } else {
            assert_eq!(http_node(proxy.addr, &http_path, &[]).await, "a");
            assert_eq!(ws_node(proxy.addr, &ws_path, &[]).await, "a");
        }
        assert_eq!(
            connect_failures(&proxy, "hung"),
            1,
            "upgrade first: {upgrade_first}"
        );
        proxy.stop().await;
    }
    drop(fillers);
}

#[tokio::test]
async fn nothing_reachable_is_a_502_that_says_so() {
    let (d1, d2) = (dead_addr().await, dead_addr().await);
    let toml = format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\n[[route]]\npath = \"/\"\nupstream = \"app\"\n\
         [upstream.app]\nbackends = [\"{d1}\", \"{d2}\"]\n"
    );
    let proxy = Proxy::start(&toml).await;
    for _ in 0..3 {
        let (status, _, body) = http(proxy.addr, get("t", "/", &[])).await;
        assert_eq!(status, 502);
        assert!(String::from_utf8_lossy(&body).contains("upstream `app`"));
        let (_s, head) = raw_head(proxy.addr, upgrade_request("/ws").as_bytes()).await;
        assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    }
    proxy.stop().await;
}
