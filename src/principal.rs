//! The principal: who a request is about, reduced at once to its placement hash.
//!
//! A route lists sources (`cookie:NAME`, `header:NAME`, `query:NAME`, `path:N`); the
//! first that yields a non-empty value wins, else the route's [`Fallback`]. Every
//! source is attacker input: a malformed cookie, header or encoding means "absent",
//! never an error. The raw value is hashed and dropped here; only [`Principal`] (the
//! hash) travels on, and logs use its [`Principal::fingerprint`].
//!
//! Decoding, so that the same user id gives the same key from every source:
//! `query:` values are decoded as `application/x-www-form-urlencoded` to bytes (`%XX` and
//! `+` → space), `path:` segments are percent-decoded (`+` stays `+`), cookies and
//! headers are taken as sent, with surrounding spaces trimmed.

use std::borrow::Cow;
use std::fmt;
use std::hash::{BuildHasher, Hasher, RandomState};
use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::str::FromStr;
use std::sync::LazyLock;

use hyper::Uri;
use hyper::header::{COOKIE, HeaderMap, HeaderName};
use siphasher::sip::SipHasher13;

use crate::balance::key_hash;

/// Where a route looks for the principal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Cookie(String),
    Header(HeaderName),
    Query(String),
    /// The N-th segment of the request path, 1-based: in `/ws/alice`, `path:2` is `alice`.
    Path(NonZeroUsize),
}

/// What to do when no source yields a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// Hash the client address (after `trusted_proxies` resolution).
    Ip,
    /// Answer 400 naming the sources the route expects.
    Reject,
    /// Make a new random principal and set it as the route's first `cookie:` source
    /// (`Set-Cookie` on the answer), so the client's next requests carry it: for
    /// sessions a backend creates on the first request, which no source can name
    /// before it exists (HAProxy's `cookie insert`, Envoy's generated hash cookie).
    Cookie,
}

impl Source {
    /// The cookie's name, for a `cookie:` source.
    pub fn cookie(&self) -> Option<&str> {
        match self {
            Source::Cookie(name) => Some(name),
            _ => None,
        }
    }
}

/// A fresh value for `fallback = "cookie"`: 128 random bits as 32 hex digits. `None`
/// only if the OS has no randomness to give.
pub fn new_cookie_value() -> Option<String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).ok()?;
    Some(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// A principal's placement key. Deliberately holds no raw value.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Principal(u64);

impl Principal {
    /// The principal whose raw value is `bytes`; what `tether owner KEY` computes.
    pub fn from_bytes(bytes: &[u8]) -> Principal {
        Principal(key_hash(bytes))
    }

    /// The `ip` fallback: the textual address, e.g. `203.0.113.7` or `2001:db8::1`
    /// (an IPv4-mapped IPv6 peer counts as its IPv4 address).
    pub fn from_ip(ip: IpAddr) -> Principal {
        Principal::from_bytes(ip.to_canonical().to_string().as_bytes())
    }

    pub fn key(self) -> u64 {
        self.0
    }

    /// Eight hex digits, safe to log: 32 bits of the key hash passed through a keyed
    /// hash whose key this process drew at random. The key hash alone is public (an
    /// app computes placement from it), so its own bits would let anyone holding a log
    /// recover a client address or a user id by hashing candidates; with the secret key
    /// they cannot. The price: fingerprints differ between processes (and restarts).
    /// `/api/owner?key=...` names a key's fingerprint in the running process.
    pub fn fingerprint(self) -> Fingerprint {
        static KEY: LazyLock<[u8; 16]> = LazyLock::new(fingerprint_key);
        self.fingerprint_with(&KEY)
    }

    fn fingerprint_with(self, key: &[u8; 16]) -> Fingerprint {
        let mut h = SipHasher13::new_with_key(key);
        h.write_u64(self.0);
        Fingerprint((h.finish() >> 32) as u32)
    }
}

/// This process's fingerprint key: from the OS's generator, else (no randomness to be
/// had) from std's per-process random hasher keys.
fn fingerprint_key() -> [u8; 16] {
    let mut key = [0u8; 16];
    if getrandom::fill(&mut key).is_err() {
        let state = RandomState::new();
        key[..8].copy_from_slice(&state.hash_one(1u8).to_le_bytes());
        key[8..].copy_from_slice(&state.hash_one(2u8).to_le_bytes());
    }
    key
}

impl fmt::Debug for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Principal({})", self.fingerprint())
    }
}

