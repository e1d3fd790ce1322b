//! The tunnel's byte pump: copies both directions of an upgraded connection, and closes
//! them with WebSocket Close frames when tether ends a tunnel.
//!
//! Memory is the point. Tens of thousands of mostly idle WebSockets must cost almost
//! nothing, so an idle tunnel owns no copy buffer at all: reads go into one scratch
//! buffer per worker thread, borrowed only inside a single `poll`, and are written
//! straight through to the other side. Only when the other side cannot take
//! everything at once is the remainder copied into a buffer owned by that direction,
//! and that buffer is freed as soon as it drains.
//!
//! Each direction progresses on its own (a slow reader on one side never stops the
//! other direction), and end-of-stream is propagated as a half-close. Each direction
//! tracks WebSocket frame boundaries ([`FrameTracker`]), so tether only ever adds a
//! Close frame between frames. When the backend's stream ends without a Close frame
//! (a crashed node), the client is sent Close 1012 before the end of stream, so it
//! reconnects at once and knows why — unless the client had already sent its own Close,
//! as it then is leaving anyway. tether never adds a Close frame to a stream that
//! already carried one.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::frames::{FrameTracker, close_frame};
use crate::registry::TunnelCtl;

/// Big enough that a 16 KiB WebSocket message moves in one read.
const SCRATCH_SIZE: usize = 64 * 1024;

/// The close code for a backend stream that ends without a Close frame.
const BACKEND_VANISHED: u16 = 1012;

thread_local! {
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH_SIZE].into_boxed_slice());
}

/// Which end of the tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Backend,
}

/// An I/O error and the side whose socket failed.
#[derive(Debug)]
pub struct Failed {
    pub side: Side,
    pub error: io::Error,
}

/// One direction's state. Empty `pending` means nothing is buffered.
#[derive(Debug)]
struct Flow {
    /// The side this direction reads from.
    from: Side,
    /// Bytes read but not yet taken by the destination (boxed slice: 16 bytes when
    /// empty, which is nearly always), and how many of them were written.
    pending: Box<[u8]>,
    pos: usize,
    unflushed: bool,
    /// The source has finished sending.
    eof: bool,
    /// If the source ends between frames without having sent a Close frame, send the
    /// destination Close 1012 before end of stream. Only towards the client, and only
    /// while the client has neither started closing itself (then its closing
    /// handshake just ends without the backend's reply, as it would without tether)
    /// nor hung up (the backend's end of stream then answers the client's: nothing
    /// vanished, and the client is not there to be told).
    vanish_notice: bool,
    /// EOF has been passed on as a shutdown of the destination's write half.
    done: bool,
    bytes: u64,
    /// The process-wide counter for this direction (`tether_tunnel_bytes`).
    meter: Counter,
    frames: FrameTracker,
}

impl Flow {
    fn new(from: Side, prefix: Bytes) -> Flow {
        let mut frames = FrameTracker::default();
        frames.feed(&prefix);
        Flow {
            from,
            pending: prefix.to_vec().into_boxed_slice(),
            pos: 0,
            unflushed: false,
            eof: false,
            vanish_notice: from == Side::Backend,
            done: false,
            bytes: prefix.len() as u64,
            meter: Counter::default(),
            frames,
        }
    }

    fn to(&self) -> Side {
        match self.from {
            Side::Client => Side::Backend,
            Side::Backend => Side::Client,
        }
    }

    /// Nothing buffered and the stream sits between frames: a Close frame can go now.
    fn between_frames(&self) -> bool {
        self.pos >= self.pending.len() && self.frames.at_boundary()
    }

    /// tether may add a Close frame to this direction now: between frames, the
    /// destination not yet told end of stream, and no Close already sent by the source
    /// (after a Close, RFC 6455 §5.5.1 allows no more frames).
    fn may_close(&self) -> bool {
        self.between_frames() && !self.done && !self.frames.saw_close()
    }

