//! Every live tunnel, by backend and principal, with a handle to close it.
//!
//! A tunnel registers when its upgrade completes and deregisters when its
//! [`Registration`] drops, so the registry is exact. Closing is a request: the
//! tunnel's task sees the reason on its [`TunnelCtl`] and closes itself (with a Close
//! frame when it is between frames). The registry holds no sockets.
//!
//! - "close everything on backend B" (B went down): [`Registry::close_backend`], which
//!   touches only B's tunnels;
//! - "which tunnels sit on a backend that no longer owns their principal": the
//!   rebalancer walks [`Registry::entries`];
//! - bounded load reads [`Registry::bound_load`] and [`Registry::bound_total`] per
//!   upstream: live tunnels and upgrades on their way ([`Opening`]), so a burst of
//!   upgrades that all arrive before the first is answered still meets the cap;
//! - "where are this principal's tunnels" (a plain request on a `follow_socket` route
//!   goes there first, so a push reaches the socket; `/api/owner` lists them):
//!   [`Registry::holders`].

use std::collections::HashMap;
use std::collections::hash_map::Entry as Slot;
use std::hash::Hash;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use std::task::{Poll, Waker};

use futures_util::task::AtomicWaker;

use crate::upstream::health::now_ms;

/// Why tether closes a tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum CloseReason {
    /// Its backend went down.
    BackendDown = 1,
    /// Its principal now belongs to another backend.
    Rebalance = 2,
    /// tether is shutting down.
    Shutdown = 3,
    /// A reload removed its backend from the configuration.
    Reload = 4,
    /// No byte moved for the route's `idle_timeout`.
    Idle = 5,
}

impl CloseReason {
    /// The WebSocket close code the client gets (RFC 6455 §7.4, IANA registry):
    /// 1012 "service restart" tells it to reconnect (and it lands elsewhere), 1001
    /// "going away" that this endpoint is leaving.
    pub fn code(self) -> u16 {
        match self {
            CloseReason::BackendDown | CloseReason::Rebalance => 1012,
            CloseReason::Shutdown | CloseReason::Reload | CloseReason::Idle => 1001,
        }
    }

    /// The Close frame's reason text: why, for the people reading client logs.
    pub fn why(self) -> &'static str {
        match self {
            CloseReason::BackendDown => "tether: backend down",
            CloseReason::Rebalance => "tether: rebalance",
            CloseReason::Shutdown => "tether: shutting down",
            CloseReason::Reload => "tether: backend removed",
            CloseReason::Idle => "tether: idle timeout",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::BackendDown => "backend-down",
            CloseReason::Rebalance => "rebalance",
            CloseReason::Shutdown => "shutdown",
            CloseReason::Reload => "reload",
            CloseReason::Idle => "idle",
        }
    }

    fn from_u8(v: u8) -> Option<CloseReason> {
        [
            CloseReason::BackendDown,
            CloseReason::Rebalance,
            CloseReason::Shutdown,
            CloseReason::Reload,
            CloseReason::Idle,
        ]
        .into_iter()
        .find(|r| *r as u8 == v)
    }
}

/// How long a tunnel one side has ended may stay without traffic (HAProxy's
/// `timeout client-fin` / `server-fin`). A WebSocket has no use for a half-open
/// connection: the peer left is expected to finish its closing at once. One that does
/// not (a client gone without a Close whose backend ignores the end of stream, or an
/// HTTP/2 client's RST_STREAM, which hyper reports as an end of stream) would otherwise
/// hold the tunnel, its backend connection and its slot until `idle_timeout`.
pub const HALF_CLOSED_IDLE_MS: u64 = 5_000;

/// One tunnel's shared state: its close handle (the first reason set wins) and when
/// it last moved a byte, which the idle sweeper reads.
///
/// Idle timeouts live here rather than as a timer in each tunnel's task: one sweeper
/// per process checks every tunnel's timestamp once a second, so an idle tunnel holds
/// no timer and a busy one pays an atomic store per read instead of timer upkeep.
#[derive(Debug, Default)]
pub struct TunnelCtl {
    reason: AtomicU8,
    /// One side has ended its stream: idle for [`HALF_CLOSED_IDLE_MS`] is enough.
    half_closed: AtomicBool,
    /// The tunnel task, woken by [`TunnelCtl::close`].
    waker: AtomicWaker,
    /// [`now_ms`] of the last byte in either direction.
    last_active: AtomicU64,
    /// 0: never idle-closed.
    idle_ms: u64,
}

