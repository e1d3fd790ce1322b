//! Plain HTTP through tether: keep-alive on the client side, pooled keep-alive
//! connections on the backend side, and backend answers relayed as they are.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[tokio::test]
async fn backend_connections_are_pooled_across_client_connections() {
    let nodes = nodes(&["a"]).await;
    let proxy = Proxy::start(&config(&nodes, "", "")).await;
    let mut backend_conns = HashSet::new();
    for _ in 0..30 {
        // A fresh client connection each time, one request each, one after another.
        let (status, _, body) = http(proxy.addr, get("t", "/info", &[])).await;
        assert_eq!(status, 200);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        backend_conns.insert(v["connection"].as_u64().unwrap());
    }
    assert_eq!(
        backend_conns.len(),
        1,
        "30 sequential requests used {} backend connections",
        backend_conns.len()
    );
    proxy.stop().await;
}

/// A reload keeps the pooled connections to the backends it keeps, as Envoy keeps an
/// unchanged cluster's pool; a backend whose timeouts change gets a fresh pool.
#[tokio::test]
async fn a_reload_keeps_pooled_connections_to_the_backends_it_keeps() {
    let nodes = nodes(&["a"]).await;
    let proxy = Proxy::start(&config(&nodes, "", "")).await;
    let connection = || async {
        let (status, _, body) = http(proxy.addr, get("t", "/info", &[])).await;
        assert_eq!(status, 200);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        v["connection"].as_u64().unwrap()
    };
    let reload = |toml: String| {
        let config = tether::config::Config::parse(&toml, "test.toml").unwrap();
        proxy.live.replace(&config);
    };
    let first = connection().await;
    reload(config(&nodes, "", "") + "[[route]]\npath = \"/api\"\nupstream = \"app\"\n");
    assert_eq!(
        connection().await,
        first,
        "the reload dropped the pooled connection"
    );
    reload(config(&nodes, "", "keepalive_timeout = \"3s\""));
    assert_ne!(connection().await, first, "new timeouts, same pool");
    proxy.stop().await;
}

/// tether in front of the one backend at `backend`, with `upstream` lines added to its
/// upstream.
async fn in_front_of(backend: std::net::SocketAddr, upstream: &str) -> Proxy {
    Proxy::start(&format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\n\n[[route]]\npath = \"/\"\nupstream = \"app\"\n\n\
         [upstream.app]\nbackends = [\"{backend}\"]\n{upstream}\n"
    ))
    .await
}

/// A pooled connection idle for `keepalive_timeout` is closed then, not kept open
/// until the next request needs one (nginx's upstream `keepalive_timeout`).
#[tokio::test]
async fn idle_backend_connections_are_closed_after_keepalive_timeout() {
    let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = in_front_of(
        backend.local_addr().unwrap(),
        "keepalive_timeout = \"200ms\"",
    )
    .await;
    let client = tokio::spawn(http(proxy.addr, get("t", "/", &[])));
    let (mut conn, head) = accept_request(&backend).await;
    assert!(head.starts_with("GET / HTTP/1.1\r\n"), "{head}");
    conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        .await
        .unwrap();
    let (status, _, body) = client.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(&body[..], b"ok");
    assert!(
        closes(&mut conn).await,
        "the idle backend connection outlived keepalive_timeout"
    );
    proxy.stop().await;
}