    /// Everything read has been written and flushed, up to a frame boundary, and no
    /// end of stream is still being passed on: stopping now loses nothing. (A Close
    /// frame counts as seen once its header is read; this waits for its payload.)
    fn settled(&self) -> bool {
        self.between_frames() && !self.unflushed && !self.eof
    }
}

/// Both directions between `client` and `backend`.
#[derive(Debug)]
pub struct Pump<C, B> {
    client: C,
    backend: B,
    up: Flow,
    down: Flow,
    /// Told of every byte that moves (its timestamp drives the idle timeout).
    ctl: Arc<TunnelCtl>,
    first_eof: Option<Side>,
    /// The side that sent the first WebSocket Close frame: who started the closing.
    first_close: Option<Side>,
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
            up: Flow::new(Side::Client, client_prefix),
            down: Flow::new(Side::Backend, backend_prefix),
            ctl: Arc::new(TunnelCtl::new(None)),
            first_eof: None,
            first_close: None,
        }
    }

    /// Reports activity to `ctl` (the registry's handle for this tunnel).
    pub fn watched(mut self, ctl: Arc<TunnelCtl>) -> Self {
        self.ctl = ctl;
        self
    }

    /// Counts the bytes of each direction also into `up` and `down`.
    pub fn metered(mut self, up: Counter, down: Counter) -> Self {
        up.inc_by(self.up.bytes);
        down.inc_by(self.down.bytes);
        self.up.meter = up;
        self.down.meter = down;
        self
    }

    /// Ready when both directions have finished, or at the first I/O error. Once both
    /// sides have sent a WebSocket Close frame nothing more may flow, so the first end
    /// of stream, passed on, ends the whole tunnel as it does in nginx: the other
    /// side's end of stream is not waited for (a client that never closes its socket
    /// would otherwise hold the tunnel until the idle timeout).
    pub fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Failed>> {
        let up = flow(
            cx,
            &mut self.client,
            &mut self.backend,
            &mut self.up,
            &self.ctl,
            self.down.eof,
        );
        if let Poll::Ready(Err(e)) = up {
            return Poll::Ready(Err(e));
        }
        if self.up.eof {
            self.down.vanish_notice = false;
            if self.first_eof.is_none() {
                self.first_eof = Some(Side::Client);
                self.ctl.half_close();
            }
        }
        if self.up.frames.saw_close() {
            self.first_close.get_or_insert(Side::Client);
            self.down.vanish_notice = false;
        }
        let down = flow(
            cx,
            &mut self.backend,
            &mut self.client,
            &mut self.down,
            &self.ctl,
            self.up.eof,
        );
        if let Poll::Ready(Err(e)) = down {
            return Poll::Ready(Err(e));
        }
        if self.down.eof && self.first_eof.is_none() {
            self.first_eof = Some(Side::Backend);
            self.ctl.half_close();
        }
        if self.down.frames.saw_close() {
            self.first_close.get_or_insert(Side::Backend);
        }
        let finished = up.is_ready() && down.is_ready();
        let closed = self.closing_done()
            && ((self.up.done && self.down.settled()) || (self.down.done && self.up.settled()));
        if finished || closed {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }

    /// Both sides have sent a Close frame: the WebSocket closing handshake is complete.
    fn closing_done(&self) -> bool {
        self.up.frames.saw_close() && self.down.frames.saw_close()
    }

    /// Who ended the conversation: the side that sent the first Close frame, else the
    /// side that finished sending first (a WebSocket server closes TCP first even when
    /// the client started the closing handshake).
    pub fn closed_by(&self) -> Option<Side> {
        self.first_close.or(self.first_eof)
    }

    /// Bytes copied client → backend and backend → client.
    pub fn totals(&self) -> (u64, u64) {
        (self.up.bytes, self.down.bytes)
    }

    /// Ends the tunnel from tether's side: sends what is already buffered, lets a
    /// frame in flight towards a side that is to get a Close finish (a busy stream is
    /// nearly always mid-frame), then sends a Close frame with `to_client` /
    /// `to_backend` to each side that is between frames (else that side just gets end
    /// of stream), then waits for the peers to close so the Close frames are read
    /// rather than lost to a reset. All within `linger`: a frame that does not finish
    /// in time is cut with the connection, without a Close.
    pub async fn close(
        &mut self,
        to_client: Option<u16>,
        to_backend: Option<u16>,
        why: &str,
        linger: Duration,
    ) {
        let deadline = tokio::time::Instant::now() + linger;
        let _ = tokio::time::timeout_at(deadline, async {
            // Buffered bytes first, so the Close frame lands after complete frames.
            let _ = flush_pending(&mut self.backend, &mut self.up).await;
            let _ = flush_pending(&mut self.client, &mut self.down).await;
            // Small buffers: thousands of tunnels can be closing at once (shutdown).
            let mut sink = [0u8; 512];
            let mut sink2 = [0u8; 512];
            if to_client.is_some() {
                let (from, to) = (&mut self.backend, &mut self.client);
                let _ = finish_frame(from, to, &mut self.down, &mut sink).await;
            }
            if to_backend.is_some() {
                let (from, to) = (&mut self.client, &mut self.backend);
                let _ = finish_frame(from, to, &mut self.up, &mut sink).await;
            }
            if let Some(code) = to_client.filter(|_| self.down.may_close()) {
                let _ = self.client.write_all(&close_frame(code, why, None)).await;
            }
            if let Some(code) = to_backend.filter(|_| self.up.may_close()) {
                let mask = (crate::upstream::health::now_ms() as u32 | 1).to_be_bytes();
                let _ = self
                    .backend
                    .write_all(&close_frame(code, why, Some(mask)))
                    .await;
            }
            let _ = tokio::join!(self.client.shutdown(), self.backend.shutdown());
            // Read and discard until both peers close (or the deadline).
            let client =
                async { while matches!(self.client.read(&mut sink).await, Ok(n) if n > 0) {} };
            // A backend that was not sent a Close (it is down) is not waited for.
            let backend = async {
                if to_backend.is_some() {
                    while matches!(self.backend.read(&mut sink2).await, Ok(n) if n > 0) {}
                }
            };
            tokio::join!(client, backend);
        })
        .await;
    }
}