impl TunnelCtl {
    /// A tunnel closed after `idle` without traffic (`None`: never).
    pub fn new(idle: Option<Duration>) -> TunnelCtl {
        TunnelCtl {
            last_active: AtomicU64::new(now_ms()),
            idle_ms: idle.map_or(0, |d| (d.as_millis() as u64).max(1)),
            ..TunnelCtl::default()
        }
    }

    /// A byte moved.
    pub fn touch(&self) {
        self.last_active.store(now_ms(), Ordering::Relaxed);
    }

    /// One side has ended its stream (the other may still send, RFC 9293 half-close).
    pub fn half_close(&self) {
        self.half_closed.store(true, Ordering::Relaxed);
    }

    /// True if the tunnel has been idle past its timeout at `now`: the route's, or once
    /// half-closed, at most [`HALF_CLOSED_IDLE_MS`].
    fn idle_at(&self, now: u64) -> bool {
        let limit = if self.half_closed.load(Ordering::Relaxed) {
            match self.idle_ms {
                0 => HALF_CLOSED_IDLE_MS,
                ms => ms.min(HALF_CLOSED_IDLE_MS),
            }
        } else {
            self.idle_ms
        };
        limit > 0 && now.saturating_sub(self.last_active.load(Ordering::Relaxed)) >= limit
    }

    /// Asks the tunnel to close. False if it was already asked.
    pub fn close(&self, reason: CloseReason) -> bool {
        let first = self
            .reason
            .compare_exchange(0, reason as u8, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if first {
            // A tunnel not yet polled sees the reason when it first is.
            self.waker.wake();
        }
        first
    }

    pub fn reason(&self) -> Option<CloseReason> {
        CloseReason::from_u8(self.reason.load(Ordering::Acquire))
    }

    /// The task to wake when the tunnel is told to close; its poll registers it each
    /// time, then checks [`TunnelCtl::reason`].
    pub fn register(&self, waker: &Waker) {
        self.waker.register(waker);
    }

    /// Resolves once [`TunnelCtl::close`] has been called.
    pub async fn closed(&self) -> CloseReason {
        std::future::poll_fn(|cx| {
            self.register(cx.waker());
            self.reason().map_or(Poll::Pending, Poll::Ready)
        })
        .await
    }
}

/// A backend's identity across snapshots (the health table's key): its id and address,
/// compared by value. One pointer wide, because every tunnel's registration and
/// registry entry carries one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BackendKey(Arc<BackendIdentity>);

#[derive(Debug, PartialEq, Eq, Hash)]
pub struct BackendIdentity {
    pub id: Arc<str>,
    pub addr: SocketAddr,
}

impl BackendKey {
    pub fn new(id: Arc<str>, addr: SocketAddr) -> BackendKey {
        BackendKey(Arc::new(BackendIdentity { id, addr }))
    }
}

impl std::ops::Deref for BackendKey {
    type Target = BackendIdentity;

