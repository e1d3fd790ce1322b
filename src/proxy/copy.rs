//! The tunnel's byte pump: copies both directions of an upgraded connection.
//!
//! Memory is the point. Tens of thousands of mostly idle WebSockets must cost almost
//! nothing, so an idle tunnel owns no copy buffer at all: reads go into one scratch
//! buffer per worker thread, borrowed only inside a single `poll`, and are written
//! straight through to the other side. Only when the other side cannot take
//! everything at once is the remainder copied into a buffer owned by that direction,
//! and that buffer is freed as soon as it drains.
//!
//! Each direction progresses on its own (a slow reader on one side never stops the
//! other direction), and end-of-stream is propagated as a half-close: when one side
//! finishes sending, the other side's write half is shut down and the opposite
//! direction keeps flowing until it finishes too.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Big enough that a 16 KiB WebSocket message moves in one read.
const SCRATCH_SIZE: usize = 64 * 1024;

thread_local! {
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH_SIZE].into_boxed_slice());
}

/// Which end of the tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Backend,
}

/// One direction's state. Empty `pending` means nothing is buffered.
#[derive(Debug, Default)]
struct Flow {
    pending: Vec<u8>,
    pos: usize,
    unflushed: bool,
    /// The source has finished sending.
    eof: bool,
    /// EOF has been passed on as a shutdown of the destination's write half.
    done: bool,
    bytes: u64,
}

impl Flow {
    fn with_prefix(prefix: Bytes) -> Flow {
        Flow {
            pending: prefix.to_vec(),
            ..Flow::default()
        }
    }
}

/// Both directions between `client` and `backend`.
#[derive(Debug)]
pub struct Pump<C, B> {
    client: C,
    backend: B,
    up: Flow,
    down: Flow,
    last_activity: Instant,
    first_eof: Option<Side>,
}

impl<C, B> Pump<C, B>
where
    C: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    /// `client_prefix` are bytes already read from the client (after the upgrade
    /// request) that belong to the backend; `backend_prefix` the reverse.
    pub fn new(client: C, client_prefix: Bytes, backend: B, backend_prefix: Bytes) -> Self {
        Pump {
            client,
            backend,
            up: Flow::with_prefix(client_prefix),
            down: Flow::with_prefix(backend_prefix),
            last_activity: Instant::now(),
            first_eof: None,
        }
    }

    /// Ready when both directions have finished, or at the first I/O error.
    pub fn poll(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let up = flow(
            cx,
            &mut self.client,
            &mut self.backend,
            &mut self.up,
            &mut self.last_activity,
        );
        if let Poll::Ready(Err(e)) = up {
            return Poll::Ready(Err(e));
        }
        if self.up.eof && self.first_eof.is_none() {
            self.first_eof = Some(Side::Client);
        }
        let down = flow(
            cx,
            &mut self.backend,
            &mut self.client,
            &mut self.down,
            &mut self.last_activity,
        );
        if let Poll::Ready(Err(e)) = down {
            return Poll::Ready(Err(e));
        }
        if self.down.eof && self.first_eof.is_none() {
            self.first_eof = Some(Side::Backend);
        }
        if up.is_ready() && down.is_ready() {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }

    /// When a byte last moved in either direction.
    pub fn last_activity(&self) -> Instant {
        self.last_activity
    }

    /// The side that finished sending first, if any has.
    pub fn first_eof(&self) -> Option<Side> {
        self.first_eof
    }

    /// Bytes copied client → backend and backend → client.
    pub fn totals(&self) -> (u64, u64) {
        (self.up.bytes, self.down.bytes)
    }
}

