//! Shared harness: tether in-process on an ephemeral port, demo nodes as tagged
//! backends (each greets a WebSocket with its name and echoes), and clients that read
//! the behaviour off the wire. No fixed ports, no sleeps as synchronisation.
#![allow(dead_code)]

pub mod browser;
pub mod pki;

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
use tether::listener::Kind;
use tether::metrics::UpgradeLabels;
use tether::{Listener, Live};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Upper bound for anything a test waits for; reaching it is a failure, not a pass.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// tether running in this process.
pub struct Proxy {
    /// The first traffic listener's address.
    pub addr: SocketAddr,
    /// The admin listener's address, if the config has one.
    pub admin: Option<SocketAddr>,
    pub live: Arc<Live>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Proxy {
    /// Starts tether with `toml`, binding every listener it configures (use port 0).
    pub async fn start(toml: &str) -> Proxy {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "tether=debug".into()),
            )
            .with_test_writer()
            .try_init();
        let config = Config::parse(toml, "test.toml").unwrap_or_else(|e| panic!("{e}\n{toml}"));
        let mut listeners = Vec::new();
        let (mut addr, mut admin) = (None, None);
        for (kind, bind) in tether::reload::binds(&config) {
            let socket = TcpListener::bind(bind).await.unwrap();
            let local = socket.local_addr().unwrap();
            match kind {
                Kind::Traffic => addr = addr.or(Some(local)),
                Kind::Admin => admin = Some(local),
            }
            listeners.push(Listener::with_kind(kind, bind, socket));
        }
        let live = Arc::new(Live::new(&config));
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(tether::run(listeners, live.clone(), async {
            let _ = rx.await;
        }));
        Proxy {
            addr: addr.expect("no traffic listener"),
            admin,
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
        req.headers_mut().insert(
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

pub async fn next_text<S: AsyncRead + AsyncWrite + Unpin>(
    socket: &mut WebSocketStream<S>,
) -> String {
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

pub async fn send_text<S: AsyncRead + AsyncWrite + Unpin>(
    socket: &mut WebSocketStream<S>,
    s: &str,
) {
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

/// The opening handshake of a WebSocket to `path`, as raw bytes.
pub fn upgrade_request(path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
}

/// A masked client frame (RFC 6455 §5.2) with a fixed mask.
pub fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x12, 0x34, 0x56, 0x78];
    let mut f = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n < 65536 => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// Reads an HTTP response head from `s` (up to and including the blank line).
pub async fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(PATIENCE, s.read(&mut byte))
            .await
            .expect("no head in time")
            .unwrap();
        assert!(
            n == 1,
            "connection closed inside the head: {}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

/// The next connection to `l` that sends a whole request head, and the head. Others
/// are dropped: tether's TCP health probes connect and close without a word.
pub async fn accept_request(l: &TcpListener) -> (TcpStream, String) {
    loop {
        let (mut s, _) = l.accept().await.unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && matches!(s.read(&mut byte).await, Ok(1)) {
            head.push(byte[0]);
        }
        if head.ends_with(b"\r\n\r\n") {
            return (s, String::from_utf8_lossy(&head).into_owned());
        }
    }
}

/// Reads one unmasked server frame; `None` on a clean end of stream.
pub async fn read_frame(s: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut h = [0u8; 2];
    match tokio::time::timeout(PATIENCE, s.read_exact(&mut h))
        .await
        .expect("no frame in time")
    {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return None,
        Err(e) => panic!("{e}"),
    }
    let len = match h[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            s.read_exact(&mut b).await.unwrap();
            u16::from_be_bytes(b) as usize
        }
        127 => {
            let mut b = [0u8; 8];
            s.read_exact(&mut b).await.unwrap();
            u64::from_be_bytes(b) as usize
        }
        n => n as usize,
    };
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).await.unwrap();
    Some((h[0] & 0x0f, payload))
}

/// True once `s` reports end of stream (or a reset) within PATIENCE.
pub async fn closes(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(PATIENCE, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

/// The real `tether` binary as a child process, its stderr collected line by line.
pub struct Binary {
    pub child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
    /// Parallel to `seen`: lines a wait has already returned.
    claimed: Vec<bool>,
}

impl Binary {
    /// Spawns `tether args…` with stdout and stderr captured.
    pub fn spawn(args: &[&str]) -> Binary {
        Binary::spawn_env(args, &[])
    }

    /// [`Binary::spawn`] with extra environment variables.
    pub fn spawn_env(args: &[&str], env: &[(&str, &str)]) -> Binary {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_tether"));
        cmd.args(args).envs(env.iter().copied());
        Binary::of(cmd)
    }

    /// [`Binary::spawn`] with at most `nofile` open files (soft and hard limit, set by
    /// util-linux's `prlimit`, which then runs tether in its own process).
    pub fn spawn_limited(args: &[&str], nofile: u32) -> Binary {
        let mut cmd = std::process::Command::new("prlimit");
        cmd.arg(format!("--nofile={nofile}:{nofile}"))
            .arg(env!("CARGO_BIN_EXE_tether"))
            .args(args);
        Binary::of(cmd)
    }

    fn of(mut cmd: std::process::Command) -> Binary {
        if cmd.get_envs().all(|(k, _)| k != "RUST_LOG") {
            cmd.env("RUST_LOG", "info");
        }
        // Reading stops when `lines` is dropped: see `close_output`.
        let (child, rx) = spawn_lines(&mut cmd, false);
        Binary {
            child,
            lines: rx,
            seen: Vec::new(),
            claimed: Vec::new(),
        }
    }

    /// Waits (at most PATIENCE) for an output line containing `needle` that no earlier
    /// wait has claimed; claims and returns it. Lines are claimed in the order they
    /// came, so two waits for the same text see two different lines.
    pub fn wait_for(&mut self, needle: &str) -> String {
        self.wait_for_any(&[needle])
    }

    /// [`Binary::wait_for`] for a line containing any of `needles`.
    pub fn wait_for_any(&mut self, needles: &[&str]) -> String {
        self.claim(
            |line| needles.iter().any(|n| line.contains(n)),
            &format!("{needles:?}"),
        )
    }

    fn claim(&mut self, wanted: impl Fn(&str) -> bool, what: &str) -> String {
        // Lines already seen are scanned once; after that only new lines are checked
        // (access logs make thousands of lines).
        if let Some(i) = (0..self.seen.len()).find(|&i| !self.claimed[i] && wanted(&self.seen[i])) {
            self.claimed[i] = true;
            return self.seen[i].clone();
        }
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let hit = wanted(&line);
                    self.seen.push(line);
                    self.claimed.push(hit);
                    if hit {
                        return self.seen[self.seen.len() - 1].clone();
                    }
                }
                Err(_) => {
                    let tail = &self.seen[self.seen.len().saturating_sub(60)..];
                    panic!("no line with {what}; the last lines:\n{}", tail.join("\n"))
                }
            }
        }
    }

    /// The address of the first traffic listener, from its "listening bind=… local=ADDR"
    /// log line.
    pub fn wait_listening(&mut self) -> SocketAddr {
        self.wait_listening_on("tether::listener")
    }

    /// The admin listener's address, from its "admin listening …" log line.
    pub fn wait_admin(&mut self) -> SocketAddr {
        self.wait_listening_on("admin listening")
    }

    /// The first traffic listener's address when logging JSON.
    pub fn wait_listening_json(&mut self) -> SocketAddr {
        self.wait_listening_on("\"message\":\"listening\"")
    }

    /// The address from a "listening" log line that contains `needle`: text
    /// (`listening bind=… local=ADDR`) or JSON (`"message":"listening","local":"ADDR"`).
    pub fn wait_listening_on(&mut self, needle: &str) -> SocketAddr {
        let is_listening = |l: &str| l.contains("listening bind=") || l.contains("listening\",");
        let line = self.claim(|l| is_listening(l) && l.contains(needle), needle);
        let local = if line.starts_with('{') {
            let v: Value = serde_json::from_str(&line).unwrap();
            v["local"]
                .as_str()
                .expect("no local in the listening line")
                .to_owned()
        } else {
            let local = line
                .split("local=")
                .nth(1)
                .expect("no local= in the listening line");
            local.split_whitespace().next().unwrap().to_owned()
        };
        local.parse().unwrap()
    }

    /// Every line seen so far plus whatever arrived since.
    pub fn output(&mut self) -> String {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
            self.claimed.push(false);
        }
        self.seen.join("\n")
    }

    /// Stops reading tether's stdout and stderr: each pipe closes after its next line,
    /// so every later write meets a broken pipe.
    pub fn close_output(&mut self) {
        self.lines = std::sync::mpsc::channel().1;
    }

    pub fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .args(["-s", signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits (at most PATIENCE) for the process to exit.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "tether did not exit:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A line of `/proc/PID/status`, e.g. `VmHWM`, in kB.
    pub fn proc_status_kb(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with(field)).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Starts `cmd` with stdout and stderr piped; every line of either comes on the
/// receiver. With `drain`, both pipes are read to their end even once the receiver is
/// gone (a browser must not block on a full pipe or die on a closed one); without, a
/// pipe is closed at the first line nobody receives.
pub fn spawn_lines(
    cmd: &mut std::process::Command,
    drain: bool,
) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    use std::io::BufRead;
    use std::process::Stdio;
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    for pipe in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
                if tx.send(line).is_err() && !drain {
                    break;
                }
            }
        });
    }
    (child, rx)
}

