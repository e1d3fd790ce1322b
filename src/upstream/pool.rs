//! One backend's keep-alive connections for plain HTTP requests: the most recently
//! used first, none reused after `keepalive_timeout` idle (and closed then), none
//! limited in number.
//!
//! Written on hyper's connection API rather than taken from hyper-util's legacy
//! `Client`: a backend is one address, so there is no pool map to key, no absolute URI
//! to build and parse, no connector service, and a connection goes back when its
//! answer's body is dropped rather than through a task spawned per request (a task
//! waits only for one not yet ready then). On the request path that is about 10,000
//! user-space instructions fewer per request (README, Performance).
//!
//! A connection whose backend answered in HTTP/1.0 is closed after that answer, not
//! pooled (nginx keeps it, and goes on sending HTTP/1.1; hyper would go on in 1.0).
//!
//! A request that a pooled connection could not take because the backend had just
//! closed it (hyper hands it back unsent) goes out on another one, as hyper-util does.
//! One that went out on a kept-alive connection the backend closed or reset before
//! answering is [`SendError::Stale`]: the caller may send it again on a new connection
//! if it is safe to send twice, as nginx and HAProxy do.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Request, Response, Version};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::debug;

use super::ConnectError;
use crate::config::{UpstreamConfig, human};
use crate::proxy::RetryBody;
use crate::send_timeout::SendTimeout;

type Sender = SendRequest<RetryBody>;

#[derive(Debug)]
pub struct Pool {
    addr: SocketAddr,
    connect_timeout: Duration,
    keepalive: Duration,
    /// How long a write to the backend may make no progress (`response_timeout`).
    send_timeout: Duration,
    idle: Mutex<Idle>,
}

#[derive(Debug, Default)]
struct Idle {
    /// Oldest first; each with when it went idle.
    conns: Vec<(Sender, Instant)>,
    /// A task closes connections as they expire while any are idle.
    reaping: bool,
}

/// A request could not be sent, or got no answer.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection, or a new one closed at once: nothing of the request went out.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// A kept-alive connection ended before the answer: the backend had closed it as
    /// the request went out (or reset it). The request may have reached the backend.
    #[error(transparent)]
    Stale(hyper::Error),
    #[error(transparent)]
    Http(#[from] hyper::Error),
}

impl Pool {
    pub fn new(addr: SocketAddr, config: &UpstreamConfig) -> Pool {
        Pool {
            addr,
            connect_timeout: config.connect_timeout,
            keepalive: config.keepalive_timeout,
            send_timeout: config.response_timeout,
            idle: Mutex::default(),
        }
    }

    /// A fresh connection with TCP_NODELAY, or an error after `connect_timeout`.
    pub async fn connect(&self) -> Result<TcpStream, ConnectError> {
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(self.addr))
            .await
            .map_err(|_| {
                ConnectError(
                    format!("connect timed out after {}", human(self.connect_timeout)).into(),
                )
            })??;
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    /// Sends `req` on an idle connection (unless `fresh`), or a new one. The [`Lease`]
    /// returns the connection when dropped with the answer's body.
    pub async fn send(
        self: &Arc<Pool>,
        mut req: Request<RetryBody>,
        fresh: bool,
    ) -> Result<(Response<Incoming>, Lease), SendError> {
        loop {
            let idle = if fresh { None } else { self.take() };
            let (mut sender, reused) = match idle {
                Some(s) => (s, true),
                None => (self.open().await?, false),
            };
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    // After an HTTP/1.0 answer hyper speaks HTTP/1.0 on the connection,
                    // which has no chunked request bodies: a later upload of unknown
                    // length would go out without its body. Not reused.
                    let reusable = resp.version() == Version::HTTP_11;
                    let lease = Lease {
                        sender: reusable.then_some(sender),
                        pool: self.clone(),
                    };
                    return Ok((resp, lease));
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) if reused => {
                        debug!(backend = %self.addr, "pooled connection closed as it was taken; trying another");
                        req = unsent;
                    }
                    // A new connection closed before it took the request: as good as
                    // refused, and nothing went out.
                    Some(_) => return Err(ConnectError(e.into_error().into()).into()),
                    None if reused && ended_under_us(e.error()) => {
                        return Err(SendError::Stale(e.into_error()));
                    }
                    None => return Err(e.into_error().into()),
                },
            }
        }
    }

    /// The most recently used idle connection still open and within `keepalive`.
    fn take(&self) -> Option<Sender> {
        let mut idle = self.lock();
        let now = Instant::now();
        while let Some((sender, since)) = idle.conns.pop() {
            if now.duration_since(since) >= self.keepalive {
                // The rest went idle earlier still.
                idle.conns.clear();
                return None;
            }
            if sender.is_ready() {
                return Some(sender);
            }
        }
        None
    }

    async fn open(&self) -> Result<Sender, SendError> {
        let io = SendTimeout::backend(self.connect().await?, self.send_timeout);
        let (sender, conn) = http1::handshake(TokioIo::new(io)).await?;
        let addr = self.addr;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(backend = %addr, error = %e, "pooled connection ended");
            }
        });
        Ok(sender)
    }

    fn put(self: &Arc<Pool>, sender: Sender) {
        let mut idle = self.lock();
        idle.conns.push((sender, Instant::now()));
        if !idle.reaping
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            idle.reaping = true;
            rt.spawn(reap(Arc::downgrade(self)));
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Idle> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The connection ended before an answer: closed, reset, or a broken pipe.
fn ended_under_us(e: &hyper::Error) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset};
    e.is_incomplete_message()
        || std::iter::successors(std::error::Error::source(e), |e| e.source()).any(|e| {
            e.downcast_ref::<std::io::Error>().is_some_and(|io| {
                matches!(io.kind(), BrokenPipe | ConnectionAborted | ConnectionReset)
            })
        })
}

/// Closes idle connections as they pass `keepalive`; ends when none is idle or the
/// pool is gone.
async fn reap(pool: Weak<Pool>) {
    // Dropped unfinished (the runtime shutting down), it lets a later `put` start one.
    let mut reaping = Reaping {
        pool: pool.clone(),
        finished: false,
    };
    loop {
        let due = {
            let Some(pool) = pool.upgrade() else { return };
            let mut idle = pool.lock();
            let now = Instant::now();
            let expired = idle
                .conns
                .partition_point(|(_, since)| now.duration_since(*since) >= pool.keepalive);
            idle.conns.drain(..expired);
            idle.conns.retain(|(s, _)| !s.is_closed());
            match idle.conns.first() {
                Some((_, since)) => *since + pool.keepalive,
                None => {
                    idle.reaping = false;
                    reaping.finished = true;
                    return;
                }
            }
        };
        tokio::time::sleep_until(due).await;
    }
}

struct Reaping {
    pool: Weak<Pool>,
    finished: bool,
}

impl Drop for Reaping {
    fn drop(&mut self) {
        if !self.finished
            && let Some(pool) = self.pool.upgrade()
        {
            pool.lock().reaping = false;
        }
    }
}

/// A pooled connection lent to one exchange. Dropped with the answer's body, it goes
/// back to the pool: at once if the exchange is over, else once it is (the backend
/// answered before it had read the whole request body); not if it closed.
#[derive(Debug)]
pub struct Lease {
    sender: Option<Sender>,
    pool: Arc<Pool>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let Some(mut sender) = self.sender.take() else {
            return;
        };
        if sender.is_ready() {
            self.pool.put(sender);
        } else if !sender.is_closed()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            let pool = self.pool.clone();
            rt.spawn(async move {
                if sender.ready().await.is_ok() {
                    pool.put(sender);
                }
            });
        }
    }
}
