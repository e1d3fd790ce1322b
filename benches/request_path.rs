//! What does tether spend per request before it talks to a backend? Two questions,
//! one group each:
//! - principal extraction: finding and hashing the principal in a realistic request
//!   (a browser's cookies, a user header, a query value, a path segment);
//! - header rewriting: stripping hop-by-hop headers and setting the X-Forwarded-* set
//!   on a browser's WebSocket upgrade request.
//!
//! `cargo bench --bench request_path`

use std::hint::black_box;
use std::net::IpAddr;

use criterion::{Criterion, criterion_group, criterion_main};
use hyper::Uri;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use tether::principal::{Source, extract};
use tether::proxy::headers::{Forwarding, client_ip, set_forwarding, strip_hop_by_hop};

/// The headers Chromium sends with a WebSocket upgrade, plus a session cookie among
/// others and a user header.
fn browser_request() -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("host", "chat.example.com:8443"),
        ("connection", "Upgrade"),
        ("pragma", "no-cache"),
        ("cache-control", "no-cache"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
        ),
        ("upgrade", "websocket"),
        ("origin", "https://chat.example.com:8443"),
        ("sec-websocket-version", "13"),
        ("accept-encoding", "gzip, deflate, br, zstd"),
        ("accept-language", "en-US,en;q=0.9"),
        (
            "cookie",
            "_ga=GA1.1.123456789.1700000000; theme=dark; JSESSIONID=node01abcdefghij0123456789ABCDEF.node0; _gid=GA1.2.987654321.1700000000",
        ),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        (
            "sec-websocket-extensions",
            "permessage-deflate; client_max_window_bits",
        ),
        ("x-user-id", "u-8c2f41"),
    ] {
        h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
    }
    h
}

fn principal(c: &mut Criterion) {
    let headers = browser_request();
    let uri: Uri = "/stomp/374/xk2j4m1q/websocket?userId=alice%40example.com&t=1700000000"
        .parse()
        .unwrap();
    let mut g = c.benchmark_group("principal");
    for (name, sources) in [
        ("cookie_among_four", vec!["cookie:JSESSIONID"]),
        ("header", vec!["header:X-User-Id"]),
        ("query_percent_decoded", vec!["query:userId"]),
        ("path_segment", vec!["path:3"]),
        (
            "first_of_four_sources_missing_three",
            vec!["cookie:SESSION", "header:X-Missing", "query:nope", "path:3"],
        ),
    ] {
        let sources: Vec<Source> = sources.iter().map(|s| s.parse().unwrap()).collect();
        g.bench_function(name, |b| {
            b.iter(|| extract(black_box(&sources), black_box(&uri), black_box(&headers)))
        });
    }
    g.finish();
}

fn headers(c: &mut Criterion) {
    let template = browser_request();
    let peer: IpAddr = "203.0.113.7".parse().unwrap();
    let host = template.get("host").cloned();
    let mut g = c.benchmark_group("headers");
    g.bench_function("strip_and_forward_browser_upgrade", |b| {
        b.iter_batched_ref(
            || template.clone(),
            |h| {
                let client = client_ip(peer, &[], h);
                strip_hop_by_hop(h);
                let f = Forwarding {
                    peer,
                    client,
                    trusted: false,
                    scheme: "https",
                    host: host.as_ref(),
                };
                set_forwarding(h, &f);
            },
            criterion::BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, principal, headers);
criterion_main!(benches);
