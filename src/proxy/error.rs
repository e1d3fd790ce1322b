//! The one error type of the request path and the one function that decides what the
//! client sees for it: client faults are 4xx, a backend's failure 502 (504 when it did
//! not answer in time), a transfer coding tether cannot pass on 501.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::header::{CONNECTION, CONTENT_TYPE, HeaderValue};
use hyper::{Response, StatusCode};

use super::Body;
use super::body::BodyStalled;
use crate::config::human;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no route matches this host and path")]
    NoRoute,
    #[error("the request has no Host header")]
    MissingHost,
    #[error("the request has more than one Host header")]
    DuplicateHost,
    #[error("the Host header is not a valid host")]
    InvalidHost,
    #[error("the request body is malformed or was cut short: {0}")]
    ClientBody(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("the client sent no request body bytes for {}", human(*.0))]
    BodyStalled(Duration),
    #[error("max_connections ({0}) reached: no slot for another HTTP/2 stream; try again")]
    AtCapacity(usize),
    #[error("short of local resources to reach a backend: {0}")]
    LocalShortage(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("CONNECT is not supported: tether is a reverse proxy")]
    Connect,
    /// As nginx: a TRACE echoes the request, cookies and credentials included.
    #[error("TRACE is not allowed")]
    Trace,
    #[error(
        "a request target of the form host:port is for CONNECT alone, and `*` for OPTIONS alone"
    )]
    BadTarget,
    #[error("transfer codings other than a single `chunked` are not supported")]
    TransferCoding,
    #[error("the request has more than 100 header fields")]
    TooManyHeaders,
    #[error("this route places requests by {expected}; the request carries none")]
    NoPrincipal { expected: String },
    #[error("no backend of upstream `{upstream}` accepted a connection")]
    NoBackend { upstream: Arc<str> },
    #[error("backend `{backend}` failed: {source}")]
    Upstream {
        backend: Arc<str>,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("backend `{backend}` did not answer in time")]
    Timeout { backend: Arc<str> },
    #[error("backend `{backend}` took none of the request body for {} (response_timeout)", human(*.after))]
    NotReading { backend: Arc<str>, after: Duration },
    #[error("backend `{backend}` answered the upgrade {why}")]
    BadUpgrade {
        backend: Arc<str>,
        why: &'static str,
    },
}

