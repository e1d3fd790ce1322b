//! The load generator: one function per scenario, each returning the figure it
//! measures for one target. Clients are tokio-tungstenite WebSockets and hyper HTTP/1.1
//! connections in this process (pinned to core 1, beside the backends). Costs are read
//! from the target's own CPU time over a measurement window after a warm-up, so a
//! saturated load generator does not distort them.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::{Instant, interval, sleep};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::measure::{cpu, rss_kb};
use crate::targets::Target;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub const WARM_UP: Duration = Duration::from_millis(1000);
pub const WINDOW: Duration = Duration::from_millis(3000);

async fn ws(t: &Target, id: usize) -> Ws {
    let url = format!("ws://{}/ws?u=user{id}", t.addr_for(id));
    let (s, _) = tokio_tungstenite::connect_async(url)
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", t.kind.name()));
    s
}

/// Sends `m` and waits for its echo.
async fn echo(s: &mut Ws, m: Message) -> bool {
    if s.send(m).await.is_err() {
        return false;
    }
    loop {
        match s.next().await {
            Some(Ok(Message::Binary(_) | Message::Text(_))) => return true,
            Some(Ok(_)) => continue,
            _ => return false,
        }
    }
}

/// The target's CPU per unit of work, in nanoseconds.
#[derive(Debug, Clone, Copy)]
pub struct Cost {
    pub total: f64,
    /// The part spent in the kernel (system calls and the network stack).
    pub kernel: f64,
}

/// Lets the work run for warm-up plus window; returns the target's CPU per unit of
/// work during the window. `done` counts finished units.
async fn window(t: &Target, done: &Rc<Cell<u64>>) -> Cost {
    sleep(WARM_UP).await;
    let pids = t.pids();
    let (cpu0, n0) = (cpu(&pids), done.get());
    sleep(WINDOW).await;
    let (ns, kernel) = cpu0.since(cpu(&pids));
    let n = (done.get() - n0).max(1) as f64;
    Cost {
        total: ns as f64 / n,
        kernel: kernel as f64 / n,
    }
}

/// Proxy CPU per echoed 64-byte message, `conns` connections at `rate` messages/s in
/// all.
pub async fn message_cpu(t: &Target, conns: usize, rate: u64) -> Cost {
    let done = Rc::new(Cell::new(0u64));
    let mut tasks = JoinSet::new();
    let period = Duration::from_secs_f64(conns as f64 / rate as f64);
    for id in 0..conns {
        let mut s = ws(t, id).await;
        let done = done.clone();
        tasks.spawn_local(async move {
            let mut tick = interval(period);
            let payload = Bytes::from(vec![0x5a; 64]);
            loop {
                tick.tick().await;
                if !echo(&mut s, Message::Binary(payload.clone())).await {
                    return;
                }
                done.set(done.get() + 1);
            }
        });
    }
    let cost = window(t, &done).await;
    tasks.shutdown().await;
    cost
}

/// How long the idle memory figure waits for a proxy to settle before reading RSS.
const SETTLE: Duration = Duration::from_secs(3);