/// A request that goes out on a kept-alive connection just as the backend closes it is
/// sent again on a new connection to the same backend when it is safe to send twice
/// (nginx and HAProxy retry these too); a POST is not, and the client hears 502.
#[tokio::test]
async fn a_request_on_a_connection_the_backend_just_closed_is_sent_again_if_safe() {
    let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = in_front_of(backend.local_addr().unwrap(), "").await;
    let answer = |text: &str| format!("HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\n{text}");
    let first = tokio::spawn(http(proxy.addr, get("t", "/one", &[])));
    let (mut kept, head) = accept_request(&backend).await;
    assert!(head.starts_with("GET /one "), "{head}");
    kept.write_all(answer("one").as_bytes()).await.unwrap();
    assert_eq!(first.await.unwrap().0, 200);

    // The next request comes on the kept-alive connection; the backend closes it unanswered.
    let second = tokio::spawn(http(proxy.addr, get("t", "/two", &[])));
    let head = read_head(&mut kept).await;
    assert!(head.starts_with("GET /two "), "{head}");
    drop(kept);
    let (mut fresh, head) = tokio::time::timeout(PATIENCE, accept_request(&backend))
        .await
        .expect("the request was not sent again");
    assert!(head.starts_with("GET /two "), "{head}");
    fresh.write_all(answer("two").as_bytes()).await.unwrap();
    let (status, _, body) = second.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(&body[..], b"two");

    // A POST on the (now kept-alive) new connection, closed the same way: not resent.
    let post = hyper::Request::post("/three")
        .header("host", "t")
        .body(http_body_util::Empty::new())
        .unwrap();
    let third = tokio::spawn(http(proxy.addr, post));
    let head = read_head(&mut fresh).await;
    assert!(head.starts_with("POST /three "), "{head}");
    drop(fresh);
    assert_eq!(third.await.unwrap().0, 502);
    proxy.stop().await;
}

