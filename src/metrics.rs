//! Every metric tether exports, by name, in one place (Prometheus / OpenMetrics text via
//! `prometheus-client`).
//!
//! Counters live as long as the process (in [`crate::snapshot::Live`]) and are bumped
//! on the data path. Gauges that describe the present — which backends are up, how many
//! tunnels each holds — are computed at scrape time from the current snapshot and the
//! tunnel registry, so a backend removed by a reload simply stops appearing.
//! Labels carry route labels and backend ids from the configuration, never a principal.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::sync::Semaphore;

use crate::registry::Registry as Tunnels;
use crate::snapshot::Snapshot;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    // Shared, not copied: one of these is made for every request.
    pub route: Arc<str>,
    pub backend: Arc<str>,
    /// `2xx`, `4xx`, …
    pub class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpgradeLabels {
    pub route: String,
    /// How the client asked: `http/1.1` (`Upgrade: websocket`) or `h2` (RFC 8441
    /// extended CONNECT).
    pub protocol: &'static str,
    /// `ok` (tunnel opened), `refused` (any other answer: the backend's, relayed, or
    /// tether's own 4xx), `failed` (no backend, a timeout or a bad answer: tether
    /// answered 5xx).
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabels {
    /// `up` (client → backend) or `down` (backend → client).
    pub direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabels {
    pub upstream: String,
    pub backend: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TunnelLabels {
    pub route: String,
    pub backend: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: &'static str,
}

/// Every `reason` of `tether_tunnels_closed` (tunnel.rs names them).
pub const CLOSE_REASONS: &[&str] = &[
    "client",
    "backend",
    "idle",
    "backend-down",
    "rebalance",
    "shutdown",
    "reload",
    "client-error",
    "backend-error",
];

/// The process's counters and histograms.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub upgrades: Family<UpgradeLabels, Counter>,
    /// By result, as `upgrades`: a fast 502 would otherwise pass for a fast upgrade.
    pub upgrade_seconds: Family<ResultLabels, Histogram, fn() -> Histogram>,
    /// Tunnel bytes; [`Metrics::bytes_up`] and [`Metrics::bytes_down`] are the handles
    /// the pump adds to.
    bytes: Family<DirectionLabels, Counter>,
    pub tunnels_closed: Family<ReasonLabels, Counter>,
    pub backend_failures: Family<BackendLabels, Counter>,
    pub reloads: Family<ResultLabels, Counter>,
    /// Seconds since the Unix epoch when the process started (its metrics did).
    started: f64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("tether");
        let m = Metrics {
            requests: Family::default(),
            upgrades: Family::default(),
            upgrade_seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0005, 2.0, 16))
            }),
            bytes: Family::default(),
            tunnels_closed: Family::default(),
            backend_failures: Family::default(),
            reloads: Family::default(),
            started: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
            registry: Registry::default(),
        };
        registry.register(
            "http_requests",
            "Plain HTTP requests answered, by route, backend and status class",
            m.requests.clone(),
        );
        registry.register(
            "upgrades",
            "WebSocket upgrade requests, by route, client protocol and result",
            m.upgrades.clone(),
        );
        registry.register(
            "upgrade_duration_seconds",
            "Time from a WebSocket request to the tunnel's answer to the client, by result",
            m.upgrade_seconds.clone(),
        );
        registry.register(
            "tunnel_bytes",
            "Bytes copied through tunnels, by direction",
            m.bytes.clone(),
        );
        registry.register(
            "tunnels_closed",
            "Tunnels closed, by reason",
            m.tunnels_closed.clone(),
        );
        registry.register(
            "backend_failures",
            "Failures on live traffic (refused or timed-out connects, upgrades unanswered by a backend that answers nothing else), by backend",
            m.backend_failures.clone(),
        );
        registry.register(
            "reloads",
            "Configuration reloads, by result",
            m.reloads.clone(),
        );
        // A gauge reading 1 rather than an OpenMetrics `info`: the classic text format
        // (and promtool) has no `info` type.
        let build: Family<VersionLabels, Gauge> = Family::default();
        build
            .get_or_create(&VersionLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register("build_info", "tether's version", build);
        // Series that exist from the start, at zero, so rates and dashboards work
        // before the first event.
        for reason in CLOSE_REASONS {
            let _ = m.tunnels_closed.get_or_create(&ReasonLabels {
                reason: (*reason).to_owned(),
            });
        }
        for result in ["ok", "error"] {
            let _ = m.reloads.get_or_create(&ResultLabels { result });
        }
        for result in ["ok", "refused", "failed"] {
            let _ = m.upgrade_seconds.get_or_create(&ResultLabels { result });
        }
        for direction in ["up", "down"] {
            let _ = m.bytes.get_or_create(&DirectionLabels { direction });
        }
        Metrics { registry, ..m }
    }

    pub fn bytes_up(&self) -> Counter<u64, AtomicU64> {
        self.bytes
            .get_or_create(&DirectionLabels { direction: "up" })
            .clone()
    }

    pub fn bytes_down(&self) -> Counter<u64, AtomicU64> {
        self.bytes
            .get_or_create(&DirectionLabels { direction: "down" })
            .clone()
    }

    /// The whole exposition in `format`: counters, then gauges computed from `snap`,
    /// `tunnels` and the client connections' `slots` (`max` in all).
    pub fn encode(
        &self,
        snap: &Snapshot,
        tunnels: &Tunnels,
        slots: (&Semaphore, usize),
        format: Format,
    ) -> String {
        let up: Family<BackendLabels, Gauge> = Family::default();
        let live: Family<TunnelLabels, Gauge> = Family::default();
        for u in &snap.upstreams {
            for b in &u.backends {
                let labels = BackendLabels {
                    upstream: u.name.to_string(),
                    backend: b.id.to_string(),
                };
                up.get_or_create(&labels).set(i64::from(b.health.is_up()));
                // A configured backend's failure counter exists even before its first failure.
                let _ = self.backend_failures.get_or_create(&labels);
            }
        }
        // Every route × backend it can reach reads 0 rather than vanishing when its
        // last tunnel closes (dashboards and alerts see a drop, not staleness).
        for (_, _, route) in snap.routes.iter() {
            for b in &snap.upstreams[route.upstream].backends {
                let _ = live.get_or_create(&TunnelLabels {
                    route: route.label.to_string(),
                    backend: b.id.to_string(),
                });
            }
        }
        for e in tunnels.entries() {
            let labels = TunnelLabels {
                route: e.route.to_string(),
                backend: e.backend.id.to_string(),
            };
            live.get_or_create(&labels).inc();
        }
        let mut now = Registry::with_prefix("tether");
        let (slots, max) = slots;
        let gauge = |v: usize| {
            let g: Gauge = Gauge::default();
            g.set(i64::try_from(v).unwrap_or(i64::MAX));
            g
        };
        now.register(
            "connections",
            "Client connections (and HTTP/2 streams) holding a slot of max_connections",
            gauge(max.saturating_sub(slots.available_permits())),
        );
        now.register(
            "connections_max",
            "max_connections: at this many, new connections wait in the kernel's queue",
            gauge(max),
        );
        now.register("backend_up", "1 if the backend is up, 0 if down", up);
        now.register(
            "tunnels_live",
            "Live WebSocket tunnels, by route and backend",
            live,
        );
        let mut out = String::new();
        let _ = encode_registry(&mut out, &self.registry);
        let _ = encode_registry(&mut out, &now);
        let _ = encode_registry(&mut out, &self.process());
        let _ = encode_eof(&mut out);
        match format {
            Format::OpenMetrics => out,
            Format::Text => to_text_format(&out),
        }
    }
}

