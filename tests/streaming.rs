//! Bodies and tunnels stream: 100 MiB up and 100 MiB down through the real binary while
//! its peak resident memory stays far below the body size, and a WebSocket client that
//! reads nothing holds its backend back instead of filling tether's memory.

mod common;

use bytes::Bytes;
use common::*;
use futures_util::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::Request;
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

const SIZE: usize = 100 * 1024 * 1024;
const CHUNK: usize = 64 * 1024;

/// Sends `upload` bytes with `req_path` and counts the response body without keeping it.
async fn transfer(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    upload: usize,
) -> (u16, usize) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let chunk = Bytes::from(vec![7u8; CHUNK]);
    let frames = futures_util::stream::iter(
        (0..upload / CHUNK)
            .map(move |_| Ok::<_, std::convert::Infallible>(Frame::data(chunk.clone()))),
    );
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "t")
        .header("content-length", upload.to_string())
        .body(StreamBody::new(frames))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let mut body = resp.into_body().into_data_stream();
    let mut n = 0;
    while let Some(chunk) = body.next().await {
        n += chunk.unwrap().len();
    }
    (status, n)
}

#[tokio::test]
async fn a_100_mib_upload_and_download_stream_through_in_bounded_memory() {
    let nodes = nodes(&["a"]).await;
    let (_dir, path) = write_config(&config(&nodes, "", ""));
    let mut tether = Binary::spawn(&["run", "--config", &path]);
    let addr = tether.wait_listening();

    assert_eq!(
        transfer(addr, "GET", &format!("/bytes/{SIZE}"), 0).await,
        (200, SIZE)
    );
    assert_eq!(transfer(addr, "POST", "/echo", SIZE).await, (200, SIZE));

    let peak_kb = tether.proc_status_kb("VmHWM:");
    eprintln!("tether peak RSS after 200 MiB of bodies: {peak_kb} kB");
    assert!(
        peak_kb < 48 * 1024,
        "tether's peak RSS was {peak_kb} kB for 100 MiB bodies"
    );
    tether.signal("TERM");
    assert!(tether.wait_exit().success());
}

/// A client that stops reading (a phone on a bad network) while its node pushes: tether
/// holds at most a buffer of it, so the backend's writes stall until the client reads
/// again — as TCP would without a proxy — and tether's memory stays flat. Then the
/// client reads, and every byte arrives.
#[tokio::test]
async fn a_websocket_client_that_reads_nothing_holds_back_its_backend_not_tethers_memory() {
    let (backend, mut flood) = flooding_backend().await;
    let (_dir, path) = write_config(&format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\n[[route]]\npath = \"/\"\nupstream = \"app\"\n\
         [upstream.app]\nbackends = [\"{backend}\"]\n"
    ));
    let mut tether = Binary::spawn(&["run", "--config", &path]);
    let addr = tether.wait_listening();
    let (mut client, head) = raw_head(addr, upgrade_request("/ws").as_bytes()).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");

    assert_held_back(&mut flood, &mut client).await;

    let peak_kb = tether.proc_status_kb("VmHWM:");
    eprintln!("tether peak RSS after a 200 MiB message to a stalled client: {peak_kb} kB");
    assert!(
        peak_kb < 48 * 1024,
        "tether's peak RSS was {peak_kb} kB for a stalled client"
    );
    tether.signal("TERM");
    assert!(tether.wait_exit().success());
}
