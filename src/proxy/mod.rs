//! The request path, from a parsed request to a response.
//!
//! ```text
//! request ─ Host check ─ route (host + longest prefix) ─ principal (sources, fallback)
//!         ─ headers (hop-by-hop out, X-Forwarded-* in)
//!         ─ WebSocket upgrade? ── yes: fresh connection to the first reachable candidate,
//!                               │      101 → tunnel task (tunnel.rs)
//!                               └─ no:  pooled keep-alive client to the first reachable
//!                                       candidate, body streamed both ways
//! ```
//!
//! "First reachable candidate": the upstream's candidates for the principal, in
//! placement order; a backend that refuses or times out the connect is put in backoff
//! ([`unreachable`]) and the next one is tried, as long as nothing has been sent
//! upstream yet.

mod body;
mod copy;
pub mod error;
pub mod headers;
pub mod tunnel;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{Either, Empty, Full};
use hyper::body::Incoming;
use hyper::header::{HOST, HeaderValue};
use hyper::{Method, Request, Response, Uri, Version};
use tracing::{debug, warn};

pub use body::RetryBody;
use error::ProxyError;
use headers::{Forwarding, client_ip, is_trusted, set_forwarding, strip_hop_by_hop};
use tunnel::{TunnelInfo, is_websocket_upgrade, mark_upgrade};

use crate::principal::{self, Fallback, Principal};
use crate::route::host_name;
use crate::shutdown::Shutdown;
use crate::snapshot::{Live, Route};
use crate::upstream::{Backend, Upstream};

/// Response body: a backend's streamed body, or one tether wrote itself.
pub type Body = Either<Incoming, Full<Bytes>>;

/// What the request path knows about the client connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// The listener's configured `bind` (its settings are looked up by it).
    pub bind: SocketAddr,
    /// `"http"` or `"https"`.
    pub scheme: &'static str,
}

/// The request handler shared by every connection.
#[derive(Debug)]
pub struct Proxy {
    live: Arc<Live>,
    tasks: Shutdown,
}

impl Proxy {
    pub fn new(live: Arc<Live>, tasks: Shutdown) -> Proxy {
        Proxy { live, tasks }
    }

    /// Never fails: errors become the response [`ProxyError::response`] chooses.
    pub async fn handle(&self, req: Request<Incoming>, conn: &ConnInfo) -> Response<Body> {
        match self.forward(req, conn).await {
            Ok(resp) => resp,
            Err(e) => {
                debug!(peer = %conn.peer, error = %e, "request failed");
                e.response()
            }
        }
    }

    async fn forward(
        &self,
        mut req: Request<Incoming>,
        conn: &ConnInfo,
    ) -> Result<Response<Body>, ProxyError> {
        if req.method() == Method::CONNECT {
            return Err(ProxyError::Connect);
        }
        let snap = self.live.load();
        let host = request_host(&mut req)?;
        let host_str = match &host {
            Some(h) => Some(h.to_str().map_err(|_| ProxyError::InvalidHost)?),
            None => None,
        };
        let route = snap
            .routes
            .find(host_str.map(host_name), req.uri().path())
            .ok_or(ProxyError::NoRoute)?;
        let upstream = &snap.upstreams[route.upstream];

        let trusted = snap
            .listener(conn.bind)
            .map_or(&[][..], |l| &l.trusted_proxies[..]);
        let peer = conn.peer.ip();
        let client = client_ip(peer, trusted, req.headers());
        let principal = match principal::extract(&route.principal, req.uri(), req.headers()) {
            Some(p) => p,
            None => match route.fallback {
                Fallback::Ip => Principal::from_ip(client),
                Fallback::Reject => {
                    let expected: Vec<String> =
                        route.principal.iter().map(|s| s.to_string()).collect();
                    return Err(ProxyError::NoPrincipal {
                        expected: expected.join(", "),
                    });
                }
            },
        };

        let websocket = is_websocket_upgrade(&req);
        let forwarding = Forwarding {
            peer,
            client,
            trusted: is_trusted(peer, trusted),
            scheme: conn.scheme,
            host: host.as_ref(),
        };
        strip_hop_by_hop(req.headers_mut());
        set_forwarding(req.headers_mut(), &forwarding);

        if websocket {
            self.upgrade(req, upstream, route, principal).await
        } else {
            http(req, upstream, principal).await
        }
    }