impl ProxyError {
    /// The backend this failure is about, if it is about one.
    pub fn backend(&self) -> Option<&Arc<str>> {
        match self {
            ProxyError::Upstream { backend, .. }
            | ProxyError::Timeout { backend }
            | ProxyError::NotReading { backend, .. }
            | ProxyError::BadUpgrade { backend, .. } => Some(backend),
            _ => None,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            // As nginx answers a `client_body_timeout`.
            ProxyError::BodyStalled(_) => StatusCode::REQUEST_TIMEOUT,
            ProxyError::AtCapacity(_) | ProxyError::LocalShortage(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::MissingHost
            | ProxyError::DuplicateHost
            | ProxyError::InvalidHost
            | ProxyError::BadTarget
            | ProxyError::ClientBody(_)
            | ProxyError::NoPrincipal { .. } => StatusCode::BAD_REQUEST,
            ProxyError::Connect | ProxyError::Trace => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::TooManyHeaders => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::NoBackend { .. }
            | ProxyError::Upstream { .. }
            | ProxyError::BadUpgrade { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::Timeout { .. } | ProxyError::NotReading { .. } => {
                StatusCode::GATEWAY_TIMEOUT
            }
            ProxyError::TransferCoding => StatusCode::NOT_IMPLEMENTED,
        }
    }

    /// What the client receives: the status and a one-line plain-text reason. Client
    /// faults close the connection, since the client is misbehaving, and so does a
    /// body tether cannot pass on.
    pub fn response(&self) -> Response<Body> {
        let status = self.status();
        // With every cause: hyper's "client error (SendRequest)" alone reads like the
        // client's fault.
        let body = format!("tether: {}\n", chain(self));
        let mut resp = Response::new(Either::Right(Full::new(Bytes::from(body))));
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if status.is_client_error() && status != StatusCode::NOT_FOUND
            || matches!(self, ProxyError::TransferCoding)
        {
            h.insert(CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

/// `e` and the errors it wraps, outermost first.
fn causes<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(e), |e| e.source())
}

impl ProxyError {
    /// Reading the client's body failed: [`ProxyError::BodyStalled`] if it stalled,
    /// else [`ProxyError::ClientBody`].
    pub fn client_body(e: Box<dyn std::error::Error + Send + Sync>) -> ProxyError {
        let stalled = causes(&*e).find_map(|e| Some(e.downcast_ref::<BodyStalled>()?.0));
        match stalled {
            Some(after) => ProxyError::BodyStalled(after),
            None => ProxyError::ClientBody(e),
        }
    }
}

/// Whether `e`, or an error it wraps, is this host running short of something a
/// connection needs: a failure of tether's, not of the backend it was connecting to,
/// so it must not count against that backend's health (or a descriptor flood would
/// take every backend down). File descriptors and socket buffers always; source
/// ports (`EADDRNOTAVAIL`, about 28,000 connections to one address with Linux's
/// default port range) only when tether `holds` live connections to the backend,
/// since the same error is what an IPv6 backend gives on a host without IPv6, every
/// time, and that backend must go down.
pub fn local_shortage(e: &(dyn std::error::Error + 'static), holds: bool) -> bool {
    causes(e)
        .filter_map(|e| e.downcast_ref::<std::io::Error>()?.raw_os_error())
        .any(|errno| {
            matches!(errno, libc::EMFILE | libc::ENFILE | libc::ENOBUFS)
                || errno == libc::EADDRNOTAVAIL && holds
        })
}

/// An error and all its sources, `outer: inner: innermost`, for logs: hyper's
/// "client error (Connect)" alone does not say "connection refused".
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = String::new();
    for text in causes(e).map(ToString::to_string) {
        if out.is_empty() {
            out = text;
        } else if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_shortages_are_told_from_backend_failures() {
        use crate::upstream::ConnectError;
        let wrapped = |errno| ConnectError::from(std::io::Error::from_raw_os_error(errno));
        for errno in [libc::EMFILE, libc::ENFILE, libc::ENOBUFS] {
            assert!(local_shortage(&wrapped(errno), false), "{errno}");
        }
        // Out of source ports, with connections to the backend open, is local; with
        // none, EADDRNOTAVAIL is an address this host cannot reach: the backend's.
        assert!(local_shortage(&wrapped(libc::EADDRNOTAVAIL), true));
        for errno in [
            libc::ECONNREFUSED,
            libc::ETIMEDOUT,
            libc::EHOSTUNREACH,
            libc::EADDRNOTAVAIL,
        ] {
            assert!(!local_shortage(&wrapped(errno), false), "{errno}");
        }
    }

    #[test]
    fn chains_name_every_cause() {
        let inner =
            std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        let outer = ProxyError::Upstream {
            backend: "b".into(),
            source: Box::new(inner),
        };
        assert_eq!(chain(&outer), "backend `b` failed: connection refused");
        let e = ProxyError::ClientBody(Box::new(std::io::Error::other("cut short")));
        assert!(chain(&e).ends_with("cut short"));
    }

    #[test]
    fn statuses() {
        let io = || Box::new(std::io::Error::other("x"));
        let cases = [
            (ProxyError::NoRoute, 404),
            (ProxyError::MissingHost, 400),
            (ProxyError::DuplicateHost, 400),
            (ProxyError::InvalidHost, 400),
            (ProxyError::Connect, 405),
            (ProxyError::Trace, 405),
            (ProxyError::BadTarget, 400),
            (ProxyError::TransferCoding, 501),
            (ProxyError::TooManyHeaders, 431),
            (ProxyError::ClientBody(io()), 400),
            (
                ProxyError::client_body(Box::new(BodyStalled(Duration::from_secs(60)))),
                408,
            ),
            (ProxyError::AtCapacity(10), 503),
            (
                ProxyError::LocalShortage(Box::new(std::io::Error::from_raw_os_error(
                    libc::EMFILE,
                ))),
                503,
            ),
            (
                ProxyError::NoPrincipal {
                    expected: "cookie:S".into(),
                },
                400,
            ),
            (
                ProxyError::NoBackend {
                    upstream: "u".into(),
                },
                502,
            ),
            (
                ProxyError::Upstream {
                    backend: "b".into(),
                    source: io(),
                },
                502,
            ),
            (
                ProxyError::BadUpgrade {
                    backend: "b".into(),
                    why: "x",
                },
                502,
            ),
        ];
        for (e, code) in cases {
            assert_eq!(e.response().status().as_u16(), code, "{e}");
        }
    }
}
