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
//! and the next one is tried. A backend that accepts but does not answer in time moves
//! the request on if it can safely be sent twice (an upgrade, or an idempotent method
//! without a body: the wait starts once a body is sent, and a streamed body is not sent
//! again), else the client gets 504; an unanswered upgrade counts
//! against the backend's health if the backend answers nothing else either, a slow
//! plain response never does. A connect that fails for want of local descriptors is
//! not the backend's failure.

mod access;
mod body;
mod copy;
pub mod error;
mod frames;
pub mod headers;
mod http;
mod tunnel;
pub mod websocket;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::header::{
    CONNECTION, CONTENT_LENGTH, COOKIE, EXPECT, HOST, HeaderValue, LOCATION, SET_COOKIE,
    STRICT_TRANSPORT_SECURITY, TRANSFER_ENCODING, UPGRADE,
};
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

pub use access::Logged;
use access::{Access, Pending};
use body::Answer;
pub use body::RetryBody;
use error::{ProxyError, chain};
use headers::{
    Forwarding, client_https, client_ip, is_trusted, join_cookies, one_content_length,
    only_chunked, set_forwarding, strip_hop_by_hop,
};
use websocket::Asked;

use crate::config::human;
use crate::metrics::{BackendLabels, RequestLabels, UpgradeLabels};
use crate::principal::{self, Fallback, Principal};
use crate::rebalance::on_transition;
use crate::route::host_name;
use crate::shutdown::Shutdown;
use crate::snapshot::Live;
use crate::upstream::health::now_ms;
use crate::upstream::pool::Lease;
use crate::upstream::{Backend, Upstream};

/// Response body: a backend's streamed body, or one tether wrote itself.
pub type Body = Either<Answer, Full<Bytes>>;

/// What the request path knows about the client connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// The listener's configured `bind` (its settings are looked up by it).
    pub bind: SocketAddr,
    /// `"http"` or `"https"`.
    pub scheme: &'static str,
    /// `Strict-Transport-Security` to add to responses (TLS listeners).
    pub hsts: Option<HeaderValue>,
    /// Plain listener set to redirect: the https port to send clients to.
    pub redirect_https: Option<u16>,
    /// The listener's `body_timeout`.
    pub body_timeout: Duration,
    /// On HTTP/2: the connection's open streams, which a WebSocket tunnel joins for its
    /// life (the idle timeout must not see a connection carrying one as idle).
    pub(crate) streams: Option<Arc<crate::listener::Activity>>,
    /// The connection's share of `max_connections`, held by the connection and by every
    /// tunnel it opens (an HTTP/1.1 tunnel outlives its connection's HTTP phase).
    pub(crate) slot: Arc<OwnedSemaphorePermit>,
    /// Cancelled, the connection ends once its current exchange is done (and at
    /// shutdown, whose token this is a child of).
    pub(crate) close: CancellationToken,
}

