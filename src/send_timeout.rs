//! nginx's `send_timeout` for client connections: a write to the client that makes no
//! progress for the listener's `send_timeout` fails the connection. Without it a
//! client that stops reading holds its answer, the answer's backend connection and
//! its connection slot for as long as it keeps the socket open (a WebSocket tunnel
//! included, whose writes go through the same socket).
//!
//! A timer exists only while a write is blocked; an idle connection holds none.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// A client socket whose writes must progress within `limit`.
#[derive(Debug)]
pub struct SendTimeout<S> {
    inner: S,
    limit: Duration,
    /// Armed at the first write that could not proceed; dropped at the next that does.
    blocked: Option<Pin<Box<Sleep>>>,
}

impl<S> SendTimeout<S> {
    pub fn new(inner: S, limit: Duration) -> SendTimeout<S> {
        SendTimeout {
            inner,
            limit,
            blocked: None,
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
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "the client read nothing for {} (send_timeout)",
                crate::config::human(limit)
            ),
        )))
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn a_write_nobody_reads_fails_after_the_limit_and_progress_resets_it() {
        let (near, mut far) = tokio::io::duplex(16);
        let mut s = SendTimeout::new(near, Duration::from_secs(60));
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
