//! Reload: apply a new configuration to a running [`Server`] without dropping anything
//! that survives it.
//!
//! The caller (the binary, on SIGHUP) loads and validates the file, then binds the
//! listeners the new configuration adds ([`binds_to_open`]); any failure so far leaves
//! the running configuration untouched. [`Server::reload`] then, in this order:
//! starts the new listeners, swaps the snapshot (one atomic store: a request sees the
//! old or the new configuration, never a mix), closes the listeners the configuration
//! dropped (their accepted connections carry on), and schedules the tunnels of removed
//! backends to close with 1001 after `removal_grace`. Health state and tunnels of
//! surviving backends are untouched; the rebalancer is poked, so principals of added
//! backends drain to them per their upstream's `rebalance` policy.

use std::collections::HashSet;
use std::net::SocketAddr;

use tracing::info;

use crate::config::Config;
use crate::listener::{Kind, Listener};
use crate::metrics::ResultLabels;
use crate::registry::{CloseReason, Entry};
use crate::server::Server;
use crate::snapshot::{Live, Snapshot};

/// Every listener `config` asks for: traffic listeners and the admin listener.
pub fn binds(config: &Config) -> Vec<(Kind, SocketAddr)> {
    let traffic = config.listeners.iter().map(|l| (Kind::Traffic, l.bind));
    traffic
        .chain(config.admin.iter().map(|a| (Kind::Admin, a.bind)))
        .collect()
}

/// The listeners `config` has that are not open yet: the sockets the caller must bind
/// before [`Server::reload`].
pub fn binds_to_open(open: &[(Kind, SocketAddr)], config: &Config) -> Vec<(Kind, SocketAddr)> {
    binds(config)
        .into_iter()
        .filter(|b| !open.contains(b))
        .collect()
}

impl Server {
    /// Applies `config`; `fresh` are bound sockets for [`binds_to_open`]. See the
    /// module doc.
    pub fn reload(&self, config: &Config, fresh: Vec<Listener>) {
        for l in fresh {
            self.listen(l);
        }
        self.live.replace(config);
        let keep: HashSet<(Kind, SocketAddr)> = binds(config).into_iter().collect();
        for key in self.listening() {
            if !keep.contains(&key) {
                self.unlisten(key);
            }
        }
        self.live
            .metrics
            .reloads
            .get_or_create(&ResultLabels { result: "ok" })
            .inc();
        self.live.event("configuration reloaded".into());
        let removed = removed_tunnels(&self.live);
        if !removed.is_empty() {
            let grace = config.removal_grace;
            info!(
                tunnels = removed.len(),
                grace_ms = grace.as_millis() as u64,
                "tunnels of removed backends close after the grace period"
            );
            let (live, stop) = (self.live.clone(), self.background.clone());
            tokio::spawn(async move {
                tokio::select! {
                    () = tokio::time::sleep(grace) => close_if_still_removed(&live, removed),
                    () = stop.cancelled() => {}
                }
            });
        }
    }
}

impl Server {
    /// Records a reload that was refused (`why` says so, with the position).
    pub fn reload_failed(&self, why: &str) {
        self.live
            .metrics
            .reloads
            .get_or_create(&ResultLabels { result: "error" })
            .inc();
        self.live.event(format!("reload failed: {why}"));
    }
}

/// Tunnels whose backend (in their upstream) the new snapshot no longer has.
fn removed_tunnels(live: &Live) -> Vec<Entry> {
    let snap = live.load();
    live.registry
        .entries()
        .into_iter()
        .filter(|e| !has_backend(&snap, e))
        .collect()
}

fn has_backend(snap: &Snapshot, e: &Entry) -> bool {
    snap.upstream(&e.upstream)
        .is_some_and(|u| u.backends.iter().any(|b| b.key == e.backend))
}

/// A later reload may have brought the backend back: check again before closing.
fn close_if_still_removed(live: &Live, removed: Vec<Entry>) {
    let snap = live.load();
    let closed = removed
        .iter()
        .filter(|e| !has_backend(&snap, e) && e.ctl.close(CloseReason::Removed))
        .count();
    info!(closed, "closed the tunnels of removed backends");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_new_binds_are_opened() {
        let text = "[[listener]]\nbind = \"127.0.0.1:1\"\n[[listener]]\nbind = \"127.0.0.1:2\"\n";
        let config = Config::parse(text, "t").unwrap();
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        let open = [
            (Kind::Traffic, a("127.0.0.1:1")),
            (Kind::Traffic, a("127.0.0.1:3")),
        ];
        assert_eq!(
            binds_to_open(&open, &config),
            [(Kind::Traffic, a("127.0.0.1:2"))]
        );
        let with_admin =
            Config::parse(&format!("{text}[admin]\nbind = \"127.0.0.1:3\"\n"), "t").unwrap();
        let want = [
            (Kind::Traffic, a("127.0.0.1:2")),
            (Kind::Admin, a("127.0.0.1:3")),
        ];
        assert_eq!(binds_to_open(&open, &with_admin), want);
    }
}
