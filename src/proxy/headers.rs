//! Forwarding rules for headers, as pure functions over `HeaderMap`.
//!
//! - Hop-by-hop headers are removed in both directions (RFC 9110 §7.6.1: "a proxy or
//!   gateway MUST remove any received connection options before forwarding", i.e.
//!   `Connection` and every header it names, plus `Proxy-Connection`, `Keep-Alive`,
//!   `TE`, `Transfer-Encoding` and `Upgrade`). `Host` and the forwarding headers are
//!   never removed, whatever `Connection` names: they are tether's to judge, and a
//!   client behind a trusted balancer must not strip the balancer's `X-Forwarded-*`
//!   by naming them (nginx ignores such names altogether).
//! - A `Content-Length` sent as a list or twice (`5, 5`) goes on as one value.
//! - `Host` is forwarded exactly as the client sent it, port included.
//! - From an untrusted peer, incoming `X-Forwarded-*`, `X-Real-IP` and `Forwarded` are
//!   discarded and replaced by what tether saw. From a peer in `trusted_proxies` the
//!   `X-Forwarded-For` chain is extended with the peer, and `X-Forwarded-Proto/-Host/
//!   -Port` are kept if present (the outer balancer knows the client-facing values).
//! - `X-Forwarded-Port` is the port the client addressed: the port of
//!   `X-Forwarded-Host` (the `Host`, or the outer balancer's value) if it has one, else
//!   the default of `X-Forwarded-Proto` (likewise). That is what apps rebuild URLs and
//!   check `Origin` with; the local listener port may differ behind NAT.
//! - The client address (for `X-Real-IP` and the `ip` principal) is the peer, or for a
//!   trusted peer the right-most address in `X-Forwarded-For` (a hop may carry a port)
//!   that is not itself a trusted proxy (nginx's `real_ip_recursive on`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use hyper::header::{
    CONNECTION, CONTENT_LENGTH, COOKIE, HOST, HeaderMap, HeaderName, HeaderValue, TE,
    TRANSFER_ENCODING, UPGRADE,
};
use ipnet::IpNet;

pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub const X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
pub const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// RFC 9110 §7.6.1. Removes `Connection`, every header it lists (except `Host` and the
/// forwarding headers), and the fixed hop-by-hop set.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none: look once before removing (removing an absent name
    // still hashes it; five of them were 1,200 instructions a request).
    let hop_by_hop = |n: &HeaderName| {
        matches!(
            n.as_str(),
            "connection"
                | "proxy-connection"
                | "keep-alive"
                | "te"
                | "transfer-encoding"
                | "upgrade"
        )
    };
    if !headers.keys().any(hop_by_hop) {
        return;
    }
    if headers.contains_key(CONNECTION) {
        // Browsers name only the standard options (`Upgrade`, `keep-alive`, `close`),
        // which the fixed list below removes anyway: collect (and allocate) only when
        // some other header is named.
        let other = |t: &str| {
            let t = t.trim();
            !["upgrade", "keep-alive", "close", ""]
                .iter()
                .any(|s| t.eq_ignore_ascii_case(s))
        };
        let tokens = || {
            headers
                .get_all(CONNECTION)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
        };
        if tokens().any(other) {
            let named: Vec<HeaderName> = tokens()
                .filter(|t| other(t))
                .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
                .filter(|n| *n != HOST && !forwarding_name(n.as_str()))
                .collect();
            for n in named {
                headers.remove(n);
            }
        }
        headers.remove(CONNECTION);
    }
    for n in [PROXY_CONNECTION, KEEP_ALIVE, TE, TRANSFER_ENCODING, UPGRADE] {
        headers.remove(n);
    }
}

