//! What a limit is: an algorithm, a capacity and a period, validated once so that the engine can
//! trust every number it computes with.

use std::fmt;
use std::time::Duration;

use crate::calendar::{MonthlyCycle, Window};
use crate::gcra::Cells;
use crate::time::{Timestamp, duration_to_nanos};

/// The largest capacity, burst or per-request cost a limit accepts (2^48, about 2.8 × 10^14).
///
/// The bound keeps every intermediate product of the engine inside a `u128`, which is what lets
/// the engine be exact without ever overflowing.
pub const MAX_CAPACITY: u64 = 1 << 48;

/// The shortest span a windowed limit accepts.
pub const MIN_SPAN: Duration = Duration::from_millis(1);

/// The longest span a limit accepts: 100 years of 365.25 days.
pub const MAX_SPAN: Duration = Duration::from_secs(100 * 31_557_600);

/// How a limit counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    /// A counter per window; windows are aligned on the clock (or the calendar) and the counter
    /// starts from zero in each.
    FixedWindow,
    /// Two adjacent fixed windows, the previous one weighted by how much of it still overlaps a
    /// sliding window ending now (the "two-window weighted counter").
    SlidingWindow,
    /// The generic cell rate algorithm: a token bucket of `burst` tokens refilled continuously at
    /// `capacity` per period.
    TokenBucket {
        /// How many cost units may be spent at once from a full bucket.
        burst: u64,
    },
    /// A count of requests in flight; each admitted request holds its cost until released, or
    /// until its lease runs out: holds are counted by the lease-long, clock-aligned period they
    /// were taken in, and one never released drops out when the period after it ends, between
    /// one and two leases after it was taken, however busy the counter (so a crashed holder or
    /// a lost release cannot leak capacity for long).
    Concurrency,
}

/// The window a limit counts in.
#[derive(Clone, Debug, PartialEq)]
pub enum Period {
    /// A fixed span in nanoseconds; windows are aligned on multiples of it since the epoch.
    Span(u64),
    /// Calendar or billing months.
    Monthly(MonthlyCycle),
}

impl Period {
    /// The window containing `now`.
    pub fn window_at(&self, now: Timestamp) -> Window {
        match self {
            Period::Span(span) => {
                let span = (*span).max(1);
                let index = now.as_nanos().checked_div(span).unwrap_or(0);
                let start = Timestamp::from_nanos(index.saturating_mul(span));
                Window {
                    index,
                    start,
                    end: start.saturating_add_nanos(span),
                }
            }
            Period::Monthly(cycle) => cycle.window_at(now),
        }
    }
}

/// A validated limit: `capacity` cost units per `period`, counted by `algorithm`.
///
/// Construct one with [`Limit::fixed_window`], [`Limit::sliding_window`],
/// [`Limit::token_bucket`] or [`Limit::concurrency`].
#[derive(Clone, Debug, PartialEq)]
pub struct Limit {
    algorithm: Algorithm,
    /// Invariant: at most `MAX_CAPACITY`.
    capacity: u64,
    /// Invariant: a `Span` lies within `MIN_SPAN..=MAX_SPAN`; `Monthly` only with `FixedWindow`.
    period: Period,
    /// Invariant: never true for `Concurrency`.
    count_rejected: bool,
    /// Invariant: never true for `Concurrency`, nor with blocks.
    shadow: bool,
    /// Units a gateway takes from a shared store at once and spends locally; 0 counts every
    /// request in the store. Invariant: 0, or 2..=capacity (and ..=burst) on a fixed window or
    /// a token bucket that does not count rejected requests.
    block: u64,
    /// The token bucket's constants, computed once (unused by other algorithms).
    cells: Cells,
}

impl Limit {
    /// `capacity` per window of `period`, windows aligned on the clock or the calendar.
    pub fn fixed_window(capacity: u64, period: Period) -> Result<Limit, LimitError> {
        if let Period::Span(span) = period {
            check_span(Duration::from_nanos(span))?;
        }
        Limit::new(Algorithm::FixedWindow, capacity, period)
    }

    /// `capacity` per sliding `span`, estimated from two fixed windows.
    pub fn sliding_window(capacity: u64, span: Duration) -> Result<Limit, LimitError> {
        let span = check_span(span)?;
        Limit::new(Algorithm::SlidingWindow, capacity, Period::Span(span))
    }

    /// `capacity` per `span` refilled continuously, with up to `burst` at once.
    pub fn token_bucket(capacity: u64, span: Duration, burst: u64) -> Result<Limit, LimitError> {
        let span = check_span(span)?;
        if burst == 0 || burst > MAX_CAPACITY {
            return Err(LimitError::Burst(burst));
        }
        Limit::new(
            Algorithm::TokenBucket { burst },
            capacity,
            Period::Span(span),
        )
    }

