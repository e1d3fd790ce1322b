//! Upstreams and their backends as one snapshot sees them: identity, placement table,
//! settings, the keep-alive pool, and a link to the long-lived [`Health`] of each
//! backend.
//!
//! [`Upstream::candidates`] is the eligibility walk of DESIGN "Placement": the table's
//! order for the key, skipping backends that are down and, with bounded load, those at
//! their cap. What was skipped is tried last (over-cap ones, then down ones): a
//! health verdict can be wrong, and a request that might succeed beats a certain 502
//! (Envoy's "panic mode", here at 0% healthy).
//!
//! [`Upstream::request_candidates`] is the same walk for a plain request on a
//! `follow_socket` route, with one change: if the principal has a live tunnel on an up
//! backend, that backend comes first. A tunnel can sit away from its owner for a while
//! (its node returned and the drain has not reached it, `rebalance = "off"`, bounded
//! load), and "push to user X" must reach the node that holds X's socket. It is not
//! the default: a polling transport's requests (SockJS, Socket.IO before its upgrade)
//! must meet their upgrade, which always goes to the owner.

pub mod health;
pub mod pool;

use std::net::SocketAddr;
use std::sync::Arc;

use hyper::header::HeaderValue;
use tokio::net::TcpStream;

use crate::balance::{Table, Walk};
use crate::config::UpstreamConfig;
use crate::registry::{BackendKey, Registry};
use health::{Health, Lasting};
use pool::Pool;

#[derive(Debug)]
pub struct Upstream {
    pub name: Arc<str>,
    pub backends: Vec<Backend>,
    pub table: Table,
    pub config: UpstreamConfig,
}

#[derive(Debug)]
pub struct Backend {
    pub id: Arc<str>,
    pub addr: SocketAddr,
    pub weight: u32,
    /// Identity across snapshots: the registry's and the health table's key.
    pub key: BackendKey,
    pub health: Arc<Health>,
    /// `Host` for a request that came without one (HTTP/1.0): the address.
    pub host: HeaderValue,
    pool: Arc<Pool>,
}

impl Upstream {
    pub fn build(config: &UpstreamConfig, lasting: &Lasting) -> Upstream {
        let backends = config
            .backends
            .iter()
            .map(|b| {
                let pool = lasting.pool(b.addr, config, || Pool::new(b.addr, config));
                let id: Arc<str> = b.id.as_str().into();
                Backend {
                    key: BackendKey::new(id.clone(), b.addr),
                    id,
                    addr: b.addr,
                    weight: b.weight,
                    health: lasting.health(&b.id, b.addr, config.health.start_up),
                    // An address's text form is always a valid header value.
                    host: HeaderValue::from_str(&b.addr.to_string())
                        .unwrap_or_else(|_| HeaderValue::from_static("localhost")),
                    pool,
                }
            })
            .collect();
        Upstream {
            name: config.name.as_str().into(),
            table: config.table(),
            backends,
            config: config.clone(),
        }
    }

    /// Backends to try for `key`, best first; see the module doc. `registry` gives the
    /// live tunnel counts that bounded load needs.
    pub fn candidates<'a>(&'a self, key: u64, registry: &'a Registry) -> Candidates<'a> {
        Candidates {
            upstream: self,
            registry,
            walk: self.table.walk(key),
            // With the one being placed.
            cap: self.cap(registry, 1),
            over_cap: Vec::new(),
            down: Vec::new(),
            first: None,
            skip: None,
        }
    }