/// A `Content-Length` repeated or sent as a list (`5, 5`) becomes one value: RFC 9110
/// §8.6 lets a recipient take equal ones as one (hyper did, to read the body), and a
/// stricter client downstream would refuse the list. Unequal ones, which can only
/// stand on an answer without a body (HEAD, 304), are dropped.
pub fn one_content_length(headers: &mut HeaderMap) {
    let mut values = headers.get_all(CONTENT_LENGTH).iter();
    match (values.next(), values.next()) {
        (None, _) => return,
        (Some(v), None) if !v.is_empty() && v.as_bytes().iter().all(u8::is_ascii_digit) => {
            return;
        }
        _ => {}
    }
    let agreed = {
        let mut lengths = headers
            .get_all(CONTENT_LENGTH)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .map(|t| std::str::from_utf8(t).ok()?.trim().parse::<u64>().ok());
        let first = lengths.next().flatten();
        first.filter(|f| lengths.all(|l| l == Some(*f)))
    };
    headers.remove(CONTENT_LENGTH);
    if let Some(n) = agreed {
        headers.insert(CONTENT_LENGTH, HeaderValue::from(n));
    }
}

/// Joins several `Cookie` headers into one with `"; "`, as RFC 9113 §8.2.3 requires
/// when an HTTP/2 request goes on as HTTP/1.1.
pub fn join_cookies(headers: &mut HeaderMap) {
    if headers.get_all(COOKIE).iter().nth(1).is_none() {
        return;
    }
    let joined: Vec<&[u8]> = headers
        .get_all(COOKIE)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect();
    if let Ok(v) = HeaderValue::from_bytes(&joined.join(&b"; "[..])) {
        headers.insert(COOKIE, v);
    }
}

/// True unless `headers` name a transfer coding other than a single `chunked`. tether
/// (hyper) decodes `chunked` and no other coding, so a body sent as `gzip, chunked`
/// would reach the backend still compressed with nothing saying so; nginx answers
/// such a request 501 too.
pub fn only_chunked(headers: &HeaderMap) -> bool {
    let mut codings = headers
        .get_all(TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|c| !c.is_empty());
    match codings.next() {
        None => true,
        Some(c) => c.eq_ignore_ascii_case(b"chunked") && codings.next().is_none(),
    }
}

/// True if any `Connection` header lists `token` (case-insensitive).
pub fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// The client address: see the module doc. `trusted` is the listener's list.
pub fn client_ip(peer: IpAddr, trusted: &[IpNet], headers: &HeaderMap) -> IpAddr {
    if !is_trusted(peer, trusted) {
        return peer;
    }
    let mut client = peer;
    // Walk the chain right to left; every hop we pass must itself be trusted.
    for entry in forwarded_for(headers).rev() {
        let Some(ip) = hop_ip(entry) else { break };
        client = ip;
        if !is_trusted(ip, trusted) {
            break;
        }
    }
    client
}

/// One `X-Forwarded-For` hop: an address, with a port where a balancer writes one
/// (`203.0.113.5:4444`, `[2001:db8::1]:1234`; Azure's gateway does), read as nginx
/// reads it.
fn hop_ip(entry: &str) -> Option<IpAddr> {
    entry
        .parse()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|a| a.ip()))
        .or_else(|| entry.strip_prefix('[')?.strip_suffix(']')?.parse().ok())
}

pub fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    let ip = ip.to_canonical();
    trusted.iter().any(|n| n.contains(&ip))
}

/// Every `X-Forwarded-For` entry in order, across repeated headers.
fn forwarded_for(headers: &HeaderMap) -> impl DoubleEndedIterator<Item = &str> {
    let entries: Vec<&str> = headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    entries.into_iter()
}

/// What the forwarding headers describe.
#[derive(Debug, Clone, Copy)]
pub struct Forwarding<'a> {
    /// The TCP peer.
    pub peer: IpAddr,
    /// [`client_ip`]'s answer.
    pub client: IpAddr,
    /// The peer is in `trusted_proxies`.
    pub trusted: bool,
    /// `"http"` or `"https"`, as the client reached tether.
    pub scheme: &'static str,
    /// The `Host` the request carries (client-facing), if any.
    pub host: Option<&'a HeaderValue>,
}