/// See [`Principal::fingerprint`].
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint(u32);

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}", self.0)
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The first source of `sources` that yields a non-empty value, hashed.
pub fn extract(sources: &[Source], uri: &Uri, headers: &HeaderMap) -> Option<Principal> {
    sources.iter().find_map(|s| {
        let raw = match s {
            Source::Cookie(name) => cookie(headers, name),
            Source::Header(name) => header(headers, name),
            Source::Query(name) => query(uri, name),
            Source::Path(n) => path_segment(uri.path(), n.get()),
        }?;
        (!raw.is_empty()).then(|| Principal::from_bytes(&raw))
    })
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<Cow<'a, [u8]>> {
    // HTTP/2 may split cookies over several headers (RFC 9113 §8.2.3); look in all.
    headers.get_all(COOKIE).iter().find_map(|v| {
        v.as_bytes().split(|&b| b == b';').find_map(|pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|&b| b == b'=')?;
            let (n, v) = (&pair[..eq], pair[eq + 1..].trim_ascii());
            (n == name.as_bytes() && !v.is_empty()).then_some(Cow::Borrowed(v))
        })
    })
}

fn header<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<Cow<'a, [u8]>> {
    headers
        .get(name)
        .map(|v| Cow::Borrowed(v.as_bytes().trim_ascii()))
}

fn query<'a>(uri: &'a Uri, name: &str) -> Option<Cow<'a, [u8]>> {
    query_value(uri.query()?, name)
}

/// The first non-empty value of `name` in `query`, decoded as
/// `application/x-www-form-urlencoded` to bytes: `+` is a space, `%XX` the byte XX. The
/// bytes are kept as they are, UTF-8 or not (a lossy decode would give `%FF` and `%FE`
/// one key, and another than the same id in a `path:` segment).
pub fn query_value<'a>(query: &'a str, name: &str) -> Option<Cow<'a, [u8]>> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (!v.is_empty() && *form_decode(k) == *name.as_bytes()).then(|| form_decode(v))
    })
}

fn form_decode(s: &str) -> Cow<'_, [u8]> {
    if s.contains('+') {
        Cow::Owned(percent_encoding::percent_decode(s.replace('+', " ").as_bytes()).collect())
    } else {
        percent_encoding::percent_decode_str(s).into()
    }
}

/// Segments are counted from the first after the leading `/`; empty ones count too,
/// so `//a` has `a` as segment 2 and an absent segment 1.
pub fn path_segment(path: &str, n: usize) -> Option<Cow<'_, [u8]>> {
    let seg = path.strip_prefix('/')?.split('/').nth(n - 1)?;
    let decoded: Cow<'_, [u8]> = percent_encoding::percent_decode_str(seg).into();
    Some(decoded)
}

impl FromStr for Source {
    type Err = String;

    fn from_str(s: &str) -> Result<Source, String> {
        let usage = "a principal source is cookie:NAME, header:NAME, query:NAME or path:N";
        let Some((kind, arg)) = s.split_once(':') else {
            return Err(format!("`{s}`: {usage}"));
        };
        if arg.is_empty() {
            return Err(format!("`{s}` names nothing: {usage}"));
        }
        match kind {
            "cookie" => Ok(Source::Cookie(arg.to_owned())),
            "query" => Ok(Source::Query(arg.to_owned())),
            "header" => HeaderName::from_str(arg)
                .map(Source::Header)
                .map_err(|_| format!("`{arg}` is not a valid header name")),
            "path" => arg
                .parse::<NonZeroUsize>()
                .map(Source::Path)
                .map_err(|_| format!("`{s}`: path:N takes a segment number from 1, e.g. path:2")),
            _ => Err(format!("`{s}`: {usage}")),
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Cookie(n) => write!(f, "cookie:{n}"),
            Source::Header(n) => write!(f, "header:{n}"),
            Source::Query(n) => write!(f, "query:{n}"),
            Source::Path(n) => write!(f, "path:{n}"),
        }
    }
}