impl Metrics {
    /// The `process_*` metrics every Prometheus client library exports (open and
    /// allowed file descriptors matter most here: each tunnel takes two), read from
    /// `/proc` at scrape time; those it cannot read are left out.
    fn process(&self) -> Registry {
        let mut r = Registry::with_prefix("process");
        r.register(
            "start_time_seconds",
            "Start time of the process since the Unix epoch in seconds",
            ConstGauge::new(self.started),
        );
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            r.register(
                "open_fds",
                "Number of open file descriptors",
                ConstGauge::new(fds.count() as i64),
            );
        }
        if let Ok((soft, _)) = rlimit::getrlimit(rlimit::Resource::NOFILE) {
            r.register(
                "max_fds",
                "Maximum number of open file descriptors (the soft limit)",
                ConstGauge::new(i64::try_from(soft).unwrap_or(i64::MAX)),
            );
        }
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let kib = |field: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok())
                .map(|k| k * 1024)
        };
        if let Some(rss) = kib("VmRSS:") {
            r.register(
                "resident_memory_bytes",
                "Resident memory size in bytes",
                ConstGauge::new(rss),
            );
        }
        if let Some(size) = kib("VmSize:") {
            r.register(
                "virtual_memory_bytes",
                "Virtual memory size in bytes",
                ConstGauge::new(size),
            );
        }
        // utime and stime, the 14th and 15th fields, in USER_HZ (100 on Linux).
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map_or(vec![], |(_, rest)| rest.split_whitespace().collect());
        let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok());
        if let (Some(user), Some(system)) = (ticks(11), ticks(12)) {
            r.register(
                "cpu_seconds",
                "Total user and system CPU time spent in seconds",
                ConstCounter::new((user + system) as f64 / 100.0),
            );
        }
        r
    }
}