    /// Where a live tunnel of `key` on `on` should move, if anywhere: the first up
    /// backend ahead of `on` in the key's order — unless a backend ahead of it is up
    /// but at its bounded-load cap, where the tunnel waits for room rather than
    /// moving now and again later. Bounded load steers new connections; it moves no
    /// tunnel for its own backend being over the cap (every tunnel there would look
    /// misplaced, and each move lowers the counts the others are judged by only once
    /// its client is back).
    pub fn destination<'a>(
        &'a self,
        key: u64,
        on: &BackendKey,
        registry: &Registry,
    ) -> Option<&'a Backend> {
        let cap = self.cap(registry, 0);
        for i in self.table.walk(key) {
            let b = &self.backends[i];
            if b.key == *on || cap.is_some_and(|cap| self.full(b, cap, registry)) {
                return None;
            }
            if b.health.is_up() {
                return Some(b);
            }
        }
        None
    }

    /// Bounded load's cap with `extra` tunnels more than the registry counts.
    fn cap(&self, registry: &Registry, extra: usize) -> Option<usize> {
        self.config.balance_factor.map(|c| {
            let up = self
                .backends
                .iter()
                .filter(|b| b.health.is_up())
                .count()
                .max(1);
            // Live tunnels and upgrades on their way.
            let total = registry.bound_total(&self.name) + extra;
            (c * total as f64 / up as f64).ceil() as usize
        })
    }

    /// `b` is up and at or over `cap`.
    fn full(&self, b: &Backend, cap: usize, registry: &Registry) -> bool {
        b.health.is_up() && registry.bound_load(&self.name, &b.key) >= cap
    }

    /// [`Upstream::candidates`] for a plain request: the first up backend, in the
    /// walk's order, that holds a live tunnel of this principal goes first (over its
    /// load cap or not: the request adds no tunnel).
    pub fn request_candidates<'a>(&'a self, key: u64, registry: &'a Registry) -> Candidates<'a> {
        let mut c = self.candidates(key, registry);
        let holders = registry.holders(&self.name, key);
        if !holders.is_empty() {
            c.first = self.table.walk(key).find(|&i| {
                let b = &self.backends[i];
                b.health.is_up() && holders.contains(&b.key)
            });
        }
        c
    }

    /// The owner of `key` if every backend were eligible (what `tether owner` prints).
    pub fn owner(&self, key: u64) -> Option<&Backend> {
        self.table.owner(key).map(|i| &self.backends[i])
    }

    pub fn backend(&self, id: &str) -> Option<&Backend> {
        self.backends.iter().find(|b| &*b.id == id)
    }
}

impl Backend {
    /// The keep-alive connections for plain HTTP requests to this backend.
    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// A fresh connection (for an upgrade or a probe) with the pool's settings: the
    /// upstream's connect timeout, TCP_NODELAY.
    pub async fn connect(&self) -> Result<TcpStream, ConnectError> {
        self.pool.connect().await
    }
}

/// A connect failed: refused, unreachable, or not accepted within `connect_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConnectError(#[source] Box<dyn std::error::Error + Send + Sync>);

impl From<std::io::Error> for ConnectError {
    fn from(e: std::io::Error) -> ConnectError {
        ConnectError(e.into())
    }
}

/// See [`Upstream::candidates`].
#[derive(Debug)]
pub struct Candidates<'a> {
    upstream: &'a Upstream,
    registry: &'a Registry,
    walk: Walk<'a>,
    cap: Option<usize>,
    over_cap: Vec<usize>,
    down: Vec<usize>,
    /// Yielded before the walk, which then skips it (`skip`).
    first: Option<usize>,
    skip: Option<usize>,
}

impl<'a> Iterator for Candidates<'a> {
    type Item = &'a Backend;

    fn next(&mut self) -> Option<&'a Backend> {
        let backends = &self.upstream.backends;
        if let Some(i) = self.first.take() {
            self.skip = Some(i);
            return Some(&backends[i]);
        }
        for i in self.walk.by_ref() {
            let b = &backends[i];
            if self.skip == Some(i) {
                continue;
            } else if !b.health.is_up() {
                self.down.push(i);
            } else if self
                .cap
                .is_some_and(|cap| self.upstream.full(b, cap, self.registry))
            {
                self.over_cap.push(i);
            } else {
                return Some(b);
            }
        }
        // Last resorts, best first: over their cap, then down.
        let next = if self.over_cap.is_empty() {
            &mut self.down
        } else {
            &mut self.over_cap
        };
        (!next.is_empty()).then(|| &backends[next.remove(0)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn upstream(extra: &str) -> (Upstream, Arc<Registry>) {
        let text = format!(
            "[[listener]]\nbind = \"127.0.0.1:0\"\n[upstream.u]\nbackends = [\
             {{ addr = \"127.0.0.1:1\", name = \"n1\" }}, {{ addr = \"127.0.0.1:2\", name = \"n2\" }}, \
             {{ addr = \"127.0.0.1:3\", name = \"n3\" }}]\n{extra}"
        );
        let config = Config::parse(&text, "t").unwrap();
        (
            Upstream::build(&config.upstreams[0], &Lasting::default()),
            Arc::new(Registry::default()),
        )
    }

    fn ids<'a>(c: impl Iterator<Item = &'a Backend>) -> Vec<&'a str> {
        c.map(|b| &*b.id).collect()
    }

