//! The admin listener: metrics, health, the owner API and the status page, on its own
//! address (`[admin] bind`, loopback unless a token protects it).
//!
//! | path | answer |
//! |---|---|
//! | `/metrics` | Prometheus text, or OpenMetrics when asked for (metrics.rs) |
//! | `/healthz` | 200 while the process serves |
//! | `/readyz` | 200 when every upstream has a backend up, else 503 naming those without |
//! | `/api/backends` | JSON: per upstream and backend: id, address, state, live tunnels, share of the hash space, weight, last change and why; recent events |
//! | `/api/owner?upstream=U&key=K` | JSON: K's owner now (health and load applied) and when all are up, the nodes holding K's live tunnels in placement order, and the full order |
//! | `/status` | one self-refreshing HTML page over `/api/backends` |
//!
//! With a token configured every path but `/healthz` and `/readyz` needs it, as
//! `Authorization: Bearer <token>`; the status page, opened by URL, also takes it as
//! `?token=<token>` and sends it on as the header (a token in the URL of `/metrics` or
//! the API would end up in scrape configs, proxy logs and `Referer`s).
//! The owner API is given a raw key by its caller; it is hashed and never logged or
//! echoed back.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::header::{
    ACCEPT, ALLOW, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, HeaderValue, LOCATION,
    WWW_AUTHENTICATE,
};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::listener::{ACCEPT_ERROR_PAUSE, Listener, Settings, configure, http1};
use crate::metrics::Format;
use crate::principal::Principal;
use crate::proxy::Body;
use crate::shutdown::Shutdown;
use crate::snapshot::{Live, Snapshot};
use crate::upstream::Upstream;
use crate::upstream::health::now_ms;

/// Serves the admin endpoints on `listener` until `stop` or shutdown.
pub(crate) async fn accept_loop(
    listener: Listener,
    live: Arc<Live>,
    tasks: Shutdown,
    stop: CancellationToken,
) {
    if let Ok(local) = listener.socket.local_addr() {
        info!(bind = %listener.bind, %local, "admin listening");
    }
    loop {
        let accepted = tokio::select! {
            r = listener.socket.accept() => r,
            () = stop.cancelled() => break,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                warn!(error = %e, "admin accept failed");
                // Out of descriptors, say: pause rather than spin while they drain.
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        configure(&stream);
        let live = live.clone();
        let service = service_fn(move |req| {
            let live = live.clone();
            async move { Ok::<_, Infallible>(handle(req, &live)) }
        });
        let token = tasks.token().clone();
        tasks.spawn(async move {
            http1(TokioIo::new(stream), &Settings::plain(), service, token).await
        });
    }
    info!(bind = %listener.bind, "admin stopped listening");
}

static REFUSED_WARNED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn handle(req: Request<Incoming>, live: &Live) -> Response<Body> {
    let snap = live.load();
    let path = req.uri().path();
    let open = matches!(path, "/healthz" | "/readyz");
    if let Some(token) = snap.admin.as_ref().and_then(|a| a.token.as_deref())
        && !open
        && !authorized(&req, token)
    {
        // Worth an operator's eye (a scraper with a stale token, or a prober), but no
        // one may flood the log with it.
        if crate::proxy::rarely(&REFUSED_WARNED) {
            warn!(
                path,
                "admin request without a valid token refused (said at most once a second)"
            );
        }
        let mut r = text(
            StatusCode::UNAUTHORIZED,
            "tether admin: a token is required\n",
        );
        r.headers_mut()
            .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return r;
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, "tether admin: GET only\n");
        resp.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    match path {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => readyz(&snap),
        "/metrics" => {
            let accept = req.headers().get(ACCEPT).and_then(|v| v.to_str().ok());
            let format = Format::negotiate(accept);
            let slots = (&*live.connections, live.max_connections);
            let body = live.metrics.encode(&snap, &live.registry, slots, format);
            respond(StatusCode::OK, format.content_type(), body)
        }
        "/api/backends" => json_response(StatusCode::OK, backends(&snap, live)),
        "/api/owner" => {
            let (status, body) = owner(&snap, live, req.uri().query().unwrap_or(""));
            json_response(status, body)
        }
        "/status" => respond(
            StatusCode::OK,
            "text/html; charset=utf-8",
            STATUS_PAGE.to_owned(),
        ),
        "/" => {
            let mut r = text(StatusCode::FOUND, "");
            let query = req
                .uri()
                .query()
                .map(|q| format!("?{q}"))
                .unwrap_or_default();
            if let Ok(v) = HeaderValue::from_str(&format!("/status{query}")) {
                r.headers_mut().insert(LOCATION, v);
            }
            r
        }
        _ => text(StatusCode::NOT_FOUND, "tether admin: no such endpoint\n"),
    }
}

/// The token from the header, or for the status page the query, compared in constant
/// time.
fn authorized<B>(req: &Request<B>, token: &str) -> bool {
    let header = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        // The scheme is case-insensitive (RFC 9110 §11.1).
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim().to_owned());
    let query = || {
        if !matches!(req.uri().path(), "/status" | "/") {
            return None;
        }
        form_urlencoded::parse(req.uri().query()?.as_bytes())
            .find(|(k, _)| k == "token")
            .map(|(_, v)| v.into_owned())
    };
    header.or_else(query).is_some_and(|given| {
        given.len() == token.len()
            && given
                .bytes()
                .zip(token.bytes())
                .fold(0, |acc, (a, b)| acc | (a ^ b))
                == 0
    })
}