/// The exposition format a scraper gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0, which Prometheus asks for first.
    OpenMetrics,
    /// The classic text format 0.0.4: for `curl`, `promtool check metrics` and
    /// scrapers that ask for nothing else.
    Text,
}

impl Format {
    /// OpenMetrics when the `Accept` header names it, else the text format: what
    /// Prometheus and curl get from the Go client too (q-values are not weighed).
    pub fn negotiate(accept: Option<&str>) -> Format {
        if accept.is_some_and(|a| a.contains("application/openmetrics-text")) {
            Format::OpenMetrics
        } else {
            Format::Text
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Text => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

/// OpenMetrics text → the classic text format, for what tether exports (counters,
/// gauges, histograms): a counter family is named with its `_total` there, and there
/// is no `# UNIT` or `# EOF`.
fn to_text_format(open: &str) -> String {
    let counters: HashSet<&str> = open
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(open.len() + 16 * counters.len());
    for line in open.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "].into_iter().find_map(|p| {
            let (name, rest) = line.strip_prefix(p)?.split_once(' ')?;
            Some((p, name, rest))
        });
        match meta {
            Some((p, name, rest)) if counters.contains(name) => {
                let _ = writeln!(out, "{p}{name}_total {rest}");
            }
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_format_names_counters_with_total_and_has_no_eof() {
        let m = Metrics::new();
        m.reloads
            .get_or_create(&ResultLabels { result: "ok" })
            .inc();
        m.upgrade_seconds
            .get_or_create(&ResultLabels { result: "ok" })
            .observe(0.001);
        let mut open = String::new();
        encode_registry(&mut open, &m.registry).unwrap();
        encode_eof(&mut open).unwrap();
        assert!(open.contains("# TYPE tether_reloads counter\n"));
        let text = to_text_format(&open);
        assert!(text.contains("# HELP tether_reloads_total Configuration reloads, by result"));
        assert!(text.contains("# TYPE tether_reloads_total counter\n"));
        assert!(text.contains("tether_reloads_total{result=\"ok\"} 1\n"));
        assert!(text.contains("# TYPE tether_build_info gauge\n"));
        assert!(text.contains("# TYPE tether_upgrade_duration_seconds histogram\n"));
        assert!(!text.contains("# EOF"));
        // HELP is copied across formats as is: fine while no text needs escaping
        // (OpenMetrics escapes `"`, the text format does not).
        for help in text.lines().filter(|l| l.starts_with("# HELP ")) {
            assert!(!help.contains(['"', '\\']), "{help}");
        }
        // Every sample belongs to a family declared under its own name (histograms by
        // their suffixes), which is what the text format's parsers require.
        let families: HashSet<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next())
            .collect();
        for sample in text.lines().filter(|l| !l.starts_with('#')) {
            let name = sample.split(['{', ' ']).next().unwrap();
            let family = ["_bucket", "_sum", "_count"]
                .into_iter()
                .find_map(|s| name.strip_suffix(s).filter(|f| families.contains(f)))
                .unwrap_or(name);
            assert!(families.contains(family), "{sample}");
        }
    }

    #[test]
    fn prometheus_gets_openmetrics_and_everyone_else_text() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::negotiate(Some(prometheus)), Format::OpenMetrics);
        assert_eq!(Format::negotiate(Some("*/*")), Format::Text);
        assert_eq!(Format::negotiate(None), Format::Text);
    }
}
