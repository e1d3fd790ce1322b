//! WebSocket tunnels: large and many messages echo intact and in order, control frames
//! pass, bytes pipelined behind the handshake are not lost, a refused upgrade is an
//! ordinary response, closes and half-closes from either side end the tunnel (a
//! completed closing handshake at the first end of stream), a client's reset reaches
//! the backend as a bare end of stream, an upgrade's body is not announced, and the
//! idle timeout closes quiet tunnels but not ones with a heartbeat.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

async fn next_message(s: &mut Ws) -> Message {
    tokio::time::timeout(PATIENCE, s.next())
        .await
        .expect("no message in time")
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn a_one_mib_binary_message_echoes_intact() {
    let nodes = nodes(&["a"]).await;
    let proxy = Proxy::start(&config(&nodes, "", "")).await;
    let (mut s, _) = ws(proxy.addr, "/ws", &[]).await;
    let big: Vec<u8> = (0..1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    s.send(Message::Binary(Bytes::from(big.clone())))
        .await
        .unwrap();
    match next_message(&mut s).await {
        Message::Binary(b) => assert!(b[..] == big[..], "payload differs"),
        other => panic!("{other:?}"),
    }
    proxy.stop().await;
}

#[tokio::test]
async fn a_thousand_small_messages_echo_in_order() {
    let nodes = nodes(&["a"]).await;
    let proxy = Proxy::start(&config(&nodes, "", "")).await;
    let (mut s, _) = ws(proxy.addr, "/ws", &[]).await;
    for i in 0..1000 {
        s.feed(Message::text(format!("m{i}"))).await.unwrap();
    }
    s.flush().await.unwrap();
    for i in 0..1000 {
        assert_eq!(next_text(&mut s).await, format!("m{i}"));
    }
    proxy.stop().await;
}

#[tokio::test]
async fn a_ping_heartbeat_passes_and_is_answered() {
    let nodes = nodes(&["a"]).await;
    let proxy = Proxy::start(&config(&nodes, "", "")).await;
    let (mut s, _) = ws(proxy.addr, "/ws", &[]).await;
    s.send(Message::Ping(Bytes::from_static(b"hb")))
        .await
        .unwrap();
    match next_message(&mut s).await {
        Message::Pong(p) => assert_eq!(&p[..], b"hb"),
        other => panic!("{other:?}"),
    }
    proxy.stop().await;
}

#[tokio::test]
async fn bytes_sent_right_behind_the_handshake_are_forwarded() {
    let nodes = nodes(&["a"]).await;
    let proxy = Proxy::start(&config(&nodes, "", "")).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    let mut first = upgrade_request("/ws").into_bytes();
    first.extend(client_frame(1, b"early"));
    s.write_all(&first).await.unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let (op, greeting) = read_frame(&mut s).await.unwrap();
    assert_eq!(op, 1);
    assert!(String::from_utf8_lossy(&greeting).contains("\"node\":\"a\""));
    assert_eq!(read_frame(&mut s).await, Some((1, b"early".to_vec())));
    proxy.stop().await;
}

#[tokio::test]
async fn a_refused_upgrade_is_an_ordinary_response_on_a_live_connection() {
    let nodes = nodes(&["a"]).await;
    let proxy = Proxy::start(&config(&nodes, "", "")).await;
    let (mut s, head) = raw_head(proxy.addr, upgrade_request("/status/403").as_bytes()).await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    // The connection stays usable for ordinary requests.
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .map_or(0, |n| n.trim().parse().unwrap());
    let mut body = vec![0u8; len];
    tokio::io::AsyncReadExt::read_exact(&mut s, &mut body)
        .await
        .unwrap();
    s.write_all(b"GET /status/204 HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 204"), "{head}");
    proxy.stop().await;
}

#[tokio::test]
async fn a_client_close_handshake_ends_the_tunnel() {
    let nodes = nodes(&["a"]).await;
    let proxy = Proxy::start(&config(&nodes, "", "")).await;
    let (mut s, _) = ws(proxy.addr, "/ws", &[]).await;
    s.close(None).await.unwrap();
    // The backend's Close reply comes through, then the stream ends.
    while let Some(Ok(_)) = tokio::time::timeout(PATIENCE, s.next())
        .await
        .expect("tunnel did not end")
    {}
    proxy.stop().await;
}

/// After a complete closing handshake the backend's end of stream ends the tunnel at
/// once: a client that never closes its socket does not hold it open.
#[tokio::test]
async fn a_completed_close_handshake_frees_the_tunnel_without_the_clients_fin() {
    let nodes = nodes(&["a"]).await;
    let proxy = Proxy::start(&config(&nodes, "", "")).await;
    let mut s = raw_ws(proxy.addr, "/ws").await;
    assert_eq!(proxy.live.registry.len(), 1);
    s.write_all(&client_frame(8, &1000u16.to_be_bytes()))
        .await
        .unwrap();
    let (op, _) = read_frame(&mut s).await.expect("no Close reply");
    assert_eq!(op, 8);
    // The client keeps its socket open; the tunnel is gone all the same.
    eventually(|| async { proxy.live.registry.is_empty().then_some(()) }).await;
    assert!(closes(&mut s).await);
    proxy.stop().await;
}

#[tokio::test]
async fn a_backend_that_goes_away_ends_the_client_side() {
    let mut nodes = nodes(&["a"]).await;
    let proxy = Proxy::start(&config(&nodes, "", "")).await;
    let mut s = raw_ws(proxy.addr, "/ws").await;
    nodes.pop().unwrap().stop().await;
    assert!(
        closes(&mut s).await,
        "client side stayed open after the backend went away"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn a_client_half_close_still_delivers_the_backends_answer() {
    let nodes = nodes(&["a"]).await;
    let proxy = Proxy::start(&config(&nodes, "", "")).await;
    let mut s = raw_ws(proxy.addr, "/ws").await;
    // Send a message and immediately finish our sending side.
    s.write_all(&client_frame(1, b"last words")).await.unwrap();
    s.shutdown().await.unwrap();
    // The echo still arrives through the other direction, then the tunnel ends.
    assert_eq!(read_frame(&mut s).await, Some((1, b"last words".to_vec())));
    assert!(closes(&mut s).await);
    proxy.stop().await;
}

#[tokio::test]
async fn an_idle_tunnel_is_closed_but_a_heartbeat_keeps_one_open() {
    let nodes = nodes(&["a"]).await;
    let proxy = Proxy::start(&config(&nodes, "idle_timeout = \"1s\"", "")).await;

    let (mut beating, _) = ws(proxy.addr, "/ws", &[]).await;
    let mut quiet = raw_ws(proxy.addr, "/ws").await;

    // The heartbeat is the behaviour under test: one every 200 ms, 5x faster than the
    // timeout, for 2.5 timeouts.
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    for i in 0..13 {
        tick.tick().await;
        send_text(&mut beating, &format!("hb{i}")).await;
        assert_eq!(next_text(&mut beating).await, format!("hb{i}"));
    }
    // Told why: 1001 (going away), and the reason says which going away.
    let (opcode, payload) = read_frame(&mut quiet).await.expect("no Close frame");
    assert_eq!((opcode, &payload[..2]), (8, &1001u16.to_be_bytes()[..]));
    assert_eq!(
        String::from_utf8_lossy(&payload[2..]),
        "tether: idle timeout"
    );
    assert!(closes(&mut quiet).await, "the quiet tunnel was not closed");
    send_text(&mut beating, "still here").await;
    assert_eq!(next_text(&mut beating).await, "still here");
    proxy.stop().await;
}

/// A backend that answers every upgrade with a bare 101 and then reports the request
/// head and every byte that followed it, once its peer has finished (or reset).
async fn recording_backend() -> (SocketAddr, mpsc::UnboundedReceiver<(String, Vec<u8>)>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut chunk = [0u8; 4096];
                let end = loop {
                    if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                    match s.read(&mut chunk).await {
                        Ok(n) if n > 0 => got.extend_from_slice(&chunk[..n]),
                        _ => return,
                    }
                };
                let _ = s
                    .write_all(
                        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
                    )
                    .await;
                let mut rest = got.split_off(end);
                let _ = s.read_to_end(&mut rest).await;
                let _ = tx.send((String::from_utf8_lossy(&got).into_owned(), rest));
            });
        }
    });
    (addr, rx)
}

