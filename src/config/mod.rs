//! Configuration: TOML text → serde mirror (`raw`) → typed, validated [`Config`].
//!
//! Parsing is the only validation: once a `Config` exists every address is a
//! `SocketAddr`, every duration a `Duration`, every route names an upstream that
//! exists. Errors carry the file, line and column of the offending value and say what
//! to write instead; `tether check` and reload print exactly these messages.
//!
//! Defaults live here, next to the key they belong to, and `conf/tether.toml`
//! documents each one (a test parses that file so it cannot rot).

mod hint;
mod raw;
mod route;
mod summary;
mod tls;
mod upstream;

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use ipnet::IpNet;
use toml::Spanned;

use crate::principal::{Fallback, Source};
use crate::route::HostPattern;
use hint::{line_at, line_col, with_hint};
use raw::{RawConfig, RawListener};
use route::build_routes;
pub use summary::{human, summary};
pub use tls::{TlsConfig, provider};
pub use upstream::{BackendConfig, HealthConfig, Probe, Rebalance, UpstreamConfig};
use upstream::{build_upstream, placement};

/// Default for `route.idle_timeout`: a tunnel with no byte in either direction for
/// this long is closed. Far above any heartbeat interval (STOMP 10 s, Socket.IO 25 s,
/// a once-a-minute ping), and the value HAProxy recommends for `timeout tunnel`.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_MAX_HEADER_BYTES: usize = 32 * 1024;
const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_REMOVAL_GRACE: Duration = Duration::from_secs(10);
const DEFAULT_ADMIN_BIND: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9090);

/// The validated configuration. Built only by [`Config::parse`] / [`Config::load`].
#[derive(Debug, Clone)]
pub struct Config {
    pub listeners: Vec<ListenerConfig>,
    pub routes: Vec<RouteConfig>,
    /// Sorted by name; routes refer to them by index.
    pub upstreams: Vec<UpstreamConfig>,
    /// How long shutdown waits for connections and tunnels to finish.
    pub drain_timeout: Duration,
    /// After a reload removes a backend, how long its tunnels may stay before they are
    /// closed with 1001.
    pub removal_grace: Duration,
    /// The admin listener (metrics, status), if configured.
    pub admin: Option<AdminConfig>,
    /// Logs as JSON lines instead of text (read at start; a reload does not change it).
    pub log_json: bool,
    /// Worker threads; `None`: one per core tether may run on (read at start).
    pub workers: Option<usize>,
    /// Client connections served at once, over all traffic listeners; `None`: what
    /// the open-file limit allows (read at start).
    pub max_connections: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    pub bind: SocketAddr,
    /// Required as `Authorization: Bearer …` (or `?token=`) on every endpoint but
    /// `/healthz` and `/readyz`; mandatory when `bind` is not a loopback address.
    pub token: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ListenerConfig {
    pub bind: SocketAddr,
    /// Peers whose `X-Forwarded-*` headers are believed and extended.
    pub trusted_proxies: Vec<IpNet>,
    /// Request line plus headers; more is answered 431.
    pub max_header_bytes: usize,
    /// Time allowed for a request's headers to arrive, counted from the end of the
    /// previous response (so it is also the idle keep-alive timeout).
    pub header_timeout: Duration,
    /// Longest wait between two reads of a request body (nginx's
    /// `client_body_timeout`).
    pub body_timeout: Duration,
    /// Longest a write to a client may make no progress (nginx's `send_timeout`).
    pub send_timeout: Duration,
    /// On a plain listener: answer everything with 308 to https on this port.
    pub redirect_https: Option<u16>,
    pub tls: Option<TlsConfig>,
}

#[derive(Debug, Clone)]
pub struct RouteConfig {
    pub host: Option<HostPattern>,
    pub path: String,
    /// Index into [`Config::upstreams`].
    pub upstream: usize,
    pub principal: Vec<Source>,
    pub fallback: Fallback,
    /// `None`: tunnels on this route never time out for idleness.
    pub idle_timeout: Option<Duration>,
    /// Plain requests go first to a node holding a live tunnel of their principal.
    pub follow_socket: bool,
}

/// A configuration error, printed as `file:line:col: message`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{origin}: cannot read")]
    Read {
        origin: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{origin}:{line}:{column}: {message}")]
    At {
        origin: String,
        line: usize,
        column: usize,
        message: String,
    },
}

impl Config {
    /// What is valid but probably not meant: `check` prints these, `run` logs them.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.routes.is_empty() {
            out.push("no [[route]]: every request will be answered 404".to_owned());
        }
        for (i, u) in self.upstreams.iter().enumerate() {
            if !self.routes.iter().any(|r| r.upstream == i) {
                out.push(format!(
                    "upstream `{}` is used by no route: its backends are probed, and /readyz waits for one of them",
                    u.name
                ));
            }
        }
        out
    }

    /// Reads and parses the file at `path`; errors name the path as given.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let (text, origin) = read(path)?;
        Config::parse(&text, &origin)
    }

    /// Parses TOML `text`; `origin` names it in error messages (usually the path).
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let raw = parse_raw(text, origin)?;
        build(raw).map_err(|e| e.at(text, origin))
    }

    /// Each upstream's backends as placement sees them (id and weight), from the file
    /// at `path`: all `tether owner` needs, so unlike [`Config::load`] this reads no
    /// certificate and resolves no host name.
    pub fn placements(path: &Path) -> Result<Vec<(String, Placement)>, ConfigError> {
        let (text, origin) = read(path)?;
        let raw = parse_raw(&text, &origin)?;
        raw.upstream
            .into_iter()
            .map(|(name, u)| Ok((name.into_inner(), placement(u.backends.get_ref())?)))
            .collect::<Result<_, Invalid>>()
            .map_err(|e| e.at(&text, &origin))
    }

    pub fn upstream(&self, name: &str) -> Option<&UpstreamConfig> {
        self.upstreams.iter().find(|u| u.name == name)
    }
}