    fn deref(&self) -> &BackendIdentity {
        &self.0
    }
}

/// What the registry knows about one tunnel.
#[derive(Debug, Clone)]
pub struct Entry {
    pub upstream: Arc<str>,
    /// The route label, for metrics.
    pub route: Arc<str>,
    pub backend: BackendKey,
    /// The principal's placement key.
    pub key: u64,
    pub ctl: Arc<TunnelCtl>,
}

#[derive(Debug, Default)]
pub struct Registry {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    next_id: u64,
    /// Tunnels by backend, then by registration id.
    by_backend: HashMap<BackendKey, HashMap<u64, Entry>>,
    /// Live tunnels and upgrades on their way per (upstream, backend).
    load: HashMap<(Arc<str>, BackendKey), Count>,
    /// The same per upstream.
    totals: HashMap<Arc<str>, Count>,
    /// Live tunnels per principal key, counted by (upstream, backend): a few entries
    /// per key even when thousands of tunnels share one (the `ip` fallback behind a
    /// NAT), so a drop and a lookup stay cheap under the lock.
    by_key: HashMap<u64, Vec<Holder>>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Count {
    live: usize,
    /// Upgrades sent and not yet answered ([`Opening`]).
    opening: usize,
}

impl Inner {
    /// Applies `f` to the counts of `backend` in `upstream`, and of `upstream`.
    fn count(&mut self, upstream: &Arc<str>, backend: &BackendKey, f: impl Fn(&mut Count)) {
        update(&mut self.load, (upstream.clone(), backend.clone()), &f);
        update(&mut self.totals, upstream.clone(), &f);
    }
}

/// Applies `f` to `k`'s count; a count back at zero is removed.
fn update<K: Hash + Eq>(map: &mut HashMap<K, Count>, k: K, f: impl FnOnce(&mut Count)) {
    match map.entry(k) {
        Slot::Occupied(mut o) => {
            f(o.get_mut());
            if o.get().live == 0 && o.get().opening == 0 {
                o.remove();
            }
        }
        Slot::Vacant(v) => {
            let mut c = Count::default();
            f(&mut c);
            v.insert(c);
        }
    }
}

/// An upgrade on its way to a backend: bounded load counts it with the backend's live
/// tunnels until it is dropped (once its tunnel has registered, or the upgrade failed).
#[derive(Debug)]
pub struct Opening {
    registry: Arc<Registry>,
    upstream: Arc<str>,
    backend: BackendKey,
}

impl Drop for Opening {
    fn drop(&mut self) {
        self.registry
            .lock()
            .count(&self.upstream, &self.backend, |c| {
                c.opening = c.opening.saturating_sub(1);
            });
    }
}

/// A backend holding live tunnels of one principal key in one upstream.
#[derive(Debug)]
struct Holder {
    upstream: Arc<str>,
    backend: BackendKey,
    /// How many; the holder is removed when the last closes.
    tunnels: usize,
}

/// Keeps a tunnel registered; dropping it deregisters.
#[derive(Debug)]
pub struct Registration {
    registry: Arc<Registry>,
    id: u64,
    upstream: Arc<str>,
    backend: BackendKey,
    key: u64,
    pub ctl: Arc<TunnelCtl>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut inner = self.registry.lock();
        if let Some(m) = inner.by_backend.get_mut(&self.backend) {
            m.remove(&self.id);
            if m.is_empty() {
                inner.by_backend.remove(&self.backend);
            }
        }
        if let Some(v) = inner.by_key.get_mut(&self.key) {
            if let Some(i) = v
                .iter()
                .position(|h| h.backend == self.backend && h.upstream == self.upstream)
            {
                v[i].tunnels -= 1;
                if v[i].tunnels == 0 {
                    v.swap_remove(i);
                }
            }
            if v.is_empty() {
                inner.by_key.remove(&self.key);
            }
        }
        inner.count(&self.upstream, &self.backend, |c| {
            c.live = c.live.saturating_sub(1);
        });
    }
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn register(
        self: &Arc<Self>,
        upstream: Arc<str>,
        route: Arc<str>,
        backend: BackendKey,
        key: u64,
        idle: Option<Duration>,
    ) -> Registration {
        let ctl = Arc::new(TunnelCtl::new(idle));
        let mut inner = self.lock();
        inner.next_id += 1;
        let id = inner.next_id;
        let entry = Entry {
            upstream: upstream.clone(),
            route,
            backend: backend.clone(),
            key,
            ctl: ctl.clone(),
        };
        inner
            .by_backend
            .entry(backend.clone())
            .or_default()
            .insert(id, entry);
        inner.count(&upstream, &backend, |c| c.live += 1);
        // Nearly always one holder: a vector of one, not the default first growth to 4.
        let holders = inner
            .by_key
            .entry(key)
            .or_insert_with(|| Vec::with_capacity(1));
        match holders
            .iter_mut()
            .find(|h| h.backend == backend && h.upstream == upstream)
        {
            Some(h) => h.tunnels += 1,
            None => holders.push(Holder {
                upstream: upstream.clone(),
                backend: backend.clone(),
                tunnels: 1,
            }),
        }
        drop(inner);
        Registration {
            registry: self.clone(),
            id,
            upstream,
            backend,
            key,
            ctl,
        }
    }

