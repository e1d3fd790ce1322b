//! WebSocket tunnels: large and many messages echo intact and in order, control frames
//! pass, bytes pipelined behind the handshake are not lost, a refused upgrade is an
//! ordinary response, closes and half-closes from either side end the tunnel (a
//! completed closing handshake at the first end of stream), and the
//! idle timeout closes quiet tunnels but not ones with a heartbeat.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
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
    assert!(closes(&mut quiet).await, "the quiet tunnel was not closed");
    send_text(&mut beating, "still here").await;
    assert_eq!(next_text(&mut beating).await, "still here");
    proxy.stop().await;
}