/// A share of `max_connections` for one HTTP/2 stream. One HTTP/2 connection carries
/// up to 128 streams, each with a backend connection of its own: counted as the one
/// connection, a few clients that stop reading their answers could run tether out of
/// descriptors under any `max_connections`. A request's slot travels with its answer
/// (as a response extension) and is held until the answer has been sent.
#[derive(Debug, Clone)]
pub(crate) struct StreamSlot(pub Arc<OwnedSemaphorePermit>);

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

    /// A slot for an HTTP/2 stream, or 503 at `max_connections`.
    fn stream_slot(&self) -> Result<StreamSlot, ProxyError> {
        match self.live.connections.clone().try_acquire_owned() {
            Ok(slot) => Ok(StreamSlot(Arc::new(slot))),
            Err(_) => Err(ProxyError::AtCapacity(self.live.max_connections)),
        }
    }

    /// Never fails: errors become the response [`ProxyError::response`] chooses.
    pub async fn handle(&self, req: Request<Incoming>, conn: &ConnInfo) -> Response<Logged> {
        let head = req.method() == Method::HEAD;
        let http10 = req.version() == Version::HTTP_10;
        let chunked =
            req.version() < Version::HTTP_2 && req.headers().contains_key(TRANSFER_ENCODING);
        let mut pending = Pending::new(req.method(), Instant::now());
        let access = &mut pending.access;
        let mut resp = match self.forward(req, conn, access).await {
            Ok(resp) => resp,
            Err(e) => {
                // The backend the failure is about, if one is.
                access.backend = e.backend().cloned();
                // A backend's failure is the operator's business (nginx logs it at
                // `error`); a client's own is not, or any client could flood the log.
                let shortage =
                    matches!(e, ProxyError::LocalShortage(_) | ProxyError::AtCapacity(_));
                if matches!(
                    e.status(),
                    StatusCode::BAD_GATEWAY | StatusCode::GATEWAY_TIMEOUT
                ) || shortage && rarely(&SHORTAGE_WARNED)
                {
                    warn!(route = access.route.as_deref(), backend = access.backend.as_deref(), error = %chain(&e), "request failed");
                } else {
                    debug!(error = %chain(&e), "request failed");
                }
                e.response()
            }
        };
        // tether's own answer (an error, a redirect) leaves a chunked body unread. hyper
        // would read it to its end to keep the connection, trailers and all, and end
        // those at a bare-LF line (see body.rs): the connection ends instead.
        if chunked
            && resp.status() != StatusCode::SWITCHING_PROTOCOLS
            && matches!(resp.body(), Either::Right(_))
        {
            resp.headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        if let Some(hsts) = &conn.hsts {
            resp.headers_mut()
                .entry(STRICT_TRANSPORT_SECURITY)
                .or_insert_with(|| hsts.clone());
        }
        // A HEAD answer has no content (RFC 9110 §9.3.2). hyper drops it over HTTP/1.1
        // but sends it over HTTP/2; a backend's is empty already, tether's own is not.
        if head && matches!(resp.body(), Either::Right(_)) {
            *resp.body_mut() = Either::Right(Full::new(Bytes::new()));
        }
        // An HTTP/1.0 client gets a body of unknown length delimited by the close; hyper
        // closes, but says `Connection: keep-alive` to a client that asked for it (it
        // takes a response marked HTTP/1.1 to want keep-alive), and a client that
        // pipelined waits in vain for its next answer (nginx says close). Marked 1.0
        // and `close`, it is both.
        if http10
            && !head
            && !matches!(resp.status().as_u16(), 100..=199 | 204 | 304)
            && hyper::body::Body::size_hint(resp.body()).exact().is_none()
        {
            *resp.version_mut() = Version::HTTP_10;
            resp.headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        let status = resp.status();
        self.count(access, status);
        resp.map(|body| pending.answered(status, body))
    }

    /// The request counter, for plain HTTP, or the upgrade counter.
    fn count(&self, a: &Access, status: StatusCode) {
        let none = || Arc::from("-");
        if let Some(flavor) = a.websocket {
            // Not tried on a backend: tether answered it (no route, no principal, a
            // malformed request: 4xx, refused; at capacity: 5xx, failed).
            let result = a.upgrade_result.unwrap_or(if status.is_client_error() {
                "refused"
            } else {
                "failed"
            });
            let labels = UpgradeLabels {
                route: a.route.as_deref().unwrap_or("-").to_owned(),
                protocol: flavor.label(),
                result: result.to_owned(),
            };
            self.live.metrics.upgrades.get_or_create(&labels).inc();
            return;
        }
        const CLASSES: [&str; 10] = [
            "0xx", "1xx", "2xx", "3xx", "4xx", "5xx", "6xx", "7xx", "8xx", "9xx",
        ];
        let labels = RequestLabels {
            route: a.route.clone().unwrap_or_else(none),
            backend: a.backend.clone().unwrap_or_else(none),
            // hyper's status codes are 100..=999.
            class: CLASSES[usize::from(status.as_u16() / 100) % 10],
        };
        self.live.metrics.requests.get_or_create(&labels).inc();
    }

    async fn forward(
        &self,
        mut req: Request<Incoming>,
        conn: &ConnInfo,
        access: &mut Access,
    ) -> Result<Response<Body>, ProxyError> {
        let websocket = websocket::flavor(&req);
        access.websocket = websocket;
        if req.method() == Method::CONNECT && websocket.is_none() {
            return Err(ProxyError::Connect);
        }
        if req.method() == Method::TRACE {
            return Err(ProxyError::Trace);
        }
        check_target(&req)?;
        if !only_chunked(req.headers()) {
            return Err(ProxyError::TransferCoding);
        }
        // hyper's HTTP/1 parser stops at 100 fields; HTTP/2 has only a byte limit. As
        // the client sent them, with an HTTP/2 request's cookies as one field (browsers
        // send each cookie as its own; they are joined for the backend below).
        if req.version() == Version::HTTP_2
            && req.headers().len()
                - req
                    .headers()
                    .get_all(COOKIE)
                    .iter()
                    .count()
                    .saturating_sub(1)
                > MAX_HEADERS
        {
            return Err(ProxyError::TooManyHeaders);
        }
        let host = request_host(&mut req)?;
        let host_str = match &host {
            Some(h) => Some(h.to_str().map_err(|_| ProxyError::InvalidHost)?),
            None => None,
        };
        if let Some(port) = conn.redirect_https {
            return redirect_https(host_str.ok_or(ProxyError::MissingHost)?, port, &req);
        }
        let snap = self.live.load();
        let route = snap
            .routes
            .find(host_str.map(host_name), route_path(req.uri()))
            .ok_or(ProxyError::NoRoute)?;
        access.route = Some(route.label.clone());
        let upstream = &snap.upstreams[route.upstream];

        let trusted = snap
            .listener(conn.bind)
            .map_or(&[][..], |l| &l.trusted_proxies[..]);
        let peer = conn.peer.ip();
        let client = client_ip(peer, trusted, req.headers());
        let mut issued = None;
        let principal = match principal::extract(&route.principal, req.uri(), req.headers()) {
            Some(p) => p,
            None => match route.fallback {
                Fallback::Ip => Principal::from_ip(client),
                // The config guarantees a `cookie:` source; without one (or without
                // randomness) the address is the principal, as with `ip`.
                Fallback::Cookie => match (
                    route.principal.iter().find_map(principal::Source::cookie),
                    principal::new_cookie_value(),
                ) {
                    (Some(name), Some(value)) => {
                        let p = Principal::from_bytes(value.as_bytes());
                        issued = Some((name, value));
                        p
                    }
                    _ => Principal::from_ip(client),
                },
                Fallback::Reject => {
                    let expected: Vec<String> =
                        route.principal.iter().map(|s| s.to_string()).collect();
                    return Err(ProxyError::NoPrincipal {
                        expected: expected.join(" or "),
                    });
                }
            },
        };

        access.principal = Some(principal.fingerprint());
        let forwarding = Forwarding {
            peer,
            client,
            trusted: is_trusted(peer, trusted),
            scheme: conn.scheme,
            host: host.as_ref(),
        };
        let headers = req.headers_mut();
        strip_hop_by_hop(headers);
        // hyper has answered the client's `100-continue` itself (when the body is first
        // read); passed on, a backend that answers early without reading the body
        // could leave it on the pooled connection to be read as the next request.
        headers.remove(EXPECT);
        set_forwarding(headers, &forwarding);
        if req.version() == Version::HTTP_2 {
            // Backends speak HTTP/1.1, which allows one Cookie header (RFC 9113 §8.2.3).
            join_cookies(req.headers_mut());
        }
        let issued_cookie =
            issued.and_then(|(name, value)| set_cookie(name, &value, client_https(req.headers())));

        let mut resp = match websocket {
            Some(flavor) => {
                // On HTTP/2 the tunnel keeps its stream counted open for the idle timeout.
                let asked = Asked {
                    flavor,
                    stream: conn.streams.as_ref().map(crate::listener::Open::new),
                    slot: conn.slot.clone(),
                };
                // Boxed: the upgrade's state is twice a plain request's, and every
                // HTTP/1 connection holds room for its request's (6.4 → 2.9 KB).
                Box::pin(self.upgrade(req, asked, upstream, route, principal, access)).await?
            }
            None => {
                self.http(req, conn, upstream, route.follow_socket, principal, access)
                    .await?
            }
        };
        if let Some(cookie) = issued_cookie {
            resp.headers_mut().append(SET_COOKIE, cookie);
        }
        Ok(resp)
    }

    /// A connect to `b` failed: a failure on live traffic, unless this host ran short
    /// of descriptors, buffers or ports ([`error::local_shortage`]), which is not the
    /// backend's doing; then the error the client hears if no other backend can be
    /// reached either.
    fn connect_failed(
        &self,
        upstream: &Upstream,
        b: &Backend,
        e: Box<dyn std::error::Error + Send + Sync>,
    ) -> Option<ProxyError> {
        let held = self.live.registry.load(&upstream.name, &b.key) > 0;
        if error::local_shortage(&*e, held) {
            if rarely(&SHORTAGE_WARNED) {
                warn!(upstream = %upstream.name, backend = %b.id, error = %chain(&*e), "cannot connect for want of local resources; not counted against the backend (said at most once a second)");
            }
            Some(ProxyError::LocalShortage(e))
        } else {
            passive_failure(&self.live, upstream, b, &chain(&*e));
            None
        }
    }

    /// `b` did not answer an upgrade within `waited`. That counts against it only if
    /// it answers no plain request either ([`crate::probe::answers`]): asked in the
    /// background, so the upgrade moves on to the next candidate at once, and at most
    /// once at a time per backend, however many upgrades it held.
    fn unanswered_upgrade(&self, upstream: &Upstream, b: &Backend, waited: Duration) {
        let Some(check) = b.health.start_check() else {
            return;
        };
        let live = self.live.clone();
        let (name, id) = (upstream.name.clone(), b.id.clone());
        let stop = self.tasks.token().clone();
        self.tasks.spawn(async move {
            let snap = live.load();
            // Gone by a reload meanwhile, or now another server under the same id:
            // nothing to count it against.
            let Some(u) = snap.upstream(&name) else { return };
            let Some(b) = u.backend(&id).filter(|b| Arc::ptr_eq(&b.health, check.health()))
            else {
                return;
            };
            let tunnels = live.registry.load(&name, &b.key);
            let answers = tokio::select! {
                a = crate::probe::answers(b, &u.config.health, tunnels) => a,
                // Shutting down: no verdict, and no tunnels closed for it.
                () = stop.cancelled() => return,
            };
            let detail = format!("no answer to an upgrade within {}", human(waited));
            if answers {
                warn!(upstream = %name, backend = %id, "{detail}, but it answers requests: not counted against its health");
            } else {
                passive_failure(&live, u, b, &detail);
            }
        });
    }
}

/// When [`rarely`] last said yes, in [`now_ms`] (process-wide: one warning a second
/// about local shortages, however many requests meet them).
static SHORTAGE_WARNED: AtomicU64 = AtomicU64::new(0);

/// True at most once a second per `last` (0: never yet).
pub(crate) fn rarely(last: &AtomicU64) -> bool {
    // Kept one above the clock, which starts at 0 with the process: the first time
    // is not mistaken for one a moment ago.
    let now = now_ms() + 1;
    let before = last.load(Ordering::Relaxed);
    (before == 0 || now.saturating_sub(before) >= 1000)
        && last
            .compare_exchange(before, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
}

/// A connect to `b` failed, or it did not answer in time: count it against the
/// backend's health, and act if that takes it down.
fn passive_failure(live: &Live, upstream: &Upstream, b: &Backend, detail: &str) {
    warn!(upstream = %upstream.name, backend = %b.id, error = %detail, "backend failed on live traffic");
    let labels = BackendLabels {
        upstream: upstream.name.to_string(),
        backend: b.id.to_string(),
    };
    live.metrics.backend_failures.get_or_create(&labels).inc();
    if let Some(t) = b
        .health
        .passive_failure(&upstream.config.health.thresholds, detail)
    {
        on_transition(live, b, t);
    }
}

/// `fallback = "cookie"`: the `Set-Cookie` that gives a new principal `value` to the
/// client as cookie `name` (the route's first `cookie:` source, a valid name by the
/// config's check). A session cookie for the whole site, out of scripts' reach, sent
/// on top-level navigation from other sites (`Lax`, the browsers' default), and only
/// over TLS when the client reached the edge over https (tether's TLS listener, or a
/// trusted outer balancer's `X-Forwarded-Proto`) or the name's prefix demands it.
fn set_cookie(name: &str, value: &str, https: bool) -> Option<HeaderValue> {
    // Browsers take a `__Secure-` or `__Host-` cookie only with `Secure` (RFC 6265bis
    // §4.1.3): over plain http it is dropped either way, so set what it requires.
    // Matched without regard to case, as browsers now do (RFC 6265bis).
    let lower = name.to_ascii_lowercase();
    let prefixed = lower.starts_with("__secure-") || lower.starts_with("__host-");
    let secure = if https || prefixed { "; Secure" } else { "" };
    HeaderValue::try_from(format!(
        "{name}={value}; Path=/; HttpOnly; SameSite=Lax{secure}"
    ))
    .ok()
}

/// A copy of a request head, for one more attempt.
pub(crate) fn same_head(parts: &hyper::http::request::Parts) -> hyper::http::request::Parts {
    let mut r = Request::new(());
    *r.method_mut() = parts.method.clone();
    *r.uri_mut() = parts.uri.clone();
    *r.version_mut() = parts.version;
    *r.headers_mut() = parts.headers.clone();
    r.into_parts().0
}

/// What the client hears when every candidate failed: `last`, the failure worth
/// telling (a backend that accepted and then timed out or broke the exchange, else
/// tether's own shortage of descriptors), else that no backend accepted a connection.
fn exhausted(last: Option<ProxyError>, upstream: &Upstream) -> ProxyError {
    last.unwrap_or_else(|| ProxyError::NoBackend {
        upstream: upstream.name.clone(),
    })
}

/// `308 Permanent Redirect` to the same URL over https on `port` (308 keeps the method
/// and body, unlike 301).
fn redirect_https<B>(
    host: &str,
    port: u16,
    req: &Request<B>,
) -> Result<Response<Body>, ProxyError> {
    let name = host_name(host);
    let name = if name.contains(':') {
        format!("[{name}]")
    } else {
        name.to_owned()
    };
    let port = if port == 443 {
        String::new()
    } else {
        format!(":{port}")
    };
    // `OPTIONS *` has no path to keep.
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .filter(|p| p.starts_with('/'))
        .unwrap_or("/");
    let location = HeaderValue::from_str(&format!("https://{name}{port}{path}"))
        .map_err(|_| ProxyError::InvalidHost)?;
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from_static(
        b"tether: use https\n",
    ))));
    *resp.status_mut() = StatusCode::PERMANENT_REDIRECT;
    resp.headers_mut().insert(LOCATION, location);
    Ok(resp)
}

