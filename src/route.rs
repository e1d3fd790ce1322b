//! Route matching: host, then the longest path prefix. Pure.
//!
//! A route matches when its host pattern matches the request's host (port ignored,
//! case-insensitive) or it has none, and its path is a prefix of the request path
//! (plain string prefix, as nginx's `location /x` and Envoy's `prefix`). Among the
//! matching routes the most specific host wins (exact > the longest `*.` wildcard >
//! no host), then the longest path. So a host-specific route set does not hide a
//! host-less catch-all: `/other` on a host with only `/ws` routed still reaches `/`.

use std::fmt;
use std::str::FromStr;

/// `chat.example.com` (exact) or `*.example.com` (any depth of subdomain, not the
/// bare domain, as nginx's `server_name`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostPattern {
    Exact(String),
    /// Stored with its leading dot: `.example.com`.
    Wildcard(String),
}

impl HostPattern {
    /// How specifically this pattern matches `host`, or `None`.
    fn rank(&self, host: &str) -> Option<(u8, usize)> {
        match self {
            HostPattern::Exact(h) => h.eq_ignore_ascii_case(host).then_some((2, h.len())),
            HostPattern::Wildcard(suffix) => {
                let n = suffix.len();
                (host.len() > n
                    && host.is_char_boundary(host.len() - n)
                    && host[host.len() - n..].eq_ignore_ascii_case(suffix))
                .then_some((1, n))
            }
        }
    }
}

impl FromStr for HostPattern {
    type Err = String;

    fn from_str(s: &str) -> Result<HostPattern, String> {
        if s.is_empty() {
            return Err(
                "an empty host name matches nothing: leave `host` out to match every host"
                    .to_owned(),
            );
        }
        if s == "_" || s == "*" {
            return Err(
                "this matches no host here: leave `host` out to match every host (nginx's `server_name _`)"
                    .to_owned(),
            );
        }
        // A fully qualified name (`a.example.com.`) is the same name, as in requests.
        let s = s.strip_suffix('.').unwrap_or(s);
        let usage = "`host` is a name like \"chat.example.com\" or \"*.example.com\" (no port)";
        let (wild, name) = match s.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let valid = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
            && !name.starts_with('.')
            && !name.ends_with('.');
        if !valid {
            return Err(usage.to_owned());
        }
        let name = name.to_ascii_lowercase();
        Ok(if wild {
            HostPattern::Wildcard(format!(".{name}"))
        } else {
            HostPattern::Exact(name)
        })
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(h) => f.write_str(h),
            HostPattern::Wildcard(s) => write!(f, "*{s}"),
        }
    }
}

/// The host part of a `Host` header or authority: `[::1]:8080` → `::1`,
/// `Chat.Example.com:443` → `Chat.Example.com` (matching ignores case), and a fully
/// qualified `a.example.com.` → `a.example.com`, as nginx matches it.
pub fn host_name(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    let name = match authority.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => authority,
    };
    name.strip_suffix('.').unwrap_or(name)
}

/// Routes with their payload `T`, in configuration order.
#[derive(Debug, Clone)]
pub struct Router<T> {
    routes: Vec<(Option<HostPattern>, String, T)>,
}

impl<T> Router<T> {
    pub fn new(routes: Vec<(Option<HostPattern>, String, T)>) -> Router<T> {
        Router { routes }
    }

    /// The best route for `host` (a host name, no port; `None` when the request had no
    /// host) and `path`.
    pub fn find(&self, host: Option<&str>, path: &str) -> Option<&T> {
        let mut best: Option<((u8, usize, usize), &T)> = None;
        for (pattern, prefix, value) in &self.routes {
            if !path.starts_with(prefix.as_str()) {
                continue;
            }
            let host_rank = match (pattern, host) {
                (None, _) => (0, 0),
                (Some(p), Some(h)) => match p.rank(h) {
                    Some(r) => r,
                    None => continue,
                },
                (Some(_), None) => continue,
            };
            let rank = (host_rank.0, host_rank.1, prefix.len());
            if best.as_ref().is_none_or(|(b, _)| rank > *b) {
                best = Some((rank, value));
            }
        }
        best.map(|(_, v)| v)
    }

    pub fn iter(&self) -> impl Iterator<Item = &(Option<HostPattern>, String, T)> {
        self.routes.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(routes: &[(Option<&str>, &str, &'static str)]) -> Router<&'static str> {
        Router::new(
            routes
                .iter()
                .map(|(h, p, v)| (h.map(|h| h.parse().unwrap()), p.to_string(), *v))
                .collect(),
        )
    }

    #[test]
    fn longest_prefix_wins() {
        let r = router(&[
            (None, "/", "root"),
            (None, "/ws", "ws"),
            (None, "/ws/admin", "admin"),
        ]);
        assert_eq!(r.find(Some("x"), "/"), Some(&"root"));
        assert_eq!(r.find(Some("x"), "/ws/alice"), Some(&"ws"));
        assert_eq!(r.find(Some("x"), "/wsx"), Some(&"ws"));
        assert_eq!(r.find(Some("x"), "/ws/admin/1"), Some(&"admin"));
        assert_eq!(r.find(None, "/ws"), Some(&"ws"));
    }

    #[test]
    fn specific_host_first_then_path_with_fallback() {
        let r = router(&[
            (None, "/", "any"),
            (Some("*.example.com"), "/", "wild"),
            (Some("*.eu.example.com"), "/", "eu"),
            (Some("chat.example.com"), "/ws", "chat-ws"),
        ]);
        assert_eq!(r.find(Some("chat.example.com"), "/ws/1"), Some(&"chat-ws"));
        assert_eq!(r.find(Some("CHAT.example.COM"), "/ws/1"), Some(&"chat-ws"));
        assert_eq!(r.find(Some("chat.example.com"), "/other"), Some(&"wild"));
        assert_eq!(r.find(Some("a.eu.example.com"), "/"), Some(&"eu"));
        assert_eq!(r.find(Some("a.b.example.com"), "/"), Some(&"wild"));
        assert_eq!(r.find(Some("example.com"), "/"), Some(&"any"));
        assert_eq!(r.find(None, "/ws"), Some(&"any"));
    }

    #[test]
    fn no_match_is_none() {
        let r = router(&[(Some("a.com"), "/api", "a")]);
        assert_eq!(r.find(Some("b.com"), "/api"), None);
        assert_eq!(r.find(Some("a.com"), "/"), None);
        assert_eq!(r.find(None, "/api"), None);
        assert_eq!(r.find(Some("é.a.com"), "/api"), None);
    }

    #[test]
    fn host_names() {
        assert_eq!(host_name("a.com:8080"), "a.com");
        assert_eq!(host_name("a.com"), "a.com");
        assert_eq!(host_name("[::1]:8080"), "::1");
        assert_eq!(host_name("[::1]"), "::1");
        assert_eq!(host_name("a.com:x"), "a.com:x");
        assert_eq!(host_name("a.com.:8080"), "a.com");
        assert_eq!(host_name("a.com."), "a.com");
    }

    #[test]
    fn patterns() {
        assert_eq!(
            "*.Example.com".parse(),
            Ok(HostPattern::Wildcard(".example.com".into()))
        );
        for bad in ["", "*", "*.", "a.*.com", "a.com:80", "a b", ".a.com"] {
            assert!(bad.parse::<HostPattern>().is_err(), "{bad}");
        }
    }
}
