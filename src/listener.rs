//! Accept loops and the server side of each client connection.
//!
//! Each accepted socket gets TCP_NODELAY (heartbeat frames must not wait for Nagle).
//! On a TLS listener the handshake comes first, bounded by `handshake_timeout`; ALPN
//! `h2` then means HTTP/2 (with RFC 8441 extended CONNECT for WebSockets), anything
//! else HTTP/1.1 with upgrades. The listener's header size limit (431 beyond it) and
//! header timeout apply; on HTTP/2 the header timeout is the idle timeout (see
//! [`http2`]). Malformed requests are answered 400 by hyper and cost only that
//! connection. On shutdown the accept loop ends, which closes the listening socket at
//! once, and each connection finishes its in-flight request.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use http_body_util::Either;
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::TlsConfig;
use crate::proxy::{ConnInfo, Proxy, StreamSlot};
use crate::send_timeout::SendTimeout;
use crate::shutdown::Shutdown;
use crate::snapshot::Live;
use crate::stream_timeout::{Sending, Watched};

/// How long accepting pauses after running out of file descriptors, so the loop does
/// not spin while connections drain.
pub(crate) const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// A bound listening socket and the `bind` it was configured with (settings are looked
/// up by that key in the current snapshot, so a test may bind port 0).
#[derive(Debug)]
pub struct Listener {
    pub kind: Kind,
    pub bind: SocketAddr,
    pub socket: TcpListener,
}

/// What a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Client traffic: a `[[listener]]`.
    Traffic,
    /// Metrics, status and the owner API: `[admin]`.
    Admin,
}

impl Listener {
    /// A traffic listener.
    pub fn new(bind: SocketAddr, socket: TcpListener) -> Listener {
        Listener {
            kind: Kind::Traffic,
            bind,
            socket,
        }
    }

    pub fn with_kind(kind: Kind, bind: SocketAddr, socket: TcpListener) -> Listener {
        Listener { kind, bind, socket }
    }
}

/// Accepts on `listener` until `stop` (this listener removed by a reload) or shutdown.
/// Connections it accepted outlive a `stop`: they end with shutdown or on their own.
pub(crate) async fn accept_loop(
    listener: Listener,
    proxy: Arc<Proxy>,
    live: Arc<Live>,
    tasks: Shutdown,
    stop: CancellationToken,
) {
    match listener.socket.local_addr() {
        Ok(local) => info!(bind = %listener.bind, %local, "listening"),
        Err(_) => info!(bind = %listener.bind, "listening"),
    }
    let token = tasks.token().clone();
    loop {
        let accepted = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            r = listener.socket.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                warn!(bind = %listener.bind, error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        live.accepted.fetch_add(1, Ordering::Relaxed);
        // Taken after the accept, so an idle listener holds no slot; at the limit
        // this one accepted connection waits, and the rest wait in the kernel's
        // queue, until a slot frees.
        let slot = match live.connections.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                if !live.saturated.swap(true, Ordering::Relaxed) {
                    warn!(
                        max_connections = live.max_connections,
                        "connection limit reached: new connections wait until one ends"
                    );
                }
                tokio::select! {
                    biased;
                    () = stop.cancelled() => break,
                    slot = live.connections.clone().acquire_owned() => match slot {
                        Ok(slot) => slot,
                        Err(_) => break,
                    },
                }
            }
        };
        configure(&stream);
        let Some(settings) = Settings::of(&live, listener.bind) else {
            continue;
        };
        let info = Arc::new(ConnInfo {
            peer,
            bind: listener.bind,
            scheme: if settings.tls.is_some() {
                "https"
            } else {
                "http"
            },
            hsts: settings.tls.as_ref().and_then(|t| t.hsts.clone()),
            redirect_https: settings.redirect_https,
            body_timeout: settings.body_timeout,
            streams: None,
            slot: Arc::new(slot),
            close: token.child_token(),
        });
        tasks.spawn(serve(stream, settings, info, proxy.clone()));
    }
    info!(bind = %listener.bind, "stopped listening");
}

