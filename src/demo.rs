//! Demo app nodes: what `tether demo` puts behind tether, and what the integration
//! tests use as tagged backends.
//!
//! A node is a tiny HTTP/1.1 + WebSocket server on loopback that says who it is:
//!
//! | request | answer |
//! |---|---|
//! | WebSocket upgrade, any path | greeting (JSON: `node`, `principal`, `path`, `headers`), then echoes every message |
//! | `GET /` | an HTML page that opens WebSockets and shows which node each user is pinned to |
//! | `/status/NNN…` | status NNN (also refuses upgrades that way) |
//! | `/bytes/N` | N bytes, streamed |
//! | `/echo` | the request body, streamed back |
//! | anything else | JSON: `node`, `connection` (a per-node serial number of the TCP connection), `method`, `path`, `headers` |
//!
//! The `principal` a node reports is what the app itself sees: the `user` query value,
//! else the `demo_user` cookie, else `X-Real-IP`.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Either, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{
    CONNECTION, CONTENT_TYPE, HeaderMap, HeaderValue, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY,
    UPGRADE,
};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

type NodeBody = Either<
    Full<Bytes>,
    Either<
        Incoming,
        StreamBody<
            futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>,
        >,
    >,
>;

/// A running demo node.
#[derive(Debug)]
pub struct Node {
    pub name: String,
    pub addr: SocketAddr,
    life: Life,
    tasks: TaskTracker,
    /// Where the page links to tether's status page, once known.
    status: Arc<OnceLock<String>>,
}

/// A node's two off switches: `freeze` makes it silent (no accepting, no answering)
/// while keeping its sockets open; `stop` closes everything.
#[derive(Debug, Clone, Default)]
struct Life {
    freeze: CancellationToken,
    stop: CancellationToken,
}

impl Life {
    /// Waits out a freeze: returns when the node stops.
    async fn frozen_until_stopped(&self) {
        self.stop.cancelled().await;
    }
}

impl Node {
    /// Starts a node named `name` on an ephemeral loopback port.
    pub async fn start(name: &str) -> io::Result<Node> {
        Node::start_on(name, "127.0.0.1:0".parse().map_err(io::Error::other)?).await
    }

    /// Starts a node on `addr` (e.g. the address of a node that was stopped).
    pub async fn start_on(name: &str, addr: SocketAddr) -> io::Result<Node> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let life = Life::default();
        let tasks = TaskTracker::new();
        let name_arc: Arc<str> = name.into();
        let status = Arc::new(OnceLock::new());
        tasks.spawn(accept(
            listener,
            name_arc,
            life.clone(),
            tasks.clone(),
            status.clone(),
        ));
        Ok(Node {
            name: name.to_owned(),
            addr,
            life,
            tasks,
            status,
        })
    }

    /// Makes the page link to tether's status page at `url`.
    pub fn link_status(&self, url: String) {
        let _ = self.status.set(url);
    }

    /// Stops the node the way a crash would look from outside: the listening socket and
    /// every connection are closed, without WebSocket close frames.
    pub async fn stop(self) {
        self.life.freeze.cancel();
        self.life.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }

    /// Makes the node silent the way a hung process or a partitioned host looks from
    /// outside: new connections are refused and open ones get no answer and no close.
    /// [`Node::stop`] ends it.
    pub fn freeze(&self) {
        self.life.freeze.cancel();
    }
}

