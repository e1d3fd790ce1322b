//! A running tether: listeners, the request handler, background tasks, and the
//! lifecycle around them (start, reload in `reload.rs`, shutdown).
//!
//! Each listener's accept loop has its own stop token (a child of the shutdown token),
//! so a reload can close one listener while its accepted connections carry on.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::listener::{self, Kind, Listener};
use crate::proxy::Proxy;
use crate::registry::CloseReason;
use crate::shutdown::Shutdown;
use crate::snapshot::Live;
use crate::upstream::health::now_ms;
use crate::{admin, heap, probe, rebalance};

/// How often idle tunnels are looked for: idle timeouts are honoured to within this.
const IDLE_SWEEP: Duration = Duration::from_secs(1);

/// Connections in use whose halving is worth a trim at once.
const TRIM_EBB: usize = 256;

/// Under steady churn the heap is trimmed at most this often.
const TRIM_AT_MOST_EVERY: Duration = Duration::from_secs(60);

/// Closes tunnels that have been idle past their route's `idle_timeout` (1001), and
/// gives the heap freed by churn back ([`heap::trim`]): once the churn stops (a
/// second in which no tunnel and no client connection opened or closed), as soon as
/// the connections in use have fallen to half a peak of at least [`TRIM_EBB`] (a
/// flood that ended while other traffic goes on), or every minute while churn goes
/// on. So a burst of handshakes, or a flood of connections that never became
/// tunnels, does not leave its buffers resident, and the trim's pause (up to a few ms
/// on a large heap) is rare.
async fn sweep_idle(live: Arc<Live>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(IDLE_SWEEP);
    // Tunnels opened and closed; client connections accepted, and in use (which
    // changes as they close).
    let churn_now = || {
        (
            live.registry.churn(),
            live.accepted.load(Ordering::Relaxed),
            live.connections.available_permits(),
        )
    };
    let in_use = || live.max_connections - live.connections.available_permits();
    let mut churn = churn_now();
    let mut peak = in_use();
    let mut untrimmed = false;
    let mut trimmed = Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        // Eased to 90% of max_connections or below since the limit was reached.
        if live.saturated.load(Ordering::Relaxed)
            && live.connections.available_permits() >= live.max_connections / 10
            && live.saturated.swap(false, Ordering::Relaxed)
        {
            info!(
                max_connections = live.max_connections,
                "below the connection limit again"
            );
        }
        let closed = live.registry.close_idle(now_ms());
        if closed > 0 {
            debug!(closed, "closed idle tunnels");
        }
        let now = churn_now();
        let quiet = now == churn;
        churn = now;
        untrimmed |= !quiet;
        let using = in_use();
        peak = peak.max(using);
        let ebbed = peak >= TRIM_EBB && using <= peak / 2;
        if untrimmed && (quiet || ebbed || trimmed.elapsed() >= TRIM_AT_MOST_EVERY) {
            heap::trim();
            peak = using;
            untrimmed = false;
            trimmed = Instant::now();
        }
    }
}

#[derive(Debug)]
pub struct Server {
    pub(crate) live: Arc<Live>,
    pub(crate) tasks: Shutdown,
    proxy: Arc<Proxy>,
    /// Open listeners by kind and configured bind, with the token that closes each.
    listeners: Mutex<HashMap<(Kind, SocketAddr), CancellationToken>>,
    /// Stops the probes, the rebalancer and pending removals.
    pub(crate) background: CancellationToken,
    /// Backends a reload removed whose tunnels wait out `removal_grace` (reload.rs).
    pub(crate) removals: Arc<Mutex<crate::reload::Removals>>,
}

impl Server {
    /// Starts serving `listeners` with the configuration in `live`, with health probes
    /// and the rebalancer alongside. Must be called inside a tokio runtime.
    pub fn start(live: Arc<Live>, listeners: Vec<Listener>) -> Server {
        let tasks = Shutdown::new();
        let background = tasks.token().child_token();
        tokio::spawn(probe::supervise(live.clone(), background.clone()));
        tokio::spawn(rebalance::run(live.clone(), background.clone()));
        tokio::spawn(sweep_idle(live.clone(), background.clone()));
        let server = Server {
            proxy: Arc::new(Proxy::new(live.clone(), tasks.clone())),
            live,
            tasks,
            listeners: Mutex::new(HashMap::new()),
            background,
            removals: Arc::default(),
        };
        for l in listeners {
            server.listen(l);
        }
        server
    }

    pub fn live(&self) -> &Arc<Live> {
        &self.live
    }

    /// The open listeners: their kinds and configured binds.
    pub fn listening(&self) -> Vec<(Kind, SocketAddr)> {
        self.listeners().keys().copied().collect()
    }

    pub(crate) fn listen(&self, l: Listener) {
        let stop = self.tasks.token().child_token();
        self.listeners().insert((l.kind, l.bind), stop.clone());
        let (live, tasks) = (self.live.clone(), self.tasks.clone());
        match l.kind {
            Kind::Traffic => {
                let proxy = self.proxy.clone();
                self.tasks
                    .spawn(listener::accept_loop(l, proxy, live, tasks, stop));
            }
            Kind::Admin => self.tasks.spawn(admin::accept_loop(l, live, tasks, stop)),
        }
    }

    /// Closes the listener `key` (its connections carry on).
    pub(crate) fn unlisten(&self, key: (Kind, SocketAddr)) {
        if let Some(stop) = self.listeners().remove(&key) {
            stop.cancel();
        }
    }

    fn listeners(&self) -> MutexGuard<'_, HashMap<(Kind, SocketAddr), CancellationToken>> {
        self.listeners.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stops accepting at once (listening sockets close), asks every tunnel to close
    /// with 1001, lets in-flight requests finish, and waits up to `drain_timeout`.
    pub async fn shutdown(self) {
        self.background.cancel();
        let tunnels = self.live.registry.close_all(CloseReason::Shutdown);
        info!(running = self.tasks.running(), tunnels, "shutting down");
        let left = self.tasks.drain(self.live.load().drain_timeout).await;
        if left > 0 {
            warn!(left, "drain timeout reached; closing what is left");
        } else {
            info!("shut down cleanly");
        }
    }
}