/// Copies `from` → `to` up to the end of the frame in flight, and not a byte further:
/// reads are sized to what is left of the frame (of its header, then its payload).
async fn finish_frame<R, W>(
    from: &mut R,
    to: &mut W,
    f: &mut Flow,
    buf: &mut [u8],
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    while !f.frames.at_boundary() && !f.eof && !f.done {
        let want = f.frames.left_in_frame().min(buf.len() as u64) as usize;
        let n = from.read(&mut buf[..want]).await?;
        if n == 0 {
            f.eof = true;
            break;
        }
        f.frames.feed(&buf[..n]);
        f.bytes += n as u64;
        f.meter.inc_by(n as u64);
        to.write_all(&buf[..n]).await?;
    }
    to.flush().await
}

async fn flush_pending<W: AsyncWrite + Unpin>(to: &mut W, f: &mut Flow) -> io::Result<()> {
    if f.pos < f.pending.len() {
        to.write_all(&f.pending[f.pos..]).await?;
        f.pos = f.pending.len();
        to.flush().await?;
    }
    Ok(())
}

/// Moves bytes `from` → `to` until `from` would block (Pending) or has finished and the
/// finish has been passed on (Ready). `to_finished`: `to` has already finished sending
/// to us, so its connection is about to be closed whole and a shutdown of its write
/// half would be a wasted system call (the close sends the FIN).
fn flow<R, W>(
    cx: &mut Context<'_>,
    from: &mut R,
    to: &mut W,
    f: &mut Flow,
    activity: &TunnelCtl,
    to_finished: bool,
) -> Poll<Result<(), Failed>>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    if f.done {
        return Poll::Ready(Ok(()));
    }
    let to_side = f.to();
    let fail_to = |error| Failed {
        side: to_side,
        error,
    };
    loop {
        while f.pos < f.pending.len() {
            let n =
                ready!(Pin::new(&mut *to).poll_write(cx, &f.pending[f.pos..])).map_err(fail_to)?;
            if n == 0 {
                return Poll::Ready(Err(fail_to(io::ErrorKind::WriteZero.into())));
            }
            f.pos += n;
        }
        if !f.pending.is_empty() {
            // Drained: give the memory back, an idle tunnel holds no buffer.
            f.pending = Box::default();
            f.pos = 0;
        }
        if f.unflushed {
            ready!(Pin::new(&mut *to).poll_flush(cx)).map_err(fail_to)?;
            f.unflushed = false;
        }
        if f.eof {
            if !to_finished {
                ready!(Pin::new(&mut *to).poll_shutdown(cx)).map_err(fail_to)?;
            }
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
    activity: &TunnelCtl,
) -> Poll<Result<(), Failed>>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    SCRATCH.with_borrow_mut(|buf| {
        let mut rb = ReadBuf::new(buf);
        ready!(Pin::new(&mut *from).poll_read(cx, &mut rb)).map_err(|error| Failed {
            side: f.from,
            error,
        })?;
        let n = rb.filled().len();
        if n == 0 {
            f.eof = true;
            if f.vanish_notice && f.frames.at_boundary() && !f.frames.saw_close() {
                // The backend vanished without closing the WebSocket: tell the client.
                // The Close is the backend's closing, said for it: tracked as its frame,
                // so the client's reply does not make the client the one who closed.
                let close = close_frame(BACKEND_VANISHED, "tether: backend closed", None);
                f.frames.feed(&close);
                f.pending = close.into_boxed_slice();
                f.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        f.frames.feed(&buf[..n]);
        f.bytes += n as u64;
        f.meter.inc_by(n as u64);
        activity.touch();
        let mut off = 0;
        while off < n {
            match Pin::new(&mut *to).poll_write(cx, &buf[off..n]) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(Failed {
                        side: f.to(),
                        error: io::ErrorKind::WriteZero.into(),
                    }));
                }
                Poll::Ready(Ok(w)) => off += w,
                Poll::Ready(Err(error)) => {
                    return Poll::Ready(Err(Failed {
                        side: f.to(),
                        error,
                    }));
                }
                Poll::Pending => {
                    f.pending = buf[off..n].into();
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
    use tokio::io::duplex;

    type Peer = tokio::io::DuplexStream;

    /// A pump between two in-memory pipes, and their far ends: the client, the backend.
    fn pumped() -> (Pump<Peer, Peer>, Peer, Peer) {
        let (client, client_peer) = duplex(1024);
        let (backend, backend_peer) = duplex(1024);
        let pump = Pump::new(client, Bytes::new(), backend, Bytes::new());
        (pump, client_peer, backend_peer)
    }

    /// Runs `pump` until the client has read `to_client` bytes and the backend
    /// `to_backend`; the pump must not end meanwhile.
    async fn passed(
        pump: &mut Pump<Peer, Peer>,
        client_peer: &mut Peer,
        to_client: usize,
        backend_peer: &mut Peer,
        to_backend: usize,
    ) {
        let (mut a, mut b) = (vec![0u8; to_client], vec![0u8; to_backend]);
        tokio::select! {
            _ = poll_fn(|cx| pump.poll(cx)) => panic!("the pump ended"),
            r = async { tokio::try_join!(client_peer.read_exact(&mut a), backend_peer.read_exact(&mut b)) } => {
                r.unwrap();
            }
        }
    }

    /// Ends both peers' sending, closes `pump` from tether's side with the given codes,
    /// and returns what the client and the backend received from then on.
    async fn closed_with(
        pump: &mut Pump<Peer, Peer>,
        mut client_peer: Peer,
        mut backend_peer: Peer,
        to_client: Option<u16>,
        to_backend: Option<u16>,
    ) -> (Vec<u8>, Vec<u8>) {
        drop((client_peer.shutdown().await, backend_peer.shutdown().await));
        pump.close(to_client, to_backend, "test", Duration::from_secs(5))
            .await;
        let (mut got_client, mut got_backend) = (Vec::new(), Vec::new());
        client_peer.read_to_end(&mut got_client).await.unwrap();
        backend_peer.read_to_end(&mut got_backend).await.unwrap();
        (got_client, got_backend)
    }

    /// Both Close frames seen and the client gone: the tunnel ends, but not before the
    /// rest of a backend Close frame whose header has already passed.
    #[tokio::test]
    async fn a_close_frame_split_across_reads_is_passed_on_whole() {
        let (mut pump, mut client_peer, mut backend_peer) = pumped();
        let task = tokio::spawn(async move { poll_fn(|cx| pump.poll(cx)).await.unwrap() });

        let reply = close_frame(1000, "bye", None);
        backend_peer.write_all(&reply[..3]).await.unwrap();
        let mut head = [0u8; 3];
        client_peer.read_exact(&mut head).await.unwrap();
        // The client's Close, then its end of stream, reach the backend.
        let close = close_frame(1000, "", Some([1, 2, 3, 4]));
        client_peer.write_all(&close).await.unwrap();
        client_peer.shutdown().await.unwrap();
        let mut got = Vec::new();
        backend_peer.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, close);
        // The rest of the backend's Close still reaches the client.
        backend_peer.write_all(&reply[3..]).await.unwrap();
        backend_peer.shutdown().await.unwrap();
        let mut rest = Vec::new();
        client_peer.read_to_end(&mut rest).await.unwrap();
        assert_eq!([&head[..], &rest[..]].concat(), reply);
        task.await.unwrap();
    }

    #[tokio::test]
    async fn copies_both_ways_with_prefixes_and_half_close() {
        let (client, mut client_peer) = duplex(64);
        let (backend, mut backend_peer) = duplex(64);
        let mut pump = Pump::new(
            client,
            Bytes::from_static(b"early"),
            backend,
            Bytes::from_static(b"ok"),
        );
        let task = tokio::spawn(async move {
            poll_fn(|cx| pump.poll(cx)).await.unwrap();
            (pump.totals(), pump.closed_by())
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
        let back = writer.await.unwrap();
        // "ok" and "bye" are not WebSocket frames (they read as a frame header with a
        // long payload), so the stream ends mid-frame and no Close frame is added.
        assert_eq!(back, b"okbye");
        let ((up, down), first) = task.await.unwrap();
        assert_eq!((up, down), (5 + 100_000, 2 + 3));
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
        assert!(pump.up.pending.is_empty());
        assert!(pump.down.pending.is_empty());
    }

    /// ... and the backend is the side that ended it, though the client answers the
    /// Close (what `tether_tunnels_closed{reason}` and the access log report).
    #[tokio::test]
    async fn a_backend_that_vanishes_between_frames_leaves_a_1012() {
        let (mut pump, mut client_peer, mut backend_peer) = pumped();
        let task = tokio::spawn(async move {
            let _ = poll_fn(|cx| pump.poll(cx)).await;
            pump.closed_by()
        });
        backend_peer
            .write_all(&[0x81, 2, b'h', b'i'])
            .await
            .unwrap();
        // The end of stream of a crashed process; its socket still takes writes until
        // the reset comes back.
        backend_peer.shutdown().await.unwrap();
        let mut got = Vec::new();
        client_peer.read_to_end(&mut got).await.unwrap();
        assert_eq!(&got[..4], &[0x81, 2, b'h', b'i']);
        assert_eq!(&got[4..8], &[0x88, (got.len() - 6) as u8, 0x03, 0xf4]);
        let reply = close_frame(1012, "", Some([1, 2, 3, 4]));
        let _ = client_peer.write_all(&reply).await;
        drop(client_peer);
        assert_eq!(task.await.unwrap(), Some(Side::Backend));
    }

    #[tokio::test]
    async fn a_backend_that_vanishes_mid_frame_is_not_patched_up() {
        let (mut pump, mut client_peer, mut backend_peer) = pumped();
        let task =
            tokio::spawn(async move { poll_fn(|cx| pump.poll(cx)).await.map_err(|f| f.side) });
        backend_peer
            .write_all(&[0x81, 5, b'h', b'i'])
            .await
            .unwrap();
        drop(backend_peer);
        let mut got = Vec::new();
        client_peer.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, [0x81, 5, b'h', b'i']);
        drop(client_peer);
        let _ = task.await.unwrap();
    }

    #[tokio::test]
    async fn close_sends_close_frames_between_frames_only() {
        let (mut pump, mut client_peer, mut backend_peer) = pumped();
        // A complete frame from the backend, half a frame from the client.
        backend_peer.write_all(&[0x81, 1, b'x']).await.unwrap();
        client_peer
            .write_all(&[0x81, 0x85, 1, 2, 3, 4, 0])
            .await
            .unwrap();
        passed(&mut pump, &mut client_peer, 3, &mut backend_peer, 7).await;
        let (to_client, to_backend) =
            closed_with(&mut pump, client_peer, backend_peer, Some(1001), Some(1001)).await;
        assert_eq!(
            &to_client[..4],
            &[0x88, (to_client.len() - 2) as u8, 0x03, 0xe9]
        );
        assert!(
            to_backend.is_empty(),
            "a Close frame was injected mid-frame: {to_backend:?}"
        );
    }

    /// A busy stream is nearly always mid-frame: closing lets the frame in flight
    /// finish, then the Close goes, and not a byte of the next frame is taken.
    #[tokio::test]
    async fn close_finishes_the_frame_in_flight_then_sends_its_close() {
        let (mut pump, mut client_peer, mut backend_peer) = pumped();
        backend_peer.write_all(&[0x82, 4, 1, 2]).await.unwrap();
        let mut got = [0u8; 4];
        tokio::select! {
            _ = poll_fn(|cx| pump.poll(cx)) => panic!("the pump ended"),
            r = client_peer.read_exact(&mut got) => { r.unwrap(); }
        }
        let peers = async {
            // The rest of the frame, and the next one, which must stay unread.
            backend_peer.write_all(&[3, 4, 0x82, 1, 9]).await.unwrap();
            let mut seen = Vec::new();
            let mut buf = [0u8; 64];
            while !seen.starts_with(&[3, 4, 0x88])
                || seen.len() < 4
                || seen.len() < 4 + usize::from(seen[3])
            {
                let n = client_peer.read(&mut buf).await.unwrap();
                assert!(n > 0, "no Close after the frame: {seen:?}");
                seen.extend_from_slice(&buf[..n]);
            }
            client_peer.shutdown().await.unwrap();
            seen
        };
        let (_, seen) = tokio::join!(
            pump.close(Some(1012), None, "test", Duration::from_secs(5)),
            peers
        );
        assert_eq!(&seen[..2], &[3, 4]);
        assert_eq!(&seen[2..6], &[0x88, seen[3], 0x03, 0xf4]);
        assert_eq!(pump.totals().1, 6);
    }

    /// A side that has received its peer's Close gets no second one from tether (idle,
    /// shutdown, backend down), in either direction.
    #[tokio::test]
    async fn close_adds_nothing_after_a_peers_close() {
        let (mut pump, mut client_peer, mut backend_peer) = pumped();
        let from_backend = close_frame(1000, "srv", None);
        let from_client = close_frame(1000, "cli", Some([1, 2, 3, 4]));
        backend_peer.write_all(&from_backend).await.unwrap();
        client_peer.write_all(&from_client).await.unwrap();
        let (up, down) = (from_client.len(), from_backend.len());
        passed(&mut pump, &mut client_peer, down, &mut backend_peer, up).await;
        let (to_client, to_backend) =
            closed_with(&mut pump, client_peer, backend_peer, Some(1001), Some(1001)).await;
        assert_eq!(
            (to_client, to_backend),
            (Vec::new(), Vec::new()),
            "frames after a Close"
        );
    }

    /// A side that sent its own Close and waits for the reply gets tether's Close as that
    /// reply; the silent peer, which has received a Close already, gets nothing more.
    #[tokio::test]
    async fn a_side_waiting_for_its_close_reply_gets_tethers() {
        let (mut pump, mut client_peer, mut backend_peer) = pumped();
        let from_client = close_frame(1000, "cli", Some([1, 2, 3, 4]));
        client_peer.write_all(&from_client).await.unwrap();
        let mut b = vec![0u8; from_client.len()];
        tokio::select! {
            _ = poll_fn(|cx| pump.poll(cx)) => panic!("the pump ended"),
            r = backend_peer.read_exact(&mut b) => { r.unwrap(); }
        }
        let (to_client, to_backend) =
            closed_with(&mut pump, client_peer, backend_peer, Some(1001), Some(1001)).await;
        assert_eq!(
            &to_client[..4],
            &[0x88, (to_client.len() - 2) as u8, 0x03, 0xe9]
        );
        assert!(to_backend.is_empty(), "{to_backend:?}");
    }

    /// A client that hangs up without a Close frame (a closed tab, `terminate()`) ended
    /// the tunnel: the backend's end of stream that follows is its answer, not a
    /// vanished node, so the client gets no 1012 and the close is the client's.
    #[tokio::test]
    async fn a_client_that_hangs_up_ends_the_tunnel_without_a_1012() {
        let (mut pump, mut client_peer, mut backend_peer) = pumped();
        let task = tokio::spawn(async move {
            poll_fn(|cx| pump.poll(cx)).await.unwrap();
            pump.closed_by()
        });
        backend_peer
            .write_all(&[0x81, 2, b'h', b'i'])
            .await
            .unwrap();
        let mut hi = [0u8; 4];
        client_peer.read_exact(&mut hi).await.unwrap();
        client_peer.shutdown().await.unwrap();
        // The backend sees the end of stream and drops the connection, as servers do.
        let mut rest = Vec::new();
        backend_peer.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "{rest:?}");
        drop(backend_peer);
        let mut to_client = Vec::new();
        client_peer.read_to_end(&mut to_client).await.unwrap();
        assert!(to_client.is_empty(), "{to_client:?}");
        assert_eq!(task.await.unwrap(), Some(Side::Client));
    }

    /// A client that has started the closing handshake is not told "service restart"
    /// when the backend drops the connection instead of answering: it sees the end of
    /// stream, as it would without tether.
    #[tokio::test]
    async fn a_closing_client_gets_no_1012_when_the_backend_vanishes() {
        let (mut pump, mut client_peer, mut backend_peer) = pumped();
        let task =
            tokio::spawn(async move { poll_fn(|cx| pump.poll(cx)).await.map_err(|f| f.side) });
        let close = close_frame(1000, "", Some([1, 2, 3, 4]));
        client_peer.write_all(&close).await.unwrap();
        let mut got = vec![0u8; close.len()];
        backend_peer.read_exact(&mut got).await.unwrap();
        drop(backend_peer);
        let mut to_client = Vec::new();
        client_peer.read_to_end(&mut to_client).await.unwrap();
        assert!(to_client.is_empty(), "{to_client:?}");
        drop(client_peer);
        let _ = task.await.unwrap();
    }
}