/// Socket options for an accepted client connection.
pub fn configure(stream: &TcpStream) {
    if let Err(e) = stream.set_nodelay(true) {
        debug!(error = %e, "cannot set TCP_NODELAY");
    }
}

/// What a connection takes from its listener's configuration at accept time (a reload
/// applies to connections accepted after it).
pub(crate) struct Settings {
    max_header_bytes: usize,
    header_timeout: Duration,
    body_timeout: Duration,
    send_timeout: Duration,
    redirect_https: Option<u16>,
    tls: Option<TlsConfig>,
}

impl Settings {
    /// Plain HTTP/1.1 with default limits: the admin listener.
    pub(crate) fn plain() -> Settings {
        Settings {
            max_header_bytes: 32 * 1024,
            header_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(60),
            redirect_https: None,
            tls: None,
        }
    }

    fn of(live: &Live, bind: SocketAddr) -> Option<Settings> {
        let snap = live.load();
        let l = snap.listener(bind)?;
        Some(Settings {
            max_header_bytes: l.max_header_bytes,
            header_timeout: l.header_timeout,
            body_timeout: l.body_timeout,
            send_timeout: l.send_timeout,
            redirect_https: l.redirect_https,
            tls: l.tls.clone(),
        })
    }
}

/// TLS handshake if the listener has TLS, then HTTP/2 if ALPN chose it, else HTTP/1.1.
async fn serve(stream: TcpStream, mut settings: Settings, info: Arc<ConnInfo>, proxy: Arc<Proxy>) {
    let token = info.close.clone();
    // The handler; on HTTP/2 it also counts requests and open streams for the idle
    // timeout (a response body being sent is an open stream; so is a WebSocket, whose
    // tunnel holds its own `Open`, see `ConnInfo::streams`), and puts each answer under
    // the send timeout (see stream_timeout.rs).
    let service = move |info: Arc<ConnInfo>| {
        service_fn(move |req| {
            let proxy = proxy.clone();
            let info = info.clone();
            let open = info.streams.as_ref().map(Open::request);
            async move {
                let mut resp = proxy.handle(req, &info).await;
                // An HTTP/2 request's own share of max_connections: kept with its stream
                // until the answer has been sent.
                let slot = resp.extensions_mut().remove::<StreamSlot>();
                Ok::<_, Infallible>(resp.map(|body| match open {
                    None => Either::Left(body),
                    Some(open) => {
                        let sending = open.activity.sending.clone();
                        Either::Right(Watched::new(body, open.answered(slot), sending))
                    }
                }))
            }
        })
    };
    let stream = SendTimeout::client(stream, settings.send_timeout);
    let Some(tls) = settings.tls.take() else {
        return http1(TokioIo::new(stream), &settings, service(info), token).await;
    };
    // Boxed: the TLS handshake and HTTP/2 take several times the state of a plain
    // HTTP/1.1 connection, which every plain connection's task would otherwise carry.
    Box::pin(async move {
        let accepted = tokio::time::timeout(
            tls.handshake_timeout,
            TlsAcceptor::from(tls.server.clone()).accept(stream),
        )
        .await;
        let stream = match accepted {
            Ok(Ok(s)) => s,
            // A failed handshake (plain HTTP, an unknown CA, garbage) costs only this
            // connection and is not an operator's problem: debug level.
            Ok(Err(e)) => return debug!(error = %e, "TLS handshake failed"),
            Err(_) => return debug!("TLS handshake timed out"),
        };
        if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
            let activity = Arc::new(Activity {
                sending: Arc::new(Sending::new(settings.send_timeout)),
                ..Activity::default()
            });
            let info = Arc::new(ConnInfo {
                streams: Some(activity.clone()),
                ..(*info).clone()
            });
            http2(
                TokioIo::new(stream),
                &settings,
                service(info),
                &activity,
                token,
            )
            .await
        } else {
            http1(TokioIo::new(stream), &settings, service(info), token).await
        }
    })
    .await
}

