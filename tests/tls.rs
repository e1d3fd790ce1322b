//! TLS at the edge, with certificates made at test time (rcgen) and real rustls
//! clients: wss:// to plain backends, SNI, HTTP/2 and WebSockets over HTTP/2 (RFC
//! 8441), certificate reload on SIGHUP, redirect and HSTS, client certificates, and
//! bad clients that cost only their own connection.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use common::pki::{Leaf, Pki};
use common::*;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper::ext::Protocol;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::ClientConfig;
use rustls::pki_types::{CertificateDer, ServerName};
use tether::principal::Principal;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;

/// A TLS listener config over `nodes`; `tls` goes into `[listener.tls]`.
fn tls_config(nodes: &[tether::demo::Node], tls: &str, sni: &str) -> String {
    config(nodes, r#"principal = ["query:u"]"#, "").replacen(
        "bind = \"127.0.0.1:0\"\n",
        &format!("bind = \"127.0.0.1:0\"\n[listener.tls]\n{tls}\n{sni}\n"),
        1,
    )
}

fn cert_keys(leaf: &Leaf) -> String {
    format!("cert = \"{}\"\nkey = \"{}\"", leaf.cert, leaf.key)
}

async fn tls(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    sni: &str,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(sni.to_owned()).unwrap();
    TlsConnector::from(config).connect(name, tcp).await
}

fn peer_cert(s: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    s.get_ref().1.peer_certificates().unwrap()[0]
        .clone()
        .into_owned()
}

fn owner(proxy: &Proxy, key: &str) -> String {
    let snap = proxy.live.load();
    let app = snap.upstream("app").unwrap();
    app.owner(Principal::from_bytes(key.as_bytes()).key())
        .unwrap()
        .id
        .to_string()
}

#[tokio::test]
async fn wss_reaches_a_plain_backend_with_https_forwarding_headers() {
    let pki = Pki::new();
    let leaf = pki.leaf("default", &["chat.example.com"]);
    let nodes = nodes(&["a", "b"]).await;
    let proxy = Proxy::start(&tls_config(&nodes, &cert_keys(&leaf), "")).await;
    let port = proxy.addr.port();
    let stream = tls(
        proxy.addr,
        pki.client_config(&[b"http/1.1"], false),
        "chat.example.com",
    )
    .await
    .unwrap();
    let url = format!("wss://chat.example.com:{port}/ws?u=alice");
    let (mut ws, _) = tokio_tungstenite::client_async(url, stream).await.unwrap();
    let greeting: serde_json::Value = serde_json::from_str(&next_text(&mut ws).await).unwrap();
    assert_eq!(greeting["node"], owner(&proxy, "alice"));
    let h = &greeting["headers"];
    assert_eq!(h["x-forwarded-proto"], "https");
    assert_eq!(h["host"], format!("chat.example.com:{port}"));
    assert_eq!(h["x-forwarded-port"], port.to_string());
    send_text(&mut ws, "over tls").await;
    assert_eq!(next_text(&mut ws).await, "over tls");
    proxy.stop().await;
}

#[tokio::test]
async fn each_name_gets_its_certificate_and_unknown_names_the_default() {
    let pki = Pki::new();
    let default = pki.leaf("default", &["default.test"]);
    let chat = pki.leaf("chat", &["chat.example.com"]);
    let org = pki.leaf("org", &["*.example.org"]);
    let nodes = nodes(&["a"]).await;
    let sni = format!(
        "[[listener.tls.sni]]\nserver_names = [\"chat.example.com\"]\n{}\n[[listener.tls.sni]]\nserver_names = [\"*.example.org\"]\n{}\n",
        cert_keys(&chat),
        cert_keys(&org)
    );
    let proxy = Proxy::start(&tls_config(&nodes, &cert_keys(&default), &sni)).await;
    // The client does not verify the name here: we look at which certificate came.
    let any = pki.client_config(&[], false);
    let cases = [
        ("chat.example.com", &chat),
        ("CHAT.example.com", &chat),
        ("a.b.example.org", &org),
        ("other.test", &default),
    ];
    for (name, want) in cases {
        let s = tls_unverified(proxy.addr, name).await;
        assert_eq!(peer_cert(&s), want.der, "{name}");
    }
    // No SNI at all (an IP address as the server name is never sent as SNI).
    let s = tls(proxy.addr, any.clone(), "127.0.0.1").await;
    assert!(
        s.is_err(),
        "the default cert is not valid for 127.0.0.1, but it is the one sent"
    );
    let s = tls_unverified(proxy.addr, "127.0.0.1").await;
    assert_eq!(peer_cert(&s), default.der);
    proxy.stop().await;
}

/// A handshake that accepts any certificate, to see which one the server chose.
async fn tls_unverified(addr: SocketAddr, sni: &str) -> TlsStream<TcpStream> {
    #[derive(Debug)]
    struct AnyCert;
    impl rustls::client::danger::ServerCertVerifier for AnyCert {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            tether::config::provider()
                .signature_verification_algorithms
                .supported_schemes()
        }
    }
    let config = ClientConfig::builder_with_provider(tether::config::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert))
        .with_no_client_auth();
    tls(addr, Arc::new(config), sni).await.unwrap()
}