    async fn upgrade(
        &self,
        mut req: Request<Incoming>,
        upstream: &Upstream,
        route: &Route,
        principal: Principal,
    ) -> Result<Response<Body>, ProxyError> {
        let client = hyper::upgrade::on(&mut req);
        let (mut parts, _) = req.into_parts();
        mark_upgrade(&mut parts.headers);
        if let Some(pq) = parts.uri.path_and_query() {
            parts.uri = Uri::from(pq.clone());
        }
        let mut candidates = upstream.candidates(principal.key());
        let (backend, stream) = loop {
            let b = candidates.next().ok_or_else(|| no_backend(upstream))?;
            match b.connect().await {
                Ok(s) => break (b, s),
                Err(e) => unreachable(upstream, b, &e),
            }
        };
        backend.health.connect_succeeded();
        let info = TunnelInfo {
            route: route.label.clone(),
            backend: backend.id.clone(),
            principal: principal.fingerprint(),
            idle_timeout: route.idle_timeout,
            cancel: self.tasks.token().clone(),
        };
        tunnel::handshake(
            Request::from_parts(parts, Empty::new()),
            client,
            stream,
            info,
            &self.tasks,
        )
        .await
    }
}

/// A plain request through the owner's keep-alive pool.
async fn http(
    req: Request<Incoming>,
    upstream: &Upstream,
    principal: Principal,
) -> Result<Response<Body>, ProxyError> {
    let (parts, body) = req.into_parts();
    let body = RetryBody::new(body);
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut candidates = upstream.candidates(principal.key());
    let (backend, resp) = loop {
        let b = candidates.next().ok_or_else(|| no_backend(upstream))?;
        let failed = |e: Box<dyn std::error::Error + Send + Sync>| ProxyError::Upstream {
            backend: b.id.clone(),
            source: e,
        };
        let mut r = Request::new(body.again());
        *r.method_mut() = parts.method.clone();
        *r.uri_mut() = b.uri(path).map_err(|e| failed(e.into()))?;
        *r.version_mut() = Version::HTTP_11;
        *r.headers_mut() = parts.headers.clone();
        match b.client().request(r).await {
            Ok(resp) => break (b, resp),
            // Nothing went upstream: the next candidate gets the same request.
            Err(e) if e.is_connect() && body.untouched() => unreachable(upstream, b, &e),
            Err(e) if body.client_failed() => return Err(ProxyError::ClientBody(e.into())),
            Err(e) => return Err(failed(e.into())),
        }
    };
    debug!(backend = %backend.id, principal = %principal.fingerprint(), status = resp.status().as_u16(), "proxied");
    Ok(relay(resp))
}

/// A connect to `b` failed before anything was sent: back off from it, say so once.
fn unreachable(upstream: &Upstream, b: &Backend, e: &dyn std::error::Error) {
    b.health.connect_failed(upstream.connect_backoff);
    warn!(
        upstream = %upstream.name,
        backend = %b.id,
        error = %e,
        backoff_ms = upstream.connect_backoff.as_millis() as u64,
        "connect failed; skipping this backend for the backoff and trying the next"
    );
}

fn no_backend(upstream: &Upstream) -> ProxyError {
    ProxyError::NoBackend {
        upstream: upstream.name.clone(),
    }
}

/// Relays a backend response as is, minus its hop-by-hop headers.
fn relay(resp: Response<Incoming>) -> Response<Body> {
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Response::from_parts(parts, Either::Left(body))
}

/// The request's host: the authority of an absolute-form target (which wins over
/// `Host`, RFC 9112 §3.2.2), else the single `Host` header. HTTP/1.1 requires one;
/// an HTTP/1.0 request without it matches only host-less routes.
fn request_host(req: &mut Request<Incoming>) -> Result<Option<HeaderValue>, ProxyError> {
    let mut hosts = req.headers().get_all(HOST).iter();
    let first = hosts.next().cloned();
    if hosts.next().is_some() {
        return Err(ProxyError::DuplicateHost);
    }
    if let Some(auth) = req.uri().authority() {
        let v = HeaderValue::from_str(auth.as_str()).map_err(|_| ProxyError::InvalidHost)?;
        req.headers_mut().insert(HOST, v.clone());
        return Ok(Some(v));
    }
    match first {
        Some(v) => Ok(Some(v)),
        None if req.version() == Version::HTTP_10 => Ok(None),
        None => Err(ProxyError::MissingHost),
    }
}