fn readyz(snap: &Snapshot) -> Response<Body> {
    let empty: Vec<&str> = snap
        .upstreams
        .iter()
        .filter(|u| !u.backends.iter().any(|b| b.health.is_up()))
        .map(|u| &*u.name)
        .collect();
    if empty.is_empty() {
        text(StatusCode::OK, "ready\n")
    } else {
        let body = format!("not ready: no backend up in {}\n", empty.join(", "));
        respond(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain; charset=utf-8",
            body,
        )
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn backends(snap: &Snapshot, live: &Live) -> Value {
    let (unix_now, mono_now) = (unix_ms(), now_ms());
    let upstreams: Vec<Value> = snap
        .upstreams
        .iter()
        .map(|u| {
            let shares = u.table.shares();
            // Backends a reload removed, until their tunnels are closed (`removal_grace`).
            let removed = live
                .registry
                .held(&u.name)
                .into_iter()
                .filter(|(key, _)| !u.backends.iter().any(|b| b.key == *key))
                .map(|(key, tunnels)| {
                    json!({
                        "id": &*key.id,
                        "addr": key.addr.to_string(),
                        "state": "removed",
                        "weight": 0,
                        "share": 0.0,
                        "tunnels": tunnels,
                        "failures": 0,
                        "changed_at_ms": null,
                        "reason": "removed by a reload; its tunnels close after removal_grace",
                    })
                });
            let backends: Vec<Value> = u
                .backends
                .iter()
                .zip(shares)
                .map(|(b, share)| {
                    let (changed, reason) = b.health.last_change();
                    json!({
                        "id": &*b.id,
                        "addr": b.addr.to_string(),
                        "state": if b.health.is_up() { "up" } else { "down" },
                        "weight": b.weight,
                        "share": share,
                        "tunnels": live.registry.load(&u.name, &b.key),
                        "failures": b.health.connect_failures(),
                        "changed_at_ms": unix_now.saturating_sub(mono_now.saturating_sub(changed)),
                        "reason": reason,
                    })
                })
                .chain(removed)
                .collect();
            json!({ "name": &*u.name, "tunnels": live.registry.total(&u.name), "backends": backends })
        })
        .collect();
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "now_ms": unix_now,
        "tunnels": live.registry.len(),
        "upstreams": upstreams,
        "events": live.events(),
    })
}

fn owner(snap: &Snapshot, live: &Live, query: &str) -> (StatusCode, Value) {
    let param = |name: &str| {
        form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    };
    // The key is decoded exactly as a `query:` principal source decodes it.
    let key = crate::principal::query_value(query, "key");
    let (Some(upstream), Some(key)) = (param("upstream"), key) else {
        return (
            StatusCode::BAD_REQUEST,
            json!({ "error": "use /api/owner?upstream=NAME&key=KEY" }),
        );
    };
    let Some(u) = snap.upstream(&upstream) else {
        let known: Vec<&str> = snap.upstreams.iter().map(|u| &*u.name).collect();
        return (
            StatusCode::NOT_FOUND,
            json!({ "error": format!("no upstream `{upstream}`"), "upstreams": known }),
        );
    };
    let principal = Principal::from_bytes(&key);
    let describe = |b: &crate::upstream::Backend| json!({ "id": &*b.id, "addr": b.addr.to_string(), "state": if b.health.is_up() { "up" } else { "down" } });
    let now = u
        .candidates(principal.key(), &live.registry)
        .next()
        .map(describe);
    // In placement order, with health: a `follow_socket` route takes the first up one.
    let holders = live.registry.holders(&u.name, principal.key());
    let sockets: Vec<Value> = u
        .table
        .order(principal.key())
        .into_iter()
        .map(|i| &u.backends[i])
        .filter(|b| holders.contains(&b.key))
        .map(describe)
        .collect();
    let all_up = u.owner(principal.key()).map(describe);
    let order = order(u, principal);
    (
        StatusCode::OK,
        json!({
            "upstream": &*u.name,
            "principal": principal.fingerprint().to_string(),
            "owner": now,
            "sockets": sockets,
            "owner_when_all_up": all_up,
            "order": order,
        }),
    )
}

fn order(u: &Upstream, p: Principal) -> Vec<String> {
    u.table
        .order(p.key())
        .into_iter()
        .map(|i| u.backends[i].id.to_string())
        .collect()
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    respond(status, "text/plain; charset=utf-8", body.to_owned())
}

fn json_response(status: StatusCode, v: Value) -> Response<Body> {
    respond(status, "application/json", v.to_string())
}

fn respond(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    let mut r = Response::new(Either::Right(Full::new(Bytes::from(body))));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// The status page: no external assets, no build step; it polls `/api/backends`.
const STATUS_PAGE: &str = include_str!("admin_status.html");

#[cfg(test)]
mod tests {
    use super::*;

    fn req(uri: &str, auth: Option<&str>) -> Request<()> {
        let mut b = Request::get(uri);
        if let Some(a) = auth {
            b = b.header("authorization", a);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn tokens_come_from_the_header_or_the_query() {
        let t = "0123456789abcdef";
        assert!(authorized(
            &req("/metrics", Some("Bearer 0123456789abcdef")),
            t
        ));
        assert!(authorized(&req("/status?token=0123456789abcdef", None), t));
        assert!(authorized(
            &req("/metrics", Some("bearer 0123456789abcdef")),
            t
        ));
        assert!(!authorized(
            &req("/metrics", Some("Bearer 0123456789abcdeX")),
            t
        ));
        assert!(!authorized(&req("/metrics", Some("0123456789abcdef")), t));
        assert!(!authorized(&req("/metrics?token=0123", None), t));
        // In a URL only for the page a browser opens.
        assert!(!authorized(
            &req("/metrics?token=0123456789abcdef", None),
            t
        ));
        assert!(!authorized(
            &req("/api/backends?token=0123456789abcdef", None),
            t
        ));
        assert!(authorized(&req("/?token=0123456789abcdef", None), t));
        assert!(!authorized(&req("/metrics", None), t));
    }
}