/// Sets `X-Forwarded-For/-Proto/-Host/-Port` and `X-Real-IP`; see the module doc.
/// Call after [`strip_hop_by_hop`].
pub fn set_forwarding(headers: &mut HeaderMap, f: &Forwarding<'_>) {
    let peer = ip_value(f.peer);
    let xff = if f.trusted {
        let chain: Vec<&str> = forwarded_for(headers).collect();
        if chain.is_empty() {
            Some(peer.clone())
        } else {
            let text = format!("{}, {}", chain.join(", "), f.peer.to_canonical());
            HeaderValue::from_str(&text).ok()
        }
    } else {
        let spoofed: Vec<HeaderName> = headers
            .keys()
            .filter(|k| forwarding_name(k.as_str()))
            .cloned()
            .collect();
        for n in spoofed {
            headers.remove(n);
        }
        Some(peer.clone())
    };
    if let Some(v) = xff {
        headers.insert(X_FORWARDED_FOR, v);
    }
    // Usually the same address: share the value instead of formatting it twice.
    let real_ip = if f.client == f.peer {
        peer
    } else {
        ip_value(f.client)
    };
    headers.insert(X_REAL_IP, real_ip);
    if !headers.contains_key(X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(f.scheme));
    }
    if let Some(host) = f.host
        && !headers.contains_key(X_FORWARDED_HOST)
    {
        headers.insert(X_FORWARDED_HOST, host.clone());
    }
    if !headers.contains_key(X_FORWARDED_PORT)
        && let Some(host) = headers.get(X_FORWARDED_HOST)
    {
        // Host and scheme as the client used them: an outer balancer's where kept, so
        // `https://shop.example` behind it is port 443, not tether's own 80.
        let port = match host_port(host) {
            Some(p) => HeaderValue::from(p),
            None if client_https(headers) => HeaderValue::from_static("443"),
            None => HeaderValue::from_static("80"),
        };
        headers.insert(X_FORWARDED_PORT, port);
    }
}

/// A name an app may read as forwarding information: every `X-Forwarded-*`, not only
/// those tether sets (apps believe `-Ssl` and `-Prefix` too: Spring's
/// ForwardedHeaderFilter, Rack), `X-Real-IP` and `Forwarded`, also with `_` for `-`
/// (CGI-style servers read `X_Forwarded_Proto` as `X-Forwarded-Proto`).
fn forwarding_name(name: &str) -> bool {
    let like = |n: &[u8], want: &[u8]| {
        n.len() == want.len()
            && n.iter()
                .zip(want)
                .all(|(a, b)| a == b || (*a == b'_' && *b == b'-'))
    };
    let n = name.as_bytes();
    n.get(..12).is_some_and(|p| like(p, b"x-forwarded-"))
        || like(n, b"x-real-ip")
        || like(n, b"forwarded")
}

/// The client reached the edge over https: the first `X-Forwarded-Proto` value, once
/// [`set_forwarding`] has set it (an outer balancer's if trusted, else tether's own).
pub fn client_https(headers: &HeaderMap) -> bool {
    headers
        .get(X_FORWARDED_PROTO)
        .and_then(|v| v.as_bytes().split(|b| *b == b',').next())
        .is_some_and(|p| p.trim_ascii().eq_ignore_ascii_case(b"https"))
}