    /// Asks every tunnel on `backend` (in any upstream) to close; returns how many.
    pub fn close_backend(&self, backend: &BackendKey, reason: CloseReason) -> usize {
        let inner = self.lock();
        inner
            .by_backend
            .get(backend)
            .map_or(0, |m| m.values().filter(|e| e.ctl.close(reason)).count())
    }

    /// Asks every tunnel idle past its timeout at `now` ([`now_ms`]) to close.
    pub fn close_idle(&self, now: u64) -> usize {
        let inner = self.lock();
        inner
            .by_backend
            .values()
            .flat_map(|m| m.values())
            .filter(|e| e.ctl.idle_at(now) && e.ctl.close(CloseReason::Idle))
            .count()
    }

    /// Asks every tunnel to close; returns how many.
    pub fn close_all(&self, reason: CloseReason) -> usize {
        let inner = self.lock();
        inner
            .by_backend
            .values()
            .flat_map(|m| m.values())
            .filter(|e| e.ctl.close(reason))
            .count()
    }

    /// A copy of every entry, for a scan that must not hold the lock.
    pub fn entries(&self) -> Vec<Entry> {
        let inner = self.lock();
        inner
            .by_backend
            .values()
            .flat_map(|m| m.values().cloned())
            .collect()
    }

    /// The backends holding a live tunnel of `upstream` for principal `key` (usually
    /// none or one).
    pub fn holders(&self, upstream: &str, key: u64) -> Vec<BackendKey> {
        let inner = self.lock();
        inner.by_key.get(&key).map_or_else(Vec::new, |holders| {
            holders
                .iter()
                .filter(|h| &*h.upstream == upstream)
                .map(|h| h.backend.clone())
                .collect()
        })
    }

    /// Counts an upgrade to `backend` of `upstream` for bounded load until the
    /// [`Opening`] is dropped.
    pub fn opening(self: &Arc<Self>, upstream: Arc<str>, backend: BackendKey) -> Opening {
        self.lock().count(&upstream, &backend, |c| c.opening += 1);
        Opening {
            registry: self.clone(),
            upstream,
            backend,
        }
    }

    /// Live tunnels of `upstream` on `backend`.
    pub fn load(&self, upstream: &Arc<str>, backend: &BackendKey) -> usize {
        self.counts(upstream, backend).live
    }

    /// The backends of `upstream` holding live tunnels, and how many each holds.
    pub fn held(&self, upstream: &str) -> Vec<(BackendKey, usize)> {
        self.lock()
            .load
            .iter()
            .filter(|((u, _), c)| &**u == upstream && c.live > 0)
            .map(|((_, b), c)| (b.clone(), c.live))
            .collect()
    }

    /// Live tunnels of `upstream`.
    pub fn total(&self, upstream: &str) -> usize {
        self.lock().totals.get(upstream).map_or(0, |c| c.live)
    }

    /// Live tunnels of `upstream` on `backend` and upgrades on their way to it: what
    /// bounded load counts.
    pub fn bound_load(&self, upstream: &Arc<str>, backend: &BackendKey) -> usize {
        let c = self.counts(upstream, backend);
        c.live + c.opening
    }

    /// [`Registry::bound_load`] for the whole of `upstream`.
    pub fn bound_total(&self, upstream: &str) -> usize {
        self.lock()
            .totals
            .get(upstream)
            .map_or(0, |c| c.live + c.opening)
    }

    fn counts(&self, upstream: &Arc<str>, backend: &BackendKey) -> Count {
        self.lock()
            .load
            .get(&(upstream.clone(), backend.clone()))
            .copied()
            .unwrap_or_default()
    }

