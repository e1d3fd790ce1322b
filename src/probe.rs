//! Active health probes: one task per backend, following the current snapshot.
//!
//! The supervisor starts a prober for every backend health state in the snapshot and
//! stops those whose backend is gone, again after every swap. A prober ticks at its
//! upstream's `interval` (first tick at a per-backend offset, so probes of many
//! backends do not fire together), probes — a TCP connect, or `GET path` where 2xx/3xx
//! is healthy — within `timeout`, feeds the result to the backend's counter, and acts
//! only on transitions ([`crate::rebalance::on_transition`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper::header::{CONNECTION, HOST, USER_AGENT};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::config::{HealthConfig, Probe};
use crate::proxy::error::{chain, local_shortage};
use crate::rebalance::on_transition;
use crate::registry::BackendKey;
use crate::snapshot::{Live, Snapshot};
use crate::upstream::{Backend, Upstream};

/// Keeps one prober per backend of the current snapshot until `stop`.
pub async fn supervise(live: Arc<Live>, stop: CancellationToken) {
    let mut generation = live.subscribe();
    let mut probers: HashMap<BackendKey, CancellationToken> = HashMap::new();
    loop {
        let snap = live.load();
        let wanted: Vec<BackendKey> = snap
            .upstreams
            .iter()
            .flat_map(|u| u.backends.iter().map(|b| b.key.clone()))
            .collect();
        probers.retain(|k, token| {
            let keep = wanted.contains(k);
            if !keep {
                token.cancel();
            }
            keep
        });
        for k in wanted {
            probers.entry(k.clone()).or_insert_with(|| {
                let token = stop.child_token();
                tokio::spawn(prober(live.clone(), k, token.clone()));
                token
            });
        }
        drop(snap);
        tokio::select! {
            r = generation.changed() => if r.is_err() { break },
            () = stop.cancelled() => break,
        }
    }
    for token in probers.values() {
        token.cancel();
    }
}

/// Probes the backend `key` with the settings of the first upstream that has it (a
/// backend shared by several upstreams is one server with one health).
async fn prober(live: Arc<Live>, key: BackendKey, stop: CancellationToken) {
    let mut generation = live.subscribe();
    let mut first = true;
    loop {
        // The wait follows the current interval, read afresh when a reload swaps the
        // snapshot (a shorter interval applies at once, not after the old one ran
        // out), without holding the snapshot while sleeping.
        let started = tokio::time::Instant::now();
        loop {
            let Some(interval) = find(&live.load(), &key).map(|(u, _)| u.config.health.interval)
            else {
                return;
            };
            let wait = if first {
                offset(&key, interval)
            } else {
                interval
            };
            tokio::select! {
                () = tokio::time::sleep_until(started + wait) => break,
                r = generation.changed() => if r.is_err() { return },
                () = stop.cancelled() => return,
            }
        }
        first = false;
        let snap = live.load();
        let Some((up, backend)) = find(&snap, &key) else {
            return;
        };
        let health = &up.config.health;
        let result = match tokio::time::timeout(health.timeout, probe(backend, &health.probe)).await
        {
            Ok(r) => r,
            Err(_) => Err(Failed::said(format!(
                "no answer within {}",
                crate::config::human(health.timeout)
            ))),
        };
        if let Err(e) = &result {
            if e.local(live.registry.load(&up.name, &key)) {
                // Says nothing about the backend either way.
                warn!(backend = %key.id, error = %e.detail, "cannot probe for want of local resources; result ignored");
                continue;
            }
            debug!(backend = %key.id, error = %e.detail, "probe failed");
        }
        let detail = result.as_ref().err().map_or("ok", |e| e.detail.as_str());
        if let Some(t) = backend
            .health
            .probe(result.is_ok(), &health.thresholds, detail)
        {
            on_transition(&live, backend, t);
        }
    }
}

fn find<'a>(snap: &'a Snapshot, key: &BackendKey) -> Option<(&'a Upstream, &'a Backend)> {
    snap.upstreams
        .iter()
        .find_map(|u| u.backends.iter().find(|b| &b.key == key).map(|b| (u, b)))
}

/// A stable offset in `[0, interval)` per backend.
fn offset(key: &BackendKey, interval: Duration) -> Duration {
    let h = crate::balance::key_hash(key.id.as_bytes());
    interval.mul_f64((h % 1000) as f64 / 1000.0)
}

/// Why a probe failed.
struct Failed {
    detail: String,
    /// This host ran short of descriptors or buffers: not the backend's failure.
    local: bool,
    /// ... or of source ports, if tether holds connections to the backend
    /// ([`local_shortage`]).
    local_if_held: bool,
}

impl Failed {
    fn of(e: &(dyn std::error::Error + 'static)) -> Failed {
        Failed {
            detail: chain(e),
            local: local_shortage(e, false),
            local_if_held: local_shortage(e, true),
        }
    }

    fn said(detail: String) -> Failed {
        Failed {
            detail,
            local: false,
            local_if_held: false,
        }
    }

    /// Says nothing about the backend, which holds `tunnels` of tether's.
    fn local(&self, tunnels: usize) -> bool {
        self.local || self.local_if_held && tunnels > 0
    }
}

async fn probe(backend: &Backend, kind: &Probe) -> Result<(), Failed> {
    let Probe::Http { path, host } = kind else {
        return backend
            .connect()
            .await
            .map(drop)
            .map_err(|e| Failed::of(&e));
    };
    let status = ask(backend, Method::GET, path, host.as_deref()).await?;
    if status.is_success() || status.is_redirection() {
        Ok(())
    } else {
        Err(Failed::said(format!("{path} answered {status}")))
    }
}

/// Whether `backend` answers an HTTP request at all, whatever the status, within the
/// probe timeout: `GET` of the health path where probes use one, else `OPTIONS *`
/// (RFC 9110 §9.3.7: a request about the server itself). Asked when an upgrade went
/// unanswered: a frozen node answers nothing, but a live one whose path merely held
/// the upgrade (a long-poll endpoint, a server with no WebSocket handler there) does,
/// and must not be taken down, with all its tunnels, by whoever sent it.
/// `tunnels`: how many tether holds to it (see [`local_shortage`]).
pub async fn answers(backend: &Backend, health: &HealthConfig, tunnels: usize) -> bool {
    let (method, path, host) = match &health.probe {
        Probe::Http { path, host } => (Method::GET, path.as_str(), host.as_deref()),
        Probe::Tcp => (Method::OPTIONS, "*", None),
    };
    match tokio::time::timeout(health.timeout, ask(backend, method, path, host)).await {
        Ok(Ok(_)) => true,
        // Unasked for want of local resources: no evidence against the backend.
        Ok(Err(failed)) => failed.local(tunnels),
        Err(_) => false,
    }
}

/// One request on a fresh connection (closed after it); the answer's status.
async fn ask(
    backend: &Backend,
    method: Method,
    path: &str,
    host: Option<&str>,
) -> Result<StatusCode, Failed> {
    let stream = backend.connect().await.map_err(|e| Failed::of(&e))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| Failed::of(&e))?;
    tokio::spawn(conn);
    let host = host.map_or_else(|| backend.addr.to_string(), str::to_owned);
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, host)
        .header(USER_AGENT, "tether-health")
        .header(CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| Failed::of(&e))?;
    let resp = sender.send_request(req).await.map_err(|e| Failed::of(&e))?;
    Ok(resp.status())
}
