//! A running WebSocket tunnel: copies bytes both ways (copy.rs) until both sides have
//! closed, it is idle for the route's `idle_timeout`, a side fails, or tether tells it
//! to (its backend went down, rebalancing, shutdown, removal). tether's own closes send
//! Close frames between frames: 1012 to the client when it should reconnect elsewhere,
//! 1001 for going away. How a tunnel is negotiated is websocket.rs.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::{debug, info};

use super::copy::{Failed, Pump, Side};
#[cfg(doc)]
use crate::metrics::CLOSE_REASONS;
use crate::metrics::ReasonLabels;
use crate::principal::Fingerprint;
use crate::registry::{CloseReason, Registration};
use crate::send_timeout::SendTimeout;
use crate::shutdown::Shutdown;

/// What a tunnel logs its close with.
#[derive(Debug)]
pub struct TunnelInfo {
    pub route: Arc<str>,
    pub backend: Arc<str>,
    pub principal: Fingerprint,
    /// `tether_tunnel_bytes` up and down, and `tether_tunnels_closed`.
    pub bytes_up: Counter,
    pub bytes_down: Counter,
    pub closes: Family<ReasonLabels, Counter>,
    /// On HTTP/2, the client connection's count of open streams, held for the
    /// tunnel's life.
    pub stream: Option<crate::listener::Open>,
    /// The client connection's share of `max_connections`.
    pub _slot: Arc<tokio::sync::OwnedSemaphorePermit>,
}

/// How long a closing tunnel waits for its peers to close after its Close frames.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// Why a tunnel ended.
#[derive(Debug)]
enum Closed {
    /// Both sides finished normally; `Side` finished first.
    By(Side),
    /// tether closed it (backend down, rebalance, shutdown, removal, idle).
    Told(CloseReason),
    Failed(Failed),
}

impl Closed {
    /// The Close codes tether sends to the client and to the backend.
    fn codes(&self) -> (Option<u16>, Option<u16>) {
        match self {
            Closed::By(_) => (None, None),
            // A dead backend gets nothing more; the client is told to reconnect.
            Closed::Told(CloseReason::BackendDown) => (Some(1012), None),
            // The backend is fine: its client is leaving for another node.
            Closed::Told(CloseReason::Rebalance) => (Some(1012), Some(1001)),
            Closed::Told(r) => (Some(r.code()), Some(r.code())),
            Closed::Failed(Failed {
                side: Side::Backend,
                ..
            }) => (Some(1012), None),
            // A client that failed (reset, broken TLS) is passed on as what it is, an
            // end of stream without a Close: a Close 1001 would tell the app the user
            // left on purpose (what a browser sends on navigating away).
            Closed::Failed(Failed {
                side: Side::Client, ..
            }) => (None, None),
        }
    }
}

impl Closed {
    /// The reason text of the Close frames [`Closed::codes`] asks for.
    fn why(&self) -> &'static str {
        match self {
            Closed::Told(r) => r.why(),
            _ => "tether: backend failed",
        }
    }

    /// The `reason` label of `tether_tunnels_closed` (one of [`CLOSE_REASONS`]).
    fn label(&self) -> &'static str {
        match self {
            Closed::By(Side::Client) => "client",
            Closed::By(Side::Backend) => "backend",
            Closed::Told(r) => r.as_str(),
            Closed::Failed(Failed {
                side: Side::Client, ..
            }) => "client-error",
            Closed::Failed(Failed {
                side: Side::Backend,
                ..
            }) => "backend-error",
        }
    }
}

impl std::fmt::Display for Closed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Closed::By(Side::Client) => f.write_str("client"),
            Closed::By(Side::Backend) => f.write_str("backend"),
            Closed::Told(r) => f.write_str(r.as_str()),
            Closed::Failed(Failed {
                side: Side::Client,
                error,
            }) => write!(f, "client error: {error}"),
            Closed::Failed(Failed {
                side: Side::Backend,
                error,
            }) => write!(f, "backend error: {error}"),
        }
    }
}

/// Waits for both upgrades, then starts the tunnel as a task of its own under `tasks`
/// (so the long-lived task holds only the tunnel's state, not this set-up's).
pub(super) async fn splice(
    client: OnUpgrade,
    backend: OnUpgrade,
    info: TunnelInfo,
    registration: Registration,
    tasks: Shutdown,
) {
    let (client, backend) = match tokio::try_join!(client, backend) {
        Ok(pair) => pair,
        Err(e) => {
            debug!(backend = %info.backend, error = %e, "upgrade did not complete");
            return;
        }
    };
    // The backend connection is always our own TcpStream; unwrap it to drop hyper's
    // wrappers from the per-byte path. A client on TLS stays wrapped.
    let (backend, backend_prefix) = match backend.downcast::<TokioIo<TcpStream>>() {
        Ok(parts) => (parts.io.into_inner(), parts.read_buf),
        Err(_) => {
            debug!(backend = %info.backend, "backend upgrade is not a TCP stream");
            return;
        }
    };
    let backend = (backend, backend_prefix);
    let client = match client.downcast::<TokioIo<SendTimeout<TcpStream>>>() {
        Ok(parts) => {
            return start(
                (parts.io.into_inner(), parts.read_buf),
                backend,
                info,
                registration,
                &tasks,
            );
        }
        Err(client) => TokioIo::new(client),
    };
    match info
        .stream
        .as_ref()
        .map(crate::listener::Open::send_timeout)
    {
        // An HTTP/2 stream: flow control can stop it while its connection's socket
        // moves, so its own writes are held to the listener's `send_timeout`.
        Some(limit) => {
            let client = (SendTimeout::stream(client, limit), Bytes::new());
            start(client, backend, info, registration, &tasks);
        }
        // TLS: the socket under it has its `SendTimeout`.
        None => start((client, Bytes::new()), backend, info, registration, &tasks),
    }
}