    /// At most `capacity` in flight; a holder that never releases loses its hold between one
    /// and two leases after taking it.
    pub fn concurrency(capacity: u64, lease: Duration) -> Result<Limit, LimitError> {
        let lease = check_span(lease)?;
        Limit::new(Algorithm::Concurrency, capacity, Period::Span(lease))
    }

    fn new(algorithm: Algorithm, capacity: u64, period: Period) -> Result<Limit, LimitError> {
        if capacity > MAX_CAPACITY {
            return Err(LimitError::Capacity(capacity));
        }
        let span = match period {
            Period::Span(span) => span,
            Period::Monthly(_) => 0,
        };
        let burst = match algorithm {
            Algorithm::TokenBucket { burst } => burst,
            _ => 1,
        };
        Ok(Limit {
            algorithm,
            capacity,
            cells: Cells::new(capacity, span, burst),
            period,
            count_rejected: false,
            shadow: false,
            block: 0,
        })
    }

    /// This limit, changed to count requests it denies as if they had been admitted, so that a
    /// client that keeps hammering stays limited. Not available for concurrency limits, which
    /// count holders, not attempts.
    pub fn counting_rejected(self) -> Result<Limit, LimitError> {
        if self.algorithm == Algorithm::Concurrency {
            return Err(LimitError::CountRejectedConcurrency);
        }
        if self.block > 0 {
            return Err(LimitError::Block(self.block));
        }
        Ok(Limit {
            count_rejected: true,
            ..self
        })
    }

    /// This limit in shadow mode (a dry run): it counts as it would if enforced, and a decision
    /// reports when it would have denied a request ([`LimitStatus::would_deny`]), but it never
    /// denies one itself. A request it would have denied takes nothing from it (unless it
    /// counts rejected requests), as if it had been refused; one another limit denies takes
    /// nothing either. A way to watch a new limit against real traffic before enforcing it.
    ///
    /// Not available for concurrency limits, whose slots are given back when a request ends
    /// whether or not they were taken, nor with blocks.
    ///
    /// [`LimitStatus::would_deny`]: crate::LimitStatus::would_deny
    pub fn in_shadow(self) -> Result<Limit, LimitError> {
        if self.algorithm == Algorithm::Concurrency {
            return Err(LimitError::ShadowConcurrency);
        }
        if self.block > 0 {
            return Err(LimitError::Block(self.block));
        }
        Ok(Limit {
            shadow: true,
            ..self
        })
    }

    /// This limit, approximated for a very hot key: a gateway sharing its counters through a
    /// store (Redis) takes `block` units at once and spends them locally, calling the store
    /// about once per block instead of once per request.
    ///
    /// What it costs in exactness, fleet-wide: on a fixed window a block is spent only within
    /// the window it was taken in, so no window ever admits more than the capacity; on a token
    /// bucket a block is spent within the time the bucket takes to earn one block per gateway
    /// ([`Limit::block_lifetime`]), so any interval admits at most `block × gateways` more than
    /// the exact limit would. Units a gateway took but did not spend in time are lost, and a
    /// gateway refused a block refuses locally until one could be taken: the fleet may refuse
    /// up to `block − 1` units per gateway that the exact limit would have admitted.
    ///
    /// For fixed windows and token buckets that do not count rejected requests and are not in
    /// shadow mode, with `block` between 2 and the capacity (and the burst).
    pub fn in_blocks(self, block: u64) -> Result<Limit, LimitError> {
        let most = match self.algorithm {
            Algorithm::FixedWindow => self.capacity,
            Algorithm::TokenBucket { burst } => self.capacity.min(burst),
            Algorithm::SlidingWindow | Algorithm::Concurrency => 0,
        };
        if block < 2 || block > most || self.count_rejected || self.shadow {
            return Err(LimitError::Block(block));
        }
        Ok(Limit { block, ..self })
    }

    /// Units taken at once from a shared store; 0 when every request is counted there.
    pub fn block(&self) -> u64 {
        self.block
    }

    /// Until when a block taken at `at`, with `gateways` sharing the limit, may be spent: the
    /// end of the fixed window, or for a token bucket the time it takes to earn one block per
    /// gateway (`block × gateways × span / capacity`, rounded down). `None` for a limit not
    /// counted in blocks.
    pub fn block_lifetime(&self, at: Timestamp, gateways: u64) -> Option<Timestamp> {
        if self.block == 0 {
            return None;
        }
        match self.algorithm {
            Algorithm::FixedWindow => Some(self.period.window_at(at).end),
            Algorithm::TokenBucket { .. } => {
                let weight = self
                    .cells
                    .weight(self.block.saturating_mul(gateways.max(1)));
                Some(at.saturating_add_nanos(weight.whole))
            }
            Algorithm::SlidingWindow | Algorithm::Concurrency => None,
        }
    }

