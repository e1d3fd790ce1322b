//! The `[upstream.NAME]` tables: backends, timeouts, health checks, rebalancing and
//! bounded load, validated into [`UpstreamConfig`].

use std::collections::HashSet;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use toml::Spanned;

use super::raw::{RawBackend, RawHealth, RawUpstream};
use super::{Invalid, Placement, duration, duration_or, invalid};
use crate::balance::Table;
use crate::upstream::health::Thresholds;

const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A backend has this long to answer a WebSocket upgrade (101 or otherwise).
const DEFAULT_UPGRADE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longer than the long-polls of SockJS (25 s) and Socket.IO (25 s + 20 s): the wait
/// for the response headers of a plain HTTP request.
const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
/// Below the shortest common backend keep-alive (Node.js: 5 s), so tether closes an
/// idle pooled connection before the backend does and never sends a request into a
/// connection the backend is closing.
const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(4);
const DEFAULT_REBALANCE_HOLD: Duration = Duration::from_secs(10);
const DEFAULT_REBALANCE_RATE: u32 = 100;
const MAX_WEIGHT: i64 = 1000;

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub name: String,
    pub backends: Vec<BackendConfig>,
    pub connect_timeout: Duration,
    /// How long a backend has to answer a WebSocket upgrade.
    pub upgrade_timeout: Duration,
    /// How long a backend has to send the response headers of a plain request.
    pub response_timeout: Duration,
    /// Idle pooled keep-alive connections to a backend are closed after this long.
    pub keepalive_timeout: Duration,
    pub health: HealthConfig,
    /// `None`: `rebalance = "off"`.
    pub rebalance: Option<Rebalance>,
    /// Bounded load: each backend takes at most ceil(c × average) tunnels.
    pub balance_factor: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendConfig {
    /// `name` if given, else the address exactly as written. Placement hashes this.
    pub id: String,
    pub addr: SocketAddr,
    pub weight: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// A TCP connect.
    Tcp,
    /// `GET path` (with `Host: host`, default the backend address); 2xx/3xx is healthy.
    Http { path: String, host: Option<String> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthConfig {
    pub probe: Probe,
    pub interval: Duration,
    pub timeout: Duration,
    pub thresholds: Thresholds,
    /// A new backend starts up (serves at once) unless `start = "down"`.
    pub start_up: bool,
}

/// Drain-back of misplaced tunnels once a backend has been up for `hold`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rebalance {
    pub hold: Duration,
    /// Misplaced tunnels closed per second at most.
    pub rate: u32,
}

impl UpstreamConfig {
    /// The placement table of this upstream: the one function both the proxy and
    /// `tether owner` use.
    pub fn table(&self) -> Table {
        Table::new(self.backends.iter().map(|b| (b.id.as_str(), b.weight)))
    }
}

/// Each backend's id and weight, checked: all that placement depends on.
pub(super) fn placement(backends: &[Spanned<RawBackend>]) -> Result<Placement, Invalid> {
    let mut ids = HashSet::new();
    let mut placed = Vec::with_capacity(backends.len());
    for b in backends {
        let (span, b) = (b.span(), b.get_ref());
        let weight = match b.weight {
            None => 1,
            Some(w) if (1..=MAX_WEIGHT).contains(&w) => w as u32,
            Some(_) => return invalid(span, format!("`weight` must be 1..={MAX_WEIGHT}")),
        };
        let id = b.name.clone().unwrap_or_else(|| b.addr.clone());
        if id.is_empty() {
            return invalid(span, "a backend `name` cannot be empty");
        }
        if !ids.insert(id.clone()) {
            let why = match b.name {
                Some(_) => format!("backend name `{id}` is used twice in this upstream"),
                None => {
                    format!("backend id `{id}` is used twice in this upstream; give one a `name`")
                }
            };
            return invalid(span, why);
        }
        placed.push((id, weight));
    }
    Ok(placed)
}

pub(super) fn build_upstream(
    name: Spanned<String>,
    u: RawUpstream,
) -> Result<UpstreamConfig, Invalid> {
    if name.get_ref().is_empty() {
        return invalid(name.span(), "an upstream name cannot be empty");
    }
    if u.backends.get_ref().is_empty() {
        return invalid(u.backends.span(), "an upstream needs at least one backend");
    }
    let placed = placement(u.backends.get_ref())?;
    let mut backends = Vec::with_capacity(placed.len());
    for (b, (id, weight)) in u.backends.get_ref().iter().zip(placed) {
        let addr = match resolve(&b.get_ref().addr) {
            Ok(a) => a,
            Err(why) => {
                return invalid(b.span(), format!("backend `{}`: {why}", b.get_ref().addr));
            }
        };
        backends.push(BackendConfig { id, addr, weight });
    }
    let rebalance = match u
        .rebalance
        .as_ref()
        .map(|s| (s.get_ref().as_str(), s.span()))
    {
        None | Some(("drain", _)) => Some(Rebalance {
            hold: duration_or(u.rebalance_hold, DEFAULT_REBALANCE_HOLD)?,
            rate: match u.rebalance_rate {
                None => DEFAULT_REBALANCE_RATE,
                Some(r) => count(&r, 1, 100_000, "rebalance_rate")?,
            },
        }),
        Some(("off", _)) => None,
        Some((_, span)) => return invalid(span, "`rebalance` is \"drain\" or \"off\""),
    };
    let balance_factor = match u.balance_factor {
        None => None,
        Some(c) if c.get_ref().is_finite() && *c.get_ref() >= 1.0 => Some(*c.get_ref()),
        Some(c) => return invalid(c.span(), "`balance_factor` is a number ≥ 1.0, e.g. 1.25"),
    };
    Ok(UpstreamConfig {
        name: name.into_inner(),
        backends,
        connect_timeout: duration_or(u.connect_timeout, DEFAULT_CONNECT_TIMEOUT)?,
        upgrade_timeout: duration_or(u.upgrade_timeout, DEFAULT_UPGRADE_TIMEOUT)?,
        response_timeout: duration_or(u.response_timeout, DEFAULT_RESPONSE_TIMEOUT)?,
        keepalive_timeout: duration_or(u.keepalive_timeout, DEFAULT_KEEPALIVE_TIMEOUT)?,
        health: build_health(u.health)?,
        rebalance,
        balance_factor,
    })
}

/// Probing is always on (a TCP connect by default) so that a backend taken down by
/// live-traffic failures always has a way back.
fn build_health(h: Option<RawHealth>) -> Result<HealthConfig, Invalid> {
    let h = h.unwrap_or(RawHealth {
        path: None,
        host: None,
        interval: None,
        timeout: None,
        rise: None,
        fall: None,
        start: None,
        passive_fails: None,
        passive_window: None,
    });
    let probe = match h.path {
        None => {
            if let Some(host) = h.host {
                return invalid(host.span(), "`host` applies to HTTP probes: set `path` too");
            }
            Probe::Tcp
        }
        Some(p) if p.get_ref().starts_with('/') => Probe::Http {
            path: p.into_inner(),
            host: h.host.map(Spanned::into_inner),
        },
        Some(p) => {
            return invalid(
                p.span(),
                "a health `path` starts with '/', e.g. \"/health\"",
            );
        }
    };
    let start_up = match h.start.as_ref().map(|s| (s.get_ref().as_str(), s.span())) {
        None | Some(("up", _)) => true,
        Some(("down", _)) => false,
        Some((_, span)) => return invalid(span, "`start` is \"up\" or \"down\""),
    };
    let one = |v: &Option<Spanned<i64>>, key: &str, default: u32| match v {
        None => Ok(default),
        Some(v) => count(v, 1, 1000, key),
    };
    Ok(HealthConfig {
        probe,
        interval: duration_or(h.interval, Duration::from_secs(1))?,
        timeout: duration_or(h.timeout, Duration::from_secs(1))?,
        thresholds: Thresholds {
            rise: one(&h.rise, "rise", 2)?,
            fall: one(&h.fall, "fall", 2)?,
            passive_fails: one(&h.passive_fails, "passive_fails", 1)?,
            passive_window: match &h.passive_window {
                None => Duration::from_secs(10),
                Some(w) => duration(w)?,
            },
        },
        start_up,
    })
}

fn count(v: &Spanned<i64>, min: i64, max: i64, key: &str) -> Result<u32, Invalid> {
    match *v.get_ref() {
        n if (min..=max).contains(&n) => Ok(n as u32),
        _ => invalid(v.span(), format!("`{key}` must be {min}..={max}")),
    }
}

/// `host:port` with an IP literal, or a name resolved once now (as nginx does).
fn resolve(addr: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = addr.parse::<SocketAddr>() {
        return Ok(a);
    }
    if addr.contains("://") {
        return Err("a backend is host:port, without a scheme: \"10.0.0.5:8080\"".into());
    }
    if addr.trim() != addr {
        return Err("remove the spaces around the address".into());
    }
    if addr.contains(char::is_whitespace) {
        return Err(
            "a backend is host:port; a name or weight goes in a table: { addr = \"10.0.0.5:8080\", weight = 2 }"
                .into(),
        );
    }
    if !addr.contains(':') {
        return Err("needs a port, e.g. \"10.0.0.5:8080\"".into());
    }
    match addr.to_socket_addrs() {
        Ok(mut found) => found
            .next()
            .ok_or_else(|| "the name resolves to no address".into()),
        Err(e) => Err(format!("cannot resolve: {e}")),
    }
}
