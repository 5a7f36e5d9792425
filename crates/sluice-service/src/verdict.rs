//! What the service answers: an admission to forward (and settle later) or a rejection, rendered
//! in the policy's envelope, to send back as it is.

use http::{HeaderName, HeaderValue, StatusCode};
use sluice_contract::ErrorCode;
use std::time::Duration;

use sluice_core::{Algorithm, CounterKey, Limit, Period, Timestamp};

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
    /// The limits in shadow mode that would have refused the request, by name (for the
    /// request's log line); `None` nearly always.
    pub shadowed: Option<Box<[String]>>,
    pub(crate) settle: Vec<Settle>,
    pub(crate) acquired_at: Timestamp,
    /// When its concurrency slots were taken, or last renewed ([`crate::Service::renew`]): the
    /// period a release gives them back by.
    pub(crate) held_at: Timestamp,
    /// Counted on this instance's local counters (the store was down), and settled there.
    pub(crate) local: bool,
}

impl Admission {
    /// Whether [`Service::finish`](crate::Service::finish) has anything to give back for this
    /// request: a concurrency slot, or a quota that counts only successful calls.
    pub fn needs_settling(&self) -> bool {
        !self.settle.is_empty()
    }

    /// How often [`Service::renew`](crate::Service::renew) should keep this admission's
    /// concurrency slots held, for as long as its request lasts: half the shortest lease among
    /// them, so that a renewal late by up to half a lease still lands in time. `None` when it
    /// holds no slot.
    pub fn renew_every(&self) -> Option<Duration> {
        self.settle
            .iter()
            .filter_map(
                |settle| match (settle.limit.algorithm(), settle.limit.period()) {
                    (Algorithm::Concurrency, Period::Span(lease)) => Some(*lease),
                    _ => None,
                },
            )
            .min()
            .map(|lease| Duration::from_nanos(lease / 2).max(Duration::from_millis(1)))
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
