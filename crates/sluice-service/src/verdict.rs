//! What the service answers: an admission to forward (and settle later) or a rejection, rendered
//! in the policy's envelope, to send back as it is.

use http::{HeaderName, HeaderValue, StatusCode};
use sluice_contract::ErrorCode;
use sluice_core::{CounterKey, Limit, Timestamp};

/// Response headers, in order.
pub type HeaderList = Vec<(HeaderName, HeaderValue)>;

/// The outcome of [`crate::Service::check`].
#[derive(Debug)]
pub enum Verdict {
    /// Forward the request; add `headers` to the response; then call
    /// [`crate::Service::finish`].
    Admit(Admission),
    /// Answer with this error.
    Reject(Rejection),
}

/// An admitted request: the headers its response carries, and what to settle when it is done.
#[derive(Debug, Default)]
pub struct Admission {
    /// Rate-limit headers for the response.
    pub headers: HeaderList,
    pub(crate) settle: Vec<Settle>,
    pub(crate) acquired_at: Timestamp,
    /// Counted on this instance's local counters (the store was down), and settled there.
    pub(crate) local: bool,
}

impl Admission {
    /// Whether [`Service::finish`](crate::Service::finish) has anything to give back for this
    /// request: a concurrency slot, or a quota that counts only successful calls.
    pub fn needs_settling(&self) -> bool {
        !self.settle.is_empty()
    }
}

/// One count to give back when the request is done.
#[derive(Debug)]
pub(crate) struct Settle {
    pub(crate) key: CounterKey,
    pub(crate) limit: Limit,
    pub(crate) cost: u64,
    /// Released whatever the outcome (a concurrency slot); otherwise only when the upstream did
    /// not succeed (a quota that counts successful calls).
    pub(crate) always: bool,
}

/// A refused request, rendered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// Why.
    pub code: ErrorCode,
    /// The status line's code.
    pub status: StatusCode,
    /// Rate-limit headers (and `Retry-After`).
    pub headers: HeaderList,
    /// The body's `Content-Type`.
    pub content_type: &'static str,
    /// The body, in the policy's envelope.
    pub body: Vec<u8>,
}