/// An address as a header value (IPv4-mapped IPv6 written as IPv4).
fn ip_value(ip: IpAddr) -> HeaderValue {
    let value = match ip.to_canonical() {
        // Every request formats one: by hand, a tenth of `Display`'s instructions.
        IpAddr::V4(v4) => {
            let mut text = [0u8; 15];
            let len = ipv4_text(v4, &mut text);
            HeaderValue::from_bytes(&text[..len])
        }
        ip => HeaderValue::from_str(&ip.to_string()),
    };
    // An address's text form is always a valid header value.
    value.unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// Writes `ip` in dotted decimal to `out`; returns the length.
fn ipv4_text(ip: Ipv4Addr, out: &mut [u8; 15]) -> usize {
    let mut len = 0;
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            out[len] = b'.';
            len += 1;
        }
        if octet >= 100 {
            out[len] = b'0' + octet / 100;
            len += 1;
        }
        if octet >= 10 {
            out[len] = b'0' + octet / 10 % 10;
            len += 1;
        }
        out[len] = b'0' + octet % 10;
        len += 1;
    }
    len
}

/// The explicit port of a `Host` value (`a.com:8080`, `[::1]:8443`), if any.
fn host_port(host: &HeaderValue) -> Option<u16> {
    let s = host.to_str().ok()?;
    let (_, port) = s.rsplit_once(':')?;
    if s.starts_with('[') && !s.contains("]:") {
        return None;
    }
    port.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An address's header value as text.
    fn text(ip: IpAddr) -> String {
        ip_value(ip).to_str().unwrap().to_owned()
    }

    proptest::proptest! {
        #[test]
        fn addresses_are_written_as_display_writes_them(bits: u32, v6: u128) {
            let v4 = Ipv4Addr::from(bits);
            proptest::prop_assert_eq!(text(IpAddr::V4(v4)), v4.to_string());
            proptest::prop_assert_eq!(text(IpAddr::V6(v4.to_ipv6_mapped())), v4.to_string());
            let v6 = std::net::Ipv6Addr::from(v6);
            proptest::prop_assert_eq!(text(IpAddr::V6(v6)), v6.to_canonical().to_string());
        }
    }

    #[test]
    fn the_widest_and_narrowest_addresses_fit() {
        for ip in ["0.0.0.0", "255.255.255.255", "10.0.100.9", "127.0.0.1"] {
            assert_eq!(text(ip.parse().unwrap()), ip);
        }
    }

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn get<'a>(h: &'a HeaderMap, k: &str) -> Option<&'a str> {
        h.get(k).map(|v| v.to_str().unwrap())
    }

    fn nets(s: &[&str]) -> Vec<IpNet> {
        s.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn strips_hop_by_hop_and_connection_listed_but_never_host_or_forwarding() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret, host, X-Forwarded-For"),
            ("connection", "x-forwarded-proto, X-Real-IP"),
            ("x-forwarded-for", "203.0.113.7"),
            ("x-forwarded-proto", "https"),
            ("x-real-ip", "203.0.113.7"),
            ("connection", "upgrade"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-connection", "keep-alive"),
            ("host", "a.com:8080"),
            ("x-keep", "yes"),
        ]);
        strip_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(
            left,
            [
                "host",
                "x-forwarded-for",
                "x-forwarded-proto",
                "x-keep",
                "x-real-ip"
            ]
        );
    }

    #[test]
    fn a_content_length_list_becomes_one_value() {
        for (sent, kept) in [
            (&["5"][..], Some("5")),
            (&["005"][..], Some("005")),
            (&["5, 5"][..], Some("5")),
            (&["5", "5"][..], Some("5")),
            (&["5,5", " 5 "][..], Some("5")),
            (&["5", "6"][..], None),
            (&["5, x"][..], None),
            (&[""][..], None),
        ] {
            let mut h = HeaderMap::new();
            for v in sent {
                h.append(CONTENT_LENGTH, HeaderValue::from_static(v));
            }
            one_content_length(&mut h);
            assert_eq!(get(&h, "content-length"), kept, "{sent:?}");
            assert!(h.get_all(CONTENT_LENGTH).iter().count() <= 1);
        }
    }

    #[test]
    fn cookies_from_http2_are_joined_for_http1() {
        let mut h = map(&[("cookie", "a=1"), ("cookie", "b=2"), ("cookie", "S=x")]);
        join_cookies(&mut h);
        assert_eq!(h.get_all("cookie").iter().count(), 1);
        assert_eq!(get(&h, "cookie"), Some("a=1; b=2; S=x"));
        let mut one = map(&[("cookie", "a=1")]);
        join_cookies(&mut one);
        assert_eq!(get(&one, "cookie"), Some("a=1"));
    }

    #[test]
    fn connection_tokens() {
        let h = map(&[("connection", "keep-alive, Upgrade")]);
        assert!(connection_has(&h, "upgrade"));
        assert!(!connection_has(&h, "close"));
    }

    #[test]
    fn untrusted_peer_gets_fresh_headers() {
        let mut h = map(&[
            ("host", "chat.example.com:8080"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-host", "evil"),
            ("x-forwarded-proto", "https"),
            ("x-real-ip", "6.6.6.6"),
            ("forwarded", "for=6.6.6.6"),
            ("x-forwarded-ssl", "on"),
            ("x-forwarded-prefix", "/admin"),
            ("x-forwarded-server", "evil"),
            ("x_forwarded_proto", "https"),
            ("x-forwarded_ssl", "on"),
            ("x_real_ip", "6.6.6.6"),
        ]);
        let peer: IpAddr = "192.0.2.1".parse().unwrap();
        let client = client_ip(peer, &[], &h);
        assert_eq!(client, peer);
        let host = h.get(HOST).cloned();
        let f = Forwarding {
            peer,
            client,
            trusted: false,
            scheme: "http",
            host: host.as_ref(),
        };
        set_forwarding(&mut h, &f);
        assert_eq!(get(&h, "x-forwarded-for"), Some("192.0.2.1"));
        assert_eq!(get(&h, "x-real-ip"), Some("192.0.2.1"));
        assert_eq!(get(&h, "x-forwarded-proto"), Some("http"));
        // So an untrusted client cannot make an issued cookie `Secure`.
        assert!(!client_https(&h));
        assert_eq!(get(&h, "x-forwarded-host"), Some("chat.example.com:8080"));
        assert_eq!(get(&h, "x-forwarded-port"), Some("8080"));
        assert_eq!(get(&h, "host"), Some("chat.example.com:8080"));
        assert_eq!(get(&h, "forwarded"), None);
        for gone in [
            "x-forwarded-ssl",
            "x-forwarded-prefix",
            "x-forwarded-server",
            "x_forwarded_proto",
            "x-forwarded_ssl",
            "x_real_ip",
        ] {
            assert_eq!(get(&h, gone), None, "{gone}");
        }
    }

    #[test]
    fn trusted_peer_extends_the_chain_and_keeps_outer_values() {
        let trusted = nets(&["10.0.0.0/8"]);
        let mut h = map(&[
            ("host", "chat.example.com"),
            ("x-forwarded-for", "203.0.113.9, 10.1.1.1"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-port", "443"),
        ]);
        let peer: IpAddr = "10.0.0.2".parse().unwrap();
        let client = client_ip(peer, &trusted, &h);
        assert_eq!(client, "203.0.113.9".parse::<IpAddr>().unwrap());
        let host = h.get(HOST).cloned();
        let f = Forwarding {
            peer,
            client,
            trusted: true,
            scheme: "http",
            host: host.as_ref(),
        };
        set_forwarding(&mut h, &f);
        assert_eq!(
            get(&h, "x-forwarded-for"),
            Some("203.0.113.9, 10.1.1.1, 10.0.0.2")
        );
        assert_eq!(get(&h, "x-real-ip"), Some("203.0.113.9"));
        assert_eq!(get(&h, "x-forwarded-proto"), Some("https"));
        assert_eq!(get(&h, "x-forwarded-port"), Some("443"));
        assert_eq!(get(&h, "x-forwarded-host"), Some("chat.example.com"));
    }

    #[test]
    fn client_ip_stops_at_the_first_untrusted_or_garbage_hop() {
        let trusted = nets(&["10.0.0.0/8"]);
        let peer: IpAddr = "10.0.0.2".parse().unwrap();
        let spoofed = map(&[("x-forwarded-for", "1.1.1.1, 203.0.113.9")]);
        assert_eq!(
            client_ip(peer, &trusted, &spoofed).to_string(),
            "203.0.113.9"
        );
        let garbage = map(&[("x-forwarded-for", "1.1.1.1, nonsense")]);
        assert_eq!(client_ip(peer, &trusted, &garbage), peer);
        let all_trusted = map(&[("x-forwarded-for", "10.9.9.9")]);
        assert_eq!(
            client_ip(peer, &trusted, &all_trusted).to_string(),
            "10.9.9.9"
        );
        // Hops written with a port, as some balancers do.
        for (chain, want) in [
            ("203.0.113.5:4444", "203.0.113.5"),
            ("[2001:db8::1]:1234", "2001:db8::1"),
            ("[2001:db8::2]", "2001:db8::2"),
            ("203.0.113.5:4444, 10.1.1.1:80", "203.0.113.5"),
        ] {
            let h = map(&[("x-forwarded-for", chain)]);
            assert_eq!(client_ip(peer, &trusted, &h).to_string(), want, "{chain}");
        }
        // An untrusted peer's chain is ignored entirely.
        let other: IpAddr = "198.51.100.1".parse().unwrap();
        assert_eq!(client_ip(other, &trusted, &spoofed), other);
    }

    #[test]
    fn forwarded_port_follows_the_outer_balancers_host_and_scheme() {
        let trusted = nets(&["10.0.0.0/8"]);
        let peer: IpAddr = "10.0.0.2".parse().unwrap();
        for (outer, port) in [
            (&[("x-forwarded-proto", "https")][..], "443"),
            (&[("x-forwarded-proto", "HTTPS, http")][..], "443"),
            (&[("x-forwarded-host", "outer.example:8443")][..], "8443"),
            (&[("x-forwarded-host", "outer.example")][..], "80"),
            (
                &[("x-forwarded-proto", "https"), ("x-forwarded-port", "4443")][..],
                "4443",
            ),
        ] {
            let mut h = map(outer);
            let host = HeaderValue::from_static("shop.example.com");
            let f = Forwarding {
                peer,
                client: client_ip(peer, &trusted, &h),
                trusted: true,
                scheme: "http",
                host: Some(&host),
            };
            set_forwarding(&mut h, &f);
            assert_eq!(get(&h, "x-forwarded-port"), Some(port), "{outer:?}");
        }
    }

    #[test]
    fn forwarded_port_defaults_by_scheme() {
        for (host, scheme, port) in [
            ("a.com", "http", "80"),
            ("a.com", "https", "443"),
            ("[::1]:8443", "https", "8443"),
            ("[::1]", "http", "80"),
        ] {
            let mut h = HeaderMap::new();
            let v = HeaderValue::from_static(host);
            let ip: IpAddr = "127.0.0.1".parse().unwrap();
            let f = Forwarding {
                peer: ip,
                client: ip,
                trusted: false,
                scheme,
                host: Some(&v),
            };
            set_forwarding(&mut h, &f);
            assert_eq!(get(&h, "x-forwarded-port"), Some(port), "{host}");
        }
    }

    #[test]
    fn v4_mapped_peers_are_written_as_v4() {
        let mut h = HeaderMap::new();
        let peer: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        let f = Forwarding {
            peer,
            client: peer,
            trusted: false,
            scheme: "http",
            host: None,
        };
        set_forwarding(&mut h, &f);
        assert_eq!(get(&h, "x-forwarded-for"), Some("192.0.2.1"));
        assert!(is_trusted(peer, &nets(&["192.0.2.0/24"])));
    }
}