#[tokio::test]
async fn http2_carries_requests_and_many_websockets_on_one_connection() {
    let pki = Pki::new();
    let leaf = pki.leaf("default", &["chat.example.com"]);
    let nodes = nodes(&["a", "b", "c"]).await;
    let proxy = Proxy::start(&tls_config(&nodes, &cert_keys(&leaf), "")).await;
    let port = proxy.addr.port();
    let stream = h2_tls(&proxy, &pki).await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut h2, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);

    // Plain requests, with cookies split the HTTP/2 way.
    for key in ["k1", "k2", "k3"] {
        let req = Request::get(format!("https://chat.example.com:{port}/info?u={key}"))
            .header("cookie", "a=1")
            .header("cookie", "b=2")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = h2.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let v: serde_json::Value =
            serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
        assert_eq!(v["node"], owner(&proxy, key));
        assert_eq!(v["headers"]["cookie"], "a=1; b=2");
        assert_eq!(v["headers"]["host"], format!("chat.example.com:{port}"));
        assert_eq!(v["headers"]["x-forwarded-proto"], "https");
    }

    // HTTP/2 has no field count limit of its own; tether applies HTTP/1's. Its answer
    // to HEAD has no content (hyper would send it over HTTP/2).
    for method in [hyper::Method::GET, hyper::Method::HEAD] {
        let mut req = Request::builder()
            .method(method.clone())
            .uri(format!("https://chat.example.com:{port}/info"));
        for i in 0..150 {
            req = req.header(format!("x-field-{i}"), "v");
        }
        let resp = h2
            .send_request(req.body(Empty::new()).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), 431, "{method}");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        if method == hyper::Method::HEAD {
            assert!(body.is_empty(), "a HEAD answer with content: {body:?}");
        } else {
            assert!(
                body.starts_with(b"tether: "),
                "not tether's answer: {body:?}"
            );
        }
    }

    // Several WebSockets on the same connection, each placed by its own principal.
    let mut sockets = Vec::new();
    for i in 0..6 {
        let key = format!("user{i}");
        let req = websocket_connect(port, &format!("/ws?u={key}"));
        let mut resp = h2.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200, "extended CONNECT for {key}");
        let upgraded = hyper::upgrade::on(&mut resp).await.unwrap();
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Client, None).await;
        let greeting = match ws.next().await.unwrap().unwrap() {
            Message::Text(t) => serde_json::from_str::<serde_json::Value>(&t).unwrap(),
            other => panic!("{other:?}"),
        };
        assert_eq!(greeting["node"], owner(&proxy, &key), "{key}");
        sockets.push((key, ws));
    }
    for (key, ws) in &mut sockets {
        ws.send(Message::text(format!("hello {key}")))
            .await
            .unwrap();
    }
    for (key, ws) in &mut sockets {
        match ws.next().await.unwrap().unwrap() {
            Message::Text(t) => assert_eq!(t.as_str(), format!("hello {key}")),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(upgrades_ok(&proxy, "h2"), 6);
    assert_eq!(upgrades_ok(&proxy, "http/1.1"), 0);
    proxy.stop().await;
}

#[tokio::test]
async fn plain_http_garbage_and_silence_on_the_tls_port_harm_no_one_else() {
    let pki = Pki::new();
    let leaf = pki.leaf("default", &["chat.example.com"]);
    let nodes = nodes(&["a"]).await;
    let tls_settings = format!("{}\nhandshake_timeout = \"300ms\"", cert_keys(&leaf));
    let proxy = Proxy::start(&tls_config(&nodes, &tls_settings, "")).await;
    let port = proxy.addr.port();
    let stream = tls(
        proxy.addr,
        pki.client_config(&[b"http/1.1"], false),
        "chat.example.com",
    )
    .await
    .unwrap();
    let (mut good, _) =
        tokio_tungstenite::client_async(format!("wss://chat.example.com:{port}/ws"), stream)
            .await
            .unwrap();
    next_text(&mut good).await;

    // Plain HTTP and garbage: the connection is dropped.
    let mut plain = TcpStream::connect(proxy.addr).await.unwrap();
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: chat.example.com\r\n\r\n")
        .await
        .unwrap();
    assert!(closes(&mut plain).await);
    let mut garbage = TcpStream::connect(proxy.addr).await.unwrap();
    garbage
        .write_all(&[0x16, 0x03, 0x01, 0xff, 0xff, 1, 2, 3, 4, 5])
        .await
        .unwrap();
    assert!(closes(&mut garbage).await);
    // A client that connects and says nothing is cut off after the handshake timeout.
    let mut silent = TcpStream::connect(proxy.addr).await.unwrap();
    assert!(closes(&mut silent).await);
    // An untrusting client (unknown CA) fails its own handshake only.
    let stranger = Pki::new();
    assert!(
        tls(
            proxy.addr,
            stranger.client_config(&[], false),
            "chat.example.com"
        )
        .await
        .is_err()
    );

    send_text(&mut good, "unharmed").await;
    assert_eq!(next_text(&mut good).await, "unharmed");
    proxy.stop().await;
}

#[tokio::test]
async fn plain_listener_redirects_to_https_and_tls_responses_carry_hsts() {
    let nodes = nodes(&["a"]).await;
    let redirect = config(&nodes, "", "").replacen(
        "bind = \"127.0.0.1:0\"\n",
        "bind = \"127.0.0.1:0\"\nredirect_https = 8443\n",
        1,
    );
    let proxy = Proxy::start(&redirect).await;
    let (status, headers, _) =
        http(proxy.addr, get("chat.example.com:8080", "/room/1?x=y", &[])).await;
    assert_eq!(status, 308);
    assert_eq!(
        headers["location"],
        "https://chat.example.com:8443/room/1?x=y"
    );
    // A Host that is not host[:port] never makes a Location (an off-site redirect).
    let (_, head) = raw_head(proxy.addr, b"GET /p HTTP/1.1\r\nHost: evil.com/x?\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    let (_, head) = raw_head(
        proxy.addr,
        b"OPTIONS * HTTP/1.1\r\nHost: chat.example.com\r\n\r\n",
    )
    .await;
    assert!(
        head.to_lowercase()
            .contains("location: https://chat.example.com:8443/\r\n"),
        "{head}"
    );
    proxy.stop().await;

    let pki = Pki::new();
    let leaf = pki.leaf("default", &["chat.example.com"]);
    let hsts = format!(
        "{}\nhsts = \"max-age=63072000; includeSubDomains\"",
        cert_keys(&leaf)
    );
    let proxy = Proxy::start(&tls_config(&nodes, &hsts, "")).await;
    let stream = tls(
        proxy.addr,
        pki.client_config(&[b"http/1.1"], false),
        "chat.example.com",
    )
    .await
    .unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let resp = sender
        .send_request(get("chat.example.com", "/info", &[]))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["strict-transport-security"],
        "max-age=63072000; includeSubDomains"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn client_certificates_are_required_when_client_ca_is_set() {
    let pki = Pki::new();
    let leaf = pki.leaf("default", &["chat.example.com"]);
    let nodes = nodes(&["a"]).await;
    let settings = format!(
        "{}\nclient_ca = \"{}\"\nhsts = \"max-age=60\"",
        cert_keys(&leaf),
        pki.ca_file()
    );
    let toml = tls_config(&nodes, &settings, "");
    // `tether check` says what the listener demands of clients.
    let (_dir, path) = write_config(&toml);
    let check = std::process::Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(["check", "--config", &path])
        .output()
        .unwrap();
    let summary = String::from_utf8_lossy(&check.stdout);
    let expected = format!(
        "client certificates from {}, HSTS max-age=60",
        pki.ca_file()
    );
    assert!(summary.contains(&expected), "{summary}");
    let proxy = Proxy::start(&toml).await;
    let request = async |stream: TlsStream<TcpStream>| {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .ok()?;
        tokio::spawn(conn);
        sender
            .send_request(get("chat.example.com", "/info", &[]))
            .await
            .ok()
            .map(|r| r.status())
    };
    // Without a certificate the server refuses (TLS 1.3 reports it after the handshake).
    let anonymous = tls(
        proxy.addr,
        pki.client_config(&[b"http/1.1"], false),
        "chat.example.com",
    )
    .await;
    if let Ok(s) = anonymous {
        assert_eq!(
            request(s).await,
            None,
            "a client without a certificate was served"
        );
    }
    let with_cert = tls(
        proxy.addr,
        pki.client_config(&[b"http/1.1"], true),
        "chat.example.com",
    )
    .await
    .unwrap();
    assert_eq!(request(with_cert).await.map(|s| s.as_u16()), Some(200));
    proxy.stop().await;
}

#[tokio::test]
async fn sighup_replaces_the_certificate_for_new_handshakes_only() {
    let pki = Pki::new();
    let first = pki.leaf("live", &["chat.example.com"]);
    let nodes = nodes(&["a"]).await;
    let (_dir, path) = write_config(&tls_config(&nodes, &cert_keys(&first), ""));
    let mut bin = Binary::spawn(&["run", "--config", &path]);
    let addr = bin.wait_listening();
    let stream = tls(
        addr,
        pki.client_config(&[b"http/1.1"], false),
        "chat.example.com",
    )
    .await
    .unwrap();
    assert_eq!(peer_cert(&stream), first.der);
    let (mut open, _) = tokio_tungstenite::client_async(
        format!("wss://chat.example.com:{}/ws", addr.port()),
        stream,
    )
    .await
    .unwrap();
    next_text(&mut open).await;

    // A renewed certificate at the same paths (as certbot would), then SIGHUP.
    let second = pki.leaf("live", &["chat.example.com"]);
    assert_ne!(first.der, second.der);
    bin.signal("HUP");
    bin.wait_for("configuration reloaded");
    let fresh = tls(
        addr,
        pki.client_config(&[b"http/1.1"], false),
        "chat.example.com",
    )
    .await
    .unwrap();
    assert_eq!(peer_cert(&fresh), second.der);
    send_text(&mut open, "still on the old session").await;
    assert_eq!(next_text(&mut open).await, "still on the old session");

    // A broken certificate file is a failed reload that names the file.
    std::fs::write(&second.cert, "not a certificate").unwrap();
    bin.signal("HUP");
    let line = bin.wait_for("reload failed");
    assert!(
        line.contains(&second.cert) && line.contains("contains no certificate"),
        "{line}"
    );
    let again = tls(
        addr,
        pki.client_config(&[b"http/1.1"], false),
        "chat.example.com",
    )
    .await
    .unwrap();
    assert_eq!(peer_cert(&again), second.der);
    bin.signal("TERM");
    assert!(bin.wait_exit().success());
}

#[test]
fn certificate_problems_are_config_errors_that_name_the_file() {
    let pki = Pki::new();
    let a = pki.leaf("a", &["a.test"]);
    let b = pki.leaf("b", &["b.test"]);
    let base = "[[listener]]\nbind = \"127.0.0.1:0\"\n[listener.tls]\n";
    let parse = |tls: &str| tether::config::Config::parse(&format!("{base}{tls}\n"), "t.toml");
    let err = |tls: &str| parse(tls).unwrap_err().to_string();

    let e = err("cert = \"/nonexistent/x.pem\"\nkey = \"/nonexistent/x.key\"");
    assert!(
        e.starts_with("t.toml:4:8: `/nonexistent/x.pem`: cannot read"),
        "{e}"
    );
    let e = err(&format!("cert = \"{}\"\nkey = \"{}\"", a.cert, b.key));
    assert!(
        e.contains(&b.key) && e.contains("does not fit certificate") && e.contains(&a.cert),
        "{e}"
    );
    let e = err(&format!("cert = \"{}\"\nkey = \"{}\"", a.key, a.key));
    assert!(e.contains("contains no certificate"), "{e}");
    let e = err(&format!("cert = \"{}\"\nkey = \"{}\"", a.cert, a.cert));
    assert!(e.contains("no usable private key"), "{e}");

    // PKCS#8 (rcgen), PKCS#1 RSA and SEC1 EC keys all load.
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    for stem in ["rsa", "sec1"] {
        let tls = format!("cert = \"{fixtures}/{stem}.pem\"\nkey = \"{fixtures}/{stem}.key\"");
        assert!(parse(&tls).is_ok(), "{stem}: {:?}", parse(&tls).err());
    }
    assert!(parse(&cert_keys(&a)).is_ok());

    // An encrypted key says so, rather than "no usable private key".
    let dir = tempfile::tempdir().unwrap();
    let encrypted = dir.path().join("enc.key");
    std::fs::write(
        &encrypted,
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIBvTBXBgkqhkiG9w0BBQ0wSjApBgkqhkiG\n-----END ENCRYPTED PRIVATE KEY-----\n",
    )
    .unwrap();
    let e = err(&format!(
        "cert = \"{}\"\nkey = \"{}\"",
        a.cert,
        encrypted.display()
    ));
    assert!(e.contains("is encrypted"), "{e}");

    // SNI names that no ClientHello can carry are refused, not silently dead.
    for bad in [
        "*",
        "foo*.example.com",
        "*.*.example.com",
        "a b.example.com",
    ] {
        let e = err(&format!(
            "{}\n[[listener.tls.sni]]\nserver_names = [\"{bad}\"]\n{}",
            cert_keys(&a),
            cert_keys(&b)
        ));
        assert!(e.contains("is not a DNS name"), "{bad}: {e}");
    }
}

/// An HTTP/1.0 client that says so in ALPN is served, as nginx serves it: rustls
/// refuses a handshake whose every ALPN offer is unknown.
#[tokio::test]
async fn an_http_1_0_client_offering_alpn_is_served() {
    let pki = Pki::new();
    let leaf = pki.leaf("default", &["chat.example.com"]);
    let nodes = nodes(&["a"]).await;
    let proxy = Proxy::start(&tls_config(&nodes, &cert_keys(&leaf), "")).await;
    let mut stream = alpn_tls(&proxy, &pki, b"http/1.0").await;
    stream
        .write_all(b"GET /info?u=k HTTP/1.0\r\nHost: chat.example.com\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
    assert!(answer.contains("\"node\":\"a\""), "{answer}");
    proxy.stop().await;
}

/// A TLS connection to `proxy` that negotiated `h2`, for `chat.example.com`.
async fn h2_tls(proxy: &Proxy, pki: &Pki) -> TlsStream<TcpStream> {
    alpn_tls(proxy, pki, b"h2").await
}

/// A TLS connection to `proxy` for `chat.example.com` offering only `protocol` in
/// ALPN, which tether must have chosen.
async fn alpn_tls(proxy: &Proxy, pki: &Pki, protocol: &[u8]) -> TlsStream<TcpStream> {
    let stream = tls(
        proxy.addr,
        pki.client_config(&[protocol], false),
        "chat.example.com",
    )
    .await
    .unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(protocol));
    stream
}

/// An HTTP/2 connection to `proxy`: its sender, the port for URLs, and the task that
/// drives it (it ends when the connection does: `Ok` when tether said GOAWAY first).
async fn h2_client(
    proxy: &Proxy,
    pki: &Pki,
) -> (
    hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    u16,
    tokio::task::JoinHandle<hyper::Result<()>>,
) {
    let stream = h2_tls(proxy, pki).await;
    let (h2, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    let driver = tokio::spawn(conn);
    (h2, proxy.addr.port(), driver)
}

/// A WebSocket over `h2` (RFC 8441) to `path`.
async fn h2_ws(
    h2: &mut hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    port: u16,
    path: &str,
) -> WebSocketStream<TokioIo<hyper::upgrade::Upgraded>> {
    let stream = h2_connect(h2, port, path).await;
    WebSocketStream::from_raw_socket(stream, Role::Client, None).await
}

/// An extended CONNECT (RFC 8441, `:protocol = websocket`) to `path`.
fn websocket_connect(port: u16, path: &str) -> Request<Empty<Bytes>> {
    Request::connect(format!("https://chat.example.com:{port}{path}"))
        .header("sec-websocket-version", "13")
        .extension(Protocol::from_static("websocket"))
        .body(Empty::<Bytes>::new())
        .unwrap()
}

/// The byte stream of an extended CONNECT (`:protocol = websocket`) to `path`.
async fn h2_connect(
    h2: &mut hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    port: u16,
    path: &str,
) -> TokioIo<hyper::upgrade::Upgraded> {
    let req = websocket_connect(port, path);
    let mut resp = h2.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200, "extended CONNECT to {path}");
    TokioIo::new(hyper::upgrade::on(&mut resp).await.unwrap())
}

/// tether with a TLS listener (`header_timeout` if given) in front of node "a", and
/// `extra` config after it; the PKI to trust it with and the node, kept running.
async fn tls_proxy(
    header_timeout: Option<&str>,
    extra: &str,
) -> (Pki, Proxy, Vec<tether::demo::Node>) {
    let pki = Pki::new();
    let leaf = pki.leaf("default", &["chat.example.com"]);
    let nodes = nodes(&["a"]).await;
    let mut toml = tls_config(&nodes, &cert_keys(&leaf), "") + extra;
    if let Some(t) = header_timeout {
        toml = toml.replacen(
            "[listener.tls]",
            &format!("header_timeout = \"{t}\"\n[listener.tls]"),
            1,
        );
    }
    (pki, Proxy::start(&toml).await, nodes)
}

#[tokio::test]
async fn idle_http2_connections_are_closed_but_their_websockets_live_on() {
    let (pki, proxy, _nodes) = tls_proxy(Some("1s"), "").await;

    // ALPN h2, then silence: no preface ever comes. Closed, not held forever.
    let mut silent = h2_tls(&proxy, &pki).await;
    let mut rest = Vec::new();
    let read = tokio::time::timeout(
        PATIENCE,
        tokio::io::AsyncReadExt::read_to_end(&mut silent, &mut rest),
    )
    .await;
    assert!(read.is_ok(), "a silent HTTP/2 connection was kept open");

    // A connection carrying a WebSocket is not idle, however quiet.
    let (mut h2, port, conn) = h2_client(&proxy, &pki).await;
    let mut ws = h2_ws(&mut h2, port, "/ws?u=k").await;
    ws.next().await.unwrap().unwrap(); // the greeting
    // Quiet for more than two idle timeouts: the passing of time is what is tested.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let req = Request::get(format!("https://chat.example.com:{port}/info"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    assert_eq!(h2.send_request(req).await.unwrap().status(), 200);
    ws.send(Message::text("still here")).await.unwrap();
    match ws.next().await.unwrap().unwrap() {
        Message::Text(t) => assert_eq!(t.as_str(), "still here"),
        other => panic!("{other:?}"),
    }
    // Once the WebSocket is gone the connection is idle: GOAWAY, and it ends.
    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = ws.next().await {}
    tokio::time::timeout(PATIENCE, conn)
        .await
        .expect("an idle HTTP/2 connection was kept open")
        .unwrap()
        .expect("closed without GOAWAY");
    proxy.stop().await;
}

/// A backend that answers every request head with `answer` and then waits for the
/// peer to close.
async fn answering(answer: &'static [u8]) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let _ = read_head(&mut s).await;
                let _ = s.write_all(answer).await;
                let _ = closes(&mut s).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn http2_upgrades_a_backend_did_not_really_accept_are_502s() {
    // tether makes the key for an HTTP/2 client, so it checks the accept key; and to an
    // HTTP/2 client any 2xx means "the tunnel is open" (RFC 8441 §5), so a backend
    // answering the upgrade with a page must not look like one.
    let liar = answering(
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Accept: bm90IHRoZSByaWdodCBrZXk=\r\n\r\n",
    )
    .await;
    let page = answering(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
    let (pki, proxy, _nodes) = tls_proxy(
        None,
        &format!(
            "\n[[route]]\npath = \"/liar\"\nupstream = \"liar\"\n[upstream.liar]\nbackends = [\"{liar}\"]\n\
             [[route]]\npath = \"/page\"\nupstream = \"page\"\n[upstream.page]\nbackends = [\"{page}\"]\n"
        ),
    )
    .await;
    let (mut h2, port, _conn) = h2_client(&proxy, &pki).await;
    for (path, why) in [
        ("/liar", "Sec-WebSocket-Accept"),
        ("/page", "a 2xx, not 101"),
    ] {
        let req = websocket_connect(port, path);
        let resp = h2.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 502, "{path}");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert!(
            String::from_utf8_lossy(&body).contains(why),
            "{path}: {body:?}"
        );
    }
    proxy.stop().await;
}

/// A backend that accepts WebSocket upgrades and then never reads.
async fn stalling_ws_backend() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut s, _)) = l.accept().await {
            if answer_upgrade(&mut s).await {
                held.push(s);
            }
        }
    });
    addr
}

