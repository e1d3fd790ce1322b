//! The listener's `send_timeout` for HTTP/2 answers, stream by stream.
//!
//! HTTP/2 flow control lets a client stop one stream while its connection keeps
//! moving: hyper then stops polling that stream's body and no socket write stalls, so
//! [`SendTimeout`](crate::send_timeout::SendTimeout) on the socket cannot see it.
//! Without this a client granting its streams no window would hold a backend
//! connection and a connection slot per stream, 128 per connection, for as long as it
//! kept the connection.
//!
//! hyper asks a body for its next frame once the stream has sent what it holds of the
//! last one, so an answer handed over at most [`PIECE`] at a time is asked again for
//! every `PIECE` its client takes. A [`Watched`] answer notes when it handed a piece
//! over and has not been asked for the next since (an answer waiting for its backend is
//! the backend's `response_timeout`'s business, not this). Its connection checks its
//! answers once per `send_timeout` ([`Sending::cut_stalled`]) and drops one that has
//! waited for its client that long, with its stream's count: the backend connection
//! closes, the slot frees, the access event is written as aborted, and the client
//! finds the stream reset when it next takes from it.
//!
//! As nginx's `send_timeout` on HTTP/2 (its timer restarts at each frame of the
//! stream sent, `http2_chunk_size` 8 KiB), the limit is on progress per stream: a
//! stream is cut once its client took less than `PIECE` of it in `send_timeout`.
//! Streams share their connection, so a connection carrying N large answers must move
//! about N × `PIECE` per `send_timeout` for none to be cut: 1 MiB a minute for 128.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use slab::Slab;
use tokio::time::Instant;
use tracing::debug;

use crate::config::human;
use crate::listener::Open;
use crate::proxy::Logged;
use crate::send_timeout::WriteStalled;

/// The most of an answer handed to hyper at once: one HTTP/2 DATA frame, nginx's
/// `http2_chunk_size`. Also the most written at once to a WebSocket over HTTP/2
/// (`SendTimeout::stream`), for the same reason.
pub const PIECE: usize = 8 * 1024;

/// A body that can be told it was cut: the rest of it, and `unsent` bytes of what it
/// gave, will never reach the client.
pub(crate) trait Cut {
    fn cut(&mut self, unsent: usize);
}

/// The answers an HTTP/2 connection is sending, and its listener's `send_timeout`.
#[derive(Debug)]
pub(crate) struct Sending<B = Logged> {
    limit: Duration,
    answers: Mutex<Slab<Arc<Mutex<Held<B>>>>>,
}

impl<B> Default for Sending<B> {
    fn default() -> Sending<B> {
        Sending {
            limit: Duration::ZERO,
            answers: Mutex::default(),
        }
    }
}

/// An answer as its connection's check and its body share it.
#[derive(Debug)]
struct Held<B> {
    /// The answer, and its stream's count; `None` once cut.
    body: Option<(B, Open)>,
    /// What is left of the last data frame beyond the piece handed over.
    rest: Bytes,
    /// Since when the body has waited for hyper to ask for its next piece (it handed
    /// one over, or has just been made); `None` while hyper waits on the body.
    waiting: Option<Instant>,
}

impl<B: Cut> Sending<B> {
    pub(crate) fn new(limit: Duration) -> Sending<B> {
        Sending {
            limit,
            answers: Mutex::default(),
        }
    }

    pub(crate) fn limit(&self) -> Duration {
        self.limit
    }

    /// Cuts the answers that have waited for their client for `send_timeout`.
    pub(crate) fn cut_stalled(&self) {
        let Some(before) = Instant::now().checked_sub(self.limit) else {
            return;
        };
        // Collected first: a cut drops a body (and writes its access event), which
        // need not happen under the lock.
        let answers: Vec<_> = lock(&self.answers).iter().map(|(_, a)| a.clone()).collect();
        for answer in answers {
            let mut held = lock(&answer);
            if held.waiting.is_none_or(|since| since > before) {
                continue;
            }
            held.waiting = None;
            let unsent = std::mem::take(&mut held.rest);
            let Some((mut body, open)) = held.body.take() else {
                continue;
            };
            drop(held);
            body.cut(unsent.len());
            drop((body, open));
            debug!(
                "HTTP/2 client took less than {} KiB of an answer in {}; stream cut",
                PIECE / 1024,
                human(self.limit)
            );
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// An HTTP/2 answer under its listener's `send_timeout` (see the module doc).
#[derive(Debug)]
pub(crate) struct Watched<B = Logged> {
    held: Arc<Mutex<Held<B>>>,
    /// Where this answer is registered while it has a body to send.
    key: Option<(Arc<Sending<B>>, usize)>,
}

impl<B: Body> Watched<B> {
    pub(crate) fn new(body: B, open: Open, sending: Arc<Sending<B>>) -> Watched<B> {
        let ends = body.is_end_stream();
        let held = Arc::new(Mutex::new(Held {
            body: Some((body, open)),
            rest: Bytes::new(),
            waiting: Some(Instant::now()),
        }));
        // An empty body is sent with the head: nothing to watch.
        let key = (!ends).then(|| {
            let key = lock(&sending.answers).insert(held.clone());
            (sending, key)
        });
        Watched { held, key }
    }
}

impl<B> Drop for Watched<B> {
    fn drop(&mut self) {
        if let Some((sending, key)) = &self.key {
            lock(&sending.answers).remove(*key);
        }
    }
}

impl<B> Body for Watched<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let held = &mut *lock(&this.held);
        held.waiting = None;
        let Some((body, _)) = &mut held.body else {
            let limit = this.key.as_ref().map_or(Duration::ZERO, |(s, _)| s.limit);
            return Poll::Ready(Some(Err(WriteStalled::stream(limit).into())));
        };
        if held.rest.is_empty() {
            match ready!(Pin::new(body).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => held.rest = data,
                    // Trailers: the answer's end.
                    Err(trailers) => return Poll::Ready(Some(Ok(trailers))),
                },
                end => return Poll::Ready(end.map(|r| r.map_err(Into::into))),
            }
        }
        let n = held.rest.len().min(PIECE);
        held.waiting = Some(Instant::now());
        Poll::Ready(Some(Ok(Frame::data(held.rest.split_to(n)))))
    }

