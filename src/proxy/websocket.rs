//! WebSocket upgrades: recognising them, and negotiating one with the owner backend.
//!
//! Two ways in, one way out. An HTTP/1.1 client sends `GET` with `Connection: upgrade`
//! and `Upgrade: websocket` (RFC 6455 §4.1); an HTTP/2 client sends an extended CONNECT
//! with `:protocol = websocket` (RFC 8441 §4). Both become an HTTP/1.1 upgrade request
//! to the backend on a fresh connection, so backends only ever speak HTTP/1.1. For an
//! HTTP/2 client tether is the one that opens the WebSocket, so it makes the
//! `Sec-WebSocket-Key` and checks the backend's `Sec-WebSocket-Accept`, and answers the
//! client `200` (RFC 8441 §5) instead of `101`.
//!
//! The recipe (hyper's `upgrades.rs`): take the client's `OnUpgrade` before anything
//! else; send the request with `Connection: upgrade` / `Upgrade: websocket` re-added
//! (they are hop-by-hop and were stripped); accept only a 101 whose `Upgrade` is
//! websocket; take the backend's `OnUpgrade`; answer the client and splice the two
//! upgraded connections in a task that the shutdown tracker owns, registered in the
//! tunnel registry. Any other answer is relayed as an ordinary response. A backend that
//! does not answer within `upgrade_timeout` is passed over for the next candidate (an
//! upgrade is a GET without a body: safe to repeat), and counts against its health
//! only if it then answers no plain request either ([`crate::probe::answers`]).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{Either, Empty, Full};
use hyper::body::Incoming;
use hyper::ext::Protocol;
use hyper::header::{
    CONNECTION, CONTENT_LENGTH, HeaderMap, HeaderValue, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY,
    SEC_WEBSOCKET_VERSION, UPGRADE,
};
use hyper::upgrade::OnUpgrade;
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::handshake::client::generate_key;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tracing::debug;

use super::error::{ProxyError, chain};
use super::headers::{connection_has, strip_hop_by_hop};
use super::tunnel::{TunnelInfo, splice};
use super::{Access, Body, Proxy, exhausted, relay, same_head};
use crate::listener::Open;
use crate::metrics::ResultLabels;
use crate::principal::Principal;
use crate::registry::Registration;
use crate::shutdown::Shutdown;
use crate::snapshot::Route;
use crate::upstream::Upstream;

/// How the client asked for a WebSocket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// `GET` + `Upgrade: websocket` over HTTP/1.1; answered 101.
    Http1,
    /// Extended CONNECT over HTTP/2; answered 200.
    Http2,
}

impl Flavor {
    /// The `protocol` label of `tether_upgrades_total`.
    pub fn label(self) -> &'static str {
        match self {
            Flavor::Http1 => "http/1.1",
            Flavor::Http2 => "h2",
        }
    }
}

/// A WebSocket request: its flavour and, on HTTP/2, the connection's stream count it
/// joins for the tunnel's life.
pub(crate) struct Asked {
    pub flavor: Flavor,
    pub stream: Option<Open>,
    pub slot: Arc<OwnedSemaphorePermit>,
}

