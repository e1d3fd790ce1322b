//! Shared harness: tether in-process on an ephemeral port, demo nodes as tagged
//! backends (each greets a WebSocket with its name and echoes), and clients that read
//! the behaviour off the wire. No fixed ports, no sleeps as synchronisation.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tether::config::Config;
use tether::demo::Node;
use tether::{Listener, Live};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Upper bound for anything a test waits for; reaching it is a failure, not a pass.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// tether running in this process.
pub struct Proxy {
    pub addr: SocketAddr,
    pub live: Arc<Live>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Proxy {
    /// Starts tether with `toml`, whose first listener must bind `127.0.0.1:0`.
    pub async fn start(toml: &str) -> Proxy {
        let config = Config::parse(toml, "test.toml").unwrap_or_else(|e| panic!("{e}\n{toml}"));
        let bind = config.listeners[0].bind;
        let socket = TcpListener::bind(bind).await.unwrap();
        let addr = socket.local_addr().unwrap();
        let live = Arc::new(Live::new(&config));
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(tether::run(
            vec![Listener::new(bind, socket)],
            live.clone(),
            async {
                let _ = rx.await;
            },
        ));
        Proxy {
            addr,
            live,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// Shuts tether down and waits for it to finish draining.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            tokio::time::timeout(PATIENCE, t)
                .await
                .expect("tether did not stop")
                .unwrap();
        }
    }
}

/// Demo nodes named `names`, each on its own ephemeral port.
pub async fn nodes(names: &[&str]) -> Vec<Node> {
    let mut out = Vec::new();
    for n in names {
        out.push(Node::start(n).await.unwrap());
    }
    out
}

/// `backends = [...]` naming each node by its name.
pub fn backends(nodes: &[Node]) -> String {
    let list: Vec<String> = nodes
        .iter()
        .map(|n| format!("{{ addr = \"{}\", name = \"{}\" }}", n.addr, n.name))
        .collect();
    format!("backends = [{}]", list.join(", "))
}

/// One listener, one route `/` to upstream `app` with `route` lines added, and `app`
/// over `nodes` with `upstream` lines added.
pub fn config(nodes: &[Node], route: &str, upstream: &str) -> String {
    format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\n\n[[route]]\npath = \"/\"\nupstream = \"app\"\n{route}\n\n[upstream.app]\n{}\n{upstream}\n",
        backends(nodes)
    )
}

/// Opens a WebSocket through `addr` to `path` with extra request headers; returns the
/// socket and the node's greeting.
pub async fn ws(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (Ws, Value) {
    let mut req = format!("ws://{addr}{path}").into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut().append(
            hyper::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let (mut socket, _) = tokio::time::timeout(PATIENCE, tokio_tungstenite::connect_async(req))
        .await
        .expect("WebSocket connect timed out")
        .unwrap_or_else(|e| panic!("WebSocket to {path}: {e}"));
    let greeting = next_text(&mut socket).await;
    (socket, serde_json::from_str(&greeting).unwrap())
}

/// The node a WebSocket to `path` lands on.
pub async fn ws_node(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> String {
    let (mut s, g) = ws(addr, path, headers).await;
    let _ = s.close(None).await;
    g["node"].as_str().unwrap().to_owned()
}

pub async fn next_text(socket: &mut Ws) -> String {
    loop {
        let m = tokio::time::timeout(PATIENCE, socket.next())
            .await
            .expect("no message in time")
            .expect("socket ended")
            .expect("socket error");
        match m {
            Message::Text(t) => return t.to_string(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected text, got {other:?}"),
        }
    }
}

pub async fn send_text(socket: &mut Ws, s: &str) {
    socket.send(Message::text(s.to_owned())).await.unwrap();
}

/// A plain HTTP request on a fresh connection; returns status, headers and body.
pub async fn http(
    addr: SocketAddr,
    req: Request<Empty<Bytes>>,
) -> (StatusCode, hyper::HeaderMap, Bytes) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let resp = tokio::time::timeout(PATIENCE, sender.send_request(req))
        .await
        .expect("no response in time")
        .unwrap();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (parts.status, parts.headers, body)
}

/// `GET path` with `Host: host` and extra headers.
pub fn get(host: &str, path: &str, headers: &[(&str, &str)]) -> Request<Empty<Bytes>> {
    let mut b = Request::get(path).header("host", host);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Empty::new()).unwrap()
}

/// The node that answers `GET path` (the demo node's JSON `node` field).
pub async fn http_node(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> String {
    let (status, _, body) = http(addr, get("test", path, headers)).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let v: Value = serde_json::from_slice(&body).unwrap();
    v["node"].as_str().unwrap().to_owned()
}

/// Sends `bytes` on a raw connection and reads until the peer closes (or PATIENCE).
pub async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, s.read_to_end(&mut out))
        .await
        .expect("peer did not close");
    String::from_utf8_lossy(&out).into_owned()
}

/// Polls `check` until it returns `Some`, at most PATIENCE; for conditions that have no
/// event to wait on.
pub async fn eventually<T, F, Fut>(mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An address on which nothing listens (bound, then released).
pub async fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}
