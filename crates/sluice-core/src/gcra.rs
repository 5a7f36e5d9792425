//! Exact GCRA arithmetic without division on the hot path.
//!
//! An instant or a span is a [`Frac`]: whole nanoseconds plus a fraction in units of
//! 1/capacity ns. The emission interval (span / capacity) and the tolerance (burst × interval)
//! are computed once, when the limit is built; a decision then only adds and compares pairs of
//! integers, which keeps a token-bucket decision exact (no rounding drift) and cheap.

use std::cmp::Ordering;

/// `whole + part / denominator` nanoseconds. Invariant: `part < denominator`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Frac {
    pub(crate) whole: u64,
    pub(crate) part: u64,
}

impl Frac {
    pub(crate) const fn from_nanos(whole: u64) -> Frac {
        Frac { whole, part: 0 }
    }

    /// The first whole nanosecond at or after this instant.
    pub(crate) fn ceil(self) -> u64 {
        self.whole.saturating_add(u64::from(self.part > 0))
    }

    fn cmp(self, other: Frac) -> Ordering {
        (self.whole, self.part).cmp(&(other.whole, other.part))
    }

    pub(crate) fn max(self, other: Frac) -> Frac {
        if self.cmp(other) == Ordering::Less {
            other
        } else {
            self
        }
    }

    pub(crate) fn min(self, other: Frac) -> Frac {
        if self.cmp(other) == Ordering::Greater {
            other
        } else {
            self
        }
    }

    pub(crate) fn le(self, other: Frac) -> bool {
        self.cmp(other) != Ordering::Greater
    }

    pub(crate) fn gt(self, other: Frac) -> bool {
        self.cmp(other) == Ordering::Greater
    }
}

/// The constants of one token bucket, and arithmetic on `Frac`s sharing its denominator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Cells {
    /// The denominator of every `Frac`: the limit's capacity (at least 1).
    denominator: u64,
    /// span / capacity: how long one cost unit takes to come back.
    pub(crate) interval: Frac,
    /// burst × interval: how far ahead of now the bucket may run.
    pub(crate) tolerance: Frac,
    /// The span, in ns (interval × capacity). At least 1.
    span: u64,
    /// ⌊2^64 / span⌋, which turns the one division a decision needs into a multiplication.
    span_reciprocal: u128,
    /// The bucket in whole nanoseconds, when the interval and the tolerance are whole (the span
    /// divides by the capacity): then every instant a decision of cost 1 makes is whole too,
    /// and plain integers do.
    whole: Option<Whole>,
}

/// A bucket's interval and tolerance in whole nanoseconds, when neither has a fraction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Whole {
    pub(crate) interval: u64,
    pub(crate) tolerance: u64,
    /// ⌊2^64 / interval⌋.
    reciprocal: u128,
}

impl Whole {
    /// How many whole intervals fit in `room` nanoseconds: [`Cells::intervals_in`] for a room
    /// with no fraction, by one multiplication.
    pub(crate) fn intervals_in(&self, room: u64) -> u64 {
        div_by(room, self.interval, self.reciprocal)
    }
}

/// `⌊n / d⌋` for `d ≥ 1` without dividing, given `r = ⌊2^64 / d⌋`: the estimate `⌊n·r / 2^64⌋`
/// undershoots `n / d` by less than `n / 2^64 < 1`, so it is the quotient or one less; the
/// remainder tells which.
fn div_by(n: u64, d: u64, r: u128) -> u64 {
    let estimate = u128::from(n).wrapping_mul(r) >> 64;
    let estimate = u64::try_from(estimate).unwrap_or(u64::MAX);
    let remainder = n.wrapping_sub(estimate.wrapping_mul(d));
    estimate.wrapping_add(u64::from(remainder >= d))
}

impl Cells {
    /// The constants for `capacity` per `span` ns with a burst of `burst`. Values that do not
    /// fit saturate; limit validation keeps real ones far from that.
    pub(crate) fn new(capacity: u64, span: u64, burst: u64) -> Cells {
        let denominator = capacity.max(1);
        let span = span.max(1);
        let cells = Cells {
            denominator,
            interval: Frac::default(),
            tolerance: Frac::default(),
            span,
            span_reciprocal: (1u128 << 64).checked_div(u128::from(span)).unwrap_or(0),
            whole: None,
        };
        let interval = cells.intervals(1);
        let tolerance = cells.intervals(burst);
        Cells {
            interval,
            tolerance,
            whole: (interval.part == 0 && tolerance.part == 0 && interval.whole > 0).then(|| {
                Whole {
                    interval: interval.whole,
                    tolerance: tolerance.whole,
                    reciprocal: (1u128 << 64)
                        .checked_div(u128::from(interval.whole))
                        .unwrap_or(0),
                }
            }),
            ..cells
        }
    }