/// Resident memory per idle tunnel: the RSS the target gains while holding `n` open,
/// silent WebSockets. Returns KiB per tunnel.
pub async fn idle_memory(t: &Target, n: usize) -> f64 {
    let pids = t.pids();
    // Warm up allocator pools with a few connections first.
    let mut warm = Vec::new();
    for id in 0..50 {
        let mut s = ws(t, id).await;
        echo(&mut s, Message::Binary(Bytes::from_static(b"warm"))).await;
        warm.push(s);
    }
    drop(warm);
    // Settled states on both sides: a proxy may tidy up after churn (tether trims its
    // heap at the first quiet second after tunnels opened or closed, within 2 s).
    sleep(SETTLE).await;
    let before = rss_kb(&pids);
    let open = Rc::new(RefCell::new(Vec::with_capacity(n)));
    let mut tasks = JoinSet::new();
    let per = std::env::var("MEM_BATCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(250usize);
    for batch in 0..n.div_ceil(per) {
        for id in batch * per..((batch + 1) * per).min(n) {
            let (open, addr) = (open.clone(), t.addr_for(id));
            tasks.spawn_local(async move {
                let url = format!("ws://{addr}/ws?u=idle{id}");
                if let Ok((mut s, _)) = tokio_tungstenite::connect_async(url).await {
                    // One echo proves the tunnel is through to the backend.
                    if echo(&mut s, Message::Binary(Bytes::from_static(b"hi"))).await {
                        open.borrow_mut().push(s);
                    }
                }
            });
        }
        while tasks.join_next().await.is_some() {}
    }
    sleep(SETTLE).await;
    let after = rss_kb(&pids);
    let held = open.borrow().len();
    assert!(
        held >= n * 99 / 100,
        "{}: only {held} of {n} tunnels opened",
        t.kind.name()
    );
    open.borrow_mut().clear();
    sleep(Duration::from_millis(500)).await;
    after.saturating_sub(before) as f64 / held as f64
}

/// Proxy CPU per WebSocket connection (open, one echo, close), `concurrency` clients
/// in a loop.
pub async fn connection_cpu(t: &Target, concurrency: usize) -> Cost {
    let done = Rc::new(Cell::new(0u64));
    let mut tasks = JoinSet::new();
    for worker in 0..concurrency {
        let done = done.clone();
        let addr = t.addr_for(worker);
        tasks.spawn_local(async move {
            let mut i = 0usize;
            loop {
                i += 1;
                let url = format!("ws://{addr}/ws?u=c{worker}-{i}");
                let Ok((mut s, _)) = tokio_tungstenite::connect_async(url).await else {
                    continue;
                };
                if echo(&mut s, Message::Binary(Bytes::from_static(b"once"))).await {
                    let _ = s.close(None).await;
                    while let Some(Ok(_)) = s.next().await {}
                    done.set(done.get() + 1);
                }
            }
        });
    }
    let cost = window(t, &done).await;
    tasks.shutdown().await;
    cost
}

/// Proxy CPU per plain HTTP request on `conns` keep-alive connections.
pub async fn request_cpu(t: &Target, conns: usize) -> Cost {
    let done = Rc::new(Cell::new(0u64));
    let mut tasks = JoinSet::new();
    for id in 0..conns {
        let done = done.clone();
        let addr = t.addr_for(id);
        tasks.spawn_local(async move {
            let stream = TcpStream::connect(addr).await.unwrap();
            let _ = stream.set_nodelay(true);
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .unwrap();
            tokio::task::spawn_local(conn);
            let uri = format!("/http?u=h{id}");
            loop {
                let req = Request::get(uri.as_str())
                    .header("host", "bench")
                    .body(Empty::<Bytes>::new())
                    .unwrap();
                let Ok(resp) = sender.send_request(req).await else {
                    return;
                };
                if resp.into_body().collect().await.is_err() {
                    return;
                }
                done.set(done.get() + 1);
            }
        });
    }
    let cost = window(t, &done).await;
    tasks.shutdown().await;
    cost
}

/// Echo throughput with `size`-byte messages, `conns` connections × `inflight`
/// messages outstanding. Returns MB/s (10^6 bytes) echoed.
pub async fn throughput(t: &Target, conns: usize, inflight: usize, size: usize) -> f64 {
    let bytes = Rc::new(Cell::new(0u64));
    let mut tasks = JoinSet::new();
    let payload = Bytes::from(vec![0xa5u8; size]);
    for id in 0..conns {
        let s = ws(t, id).await;
        let (mut tx, mut rx) = s.split();
        let (bytes, payload) = (bytes.clone(), payload.clone());
        tasks.spawn_local(async move {
            for _ in 0..inflight {
                if tx.feed(Message::Binary(payload.clone())).await.is_err() {
                    return;
                }
            }
            let _ = tx.flush().await;
            while let Some(Ok(m)) = rx.next().await {
                if let Message::Binary(b) = m {
                    bytes.set(bytes.get() + b.len() as u64);
                    if tx.send(Message::Binary(payload.clone())).await.is_err() {
                        return;
                    }
                }
            }
        });
    }
    sleep(WARM_UP).await;
    let b0 = bytes.get();
    let started = Instant::now();
    sleep(WINDOW).await;
    let mb = (bytes.get() - b0) as f64 / 1e6 / started.elapsed().as_secs_f64();
    tasks.shutdown().await;
    mb
}

/// Round-trip times of 64-byte messages at `rate` messages/s over `conns`
/// connections. Returns (p50, p99) in microseconds.
pub async fn latency(t: &Target, conns: usize, rate: u64) -> (f64, f64) {
    let samples = Rc::new(RefCell::new(Vec::new()));
    let recording = Rc::new(Cell::new(false));
    let mut tasks = JoinSet::new();
    let period = Duration::from_secs_f64(conns as f64 / rate as f64);
    for id in 0..conns {
        let mut s = ws(t, id).await;
        let (samples, recording) = (samples.clone(), recording.clone());
        tasks.spawn_local(async move {
            let mut tick = interval(period);
            // Spread the connections over the period instead of firing together.
            sleep(period.mul_f64(id as f64 / conns as f64)).await;
            let payload = Bytes::from(vec![0x3c; 64]);
            loop {
                tick.tick().await;
                let sent = Instant::now();
                if !echo(&mut s, Message::Binary(payload.clone())).await {
                    return;
                }
                if recording.get() {
                    samples
                        .borrow_mut()
                        .push(sent.elapsed().as_secs_f64() * 1e6);
                }
            }
        });
    }
    sleep(WARM_UP).await;
    recording.set(true);
    sleep(WINDOW).await;
    recording.set(false);
    tasks.shutdown().await;
    let mut v = samples.borrow().clone();
    v.sort_by(f64::total_cmp);
    let at = |q: f64| {
        v.get(((v.len() as f64 - 1.0) * q) as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    (at(0.50), at(0.99))
}
