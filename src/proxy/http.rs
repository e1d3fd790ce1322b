//! Plain HTTP requests: through the first reachable candidate's keep-alive pool, the
//! body streamed both ways. A body stays replayable (body.rs) until a backend starts
//! reading it, so a refused connect moves the same request to the next candidate.

use hyper::body::{Body as _, Incoming};
use hyper::header::{CONTENT_LENGTH, HOST, HeaderValue, TRANSFER_ENCODING};
use hyper::{Request, Response, Uri, Version};
use tracing::{debug, warn};

use super::body::RetryBody;
use super::error::ProxyError;
use super::{Access, Body, ConnInfo, Proxy, exhausted, relay};
use crate::config::human;
use crate::principal::Principal;
use crate::send_timeout::WriteStalled;
use crate::upstream::Upstream;
use crate::upstream::pool::SendError;

impl Proxy {
    /// A plain request through the first reachable candidate's keep-alive pool; with
    /// `follow_socket`, a node holding a live tunnel of the principal comes first.
    pub(super) async fn http(
        &self,
        req: Request<Incoming>,
        conn: &ConnInfo,
        upstream: &Upstream,
        follow_socket: bool,
        principal: Principal,
        access: &mut Access,
    ) -> Result<Response<Body>, ProxyError> {
        let (mut parts, body) = req.into_parts();
        // A body without a length (chunked, or HTTP/2 DATA without `content-length`)
        // is sent chunked. hyper would do so itself, except for GET and HEAD, which it
        // sends without their body unless told.
        if !body.is_end_stream() && !parts.headers.contains_key(CONTENT_LENGTH) {
            parts
                .headers
                .insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        }
        // HTTP/1.1 trailers end the connection after this exchange: hyper ends a
        // trailer section at the first empty line, also a bare-LF one, and drops what
        // it read beyond it; a front proxy that saw more requests there must not have
        // its later ones answered out of turn (see body.rs).
        let close = (parts.version < Version::HTTP_2).then_some(&conn.close);
        let body = RetryBody::new(body, conn.body_timeout, close);
        access.bytes_up = body.received();
        let slot = match parts.version {
            Version::HTTP_2 => Some(self.stream_slot()?),
            _ => None,
        };
        let target = origin_form(&parts.uri);
        let timeout = upstream.config.response_timeout;
        let registry = &self.live.registry;
        let mut candidates = if follow_socket {
            upstream.request_candidates(principal.key(), registry)
        } else {
            upstream.candidates(principal.key(), registry)
        };
        let mut last = None;
        // A backend to ask again, on a new connection (see `SendError::Stale`).
        let mut again = None;
        let (backend, resp, lease) = loop {
            let (b, fresh) = match again.take() {
                Some(b) => (b, true),
                None => match candidates.next() {
                    Some(b) => (b, false),
                    None => return Err(exhausted(last, upstream)),
                },
            };
            // The node this request waits on, should the client give up (499).
            access.backend = Some(b.id.clone());
            let failed = |e: Box<dyn std::error::Error + Send + Sync>| ProxyError::Upstream {
                backend: b.id.clone(),
                source: e,
            };
            let mut r = Request::new(body.again());
            *r.method_mut() = parts.method.clone();
            *r.uri_mut() = target.clone();
            *r.version_mut() = Version::HTTP_11;
            *r.headers_mut() = parts.headers.clone();
            // HTTP/1.1, which backends speak, requires a `Host`.
            r.headers_mut()
                .entry(HOST)
                .or_insert_with(|| b.host.clone());
            // The answer's time starts once the request is sent (see body.rs).
            let answered = tokio::select! {
                biased;
                r = b.pool().send(r, fresh) => Ok(r),
                () = async {
                    body.sent().await;
                    tokio::time::sleep(timeout).await;
                } => Err(()),
            };
            match answered {
                Ok(Ok((resp, lease))) => break (b, resp, lease),
                // Nothing went upstream: the next candidate gets the same request.
                Ok(Err(SendError::Connect(e))) if body.untouched() => {
                    // A timeout or broken answer from another candidate says more.
                    last = last.or(self.connect_failed(upstream, b, e.into()));
                }
                // A kept-alive connection the backend closed as the request went out:
                // once more on a new one, if the request can safely be sent twice (as
                // nginx and HAProxy retry a failed kept-alive connection). The same
                // backend: it still owns the principal.
                Ok(Err(SendError::Stale(e)))
                    if !fresh && parts.method.is_idempotent() && body.untouched() =>
                {
                    debug!(backend = %b.id, error = %e, "kept-alive connection closed under the request; asking again");
                    again = Some(b);
                }
                Ok(Err(e)) if body.client_failed() => {
                    return Err(ProxyError::client_body(e.into()));
                }
                // The backend read nothing of the body for its `response_timeout`.
                Ok(Err(e)) if WriteStalled::within(&e) => {
                    return Err(ProxyError::NotReading {
                        backend: b.id.clone(),
                        after: timeout,
                    });
                }
                Ok(Err(e)) => return Err(failed(e.into())),
                // A slow answer is this request's problem, not the node's: it does not
                // count against health, or one slow endpoint would take every node
                // down in turn and close all their tunnels. (An unanswered upgrade
                // counts only if the node then answers nothing at all; an HTTP health
                // check finds a node that hangs on everything.)
                Err(_) => {
                    let timed_out = ProxyError::Timeout {
                        backend: b.id.clone(),
                    };
                    // Only a request that can safely be sent twice goes to the next node.
                    if !(parts.method.is_idempotent() && body.untouched()) {
                        return Err(timed_out);
                    }
                    warn!(upstream = %upstream.name, backend = %b.id, "no response within {}", human(timeout));
                    last = Some(timed_out);
                }
            }
        };
        debug!(backend = %backend.id, principal = %principal.fingerprint(), status = resp.status().as_u16(), "proxied");
        let mut resp = relay(resp, Some(lease), &backend.id, timeout)?;
        if let Some(slot) = slot {
            resp.extensions_mut().insert(slot);
        }
        Ok(resp)
    }
}

/// The request target as an HTTP/1.1 backend takes it: origin-form (`/path?query`),
/// also for an absolute-form or HTTP/2 request; `*` as sent.
fn origin_form(uri: &Uri) -> Uri {
    if uri.scheme().is_none() && uri.authority().is_none() {
        return uri.clone();
    }
    match uri.path_and_query() {
        Some(pq) => Uri::from(pq.clone()),
        None => Uri::from_static("/"),
    }
}
