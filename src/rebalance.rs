//! Reacting to placement changes: a backend that goes down has its tunnels closed at
//! once; a backend that comes back (or is added) gets its principals back, gently.
//!
//! Down: [`on_transition`] asks every tunnel on the backend to close with 1012, so
//! clients reconnect and land on their next node. Only that backend's principals move.
//!
//! Up: new connections go to the returned owner at once, but its principals' existing
//! tunnels sit on other nodes — they are *misplaced*. Once the owner has stayed up for
//! the upstream's `rebalance_hold`, the rebalancer closes misplaced tunnels with 1012,
//! at most `rebalance_rate` per second, so their clients reconnect to the owner without
//! a reconnect storm. A tunnel is misplaced when an up, held backend comes before the
//! one it sits on in its principal's placement order ([`crate::upstream::Upstream::destination`]:
//! with bounded load, one with room, and none passed over for being full). Each is
//! judged again just before it is closed. The rebalancer sleeps until poked (a backend
//! came up, a reload).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::registry::{CloseReason, Entry};
use crate::snapshot::{Live, Snapshot};
use crate::upstream::Backend;
use crate::upstream::health::{Transition, now_ms};

/// Logs a health transition once and acts on it.
pub fn on_transition(live: &Live, backend: &Backend, t: Transition) {
    if t.up {
        info!(backend = %backend.id, addr = %backend.addr, reason = %t.reason, "backend up");
        live.event(format!("{} is up: {}", backend.id, t.reason));
        live.poke_rebalancer();
    } else {
        let closed = live
            .registry
            .close_backend(&backend.key, CloseReason::BackendDown);
        warn!(
            backend = %backend.id,
            addr = %backend.addr,
            reason = %t.reason,
            tunnels_closed = closed,
            "backend down; closing its tunnels"
        );
        live.event(format!(
            "{} is down ({closed} tunnels closed): {}",
            backend.id, t.reason
        ));
    }
}

/// A misplaced tunnel and what it needs to be moved.
struct Misplaced {
    entry: Entry,
    rate: u32,
}

/// What one scan found.
struct Scan {
    misplaced: Vec<Misplaced>,
    /// The earliest time ([`now_ms`]) an owner's hold ends, if some tunnel waits on one.
    next_hold_end: Option<u64>,
}

/// Where one tunnel stands.
enum Verdict {
    /// Where it belongs, or not tether's to move (no rebalancing, its backend down or
    /// gone, already closing).
    Stays,
    /// It belongs elsewhere, on a backend that has not yet been up for the hold; it
    /// ends at this [`now_ms`].
    Waits(u64),
    Misplaced(Misplaced),
}

/// Runs until `stop`, draining misplaced tunnels whenever poked.
pub async fn run(live: Arc<Live>, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = live.rebalance_wanted() => {}
            () = stop.cancelled() => return,
        }
        loop {
            let scan = scan(&live.load(), &live);
            if scan.misplaced.is_empty() {
                let Some(at) = scan.next_hold_end else { break };
                let wait = Duration::from_millis(at.saturating_sub(now_ms()));
                tokio::select! {
                    () = tokio::time::sleep(wait) => continue,
                    () = live.rebalance_wanted() => continue,
                    () = stop.cancelled() => return,
                }
            }
            if !drain(&live, scan.misplaced, &stop).await {
                return;
            }
        }
    }
}

fn scan(snap: &Snapshot, live: &Live) -> Scan {
    let now = now_ms();
    let mut out = Scan {
        misplaced: Vec::new(),
        next_hold_end: None,
    };
    for entry in live.registry.entries() {
        match judge(snap, live, entry, now) {
            Verdict::Stays => {}
            Verdict::Waits(held) => {
                out.next_hold_end = Some(out.next_hold_end.map_or(held, |t| t.min(held)));
            }
            Verdict::Misplaced(m) => out.misplaced.push(m),
        }
    }
    out
}

/// Judges `entry` as the walk new connections use would place it now.
fn judge(snap: &Snapshot, live: &Live, entry: Entry, now: u64) -> Verdict {
    let Some(up) = snap.upstream(&entry.upstream) else {
        return Verdict::Stays;
    };
    let Some(policy) = up.config.rebalance else {
        return Verdict::Stays;
    };
    // Tunnels on a backend that is down or gone are being closed already.
    let Some(current) = up.backends.iter().find(|b| b.key == entry.backend) else {
        return Verdict::Stays;
    };
    if !current.health.is_up() || entry.ctl.reason().is_some() {
        return Verdict::Stays;
    }
    let Some(owner) = up.destination(entry.key, &entry.backend, &live.registry) else {
        return Verdict::Stays;
    };
    let Some(since) = owner.health.up_since() else {
        return Verdict::Stays;
    };
    let held = since + policy.hold.as_millis() as u64;
    if held > now {
        return Verdict::Waits(held);
    }
    Verdict::Misplaced(Misplaced {
        entry,
        rate: policy.rate,
    })
}

