//! Plain HTTP through tether: keep-alive on the client side, pooled keep-alive
//! connections on the backend side, and backend answers relayed as they are.

mod common;

use std::collections::HashSet;

use common::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

#[tokio::test]
async fn backend_connections_are_pooled_across_client_connections() {
    let nodes = nodes(&["a"]).await;
    let proxy = Proxy::start(&config(&nodes, "", "")).await;
    let mut backend_conns = HashSet::new();
    for _ in 0..30 {
        // A fresh client connection each time, one request each, one after another.
        let (status, _, body) = http(proxy.addr, get("t", "/info", &[])).await;
        assert_eq!(status, 200);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        backend_conns.insert(v["connection"].as_u64().unwrap());
    }
    assert_eq!(
        backend_conns.len(),
        1,
        "30 sequential requests used {} backend connections",
        backend_conns.len()
    );
    proxy.stop().await;
}

#[tokio::test]
async fn a_client_connection_carries_many_requests() {
    let nodes = nodes(&["a"]).await;
    let proxy = Proxy::start(&config(&nodes, "", "")).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    for i in 0..50 {
        // Different statuses show each answer belongs to its own request.
        let code = [200, 201, 202, 299][i % 4];
        let req = format!("GET /status/{code} HTTP/1.1\r\nHost: t\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let head = read_head(&mut s).await;
        assert!(head.starts_with(&format!("HTTP/1.1 {code}")), "{head}");
        let len = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .unwrap();
        let mut body = vec![0u8; len.trim().parse().unwrap()];
        tokio::io::AsyncReadExt::read_exact(&mut s, &mut body)
            .await
            .unwrap();
        assert_eq!(body, b"a\n");
    }
    proxy.stop().await;
}

#[tokio::test]
async fn backend_statuses_and_bodies_are_relayed() {
    let nodes = nodes(&["a"]).await;
    let proxy = Proxy::start(&config(&nodes, "", "")).await;
    for code in [404u16, 418, 500, 503] {
        let (status, _, body) = http(proxy.addr, get("t", &format!("/status/{code}"), &[])).await;
        assert_eq!(status.as_u16(), code);
        assert_eq!(&body[..], b"a\n");
    }
    let (status, _, body) = http(proxy.addr, get("t", "/bytes/100000", &[])).await;
    assert_eq!(status, 200);
    assert_eq!(body.len(), 100_000);
    assert!(
        body.iter()
            .enumerate()
            .all(|(i, &b)| b == ((i % (64 * 1024)) % 251) as u8)
    );
    proxy.stop().await;
}