/// An upstream's backends as placement sees them: id and weight, in order.
pub type Placement = Vec<(String, u32)>;

/// The text of the file at `path`, and its name for error messages.
fn read(path: &Path) -> Result<(String, String), ConfigError> {
    let origin = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => Ok((text, origin)),
        Err(source) => Err(ConfigError::Read { origin, source }),
    }
}

/// `text` as TOML of the configuration's shape; syntax and unknown keys fail here.
fn parse_raw(text: &str, origin: &str) -> Result<RawConfig, ConfigError> {
    toml::from_str(text).map_err(|e| {
        let line = e.span().map_or(("", ""), |s| line_at(text, s.start));
        let message = with_hint(e.message().trim(), line);
        Invalid {
            span: e.span().unwrap_or(0..0),
            message,
        }
        .at(text, origin)
    })
}

/// A semantic error at a span of the source, before it is turned into line:column.
pub(crate) struct Invalid {
    span: Range<usize>,
    message: String,
}

impl Invalid {
    /// This error at its line and column of `text`, read from `origin`.
    fn at(self, text: &str, origin: &str) -> ConfigError {
        let (line, column) = line_col(text, self.span.start);
        ConfigError::At {
            origin: origin.to_owned(),
            line,
            column,
            message: self.message,
        }
    }
}

pub(crate) fn invalid<T>(span: Range<usize>, message: impl fmt::Display) -> Result<T, Invalid> {
    Err(Invalid {
        span,
        message: message.to_string(),
    })
}

