//! tether: a reverse proxy for clustered WebSocket applications.
//!
//! It pins every principal (a session cookie, a user header, a query value, a path
//! segment, or the client address) to one backend by rendezvous hashing, for
//! WebSocket upgrades and plain HTTP alike, so "push to user X" requests sent through
//! tether reach the node that holds X's socket.
//!
//! # Layout
//!
//! Core (no sockets):
//! - [`config`]: TOML → serde mirror → validated [`config::Config`], errors with file:line:col.
//! - [`snapshot`]: the immutable [`snapshot::Snapshot`] behind one `ArcSwap` ([`Live`]).
//! - [`route`]: host + longest-prefix matching.
//! - [`principal`]: principal sources, extraction, fingerprints.
//! - [`balance`]: the placement function (weighted rendezvous hashing).
//! - [`upstream`]: backends as a snapshot sees them and the eligibility walk; `health`
//!   is the pure up/down counter and the state that outlives a reload.
//! - [`registry`]: every live tunnel by backend and principal, with close handles.
//!
//! Edges:
//! - [`listener`]: accept loops, the HTTP/1.1 server side.
//! - [`proxy`]: the request path, forwarding headers, WebSocket tunnels, error responses.
//! - [`shutdown`]: the drain signal and task accounting.
//! - [`probe`]: active health probes, one task per backend.
//! - [`rebalance`]: closing a dead backend's tunnels; draining misplaced tunnels back.
//! - [`demo`]: the demo app nodes of `tether demo` (also the tests' tagged backends).
//!
//! The binary (`main.rs`) parses the CLI, loads the config, binds the listeners and
//! calls [`run`]; the library never binds or reads files on its own.

#![warn(clippy::unwrap_used, clippy::expect_used)]

pub mod balance;
pub mod config;
pub mod demo;
pub mod listener;
pub mod principal;
pub mod probe;
pub mod proxy;
pub mod rebalance;
pub mod registry;
pub mod route;
pub mod shutdown;
pub mod snapshot;
pub mod upstream;

use std::sync::Arc;

use tracing::{info, warn};

pub use listener::Listener;
pub use snapshot::Live;

use proxy::Proxy;
use shutdown::Shutdown;

/// Serves `listeners` with the configuration in `live` until `shutdown` resolves, then
/// stops accepting, lets in-flight requests finish and closes tunnels (Close 1001),
/// waiting at most the configured `drain_timeout`. Health probes and the rebalancer
/// run alongside.
pub async fn run(listeners: Vec<Listener>, live: Arc<Live>, shutdown: impl Future<Output = ()>) {
    let tasks = Shutdown::new();
    let proxy = Arc::new(Proxy::new(live.clone(), tasks.clone()));
    for l in listeners {
        tasks.spawn(listener::accept_loop(
            l,
            proxy.clone(),
            live.clone(),
            tasks.clone(),
        ));
    }
    let background = tasks.token().child_token();
    tokio::spawn(probe::supervise(live.clone(), background.clone()));
    tokio::spawn(rebalance::run(live.clone(), background.clone()));
    shutdown.await;
    background.cancel();
    let tunnels = live.registry.close_all(registry::CloseReason::Shutdown);
    info!(running = tasks.running(), tunnels, "shutting down");
    let left = tasks.drain(live.load().drain_timeout).await;
    if left > 0 {
        warn!(left, "drain timeout reached; closing what is left");
    }
}
