//! The access log of plain requests and upgrades: one `tether::access` event per
//! request, written when its response body has been sent (or the client went away),
//! so `duration_ms` and `bytes_down` cover the whole response, as nginx's
//! `$request_time` and `$bytes_sent` do. Never the path or the query (they may hold
//! the principal): the route label and the principal's fingerprint.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper::body::{Body as HttpBody, Frame, SizeHint};
use hyper::{Method, StatusCode};
use tokio::time::Instant;
use tracing::info;

use super::Body;
use crate::principal::Fingerprint;

/// What the access log and the request metrics learn about a request as it goes.
#[derive(Debug, Default)]
pub(crate) struct Access {
    pub route: Option<Arc<str>>,
    pub backend: Option<Arc<str>>,
    pub principal: Option<Fingerprint>,
    pub websocket: bool,
}

/// A finished request head, waiting for its response body to end.
#[derive(Debug)]
pub(crate) struct Record {
    pub access: Access,
    pub method: Method,
    pub status: StatusCode,
    pub bytes_up: Option<u64>,
    pub started: Instant,
}

/// The response body as the client receives it: [`Body`], counted, with the access
/// event written when it is dropped (sent, or abandoned by the client).
#[derive(Debug)]
pub struct Logged {
    inner: Body,
    sent: u64,
    complete: bool,
    record: Option<Box<Record>>,
}

impl Logged {
    /// `record` is `None` when the access log is off: then nothing is kept.
    pub(crate) fn new(inner: Body, record: Option<Record>) -> Logged {
        Logged {
            inner,
            sent: 0,
            complete: false,
            // Boxed: the body sits inline in the connection's dispatcher.
            record: record.map(Box::new),
        }
    }
}

/// Whether access events are wanted at all (`RUST_LOG` may turn them off).
pub(crate) fn enabled() -> bool {
    tracing::enabled!(target: "tether::access", tracing::Level::INFO)
}

impl HttpBody for Logged {
    type Data = <Body as HttpBody>::Data;
    type Error = <Body as HttpBody>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.sent += data.len() as u64;
                }
                self.complete = self.inner.is_end_stream();
            }
            Poll::Ready(None) => self.complete = true,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        let Some(r) = self.record.take() else { return };
        let complete = self.complete || self.inner.is_end_stream();
        let a = &r.access;
        info!(
            target: "tether::access",
            kind = if a.websocket { "upgrade" } else { "http" },
            method = %r.method,
            route = a.route.as_deref().unwrap_or("-"),
            backend = a.backend.as_deref().unwrap_or("-"),
            status = r.status.as_u16(),
            duration_ms = r.started.elapsed().as_millis() as u64,
            bytes_up = r.bytes_up,
            bytes_down = self.sent,
            aborted = (!complete).then_some(true),
            principal = a.principal.map(tracing::field::display),
            "request"
        );
    }
}