pub(crate) async fn http1<I, S, B>(io: I, settings: &Settings, service: S, token: CancellationToken)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming, ResBody = B> + Send,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::Future: Send,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut b = http1::Builder::new();
    b.timer(TokioTimer::new());
    b.max_header_size(settings.max_header_bytes);
    b.header_read_timeout(settings.header_timeout);
    let mut conn = pin!(b.serve_connection(io, service).with_upgrades());
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = token.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        debug!(error = %e, "HTTP/1.1 client connection ended with an error");
    }
}

/// Streams one HTTP/2 connection carries at once (nginx: 128).
const H2_STREAMS: u32 = 128;
/// Flow-control window per stream: what a client may send ahead into a stream whose
/// backend is not reading (nginx's `http2_body_preread_size`). With [`H2_STREAMS`],
/// at most 8 MiB buffered per connection when every stream stalls.
const H2_STREAM_WINDOW: u32 = 64 * 1024;

/// HTTP/2 with the extended CONNECT protocol (RFC 8441) for WebSockets.
///
/// The connection window covers every stream's window, so a stream whose backend
/// stopped reading (a stalled WebSocket, a slow upload) holds back only itself, never
/// the other streams of the connection (hyper's default, 1 MiB for both, let one
/// stalled stream block all of them).
///
/// Idle timeout, as HTTP/1.1's header timeout, counted in requests and open streams
/// (not in bytes: PINGs would keep a connection forever). A connection with no request
/// within `header_timeout` of the TLS handshake is closed (no preface, or only PINGs
/// and SETTINGS: a slowloris). Later, one with no stream open and no new request for
/// `header_timeout` is sent GOAWAY; if it has still not ended, with nothing open, one
/// `header_timeout` after that, it is closed. Checked once per `header_timeout`, so
/// "for `header_timeout`" is one to two of them. A connection carrying a WebSocket is
/// never idle.
///
/// Once per `send_timeout`, answers whose client has stopped taking them are cut (see
/// stream_timeout.rs).
async fn http2<I, S, B>(
    io: I,
    settings: &Settings,
    service: S,
    activity: &Activity,
    token: CancellationToken,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming, ResBody = B> + Send + Clone + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut b = http2::Builder::new(TokioExecutor::new());
    b.timer(TokioTimer::new());
    b.enable_connect_protocol();
    b.max_header_list_size(u32::try_from(settings.max_header_bytes).unwrap_or(u32::MAX));
    b.max_concurrent_streams(H2_STREAMS);
    b.initial_stream_window_size(H2_STREAM_WINDOW);
    b.initial_connection_window_size(H2_STREAMS * H2_STREAM_WINDOW);
    let mut conn = pin!(b.serve_connection(io, service));
    let mut idle = tokio::time::interval(settings.header_timeout);
    idle.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    idle.tick().await; // the first tick is immediate
    let mut sending = tokio::time::interval(settings.send_timeout);
    sending.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    sending.tick().await;
    let mut requests = 0;
    let mut closing = false;
    let result = loop {
        tokio::select! {
            // A request that has arrived wins over the timer.
            biased;
            r = conn.as_mut() => break r,
            () = activity.abusive.notified() => {
                info!(
                    requests = activity.requests.load(Ordering::Relaxed),
                    reset = activity.premature.load(Ordering::Relaxed),
                    "HTTP/2 client reset most of its requests before their answer; closed"
                );
                // GOAWAY, so the client learns why; a moment for what is in flight.
                conn.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(ABUSIVE_GRACE, conn.as_mut()).await;
                return;
            }
            () = token.cancelled(), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            _ = sending.tick() => {
                activity.sending.cut_stalled();
                // hyper never ends a cut stream (it waits for window the client does
                // not give), so a closing connection may have only those left.
                if closing && activity.open.load(Ordering::Relaxed) == 0 {
                    return debug!("HTTP/2 client did not leave after GOAWAY; closed");
                }
            }
            _ = idle.tick() => {
                let now = activity.requests.load(Ordering::Relaxed);
                if now == 0 {
                    return debug!("HTTP/2 client sent no request in time; closed");
                }
                let open = activity.open.load(Ordering::Relaxed);
                if open == 0 && closing {
                    return debug!("HTTP/2 client did not leave after GOAWAY; closed");
                }
                if open == 0 && now == requests {
                    debug!("HTTP/2 client connection idle; GOAWAY");
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
                requests = now;
            }
        }
    };
    if let Err(e) = result {
        debug!(error = %e, "HTTP/2 client connection ended with an error");
    }
}

/// A request an HTTP/2 client resets within this long of sending it, before its
/// answer, is a premature reset (Envoy's `premature_reset_min_stream_lifetime`).
const PREMATURE: Duration = Duration::from_secs(1);
/// Requests an HTTP/2 connection may make before its premature resets are judged
/// (Envoy's `premature_reset_total_stream_count`): a browser leaving a page cancels a
/// few dozen, an attacker thousands.
const PREMATURE_JUDGED_AFTER: u64 = 500;

/// How long a connection closed for its resets has, after GOAWAY, to finish what it
/// has in flight.
const ABUSIVE_GRACE: Duration = Duration::from_secs(1);

/// What an HTTP/2 connection's idle timeout, its reset guard and its send timeout
/// look at.
#[derive(Debug, Default)]
pub(crate) struct Activity {
    /// The answers being sent, under the listener's `send_timeout`.
    sending: Arc<Sending>,
    /// Requests seen at all.
    requests: AtomicU64,
    /// Streams open: requests being handled, response bodies being sent, WebSockets.
    open: AtomicUsize,
    /// Requests reset prematurely (see [`PREMATURE`]).
    premature: AtomicU64,
    /// Woken once more than half of at least [`PREMATURE_JUDGED_AFTER`] requests were
    /// reset prematurely: each made tether start work (a backend connection, a request)
    /// that the reset threw away, so the client is made to pay a connection for them
    /// (the HTTP/2 "rapid reset" attack, CVE-2023-44487, in the variant that waits for
    /// the request to be accepted, which h2's own limit on resets does not see).
    abusive: tokio::sync::Notify,
}

/// One open stream of an HTTP/2 connection, counted in [`Activity`] until dropped.
#[derive(Debug)]
pub(crate) struct Open {
    activity: Arc<Activity>,
    /// For a request not yet answered: when it arrived.
    asked: Option<Instant>,
    /// The request's share of `max_connections`, while its answer is sent.
    _slot: Option<StreamSlot>,
}

impl Open {
    /// A stream that is not a request of its own (a WebSocket tunnel's).
    pub(crate) fn new(activity: &Arc<Activity>) -> Open {
        activity.open.fetch_add(1, Ordering::Relaxed);
        Open {
            activity: activity.clone(),
            asked: None,
            _slot: None,
        }
    }

    /// A request that has just arrived: counted, and a premature reset if dropped
    /// unanswered within [`PREMATURE`].
    pub(crate) fn request(activity: &Arc<Activity>) -> Open {
        activity.requests.fetch_add(1, Ordering::Relaxed);
        let mut open = Open::new(activity);
        open.asked = Some(Instant::now());
        open
    }

    /// The listener's `send_timeout`, which the stream's writes are held to.
    pub(crate) fn send_timeout(&self) -> Duration {
        self.activity.sending.limit()
    }

    /// The request's answer is ready: the stream stays open, with the request's slot
    /// if it took one, while its body is sent.
    pub(crate) fn answered(mut self, slot: Option<StreamSlot>) -> Open {
        self.asked = None;
        self._slot = slot;
        self
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        let a = &self.activity;
        a.open.fetch_sub(1, Ordering::Relaxed);
        if self.asked.is_some_and(|t| t.elapsed() < PREMATURE) {
            let reset = a.premature.fetch_add(1, Ordering::Relaxed) + 1;
            let requests = a.requests.load(Ordering::Relaxed);
            if requests >= PREMATURE_JUDGED_AFTER && reset * 2 > requests {
                a.abusive.notify_one();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_sockets_get_nodelay() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (_client, accepted) = tokio::join!(TcpStream::connect(addr), l.accept());
        let (stream, _) = accepted.unwrap();
        configure(&stream);
        assert!(stream.nodelay().unwrap());
    }
}
