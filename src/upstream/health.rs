//! Per-backend state that outlives a reload: the connect backoff and its counters.
//!
//! Keyed by backend id and address in a [`HealthTable`] that every snapshot build
//! consults, so a reload that keeps a backend keeps its state. No I/O here: the data
//! path reports outcomes, this module only remembers them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

/// Milliseconds since the first call in this process: a cheap monotonic clock that fits
/// in an atomic.
pub fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// What the data path has learned about one backend.
#[derive(Debug, Default)]
pub struct Health {
    /// [`now_ms`] until which new connections skip this backend (0: no backoff). Set
    /// by a failed connect so one dead node costs one failed connect, not one per
    /// request; expires by itself so the next request after it probes the node again.
    backoff_until: AtomicU64,
    connect_failures: AtomicU64,
}

impl Health {
    /// True while a recent connect failure says "skip me".
    pub fn backing_off(&self, now: u64) -> bool {
        self.backoff_until.load(Ordering::Relaxed) > now
    }

    /// A connect failed (refused, unreachable or timed out).
    pub fn connect_failed(&self, backoff: Duration) {
        self.connect_failures.fetch_add(1, Ordering::Relaxed);
        let until = now_ms() + backoff.as_millis() as u64;
        self.backoff_until.fetch_max(until, Ordering::Relaxed);
    }

    /// A connect succeeded: the backend is reachable again.
    pub fn connect_succeeded(&self) {
        self.backoff_until.store(0, Ordering::Relaxed);
    }

    /// Failed connects since this state was created.
    pub fn connect_failures(&self) -> u64 {
        self.connect_failures.load(Ordering::Relaxed)
    }
}

/// Every live [`Health`], by `(id, address)`. Entries die with the last snapshot that
/// uses them.
#[derive(Debug, Default)]
pub struct HealthTable {
    entries: Mutex<HashMap<(String, SocketAddr), Weak<Health>>>,
}

impl HealthTable {
    /// The state for this backend: the existing one if a current snapshot has it.
    pub fn get(&self, id: &str, addr: SocketAddr) -> Arc<Health> {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.retain(|_, w| w.strong_count() > 0);
        let key = (id.to_owned(), addr);
        if let Some(h) = entries.get(&key).and_then(Weak::upgrade) {
            return h;
        }
        let h = Arc::new(Health::default());
        entries.insert(key, Arc::downgrade(&h));
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_connect_backs_off_until_it_expires_or_succeeds() {
        let h = Health::default();
        let now = now_ms();
        assert!(!h.backing_off(now));
        h.connect_failed(Duration::from_secs(5));
        assert!(h.backing_off(now));
        assert!(!h.backing_off(now + 6_000));
        h.connect_succeeded();
        assert!(!h.backing_off(now));
        assert_eq!(h.connect_failures(), 1);
    }

    #[test]
    fn table_shares_state_while_a_snapshot_holds_it() {
        let t = HealthTable::default();
        let addr = "127.0.0.1:1".parse().unwrap();
        let a = t.get("a", addr);
        a.connect_failed(Duration::from_secs(1));
        assert!(Arc::ptr_eq(&a, &t.get("a", addr)));
        assert!(!Arc::ptr_eq(
            &a,
            &t.get("a", "127.0.0.1:2".parse().unwrap())
        ));
        drop(a);
        assert_eq!(t.get("a", addr).connect_failures(), 0);
    }
}
