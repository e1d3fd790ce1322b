//! Backend health: a pure counter that turns probe results and real-traffic failures
//! into Up/Down transitions, and the per-backend state that outlives a reload.
//!
//! Two inputs, one state:
//! - active probes: `fall` consecutive failures take an Up backend Down, `rise`
//!   consecutive successes bring a Down backend Up;
//! - passive failures (a refused or timed-out connect, a backend that does not answer
//!   in time): `passive_fails` of them within `passive_window` take it Down.
//!
//! Down means: skipped for new connections, its tunnels closed (by the caller, on the
//! transition), and probed until `rise` successes. The counter has no I/O and no clock;
//! callers pass the time. [`Health`] wraps it for sharing, keyed by backend id and
//! address in [`Lasting`] so a reload that keeps a backend keeps its state (and its
//! pooled keep-alive connections).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use super::pool::Pool;
use crate::config::UpstreamConfig;

/// Milliseconds since the first call in this process: a cheap monotonic clock that fits
/// in an atomic.
pub fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// When a backend changes state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    pub rise: u32,
    pub fall: u32,
    pub passive_fails: u32,
    pub passive_window: Duration,
}

/// The pure state machine. `streak` counts consecutive probe results that argue for
/// the other state; `passive` holds the times of recent real-traffic failures.
#[derive(Debug, Clone)]
pub struct Counter {
    up: bool,
    streak: u32,
    passive: VecDeque<u64>,
}

impl Counter {
    pub fn new(up: bool) -> Counter {
        Counter {
            up,
            streak: 0,
            passive: VecDeque::new(),
        }
    }

    pub fn is_up(&self) -> bool {
        self.up
    }

    /// An active probe result. Returns the new state on a transition.
    pub fn probe(&mut self, ok: bool, t: &Thresholds) -> Option<bool> {
        if ok == self.up {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = if self.up { t.fall } else { t.rise };
        (self.streak >= needed.max(1)).then(|| self.flip())
    }

    /// A failure on real traffic at `now_ms`. Returns `Some(false)` when it takes the
    /// backend down.
    pub fn passive_failure(&mut self, now_ms: u64, t: &Thresholds) -> Option<bool> {
        if !self.up {
            return None;
        }
        let window = t.passive_window.as_millis() as u64;
        self.passive.push_back(now_ms);
        while self.passive.front().is_some_and(|&at| at + window < now_ms) {
            self.passive.pop_front();
        }
        (self.passive.len() as u32 >= t.passive_fails.max(1)).then(|| self.flip())
    }

    fn flip(&mut self) -> bool {
        self.up = !self.up;
        self.streak = 0;
        self.passive.clear();
        self.up
    }
}

/// A state change, with why, for the one log line and the status API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub up: bool,
    pub reason: String,
}

/// The shared health of one backend.
#[derive(Debug)]
pub struct Health {
    /// Mirrors `counter.up` for lock-free reads on the request path.
    up: AtomicBool,
    counter: Mutex<Counter>,
    /// [`now_ms`] of the last transition (or of creation).
    changed_at: AtomicU64,
    reason: Mutex<String>,
    connect_failures: AtomicU64,
    /// A check of whether it answers at all is under way (see
    /// `Proxy::unanswered_upgrade`).
    checking: AtomicBool,
}