fn build(raw: RawConfig) -> Result<Config, Invalid> {
    if raw.listener.is_empty() {
        return invalid(
            0..0,
            "no [[listener]]: add one, e.g. `bind = \"0.0.0.0:8080\"`",
        );
    }
    let mut listeners = Vec::with_capacity(raw.listener.len());
    let mut binds = HashSet::new();
    for l in raw.listener {
        let span = l.bind.span();
        let listener = build_listener(l)?;
        if !binds.insert(listener.bind) {
            let why = if listener.bind.port() == 0 {
                // A listener is known by its `bind` (reloads keep or close it by that).
                format!(
                    "listener {} is defined twice: two traffic listeners on port 0 cannot be told apart; give all but one a fixed port",
                    listener.bind
                )
            } else {
                format!("listener {} is defined twice", listener.bind)
            };
            return invalid(span, why);
        }
        if let Some(other) = listeners
            .iter()
            .find(|o: &&ListenerConfig| clash(o.bind, listener.bind))
        {
            return invalid(
                span,
                format!(
                    "listener {} cannot be bound beside listener {}: a wildcard address takes the port on every address it covers; use one of them",
                    listener.bind, other.bind
                ),
            );
        }
        listeners.push(listener);
    }

    let mut upstreams = Vec::with_capacity(raw.upstream.len());
    for (name, u) in raw.upstream {
        upstreams.push(build_upstream(name, u)?);
    }

    let mut routes = Vec::with_capacity(raw.route.len());
    let mut seen = HashSet::new();
    for r in raw.route {
        let span = r.path.span();
        for route in build_routes(r, &upstreams)? {
            if !seen.insert((route.host.clone(), route.path.clone())) {
                let host = route
                    .host
                    .as_ref()
                    .map_or("any host".to_owned(), |h| h.to_string());
                return invalid(
                    span,
                    format!("path `{}` on {host} is routed twice", route.path),
                );
            }
            routes.push(route);
        }
    }

    let admin = match raw.admin {
        None => None,
        Some(a) => Some(build_admin(a, &listeners)?),
    };
    let log_json = match raw.log.and_then(|l| l.format) {
        None => false,
        Some(f) => match f.get_ref().as_str() {
            "text" => false,
            "json" => true,
            _ => return invalid(f.span(), "`format` is \"text\" or \"json\""),
        },
    };
    let workers = match &raw.workers {
        None => None,
        Some(w) if *w.get_ref() == 0 => None,
        Some(w) => match usize::try_from(*w.get_ref()) {
            Ok(n) if n <= 1024 => Some(n),
            _ => return invalid(w.span(), "`workers` is 1..=1024, or 0 for one per core"),
        },
    };
    let max_connections = match &raw.max_connections {
        None => None,
        Some(m) if *m.get_ref() == 0 => None,
        Some(m) => match usize::try_from(*m.get_ref()) {
            Ok(n) => Some(n),
            _ => {
                return invalid(
                    m.span(),
                    "`max_connections` is a count of connections, or 0 for what the open-file limit allows",
                );
            }
        },
    };
    Ok(Config {
        listeners,
        routes,
        upstreams,
        drain_timeout: duration_or(raw.drain_timeout, DEFAULT_DRAIN_TIMEOUT)?,
        removal_grace: duration_or(raw.removal_grace, DEFAULT_REMOVAL_GRACE)?,
        admin,
        log_json,
        workers,
        max_connections,
    })
}

/// Two different addresses that cannot both be bound: the same port, one a wildcard
/// that covers the other (`0.0.0.0` covers IPv4; `[::]` covers both, as Linux binds it
/// dual-stack by default).
fn clash(a: SocketAddr, b: SocketAddr) -> bool {
    let covers =
        |w: SocketAddr, x: SocketAddr| w.ip().is_unspecified() && (w.is_ipv6() || x.is_ipv4());
    a != b && a.port() == b.port() && a.port() != 0 && (covers(a, b) || covers(b, a))
}

