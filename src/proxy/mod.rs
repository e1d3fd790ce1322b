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
//! placement order (down backends and, with bounded load, full ones last). A backend
//! that refuses or times out the connect counts a passive failure against its health
//! and the next one is tried. A backend that accepts but does not answer in time counts
//! one too; the request moves on if it can safely be sent twice (an upgrade, or an
//! idempotent method whose body was not sent), else the client gets 504.

mod body;
mod copy;
pub mod error;
mod frames;
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
use error::{ProxyError, chain};
use headers::{Forwarding, client_ip, is_trusted, set_forwarding, strip_hop_by_hop};
use tunnel::{TunnelInfo, is_websocket_upgrade, mark_upgrade};

use crate::config::human;
use crate::principal::{self, Fallback, Principal};
use crate::rebalance::on_transition;
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
            self.http(req, upstream, principal).await
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
        let registry = &self.live.registry;
        let timeout = upstream.config.upgrade_timeout;
        let mut candidates = upstream.candidates(principal.key(), registry);
        let (backend, resp) = loop {
            let b = candidates.next().ok_or_else(|| no_backend(upstream))?;
            let stream = match b.connect().await {
                Ok(s) => s,
                Err(e) => {
                    self.passive_failure(upstream, b, &chain(&e));
                    continue;
                }
            };
            let req = Request::from_parts(same_head(&parts), Empty::new());
            match tokio::time::timeout(timeout, tunnel::send(stream, req, &self.tasks)).await {
                Ok(Ok(resp)) => break (b, resp),
                // An upgrade is a GET without a body: safe to try the next backend.
                Ok(Err(e)) => {
                    debug!(backend = %b.id, error = %e, "upgrade request failed; trying the next backend")
                }
                Err(_) => self.passive_failure(
                    upstream,
                    b,
                    &format!("no answer to an upgrade within {}", human(timeout)),
                ),
            }
        };
        let info = TunnelInfo {
            route: route.label.clone(),
            backend: backend.id.clone(),
            principal: principal.fingerprint(),
            idle_timeout: route.idle_timeout,
        };
        let register =
            || registry.register(upstream.name.clone(), backend.key.clone(), principal.key());
        tunnel::finish(resp, client, info, register, &self.tasks)
    }

    /// A plain request through the first reachable candidate's keep-alive pool.
    async fn http(
        &self,
        req: Request<Incoming>,
        upstream: &Upstream,
        principal: Principal,
    ) -> Result<Response<Body>, ProxyError> {
        let (parts, body) = req.into_parts();
        let body = RetryBody::new(body);
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let timeout = upstream.config.response_timeout;
        let mut candidates = upstream.candidates(principal.key(), &self.live.registry);
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
            match tokio::time::timeout(timeout, b.client().request(r)).await {
                Ok(Ok(resp)) => break (b, resp),
                // Nothing went upstream: the next candidate gets the same request.
                Ok(Err(e)) if e.is_connect() && body.untouched() => {
                    self.passive_failure(upstream, b, &chain(&e))
                }
                Ok(Err(e)) if body.client_failed() => return Err(ProxyError::ClientBody(e.into())),
                Ok(Err(e)) => return Err(failed(e.into())),
                Err(_) => {
                    self.passive_failure(
                        upstream,
                        b,
                        &format!("no response within {}", human(timeout)),
                    );
                    // Only a request that can safely be sent twice goes to the next node.
                    if !(parts.method.is_idempotent() && body.untouched()) {
                        return Err(ProxyError::Timeout {
                            backend: b.id.clone(),
                        });
                    }
                }
            }
        };
        debug!(backend = %backend.id, principal = %principal.fingerprint(), status = resp.status().as_u16(), "proxied");
        Ok(relay(resp))
    }

    /// A connect to `b` failed, or it did not answer in time: count it against the
    /// backend's health, and act if that takes it down.
    fn passive_failure(&self, upstream: &Upstream, b: &Backend, detail: &str) {
        warn!(upstream = %upstream.name, backend = %b.id, error = %detail, "backend failed on live traffic; trying the next");
        if let Some(t) = b
            .health
            .passive_failure(&upstream.config.health.thresholds, detail)
        {
            on_transition(&self.live, b, t);
        }
    }
}

/// A copy of a request head, for one more attempt.
fn same_head(parts: &hyper::http::request::Parts) -> hyper::http::request::Parts {
    let mut r = Request::new(());
    *r.method_mut() = parts.method.clone();
    *r.uri_mut() = parts.uri.clone();
    *r.version_mut() = parts.version;
    *r.headers_mut() = parts.headers.clone();
    r.into_parts().0
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