impl Health {
    /// A backend's state from its start (`how`: "started", "added by a reload").
    pub fn new(up: bool, how: &str) -> Health {
        Health {
            up: AtomicBool::new(up),
            counter: Mutex::new(Counter::new(up)),
            changed_at: AtomicU64::new(now_ms()),
            reason: Mutex::new(format!("{how} {}", if up { "up" } else { "down" })),
            connect_failures: AtomicU64::new(0),
            checking: AtomicBool::new(false),
        }
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Since when the backend has been up ([`now_ms`]), if it is.
    pub fn up_since(&self) -> Option<u64> {
        self.is_up()
            .then(|| self.changed_at.load(Ordering::Relaxed))
    }

    /// The last transition: when ([`now_ms`]) and why.
    pub fn last_change(&self) -> (u64, String) {
        let reason = self
            .reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        (self.changed_at.load(Ordering::Relaxed), reason)
    }

    /// Records a probe result; `detail` says what the probe saw.
    pub fn probe(&self, ok: bool, t: &Thresholds, detail: &str) -> Option<Transition> {
        let to = self.counter().probe(ok, t)?;
        let reason = if to {
            format!("{} successful probe{}", t.rise, plural(t.rise))
        } else {
            format!("{} failed probe{}, last: {detail}", t.fall, plural(t.fall))
        };
        Some(self.changed(to, reason))
    }

    /// Records a failure on real traffic (connect refused or timed out, no answer).
    pub fn passive_failure(&self, t: &Thresholds, detail: &str) -> Option<Transition> {
        self.connect_failures.fetch_add(1, Ordering::Relaxed);
        let to = self.counter().passive_failure(now_ms(), t)?;
        let window = crate::config::human(t.passive_window);
        let reason = format!(
            "{} failure{} on live traffic within {window}, last: {detail}",
            t.passive_fails,
            plural(t.passive_fails)
        );
        Some(self.changed(to, reason))
    }

    /// Claims the backend's one check at a time, until the guard drops; `None` if one
    /// is under way.
    pub fn start_check(self: &Arc<Self>) -> Option<Check> {
        (!self.checking.swap(true, Ordering::AcqRel)).then(|| Check(self.clone()))
    }

    /// A check is under way.
    pub fn checking(&self) -> bool {
        self.checking.load(Ordering::Acquire)
    }

    /// Real-traffic failures since this state was created.
    pub fn connect_failures(&self) -> u64 {
        self.connect_failures.load(Ordering::Relaxed)
    }

    fn counter(&self) -> std::sync::MutexGuard<'_, Counter> {
        self.counter.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn changed(&self, up: bool, reason: String) -> Transition {
        self.changed_at.store(now_ms(), Ordering::Relaxed);
        self.up.store(up, Ordering::Relaxed);
        *self.reason.lock().unwrap_or_else(|p| p.into_inner()) = reason.clone();
        Transition { up, reason }
    }
}

/// Per-backend state that outlives a reload: every live [`Health`], by `(id, address)`,
/// and every backend's keep-alive pool, by address and timeouts. Snapshots hold `Arc`s;
/// an entry dies with the last snapshot that uses it.
#[derive(Debug, Default)]
pub struct Lasting {
    health: Mutex<HashMap<(String, SocketAddr), Weak<Health>>>,
    pools: Mutex<HashMap<PoolKey, Weak<Pool>>>,
    /// The first snapshot is built: new backends from now on come with a reload.
    settled: AtomicBool,
}

/// A backend's pool is kept by its address and the timeouts it is built with
/// (connect, keep-alive, response): a change of one of them gets a fresh pool.
type PoolKey = (SocketAddr, [Duration; 3]);

impl Lasting {
    /// The state for this backend: the existing one if a current snapshot has it, else
    /// a new one starting `up` or not.
    pub fn health(&self, id: &str, addr: SocketAddr, up: bool) -> Arc<Health> {
        let how = if self.settled.load(Ordering::Relaxed) {
            "added by a reload,"
        } else {
            "started"
        };
        shared(&self.health, (id.to_owned(), addr), || Health::new(up, how))
    }

    /// The first snapshot is built; backends new to later ones are added by reloads.
    pub fn settle(&self) {
        self.settled.store(true, Ordering::Relaxed);
    }