/// Relays `backend`'s response as is, minus its hop-by-hop headers. A response framed
/// by both `Transfer-Encoding` and `Content-Length` was read by the former, so the
/// latter goes too (RFC 9112 §6.3: an intermediary MUST remove it before forwarding).
/// A coding besides `chunked` would reach the client undone and unnamed: 502, as
/// nginx answers.
/// A backend's answer to a plain request (or a refused upgrade), on its way to the
/// client; `stall` is the longest pause allowed in its body (`response_timeout`).
fn relay(
    resp: Response<Incoming>,
    lease: Option<Lease>,
    backend: &Arc<str>,
    stall: Duration,
) -> Result<Response<Body>, ProxyError> {
    // A switch nobody asked for (RFC 9110 §15.2.2): the client could not follow it.
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        return Err(ProxyError::Upstream {
            backend: backend.clone(),
            source: "it answered 101 to a request that asked for no protocol switch".into(),
        });
    }
    if !only_chunked(resp.headers()) {
        return Err(ProxyError::Upstream {
            backend: backend.clone(),
            source: "its answer has a transfer coding other than a single `chunked`".into(),
        });
    }
    let (mut parts, body) = resp.into_parts();
    // tether answers HTTP/1.1 clients in HTTP/1.1 whatever the backend spoke (as nginx
    // does): an HTTP/1.0 status line would make a client close its kept-alive
    // connection. (hyper answers HTTP/1.0 clients in 1.0; HTTP/2 has no such line.)
    parts.version = Version::HTTP_11;
    if parts.headers.contains_key(TRANSFER_ENCODING) {
        parts.headers.remove(CONTENT_LENGTH);
    }
    // A 426 must say what to upgrade to (RFC 9110 §15.5.22), with `Connection`
    // naming it: the backend's offer is kept, as nginx and HAProxy keep it. (To an
    // HTTP/2 client hyper removes both again: HTTP/2 has no `Upgrade`.)
    let offer: Vec<HeaderValue> = if parts.status == StatusCode::UPGRADE_REQUIRED {
        parts.headers.get_all(UPGRADE).iter().cloned().collect()
    } else {
        Vec::new()
    };
    strip_hop_by_hop(&mut parts.headers);
    if !offer.is_empty() {
        for value in offer {
            parts.headers.append(UPGRADE, value);
        }
        parts
            .headers
            .insert(CONNECTION, HeaderValue::from_static("upgrade"));
    }
    one_content_length(&mut parts.headers);
    let body = Answer::new(body, lease, stall, backend.clone());
    Ok(Response::from_parts(parts, Either::Left(body)))
}

