//! WebSocket upgrades: the handshake with the owner backend on a fresh connection, then
//! the tunnel that copies bytes both ways until either side closes, the tunnel is idle
//! for the route's `idle_timeout`, or tether shuts down.
//!
//! The recipe (hyper's `upgrades.rs`): take the client's `OnUpgrade` before anything
//! else; send the request upstream with `Connection: upgrade` / `Upgrade: websocket`
//! re-added (they are hop-by-hop and were stripped); accept only a 101 whose `Upgrade`
//! is websocket; take the backend's `OnUpgrade`; answer the client's 101 and splice the
//! two upgraded connections in a task that the shutdown tracker owns. Any other answer
//! is relayed to the client as an ordinary response.

use std::future::poll_fn;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{Either, Empty, Full};
use hyper::header::{CONNECTION, HeaderMap, HeaderValue, UPGRADE};
use hyper::upgrade::OnUpgrade;
use hyper::{Method, Request, Response, StatusCode, Version};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::copy::{Pump, Side};
use super::error::ProxyError;
use super::headers::{connection_has, strip_hop_by_hop};
use super::{Body, relay};
use crate::principal::Fingerprint;
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

/// What a tunnel needs to know besides its two connections; also what its close is
/// logged with.
#[derive(Debug, Clone)]
pub struct TunnelInfo {
    pub route: Arc<str>,
    pub backend: Arc<str>,
    pub principal: Fingerprint,
    pub idle_timeout: Option<Duration>,
    pub cancel: CancellationToken,
}

/// Sends the (already rewritten and re-marked) upgrade request `req` over `stream` to
/// `backend`; on 101 spawns the tunnel under `tasks` and returns the 101 for the client.
pub async fn handshake(
    req: Request<Empty<Bytes>>,
    client: OnUpgrade,
    stream: TcpStream,
    info: TunnelInfo,
    tasks: &Shutdown,
) -> Result<Response<Body>, ProxyError> {
    let upstream_err = |e: hyper::Error| ProxyError::Upstream {
        backend: info.backend.clone(),
        source: e.into(),
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(upstream_err)?;
    tasks.spawn(async move {
        // Ends when the connection is handed to the tunnel, or after a non-101 answer.
        if let Err(e) = conn.with_upgrades().await {
            debug!(error = %e, "backend connection for an upgrade ended with an error");
        }
    });
    let mut resp = sender.send_request(req).await.map_err(upstream_err)?;
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
    tasks.spawn(splice(client, backend, info));
    Ok(Response::from_parts(
        parts,
        Either::Right(Full::new(Bytes::new())),
    ))
}

/// Why a tunnel ended.
#[derive(Debug)]
enum Closed {
    /// One side finished first, then the other.
    By(Side),
    Idle,
    Cancelled,
    Error(std::io::Error),
}

/// Waits for both upgrades, then pumps bytes until the tunnel closes.
impl std::fmt::Display for Closed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Closed::By(Side::Client) => f.write_str("client"),
            Closed::By(Side::Backend) => f.write_str("backend"),
            Closed::Idle => f.write_str("idle"),
            Closed::Cancelled => f.write_str("shutdown"),
            Closed::Error(e) => write!(f, "error: {e}"),
        }
    }
}

async fn splice(client: OnUpgrade, backend: OnUpgrade, info: TunnelInfo) {
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
            run(pump, info).await;
        }
        Err(client) => {
            let pump = Pump::new(TokioIo::new(client), Bytes::new(), backend, backend_prefix);
            run(pump, info).await;
        }
    }
}

async fn run<C>(mut pump: Pump<C, TcpStream>, info: TunnelInfo)
where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let started = Instant::now();
    let closed = loop {
        let deadline = info
            .idle_timeout
            .map(|d| Instant::from_std(pump.last_activity()) + d);
        tokio::select! {
            r = poll_fn(|cx| pump.poll(cx)) => break match r {
                Ok(()) => Closed::By(pump.first_eof().unwrap_or(Side::Client)),
                Err(e) => Closed::Error(e),
            },
            () = sleep_or_never(deadline) => {
                // Bytes may have moved since the timer was set; if so, re-arm.
                if let Some(d) = info.idle_timeout {
                    if pump.last_activity().elapsed() >= d {
                        break Closed::Idle;
                    }
                }
            }
            () = info.cancel.cancelled() => break Closed::Cancelled,
        }
    };
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