/// Writes `text` to a fresh temporary file and returns its directory guard and path.
pub fn write_config(text: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tether.toml");
    std::fs::write(&path, text).unwrap();
    (dir, path.to_string_lossy().into_owned())
}

/// What `s` sends until it closes (or resets), as text; panics naming `what` if it is
/// still open after PATIENCE.
pub async fn read_until_closed(s: &mut TcpStream, what: &str) -> String {
    let mut got = Vec::new();
    let ended = tokio::time::timeout(PATIENCE, s.read_to_end(&mut got)).await;
    assert!(ended.is_ok(), "still open after {PATIENCE:?}: {what}");
    String::from_utf8_lossy(&got).into_owned()
}

/// Opens a raw connection, sends `bytes`, and returns it with the response head.
pub async fn raw_head(addr: SocketAddr, bytes: &[u8]) -> (TcpStream, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let head = read_head(&mut s).await;
    (s, head)
}

/// A WebSocket through `addr` to `path` on a raw TCP connection, past the 101 and the
/// node's greeting, for byte-exact tests.
pub async fn raw_ws(addr: SocketAddr, path: &str) -> TcpStream {
    let (mut s, head) = raw_head(addr, upgrade_request(path).as_bytes()).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let (op, _) = read_frame(&mut s).await.expect("no greeting");
    assert_eq!(op, 1);
    s
}

