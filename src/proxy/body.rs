//! A request body that can be offered to several backends in turn.
//!
//! When the pooled client cannot connect to the owner it drops the request without
//! ever polling the body, and placement wants the same request sent to the next
//! backend. The incoming body therefore sits in a shared slot; each attempt gets a
//! [`RetryBody`] view, and the first view that is polled takes the body for good.
//! After a failed attempt, [`RetryBody::untouched`] says whether a retry is still
//! possible (nothing was read, so nothing went upstream).

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

/// See the module doc.
#[derive(Debug)]
pub enum RetryBody {
    /// No body at all (most requests): nothing to share.
    Empty,
    Shared {
        slot: Arc<Mutex<Option<Incoming>>>,
        taken: Option<Incoming>,
        hint: SizeHint,
    },
}

/// The error when a second attempt polls a body the first already consumed. Cannot
/// happen in the proxy (it retries only untouched bodies), but must not be a panic.
#[derive(Debug, thiserror::Error)]
#[error("request body already sent to another backend")]
pub struct BodyTaken;

impl RetryBody {
    pub fn new(body: Incoming) -> RetryBody {
        if body.is_end_stream() {
            return RetryBody::Empty;
        }
        let hint = body.size_hint();
        RetryBody::Shared {
            slot: Arc::new(Mutex::new(Some(body))),
            taken: None,
            hint,
        }
    }

    /// Another view of the same body, for the next attempt.
    pub fn again(&self) -> RetryBody {
        match self {
            RetryBody::Empty => RetryBody::Empty,
            RetryBody::Shared { slot, hint, .. } => RetryBody::Shared {
                slot: slot.clone(),
                taken: None,
                hint: *hint,
            },
        }
    }

    /// True if no attempt has read any of the body yet.
    pub fn untouched(&self) -> bool {
        match self {
            RetryBody::Empty => true,
            RetryBody::Shared { slot, .. } => {
                slot.lock().unwrap_or_else(|p| p.into_inner()).is_some()
            }
        }
    }
}

impl Body for RetryBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            RetryBody::Empty => Poll::Ready(None),
            RetryBody::Shared { slot, taken, .. } => {
                if taken.is_none() {
                    let body = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
                    match body {
                        Some(b) => *taken = Some(b),
                        None => return Poll::Ready(Some(Err(BodyTaken.into()))),
                    }
                }
                match taken {
                    Some(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
                    None => Poll::Ready(None),
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RetryBody::Empty => true,
            RetryBody::Shared { taken: Some(b), .. } => b.is_end_stream(),
            RetryBody::Shared { .. } => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RetryBody::Empty => SizeHint::with_exact(0),
            RetryBody::Shared { taken: Some(b), .. } => b.size_hint(),
            RetryBody::Shared { hint, .. } => *hint,
        }
    }
}
