//! The bodies tether streams through: a request body that can be offered to several
//! backends in turn, and a backend's response body. Neither may stall for ever.
//!
//! ## Request bodies
//!
//! When the pool cannot connect to the owner it drops the request without
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
//!
//! ## Response bodies
//!
//! A backend that pauses mid-answer for longer than its upstream's `response_timeout`
//! (nginx's `proxy_read_timeout`, which also covers both the head and the pauses
//! between body reads) fails the body with [`AnswerStalled`]. Once the head is sent
//! that is the only way to tell the client the answer is incomplete: hyper closes the
//! HTTP/1.1 connection, or resets the HTTP/2 stream. Without it a node that hangs
//! mid-body would hold the client, its connection slot and a backend connection until
//! the client gave up.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::config::human;
use crate::upstream::pool::Lease;

/// The longest pause a body's sender may take, and the timer that holds it to that.
/// The timer is made on the first wait (most bodies arrive whole and never wait) and
/// restarted at each wait that follows a frame, so it measures each pause on its own.
#[derive(Debug)]
pub struct Stall {
    limit: Duration,
    timer: Option<Pin<Box<Sleep>>>,
    /// A frame came since the timer was last started.
    moved: bool,
}

/// A body's sender paused longer than its [`Stall`] limit.
#[derive(Debug)]
struct Paused;

/// What polling a body for its next frame gives.
type NextFrame<B> = Option<Result<Frame<<B as Body>::Data>, <B as Body>::Error>>;

impl Stall {
    pub fn new(limit: Duration) -> Stall {
        Stall {
            limit,
            timer: None,
            moved: false,
        }
    }

    /// The next frame of `body`, or [`Paused`] once it has sent nothing for the limit.
    fn poll_frame<B: Body + Unpin>(
        &mut self,
        body: &mut B,
        cx: &mut Context<'_>,
    ) -> Poll<Result<NextFrame<B>, Paused>> {
        if let Poll::Ready(frame) = Pin::new(body).poll_frame(cx) {
            self.moved = true;
            return Poll::Ready(Ok(frame));
        }
        let limit = self.limit;
        // Every wait that starts the timer (made or restarted) clears `moved`, so a
        // wake-up, the timer's own included, does not start it again.
        let moved = std::mem::take(&mut self.moved);
        let timer = match &mut self.timer {
            Some(timer) => {
                if moved {
                    timer.as_mut().reset(Instant::now() + limit);
                }
                timer
            }
            None => self.timer.insert(Box::pin(tokio::time::sleep(limit))),
        };
        ready!(timer.as_mut().poll(cx));
        Poll::Ready(Err(Paused))
    }
}

/// See the module doc.
#[derive(Debug)]
pub enum RetryBody {
    /// No body at all (most requests): nothing to share.
    Empty,
    Shared {
        shared: Arc<Shared>,
        taken: Option<Incoming>,
        hint: SizeHint,
        /// The listener's `body_timeout`.
        stall: Stall,
    },
}

impl Drop for RetryBody {
    fn drop(&mut self) {
        // The backend connection is done with the body this view read (see `sent`).
        if let RetryBody::Shared {
            shared,
            taken: Some(_),
            ..
        } = self
        {
            shared.sent.cancel();
        }
    }
}