    /// The keep-alive pool for `addr`: the current snapshot's when the timeouts are
    /// the same, so a reload keeps the keep-alive connections to the backends it keeps
    /// (as Envoy keeps an unchanged cluster's pool), else one `build` makes.
    pub fn pool(
        &self,
        addr: SocketAddr,
        config: &UpstreamConfig,
        build: impl FnOnce() -> Pool,
    ) -> Arc<Pool> {
        let timeouts = [
            config.connect_timeout,
            config.keepalive_timeout,
            config.response_timeout,
        ];
        shared(&self.pools, (addr, timeouts), build)
    }
}

/// The live value under `key` in `map`, or a new one `make` makes (entries no snapshot
/// holds any more are dropped on the way).
fn shared<K: Eq + std::hash::Hash, V>(
    map: &Mutex<HashMap<K, Weak<V>>>,
    key: K,
    make: impl FnOnce() -> V,
) -> Arc<V> {
    let mut entries = map.lock().unwrap_or_else(|p| p.into_inner());
    entries.retain(|_, w| w.strong_count() > 0);
    if let Some(v) = entries.get(&key).and_then(Weak::upgrade) {
        return v;
    }
    let v = Arc::new(make());
    entries.insert(key, Arc::downgrade(&v));
    v
}

/// A claimed check (see [`Health::start_check`]); dropping it, however the check
/// ends, lets the next one start.
#[derive(Debug)]
pub struct Check(Arc<Health>);

impl Check {
    pub fn health(&self) -> &Arc<Health> {
        &self.0
    }
}

impl Drop for Check {
    fn drop(&mut self) {
        self.0.checking.store(false, Ordering::Release);
    }
}

/// The plural "s" of a count's noun.
fn plural(n: u32) -> &'static str {
    if n == 1 { "" } else { "s" }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Thresholds = Thresholds {
        rise: 2,
        fall: 3,
        passive_fails: 2,
        passive_window: Duration::from_secs(10),
    };

    #[test]
    fn falls_after_fall_consecutive_failures_only() {
        let mut c = Counter::new(true);
        assert_eq!(c.probe(false, &T), None);
        assert_eq!(c.probe(false, &T), None);
        assert_eq!(c.probe(true, &T), None, "a success resets the streak");
        assert_eq!(c.probe(false, &T), None);
        assert_eq!(c.probe(false, &T), None);
        assert_eq!(c.probe(false, &T), Some(false));
        assert!(!c.is_up());
    }

    #[test]
    fn rises_after_rise_consecutive_successes() {
        let mut c = Counter::new(false);
        assert_eq!(c.probe(true, &T), None);
        assert_eq!(c.probe(false, &T), None);
        assert_eq!(c.probe(true, &T), None);
        assert_eq!(c.probe(true, &T), Some(true));
        assert_eq!(c.probe(true, &T), None, "no second transition");
    }

    #[test]
    fn passive_failures_count_within_the_window() {
        let mut c = Counter::new(true);
        assert_eq!(c.passive_failure(1_000, &T), None);
        assert_eq!(
            c.passive_failure(12_000, &T),
            None,
            "the first one aged out"
        );
        assert_eq!(c.passive_failure(13_000, &T), Some(false));
        assert_eq!(c.passive_failure(13_001, &T), None, "already down");
        // Only probes bring it back.
        assert_eq!(c.probe(true, &T), None);
        assert_eq!(c.probe(true, &T), Some(true));
    }

    #[test]
    fn health_reports_transitions_once_with_a_reason() {
        let h = Health::new(true, "started");
        assert!(h.is_up() && h.up_since().is_some());
        let one = Thresholds {
            passive_fails: 1,
            ..T
        };
        let t = h.passive_failure(&one, "connection refused").unwrap();
        assert!(!t.up);
        assert!(t.reason.contains("connection refused"), "{}", t.reason);
        assert!(!h.is_up() && h.up_since().is_none());
        assert_eq!(h.passive_failure(&one, "again"), None);
        assert_eq!(h.connect_failures(), 2);
        assert_eq!(h.probe(true, &T, "ok"), None);
        let t = h.probe(true, &T, "ok").unwrap();
        assert_eq!(
            t,
            Transition {
                up: true,
                reason: "2 successful probes".into()
            }
        );
        assert_eq!(h.last_change().1, "2 successful probes");
    }

    #[test]
    fn table_shares_state_while_a_snapshot_holds_it() {
        let t = Lasting::default();
        let addr = "127.0.0.1:1".parse().unwrap();
        let a = t.health("a", addr, true);
        assert!(
            Arc::ptr_eq(&a, &t.health("a", addr, false)),
            "existing state wins"
        );
        assert!(!Arc::ptr_eq(
            &a,
            &t.health("a", "127.0.0.1:2".parse().unwrap(), true)
        ));
        drop(a);
        assert!(
            !t.health("a", addr, false).is_up(),
            "a fresh state after the last user left"
        );
    }
}