    /// Live tunnels in all.
    pub fn len(&self) -> usize {
        self.churn().1
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Changes whenever a tunnel is registered or deregistered: (registrations ever,
    /// live tunnels).
    pub fn churn(&self) -> (u64, usize) {
        let inner = self.lock();
        (
            inner.next_id,
            inner.by_backend.values().map(HashMap::len).sum(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str) -> BackendKey {
        BackendKey::new(id.into(), "127.0.0.1:1".parse().unwrap())
    }

    #[test]
    fn a_half_closed_tunnel_is_idle_sooner() {
        let now = now_ms();
        let later = now + HALF_CLOSED_IDLE_MS;
        for idle in [Some(Duration::from_secs(3600)), None] {
            let ctl = TunnelCtl::new(idle);
            assert!(!ctl.idle_at(later), "{idle:?}");
            ctl.half_close();
            assert!(ctl.idle_at(later), "{idle:?}");
            assert!(!ctl.idle_at(now + 1), "{idle:?}");
        }
        // A route timeout shorter than the half-closed one still applies.
        let short = TunnelCtl::new(Some(Duration::from_millis(100)));
        short.half_close();
        assert!(short.idle_at(now + 100));
    }

    #[test]
    fn close_backend_touches_only_that_backend() {
        let r = Arc::new(Registry::default());
        let up: Arc<str> = "app".into();
        let a1 = r.register(up.clone(), "r".into(), key("a"), 1, None);
        let a2 = r.register(up.clone(), "r".into(), key("a"), 2, None);
        let b1 = r.register(up.clone(), "r".into(), key("b"), 3, None);
        assert_eq!(r.close_backend(&key("a"), CloseReason::BackendDown), 2);
        assert_eq!(a1.ctl.reason(), Some(CloseReason::BackendDown));
        assert_eq!(a2.ctl.reason(), Some(CloseReason::BackendDown));
        assert_eq!(b1.ctl.reason(), None);
        // Asking again does not count them twice; the first reason stays.
        assert_eq!(r.close_backend(&key("a"), CloseReason::Rebalance), 0);
        assert_eq!(a1.ctl.reason(), Some(CloseReason::BackendDown));
    }

    #[test]
    fn holders_follow_registrations_per_upstream() {
        let r = Arc::new(Registry::default());
        let (app, other): (Arc<str>, Arc<str>) = ("app".into(), "other".into());
        let ids = |v: Vec<BackendKey>| -> Vec<String> {
            let mut v: Vec<String> = v.iter().map(|b| b.id.to_string()).collect();
            v.sort();
            v
        };
        let t1 = r.register(app.clone(), "r".into(), key("a"), 7, None);
        let t2 = r.register(app.clone(), "r".into(), key("a"), 7, None);
        let t3 = r.register(app.clone(), "r".into(), key("b"), 7, None);
        let t4 = r.register(other.clone(), "r".into(), key("c"), 7, None);
        // The same backend under another upstream is another holder.
        let t5 = r.register(other.clone(), "r".into(), key("a"), 7, None);
        assert_eq!(ids(r.holders("app", 7)), ["a", "b"]);
        assert_eq!(ids(r.holders("other", 7)), ["a", "c"]);
        drop(t5);
        assert_eq!(ids(r.holders("other", 7)), ["c"]);
        assert_eq!(ids(r.holders("app", 7)), ["a", "b"]);
        assert!(r.holders("app", 8).is_empty());
        drop(t1);
        assert_eq!(ids(r.holders("app", 7)), ["a", "b"], "a still holds one");
        drop(t2);
        assert_eq!(ids(r.holders("app", 7)), ["b"]);
        drop((t3, t4));
        assert!(r.holders("app", 7).is_empty());
        assert!(
            r.lock().by_key.is_empty(),
            "the index keeps nothing once all close"
        );
    }

    #[test]
    fn counts_follow_registrations() {
        let r = Arc::new(Registry::default());
        let (app, other): (Arc<str>, Arc<str>) = ("app".into(), "other".into());
        let quiet = r.churn();
        assert_eq!(r.churn(), quiet, "nothing happened");
        let t1 = r.register(app.clone(), "r".into(), key("a"), 1, None);
        let t2 = r.register(app.clone(), "r".into(), key("a"), 2, None);
        let t3 = r.register(other.clone(), "r".into(), key("a"), 3, None);
        assert_eq!(
            (
                r.load(&app, &key("a")),
                r.total("app"),
                r.total("other"),
                r.len()
            ),
            (2, 2, 1, 3)
        );
        let opened = r.churn();
        assert_ne!(opened, quiet);
        drop(t1);
        drop(t3);
        assert_ne!(r.churn(), opened, "closes are churn too");
        // One closed and one opened between two looks: the same count, still churn.
        let before = r.churn();
        let t4 = r.register(other.clone(), "r".into(), key("b"), 4, None);
        drop(t4);
        assert_ne!(r.churn(), before);
        assert_eq!(
            (
                r.load(&app, &key("a")),
                r.total("app"),
                r.total("other"),
                r.len()
            ),
            (1, 1, 0, 1)
        );
        assert_eq!(r.entries()[0].key, 2);
        drop(t2);
        assert!(r.is_empty());
    }

    #[test]
    fn upgrades_on_their_way_count_for_bounded_load_only() {
        let r = Arc::new(Registry::default());
        let app: Arc<str> = "app".into();
        let counts = |r: &Registry| {
            (
                r.load(&app, &key("a")),
                r.total("app"),
                r.bound_load(&app, &key("a")),
                r.bound_total("app"),
            )
        };
        let opening = r.opening(app.clone(), key("a"));
        let failed = r.opening(app.clone(), key("a"));
        assert_eq!(counts(&r), (0, 0, 2, 2));
        drop(failed);
        let t = r.register(app.clone(), "r".into(), key("a"), 1, None);
        drop(opening);
        assert_eq!(counts(&r), (1, 1, 1, 1));
        drop(t);
        assert_eq!(counts(&r), (0, 0, 0, 0));
        let inner = r.lock();
        assert!(inner.load.is_empty() && inner.totals.is_empty());
    }

    #[test]
    fn idle_tunnels_are_closed_by_the_sweep_and_busy_ones_are_not() {
        let r = Arc::new(Registry::default());
        let up: Arc<str> = "app".into();
        let quiet = r.register(
            up.clone(),
            "r".into(),
            key("a"),
            1,
            Some(Duration::from_secs(1)),
        );
        let busy = r.register(
            up.clone(),
            "r".into(),
            key("a"),
            2,
            Some(Duration::from_secs(1)),
        );
        let never = r.register(up.clone(), "r".into(), key("a"), 3, None);
        let later = now_ms() + 1500;
        busy.ctl.last_active.store(later, Ordering::Relaxed);
        assert_eq!(r.close_idle(later), 1);
        assert_eq!(quiet.ctl.reason(), Some(CloseReason::Idle));
        assert_eq!(busy.ctl.reason(), None);
        assert_eq!(never.ctl.reason(), None);
        assert_eq!(
            r.close_idle(later + 10_000_000),
            1,
            "only the busy one was still open and due"
        );
        assert_eq!(never.ctl.reason(), None);
    }

    #[tokio::test]
    async fn a_tunnel_waiting_or_not_sees_its_close() {
        let ctl = Arc::new(TunnelCtl::default());
        assert!(ctl.close(CloseReason::Shutdown));
        assert_eq!(ctl.closed().await, CloseReason::Shutdown);
        let ctl = Arc::new(TunnelCtl::default());
        let waiter = tokio::spawn({
            let ctl = ctl.clone();
            async move { ctl.closed().await }
        });
        tokio::task::yield_now().await;
        ctl.close(CloseReason::Rebalance);
        assert_eq!(waiter.await.unwrap(), CloseReason::Rebalance);
        assert_eq!(CloseReason::Rebalance.code(), 1012);
        assert_eq!(CloseReason::Shutdown.code(), 1001);
    }
}