/// Moves bytes `from` → `to` until `from` would block (Pending) or has finished and the
/// finish has been passed on (Ready).
fn flow<R, W>(
    cx: &mut Context<'_>,
    from: &mut R,
    to: &mut W,
    f: &mut Flow,
    activity: &mut Instant,
) -> Poll<io::Result<()>>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    if f.done {
        return Poll::Ready(Ok(()));
    }
    loop {
        while f.pos < f.pending.len() {
            let n = ready!(Pin::new(&mut *to).poll_write(cx, &f.pending[f.pos..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            f.pos += n;
        }
        if !f.pending.is_empty() {
            // Drained: give the memory back, an idle tunnel holds no buffer.
            f.pending = Vec::new();
            f.pos = 0;
        }
        if f.unflushed {
            ready!(Pin::new(&mut *to).poll_flush(cx))?;
            f.unflushed = false;
        }
        if f.eof {
            ready!(Pin::new(&mut *to).poll_shutdown(cx))?;
            f.done = true;
            return Poll::Ready(Ok(()));
        }
        ready!(read_and_forward(cx, from, to, f, activity))?;
    }
}

/// One read into the thread's scratch buffer, written through at once; whatever the
/// destination does not take now is kept in `f.pending`.
fn read_and_forward<R, W>(
    cx: &mut Context<'_>,
    from: &mut R,
    to: &mut W,
    f: &mut Flow,
    activity: &mut Instant,
) -> Poll<io::Result<()>>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    SCRATCH.with_borrow_mut(|buf| {
        let mut rb = ReadBuf::new(buf);
        ready!(Pin::new(&mut *from).poll_read(cx, &mut rb))?;
        let n = rb.filled().len();
        if n == 0 {
            f.eof = true;
            return Poll::Ready(Ok(()));
        }
        f.bytes += n as u64;
        *activity = Instant::now();
        let mut off = 0;
        while off < n {
            match Pin::new(&mut *to).poll_write(cx, &buf[off..n]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(w)) => off += w,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    f.pending = buf[off..n].to_vec();
                    break;
                }
            }
        }
        f.unflushed = true;
        Poll::Ready(Ok(()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    #[tokio::test]
    async fn copies_both_ways_with_prefixes_and_half_close() {
        let (client, mut client_peer) = duplex(64);
        let (backend, mut backend_peer) = duplex(64);
        let mut pump = Pump::new(
            client,
            Bytes::from_static(b"early"),
            backend,
            Bytes::from_static(b"hi"),
        );
        let task = tokio::spawn(async move {
            poll_fn(|cx| pump.poll(cx)).await.unwrap();
            (pump.totals(), pump.first_eof())
        });

        // Larger than both pipes, so partial writes and the pending buffer are used.
        let big: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        let send = big.clone();
        let writer = tokio::spawn(async move {
            client_peer.write_all(&send).await.unwrap();
            client_peer.shutdown().await.unwrap();
            let mut back = Vec::new();
            client_peer.read_to_end(&mut back).await.unwrap();
            back
        });
        let mut got = Vec::new();
        backend_peer.read_to_end(&mut got).await.unwrap();
        assert_eq!(&got[..5], b"early");
        assert_eq!(&got[5..], &big[..]);
        // The client half-closed; the backend can still answer, then close.
        backend_peer.write_all(b"bye").await.unwrap();
        drop(backend_peer);
        assert_eq!(writer.await.unwrap(), b"hibye");
        let ((up, down), first) = task.await.unwrap();
        assert_eq!((up, down), (100_000, 3));
        assert_eq!(first, Some(Side::Client));
    }

    #[tokio::test]
    async fn an_idle_pump_holds_no_buffer() {
        let (client, mut client_peer) = duplex(1 << 20);
        let (backend, mut backend_peer) = duplex(1 << 20);
        let mut pump = Pump::new(client, Bytes::new(), backend, Bytes::new());
        client_peer.write_all(b"ping").await.unwrap();
        assert!(poll_fn(|cx| Poll::Ready(pump.poll(cx))).await.is_pending());
        let mut buf = [0u8; 4];
        backend_peer.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        assert_eq!(pump.up.pending.capacity(), 0);
        assert_eq!(pump.down.pending.capacity(), 0);
    }
}
