//! The benchmark's backends: a lean HTTP/1.1 server that answers `GET` with a 2-byte
//! body and upgrades WebSockets to an echo of every message. No greeting, no JSON: the
//! backends must cost the same behind every target.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, UPGRADE};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

/// Starts one echo backend on an ephemeral loopback port.
pub async fn start() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service = service_fn(|req| async move { Ok::<_, Infallible>(handle(req)) });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

fn handle(mut req: Request<Incoming>) -> Response<Full<Bytes>> {
    let Some(key) = req.headers().get(SEC_WEBSOCKET_KEY).cloned() else {
        return Response::new(Full::new(Bytes::from_static(b"ok")));
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let config = WebSocketConfig::default().max_message_size(Some(1 << 24));
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config))
                .await;
        while let Some(Ok(m)) = ws.next().await {
            if matches!(m, Message::Text(_) | Message::Binary(_)) && ws.send(m).await.is_err() {
                return;
            }
        }
    });
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    r.headers_mut()
        .insert(CONNECTION, "upgrade".parse().unwrap());
    r.headers_mut()
        .insert(UPGRADE, "websocket".parse().unwrap());
    r.headers_mut().insert(
        SEC_WEBSOCKET_ACCEPT,
        derive_accept_key(key.as_bytes()).parse().unwrap(),
    );
    r
}