    /// The bucket in whole nanoseconds, when its interval and tolerance have no fraction.
    pub(crate) fn whole(&self) -> Option<Whole> {
        self.whole
    }

    /// A stored (whole, part) pair as a `Frac`, repairing a part that is out of range.
    pub(crate) fn frac(&self, whole: u64, part: u64) -> Frac {
        Frac {
            whole,
            part: part.min(self.denominator.saturating_sub(1)),
        }
    }

    pub(crate) fn add(&self, a: Frac, b: Frac) -> Frac {
        let part = a.part.saturating_add(b.part);
        let carry = part >= self.denominator;
        Frac {
            whole: a
                .whole
                .saturating_add(b.whole)
                .saturating_add(u64::from(carry)),
            part: if carry {
                part.saturating_sub(self.denominator)
            } else {
                part
            },
        }
    }

    /// `a − b`, or zero when `b` is not smaller.
    pub(crate) fn sub(&self, a: Frac, b: Frac) -> Frac {
        if a.le(b) {
            return Frac::default();
        }
        if a.part >= b.part {
            Frac {
                whole: a.whole.saturating_sub(b.whole),
                part: a.part.saturating_sub(b.part),
            }
        } else {
            Frac {
                whole: a.whole.saturating_sub(b.whole).saturating_sub(1),
                part: a
                    .part
                    .saturating_add(self.denominator)
                    .saturating_sub(b.part),
            }
        }
    }

    /// `cost` emission intervals. Costs of 0 and 1 need no arithmetic.
    pub(crate) fn weight(&self, cost: u64) -> Frac {
        match cost {
            0 => Frac::default(),
            1 => self.interval,
            _ => self.intervals(cost),
        }
    }

    /// `count` emission intervals: `span × count` in units of 1/denominator ns (saturating).
    fn intervals(&self, count: u64) -> Frac {
        self.split(u128::from(self.span).saturating_mul(u128::from(count)))
    }

    /// How many whole intervals fit in `room`: `room × denominator / span`.
    pub(crate) fn intervals_in(&self, room: Frac) -> u64 {
        // The common case fits in 64 bits.
        if let Some(scaled) = room
            .whole
            .checked_mul(self.denominator)
            .and_then(|whole| whole.checked_add(room.part))
        {
            return self.div_span(scaled);
        }
        let scaled = u128::from(room.whole)
            .saturating_mul(u128::from(self.denominator))
            .saturating_add(u128::from(room.part));
        u64::try_from(scaled.checked_div(u128::from(self.span)).unwrap_or(0)).unwrap_or(u64::MAX)
    }

    /// `⌊n / span⌋` without dividing. With `r = ⌊2^64 / span⌋`, the estimate `⌊n·r / 2^64⌋`
    /// undershoots `n / span` by less than `n / 2^64 < 1`, so it is the quotient or one less;
    /// the remainder tells which.
    fn div_span(&self, n: u64) -> u64 {
        div_by(n, self.span, self.span_reciprocal)
    }

    fn split(&self, scaled: u128) -> Frac {
        let denominator = u128::from(self.denominator);
        Frac {
            whole: u64::try_from(scaled.checked_div(denominator).unwrap_or(0)).unwrap_or(u64::MAX),
            part: u64::try_from(scaled.checked_rem(denominator).unwrap_or(0)).unwrap_or(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn check(span: u64, n: u64) {
        let cells = Cells::new(1, span, 1);
        assert_eq!(Some(cells.div_span(n)), n.checked_div(span), "{n} / {span}");
    }

    #[test]
    fn division_by_the_span_is_exact_at_the_edges() {
        for span in [
            1,
            2,
            3,
            7,
            1_000_000,
            1_000_000_007,
            u64::MAX / 3,
            u64::MAX - 1,
            u64::MAX,
        ] {
            for n in [
                0,
                1,
                span - 1,
                span,
                span.saturating_add(1),
                u64::MAX - 1,
                u64::MAX,
            ] {
                check(span, n);
            }
        }
    }

    proptest! {
        #[test]
        fn division_by_the_span_is_exact(span in 1..=u64::MAX, n in any::<u64>()) {
            check(span, n);
        }
    }
}