/// Spawns the tunnel between `client` and `backend`, each with the bytes already read
/// from it.
fn start<C>(
    client: (C, Bytes),
    backend: (TcpStream, Bytes),
    info: TunnelInfo,
    registration: Registration,
    tasks: &Shutdown,
) where
    C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let pump = Pump::new(client.0, client.1, backend.0, backend.1)
        .metered(info.bytes_up.clone(), info.bytes_down.clone())
        .watched(registration.ctl.clone());
    tasks.spawn(Tunnel::new(pump, info, registration));
}

/// A running tunnel, as the task that owns it.
///
/// Written by hand rather than as an `async fn`: an async state machine keeps room for
/// its parameters and for every later state at once, and this is the memory every idle
/// tunnel holds (measured: 888 bytes as an `async fn`, about half as this enum). While
/// open it is the pump and what the close needs; when the tunnel ends everything moves
/// into one boxed future that sends the Close frames and accounts for the tunnel.
// `Open` is large on purpose: it is the variant a tunnel lives in; boxing it would add
// an allocation per tunnel and save nothing.
#[allow(clippy::large_enum_variant)]
enum Tunnel<C> {
    Open {
        pump: Pump<C, TcpStream>,
        info: TunnelInfo,
        registration: Registration,
        started: Instant,
    },
    Closing(Pin<Box<dyn Future<Output = ()> + Send>>),
    Done,
}

impl<C> Tunnel<C>
where
    C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    fn new(pump: Pump<C, TcpStream>, info: TunnelInfo, registration: Registration) -> Self {
        Tunnel::Open {
            pump,
            info,
            registration,
            started: Instant::now(),
        }
    }
}

impl<C> Future for Tunnel<C>
where
    C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        loop {
            match this {
                Tunnel::Open {
                    pump, registration, ..
                } => {
                    let ctl = &registration.ctl;
                    ctl.register(cx.waker());
                    let closed = match (ctl.reason(), pump.closed_by()) {
                        // A side had already ended it and tether only finished the job:
                        // the half-closed sweep, or the health check that found the
                        // backend down after it hung up (a crashed node whose clients
                        // got their 1012 and did not answer). That side's close.
                        (Some(CloseReason::Idle), Some(side))
                        | (Some(CloseReason::BackendDown), Some(side @ Side::Backend)) => {
                            Closed::By(side)
                        }
                        (Some(reason), _) => Closed::Told(reason),
                        (None, _) => match ready!(pump.poll(cx)) {
                            Ok(()) => Closed::By(pump.closed_by().unwrap_or(Side::Client)),
                            Err(e) => Closed::Failed(e),
                        },
                    };
                    let Tunnel::Open {
                        pump,
                        info,
                        registration,
                        started,
                    } = std::mem::replace(this, Tunnel::Done)
                    else {
                        unreachable!("matched Open above")
                    };
                    *this = Tunnel::Closing(Box::pin(finish(
                        pump,
                        info,
                        registration,
                        closed,
                        started,
                    )));
                }
                Tunnel::Closing(f) => {
                    ready!(f.as_mut().poll(cx));
                    *this = Tunnel::Done;
                }
                Tunnel::Done => return Poll::Ready(()),
            }
        }
    }
}

/// Closes an ended tunnel (Close frames where tether ended it) and accounts for it.
async fn finish<C>(
    mut pump: Pump<C, TcpStream>,
    info: TunnelInfo,
    registration: Registration,
    closed: Closed,
    started: Instant,
) where
    C: AsyncRead + AsyncWrite + Unpin,
{
    // A closing tunnel no longer counts for placement or rebalancing.
    drop(registration);
    let (to_client, to_backend) = closed.codes();
    if to_client.is_some() || to_backend.is_some() {
        pump.close(to_client, to_backend, closed.why(), CLOSE_LINGER)
            .await;
    }
    let (up, down) = pump.totals();
    info.closes
        .get_or_create(&ReasonLabels {
            reason: closed.label().to_owned(),
        })
        .inc();
    info!(
        target: "tether::access",
        kind = "tunnel",
        // Strings quoted, as in the request event, so text logs parse alike.
        route = &*info.route,
        backend = &*info.backend,
        principal = %info.principal,
        reason = closed.to_string(),
        bytes_up = up,
        bytes_down = down,
        duration_ms = started.elapsed().as_millis() as u64,
        "tunnel closed"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::CLOSE_REASONS;

    #[test]
    fn every_close_label_is_a_declared_reason() {
        let failed = |side| {
            Closed::Failed(Failed {
                side,
                error: std::io::Error::other("x"),
            })
        };
        let all = [
            Closed::By(Side::Client),
            Closed::By(Side::Backend),
            Closed::Told(CloseReason::Idle),
            Closed::Told(CloseReason::BackendDown),
            Closed::Told(CloseReason::Rebalance),
            Closed::Told(CloseReason::Shutdown),
            Closed::Told(CloseReason::Reload),
            failed(Side::Client),
            failed(Side::Backend),
        ];
        let labels: Vec<&str> = all.iter().map(Closed::label).collect();
        assert_eq!(labels, CLOSE_REASONS);
    }
}