/// Closes `misplaced` tunnels, each upstream at its rate, each judged again just
/// before: the tunnels closed before it (and their clients' reconnects) change the
/// counts bounded load goes by, and its owner may have gone down again. False if
/// stopped.
async fn drain(live: &Live, misplaced: Vec<Misplaced>, stop: &CancellationToken) -> bool {
    let mut closed = 0usize;
    let total = misplaced.len();
    let generation = live.subscribe();
    let snap = live.load();
    for m in misplaced {
        // A reload may have changed the policy or the rate (or the placement): the
        // caller scans again under the new snapshot.
        if generation.has_changed().unwrap_or(true) {
            if closed > 0 {
                info!(
                    closed,
                    found = total,
                    "rebalancing interrupted by a reload; rescanning"
                );
                live.event(format!(
                    "rebalancing interrupted by a reload after {closed} of {total} misplaced tunnels"
                ));
            }
            return true;
        }
        let Verdict::Misplaced(m) = judge(&snap, live, m.entry, now_ms()) else {
            continue;
        };
        if !m.entry.ctl.close(CloseReason::Rebalance) {
            continue;
        }
        closed += 1;
        let pause = Duration::from_secs(1).div_f64(f64::from(m.rate));
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = stop.cancelled() => return false,
        }
    }
    // Each was judged again before its close; none may have needed it any more.
    if closed > 0 {
        info!(
            closed,
            found = total,
            "rebalanced misplaced tunnels back to their owners"
        );
        live.event(format!(
            "rebalanced {closed} misplaced tunnels back to their owners"
        ));
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn config(rebalance: &str) -> Config {
        let text = format!(
            "[[listener]]\nbind = \"127.0.0.1:0\"\n[[route]]\npath = \"/\"\nupstream = \"app\"\n\
             [upstream.app]\nbackends = [{{ addr = \"127.0.0.1:1\", name = \"a\" }}, {{ addr = \"127.0.0.1:2\", name = \"b\" }}]\n\
             {rebalance}\n[upstream.app.health]\ninterval = \"1h\"\n"
        );
        Config::parse(&text, "t").unwrap()
    }

    /// With bounded load a tunnel is judged as if placed now, without itself in the
    /// counts: on a backend that is exactly full it is where it belongs. Counted in,
    /// every tunnel on a full backend looked misplaced and a reload closed them all.
    #[tokio::test]
    async fn a_tunnel_on_a_full_backend_that_placed_it_is_not_misplaced() {
        let live = Live::new(&config(
            "balance_factor = 1.5\nrebalance = \"drain\"\nrebalance_hold = \"1ms\"",
        ));
        let snap = live.load();
        let app = snap.upstream("app").unwrap();
        let (a, b) = (app.backend("a").unwrap(), app.backend("b").unwrap());
        let mut owned_by_a = (0u64..).filter(|k| app.owner(*k).unwrap().id.as_ref() == "a");
        // Three tunnels of a's principals, placed one by one: the third found a at
        // 2 < ceil(1.5 × 3 / 2) = 3, so all three went to a, which is now full.
        let mut on_a = Vec::new();
        for k in owned_by_a.by_ref().take(3) {
            assert_eq!(app.candidates(k, &live.registry).next().unwrap().key, a.key);
            let t = live
                .registry
                .register("app".into(), "/".into(), a.key.clone(), k, None);
            on_a.push(t);
        }
        let found = scan(&snap, &live);
        assert!(found.misplaced.is_empty() && found.next_hold_end.is_none());
        // Not vacuous: a tunnel of a's on b while a has room belongs on a.
        let k = owned_by_a.next().unwrap();
        let _on_b = live
            .registry
            .register("app".into(), "/".into(), b.key.clone(), k, None);
        on_a.truncate(1);
        let found = scan(&snap, &live);
        assert!(!found.misplaced.is_empty() || found.next_hold_end.is_some());
    }

    #[tokio::test]
    async fn a_reload_to_off_stops_a_drain_under_way() {
        let live = Arc::new(Live::new(&config(
            "rebalance = \"drain\"\nrebalance_hold = \"1ms\"\nrebalance_rate = 1",
        )));
        let snap = live.load();
        let app = snap.upstream("app").unwrap();
        let a = app.backend("a").unwrap().key.clone();
        // Ten tunnels on a whose principals b owns: misplaced.
        let keys = (0u64..).filter(|k| app.owner(*k).unwrap().id.as_ref() == "b");
        let tunnels: Vec<_> = keys
            .take(10)
            .map(|k| {
                live.registry
                    .register("app".into(), "/".into(), a.clone(), k, None)
            })
            .collect();
        let stop = CancellationToken::new();
        tokio::spawn(run(live.clone(), stop.clone()));
        live.poke_rebalancer();
        let first = live.registry.entries();
        // One close per second: the first comes at once.
        futures_util::future::select_all(first.iter().map(|e| Box::pin(e.ctl.closed()))).await;
        live.replace(&config("rebalance = \"off\""));
        live.poke_rebalancer();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !live.events().iter().any(|e| e.text.starts_with("rebalanc")) {
            assert!(tokio::time::Instant::now() < deadline, "the drain went on");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let closed = first.iter().filter(|e| e.ctl.reason().is_some()).count();
        assert!(closed <= 2, "{closed} closed after the reload to off");
        stop.cancel();
        drop(tunnels);
    }
}
