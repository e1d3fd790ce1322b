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
//! - [`upstream`]: backends as a snapshot sees them; `health` holds what outlives a reload.
//!
//! Edges:
//! - [`listener`]: accept loops, the HTTP/1.1 server side.
//! - [`proxy`]: the request path, forwarding headers, WebSocket tunnels, error responses.
//! - [`shutdown`]: the drain signal and task accounting.
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
pub mod proxy;
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
/// stops accepting, lets in-flight requests finish and closes tunnels, waiting at most
/// the configured `drain_timeout`.
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
    shutdown.await;
    info!(running = tasks.running(), "shutting down");
    let left = tasks.drain(live.load().drain_timeout).await;
    if left > 0 {
        warn!(left, "drain timeout reached; closing what is left");
    }
}