/// The authority-form target is CONNECT's alone and `*` is OPTIONS's alone (RFC 9112
/// §3.2.3–4; an HTTP/2 extended CONNECT has a scheme and a path). On any other method
/// each is a 400, as nginx answers, not a 404 from a route search that cannot match.
fn check_target(req: &Request<Incoming>) -> Result<(), ProxyError> {
    let uri = req.uri();
    let authority_form = uri.scheme().is_none() && uri.authority().is_some();
    let asterisk = uri.path() == "*";
    if authority_form && req.method() != Method::CONNECT
        || asterisk && req.method() != Method::OPTIONS
    {
        return Err(ProxyError::BadTarget);
    }
    Ok(())
}

/// The path routes match: the target's, and `/` for `OPTIONS *`, which asks about the
/// server as a whole (the backend still gets `*`, as HAProxy passes it on).
fn route_path(uri: &Uri) -> &str {
    match uri.path() {
        "*" => "/",
        p => p,
    }
}

/// The request's host: the authority of an absolute-form target (which wins over
/// `Host`, RFC 9112 §3.2.2), else the single `Host` header. HTTP/1.1 requires one;
/// an HTTP/1.0 request without it matches only host-less routes. A value that is not
/// `host[:port]` is refused (RFC 9112 §3.2: 400): it would reach the backend, and
/// `Location` of an https redirect, as it came.
fn request_host(req: &mut Request<Incoming>) -> Result<Option<HeaderValue>, ProxyError> {
    let mut hosts = req.headers().get_all(HOST).iter();
    let first = hosts.next().cloned();
    if hosts.next().is_some() {
        return Err(ProxyError::DuplicateHost);
    }
    let host = match req.uri().authority() {
        Some(auth) => {
            let v = HeaderValue::from_str(auth.as_str()).map_err(|_| ProxyError::InvalidHost)?;
            req.headers_mut().insert(HOST, v.clone());
            Some(v)
        }
        None => first,
    };
    match host {
        Some(v) if is_host(v.as_bytes()) => Ok(Some(v)),
        Some(_) => Err(ProxyError::InvalidHost),
        None if req.version() == Version::HTTP_10 => Ok(None),
        None => Err(ProxyError::MissingHost),
    }
}

