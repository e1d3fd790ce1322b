//! WebSocket upgrades: the handshake with the owner backend on a fresh connection, then
//! the tunnel that copies bytes both ways until either side closes, the tunnel is idle
//! for the route's `idle_timeout`, or tether shuts down.
//!
//! The recipe (hyper's `upgrades.rs`): take the client's `OnUpgrade` before anything
//! else; send the request upstream with `Connection: upgrade` / `Upgrade: websocket`
//! re-added (they are hop-by-hop and were stripped); accept only a 101 whose `Upgrade`
//! is websocket; take the backend's `OnUpgrade`; answer the client's 101 and splice the
//! two upgraded connections in a task that the shutdown tracker owns, registered in the
//! tunnel registry. Any other answer is relayed to the client as an ordinary response.
//!
//! A tunnel ends when both sides have closed, when it is idle for the route's
//! `idle_timeout`, when a side fails, or when tether tells it to (its backend went down,
//! rebalancing, shutdown). tether's own closes send Close frames between frames:
//! 1012 to the client when it should reconnect elsewhere, 1001 for going away.

use std::future::poll_fn;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{Either, Empty, Full};
use hyper::body::Incoming;
use hyper::header::{CONNECTION, HeaderMap, HeaderValue, UPGRADE};
use hyper::upgrade::OnUpgrade;
use hyper::{Method, Request, Response, StatusCode, Version};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep_until};
use tracing::debug;

use super::copy::{Failed, Pump, Side};
use super::error::ProxyError;
use super::headers::{connection_has, strip_hop_by_hop};
use super::{Body, relay};
use crate::principal::Fingerprint;
use crate::registry::{CloseReason, Registration};
use crate::shutdown::Shutdown;

/// Is this an HTTP/1.1 WebSocket upgrade request (RFC 6455 §4.1)?
pub fn is_websocket_upgrade<B>(req: &Request<B>) -> bool {
    req.method() == Method::GET
        && req.version() == Version::HTTP_11
        && connection_has(req.headers(), "upgrade")
        && upgrade_is_websocket(req.headers())
}

fn upgrade_is_websocket(headers: &HeaderMap) -> bool {
    headers
        .get_all(UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().eq_ignore_ascii_case("websocket"))
}

/// Marks `headers` as a WebSocket upgrade (after hop-by-hop stripping removed it).
pub fn mark_upgrade(headers: &mut HeaderMap) {
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
}

/// What a tunnel logs its close with.
#[derive(Debug, Clone)]
pub struct TunnelInfo {
    pub route: Arc<str>,
    pub backend: Arc<str>,
    pub principal: Fingerprint,
    pub idle_timeout: Option<Duration>,
}

/// How long a closing tunnel waits for its peers to close after its Close frames.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// Sends the (already rewritten and re-marked) upgrade request `req` over `stream` and
/// returns the backend's answer. The connection task runs under `tasks`.
pub async fn send(
    stream: TcpStream,
    req: Request<Empty<Bytes>>,
    tasks: &Shutdown,
) -> Result<Response<Incoming>, hyper::Error> {
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tasks.spawn(async move {
        // Ends when the connection is handed to the tunnel, or after a non-101 answer.
        if let Err(e) = conn.with_upgrades().await {
            debug!(error = %e, "backend connection for an upgrade ended with an error");
        }
    });
    sender.send_request(req).await
}

/// Turns the backend's answer into the client's: a 101 starts the tunnel task (under
/// `tasks`, registered as `registration`); anything else is relayed as is.
pub fn finish(
    mut resp: Response<Incoming>,
    client: OnUpgrade,
    info: TunnelInfo,
    register: impl FnOnce() -> Registration,
    tasks: &Shutdown,
) -> Result<Response<Body>, ProxyError> {
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Ok(relay(resp));
    }
    if !upgrade_is_websocket(resp.headers()) {
        return Err(ProxyError::BadUpgrade {
            backend: info.backend,
        });
    }
    let backend = hyper::upgrade::on(&mut resp);
    let (mut parts, _) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    mark_upgrade(&mut parts.headers);
    tasks.spawn(splice(client, backend, info, register()));
    Ok(Response::from_parts(
        parts,
        Either::Right(Full::new(Bytes::new())),
    ))
}

/// Why a tunnel ended.
#[derive(Debug)]
enum Closed {
    /// Both sides finished normally; `Side` finished first.
    By(Side),
    Idle,
    /// tether closed it (backend down, rebalance, shutdown, removal).
    Told(CloseReason),
    Failed(Failed),
}

