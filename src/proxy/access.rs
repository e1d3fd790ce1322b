//! The access log of plain requests and upgrades: one `tether::access` event per
//! request, written when its response body has been sent, so `duration_ms` and
//! `bytes_down` cover the whole response, as nginx's `$request_time` and
//! `$body_bytes_sent` do; `bytes_up` counts the request body as it arrived, not as
//! `Content-Length` announced it. A client that leaves mid-body gets `aborted=true` (a
//! backend that breaks off mid-body, `aborted=true backend_failed=true`); one that
//! leaves before the response head gets status 499, as in nginx (499s are not in
//! `tether_http_requests_total`, which counts answers). Never the path or the query
//! (they may hold the principal): the route label and the principal's fingerprint.
//! Answers hyper gives before a request reaches tether — 400 for a malformed request,
//! 431 for oversized HTTP/1.1 headers, a connection closed at the header timeout —
//! have no event.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use hyper::body::{Body as HttpBody, Frame, SizeHint};
use hyper::{Method, StatusCode};
use tokio::time::Instant;
use tracing::{info, warn};

use super::Body;
use crate::principal::Fingerprint;

/// What the access log and the request metrics learn about a request as it goes.
#[derive(Debug, Default)]
pub(crate) struct Access {
    pub route: Option<Arc<str>>,
    pub backend: Option<Arc<str>>,
    pub principal: Option<Fingerprint>,
    /// The request asks for a WebSocket, this way.
    pub websocket: Option<super::websocket::Flavor>,
    /// Set once the upgrade was tried on a backend: `tether_upgrades_total`'s result.
    pub upgrade_result: Option<&'static str>,
    /// The request body's byte count once it is being forwarded (what arrived, not
    /// what `Content-Length` announced).
    pub bytes_up: Option<Arc<AtomicU64>>,
}

/// What the event needs from the request itself.
#[derive(Debug)]
struct Meta {
    method: Method,
    started: Instant,
}

/// nginx's status for a request whose client left before the response head.
const CLIENT_CLOSED: u16 = 499;

/// A request being handled. Dropped before [`Pending::answered`] (the client went
/// away and the handler with it), it writes the event with status 499.
#[derive(Debug)]
pub(crate) struct Pending {
    pub access: Access,
    /// `None` when the access log is off: then nothing is kept or written.
    meta: Option<Meta>,
}

impl Pending {
    pub fn new(method: &Method, started: Instant) -> Pending {
        let on = tracing::enabled!(target: "tether::access", tracing::Level::INFO);
        Pending {
            access: Access::default(),
            meta: on.then(|| Meta {
                method: method.clone(),
                started,
            }),
        }
    }

    /// The response head is ready: the event now waits for the body, `inner`.
    pub fn answered(mut self, status: StatusCode, inner: Body) -> Logged {
        let record = self.meta.take().map(|meta| {
            // Boxed: the body sits inline in the connection's dispatcher.
            Box::new(Record {
                access: std::mem::take(&mut self.access),
                meta,
                status,
            })
        });
        Logged {
            inner,
            sent: 0,
            complete: false,
            record,
            cut: false,
            failed: false,
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(meta) = self.meta.take() {
            write(&self.access, &meta, CLIENT_CLOSED, 0, None);
        }
    }
}

#[derive(Debug)]
struct Record {
    access: Access,
    meta: Meta,
    status: StatusCode,
}

/// The response body as the client receives it: [`Body`], counted, with the access
/// event written when it is dropped (sent, or abandoned by the client).
#[derive(Debug)]
pub struct Logged {
    inner: Body,
    sent: u64,
    complete: bool,
    record: Option<Box<Record>>,
    /// Cut by the HTTP/2 send timeout: aborted, however much was passed on.
    cut: bool,
    /// The body failed on the backend's side (reset, closed early, silent past
    /// `response_timeout`): aborted, and the backend's doing.
    failed: bool,
}

impl crate::stream_timeout::Cut for Logged {
    fn cut(&mut self, unsent: usize) {
        self.cut = true;
        self.sent = self.sent.saturating_sub(unsent as u64);
    }
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
            Poll::Ready(Some(Err(e))) => {
                self.failed = true;
                // The backend's failure is the operator's business, as before the head.
                let r = self.record.as_deref();
                warn!(
                    route = r.and_then(|r| r.access.route.as_deref()),
                    backend = r.and_then(|r| r.access.backend.as_deref()),
                    error = %e,
                    "the backend's answer failed mid-body; the client's is cut short"
                );
            }
            Poll::Pending => {}
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
        // A HEAD response has no body to send: hyper drops it unpolled.
        let complete = !self.cut
            && (self.complete || self.inner.is_end_stream() || r.meta.method == Method::HEAD);
        let cut = match (complete, self.failed) {
            (true, _) => None,
            (false, true) => Some(CutBy::Backend),
            (false, false) => Some(CutBy::Client),
        };
        write(&r.access, &r.meta, r.status.as_u16(), self.sent, cut);
    }
}

/// Why a response did not reach its end.
#[derive(Debug, Clone, Copy)]
enum CutBy {
    /// The client left, or stopped reading (`send_timeout`).
    Client,
    /// The backend's answer failed mid-body.
    Backend,
}

fn write(a: &Access, m: &Meta, status: u16, bytes_down: u64, cut: Option<CutBy>) {
    info!(
        target: "tether::access",
        kind = if a.websocket.is_some() { "upgrade" } else { "http" },
        method = %m.method,
        route = a.route.as_deref().unwrap_or("-"),
        backend = a.backend.as_deref().unwrap_or("-"),
        status,
        duration_ms = m.started.elapsed().as_millis() as u64,
        bytes_up = a.bytes_up.as_ref().map(|n| n.load(Ordering::Relaxed)),
        bytes_down,
        aborted = cut.is_some().then_some(true),
        backend_failed = matches!(cut, Some(CutBy::Backend)).then_some(true),
        principal = a.principal.map(tracing::field::display),
        "request"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream_timeout::Cut;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Either, Full};
    use std::sync::Mutex;

    /// The access events written while `f` runs, as text.
    fn logged(f: impl FnOnce()) -> String {
        let out = Arc::new(Mutex::new(Vec::new()));
        let sink = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || Sink(sink.clone()))
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        String::from_utf8(out.lock().unwrap().clone()).unwrap()
    }

    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_cut_answer_is_aborted_with_only_what_left_counted() {
        let event = logged(|| {
            let body = Either::Right(Full::new(Bytes::from(vec![0; 100])));
            let mut answer =
                Pending::new(&Method::GET, Instant::now()).answered(StatusCode::OK, body);
            // All of it passed on, but 40 bytes never left: the client was cut off.
            let frame = futures_util::FutureExt::now_or_never(answer.frame()).unwrap();
            assert_eq!(frame.unwrap().unwrap().into_data().unwrap().len(), 100);
            answer.cut(40);
        });
        assert!(event.contains("bytes_down=60"), "{event}");
        assert!(event.contains("aborted=true"), "{event}");
    }
}
