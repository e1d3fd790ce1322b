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
//! - [`metrics`]: every exported metric, by name.
//!
//! Edges:
//! - [`admin`]: the admin listener: metrics, health, the owner API, the status page.
//! - [`listener`]: accept loops, the TLS handshake, the HTTP/1.1 and HTTP/2 server side.
//! - [`proxy`]: the request path, forwarding headers, WebSocket tunnels, error responses.
//! - [`server`]: a running tether (listeners, handler, background tasks) and shutdown.
//! - [`reload`]: applying a new configuration to a running server.
//! - [`shutdown`]: the drain signal and task accounting.
//! - [`probe`]: active health probes, one task per backend.
//! - [`rebalance`]: closing a dead backend's tunnels; draining misplaced tunnels back.
//! - [`heap`]: the allocator (mimalloc), and giving freed pages back to the kernel
//!   after bursts.
//! - [`demo`]: the demo app nodes of `tether demo` (also the tests' tagged backends).
//! - [`logline`]: the text log format, cheaper than tracing-subscriber's own.
//!
//! The binary (`main.rs`) parses the CLI, loads the config, binds the listeners,
//! starts a [`Server`] and turns signals into reloads and shutdown; the library never
//! binds or reads files on its own. [`run`] is the short form for embedding and tests.

#![warn(clippy::unwrap_used, clippy::expect_used)]

pub mod admin;
pub mod balance;
pub mod config;
pub mod demo;
pub mod heap;
pub mod listener;
pub mod logline;
pub mod metrics;
pub mod principal;
pub mod probe;
pub mod proxy;
pub mod rebalance;
pub mod registry;
pub mod reload;
pub mod route;
pub mod send_timeout;
pub mod server;
pub mod shutdown;
pub mod snapshot;
pub mod stream_timeout;
pub mod upstream;

use std::sync::Arc;

pub use listener::Listener;
pub use server::Server;
pub use snapshot::Live;

/// Serves `listeners` with the configuration in `live` until `shutdown` resolves, then
/// shuts down gracefully ([`Server::shutdown`]).
pub async fn run(listeners: Vec<Listener>, live: Arc<Live>, shutdown: impl Future<Output = ()>) {
    let server = Server::start(live, listeners);
    shutdown.await;
    server.shutdown().await;
}