impl Closed {
    /// The Close codes tether sends to the client and to the backend.
    fn codes(&self) -> (Option<u16>, Option<u16>) {
        match self {
            Closed::By(_) => (None, None),
            Closed::Idle => (Some(1001), Some(1001)),
            // A dead backend gets nothing more; the client is told to reconnect.
            Closed::Told(CloseReason::BackendDown) => (Some(1012), None),
            // The backend is fine: its client is leaving for another node.
            Closed::Told(CloseReason::Rebalance) => (Some(1012), Some(1001)),
            Closed::Told(r) => (Some(r.code()), Some(r.code())),
            Closed::Failed(Failed {
                side: Side::Backend,
                ..
            }) => (Some(1012), None),
            Closed::Failed(Failed {
                side: Side::Client, ..
            }) => (None, Some(1001)),
        }
    }
}

impl std::fmt::Display for Closed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Closed::By(Side::Client) => f.write_str("client"),
            Closed::By(Side::Backend) => f.write_str("backend"),
            Closed::Idle => f.write_str("idle"),
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

/// Waits for both upgrades, then pumps bytes until the tunnel closes.
async fn splice(
    client: OnUpgrade,
    backend: OnUpgrade,
    info: TunnelInfo,
    registration: Registration,
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
    match client.downcast::<TokioIo<TcpStream>>() {
        Ok(parts) => {
            let pump = Pump::new(
                parts.io.into_inner(),
                parts.read_buf,
                backend,
                backend_prefix,
            );
            run(pump, info, registration).await;
        }
        Err(client) => {
            let pump = Pump::new(TokioIo::new(client), Bytes::new(), backend, backend_prefix);
            run(pump, info, registration).await;
        }
    }
}

async fn run<C>(mut pump: Pump<C, TcpStream>, info: TunnelInfo, registration: Registration)
where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let started = Instant::now();
    let ctl = registration.ctl.clone();
    let closed = loop {
        let deadline = info
            .idle_timeout
            .map(|d| Instant::from_std(pump.last_activity()) + d);
        tokio::select! {
            r = poll_fn(|cx| pump.poll(cx)) => break match r {
                Ok(()) => Closed::By(pump.first_eof().unwrap_or(Side::Client)),
                Err(e) => Closed::Failed(e),
            },
            () = sleep_or_never(deadline) => {
                // Bytes may have moved since the timer was set; if so, re-arm.
                if info.idle_timeout.is_some_and(|d| pump.last_activity().elapsed() >= d) {
                    break Closed::Idle;
                }
            }
            reason = ctl.closed() => break Closed::Told(reason),
        }
    };
    // A closing tunnel no longer counts for placement or rebalancing.
    drop(registration);
    let (to_client, to_backend) = closed.codes();
    if to_client.is_some() || to_backend.is_some() {
        pump.close(to_client, to_backend, CLOSE_LINGER).await;
    }
    let (up, down) = pump.totals();
    debug!(
        route = %info.route,
        backend = %info.backend,
        principal = %info.principal,
        reason = %closed,
        up,
        down,
        duration_ms = started.elapsed().as_millis() as u64,
        "tunnel closed"
    );
}

async fn sleep_or_never(deadline: Option<Instant>) {
    match deadline {
        Some(d) => sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: Method, version: Version, conn: &str, upgrade: &str) -> Request<()> {
        Request::builder()
            .method(method)
            .version(version)
            .header("connection", conn)
            .header("upgrade", upgrade)
            .body(())
            .unwrap()
    }

    #[test]
    fn recognises_websocket_upgrades_only() {
        assert!(is_websocket_upgrade(&req(
            Method::GET,
            Version::HTTP_11,
            "keep-alive, Upgrade",
            "WebSocket"
        )));
        assert!(!is_websocket_upgrade(&req(
            Method::GET,
            Version::HTTP_11,
            "keep-alive",
            "websocket"
        )));
        assert!(!is_websocket_upgrade(&req(
            Method::GET,
            Version::HTTP_11,
            "upgrade",
            "h2c"
        )));
        assert!(!is_websocket_upgrade(&req(
            Method::POST,
            Version::HTTP_11,
            "upgrade",
            "websocket"
        )));
        assert!(!is_websocket_upgrade(&req(
            Method::GET,
            Version::HTTP_10,
            "upgrade",
            "websocket"
        )));
    }
}