fn one_backend(addr: SocketAddr) -> String {
    format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\n[[route]]\npath = \"/\"\nupstream = \"app\"\n\
         [upstream.app]\nbackends = [\"{addr}\"]\n"
    )
}

/// A client gone without a Close (here its end of stream) in front of a backend that
/// ignores the end of stream: the tunnel is closed a few seconds later, not held with
/// its backend connection until the idle timeout (1 h). (An HTTP/2 client's
/// RST_STREAM reaches the tunnel as the same end of stream.)
#[tokio::test]
async fn a_half_closed_tunnel_nobody_finishes_is_closed_soon() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = Proxy::start(&one_backend(l.local_addr().unwrap())).await;
    let upgrade = async { raw_head(proxy.addr, upgrade_request("/ws").as_bytes()).await };
    let backend = async {
        let (mut s, _) = l.accept().await.unwrap();
        assert!(answer_upgrade(&mut s).await);
        s
    };
    // The backend is kept open and silent to the end: it never closes its side.
    let ((mut client, head), _backend) = tokio::join!(upgrade, backend);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    client.shutdown().await.unwrap();
    read_until_closed(&mut client, "a half-closed tunnel").await;
    eventually(|| async { proxy.live.registry.is_empty().then_some(()) }).await;
    proxy.stop().await;
}