#[derive(Debug)]
pub struct Shared {
    slot: Mutex<Option<Incoming>>,
    client_failed: AtomicBool,
    /// Cancelled when the body brings trailers (see the module doc).
    close_on_trailers: Option<CancellationToken>,
    /// Cancelled when the body's end has been handed to a backend.
    sent: CancellationToken,
    /// Body bytes read from the client so far (the access log's `bytes_up`).
    received: Arc<AtomicU64>,
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
                sent: CancellationToken::new(),
                received: Arc::default(),
            }),
            taken: None,
            hint,
            stall: Stall::new(stall),
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
                stall: Stall::new(stall.limit),
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

    /// Resolves once the whole body has been handed to a backend (its end read, or the
    /// view that read it dropped: hyper drops a body once it has written as many bytes
    /// as `Content-Length` says, which an HTTP/2 client may follow with a separate empty
    /// frame that ends the stream): at once for a request without one. A backend's time to answer starts there (nginx's
    /// `proxy_read_timeout`): an upload takes as long as the client takes, each pause
    /// bounded by `body_timeout`.
    pub async fn sent(&self) {
        if let RetryBody::Shared { shared, .. } = self {
            shared.sent.cancelled().await;
        }
    }

    /// The count of body bytes read from the client, as it grows; `None` without a body.
    pub fn received(&self) -> Option<Arc<AtomicU64>> {
        match self {
            RetryBody::Empty => None,
            RetryBody::Shared { shared, .. } => Some(shared.received.clone()),
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
        let Ok(frame) = ready!(stall.poll_frame(body, cx)) else {
            shared.client_failed.store(true, Ordering::Relaxed);
            return Poll::Ready(Some(Err(BodyStalled(stall.limit).into())));
        };
        if let Some(Ok(data)) = frame.as_ref().map(|f| f.as_ref().map(Frame::data_ref)) {
            let n = data.map_or(0, Bytes::len);
            shared.received.fetch_add(n as u64, Ordering::Relaxed);
        }
        if frame.is_none() || body.is_end_stream() {
            shared.sent.cancel();
        }
        match frame {
            Some(Err(e)) => {
                shared.client_failed.store(true, Ordering::Relaxed);
                Poll::Ready(Some(Err(e.into())))
            }
            Some(Ok(f)) if f.is_trailers() => {
                shared.sent.cancel();
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

/// A backend's response body, failed if the backend pauses longer than its upstream's
/// `response_timeout` (see the module doc).
#[derive(Debug)]
pub struct Answer {
    body: Incoming,
    stall: Stall,
    backend: Arc<str>,
    /// The pooled connection the answer came on, returned when the body is dropped.
    _lease: Option<Lease>,
}

/// The backend sent nothing more of its answer for its upstream's `response_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("backend {backend} sent nothing of its answer for {}", human(*.after))]
pub struct AnswerStalled {
    pub backend: Arc<str>,
    pub after: Duration,
}

impl Answer {
    pub fn new(body: Incoming, lease: Option<Lease>, stall: Duration, backend: Arc<str>) -> Answer {
        Answer {
            body,
            stall: Stall::new(stall),
            backend,
            _lease: lease,
        }
    }
}

impl Body for Answer {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        match ready!(this.stall.poll_frame(&mut this.body, cx)) {
            Ok(frame) => Poll::Ready(frame.map(|f| f.map_err(Into::into))),
            Err(Paused) => {
                let after = this.stall.limit;
                warn!(backend = %this.backend, "no more of the answer within {}: the client's response is cut short", human(after));
                let backend = this.backend.clone();
                Poll::Ready(Some(Err(AnswerStalled { backend, after }.into())))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use std::future::poll_fn;
    use tokio::sync::mpsc;

    /// A body whose frames come from a channel, at the sender's pace.
    struct Drip(mpsc::Receiver<Bytes>);

    impl Body for Drip {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
        }
    }

    /// A frame ready before the first wait (head and body bytes in one packet) does
    /// not make the first pause count twice.
    #[tokio::test(start_paused = true)]
    async fn a_pause_after_the_first_frame_fails_at_the_limit() {
        let (tx, rx) = mpsc::channel(1);
        tx.send(Bytes::from_static(b"x")).await.unwrap();
        let mut body = Drip(rx);
        let mut stall = Stall::new(Duration::from_secs(60));
        let frame = poll_fn(|cx| stall.poll_frame(&mut body, cx)).await;
        assert!(matches!(frame, Ok(Some(Ok(_)))), "{frame:?}");
        let started = Instant::now();
        let frame = poll_fn(|cx| stall.poll_frame(&mut body, cx)).await;
        assert!(matches!(frame, Err(Paused)), "{frame:?}");
        assert_eq!(started.elapsed(), Duration::from_secs(60));
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_may_pause_up_to_the_limit_between_frames_and_no_longer() {
        let (tx, rx) = mpsc::channel(1);
        let mut body = Drip(rx);
        let mut stall = Stall::new(Duration::from_secs(60));
        // Every pause under the limit, all of them together far over it.
        let sender = tx.clone();
        tokio::spawn(async move {
            for _ in 0..4 {
                tokio::time::sleep(Duration::from_secs(40)).await;
                sender.send(Bytes::from_static(b"x")).await.unwrap();
            }
        });
        for _ in 0..4 {
            let frame = poll_fn(|cx| stall.poll_frame(&mut body, cx)).await;
            assert!(matches!(frame, Ok(Some(Ok(_)))), "{frame:?}");
        }
        // Then nothing (the sender is still there): the wait fails at the limit.
        let started = Instant::now();
        let frame = poll_fn(|cx| stall.poll_frame(&mut body, cx)).await;
        assert!(matches!(frame, Err(Paused)), "{frame:?}");
        assert_eq!(started.elapsed(), Duration::from_secs(60));
        drop(tx);
    }
}
