//! Accept loops and the HTTP/1.1 server side of each client connection.
//!
//! Each accepted socket gets TCP_NODELAY (heartbeat frames must not wait for Nagle)
//! and is served by hyper with upgrades enabled, the listener's header size limit
//! (431 beyond it) and header timeout. Malformed requests are answered 400 by hyper
//! and cost only that connection. On shutdown the accept loop ends, which closes the
//! listening socket at once, and each connection finishes its in-flight request.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::proxy::{ConnInfo, Proxy};
use crate::shutdown::Shutdown;
use crate::snapshot::Live;

/// How long accepting pauses after running out of file descriptors, so the loop does
/// not spin while connections drain.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// A bound listening socket and the `bind` it was configured with (settings are looked
/// up by that key in the current snapshot, so a test may bind port 0).
#[derive(Debug)]
pub struct Listener {
    pub bind: SocketAddr,
    pub socket: TcpListener,
}

impl Listener {
    pub fn new(bind: SocketAddr, socket: TcpListener) -> Listener {
        Listener { bind, socket }
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
            r = listener.socket.accept() => r,
            () = stop.cancelled() => break,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                warn!(bind = %listener.bind, error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        configure(&stream);
        let info = Arc::new(ConnInfo {
            peer,
            bind: listener.bind,
            scheme: "http",
        });
        let builder = builder(&live, listener.bind);
        tasks.spawn(serve(stream, builder, info, proxy.clone(), token.clone()));
    }
    info!(bind = %listener.bind, "stopped listening");
}

/// Socket options for an accepted client connection.
pub fn configure(stream: &TcpStream) {
    if let Err(e) = stream.set_nodelay(true) {
        debug!(error = %e, "cannot set TCP_NODELAY");
    }
}

fn builder(live: &Live, bind: SocketAddr) -> http1::Builder {
    let mut b = http1::Builder::new();
    b.timer(TokioTimer::new());
    if let Some(l) = live.load().listener(bind) {
        b.max_header_size(l.max_header_bytes);
        b.header_read_timeout(l.header_timeout);
    }
    b
}

async fn serve(
    stream: TcpStream,
    builder: http1::Builder,
    info: Arc<ConnInfo>,
    proxy: Arc<Proxy>,
    token: CancellationToken,
) {
    let peer = info.peer;
    let service = service_fn(move |req| {
        let proxy = proxy.clone();
        let info = info.clone();
        async move { Ok::<_, Infallible>(proxy.handle(req, &info).await) }
    });
    let mut conn = pin!(
        builder
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades()
    );
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = token.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        debug!(%peer, error = %e, "client connection ended with an error");
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
