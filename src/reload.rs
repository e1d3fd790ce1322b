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
        let before = backends(&self.live.load());
        self.live.replace(config);
        let now = backends(&self.live.load());
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
        let removed: HashSet<Pair> = before.difference(&now).cloned().collect();
        let scheduled = lock(&self.removals).update(removed, &now);
        if let Some((reload, backends)) = scheduled {
            let grace = config.removal_grace;
            let tunnels = self
                .live
                .registry
                .entries()
                .iter()
                .filter(|e| backends.contains(&pair(e)))
                .count();
            // Scheduled even without tunnels: an upgrade in flight may register one.
            if tunnels > 0 {
                info!(
                    tunnels,
                    grace_ms = grace.as_millis() as u64,
                    "tunnels of removed backends close after the grace period"
                );
            }
            let (live, removals) = (self.live.clone(), self.removals.clone());
            let stop = self.background.clone();
            tokio::spawn(async move {
                tokio::select! {
                    () = tokio::time::sleep(grace) => {
                        let due = lock(&removals).due(reload, backends);
                        close_removed(&live, &due);
                    }
                    () = stop.cancelled() => {}
                }
            });
        }
    }
}

/// A backend in its upstream.
type Pair = (Arc<str>, BackendKey);

/// The backends reloads removed, each with the reload that removed it: its grace
/// counts from then, and a backend removed, re-added and removed again gets a fresh
/// grace from the last removal.
#[derive(Debug, Default)]
pub(crate) struct Removals {
    reloads: u64,
    pending: HashMap<Pair, u64>,
}

impl Removals {
    /// After a reload that removed `removed` and left `present`: forgets backends that
    /// came back; returns this reload's number and the backends it newly removed, if
    /// any.
    fn update(
        &mut self,
        removed: HashSet<Pair>,
        present: &HashSet<Pair>,
    ) -> Option<(u64, HashSet<Pair>)> {
        self.reloads += 1;
        self.pending.retain(|k, _| !present.contains(k));
        let fresh: HashSet<Pair> = removed
            .into_iter()
            .filter(|k| !self.pending.contains_key(k))
            .collect();
        for k in &fresh {
            self.pending.insert(k.clone(), self.reloads);
        }
        (!fresh.is_empty()).then_some((self.reloads, fresh))
    }

    /// When the grace of `reload` ends: those of `backends` that have stayed removed
    /// since that reload.
    fn due(&mut self, reload: u64, backends: HashSet<Pair>) -> HashSet<Pair> {
        let due: HashSet<Pair> = backends
            .into_iter()
            .filter(|k| self.pending.get(k) == Some(&reload))
            .collect();
        self.pending.retain(|k, _| !due.contains(k));
        due
    }
}

fn pair(e: &Entry) -> Pair {
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

/// Every backend of `snap`, in its upstream.
fn backends(snap: &Snapshot) -> HashSet<Pair> {
    snap.upstreams
        .iter()
        .flat_map(|u| u.backends.iter().map(|b| (u.name.clone(), b.key.clone())))
        .collect()
}

/// Closes every tunnel of the `due` backends, also those an upgrade in flight at the
/// reload registered after it, unless a reload since brought the backend back.
fn close_removed(live: &Live, due: &HashSet<Pair>) {
    let present = backends(&live.load());
    let closed = live
        .registry
        .entries()
        .iter()
        .filter(|e| {
            let p = pair(e);
            due.contains(&p) && !present.contains(&p) && e.ctl.close(CloseReason::Reload)
        })
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
        let c: Pair = (
            "app".into(),
            BackendKey::new("c".into(), "127.0.0.1:9003".parse().unwrap()),
        );
        let with_c = HashSet::from([c.clone()]);
        let none = HashSet::new();
        let mut removals = Removals::default();
        // Reload 1 removes c (tunnels or not: an upgrade may be in flight).
        let (first, scheduled) = removals.update(with_c.clone(), &none).unwrap();
        assert_eq!(scheduled, with_c);
        // Reload 2 brings c back, reload 3 removes it again: scheduled afresh.
        assert!(removals.update(HashSet::new(), &with_c).is_none());
        let (third, again) = removals.update(with_c.clone(), &none).unwrap();
        // Reload 4 changes something else: c is already pending, nothing new.
        assert!(removals.update(HashSet::new(), &none).is_none());
        // The first grace ends: not due, c was removed again since.
        assert!(removals.due(first, scheduled).is_empty());
        // The grace of the last removal ends: due.
        assert_eq!(removals.due(third, again), with_c);
    }
}