/// A backend for tests that need to hold a request in flight: it reads one request
/// head per connection, reports it, and answers only when the test says so.
pub struct HeldBackend {
    pub addr: SocketAddr,
    /// One message per request received.
    pub arrived: tokio::sync::mpsc::UnboundedReceiver<()>,
    release: tokio::sync::watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl HeldBackend {
    pub async fn start() -> HeldBackend {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (tx, arrived) = tokio::sync::mpsc::unbounded_channel();
        let (release, released) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let (tx, mut released) = (tx.clone(), released.clone());
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        if s.read(&mut byte).await.unwrap_or(0) == 0 {
                            return;
                        }
                        head.push(byte[0]);
                    }
                    let _ = tx.send(());
                    let _ = released.wait_for(|r| *r).await;
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nheld")
                        .await;
                    let mut rest = Vec::new();
                    let _ = s.read_to_end(&mut rest).await;
                });
            }
        });
        HeldBackend {
            addr,
            arrived,
            release,
            task,
        }
    }

    /// Lets every held (and future) request be answered.
    pub fn release(&self) {
        let _ = self.release.send(true);
    }
}

impl Drop for HeldBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// WebSocket upgrades `proxy` counted as opened on route "/" for `protocol`
/// (`"http/1.1"` or `"h2"`, the `protocol` label of `tether_upgrades_total`).
pub fn upgrades_ok(proxy: &Proxy, protocol: &'static str) -> u64 {
    let labels = UpgradeLabels {
        route: "/".into(),
        protocol,
        result: "ok".into(),
    };
    proxy.live.metrics.upgrades.get_or_create(&labels).get()
}