fn build_admin(
    a: Spanned<raw::RawAdmin>,
    listeners: &[ListenerConfig],
) -> Result<AdminConfig, Invalid> {
    let table = a.span();
    let a = a.into_inner();
    let bind = match &a.bind {
        None => DEFAULT_ADMIN_BIND,
        Some(b) => match b.get_ref().parse::<SocketAddr>() {
            Ok(addr) => addr,
            Err(_) => return invalid(b.span(), "`bind` must be IP:port, e.g. \"127.0.0.1:9090\""),
        },
    };
    // Port 0 asks for any free port: the admin listener gets its own.
    let shared = bind.port() != 0
        && listeners
            .iter()
            .any(|l| l.bind == bind || clash(l.bind, bind));
    if shared {
        // The default address has no `bind` to point at: point at the table.
        let (span, whose) = match &a.bind {
            Some(b) => (b.span(), "the admin listener".to_owned()),
            None => (
                table,
                format!("the admin listener's default address {DEFAULT_ADMIN_BIND}"),
            ),
        };
        return invalid(
            span,
            format!(
                "{whose} cannot share a traffic listener's address (nor its port, where either is a wildcard address); choose another [admin] bind"
            ),
        );
    }
    let token = a.token.as_ref().map(|t| t.get_ref().clone());
    if let Some(t) = &a.token {
        if t.get_ref().len() < 16 {
            return invalid(t.span(), "an admin `token` needs at least 16 characters");
        }
        // A header value cannot carry it otherwise (spaces are trimmed, controls refused).
        if !t.get_ref().bytes().all(|b| b.is_ascii_graphic()) {
            return invalid(
                t.span(),
                "an admin `token` takes visible ASCII characters only (no spaces)",
            );
        }
    }
    if token.is_none() && !bind.ip().is_loopback() {
        let span = a.bind.as_ref().map_or(0..0, |b| b.span());
        return invalid(
            span,
            "an admin listener on a non-loopback address needs a `token`",
        );
    }
    Ok(AdminConfig { bind, token })
}

fn build_listener(l: RawListener) -> Result<ListenerConfig, Invalid> {
    let bind = match l.bind.get_ref().parse::<SocketAddr>() {
        Ok(a) => a,
        Err(_) => {
            return invalid(
                l.bind.span(),
                "`bind` must be IP:port, e.g. \"0.0.0.0:8080\"",
            );
        }
    };
    let mut trusted_proxies = Vec::with_capacity(l.trusted_proxies.len());
    for p in &l.trusted_proxies {
        let net = p
            .get_ref()
            .parse::<IpNet>()
            .or_else(|_| p.get_ref().parse::<IpAddr>().map(IpNet::from));
        match net {
            Ok(n) => trusted_proxies.push(n),
            Err(_) => {
                return invalid(
                    p.span(),
                    "a trusted proxy is an address or CIDR, e.g. \"10.0.0.0/8\"",
                );
            }
        }
    }
    let max_header_bytes = match l.max_header_bytes {
        None => DEFAULT_MAX_HEADER_BYTES,
        Some(n) => match usize::try_from(*n.get_ref()) {
            Ok(v) if (1024..=1024 * 1024).contains(&v) => v,
            _ => {
                return invalid(
                    n.span(),
                    "`max_header_bytes` must be between 1024 and 1048576",
                );
            }
        },
    };
    let redirect_https = match &l.redirect_https {
        None => None,
        Some(v) => match v.get_ref() {
            toml::Value::Boolean(false) => None,
            toml::Value::Boolean(true) => Some(443),
            toml::Value::Integer(p) if (1..=65535).contains(p) => Some(*p as u16),
            _ => {
                return invalid(
                    v.span(),
                    "`redirect_https` is true (port 443) or an https port",
                );
            }
        },
    };
    if let (Some(_), Some(v)) = (&l.tls, &l.redirect_https)
        && redirect_https.is_some()
    {
        return invalid(
            v.span(),
            "`redirect_https` belongs on a plain listener, not a TLS one",
        );
    }
    Ok(ListenerConfig {
        bind,
        trusted_proxies,
        max_header_bytes,
        header_timeout: duration_or(l.header_timeout, DEFAULT_HEADER_TIMEOUT)?,
        body_timeout: duration_or(l.body_timeout, DEFAULT_BODY_TIMEOUT)?,
        send_timeout: duration_or(l.send_timeout, DEFAULT_SEND_TIMEOUT)?,
        redirect_https,
        tls: l.tls.map(tls::build_tls).transpose()?,
    })
}

pub(crate) fn duration_or(
    v: Option<Spanned<String>>,
    default: Duration,
) -> Result<Duration, Invalid> {
    v.as_ref().map_or(Ok(default), duration)
}