    #[tokio::test]
    async fn candidates_skip_down_backends_then_try_them_last() {
        let (u, reg) = upstream("[upstream.u.health]\npassive_fails = 1\n");
        let key = 42;
        let order = ids(u.candidates(key, &reg));
        assert_eq!(order.len(), 3);
        assert_eq!(order[0], &*u.owner(key).unwrap().id);

        let t = u.config.health.thresholds;
        assert!(
            u.backend(order[0])
                .unwrap()
                .health
                .passive_failure(&t, "refused")
                .is_some()
        );
        assert_eq!(ids(u.candidates(key, &reg)), [order[1], order[2], order[0]]);
        // Eligibility never changes the owner itself.
        assert_eq!(&*u.owner(key).unwrap().id, order[0]);
    }

    #[tokio::test]
    async fn bounded_load_skips_backends_at_their_cap() {
        let (u, reg) = upstream("balance_factor = 1.0\n");
        let key = 7;
        let order = ids(u.candidates(key, &reg));
        // Two tunnels on the owner; with c = 1 and 3 backends the cap for the next
        // tunnel is ceil(1.0 × 3 / 3) = 1, so the owner is full.
        let owner = u.backend(order[0]).unwrap();
        let _t1 = reg.register(u.name.clone(), "r".into(), owner.key.clone(), 1, None);
        let _t2 = reg.register(u.name.clone(), "r".into(), owner.key.clone(), 2, None);
        assert_eq!(ids(u.candidates(key, &reg)), [order[1], order[2], order[0]]);
    }

    #[tokio::test]
    async fn a_request_goes_first_where_its_principal_has_a_live_tunnel() {
        let (u, reg) = upstream("[upstream.u.health]\npassive_fails = 1\n");
        let key = 42;
        let order = ids(u.candidates(key, &reg));
        // The principal's tunnel sits on its second choice, and another upstream's
        // tunnel of the same key on its third, which this upstream ignores.
        let second = u.backend(order[1]).unwrap();
        let third = u.backend(order[2]).unwrap();
        let _t = reg.register(u.name.clone(), "r".into(), second.key.clone(), key, None);
        let _other = reg.register("other".into(), "r".into(), third.key.clone(), key, None);
        assert_eq!(
            ids(u.request_candidates(key, &reg)),
            [order[1], order[0], order[2]]
        );
        // New tunnels still go to the owner; other principals are untouched.
        assert_eq!(ids(u.candidates(key, &reg)), order);
        assert_eq!(
            ids(u.request_candidates(7, &reg)),
            ids(u.candidates(7, &reg))
        );
        // A holder that is down is not preferred.
        let t = u.config.health.thresholds;
        assert!(second.health.passive_failure(&t, "refused").is_some());
        assert_eq!(
            ids(u.request_candidates(key, &reg)),
            ids(u.candidates(key, &reg))
        );
    }

    #[tokio::test]
    async fn a_fresh_connection_has_nodelay() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let text = format!(
            "[[listener]]\nbind = \"127.0.0.1:0\"\n[upstream.u]\nbackends = [\"{}\"]\n",
            listener.local_addr().unwrap()
        );
        let config = Config::parse(&text, "t").unwrap();
        let u = Upstream::build(&config.upstreams[0], &Lasting::default());
        let stream = u.backends[0].connect().await.unwrap();
        assert!(stream.nodelay().unwrap());
    }
}