/// One binary message this long: far more than the kernel's socket buffers on the way
/// (a few MiB each) can hold, so only tether's own memory could take it all in.
pub const FLOOD: u64 = 200 * 1024 * 1024;

/// A backend flooding its WebSocket clients (see [`flooding_backend`]).
pub struct Flood {
    /// Bytes of the message written so far, over every connection.
    pub written: Arc<std::sync::atomic::AtomicU64>,
    /// One message per connection that wrote the whole message.
    pub done: tokio::sync::mpsc::Receiver<()>,
}

/// A WebSocket backend that answers each upgrade and then sends one FLOOD-byte binary
/// message as fast as its socket takes it.
pub async fn flooding_backend() -> (SocketAddr, Flood) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, done) = tokio::sync::mpsc::channel(1);
    let written = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = written.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let (tx, counter) = (tx.clone(), counter.clone());
            tokio::spawn(async move {
                if !answer_upgrade(&mut s).await {
                    return;
                }
                let mut header = vec![0x82, 127];
                header.extend_from_slice(&FLOOD.to_be_bytes());
                let chunk = vec![7u8; 64 * 1024];
                let sent = async {
                    s.write_all(&header).await?;
                    for _ in 0..FLOOD / chunk.len() as u64 {
                        s.write_all(&chunk).await?;
                        counter.fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::Relaxed);
                    }
                    std::io::Result::Ok(())
                };
                if sent.await.is_ok() {
                    let _ = tx.send(()).await;
                }
            });
        }
    });
    (addr, Flood { written, done })
}

/// Reads a WebSocket upgrade request from `s` and answers it 101 with its accept key;
/// false if the peer left first (health probes connect and leave without a request).
pub async fn answer_upgrade(s: &mut TcpStream) -> bool {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).await.unwrap_or(0) == 0 {
            return false;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    let key = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("sec-websocket-key")
                .then(|| value.trim().to_owned())
        })
        .unwrap_or_default();
    let answer = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n\r\n",
        derive_accept_key(key.as_bytes())
    );
    s.write_all(answer.as_bytes()).await.is_ok()
}

/// With [`flooding_backend`]: while `client` reads nothing, the backend gets no further
/// than the socket buffers on the way; once it reads, every byte of the message
/// arrives and the backend finishes.
pub async fn assert_held_back(flood: &mut Flood, client: &mut (impl AsyncRead + Unpin)) {
    // The time under test, not a wait for an event: time for a tether that took in all
    // it was sent to take in the message (200 MiB cross loopback in about 0.1 s).
    let stalled = tokio::time::timeout(Duration::from_secs(2), flood.done.recv()).await;
    let written = flood.written.load(std::sync::atomic::Ordering::Relaxed);
    // The kernel's buffers on the way (two sockets each side, a few MiB each, and the
    // HTTP/2 windows) hold tens of MiB at most.
    assert!(
        stalled.is_err() && written < 64 << 20,
        "the backend wrote {written} bytes to a client that read none"
    );
    drain(client, 10 + FLOOD as usize).await;
    tokio::time::timeout(PATIENCE, flood.done.recv())
        .await
        .expect("the backend never finished once the client read");
}

/// Reads and discards `total` bytes from `s`; fails if it ends first or stalls for
/// PATIENCE.
async fn drain(s: &mut (impl AsyncRead + Unpin), total: usize) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0;
    while got < total {
        let n = tokio::time::timeout(PATIENCE, s.read(&mut buf))
            .await
            .expect("the rest did not come")
            .unwrap();
        assert!(n > 0, "the stream ended after {got} of {total} bytes");
        got += n;
    }
}
