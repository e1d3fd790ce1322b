//! Upstreams and their backends as one snapshot sees them: identity, placement table,
//! connection settings, the pooled HTTP client, and a link to the long-lived
//! [`Health`] of each backend.
//!
//! [`Upstream::candidates`] is the eligibility walk of DESIGN "Placement": the table's
//! order for the key, skipping backends in connect backoff; if every backend is backing
//! off they are tried anyway, best first (a backoff is a hint, not proof of death).

pub mod health;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::Uri;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tower_service::Service;

use crate::balance::{Table, Walk};
use crate::config::UpstreamConfig;
use crate::proxy::RetryBody;
use health::{Health, HealthTable, now_ms};

/// TCP keepalive on backend sockets: finds a silently vanished backend host under an
/// idle tunnel long before the idle timeout does.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

pub type HttpClient = Client<HttpConnector, RetryBody>;

#[derive(Debug)]
pub struct Upstream {
    pub name: Arc<str>,
    pub backends: Vec<Backend>,
    pub table: Table,
    pub connect_timeout: Duration,
    pub connect_backoff: Duration,
}

#[derive(Debug)]
pub struct Backend {
    pub id: Arc<str>,
    pub addr: SocketAddr,
    pub weight: u32,
    pub health: Arc<Health>,
    /// `http://addr` — the authority the pooled client keys its connections by.
    base: String,
    connector: HttpConnector,
    client: HttpClient,
}

impl Upstream {
    pub fn build(config: &UpstreamConfig, health: &HealthTable) -> Upstream {
        let backends = config
            .backends
            .iter()
            .map(|b| {
                let connector = connector(config.connect_timeout);
                let client = Client::builder(TokioExecutor::new())
                    .pool_timer(TokioTimer::new())
                    .pool_idle_timeout(config.keepalive_timeout)
                    .build(connector.clone());
                Backend {
                    id: b.id.as_str().into(),
                    addr: b.addr,
                    weight: b.weight,
                    health: health.get(&b.id, b.addr),
                    base: format!("http://{}", b.addr),
                    connector,
                    client,
                }
            })
            .collect();
        Upstream {
            name: config.name.as_str().into(),
            table: config.table(),
            backends,
            connect_timeout: config.connect_timeout,
            connect_backoff: config.connect_backoff,
        }
    }

    /// Backends to try for `key`, best first; see the module doc.
    pub fn candidates(&self, key: u64) -> Candidates<'_> {
        Candidates {
            upstream: self,
            walk: self.table.walk(key),
            now: now_ms(),
            deferred: Vec::new(),
            next_deferred: 0,
        }
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
    /// The pooled keep-alive client for plain HTTP requests to this backend.
    pub fn client(&self) -> &HttpClient {
        &self.client
    }

    /// `http://addr{path_and_query}`: the absolute URI the pooled client needs.
    pub fn uri(&self, path_and_query: &str) -> Result<Uri, hyper::http::Error> {
        let mut s = String::with_capacity(self.base.len() + path_and_query.len());
        s.push_str(&self.base);
        s.push_str(path_and_query);
        Ok(Uri::try_from(s)?)
    }

    /// A fresh connection (for an upgrade), made exactly as the pool makes its own.
    pub async fn connect(&self) -> Result<TcpStream, ConnectError> {
        let uri = Uri::try_from(self.base.as_str()).map_err(|e| ConnectError(e.into()))?;
        let io: TokioIo<TcpStream> = self
            .connector
            .clone()
            .call(uri)
            .await
            .map_err(|e| ConnectError(e.into()))?;
        Ok(io.into_inner())
    }
}

/// A connect failed: refused, unreachable, or not accepted within `connect_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConnectError(#[source] Box<dyn std::error::Error + Send + Sync>);

fn connector(timeout: Duration) -> HttpConnector {
    let mut c = HttpConnector::new();
    c.set_connect_timeout(Some(timeout));
    // Heartbeats are tiny frames: never let Nagle hold them back.
    c.set_nodelay(true);
    c.set_keepalive(Some(TCP_KEEPALIVE));
    c
}

/// See [`Upstream::candidates`].
#[derive(Debug)]
pub struct Candidates<'a> {
    upstream: &'a Upstream,
    walk: Walk<'a>,
    now: u64,
    deferred: Vec<usize>,
    next_deferred: usize,
}

impl<'a> Iterator for Candidates<'a> {
    type Item = &'a Backend;

    fn next(&mut self) -> Option<&'a Backend> {
        for i in self.walk.by_ref() {
            let b = &self.upstream.backends[i];
            if b.health.backing_off(self.now) {
                self.deferred.push(i);
            } else {
                return Some(b);
            }
        }
        let i = *self.deferred.get(self.next_deferred)?;
        self.next_deferred += 1;
        Some(&self.upstream.backends[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BackendConfig;

    fn upstream(health: &HealthTable) -> Upstream {
        let backends = (1..=3)
            .map(|i| BackendConfig {
                id: format!("n{i}"),
                addr: format!("127.0.0.1:{i}").parse().unwrap(),
                weight: 1,
            })
            .collect();
        let config = UpstreamConfig {
            name: "u".into(),
            backends,
            connect_timeout: Duration::from_secs(1),
            connect_backoff: Duration::from_secs(60),
            keepalive_timeout: Duration::from_secs(1),
        };
        Upstream::build(&config, health)
    }

    fn ids<'a>(c: impl Iterator<Item = &'a Backend>) -> Vec<&'a str> {
        c.map(|b| &*b.id).collect()
    }

    #[tokio::test]
    async fn candidates_skip_backing_off_then_try_them_last() {
        let table = HealthTable::default();
        let u = upstream(&table);
        let key = 42;
        let order = ids(u.candidates(key));
        assert_eq!(order.len(), 3);
        assert_eq!(order[0], &*u.owner(key).unwrap().id);

        u.backend(order[0])
            .unwrap()
            .health
            .connect_failed(Duration::from_secs(60));
        assert_eq!(ids(u.candidates(key)), [order[1], order[2], order[0]]);
        // Eligibility never changes the owner itself.
        assert_eq!(&*u.owner(key).unwrap().id, order[0]);
    }

    #[tokio::test]
    async fn connector_sets_nodelay() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let config = UpstreamConfig {
            name: "u".into(),
            backends: vec![BackendConfig {
                id: "a".into(),
                addr,
                weight: 1,
            }],
            connect_timeout: Duration::from_secs(5),
            connect_backoff: Duration::from_secs(5),
            keepalive_timeout: Duration::from_secs(5),
        };
        let u = Upstream::build(&config, &HealthTable::default());
        let stream = u.backends[0].connect().await.unwrap();
        assert!(stream.nodelay().unwrap());
    }
}