impl fmt::Display for Fallback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Fallback::Ip => "ip",
            Fallback::Reject => "reject",
            Fallback::Cookie => "cookie",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn sources(s: &[&str]) -> Vec<Source> {
        s.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn get(src: &[&str], uri: &str, headers: &[(&str, &str)]) -> Option<Principal> {
        let uri: Uri = uri.parse().unwrap();
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.append(
                HeaderName::from_str(k).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        extract(&sources(src), &uri, &h)
    }

    fn p(s: &str) -> Option<Principal> {
        Some(Principal::from_bytes(s.as_bytes()))
    }

    #[test]
    fn each_source() {
        let h = [
            ("cookie", "a=1; JSESSIONID=abc; b=2"),
            ("x-user-id", " u7 "),
        ];
        assert_eq!(get(&["cookie:JSESSIONID"], "/", &h), p("abc"));
        assert_eq!(get(&["header:X-User-Id"], "/", &h), p("u7"));
        assert_eq!(
            get(&["query:userId"], "/x?a=1&userId=al%40ce+b", &[]),
            p("al@ce b")
        );
        assert_eq!(get(&["path:2"], "/ws/al%40ce+b/x", &[]), p("al@ce+b"));
    }

    #[test]
    fn first_non_empty_source_wins() {
        let all = ["cookie:S", "header:X-U", "query:u", "path:3"];
        let uri = "/stomp/123/sess/websocket?u=q";
        assert_eq!(get(&all, uri, &[("cookie", "S=c"), ("x-u", "h")]), p("c"));
        assert_eq!(get(&all, uri, &[("cookie", "S="), ("x-u", "h")]), p("h"));
        assert_eq!(get(&all, uri, &[("x-u", "  ")]), p("q"));
        assert_eq!(get(&all, "/stomp/123/sess/websocket?u=", &[]), p("sess"));
        assert_eq!(get(&all, "/stomp", &[]), None);
    }

    #[test]
    fn malformed_input_is_absent_not_an_error() {
        let c = ["cookie:S"];
        assert_eq!(get(&c, "/", &[("cookie", "S")]), None);
        assert_eq!(get(&c, "/", &[("cookie", ";;;=;")]), None);
        assert_eq!(get(&c, "/", &[("cookie", "s=lower")]), None);
        assert_eq!(
            get(&c, "/", &[("cookie", "x=1"), ("cookie", "S=2")]),
            p("2")
        );
        assert_eq!(get(&["path:9"], "/a/b", &[]), None);
        assert_eq!(get(&["path:1"], "//a", &[]), None);
        assert_eq!(get(&["query:u"], "/?u", &[]), None);
        assert_eq!(get(&["query:u"], "/?u=&u=2", &[]), p("2"));
        // Bytes that are not UTF-8 are kept, as in a path segment: distinct ids stay
        // distinct and meet their `path:` twin.
        let raw = |path| extract(&sources(&["query:u", "path:1"]), &path, &HeaderMap::new());
        assert_eq!(
            raw("/%FF?u=%FF".parse().unwrap()),
            Some(Principal::from_bytes(b"\xff"))
        );
        assert_eq!(
            raw("/x?u=%FE".parse().unwrap()),
            Some(Principal::from_bytes(b"\xfe"))
        );
        assert_eq!(get(&["query:u x"], "/?u+x=a+b%2B", &[]), p("a b+"));
        // Invalid percent-encoding is kept literally rather than rejected.
        assert_eq!(get(&["path:1"], "/%zz", &[]), p("%zz"));
        // Non-UTF-8 bytes in a header are still a value.
        let mut h = HeaderMap::new();
        h.insert("x-u", HeaderValue::from_bytes(b"\xff\xfe").unwrap());
        let got = extract(&sources(&["header:x-u"]), &"/".parse().unwrap(), &h);
        assert_eq!(got, Some(Principal::from_bytes(b"\xff\xfe")));
    }

    #[test]
    fn parse_and_display_round_trip() {
        for s in [
            "cookie:JSESSIONID",
            "header:x-user-id",
            "query:userId",
            "path:3",
        ] {
            assert_eq!(s.parse::<Source>().unwrap().to_string(), s);
        }
        for bad in [
            "cookie",
            "cookie:",
            "path:0",
            "path:x",
            "header:bad name",
            "body:x",
        ] {
            assert!(bad.parse::<Source>().is_err(), "{bad}");
        }
    }

    #[test]
    fn fingerprint_is_short_and_not_the_value() {
        let f = Principal::from_bytes(b"secret-session-id")
            .fingerprint()
            .to_string();
        assert_eq!(f.len(), 8);
        assert!(!f.contains("secret"));
        assert!(!format!("{:?}", Principal::from_bytes(b"secret")).contains("secret"));
    }

    #[test]
    fn fingerprint_is_stable_but_not_the_public_hash() {
        // The public hash's top bits would let a log reader test guesses (every IPv4
        // address, a list of user ids); the keyed fingerprint must not be them.
        let keys: Vec<Principal> = (0..64)
            .map(|i| Principal::from_ip(IpAddr::from([10, 0, 0, i])))
            .collect();
        let public = keys
            .iter()
            .filter(|p| p.fingerprint().0 == (p.key() >> 32) as u32)
            .count();
        assert_eq!(public, 0, "fingerprints are the unkeyed hash");
        for p in &keys {
            assert_eq!(p.fingerprint(), p.fingerprint());
        }
        // The key decides: another key, other fingerprints.
        let (a, b) = ([1u8; 16], [2u8; 16]);
        let differ = keys
            .iter()
            .filter(|p| p.fingerprint_with(&a) != p.fingerprint_with(&b))
            .count();
        assert_eq!(differ, keys.len());
    }

    #[test]
    fn ip_fallback_hashes_the_text_form() {
        let ip: IpAddr = "203.0.113.7".parse().unwrap();
        assert_eq!(
            Principal::from_ip(ip),
            Principal::from_bytes(b"203.0.113.7")
        );
    }
}
