//! A request body that can be offered to several backends in turn.
//!
//! When the pooled client cannot connect to the owner it drops the request without
//! ever polling the body, and placement wants the same request sent to the next
//! backend. The incoming body therefore sits in a shared slot; each attempt gets a
//! [`RetryBody`] view, and the first view that is polled takes the body for good.
//! After a failed attempt, [`RetryBody::untouched`] says whether a retry is still
//! possible (nothing was read, so nothing went upstream), and
//! [`RetryBody::client_failed`] whether the failure was the client's (a broken chunked
//! encoding, a body cut short), which is a 400 rather than a 502.
//!
//! A client that stops sending mid-body for longer than the listener's
//! `body_timeout` fails the body with [`BodyStalled`] (408 when no answer has been
//! sent yet), so it cannot hold a connection and a backend connection open forever
//! by sending a byte a minute.
//!
//! An HTTP/1.1 body that ends with trailers cancels its connection's `close` token:
//! the connection ends after this exchange. hyper reads a trailer section up to a
//! CRLF CRLF but parses it only to the first empty line, bare LF included, and drops
//! the rest; a front proxy that took those dropped bytes for another request would
//! otherwise get the answer to the next one in its place.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;

/// See the module doc.
#[derive(Debug)]
pub enum RetryBody {
    /// No body at all (most requests): nothing to share.
    Empty,
    Shared {
        shared: Arc<Shared>,
        taken: Option<Incoming>,
        hint: SizeHint,
        /// The longest pause between two frames.
        stall: Duration,
        /// Armed while the body is waited for (made on the first wait).
        timer: Option<Pin<Box<Sleep>>>,
    },
}

#[derive(Debug)]
pub struct Shared {
    slot: Mutex<Option<Incoming>>,
    client_failed: AtomicBool,
    /// Cancelled when the body brings trailers (see the module doc).
    close_on_trailers: Option<CancellationToken>,
}

/// The error when a second attempt polls a body the first already consumed. Cannot
/// happen in the proxy (it retries only untouched bodies), but must not be a panic.
#[derive(Debug, thiserror::Error)]
#[error("request body already sent to another backend")]
pub struct BodyTaken;

/// The client sent nothing of its body for the listener's `body_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("the client sent no body bytes for {}", crate::config::human(*.0))]
pub struct BodyStalled(pub Duration);

impl RetryBody {
    pub fn new(body: Incoming, stall: Duration, close: Option<&CancellationToken>) -> RetryBody {
        if body.is_end_stream() {
            return RetryBody::Empty;
        }
        let hint = body.size_hint();
        RetryBody::Shared {
            shared: Arc::new(Shared {
                slot: Mutex::new(Some(body)),
                client_failed: AtomicBool::new(false),
                close_on_trailers: close.cloned(),
            }),
            taken: None,
            hint,
            stall,
            timer: None,
        }
    }

    /// Another view of the same body, for the next attempt.
    pub fn again(&self) -> RetryBody {
        match self {
            RetryBody::Empty => RetryBody::Empty,
            RetryBody::Shared {
                shared,
                hint,
                stall,
                ..
            } => RetryBody::Shared {
                shared: shared.clone(),
                taken: None,
                hint: *hint,
                stall: *stall,
                timer: None,
            },
        }
    }

    /// True if no attempt has read any of the body yet.
    pub fn untouched(&self) -> bool {
        match self {
            RetryBody::Empty => true,
            RetryBody::Shared { shared, .. } => shared
                .slot
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_some(),
        }
    }

    /// True if reading the client's body failed.
    pub fn client_failed(&self) -> bool {
        match self {
            RetryBody::Empty => false,
            RetryBody::Shared { shared, .. } => shared.client_failed.load(Ordering::Relaxed),
        }
    }
}

impl Body for RetryBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let RetryBody::Shared {
            shared,
            taken,
            stall,
            timer,
            ..
        } = self.get_mut()
        else {
            return Poll::Ready(None);
        };
        if taken.is_none() {
            match shared.slot.lock().unwrap_or_else(|p| p.into_inner()).take() {
                Some(b) => *taken = Some(b),
                None => return Poll::Ready(Some(Err(BodyTaken.into()))),
            }
        }
        let Some(body) = taken else {
            return Poll::Ready(None);
        };
        let Poll::Ready(frame) = Pin::new(body).poll_frame(cx) else {
            let timer = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(*stall)));
            ready!(timer.as_mut().poll(cx));
            shared.client_failed.store(true, Ordering::Relaxed);
            return Poll::Ready(Some(Err(BodyStalled(*stall).into())));
        };
        if let Some(timer) = timer {
            timer.as_mut().reset(Instant::now() + *stall);
        }
        match frame {
            Some(Err(e)) => {
                shared.client_failed.store(true, Ordering::Relaxed);
                Poll::Ready(Some(Err(e.into())))
            }
            Some(Ok(f)) if f.is_trailers() => {
                if let Some(close) = &shared.close_on_trailers {
                    close.cancel();
                }
                Poll::Ready(Some(Ok(f)))
            }
            other => Poll::Ready(other.map(|f| f.map_err(Into::into))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RetryBody::Empty => true,
            RetryBody::Shared { taken: Some(b), .. } => b.is_end_stream(),
            RetryBody::Shared { .. } => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RetryBody::Empty => SizeHint::with_exact(0),
            RetryBody::Shared { taken: Some(b), .. } => b.size_hint(),
            RetryBody::Shared { hint, .. } => *hint,
        }
    }
}
