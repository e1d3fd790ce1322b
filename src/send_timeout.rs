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

use hyper_util::client::legacy::connect::{Connected, Connection};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// A socket whose writes must progress within `limit`.
#[derive(Debug)]
pub struct SendTimeout<S> {
    inner: S,
    limit: Duration,
    /// Who fails to read, and the setting, for the error: ("the client", "send_timeout").
    peer: (&'static str, &'static str),
    /// Armed at the first write that could not proceed; dropped at the next that does.
    blocked: Option<Pin<Box<Sleep>>>,
}

impl<S> SendTimeout<S> {
    /// Towards a client: the listener's `send_timeout`.
    pub fn client(inner: S, limit: Duration) -> SendTimeout<S> {
        SendTimeout {
            inner,
            limit,
            peer: ("the client", "send_timeout"),
            blocked: None,
        }
    }

    /// Towards a backend: its upstream's `response_timeout`.
    pub fn backend(inner: S, limit: Duration) -> SendTimeout<S> {
        SendTimeout {
            peer: ("the backend", "response_timeout"),
            ..SendTimeout::client(inner, limit)
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
        let limit = self.limit;
        let timer = self
            .blocked
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        ready!(timer.as_mut().poll(cx));
        let (peer, setting) = self.peer;
        let stalled = WriteStalled {
            peer,
            setting,
            limit,
        };
        Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, stalled)))
    }
}

/// What a [`SendTimeout`] write fails with (inside an `io::Error` of kind `TimedOut`).
#[derive(Debug, thiserror::Error)]
#[error("{peer} read nothing for {} ({setting})", crate::config::human(*.limit))]
pub struct WriteStalled {
    peer: &'static str,
    setting: &'static str,
    limit: Duration,
}

impl WriteStalled {
    /// A client that took nothing for its listener's `send_timeout`.
    pub fn client(limit: Duration) -> WriteStalled {
        WriteStalled {
            peer: "the client",
            setting: "send_timeout",
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
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.judge(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
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

/// The pooled client asks a connection what it is: what the socket inside says.
impl<S: Connection> Connection for SendTimeout<S> {
    fn connected(&self) -> Connected {
        self.inner.connected()
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
}