async fn accept(
    listener: TcpListener,
    name: Arc<str>,
    life: Life,
    tasks: TaskTracker,
    status: Arc<OnceLock<String>>,
) {
    let mut serial = 0u64;
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(pair) => pair,
                Err(e) => { debug!(error = %e, "demo node accept failed"); continue; }
            },
            () = life.freeze.cancelled() => return,
        };
        let _ = stream.set_nodelay(true);
        serial += 1;
        let conn = Conn {
            name: name.clone(),
            serial,
            life: life.clone(),
            tasks: tasks.clone(),
            status: status.clone(),
        };
        let life = life.clone();
        tasks.spawn(async move {
            let service = service_fn(move |req| {
                let conn = conn.clone();
                async move { Ok::<_, Infallible>(handle(req, conn).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            tokio::select! {
                _ = conn => {}
                () = life.freeze.cancelled() => life.frozen_until_stopped().await,
            }
        });
    }
}

/// What a request handler knows about its connection.
#[derive(Clone)]
struct Conn {
    name: Arc<str>,
    serial: u64,
    life: Life,
    tasks: TaskTracker,
    status: Arc<OnceLock<String>>,
}

async fn handle(req: Request<Incoming>, conn: Conn) -> Response<NodeBody> {
    let name = conn.name.clone();
    let path = req.uri().path().to_owned();
    if let Some(code) = path.strip_prefix("/status/") {
        let code = code
            .get(..3)
            .and_then(|c| c.parse().ok())
            .and_then(|c| StatusCode::from_u16(c).ok());
        return text(code.unwrap_or(StatusCode::BAD_REQUEST), format!("{name}\n"));
    }
    if let Some(key) = websocket_key(req.headers()) {
        return upgrade(req, key, name, conn.life, conn.tasks);
    }
    if path == "/" {
        let mut r = text(
            StatusCode::OK,
            page(&name, conn.status.get().map(String::as_str)),
        );
        r.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        return r;
    }
    if let Some(n) = path.strip_prefix("/bytes/") {
        let n: usize = n.parse().unwrap_or(0);
        return stream_bytes(n);
    }
    if path == "/echo" {
        return Response::new(Either::Right(Either::Left(req.into_body())));
    }
    let info = json!({
        "node": &*name,
        "connection": conn.serial,
        "method": req.method().as_str(),
        "path": req.uri().to_string(),
        "headers": headers_json(req.headers()),
    });
    // Drain the request body so keep-alive works for requests that have one.
    let _ = req.into_body().collect().await;
    let mut r = text(StatusCode::OK, info.to_string());
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn text(status: StatusCode, body: String) -> Response<NodeBody> {
    let mut r = Response::new(Either::Left(Full::new(Bytes::from(body))));
    *r.status_mut() = status;
    r
}

fn stream_bytes(n: usize) -> Response<NodeBody> {
    const CHUNK: usize = 64 * 1024;
    let chunk = Bytes::from((0..CHUNK).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    let mut frames = Vec::with_capacity(n / CHUNK + 1);
    let mut left = n;
    while left > 0 {
        let take = left.min(CHUNK);
        frames.push(Ok(Frame::data(chunk.slice(..take))));
        left -= take;
    }
    Response::new(Either::Right(Either::Right(StreamBody::new(
        futures_util::stream::iter(frames),
    ))))
}

fn websocket_key(h: &HeaderMap) -> Option<HeaderValue> {
    let upgrade = h.get(UPGRADE)?.to_str().ok()?;
    upgrade
        .eq_ignore_ascii_case("websocket")
        .then(|| h.get(SEC_WEBSOCKET_KEY).cloned())?
}

fn upgrade(
    mut req: Request<Incoming>,
    key: HeaderValue,
    name: Arc<str>,
    life: Life,
    tasks: TaskTracker,
) -> Response<NodeBody> {
    let greeting = json!({
        "node": &*name,
        "principal": principal_seen(&req),
        "path": req.uri().to_string(),
        "headers": headers_json(req.headers()),
    })
    .to_string();
    let on_upgrade = hyper::upgrade::on(&mut req);
    tasks.spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        if ws.send(Message::text(greeting)).await.is_err() {
            return;
        }
        loop {
            let msg = tokio::select! {
                m = ws.next() => m,
                () = life.freeze.cancelled() => return life.frozen_until_stopped().await,
            };
            match msg {
                Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => {
                    if ws.send(m).await.is_err() {
                        return;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return,
            }
        }
    });
    let mut r = text(StatusCode::SWITCHING_PROTOCOLS, String::new());
    let h = r.headers_mut();
    h.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        h.insert(SEC_WEBSOCKET_ACCEPT, v);
    }
    r
}

fn principal_seen<B>(req: &Request<B>) -> String {
    let query_user = req.uri().query().and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "user")
            .map(|(_, v)| v.into_owned())
    });
    let cookie_user = || {
        req.headers().get_all("cookie").iter().find_map(|v| {
            v.to_str().ok()?.split(';').find_map(|c| {
                let (k, v) = c.trim().split_once('=')?;
                (k == "demo_user").then(|| v.to_owned())
            })
        })
    };
    let ip = || {
        req.headers()
            .get("x-real-ip")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    query_user
        .or_else(cookie_user)
        .or_else(ip)
        .unwrap_or_default()
}

fn headers_json(h: &HeaderMap) -> Value {
    let mut m = Map::new();
    for (k, v) in h {
        let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
        match m.get_mut(k.as_str()) {
            Some(Value::String(s)) => {
                s.push_str(", ");
                s.push_str(&v);
            }
            _ => {
                m.insert(k.as_str().to_owned(), Value::String(v));
            }
        }
    }
    Value::Object(m)
}

/// The `tether demo` configuration for `nodes` behind a listener on `listen`.
pub fn config(listen: SocketAddr, admin: SocketAddr, nodes: &[Node]) -> String {
    let backends: Vec<String> = nodes
        .iter()
        .map(|n| format!("{{ addr = \"{}\", name = \"{}\" }}", n.addr, n.name))
        .collect();
    format!(
        r#"[[listener]]
bind = "{listen}"

[[route]]
path = "/"
upstream = "demo"
principal = ["query:user", "cookie:demo_user"]
fallback = "ip"

[upstream.demo]
backends = [{}]
connect_timeout = "1s"

[upstream.demo.health]
interval = "500ms"

[admin]
bind = "{admin}"
"#,
        backends.join(", ")
    )
}

fn page(node: &str, status: Option<&str>) -> String {
    let link = status.map_or(String::new(), |url| {
        format!("<p>Watch placement and health on tether's <a href=\"{url}\">status page</a>.</p>")
    });
    PAGE.replace("{{NODE}}", node).replace("{{STATUS}}", &link)
}

/// The page a node serves at `/`; `{{NODE}}` and `{{STATUS}}` are filled in.
const PAGE: &str = include_str!("demo_page.html");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_config_parses() {
        let nodes = vec![Node {
            name: "node-a".into(),
            addr: "127.0.0.1:1".parse().unwrap(),
            life: Life::default(),
            tasks: TaskTracker::new(),
            status: Arc::new(OnceLock::new()),
        }];
        let text = config(
            "127.0.0.1:8080".parse().unwrap(),
            "127.0.0.1:9090".parse().unwrap(),
            &nodes,
        );
        let c = crate::config::Config::parse(&text, "demo").unwrap();
        assert_eq!(c.upstreams[0].backends[0].id, "node-a");
    }
}