#[tokio::test]
async fn stalled_http2_websockets_hold_back_only_themselves() {
    let stall = stalling_ws_backend().await;
    let (pki, proxy, _nodes) = tls_proxy(
        None,
        &format!(
            "\n[[route]]\npath = \"/stall\"\nupstream = \"stall\"\n\
             [upstream.stall]\nbackends = [\"{stall}\"]\n"
        ),
    )
    .await;
    let (mut h2, port, _conn) = h2_client(&proxy, &pki).await;
    let mut healthy = h2_ws(&mut h2, port, "/ws?u=k").await;
    healthy.next().await.unwrap().unwrap(); // the greeting
    // Three stalled streams, each filled until tether stops taking its bytes: the
    // backend's socket buffers, then the stream's flow-control window. A send that
    // does not finish for a while is the sign (bounded: 64 MiB each at most).
    let chunk = Bytes::from(vec![7u8; 64 * 1024]);
    let mut stalled_streams = Vec::new();
    for _ in 0..3 {
        let mut stalled = h2_ws(&mut h2, port, "/stall").await;
        let mut blocked = false;
        for _ in 0..1024 {
            let send = stalled.send(Message::binary(chunk.clone()));
            if tokio::time::timeout(std::time::Duration::from_millis(500), send)
                .await
                .is_err()
            {
                blocked = true;
                break;
            }
        }
        assert!(blocked, "the stalled stream never filled up");
        stalled_streams.push(stalled);
    }
    // The other stream on the same connection still flows both ways.
    healthy.send(Message::text("through")).await.unwrap();
    let echo = tokio::time::timeout(PATIENCE, healthy.next()).await;
    match echo {
        Ok(Some(Ok(Message::Text(t)))) => assert_eq!(t.as_str(), "through"),
        other => panic!("the healthy stream is blocked: {other:?}"),
    }
    proxy.stop().await;
}

