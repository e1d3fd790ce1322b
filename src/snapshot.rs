//! The runtime snapshot: everything a request needs to know, immutable, behind one
//! `ArcSwap`.
//!
//! A request calls [`Live::load`] once and uses that `Arc<Snapshot>` to the end, so it
//! never sees half of two configurations. A new configuration is compiled into a
//! complete new snapshot beside the current one and swapped in whole. State that must
//! survive a swap (backend health, pooled keep-alive connections) lives in [`Lasting`],
//! keyed by backend, and each snapshot holds `Arc`s into it.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use tokio::sync::{Notify, Semaphore, watch};

use crate::config::{AdminConfig, Config, ListenerConfig};
use crate::metrics::Metrics;
use crate::principal::{Fallback, Source};
use crate::registry::Registry;
use crate::route::Router;
use crate::upstream::Upstream;
use crate::upstream::health::Lasting;

/// One compiled configuration.
#[derive(Debug)]
pub struct Snapshot {
    pub listeners: Vec<ListenerConfig>,
    pub routes: Router<Route>,
    pub upstreams: Vec<Upstream>,
    pub drain_timeout: Duration,
    pub removal_grace: Duration,
    pub admin: Option<AdminConfig>,
}

/// What a matched route decides.
#[derive(Debug)]
pub struct Route {
    /// `host/path` as configured, for logs.
    pub label: Arc<str>,
    /// Index into [`Snapshot::upstreams`].
    pub upstream: usize,
    pub principal: Vec<Source>,
    pub fallback: Fallback,
    pub idle_timeout: Option<Duration>,
    /// See [`crate::upstream::Upstream::request_candidates`].
    pub follow_socket: bool,
}

impl Snapshot {
    /// Compiles `config`. Infallible: everything that can be wrong was rejected when
    /// the `Config` was parsed.
    pub fn build(config: &Config, lasting: &Lasting) -> Snapshot {
        let routes = config
            .routes
            .iter()
            .map(|r| {
                let label = match &r.host {
                    Some(h) => format!("{h}{}", r.path),
                    None => r.path.clone(),
                };
                let route = Route {
                    label: label.into(),
                    upstream: r.upstream,
                    principal: r.principal.clone(),
                    fallback: r.fallback,
                    idle_timeout: r.idle_timeout,
                    follow_socket: r.follow_socket,
                };
                (r.host.clone(), r.path.clone(), route)
            })
            .collect();
        Snapshot {
            listeners: config.listeners.clone(),
            routes: Router::new(routes),
            upstreams: config
                .upstreams
                .iter()
                .map(|u| Upstream::build(u, lasting))
                .collect(),
            drain_timeout: config.drain_timeout,
            removal_grace: config.removal_grace,
            admin: config.admin.clone(),
        }
    }

    /// The settings of the listener configured with `bind`.
    pub fn listener(&self, bind: SocketAddr) -> Option<&ListenerConfig> {
        self.listeners.iter().find(|l| l.bind == bind)
    }

    pub fn upstream(&self, name: &str) -> Option<&Upstream> {
        self.upstreams.iter().find(|u| &*u.name == name)
    }
}

/// The current snapshot plus the state that outlives it: backend health and pooled
/// connections, the live tunnels, and the signals the background tasks (probes, rebalancer) wait on.
#[derive(Debug)]
pub struct Live {
    current: ArcSwap<Snapshot>,
    lasting: Lasting,
    pub registry: Arc<Registry>,
    /// Bumped on every swap; the probe supervisor follows it.
    generation: watch::Sender<u64>,
    /// Poked when placement may have changed in a way that misplaces tunnels.
    rebalance: Notify,
    pub metrics: Metrics,
    /// Recent notable events (transitions, reloads, drains), newest last.
    events: Mutex<VecDeque<Event>>,
    /// One permit per client connection being served (and per WebSocket an HTTP/2
    /// connection carries), `max_connections` in all, sized at start: when none is
    /// left, listeners stop accepting and new connections wait in the kernel's
    /// queue, as HAProxy does at `maxconn`.
    pub connections: Arc<Semaphore>,
    /// The permits `connections` was made with.
    pub max_connections: usize,
    /// Client connections accepted so far (the heap trim watches it for churn).
    pub accepted: AtomicU64,
    /// `max_connections` was reached and has not eased since (the log says each once).
    pub saturated: AtomicBool,
}

/// Something an operator should see on the status page.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Event {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub text: String,
}

/// How many events the status page keeps.
const EVENTS_KEPT: usize = 50;

impl Live {
    pub fn new(config: &Config) -> Live {
        let lasting = Lasting::default();
        let snapshot = Snapshot::build(config, &lasting);
        lasting.settle();
        // Unset: no limit here; `tether run` sets it from the open-file limit.
        let max_connections = config
            .max_connections
            .unwrap_or(Semaphore::MAX_PERMITS)
            .min(Semaphore::MAX_PERMITS);
        Live {
            connections: Arc::new(Semaphore::new(max_connections)),
            max_connections,
            accepted: AtomicU64::new(0),
            saturated: AtomicBool::new(false),
            current: ArcSwap::from_pointee(snapshot),
            lasting,
            registry: Arc::new(Registry::default()),
            generation: watch::Sender::new(0),
            rebalance: Notify::new(),
            metrics: Metrics::new(),
            events: Mutex::new(VecDeque::new()),
        }
    }

    /// Records an event for the status page (the caller logs it too).
    pub fn event(&self, text: String) {
        let at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        if events.len() == EVENTS_KEPT {
            events.pop_front();
        }
        events.push_back(Event { at_ms, text });
    }

    /// Recent events, newest first.
    pub fn events(&self) -> Vec<Event> {
        let events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        events.iter().rev().cloned().collect()
    }

    /// A receiver that sees every swap.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Asks the rebalancer to look for misplaced tunnels.
    pub fn poke_rebalancer(&self) {
        self.rebalance.notify_one();
    }

    /// Resolves when [`Live::poke_rebalancer`] was called (a poke made while nobody
    /// waited is kept).
    pub async fn rebalance_wanted(&self) {
        self.rebalance.notified().await;
    }

    /// The snapshot to use for one whole request or connection.
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Compiles `config` beside the current snapshot, then swaps it in.
    pub fn replace(&self, config: &Config) {
        let next = Snapshot::build(config, &self.lasting);
        self.current.store(Arc::new(next));
        self.generation.send_modify(|g| *g += 1);
        self.poke_rebalancer();
    }
}
