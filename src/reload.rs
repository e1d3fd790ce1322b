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

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tracing::info;

use crate::config::Config;
use crate::listener::{Kind, Listener};
use crate::metrics::ResultLabels;
use crate::registry::{BackendKey, CloseReason, Entry};
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
        let removed = lock(&self.removals).update(removed_tunnels(&self.live));
        if let Some((reload, removed)) = removed {
            let grace = config.removal_grace;
            info!(
                tunnels = removed.len(),
                grace_ms = grace.as_millis() as u64,
                "tunnels of removed backends close after the grace period"
            );
            let (removals, stop) = (self.removals.clone(), self.background.clone());
            tokio::spawn(async move {
                tokio::select! {
                    () = tokio::time::sleep(grace) => {
                        close_removed(lock(&removals).due(reload, removed));
                    }
                    () = stop.cancelled() => {}
                }
            });
        }
    }
}

/// The backends reloads removed while they still had tunnels, each with the reload
/// that removed it: its grace counts from then, and a backend removed, re-added and
/// removed again gets a fresh grace from the last removal.
#[derive(Debug, Default)]
pub struct Removals {
    reloads: u64,
    pending: HashMap<(Arc<str>, BackendKey), u64>,
}

impl Removals {
    /// After a reload: `removed` are the tunnels whose backend the new snapshot lacks.
    /// Forgets backends that came back; returns this reload's number and the tunnels
    /// of backends it newly removed, if any.
    fn update(&mut self, removed: Vec<Entry>) -> Option<(u64, Vec<Entry>)> {
        self.reloads += 1;
        let gone: HashSet<(Arc<str>, BackendKey)> = removed.iter().map(pair).collect();
        self.pending.retain(|k, _| gone.contains(k));
        let fresh: Vec<Entry> = removed
            .into_iter()
            .filter(|e| !self.pending.contains_key(&pair(e)))
            .collect();
        for e in &fresh {
            self.pending.insert(pair(e), self.reloads);
        }
        (!fresh.is_empty()).then_some((self.reloads, fresh))
    }

    /// When the grace of `reload` ends: those of `removed` whose backend has stayed
    /// removed since that reload.
    fn due(&mut self, reload: u64, removed: Vec<Entry>) -> Vec<Entry> {
        let due: Vec<Entry> = removed
            .into_iter()
            .filter(|e| self.pending.get(&pair(e)) == Some(&reload))
            .collect();
        for e in &due {
            self.pending.remove(&pair(e));
        }
        due
    }
}

fn pair(e: &Entry) -> (Arc<str>, BackendKey) {
    (e.upstream.clone(), e.backend.clone())
}

fn lock(m: &Mutex<Removals>) -> std::sync::MutexGuard<'_, Removals> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
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

fn close_removed(due: Vec<Entry>) {
    let closed = due
        .iter()
        .filter(|e| e.ctl.close(CloseReason::Removed))
        .count();
    if closed > 0 {
        info!(closed, "closed the tunnels of removed backends");
    }
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

    #[test]
    fn a_backend_removed_again_gets_its_grace_from_the_last_removal() {
        let registry = Arc::new(crate::registry::Registry::default());
        let c = BackendKey::new("c".into(), "127.0.0.1:9003".parse().unwrap());
        let _tunnel = registry.register("app".into(), "/".into(), c, 7, None);
        let mut removals = Removals::default();
        // Reload 1 removes c: its tunnel is scheduled.
        let (first, scheduled) = removals.update(registry.entries()).unwrap();
        assert_eq!(scheduled.len(), 1);
        // Reload 2 brings c back, reload 3 removes it again: scheduled afresh.
        assert!(removals.update(Vec::new()).is_none());
        let (third, again) = removals.update(registry.entries()).unwrap();
        // Reload 4 changes something else: c is already pending, nothing new.
        assert!(removals.update(registry.entries()).is_none());
        // The first grace ends: not due, c was removed again since.
        assert!(removals.due(first, scheduled).is_empty());
        // The grace of the last removal ends: due.
        assert_eq!(removals.due(third, again).len(), 1);
    }
}