    /// How the limit counts.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Cost units per period (or in flight, for a concurrency limit).
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// The window the limit counts in (the lease, for a concurrency limit).
    pub fn period(&self) -> &Period {
        &self.period
    }

    pub(crate) fn cells(&self) -> &Cells {
        &self.cells
    }

    /// This token bucket's exact steps, for a backend that runs the algorithm elsewhere (the
    /// Redis script): how far `cost` units move the bucket, and how far ahead of now it may run.
    pub fn bucket_terms(&self, cost: u64) -> BucketTerms {
        let cells = &self.cells;
        let weight = cells.weight(crate::engine::clamp_cost(cost));
        BucketTerms {
            weight: (weight.whole, weight.part),
            tolerance: (cells.tolerance.whole, cells.tolerance.part),
            denominator: self.capacity.max(1),
        }
    }

    /// Whether denied requests are counted too.
    pub fn counts_rejected(&self) -> bool {
        self.count_rejected
    }

    /// Whether the limit is in shadow mode: counted and reported, never enforced.
    pub fn is_shadow(&self) -> bool {
        self.shadow
    }

    /// This limit's share for one of `parts` instances counting apart: capacity (and burst)
    /// divided by `parts`, rounded down, so that the parts together never admit more than the
    /// whole. `None` when a share would be zero: the limit is too small to divide.
    pub fn divided(&self, parts: u64) -> Option<Limit> {
        let capacity = self.capacity.checked_div(parts.max(1))?;
        if capacity == 0 {
            return None;
        }
        let algorithm = match self.algorithm {
            Algorithm::TokenBucket { burst } => {
                let burst = burst.checked_div(parts.max(1))?;
                if burst == 0 {
                    return None;
                }
                Algorithm::TokenBucket { burst }
            }
            other => other,
        };
        let limit = Limit::new(algorithm, capacity, self.period.clone()).ok()?;
        Some(Limit {
            count_rejected: self.count_rejected,
            shadow: self.shadow,
            ..limit
        })
    }
}

/// A token bucket's steps as (whole ns, fraction in 1/`denominator` ns) pairs: see
/// [`Limit::bucket_terms`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BucketTerms {
    /// How far one request's cost moves the bucket's theoretical arrival time.
    pub weight: (u64, u64),
    /// How far ahead of now the theoretical arrival time may run (burst × interval).
    pub tolerance: (u64, u64),
    /// The denominator of both fractions: the capacity (at least 1).
    pub denominator: u64,
}

fn check_span(span: Duration) -> Result<u64, LimitError> {
    if span < MIN_SPAN || span > MAX_SPAN {
        return Err(LimitError::Span(span));
    }
    Ok(duration_to_nanos(span))
}

/// Why a limit could not be built.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LimitError {
    /// The capacity exceeds [`MAX_CAPACITY`].
    Capacity(u64),
    /// The burst is zero or exceeds [`MAX_CAPACITY`].
    Burst(u64),
    /// The span lies outside [`MIN_SPAN`]..=[`MAX_SPAN`].
    Span(Duration),
    /// A billing-cycle anchor outside 1..=31.
    AnchorDay(u8),
    /// A time-zone name the bundled database does not know.
    TimeZone(String),
    /// `counting_rejected` on a concurrency limit.
    CountRejectedConcurrency,
    /// `in_shadow` on a concurrency limit.
    ShadowConcurrency,
    /// Blocks on a limit that cannot take them, or of a size outside 2..=capacity (and burst).
    Block(u64),
}

impl fmt::Display for LimitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LimitError::Capacity(capacity) => {
                write!(
                    f,
                    "capacity {capacity} exceeds the maximum of {MAX_CAPACITY}"
                )
            }
            LimitError::Burst(burst) => {
                write!(f, "burst {burst} must lie between 1 and {MAX_CAPACITY}")
            }
            LimitError::Span(span) => write!(
                f,
                "period {span:?} must lie between {MIN_SPAN:?} and 100 years"
            ),
            LimitError::AnchorDay(day) => {
                write!(f, "billing anchor day {day} must lie between 1 and 31")
            }
            LimitError::TimeZone(name) => write!(f, "unknown time zone {name:?}"),
            LimitError::CountRejectedConcurrency => {
                write!(f, "a concurrency limit cannot count rejected requests")
            }
            LimitError::ShadowConcurrency => {
                write!(f, "a concurrency limit cannot run in shadow mode")
            }
            LimitError::Block(block) => write!(
                f,
                "a block of {block} needs a fixed window or a token bucket that does not count \
                 rejected requests and is not in shadow mode, and a block between 2 and its \
                 capacity (and burst)"
            ),
        }
    }
}

impl std::error::Error for LimitError {}