/// A node that vanishes (its socket closes without a Close frame) in front of a client
/// that takes its 1012 and never answers: the tunnel is closed a few seconds later and
/// counted as the backend's close, not as an idle one.
#[tokio::test]
async fn a_vanished_node_whose_client_never_answers_counts_as_the_backends_close() {
    vanished_node_with_a_silent_client(false).await;
}

/// The same when health checks find the node down before the half-closed tunnel's
/// time is up: tether's close finishes the backend's, and counts as the backend's.
#[tokio::test]
async fn a_vanished_node_found_down_before_its_silent_client_answers_counts_as_the_backends_close()
{
    vanished_node_with_a_silent_client(true).await;
}

async fn vanished_node_with_a_silent_client(probed: bool) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut config = one_backend(l.local_addr().unwrap());
    if probed {
        config += "[upstream.app.health]\ninterval = \"100ms\"\nfall = 1\n";
    }
    let proxy = Proxy::start(&config).await;
    let upgrade = async { raw_head(proxy.addr, upgrade_request("/ws").as_bytes()).await };
    let backend = async {
        let (mut s, _) = l.accept().await.unwrap();
        assert!(answer_upgrade(&mut s).await);
    };
    let ((mut client, head), ()) = tokio::join!(upgrade, backend);
    if probed {
        // The node is gone: probes are refused.
        drop(l);
    }
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let (op, payload) = read_frame(&mut client).await.expect("no Close");
    assert_eq!((op, &payload[..2]), (8, &1012u16.to_be_bytes()[..]));
    // The client keeps its socket open and silent.
    eventually(|| async { proxy.live.registry.is_empty().then_some(()) }).await;
    let closed = |reason: &str| {
        proxy
            .live
            .metrics
            .tunnels_closed
            .get_or_create(&tether::metrics::ReasonLabels {
                reason: reason.into(),
            })
            .get()
    };
    eventually(|| async { (closed("backend") == 1).then_some(()) }).await;
    assert_eq!(closed("idle") + closed("backend-down"), 0);
    if probed {
        let snap = proxy.live.load();
        assert!(!snap.upstreams[0].backends[0].health.is_up());
    }
    drop(client);
    proxy.stop().await;
}

/// A client whose connection is reset did not say goodbye: the backend sees its end of
/// stream and no Close frame, as it would without tether (and as behind nginx), so the
/// app does not take a lost client for one that left on purpose (1001).
#[tokio::test]
async fn a_client_reset_reaches_the_backend_as_a_bare_end_of_stream() {
    let (backend, mut recorded) = recording_backend().await;
    let proxy = Proxy::start(&one_backend(backend)).await;
    let (s, head) = raw_head(proxy.addr, upgrade_request("/ws").as_bytes()).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    eventually(|| async { (proxy.live.registry.len() == 1).then_some(()) }).await;
    s.set_zero_linger().unwrap();
    drop(s);
    let (_, after) = tokio::time::timeout(PATIENCE, recorded.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(after.is_empty(), "the backend was sent {after:?}");
    proxy.stop().await;
}

/// A handshake with a body: the body is not forwarded, and neither is its length, so
/// the backend reads the WebSocket bytes that follow as WebSocket bytes.
#[tokio::test]
async fn an_upgrade_body_is_neither_forwarded_nor_announced() {
    let (backend, mut recorded) = recording_backend().await;
    let proxy = Proxy::start(&one_backend(backend)).await;
    let request = upgrade_request("/ws").replace("\r\n\r\n", "\r\nContent-Length: 5\r\n\r\nHELLO");
    let frame = client_frame(1, b"hi");
    let (mut s, head) = raw_head(proxy.addr, &[request.as_bytes(), &frame].concat()).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s.shutdown().await.unwrap();
    let (head, after) = tokio::time::timeout(PATIENCE, recorded.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(
        !head.to_ascii_lowercase().contains("content-length"),
        "{head}"
    );
    assert_eq!(after, frame);
    proxy.stop().await;
}