/// The other direction: a WebSocket client on HTTP/2 that reads nothing while its
/// backend pushes. tether sends only what the stream's flow-control window allows and
/// reads from the backend no faster, so the backend's writes stall rather than tether's
/// memory filling; once the client reads, every byte arrives.
#[tokio::test]
async fn an_http2_websocket_that_reads_nothing_holds_back_its_backend() {
    let (backend, mut flood) = flooding_backend().await;
    let (pki, proxy, _nodes) = tls_proxy(
        None,
        &format!(
            "\n[[route]]\npath = \"/flood\"\nupstream = \"flood\"\n\
             [upstream.flood]\nbackends = [\"{backend}\"]\n"
        ),
    )
    .await;
    let (mut h2, port, _conn) = h2_client(&proxy, &pki).await;
    let mut stream = h2_connect(&mut h2, port, "/flood").await;
    assert_held_back(&mut flood, &mut stream).await;
    proxy.stop().await;
}

/// nginx's `send_timeout` on HTTP/2 streams. Flow control lets a client stop one stream
/// while its connection's socket keeps moving, so no socket write stalls: a client that
/// gives its streams no window at all would otherwise hold a backend connection and a
/// slot per stream for as long as it kept the connection. Such a stream, a plain answer
/// or a WebSocket, is cut after `send_timeout`; the connection itself lives on.
#[tokio::test]
async fn http2_streams_given_no_window_are_cut_after_send_timeout() {
    let pki = Pki::new();
    let leaf = pki.leaf("default", &["chat.example.com"]);
    let nodes = nodes(&["a"]).await;
    let toml = tls_config(&nodes, &cert_keys(&leaf), "").replacen(
        "[listener.tls]",
        "send_timeout = \"1s\"\n[listener.tls]",
        1,
    );
    let proxy = Proxy::start(&toml).await;
    let port = proxy.addr.port();
    let live = &proxy.live;
    let free = || live.connections.available_permits();
    let stream = h2_tls(&proxy, &pki).await;
    let mut builder = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
    builder.initial_stream_window_size(0);
    let (mut h2, conn) = builder.handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    // The connection holds one slot; each stream with a backend connection another.
    let req = Request::get(format!(
        "https://chat.example.com:{port}/bytes/{}",
        64 << 20
    ))
    .body(Empty::<Bytes>::new())
    .unwrap();
    let answer = h2.send_request(req).await.unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(free(), live.max_connections - 2, "the answer holds no slot");
    eventually(|| async { (free() == live.max_connections - 1).then_some(()) }).await;
    // A WebSocket to a client that gives it no window, and sends a message for the node
    // to echo: more than hyper buffers between the tunnel and the stream.
    let mut tunnel = h2_connect(&mut h2, port, "/ws?u=1").await;
    assert_eq!(free(), live.max_connections - 2, "the tunnel holds no slot");
    let message = client_frame(2, &vec![7; 1 << 20]);
    tokio::spawn(async move {
        let _ = tunnel.write_all(&message).await;
        std::future::pending::<()>().await;
        drop(tunnel);
    });
    eventually(|| async { (free() == live.max_connections - 1).then_some(()) }).await;
    // Answers that need no window still come on the same connection.
    let req = Request::get(format!("https://chat.example.com:{port}/status/204"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    assert_eq!(h2.send_request(req).await.unwrap().status(), 204);
    proxy.stop().await;
}

#[tokio::test]
async fn an_http2_client_that_only_pings_is_closed() {
    let (pki, proxy, _nodes) = tls_proxy(Some("300ms"), "").await;
    let stream = h2_tls(&proxy, &pki).await;
    let (mut rx, mut tx) = tokio::io::split(stream);
    let reader = tokio::spawn(async move {
        let mut sink = Vec::new();
        let _ = tokio::io::AsyncReadExt::read_to_end(&mut rx, &mut sink).await;
    });
    // The preface, empty SETTINGS, then a PING every 100 ms: traffic, but no request.
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    let _ = tx.write_all(&hello).await;
    let ping = [0, 0, 8, 6, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8];
    // Closed while the pings still come (50 of them: 5 s, many idle timeouts).
    let mut closed = false;
    for _ in 0..50 {
        if reader.is_finished() || tx.write_all(&ping).await.is_err() {
            closed = true;
            break;
        }
        // The pace of the trickle is what is being tested.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(closed, "a client that only pings was kept open");
    proxy.stop().await;
}

#[tokio::test]
async fn many_cookie_fields_over_http2_count_as_one() {
    // Browsers send each cookie as its own HTTP/2 field (RFC 9113 §8.2.3).
    let (pki, proxy, _nodes) = tls_proxy(None, "").await;
    let (mut h2, port, _conn) = h2_client(&proxy, &pki).await;
    let mut req = Request::get(format!("https://chat.example.com:{port}/info"));
    for i in 0..120 {
        req = req.header("cookie", format!("c{i}=v"));
    }
    let resp = h2
        .send_request(req.body(Empty::new()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    proxy.stop().await;
}

#[tokio::test]
async fn pings_after_a_request_do_not_keep_an_http2_connection() {
    let (pki, proxy, _nodes) = tls_proxy(Some("300ms"), "").await;
    let stream = h2_tls(&proxy, &pki).await;
    // hyper's client PINGs every 100 ms even with nothing in flight.
    let mut builder = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(std::time::Duration::from_millis(100))
        .keep_alive_while_idle(true);
    let (mut h2, conn) = builder.handshake(TokioIo::new(stream)).await.unwrap();
    let conn = tokio::spawn(conn);
    let port = proxy.addr.port();
    let req = Request::get(format!("https://chat.example.com:{port}/info"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    assert_eq!(h2.send_request(req).await.unwrap().status(), 200);
    tokio::time::timeout(PATIENCE, conn)
        .await
        .expect("PINGs kept an idle HTTP/2 connection open")
        .unwrap()
        .ok();
    proxy.stop().await;
}

#[tokio::test]
async fn each_websocket_over_http2_takes_a_connection_slot_of_its_own() {
    // One h2 connection may carry many tunnels, each with a backend connection of its
    // own: counting them all as the one connection would let a few clients run tether
    // out of descriptors under any max_connections.
    let pki = Pki::new();
    let leaf = pki.leaf("default", &["chat.example.com"]);
    let nodes = nodes(&["a"]).await;
    let toml = format!(
        "max_connections = 2\n{}",
        tls_config(&nodes, &cert_keys(&leaf), "")
    );
    let proxy = Proxy::start(&toml).await;
    let (mut h2, port, _driver) = h2_client(&proxy, &pki).await;
    let mut first = h2_ws(&mut h2, port, "/ws?u=1").await;
    // The connection and its first tunnel hold both slots: the next tunnel is refused.
    let req = websocket_connect(port, "/ws?u=2");
    let resp = h2.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 503);
    // The first is unharmed, and its slot comes back when it closes.
    let greeting = first.next().await.unwrap().unwrap();
    assert!(greeting.is_text(), "{greeting:?}");
    first.send(Message::text("still here")).await.unwrap();
    assert_eq!(
        first.next().await.unwrap().unwrap(),
        Message::text("still here")
    );
    first.close(None).await.unwrap();
    while let Some(Ok(_)) = first.next().await {}
    let mut second = eventually(|| async {
        let req = websocket_connect(port, "/ws?u=3");
        let mut resp = h2.clone().send_request(req).await.unwrap();
        if resp.status() != 200 {
            return None;
        }
        let io = TokioIo::new(hyper::upgrade::on(&mut resp).await.unwrap());
        Some(WebSocketStream::from_raw_socket(io, Role::Client, None).await)
    })
    .await;
    assert!(second.next().await.unwrap().unwrap().is_text());
    proxy.stop().await;
}

/// A backend that reads request heads and never answers; the count of heads read.
async fn silent_backend() -> (SocketAddr, Arc<AtomicUsize>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let heads = Arc::new(AtomicUsize::new(0));
    let counted = heads.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let counted = counted.clone();
            tokio::spawn(async move {
                // hyper writes a request head in one piece.
                let mut head = [0u8; 4096];
                if matches!(s.read(&mut head).await, Ok(n) if n > 0) {
                    counted.fetch_add(1, Ordering::SeqCst);
                    let _ = closes(&mut s).await;
                }
            });
        }
    });
    (addr, heads)
}

/// 100 requests to the silent backend on `h2`, cancelled (RST_STREAM) once the
/// backend has all of them, or at once if `conn` ends first.
async fn cancel_100(
    h2: &mut hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    port: u16,
    heads: &AtomicUsize,
    conn: &tokio::task::JoinHandle<hyper::Result<()>>,
) {
    let before = heads.load(Ordering::SeqCst);
    let mut batch = tokio::task::JoinSet::new();
    for i in 0..100 {
        let req = Request::get(format!("https://chat.example.com:{port}/silent?u={i}"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        batch.spawn(h2.send_request(req));
    }
    eventually(|| async {
        (heads.load(Ordering::SeqCst) >= before + 100 || conn.is_finished()).then_some(())
    })
    .await;
    batch.shutdown().await;
}

#[tokio::test]
async fn an_http2_client_that_resets_most_requests_early_loses_its_connection() {
    let (silent, heads) = silent_backend().await;
    let (pki, proxy, _nodes) = tls_proxy(
        None,
        &format!(
            "\n[[route]]\npath = \"/silent\"\nupstream = \"silent\"\n\
             [upstream.silent]\nbackends = [\"{silent}\"]\n"
        ),
    )
    .await;
    let info = |port: u16| {
        Request::get(format!("https://chat.example.com:{port}/info"))
            .body(Empty::<Bytes>::new())
            .unwrap()
    };

    // A client that cancels some of its requests (a browser leaving pages) keeps its
    // connection: 450 answered, then 200 cancelled.
    let (mut good, port, good_conn) = h2_client(&proxy, &pki).await;
    for _ in 0..9 {
        let answers: Vec<_> = (0..50).map(|_| good.send_request(info(port))).collect();
        for a in futures_util::future::join_all(answers).await {
            assert_eq!(a.unwrap().status(), 200);
        }
    }
    for _ in 0..2 {
        cancel_100(&mut good, port, &heads, &good_conn).await;
    }
    assert_eq!(good.send_request(info(port)).await.unwrap().status(), 200);

    // One that cancels nearly every request it makes, each after tether has passed it
    // to the backend, is closed once it has made 500.
    let (mut bad, _, bad_conn) = h2_client(&proxy, &pki).await;
    let mut made = 0;
    while !bad_conn.is_finished() && made < 1000 {
        cancel_100(&mut bad, port, &heads, &bad_conn).await;
        made += 100;
    }
    tokio::time::timeout(PATIENCE, bad_conn)
        .await
        .expect("a client resetting every request kept its connection")
        .unwrap()
        .expect("closed without GOAWAY");
    assert!((500..=700).contains(&made), "closed after {made} requests");

    // Nobody else noticed.
    assert!(!good_conn.is_finished());
    assert_eq!(good.send_request(info(port)).await.unwrap().status(), 200);
    proxy.stop().await;
}

#[tokio::test]
async fn each_http2_request_takes_a_connection_slot_until_answered() {
    // As with WebSockets: each request of an h2 connection has a backend connection of
    // its own, so 128 requests whose answers are never read would hold 128 descriptors
    // for one slot.
    let (silent, heads) = silent_backend().await;
    let pki = Pki::new();
    let leaf = pki.leaf("default", &["chat.example.com"]);
    let nodes = nodes(&["a"]).await;
    let toml = format!(
        "max_connections = 3\n{}\n[[route]]\npath = \"/silent\"\nupstream = \"silent\"\n\
         [upstream.silent]\nbackends = [\"{silent}\"]\n",
        tls_config(&nodes, &cert_keys(&leaf), "")
    );
    let proxy = Proxy::start(&toml).await;
    let (mut h2, port, _driver) = h2_client(&proxy, &pki).await;
    let get = |path: &str| {
        Request::get(format!("https://chat.example.com:{port}{path}"))
            .body(Empty::<Bytes>::new())
            .unwrap()
    };
    // A request's slot comes back once it is answered.
    for _ in 0..3 {
        assert_eq!(h2.send_request(get("/info")).await.unwrap().status(), 200);
    }
    // The connection and two waiting requests hold all three slots.
    let waiting: Vec<_> = (0..2)
        .map(|i| tokio::spawn(h2.send_request(get(&format!("/silent?u={i}")))))
        .collect();
    eventually(|| async { (heads.load(Ordering::SeqCst) == 2).then_some(()) }).await;
    let refused = h2.send_request(get("/info")).await.unwrap();
    assert_eq!(refused.status(), 503);
    // One given up (RST_STREAM), its slot is free again.
    waiting[0].abort();
    eventually(|| async {
        let status = h2
            .clone()
            .send_request(get("/info"))
            .await
            .unwrap()
            .status();
        (status == 200).then_some(())
    })
    .await;
    waiting[1].abort();
    proxy.stop().await;
}

/// An HTTP/2 request body with a `content-length` need not end its stream with its last
/// bytes (hyper's and OkHttp's clients send the end in a frame of its own, and may send
/// it late): once the backend has all the bytes, its `response_timeout` runs.
#[tokio::test]
async fn an_h2_body_whose_stream_stays_open_still_starts_the_response_timeout() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = l.local_addr().unwrap();
    let node = tokio::spawn(async move {
        let (mut s, head) = accept_request(&l).await;
        let mut body = [0u8; 5];
        s.read_exact(&mut body).await.unwrap();
        // Never an answer.
        (s, head, body)
    });
    let pki = Pki::new();
    let leaf = pki.leaf("default", &["chat.example.com"]);
    let toml = tls_config(&[], &cert_keys(&leaf), "").replace(
        "backends = []",
        &format!("backends = [\"{backend}\"]\nresponse_timeout = \"300ms\""),
    );
    let proxy = Proxy::start(&toml).await;
    let stream = h2_tls(&proxy, &pki).await;
    let (mut h2, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let (mut tx, body) = http_body_util::channel::Channel::<Bytes>::new(1);
    let req = Request::post(format!("https://chat.example.com:{}/up", proxy.addr.port()))
        .header("content-length", "5")
        .body(body)
        .unwrap();
    let answer = tokio::spawn(h2.send_request(req));
    tx.send_data(Bytes::from_static(b"hello")).await.unwrap();
    let (_held, head, got) = node.await.unwrap();
    assert!(head.starts_with("POST /up"), "{head}");
    assert_eq!(&got, b"hello");
    // The client's stream is still open (`tx` lives on); the answer comes all the same.
    let resp = tokio::time::timeout(PATIENCE, answer)
        .await
        .expect("no answer: response_timeout never started")
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), 504);
    drop(tx);
    proxy.stop().await;
}
