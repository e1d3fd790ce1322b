//! A socket whose writes must make progress: a write blocked for longer than the
//! limit fails the connection.
//!
//! Towards clients it is nginx's `send_timeout` (the listener's): without it a client
//! that stops reading holds its answer, the answer's backend connection and its
//! connection slot for as long as it keeps the socket open (a WebSocket tunnel
//! included, whose writes go through the same socket). Towards backends' pooled
//! connections it is nginx's `proxy_send_timeout`, here the upstream's
//! `response_timeout` (one value for a backend's silence either way, as HAProxy's
//! `timeout server`): a backend that stops reading a request body, having answered
//! early or not, would otherwise hold the client connection, its slot and the backend
//! connection for as long as it keeps its socket open.
//!
//! A timer exists only while a write is blocked; an idle connection holds none.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

use crate::config::human;
use crate::stream_timeout::PIECE;

/// A socket whose writes must progress within a limit.
#[derive(Debug)]
pub struct SendTimeout<S> {
    inner: S,
    /// What a write that does not progress fails with; it holds the limit.
    stalled: WriteStalled,
    /// Armed at the first write that could not proceed; dropped at the next that does.
    blocked: Option<Pin<Box<Sleep>>>,
}

impl<S> SendTimeout<S> {
    /// Towards a client: the listener's `send_timeout`.
    pub fn client(inner: S, limit: Duration) -> SendTimeout<S> {
        SendTimeout::new(inner, Peer::Client, limit)
    }

    /// Towards a backend: its upstream's `response_timeout`.
    pub fn backend(inner: S, limit: Duration) -> SendTimeout<S> {
        SendTimeout::new(inner, Peer::Backend, limit)
    }

    /// A WebSocket over an HTTP/2 stream: the listener's `send_timeout`. hyper takes
    /// the next write into such a stream once it has sent the last one whole, so
    /// writes are cut to [`PIECE`] and a client that takes less than that in the limit
    /// fails it, as an answer on HTTP/2 does (see stream_timeout.rs).
    pub fn stream(inner: S, limit: Duration) -> SendTimeout<S> {
        SendTimeout::new(inner, Peer::Stream, limit)
    }

    fn new(inner: S, peer: Peer, limit: Duration) -> SendTimeout<S> {
        SendTimeout {
            inner,
            stalled: WriteStalled { peer, limit },
            blocked: None,
        }
    }

    /// The most one write passes on.
    fn most(&self, len: usize) -> usize {
        match self.stalled.peer {
            Peer::Stream => len.min(PIECE),
            _ => len,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// What a write that returned `polled` means: progress disarms the timer; no
    /// progress arms it, and fails once it has run out.
    fn judge<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.blocked = None;
            return polled;
        }
        let limit = self.stalled.limit;
        let timer = self
            .blocked
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        ready!(timer.as_mut().poll(cx));
        Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, self.stalled)))
    }
}

/// What a [`SendTimeout`] write fails with (inside an `io::Error` of kind `TimedOut`).
#[derive(Debug, Clone, Copy)]
pub struct WriteStalled {
    peer: Peer,
    limit: Duration,
}

/// Who did not read.
#[derive(Debug, Clone, Copy)]
enum Peer {
    Client,
    Backend,
    /// A client, on one HTTP/2 stream.
    Stream,
}

impl std::fmt::Display for WriteStalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let limit = human(self.limit);
        match self.peer {
            Peer::Client => write!(f, "the client read nothing for {limit} (send_timeout)"),
            Peer::Backend => write!(f, "the backend read nothing for {limit} (response_timeout)"),
            Peer::Stream => write!(
                f,
                "the client took less than {} KiB of its stream in {limit} (send_timeout)",
                PIECE / 1024
            ),
        }
    }
}

impl std::error::Error for WriteStalled {}

impl WriteStalled {
    /// An HTTP/2 stream whose client took less than [`PIECE`] in `limit`.
    pub fn stream(limit: Duration) -> WriteStalled {
        WriteStalled {
            peer: Peer::Stream,
            limit,
        }
    }

    /// Whether `e`, or an error it wraps, is a write that stalled.
    pub fn within(e: &(dyn std::error::Error + 'static)) -> bool {
        std::iter::successors(Some(e), |e| e.source()).any(|e| {
            e.downcast_ref::<io::Error>()
                .and_then(io::Error::get_ref)
                .is_some_and(|inner| inner.is::<WriteStalled>())
        })
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for SendTimeout<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for SendTimeout<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let buf = &buf[..this.most(buf.len())];
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.judge(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.most(usize::MAX) < usize::MAX {
            let first = bufs
                .iter()
                .find(|b| !b.is_empty())
                .map_or(&[][..], |b| &**b);
            return Pin::new(this).poll_write(cx, first);
        }
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.judge(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        this.judge(cx, polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.judge(cx, polled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn a_write_nobody_reads_fails_after_the_limit_and_progress_resets_it() {
        let (near, mut far) = tokio::io::duplex(16);
        let mut s = SendTimeout::client(near, Duration::from_secs(60));
        // Writes that proceed never time out, however far apart.
        s.write_all(&[1; 16]).await.unwrap();
        tokio::time::sleep(Duration::from_secs(120)).await;
        let mut got = [0; 16];
        far.read_exact(&mut got).await.unwrap();
        s.write_all(&[2; 16]).await.unwrap();
        // The pipe is full; the far end reads every 40 s: each write waits 40 s, and
        // the progress in between starts the limit afresh.
        let reader = tokio::spawn(async move {
            for _ in 0..2 {
                tokio::time::sleep(Duration::from_secs(40)).await;
                far.read_exact(&mut [0; 16]).await.unwrap();
            }
            far
        });
        s.write_all(&[3; 16]).await.unwrap();
        s.write_all(&[4; 16]).await.unwrap();
        let _far = reader.await.unwrap();
        // Then it reads nothing: the next write fails after the limit.
        let started = tokio::time::Instant::now();
        let err = s.write_all(&[5; 1]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(60));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_takes_a_piece_per_write_and_says_so_when_it_stalls() {
        let (near, mut far) = tokio::io::duplex(4 * PIECE);
        let mut s = SendTimeout::stream(near, Duration::from_secs(60));
        // Progress is seen per write, so no write passes on more than a piece.
        assert_eq!(s.write(&[1; 3 * PIECE]).await.unwrap(), PIECE);
        far.read_exact(&mut vec![0; PIECE]).await.unwrap();
        s.write_all(&[2; 4 * PIECE]).await.unwrap();
        let err = s.write_all(&[3; 1]).await.unwrap_err();
        let text = err.get_ref().unwrap().to_string();
        assert_eq!(
            text,
            "the client took less than 8 KiB of its stream in 1m (send_timeout)"
        );
    }
}