    fn is_end_stream(&self) -> bool {
        let held = lock(&self.held);
        held.rest.is_empty() && held.body.as_ref().is_some_and(|(b, _)| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let held = lock(&self.held);
        let Some((body, _)) = &held.body else {
            return SizeHint::default();
        };
        let (hint, rest) = (body.size_hint(), held.rest.len() as u64);
        let mut total = SizeHint::new();
        total.set_lower(hint.lower() + rest);
        if let Some(upper) = hint.upper() {
            total.set_upper(upper + rest);
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use crate::listener::Activity;

    /// A body with a frame whenever the test gives it one; counts the bytes it was
    /// told went unsent, and whether it is still alive.
    #[derive(Debug, Clone, Default)]
    struct Tap {
        next: Arc<Mutex<Option<Bytes>>>,
        unsent: Arc<AtomicUsize>,
    }

    impl Body for Tap {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            match lock(&self.next).take() {
                Some(b) => Poll::Ready(Some(Ok(Frame::data(b)))),
                None => Poll::Pending,
            }
        }
    }

    impl Cut for Tap {
        fn cut(&mut self, unsent: usize) {
            self.unsent.store(unsent, Ordering::Relaxed);
        }
    }

    fn give(tap: &Tap, n: usize) {
        *lock(&tap.next) = Some(Bytes::from(vec![1; n]));
    }

    fn next(answer: &mut Watched<Tap>) -> Poll<Option<Result<usize, String>>> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        Pin::new(answer).poll_frame(&mut cx).map(|f| {
            f.map(|r| {
                r.map(|f| f.into_data().map_or(0, |d| d.len()))
                    .map_err(|e| e.to_string())
            })
        })
    }

    /// A watched answer, its body's handle, and its body's liveness (the test holds
    /// one more reference to the body's shared parts).
    fn watched(limit: Duration) -> (Arc<Sending<Tap>>, Watched<Tap>, Tap) {
        let sending = Arc::new(Sending::new(limit));
        let tap = Tap::default();
        let open = Open::request(&Arc::new(Activity::default()));
        let answer = Watched::new(tap.clone(), open, sending.clone());
        (sending, answer, tap)
    }

    #[tokio::test(start_paused = true)]
    async fn only_an_answer_that_waits_for_its_client_is_cut() {
        let limit = Duration::from_secs(60);
        let (sending, mut answer, tap) = watched(limit);
        let alive = || Arc::strong_count(&tap.next) > 1;
        // Waiting for its backend (hyper asked, the body has nothing yet) is the
        // backend's response_timeout's business, however long.
        assert!(next(&mut answer).is_pending());
        tokio::time::advance(limit * 3).await;
        sending.cut_stalled();
        // A client that takes each piece within the limit keeps its answer.
        for _ in 0..3 {
            give(&tap, 100);
            assert_eq!(next(&mut answer), Poll::Ready(Some(Ok(100))));
            tokio::time::advance(limit - Duration::from_secs(1)).await;
            sending.cut_stalled();
        }
        assert!(alive());
        // One that takes nothing more for the limit loses it; the body learns the
        // piece it still held never left.
        give(&tap, PIECE + 5);
        assert_eq!(next(&mut answer), Poll::Ready(Some(Ok(PIECE))));
        tokio::time::advance(limit).await;
        sending.cut_stalled();
        assert!(!alive(), "the cut answer's body was kept");
        assert_eq!(tap.unsent.load(Ordering::Relaxed), 5);
        match next(&mut answer) {
            Poll::Ready(Some(Err(e))) => assert!(e.contains("send_timeout"), "{e}"),
            other => panic!("{other:?}"),
        }
        drop(answer);
        assert!(lock(&sending.answers).is_empty());
    }

    #[tokio::test]
    async fn an_answer_is_handed_over_a_piece_at_a_time() {
        // So hyper asks for more at every PIECE the client takes, and an answer a slow
        // client is still taking is not seen as waiting for it.
        let (_sending, mut answer, tap) = watched(Duration::from_secs(60));
        give(&tap, 2 * PIECE + 100);
        let mut sizes = Vec::new();
        while let Poll::Ready(Some(Ok(n))) = next(&mut answer) {
            sizes.push(n);
        }
        assert_eq!(sizes, [PIECE, PIECE, 100]);
    }
}