/// `uri-host [":" port]` (RFC 3986 §3.2.2): a registered name or IPv4 address with no
/// empty label (one trailing dot allowed), or a bracketed IPv6 literal; a port, if
/// any, of digits up to 65535 (empty is allowed, as the RFC allows it). No userinfo,
/// path, query or spaces. Anything else is a 400 rather than a name that matches no
/// host route and falls through to a catch-all one.
fn is_host(v: &[u8]) -> bool {
    let (host, port) = match v.iter().rposition(|&b| b == b':') {
        // A colon before a `]` belongs to an IPv6 literal.
        Some(i) if !v[i..].contains(&b']') => (&v[..i], Some(&v[i + 1..])),
        _ => (v, None),
    };
    let port_ok = port.is_none_or(|p| {
        p.is_empty()
            || (p.len() <= 5
                && p.iter().all(u8::is_ascii_digit)
                && std::str::from_utf8(p)
                    .ok()
                    .and_then(|s| s.parse::<u32>().ok())
                    .is_some_and(|n| n <= 65535))
    });
    let host_ok = match host.strip_prefix(b"[") {
        Some(rest) => rest.strip_suffix(b"]").is_some_and(|literal| {
            !literal.is_empty()
                && literal
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || b":.%-_~".contains(b))
        }),
        None => {
            let name = host.strip_suffix(b".").unwrap_or(host);
            !name.is_empty()
                && name.split(|&b| b == b'.').all(|label| !label.is_empty())
                && name
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=%".contains(b))
        }
    };
    host_ok && port_ok
}

