//! The `[[route]]` tables: host names, path prefix, upstream, principal sources and
//! fallback, idle timeout, validated into [`RouteConfig`]s (one per host name).

use super::raw::RawRoute;
use super::{DEFAULT_IDLE_TIMEOUT, Invalid, RouteConfig, UpstreamConfig, duration, invalid};
use crate::principal::{Fallback, Source};
use crate::route::HostPattern;

/// The routes one `[[route]]` table makes: one per host name in `host` (one without a
/// host if it has none).
pub(super) fn build_routes(
    r: RawRoute,
    upstreams: &[UpstreamConfig],
) -> Result<Vec<RouteConfig>, Invalid> {
    let path = r.path.get_ref();
    if !path.starts_with('/') {
        return invalid(
            r.path.span(),
            "a route `path` is a prefix starting with '/'",
        );
    }
    // Matched against request paths as clients send them: a prefix no request path
    // can start with would route nothing, silently.
    // The http crate takes raw UTF-8 in a path, but hyper's request-line parser does
    // not, and clients percent-encode it: `/ü/` would match nothing.
    if !path.is_ascii()
        || !path
            .parse::<hyper::http::uri::PathAndQuery>()
            .is_ok_and(|pq| pq.query().is_none() && pq.path() == path)
    {
        return invalid(
            r.path.span(),
            "a route `path` holds only what a request path can (ASCII, no '?', '#', spaces, \
             control characters, '<', '>' or '`'): percent-encode the rest as clients send it \
             (\"/%C3%BC/\" for \"/ü/\")",
        );
    }
    // One route per host name, all alike but for the host.
    let hosts = match &r.host {
        None => vec![None],
        Some(h) if h.get_ref().0.is_empty() => {
            return invalid(
                h.span(),
                "an empty `host` list matches no request; leave `host` out to match every host",
            );
        }
        Some(h) => {
            let mut hosts = Vec::with_capacity(h.get_ref().0.len());
            for name in &h.get_ref().0 {
                match name.parse::<HostPattern>() {
                    Ok(p) => hosts.push(Some(p)),
                    Err(why) => return invalid(h.span(), format!("`{name}`: {why}")),
                }
            }
            hosts
        }
    };
    let Some(upstream) = upstreams
        .iter()
        .position(|u| &u.name == r.upstream.get_ref())
    else {
        let known: Vec<&str> = upstreams.iter().map(|u| u.name.as_str()).collect();
        return invalid(
            r.upstream.span(),
            format!(
                "unknown upstream `{}`; defined: {}",
                r.upstream.get_ref(),
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            ),
        );
    };
    let mut principal = Vec::with_capacity(r.principal.len());
    for p in &r.principal {
        match p.get_ref().parse::<Source>() {
            Ok(s) => principal.push(s),
            Err(why) => return invalid(p.span(), why),
        }
    }
    let fallback = match &r.fallback {
        None => Fallback::Ip,
        Some(f) => match f.get_ref().as_str() {
            "ip" => Fallback::Ip,
            "reject" => Fallback::Reject,
            "cookie" => {
                let Some(name) = principal.iter().find_map(Source::cookie) else {
                    return invalid(
                        f.span(),
                        "`fallback = \"cookie\"` sets the route's first `cookie:NAME` source; add one, e.g. principal = [\"cookie:TETHER\"]",
                    );
                };
                if APP_SESSION_COOKIES
                    .iter()
                    .any(|c| c.eq_ignore_ascii_case(name))
                {
                    return invalid(
                        f.span(),
                        format!(
                            "`{name}` is the app's session cookie: tether would overwrite it; give tether a cookie of its own, e.g. principal = [\"cookie:TETHER\"]"
                        ),
                    );
                }
                if !is_cookie_name(name) {
                    return invalid(
                        f.span(),
                        format!(
                            "`{name}` cannot be set as a cookie name (RFC 6265: letters, digits and !#$%&'*+-.^_`|~)"
                        ),
                    );
                }
                Fallback::Cookie
            }
            _ => {
                return invalid(f.span(), "`fallback` is \"ip\", \"reject\" or \"cookie\"");
            }
        },
    };
    let idle_timeout = match &r.idle_timeout {
        None => Some(DEFAULT_IDLE_TIMEOUT),
        Some(s) if s.get_ref() == "off" => None,
        Some(s) => Some(duration(s).map_err(|mut e| {
            e.message.push_str(", or \"off\" for no idle timeout");
            e
        })?),
    };
    let follow_socket = r.follow_socket.unwrap_or(false);
    let path = r.path.into_inner();
    Ok(hosts
        .into_iter()
        .map(|host| RouteConfig {
            host,
            path: path.clone(),
            upstream,
            principal: principal.clone(),
            fallback,
            idle_timeout,
            follow_socket,
        })
        .collect())
}

/// Session cookies that application frameworks set themselves (Java servlets, Spring
/// Session, PHP, Express, ASP.NET, Django, Rails, Laravel, CodeIgniter): never ones
/// for tether to issue. A guard against the common mistake, not a complete list.
const APP_SESSION_COOKIES: [&str; 9] = [
    "JSESSIONID",
    "SESSION",
    "PHPSESSID",
    "connect.sid",
    "ASP.NET_SessionId",
    "sessionid",
    "_session_id",
    "laravel_session",
    "ci_session",
];

/// An RFC 6265 cookie-name: an RFC 9110 token.
fn is_cookie_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}
