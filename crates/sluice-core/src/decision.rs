//! A decision is a value: admitted or denied, and what every limit it touched looks like now.

use std::time::Duration;

use smallvec::SmallVec;

use crate::time::Timestamp;

/// When a denied request could be admitted, assuming no other traffic in between.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// Exactly this long from the decision's instant: one nanosecond earlier the request would
    /// still be denied.
    After(Duration),
    /// When requests in flight are released (a concurrency limit).
    OnRelease,
    /// Never: the request costs more than the limit can ever admit.
    Never,
}

impl Retry {
    /// The later of two retries: `Never` beats `OnRelease`, which beats any `After`.
    pub fn max(self, other: Retry) -> Retry {
        match (self, other) {
            (Retry::Never, _) | (_, Retry::Never) => Retry::Never,
            (Retry::OnRelease, _) | (_, Retry::OnRelease) => Retry::OnRelease,
            (Retry::After(a), Retry::After(b)) => Retry::After(a.max(b)),
        }
    }
}

/// `Option<Retry>` in one word, so a status is 32 bytes and a decision stays small enough to
/// return by value cheaply. `After` durations are whole nanoseconds below `SHADOWED`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RetryCode(u64);

impl RetryCode {
    const NONE: u64 = u64::MAX;
    const NEVER: u64 = u64::MAX - 1;
    const ON_RELEASE: u64 = u64::MAX - 2;
    /// No retry: the limit is in shadow mode and would have denied.
    const SHADOWED: u64 = u64::MAX - 3;

    pub(crate) fn new(retry: Option<Retry>) -> RetryCode {
        RetryCode(match retry {
            None => RetryCode::NONE,
            Some(Retry::Never) => RetryCode::NEVER,
            Some(Retry::OnRelease) => RetryCode::ON_RELEASE,
            Some(Retry::After(wait)) => u64::try_from(wait.as_nanos())
                .unwrap_or(u64::MAX)
                .min(RetryCode::SHADOWED.saturating_sub(1)),
        })
    }

    /// The code of a shadow limit that would have denied.
    pub(crate) const fn shadowed() -> RetryCode {
        RetryCode(RetryCode::SHADOWED)
    }

    fn get(self) -> Option<Retry> {
        match self.0 {
            RetryCode::NONE | RetryCode::SHADOWED => None,
            RetryCode::NEVER => Some(Retry::Never),
            RetryCode::ON_RELEASE => Some(Retry::OnRelease),
            nanos => Some(Retry::After(Duration::from_nanos(nanos))),
        }
    }
}

/// One limit, as the request left it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct LimitStatus {
    pub(crate) limit: u64,
    pub(crate) remaining: u64,
    pub(crate) reset: Timestamp,
    pub(crate) retry: RetryCode,
}

impl std::fmt::Debug for LimitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LimitStatus")
            .field("limit", &self.limit)
            .field("remaining", &self.remaining)
            .field("reset", &self.reset)
            .field("retry", &self.retry())
            .finish()
    }
}

impl LimitStatus {
    /// The limit's capacity per period (in flight, for a concurrency limit).
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Cost units a request could still spend now.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    /// The instant at which, without further traffic, `remaining` is back to the full limit.
    pub fn reset(&self) -> Timestamp {
        self.reset
    }

    /// `Some` when this limit stands between a denied request and its admission: when it would
    /// admit the same request again. Set on the limits that denied it, and on limits that count
    /// rejected requests once the attempt they just counted leaves them full.
    pub fn retry(&self) -> Option<Retry> {
        self.retry.get()
    }

    /// Whether this limit denied the request.
    pub fn denied(&self) -> bool {
        !matches!(self.retry.0, RetryCode::NONE | RetryCode::SHADOWED)
    }

    /// Whether this limit, in shadow mode, would have denied the request (the request was
    /// admitted or refused by the other limits alone).
    pub fn would_deny(&self) -> bool {
        self.retry.0 == RetryCode::SHADOWED
    }
}

/// The outcome of one request against all the limits it touches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub(crate) now: Timestamp,
    pub(crate) limits: SmallVec<[LimitStatus; 4]>,
    /// Invariant: `Some` exactly when some limit denied; indexes the one with the longest wait.
    pub(crate) denied_by: Option<usize>,
}

impl Decision {
    /// Whether every limit admitted the request.
    pub fn allowed(&self) -> bool {
        self.denied_by.is_none()
    }

    /// The instant the decision was made at; resets and retries count from it.
    pub fn now(&self) -> Timestamp {
        self.now
    }

    /// Every limit the request touched, in the order it named them.
    pub fn limits(&self) -> &[LimitStatus] {
        &self.limits
    }

    /// The index of the limit that decided a denial: the one with the longest wait.
    pub fn denied_by(&self) -> Option<usize> {
        self.denied_by
    }

    /// When a denied request could be admitted: the latest retry over every limit that denied.
    pub fn retry(&self) -> Option<Retry> {
        self.limits
            .iter()
            .filter_map(LimitStatus::retry)
            .reduce(Retry::max)
    }
}