/// Header fields a request may carry (hyper's HTTP/1 limit, applied to HTTP/2 too).
const MAX_HEADERS: usize = 100;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rarely_says_yes_the_first_time_then_not_again_at_once() {
        let last = AtomicU64::new(0);
        assert!(rarely(&last), "the first time, even at the clock's start");
        assert!(!rarely(&last));
    }

    #[test]
    fn hosts_are_names_or_literals_with_a_numeric_port() {
        for good in [
            "a.example.com",
            "a.example.com:8080",
            "a.example.com:",
            "a.example.com.",
            "A.Example.COM",
            "10.0.0.1:80",
            "[::1]",
            "[::1]:8443",
            "localhost",
        ] {
            assert!(is_host(good.as_bytes()), "{good}");
        }
        for bad in [
            "",
            "a.example.com:abc",
            "a.example.com:-1",
            "a.example.com:80:80",
            "a.example.com:99999",
            "x..b.example.com",
            ".a.example.com",
            "a b",
            "user@a.example.com",
            "a.example.com/x",
            "[::1",
            "[]",
            "[::1]x",
        ] {
            assert!(!is_host(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn an_issued_cookie_is_secure_over_https_only() {
        let value = principal::new_cookie_value().unwrap();
        assert_eq!(value.len(), 32);
        assert_ne!(value, principal::new_cookie_value().unwrap());
        let plain = set_cookie("tid", &value, false).unwrap();
        assert_eq!(
            plain.to_str().unwrap(),
            format!("tid={value}; Path=/; HttpOnly; SameSite=Lax")
        );
        let tls = set_cookie("tid", &value, true).unwrap();
        assert!(tls.to_str().unwrap().ends_with("; SameSite=Lax; Secure"));
        let host = set_cookie("__host-tid", &value, false).unwrap();
        assert!(
            host.to_str()
                .unwrap()
                .ends_with("; Path=/; HttpOnly; SameSite=Lax; Secure")
        );
    }
}