/// The WebSocket flavour of `req`, if it asks for one.
pub fn flavor<B>(req: &Request<B>) -> Option<Flavor> {
    if req.method() == Method::GET
        && req.version() == Version::HTTP_11
        && connection_has(req.headers(), "upgrade")
        && upgrade_is_websocket(req.headers())
    {
        return Some(Flavor::Http1);
    }
    let protocol = req.extensions().get::<Protocol>();
    (req.method() == Method::CONNECT
        && req.version() == Version::HTTP_2
        && protocol.is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket")))
    .then_some(Flavor::Http2)
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
fn mark_upgrade(headers: &mut HeaderMap) {
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
}

impl Proxy {
    /// Opens a tunnel for `req` (already routed, placed and rewritten) to the first
    /// reachable candidate of `upstream`.
    pub(super) async fn upgrade(
        &self,
        req: Request<Incoming>,
        asked: Asked,
        upstream: &Upstream,
        route: &Route,
        principal: Principal,
        access: &mut Access,
    ) -> Result<Response<Body>, ProxyError> {
        let started = Instant::now();
        let result = self
            .open(req, asked, upstream, route, principal, access)
            .await;
        let outcome = match &result {
            Ok(r)
                if r.status() == StatusCode::SWITCHING_PROTOCOLS
                    || r.status() == StatusCode::OK =>
            {
                "ok"
            }
            Ok(_) => "refused",
            Err(_) => "failed",
        };
        // Counted with the answer (`Proxy::count`), as upgrades tether refuses itself are.
        access.upgrade_result = Some(outcome);
        let m = &self.live.metrics;
        m.upgrade_seconds
            .get_or_create(&ResultLabels { result: outcome })
            .observe(started.elapsed().as_secs_f64());
        result
    }

    async fn open(
        &self,
        mut req: Request<Incoming>,
        Asked {
            flavor,
            stream,
            slot,
        }: Asked,
        upstream: &Upstream,
        route: &Route,
        principal: Principal,
        access: &mut Access,
    ) -> Result<Response<Body>, ProxyError> {
        debug!(?flavor, principal = %principal.fingerprint(), "WebSocket requested");
        // The share of `max_connections` the tunnel holds: its HTTP/1.1 connection's,
        // or on HTTP/2 a slot of its own (see `Proxy::stream_slot`).
        let slot = match flavor {
            Flavor::Http1 => slot,
            Flavor::Http2 => self.stream_slot()?.0,
        };
        let client = hyper::upgrade::on(&mut req);
        // A handshake has no body (RFC 6455 §4.1): none is forwarded, so none may be
        // announced either, or the backend would take the first WebSocket bytes for it.
        let (mut parts, _) = req.into_parts();
        parts.headers.remove(CONTENT_LENGTH);
        parts.method = Method::GET;
        parts.version = Version::HTTP_11;
        if let Some(pq) = parts.uri.path_and_query() {
            parts.uri = Uri::from(pq.clone());
        }
        mark_upgrade(&mut parts.headers);
        let key = (flavor == Flavor::Http2).then(|| {
            let key = generate_key();
            if let Ok(v) = HeaderValue::from_str(&key) {
                parts.headers.insert(SEC_WEBSOCKET_KEY, v);
            }
            parts
                .headers
                .entry(SEC_WEBSOCKET_VERSION)
                .or_insert(HeaderValue::from_static("13"));
            key
        });

        let registry = &self.live.registry;
        let timeout = upstream.config.upgrade_timeout;
        let mut candidates = upstream.candidates(principal.key(), registry);
        let mut last = None;
        let (backend, resp, opening) = loop {
            let Some(b) = candidates.next() else {
                return Err(exhausted(last, upstream));
            };
            access.backend = Some(b.id.clone());
            // Counted by bounded load from here, so upgrades that arrive together
            // (everyone reconnecting after a restart) still meet the cap.
            let opening = upstream
                .config
                .balance_factor
                .map(|_| registry.opening(upstream.name.clone(), b.key.clone()));
            let stream = match b.connect().await {
                Ok(s) => s,
                Err(e) => {
                    // A timeout or broken answer from another candidate says more.
                    last = last.or(self.connect_failed(upstream, b, e.into()));
                    continue;
                }
            };
            let req = Request::from_parts(same_head(&parts), Empty::new());
            match tokio::time::timeout(timeout, send(stream, req, &self.tasks)).await {
                Ok(Ok(resp)) => break (b, resp, opening),
                Ok(Err(e)) => {
                    debug!(backend = %b.id, error = %chain(&e), "upgrade request failed");
                    last = Some(ProxyError::Upstream {
                        backend: b.id.clone(),
                        source: e.into(),
                    });
                }
                Err(_) => {
                    self.unanswered_upgrade(upstream, b, timeout);
                    last = Some(ProxyError::Timeout {
                        backend: b.id.clone(),
                    });
                }
            }
        };
        let metrics = &self.live.metrics;
        let info = TunnelInfo {
            route: route.label.clone(),
            backend: backend.id.clone(),
            principal: principal.fingerprint(),
            bytes_up: metrics.bytes_up(),
            bytes_down: metrics.bytes_down(),
            closes: metrics.tunnels_closed.clone(),
            stream,
            _slot: slot,
        };
        let register = || {
            let registration = registry.register(
                upstream.name.clone(),
                route.label.clone(),
                backend.key.clone(),
                principal.key(),
                route.idle_timeout,
            );
            drop(opening);
            registration
        };
        let stall = upstream.config.response_timeout;
        finish(resp, client, key, info, register, stall, &self.tasks)
    }
}

/// Sends the upgrade request `req` over `stream` and returns the backend's answer. The
/// connection task runs under `tasks`.
async fn send(
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

/// Turns the backend's answer into the client's: a valid 101 starts the tunnel and
/// becomes a 101 (HTTP/1.1) or a 200 (HTTP/2, `key` set); anything else is relayed.
fn finish(
    mut resp: Response<Incoming>,
    client: OnUpgrade,
    key: Option<String>,
    info: TunnelInfo,
    register: impl FnOnce() -> Registration,
    stall: Duration,
    tasks: &Shutdown,
) -> Result<Response<Body>, ProxyError> {
    let bad = |why| ProxyError::BadUpgrade {
        backend: info.backend.clone(),
        why,
    };
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        // To an HTTP/2 client any 2xx means the tunnel is open (RFC 8441 §5).
        if key.is_some() && resp.status().is_success() {
            return Err(bad("with a 2xx, not 101"));
        }
        return relay(resp, None, &info.backend, stall);
    }
    if !upgrade_is_websocket(resp.headers()) {
        return Err(bad("with 101 but without `Upgrade: websocket`"));
    }
    if let Some(key) = &key {
        let expected = derive_accept_key(key.as_bytes());
        if resp
            .headers()
            .get(SEC_WEBSOCKET_ACCEPT)
            .is_none_or(|v| v.as_bytes() != expected.as_bytes())
        {
            return Err(bad("with 101 but a wrong `Sec-WebSocket-Accept`"));
        }
    }
    let backend = hyper::upgrade::on(&mut resp);
    let (mut parts, _) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    if key.is_some() {
        parts.status = StatusCode::OK;
        parts.headers.remove(SEC_WEBSOCKET_ACCEPT);
    } else {
        mark_upgrade(&mut parts.headers);
    }
    tasks.spawn(splice(client, backend, info, register(), tasks.clone()));
    Ok(Response::from_parts(
        parts,
        Either::Right(Full::new(Bytes::new())),
    ))
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
    fn recognises_websocket_requests_only() {
        let h1 = |m, v, c, u| flavor(&req(m, v, c, u));
        assert_eq!(
            h1(
                Method::GET,
                Version::HTTP_11,
                "keep-alive, Upgrade",
                "WebSocket"
            ),
            Some(Flavor::Http1)
        );
        assert_eq!(
            h1(Method::GET, Version::HTTP_11, "keep-alive", "websocket"),
            None
        );
        assert_eq!(h1(Method::GET, Version::HTTP_11, "upgrade", "h2c"), None);
        assert_eq!(
            h1(Method::POST, Version::HTTP_11, "upgrade", "websocket"),
            None
        );
        assert_eq!(
            h1(Method::GET, Version::HTTP_10, "upgrade", "websocket"),
            None
        );

        let mut connect = Request::builder()
            .method(Method::CONNECT)
            .version(Version::HTTP_2)
            .body(())
            .unwrap();
        assert_eq!(flavor(&connect), None, "plain CONNECT is not a WebSocket");
        connect
            .extensions_mut()
            .insert(Protocol::from_static("websocket"));
        assert_eq!(flavor(&connect), Some(Flavor::Http2));
        connect
            .extensions_mut()
            .insert(Protocol::from_static("webtransport"));
        assert_eq!(flavor(&connect), None);
    }
}