pub(crate) fn duration(v: &Spanned<String>) -> Result<Duration, Invalid> {
    let text = v.get_ref();
    match parse_duration(text) {
        Some(d) if d.is_zero() => invalid(v.span(), "a duration must be more than 0"),
        Some(d) => Ok(d),
        // Well formed, but more milliseconds than 64 bits hold.
        None if text.starts_with(|c: char| c.is_ascii_digit())
            && parse_duration(&format!(
                "0{}",
                text.trim_start_matches(|c: char| c.is_ascii_digit())
            ))
            .is_some() =>
        {
            invalid(v.span(), "this duration is too long")
        }
        None => invalid(
            v.span(),
            "a duration is a whole number with a unit: \"500ms\", \"10s\", \"5m\", \"1h\"",
        ),
    }
}

/// `"250ms"`, `"10s"`, `"5m"`, `"1h"`; whole numbers only.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    let ms = match unit {
        "ms" => n,
        "s" => n.checked_mul(1000)?,
        "m" => n.checked_mul(60_000)?,
        "h" => n.checked_mul(3_600_000)?,
        _ => return None,
    };
    Some(Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[[listener]]
bind = "127.0.0.1:8080"

[[route]]
path = "/"
host = "chat.example.com"
upstream = "app"
principal = ["cookie:JSESSIONID", "header:X-User-Id", "query:userId", "path:3"]
fallback = "ip"

[upstream.app]
backends = ["127.0.0.1:9001", "127.0.0.1:9002", { addr = "127.0.0.1:9003", name = "c", weight = 2 }]
"#;

    fn error(text: &str) -> String {
        Config::parse(text, "t.toml").unwrap_err().to_string()
    }

    #[test]
    fn accepts_the_documented_shape() {
        let c = Config::parse(GOOD, "t.toml").unwrap();
        assert_eq!(c.listeners[0].bind, "127.0.0.1:8080".parse().unwrap());
        let r = &c.routes[0];
        assert_eq!(r.principal.len(), 4);
        assert_eq!(r.fallback, Fallback::Ip);
        assert_eq!(r.idle_timeout, Some(DEFAULT_IDLE_TIMEOUT));
        // The documented promise: a once-a-minute heartbeat is never idle-killed.
        assert!(DEFAULT_IDLE_TIMEOUT >= Duration::from_secs(120));
        let b = &c.upstreams[r.upstream].backends;
        assert_eq!(b[0].id, "127.0.0.1:9001");
        assert_eq!((b[2].id.as_str(), b[2].weight), ("c", 2));
    }

    #[test]
    fn unknown_key_names_position_and_key() {
        let e = error("[[listener]]\nbind = \"127.0.0.1:1\"\nbnid = 3\n");
        assert!(e.starts_with("t.toml:3:1: "), "{e}");
        assert!(e.contains("bnid"), "{e}");
    }

    #[test]
    fn unknown_backend_key_is_reported_not_swallowed() {
        let text = GOOD.replace("weight = 2", "wieght = 2");
        let e = error(&text);
        assert!(e.contains("wieght"), "{e}");
        assert!(e.starts_with("t.toml:13:"), "{e}");
    }

    #[test]
    fn unknown_upstream_points_at_the_value() {
        let e = error(&GOOD.replace("upstream = \"app\"", "upstream = \"ap\""));
        assert_eq!(e, "t.toml:8:12: unknown upstream `ap`; defined: app");
    }

    #[test]
    fn the_admin_listener_may_ask_for_port_0_beside_a_traffic_listener() {
        let text = GOOD.replace("127.0.0.1:8080", "127.0.0.1:0");
        let c = Config::parse(
            &format!("{text}\n[admin]\nbind = \"127.0.0.1:0\"\n"),
            "t.toml",
        );
        assert!(c.is_ok(), "{:?}", c.err());
        let fixed = format!("{GOOD}\n[admin]\nbind = \"127.0.0.1:8080\"\n");
        assert!(error(&fixed).contains("cannot share"));
        let twice = format!("{text}\n[[listener]]\nbind = \"127.0.0.1:0\"\n");
        assert!(error(&twice).contains("give all but one a fixed port"));
    }

    #[test]
    fn syntax_error_has_position() {
        let e = error("[[listener]\nbind = 1\n");
        assert!(e.starts_with("t.toml:1:"), "{e}");
    }

    #[test]
    fn bad_values_are_explained() {
        let cases = [
            (
                "bind = \"127.0.0.1:8080\"",
                "bind = \"localhost\"",
                "IP:port",
            ),
            ("path = \"/\"", "path = \"api\"", "starting with '/'"),
            ("path = \"/\"", "path = \"/a?b\"", "no '?'"),
            ("path = \"/\"", "path = \"/a b\"", "no '?'"),
            ("path = \"/\"", "path = \"/a#b\"", "no '?'"),
            ("path = \"/\"", "path = \"/ü/\"", "\"/%C3%BC/\""),
            ("\"path:3\"", "\"path:0\"", "path:N"),
            ("\"query:userId\"", "\"body:x\"", "cookie:NAME"),
            ("fallback = \"ip\"", "fallback = \"random\"", "\"reject\""),
            ("weight = 2", "weight = 0", "weight"),
            (
                "fallback = \"ip\"",
                "fallback = \"ip\"\nidle_timeout = \"99999999999999999999h\"",
                "too long",
            ),
            (
                "fallback = \"ip\"",
                "fallback = \"ip\"\nidle_timeout = \"10 s\"",
                "whole number with a unit",
            ),
            (
                "fallback = \"ip\"",
                "fallback = \"ip\"\nidle_timeout = \"h\"",
                "whole number with a unit",
            ),
            ("\"127.0.0.1:9002\"", "\"127.0.0.1\"", "needs a port"),
            ("\"127.0.0.1:9002\"", "\"127.0.0.1:9001\"", "used twice"),
            (
                "\"127.0.0.1:9002\"",
                "{ addr = \"127.0.0.1:9002\", name = \"c\" }",
                "backend name `c` is used twice in this upstream",
            ),
            (
                "host = \"chat.example.com\"",
                "host = \"a.*.com\"",
                "*.example.com",
            ),
        ];
        for (from, to, expect) in cases {
            let e = error(&GOOD.replace(from, to));
            assert!(e.contains(expect), "{to}: {e}");
            assert!(e.starts_with("t.toml:"), "{e}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("10s"), Some(Duration::from_secs(10)));
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        for bad in [
            "",
            "10",
            "s",
            "1.5s",
            "-1s",
            "10 s",
            "99999999999999999999h",
        ] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
        let off = GOOD.replace(
            "fallback = \"ip\"",
            "fallback = \"ip\"\nidle_timeout = \"off\"",
        );
        assert_eq!(
            Config::parse(&off, "t").unwrap().routes[0].idle_timeout,
            None
        );
    }

    #[test]
    fn a_route_may_list_host_names() {
        let with = |host: &str| GOOD.replace("host = \"chat.example.com\"", host);
        let c =
            Config::parse(&with(r#"host = ["a.example.com", "*.b.example.com"]"#), "t").unwrap();
        let hosts: Vec<String> = c
            .routes
            .iter()
            .map(|r| r.host.as_ref().unwrap().to_string())
            .collect();
        assert_eq!(hosts, ["a.example.com", "*.b.example.com"]);
        assert!(
            c.routes
                .iter()
                .all(|r| r.path == "/" && r.principal.len() == 4)
        );
        let e = error(&with("host = []"));
        assert!(
            e.contains("t.toml:7:8") && e.contains("leave `host` out"),
            "{e}"
        );
        let e = error(&with(r#"host = ["ok.example.com", "a b"]"#));
        assert!(e.contains("`a b`"), "{e}");
        let e = error(&with("host = 1"));
        assert!(e.contains("a host name or a list of them"), "{e}");
        let e = error(&with(r#"host = ["a.example.com", "a.example.com"]"#));
        assert!(
            e.contains("path `/` on a.example.com is routed twice"),
            "{e}"
        );
        let e = error(&with(r#"host = "_""#));
        assert!(
            e.contains("leave `host` out") && !e.contains("`_`: `_`"),
            "{e}"
        );
        let e = error(&with("host = \"\""));
        assert!(e.contains("an empty host name"), "{e}");
        let fqdn = Config::parse(&with(r#"host = "a.example.com.""#), "t").unwrap();
        assert_eq!(
            fqdn.routes[0].host.as_ref().unwrap().to_string(),
            "a.example.com"
        );
    }

    #[test]
    fn type_mistakes_say_what_to_write() {
        let cases = [
            (
                "[route]\npath = \"/\"\n",
                "3:1",
                "write `[[route]]` for each entry",
            ),
            (
                "[[upstream]]\nbackends = []\n",
                "3:1",
                "write `[upstream.NAME]`",
            ),
            (
                "[upstream.a]\nbackends = [\"127.0.0.1:1\"]\nconnect_timeout = 5\n",
                "5:19",
                "durations with a unit like \"5s\"",
            ),
            (
                "[upstream.a]\nbackends = [\"127.0.0.1:1\"]\n[upstream.a.health]\nrise = \"2\"\n",
                "6:8",
                "without quotes",
            ),
        ];
        for (tail, at, hint) in cases {
            let e = error(&format!("[[listener]]\nbind = \"127.0.0.1:1\"\n{tail}"));
            assert!(
                e.starts_with(&format!("t.toml:{at}: ")) && e.contains(hint),
                "{e}"
            );
        }
        let e = error(&format!(
            "{GOOD}[[route]]\npath = \"/x\"\nupstream = \"app\"\nprincipal = \"path:2\"\n"
        ));
        assert!(e.contains("write a list") && !e.contains("number"), "{e}");
        let e = error(&format!(
            "{GOOD}[[route]]\npath = \"/x\"\nupstream = \"app\"\nfollow_socket = \"yes\"\n"
        ));
        assert!(e.contains("write true or false"), "{e}");
        // Inline tables, list headers and repeated headers get their own words.
        let e = error(&GOOD.replace(
            "backends = [",
            "backends = { addr = \"127.0.0.1:1\" }\nx = [",
        ));
        assert!(e.ends_with("write a list: [\"...\", \"...\"]"), "{e}");
        let e = error(&GOOD.replace("[upstream.app]", "[[upstream.app]]"));
        assert!(e.contains("write `[upstream.app]`"), "{e}");
        let e = error(&GOOD.replace(
            "[[listener]]",
            "[listener]\nbind = \"127.0.0.1:2\"\n[[listener]]",
        ));
        assert!(e.contains("`listener` is defined twice"), "{e}");
        let e = error("[[listener]]\nbind = \"127.0.0.1:1\"\nbind = \"127.0.0.1:2\"\n");
        assert!(e.contains("`bind` is set twice"), "{e}");
    }

    #[test]
    fn backend_and_idle_mistakes_say_what_to_write() {
        let e = error(&GOOD.replace("\"127.0.0.1:9001\"", "\"http://127.0.0.1:9001\""));
        assert!(e.contains("without a scheme"), "{e}");
        let e = error(&GOOD.replace("\"127.0.0.1:9001\"", "\"127.0.0.1:9001 weight=2\""));
        assert!(e.contains("{ addr = "), "{e}");
        let e = error(&GOOD.replace("\"127.0.0.1:9001\"", "\"127.0.0.1:9001 \""));
        assert!(e.contains("remove the spaces"), "{e}");
        let e = error(&GOOD.replace(
            "fallback = \"ip\"",
            "fallback = \"ip\"\nidle_timeout = \"0s\"",
        ));
        assert!(e.contains("or \"off\" for no idle timeout"), "{e}");
    }

    #[test]
    fn a_cookie_fallback_needs_a_cookie_it_can_set() {
        let with = |principal: &str| {
            GOOD.replace(
                "principal = [\"cookie:JSESSIONID\", \"header:X-User-Id\", \"query:userId\", \"path:3\"]\nfallback = \"ip\"",
                &format!("principal = {principal}\nfallback = \"cookie\""),
            )
        };
        let c = Config::parse(&with(r#"["path:3", "cookie:tid"]"#), "t.toml").unwrap();
        assert_eq!(c.routes[0].fallback, Fallback::Cookie);
        let e = error(&with(r#"["path:3"]"#));
        assert!(e.contains("t.toml:10:12") && e.contains("add one"), "{e}");
        let e = error(&with(r#"["cookie:a;b"]"#));
        assert!(e.contains("cannot be set as a cookie name"), "{e}");
        let e = error(&with(r#"["cookie:JSESSIONID"]"#));
        assert!(e.contains("the app's session cookie"), "{e}");
    }

    #[test]
    fn listeners_that_cannot_both_bind_are_an_error() {
        let two = |a: &str, b: &str| {
            Config::parse(
                &format!("[[listener]]\nbind = \"{a}\"\n[[listener]]\nbind = \"{b}\"\n"),
                "t.toml",
            )
            .map_err(|e| e.to_string())
        };
        for (a, b) in [
            ("127.0.0.1:9000", "0.0.0.0:9000"),
            ("0.0.0.0:9000", "127.0.0.1:9000"),
            ("[::]:9000", "127.0.0.1:9000"),
            ("[::1]:9000", "[::]:9000"),
            ("0.0.0.0:9000", "[::]:9000"),
        ] {
            let e = two(a, b).unwrap_err();
            assert!(
                e.contains("t.toml:4:8") && e.contains("wildcard"),
                "{a} {b}: {e}"
            );
        }
        for (a, b) in [
            ("127.0.0.1:9000", "127.0.0.2:9000"),
            ("0.0.0.0:9000", "[::1]:9000"),
            ("0.0.0.0:9000", "0.0.0.0:9001"),
            ("127.0.0.1:0", "0.0.0.0:0"),
        ] {
            assert!(two(a, b).is_ok(), "{a} {b}");
        }
        let admin = Config::parse(
            "[[listener]]\nbind = \"0.0.0.0:9000\"\n[admin]\nbind = \"127.0.0.1:9000\"\n",
            "t.toml",
        );
        assert!(admin.unwrap_err().to_string().contains("cannot share"));
        // The default admin address too, pointed at by its table.
        let default = Config::parse("[[listener]]\nbind = \"0.0.0.0:9090\"\n[admin]\n", "t.toml");
        let e = default.unwrap_err().to_string();
        assert!(
            e.starts_with("t.toml:3:1: the admin listener's default address"),
            "{e}"
        );
    }

    #[test]
    fn admin_needs_a_token_off_loopback() {
        let admin = |t: &str| Config::parse(&format!("{GOOD}\n[admin]\n{t}\n"), "t.toml");
        assert_eq!(admin("").unwrap().admin.unwrap().bind, DEFAULT_ADMIN_BIND);
        let e = admin("bind = \"0.0.0.0:9090\"").unwrap_err().to_string();
        assert!(e.contains("needs a `token`"), "{e}");
        let ok = admin("bind = \"0.0.0.0:9090\"\ntoken = \"0123456789abcdef\"").unwrap();
        assert_eq!(ok.admin.unwrap().token.as_deref(), Some("0123456789abcdef"));
        assert!(
            admin("token = \"                \"")
                .unwrap_err()
                .to_string()
                .contains("visible ASCII")
        );
        assert!(
            admin("token = \"short\"")
                .unwrap_err()
                .to_string()
                .contains("16 characters")
        );
        assert!(
            admin("bind = \"127.0.0.1:8080\"")
                .unwrap_err()
                .to_string()
                .contains("share")
        );
        let json = Config::parse(&format!("{GOOD}\n[log]\nformat = \"json\"\n"), "t").unwrap();
        assert!(json.log_json);
    }

    #[test]
    fn no_listener_is_an_error() {
        assert!(error("").contains("no [[listener]]"));
    }
}