#[tokio::test]
async fn a_client_connection_carries_many_requests() {
    let nodes = nodes(&["a"]).await;
    let proxy = Proxy::start(&config(&nodes, "", "")).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    for i in 0..50 {
        // Different statuses show each answer belongs to its own request.
        let code = [200, 201, 202, 299][i % 4];
        let req = format!("GET /status/{code} HTTP/1.1\r\nHost: t\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let head = read_head(&mut s).await;
        assert!(head.starts_with(&format!("HTTP/1.1 {code}")), "{head}");
        let len = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .unwrap();
        let mut body = vec![0u8; len.trim().parse().unwrap()];
        tokio::io::AsyncReadExt::read_exact(&mut s, &mut body)
            .await
            .unwrap();
        assert_eq!(body, b"a\n");
    }
    proxy.stop().await;
}

#[tokio::test]
async fn backend_statuses_and_bodies_are_relayed() {
    let nodes = nodes(&["a"]).await;
    let proxy = Proxy::start(&config(&nodes, "", "")).await;
    for code in [404u16, 418, 500, 503] {
        let (status, _, body) = http(proxy.addr, get("t", &format!("/status/{code}"), &[])).await;
        assert_eq!(status.as_u16(), code);
        assert_eq!(&body[..], b"a\n");
    }
    let (status, _, body) = http(proxy.addr, get("t", "/bytes/100000", &[])).await;
    assert_eq!(status, 200);
    assert_eq!(body.len(), 100_000);
    assert!(
        body.iter()
            .enumerate()
            .all(|(i, &b)| b == ((i % (64 * 1024)) % 251) as u8)
    );
    proxy.stop().await;
}

/// A backend that answers every request head with `answer`, whatever it asked.
async fn scripted_backend(answer: &'static [u8]) -> std::net::SocketAddr {
    use tokio::io::AsyncReadExt;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while let Ok(n @ 1..) = s.read(&mut buf).await {
                    head.extend_from_slice(&buf[..n]);
                    if head.windows(4).any(|w| w == b"\r\n\r\n") {
                        head.clear();
                        if s.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

fn one_backend(addr: std::net::SocketAddr) -> String {
    format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\n[[route]]\npath = \"/\"\nupstream = \"app\"\n\
         [upstream.app]\nbackends = [{{ addr = \"{addr}\", name = \"only\" }}]\n"
    )
}

#[tokio::test]
async fn a_response_framed_both_ways_loses_its_content_length() {
    // Chunked wins over Content-Length (RFC 9112 §6.3); forwarding the stale length
    // would cut the body short or leave the client waiting for bytes that never come.
    let backend = scripted_backend(
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    let proxy = Proxy::start(&one_backend(backend)).await;
    let (status, headers, body) = http(proxy.addr, get("t", "/", &[])).await;
    assert_eq!(status, 200);
    assert_eq!(&body[..], b"hello");
    assert_ne!(
        headers.get("content-length").map(|v| v.as_bytes()),
        Some(&b"3"[..])
    );
    proxy.stop().await;
}

#[tokio::test]
async fn a_repeated_content_length_reaches_the_client_as_one() {
    let backend = scripted_backend(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\nContent-Length: 5\r\n\r\nhello",
    )
    .await;
    let proxy = Proxy::start(&one_backend(backend)).await;
    let (status, headers, body) = http(proxy.addr, get("t", "/", &[])).await;
    assert_eq!(status, 200);
    assert_eq!(&body[..], b"hello");
    let lengths: Vec<_> = headers.get_all("content-length").iter().collect();
    assert_eq!(lengths, ["5"]);
    proxy.stop().await;
}

/// The data of a chunked body (RFC 9112 §7.1), trailers ignored.
fn dechunk(mut body: &str) -> String {
    let mut data = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").expect("a chunk size line");
        let n = usize::from_str_radix(size.trim(), 16).expect("a chunk size");
        if n == 0 {
            return data;
        }
        data.push_str(&rest[..n]);
        body = &rest[n + 2..];
    }
}

#[tokio::test]
async fn bodies_without_a_length_reach_the_backend_whatever_the_method() {
    // hyper sends a GET without a length as bodiless unless told it is chunked; the
    // client's body must not vanish on the way (nginx passes it on too).
    let nodes = nodes(&["a"]).await;
    let proxy = Proxy::start(&config(&nodes, "", "")).await;
    for method in ["GET", "POST", "DELETE"] {
        let answer = raw(
            proxy.addr,
            format!(
                "{method} /echo HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\
                 Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{method}: {answer}");
        let (_, body) = answer.split_once("\r\n\r\n").unwrap();
        assert_eq!(dechunk(body), "hello world", "{method}: {answer}");
    }
    proxy.stop().await;
}

#[tokio::test]
async fn a_request_with_trailers_ends_its_connection_after_the_answer() {
    // hyper ends a trailer section at its first empty line, also a bare-LF one, and
    // drops the rest of what it read (here the second request). A front proxy that
    // took that for a request of its own must not get the next answer in its place:
    // the connection ends after this exchange instead.
    let nodes = nodes(&["a"]).await;
    let proxy = Proxy::start(&config(&nodes, "", "")).await;
    let answer = raw(
        proxy.addr,
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n\
          5\r\nhello\r\n0\r\nX: y\n\r\nGET /info HTTP/1.1\r\nHost: t\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(answer.matches("HTTP/1.1").count(), 1, "{answer}");
    let (_, body) = answer.split_once("\r\n\r\n").unwrap();
    assert_eq!(dechunk(body), "hello");
    // Without trailers the connection is kept.
    let (mut s, head) = raw_head(
        proxy.addr,
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    s.write_all(b"GET /info HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let rest = read_until_closed(&mut s, "the second answer").await;
    assert!(rest.contains("HTTP/1.1 200"), "{rest}");
    proxy.stop().await;
}

#[tokio::test]
async fn tethers_own_answer_to_an_unread_chunked_body_ends_the_connection() {
    // tether answers 404 without reading the body. hyper would read the rest itself
    // to keep the connection, end the trailers at the bare-LF line, drop `/hidden`
    // with them and answer `/visible`: a front proxy that sent `/hidden` would get
    // `/visible`'s answer. The connection ends after the 404 instead.
    let nodes = nodes(&["a"]).await;
    let toml = config(&nodes, "", "").replace("path = \"/\"", "path = \"/api/\"");
    let proxy = Proxy::start(&toml).await;
    let request = b"POST /elsewhere HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n\
        5\r\nhello\r\n0\r\nX: y\n\r\nGET /hidden HTTP/1.1\r\nHost: t\r\n\r\n\
        GET /visible HTTP/1.1\r\nHost: t\r\n\r\n";
    let answer = raw(proxy.addr, request).await;
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    assert_eq!(answer.matches("HTTP/1.1").count(), 1, "{answer}");
    proxy.stop().await;
}

#[tokio::test]
async fn a_backend_connection_that_answered_in_http_1_0_is_not_reused() {
    // hyper goes on in HTTP/1.0 on such a connection, which has no chunked request
    // bodies: the next upload would go out without its body. The client hears
    // HTTP/1.1 whatever the backend spoke, as from nginx.
    let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = in_front_of(backend.local_addr().unwrap(), "").await;
    let (mut client, _) = tokio::join!(
        async {
            let (mut s, head) = raw_head(proxy.addr, b"GET /old HTTP/1.1\r\nHost: t\r\n\r\n").await;
            assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
            let mut body = [0u8; 2];
            s.read_exact(&mut body).await.unwrap();
            assert_eq!(&body, b"ok");
            s
        },
        async {
            let (mut conn, head) = accept_request(&backend).await;
            assert!(head.starts_with("GET /old HTTP/1.1\r\n"), "{head}");
            conn.write_all(
                b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok",
            )
            .await
            .unwrap();
            assert!(closes(&mut conn).await, "the HTTP/1.0 connection was kept");
        }
    );
    // Then an upload of unknown length.
    client
        .write_all(b"POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        .await
        .unwrap();
    let (mut conn, head) = tokio::time::timeout(PATIENCE, accept_request(&backend))
        .await
        .expect("the upload did not come on a new connection");
    assert!(head.starts_with("POST /upload HTTP/1.1\r\n"), "{head}");
    assert!(head.contains("transfer-encoding: chunked\r\n"), "{head}");
    let mut body = [0u8; 15];
    tokio::time::timeout(PATIENCE, conn.read_exact(&mut body))
        .await
        .expect("no body")
        .unwrap();
    assert_eq!(&body, b"5\r\nhello\r\n0\r\n\r\n");
    conn.write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut client).await;
    assert!(head.starts_with("HTTP/1.1 204"), "{head}");
    drop(client);
    proxy.stop().await;
}

#[tokio::test]
async fn a_426_keeps_its_upgrade_offer() {
    // RFC 9110 §15.5.22: a 426 names the protocol to upgrade to; `Upgrade` is
    // hop-by-hop, but this one is the answer's point (nginx and HAProxy keep it).
    let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = in_front_of(backend.local_addr().unwrap(), "").await;
    let client = tokio::spawn(http(proxy.addr, get("t", "/ws", &[])));
    let (mut conn, _) = accept_request(&backend).await;
    conn.write_all(
        b"HTTP/1.1 426 Upgrade Required\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Content-Length: 0\r\n\r\n",
    )
    .await
    .unwrap();
    let (status, headers, _) = client.await.unwrap();
    assert_eq!(status, 426);
    assert_eq!(headers["upgrade"], "websocket");
    assert_eq!(headers["connection"], "upgrade");
    proxy.stop().await;
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_off_after_send_timeout() {
    // nginx's send_timeout: otherwise it would hold the answer's backend connection
    // and its own slot for as long as it kept the socket open.
    let nodes = nodes(&["a"]).await;
    let toml = config(&nodes, "", "").replace(
        "bind = \"127.0.0.1:0\"",
        "bind = \"127.0.0.1:0\"\nsend_timeout = \"1s\"",
    );
    let proxy = Proxy::start(&toml).await;
    let live = &proxy.live;
    const SIZE: usize = 64 << 20; // far more than the sockets between can hold
    let (mut s, head) = raw_head(
        proxy.addr,
        format!("GET /bytes/{SIZE} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // Read nothing more: tether gives the connection (and its slot) up.
    eventually(|| async {
        (live.connections.available_permits() == live.max_connections).then_some(())
    })
    .await;
    let mut got = Vec::new();
    let _ = tokio::io::AsyncReadExt::read_to_end(&mut s, &mut got).await;
    assert!(got.len() < SIZE / 2, "{} bytes arrived", got.len());
    proxy.stop().await;
}

#[tokio::test]
async fn an_expected_continue_comes_from_tether_and_the_body_follows() {
    // tether answers `Expect: 100-continue` itself and does not pass it on (see
    // tests/forwarding.rs): the client still gets its 100 and its body arrives.
    let nodes = nodes(&["a"]).await;
    let proxy = Proxy::start(&config(&nodes, "", "")).await;
    let (mut s, head) = raw_head(
        proxy.addr,
        b"POST /echo HTTP/1.1\r\nHost: t\r\nConnection: close\r\nExpect: 100-continue\r\n\
          Content-Length: 5\r\n\r\n",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 100 Continue"), "{head}");
    s.write_all(b"hello").await.unwrap();
    let rest = read_until_closed(&mut s, "the echo").await;
    assert!(rest.starts_with("HTTP/1.1 200"), "{rest}");
    assert!(rest.contains("hello"), "{rest}");
    proxy.stop().await;
}

#[tokio::test]
async fn a_protocol_switch_nobody_asked_for_is_a_502() {
    // RFC 9110 §15.2.2: a server must not switch to a protocol the client did not ask
    // for; passed on, the client would sit on a connection it cannot use.
    let backend = scripted_backend(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
    )
    .await;
    let proxy = Proxy::start(&one_backend(backend)).await;
    let (status, _, body) = http(proxy.addr, get("t", "/", &[])).await;
    assert_eq!(status, 502);
    assert!(String::from_utf8_lossy(&body).contains("asked for no protocol switch"));
    proxy.stop().await;
}

#[tokio::test]
async fn a_broken_backend_answer_is_a_502_that_names_the_cause_and_is_logged() {
    let backend =
        scripted_backend(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nhello")
            .await;
    let (_dir, path) = write_config(&one_backend(backend));
    let mut bin = Binary::spawn(&["run", "--config", &path]);
    let addr = bin.wait_listening();
    let (status, _, body) = http(addr, get("t", "/", &[])).await;
    assert_eq!(status, 502);
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains("backend `only` failed"), "{body}");
    assert!(
        body.contains("content-length"),
        "the cause is missing: {body}"
    );
    // At the default level, as nginx logs `upstream sent invalid header` at `error`.
    let line = bin.wait_for("request failed");
    assert!(
        line.contains("WARN") && line.contains("backend=\"only\""),
        "{line}"
    );
}

#[tokio::test]
async fn a_response_coding_tether_cannot_undo_is_a_502() {
    let backend = scripted_backend(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    let proxy = Proxy::start(&one_backend(backend)).await;
    let (status, _, body) = http(proxy.addr, get("t", "/", &[])).await;
    assert_eq!(status, 502, "{}", String::from_utf8_lossy(&body));
    proxy.stop().await;
}

#[tokio::test]
async fn the_access_event_comes_when_the_body_is_sent_and_counts_it() {
    // Chunked: no Content-Length to read the size from; only counting the body knows.
    let backend = scripted_backend(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    )
    .await;
    let (_dir, path) = write_config(&one_backend(backend));
    let mut bin = Binary::spawn(&["run", "--config", &path]);
    let addr = bin.wait_listening();
    let (status, _, body) = http(addr, get("t", "/", &[])).await;
    assert_eq!((status.as_u16(), &body[..]), (200, &b"hello world"[..]));
    let line = bin.wait_for("tether::access");
    assert!(line.contains("bytes_down=11"), "{line}");
    assert!(!line.contains("aborted"), "{line}");
}

#[tokio::test]
async fn abandoned_requests_and_head_answers_are_logged_as_such() {
    let held = HeldBackend::start().await;
    let (_dir, path) = write_config(&one_backend(held.addr));
    let mut bin = Binary::spawn(&["run", "--config", &path]);
    let addr = bin.wait_listening();
    // tether's own answer to a HEAD has no body to send: not aborted.
    let (_, head) = raw_head(
        addr,
        b"HEAD /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 501"), "{head}");
    let line = bin.wait_for("tether::access");
    assert!(
        line.contains("status=501") && !line.contains("aborted"),
        "{line}"
    );
    // The client leaves before the backend answers: nginx's 499.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut held = held;
    held.arrived.recv().await.unwrap();
    drop(s);
    let line = bin.wait_for("tether::access");
    assert!(line.contains("status=499"), "{line}");
}

#[tokio::test]
async fn a_timeout_then_a_refused_connect_is_a_504_logged_against_the_slow_node() {
    let held = HeldBackend::start().await;
    let dead = dead_addr().await;
    let toml = format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\n[[route]]\npath = \"/\"\nupstream = \"app\"\nprincipal = [\"query:u\"]\n\
         [upstream.app]\nbackends = [{{ addr = \"{}\", name = \"slow\" }}, {{ addr = \"{dead}\", name = \"dead\" }}]\n\
         response_timeout = \"200ms\"\n[upstream.app.health]\ninterval = \"1h\"\n",
        held.addr
    );
    let config = tether::config::Config::parse(&toml, "t").unwrap();
    let live = tether::Live::new(&config);
    let snap = live.load();
    let app = snap.upstream("app").unwrap();
    // A principal whose owner is the slow node, the dead one next.
    let key = (0..1000)
        .map(|i| format!("k{i}"))
        .find(|k| {
            let key = tether::principal::Principal::from_bytes(k.as_bytes()).key();
            app.owner(key).unwrap().id.as_ref() == "slow"
        })
        .unwrap();
    let (_dir, path) = write_config(&toml);
    let mut bin = Binary::spawn(&["run", "--config", &path]);
    let addr = bin.wait_listening();
    let (status, _, body) = http(addr, get("t", &format!("/info?u={key}"), &[])).await;
    assert_eq!(status, 504, "{}", String::from_utf8_lossy(&body));
    let line = bin.wait_for("tether::access");
    assert!(line.contains("backend=\"slow\""), "{line}");
}

/// `host` may list names (nginx's `server_name a b;`): each is routed, others are not.
#[tokio::test]
async fn a_route_serves_every_host_it_lists() {
    let nodes = nodes(&["a"]).await;
    let toml = config(&nodes, "", "").replace(
        "path = \"/\"\nupstream = \"app\"",
        "path = \"/\"\nhost = [\"chat.example.com\", \"*.example.org\"]\nupstream = \"app\"",
    );
    let proxy = Proxy::start(&toml).await;
    for host in ["chat.example.com", "x.example.org", "chat.example.com:8080"] {
        let (status, _, _) = http(proxy.addr, get(host, "/info", &[])).await;
        assert_eq!(status, 200, "{host}");
    }
    let (status, _, _) = http(proxy.addr, get("other.example", "/info", &[])).await;
    assert_eq!(status, 404);
    proxy.stop().await;
}

#[tokio::test]
async fn a_stalled_request_body_is_timed_out() {
    // A client that stops mid-body must not hold its connection (and one to the
    // backend) open for ever: nginx's client_body_timeout.
    let nodes = nodes(&["a"]).await;
    let toml = config(&nodes, "", "response_timeout = \"300ms\"").replace(
        "bind = \"127.0.0.1:0\"",
        "bind = \"127.0.0.1:0\"\nbody_timeout = \"300ms\"",
    );
    let proxy = Proxy::start(&toml).await;
    let stalled = |path: &str| {
        format!("POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n0123456789")
    };
    // The backend reads the whole body before answering: the client hears 408.
    let (_, head) = raw_head(proxy.addr, stalled("/info").as_bytes()).await;
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    // The backend answers at once and streams the body back: the connection is closed.
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(stalled("/echo").as_bytes()).await.unwrap();
    let got = read_until_closed(&mut s, "a stalled body held its connection open").await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    // A slow body that never pauses for the whole timeout is not cut: the clock starts
    // again at every read. Nor does the upload count against the backend's
    // response_timeout, which starts once the body has been sent (nginx's
    // proxy_read_timeout).
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(
        b"POST /info HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    for byte in b"0123456789" {
        // The client's pace, under test: well within body_timeout, three times it in all.
        tokio::time::sleep(Duration::from_millis(100)).await;
        s.write_all(&[*byte]).await.unwrap();
    }
    let got = read_until_closed(&mut s, "the slow body's answer").await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    proxy.stop().await;
}

/// A backend that stops sending mid-answer must not hold the client (and a backend
/// connection) for ever: past `response_timeout` without a byte, the answer is cut and
/// the client's connection closed, as nginx's `proxy_read_timeout` does.
#[tokio::test]
async fn a_backend_that_stalls_mid_answer_is_cut_off() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = l.local_addr().unwrap();
    let node = tokio::spawn(async move {
        let (mut s, head) = accept_request(&l).await;
        assert!(head.starts_with("GET /stalls"), "{head}");
        s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789")
            .await
            .unwrap();
        // Never another byte; tether is the one to end this connection.
        let mut rest = Vec::new();
        let _ = tokio::io::AsyncReadExt::read_to_end(&mut s, &mut rest).await;
    });
    let proxy = in_front_of(backend, "response_timeout = \"300ms\"").await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"GET /stalls HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let got = read_until_closed(&mut s, "a stalled answer held the client").await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert!(got.ends_with("\r\n\r\n0123456789"), "{got}");
    // The backend connection is closed too, not left in the pool.
    tokio::time::timeout(PATIENCE, node)
        .await
        .expect("tether kept the stalled backend connection")
        .unwrap();
    proxy.stop().await;
}

/// A backend that stops reading a request body must not hold the client for ever:
/// a write to it that makes no progress for `response_timeout` ends the request (nginx's
/// `proxy_send_timeout`), whether the backend answered early or not at all.
#[tokio::test]
async fn a_backend_that_stops_reading_the_body_is_cut_off() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = l.local_addr().unwrap();
    let (held_tx, mut held) = tokio::sync::mpsc::unbounded_channel();
    let node = tokio::spawn(async move {
        loop {
            let (mut s, head) = accept_request(&l).await;
            if head.starts_with("POST /early") {
                s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await
                    .unwrap();
            }
            // Never a byte of the body read; the socket kept until the test ends.
            let _ = held_tx.send(s);
        }
    });
    let proxy = in_front_of(backend, "response_timeout = \"300ms\"").await;
    for (path, status) in [("/early", "HTTP/1.1 200"), ("/never", "HTTP/1.1 504")] {
        let s = TcpStream::connect(proxy.addr).await.unwrap();
        let (mut rx, mut tx) = s.into_split();
        // Far more than the socket buffers between tether and the backend hold.
        let head = format!("POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: 1073741824\r\n\r\n");
        let upload = async move {
            tx.write_all(head.as_bytes()).await?;
            let chunk = vec![b'x'; 1 << 20];
            for _ in 0..1024 {
                tx.write_all(&chunk).await?;
            }
            std::io::Result::Ok(())
        };
        let mut got = Vec::new();
        let answer = tokio::time::timeout(
            PATIENCE,
            tokio::io::AsyncReadExt::read_to_end(&mut rx, &mut got),
        );
        let (sent, answered) = tokio::join!(tokio::time::timeout(PATIENCE, upload), answer);
        assert!(answered.is_ok(), "{path}: the connection is still open");
        assert!(
            matches!(sent, Ok(Err(_))),
            "{path}: the upload did not fail: {sent:?}"
        );
        let got = String::from_utf8_lossy(&got);
        assert!(got.starts_with(status), "{path}: {got}");
        // The backend connection is given up too.
        let mut held_conn = held.recv().await.unwrap();
        let closed = tokio::time::timeout(PATIENCE, async {
            let mut buf = vec![0u8; 1 << 20];
            while tokio::io::AsyncReadExt::read(&mut held_conn, &mut buf)
                .await
                .is_ok_and(|n| n > 0)
            {}
        });
        assert!(
            closed.await.is_ok(),
            "{path}: tether kept the backend connection"
        );
    }
    node.abort();
    proxy.stop().await;
}

/// The access log's `bytes_up` is the request body that arrived: a chunked body has no
/// `Content-Length` to go by, and an upload cut short sent less than it announced.
#[tokio::test]
async fn the_access_event_counts_the_request_body_that_arrived() {
    let nodes = nodes(&["a"]).await;
    let (_dir, path) = write_config(&config(&nodes, "", ""));
    let mut bin = Binary::spawn(&["run", "--config", &path]);
    let addr = bin.wait_listening();
    // Echoed back, so the answer ends only after the whole body reached the node.
    let got = raw(
        addr,
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
          5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    let line = bin.wait_for("tether::access");
    assert!(line.contains("bytes_up=11"), "{line}");
    // 100 announced, 10 sent, then the client stops sending.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n0123456789")
        .await
        .unwrap();
    s.shutdown().await.unwrap();
    read_until_closed(&mut s, "the cut-short upload's connection").await;
    let line = bin.wait_for("tether::access");
    assert!(line.contains("bytes_up=10"), "{line}");
}

/// An HTTP/1.0 client asking for keep-alive, and an answer of unknown length (chunked
/// from the backend): the body can only end with the connection, and the head says so,
/// as nginx's does; a client that pipelined a second request is not left waiting.
#[tokio::test]
async fn an_http_1_0_keep_alive_answer_of_unknown_length_says_close() {
    let backend = scripted_backend(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    let proxy = Proxy::start(&one_backend(backend)).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    let request = b"GET / HTTP/1.0\r\nHost: t\r\nConnection: keep-alive\r\n\r\n";
    s.write_all(&[&request[..], &request[..]].concat())
        .await
        .unwrap();
    let answer = read_until_closed(&mut s, "the HTTP/1.0 answer")
        .await
        .to_ascii_lowercase();
    assert!(answer.starts_with("http/1.0 200"), "{answer}");
    assert!(answer.contains("connection: close\r\n"), "{answer}");
    assert!(!answer.contains("keep-alive"), "{answer}");
    assert!(answer.ends_with("\r\n\r\nhello"), "{answer}");
    proxy.stop().await;
}

/// `OPTIONS *` asks about the server as a whole: it goes where the host's `/` route
/// sends it, with its `*` target kept, as HAProxy passes it on.
#[tokio::test]
async fn options_asterisk_reaches_a_backend_as_sent() {
    let nodes = nodes(&["a"]).await;
    let proxy = Proxy::start(&config(&nodes, "", "")).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"OPTIONS * HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let answer = read_until_closed(&mut s, "the OPTIONS * answer").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // The demo node describes the request it got.
    let (_, body) = answer.split_once("\r\n\r\n").unwrap();
    let seen: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(seen["method"], "OPTIONS", "{seen}");
    assert_eq!(seen["path"], "*", "{seen}");
    proxy.stop().await;
}

/// TRACE is refused, as nginx refuses it: the echo would carry the client's cookies
/// and credentials back into a page's reach.
#[tokio::test]
async fn trace_is_refused() {
    let nodes = nodes(&["a"]).await;
    let proxy = Proxy::start(&config(&nodes, "", "")).await;
    let (_s, head) = raw_head(
        proxy.addr,
        b"TRACE /info HTTP/1.1\r\nHost: t\r\nCookie: secret=1\r\n\r\n",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 405"), "{head}");
    proxy.stop().await;
}
