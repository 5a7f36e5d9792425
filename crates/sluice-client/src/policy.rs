//! The retry policy as values and pure arithmetic: which wait comes before which retry, given
//! the attempt number, the previous wait, what the server asked for and one uniform sample. No
//! clock and no randomness of its own, so every schedule is reproducible in a test.

use std::time::Duration;

/// How the backoff delay is spread, so that a fleet of clients does not retry in step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Jitter {
    /// Exactly the backoff delay: every client retries in step. For tests and single clients.
    None,
    /// The backoff delay plus or minus this much, uniformly (seed 000's "1s, 2s, 4s, 8s, 16s ±
    /// 250ms").
    Bounded(Duration),
    /// Uniformly between zero and the backoff delay ("full jitter").
    Full,
    /// Uniformly between the base delay and three times the previous wait (or the base delay,
    /// before the first retry), capped ("decorrelated jitter").
    Decorrelated,
}

impl Jitter {
    /// The name `sluice call --jitter` takes.
    pub fn name(self) -> &'static str {
        match self {
            Jitter::None => "none",
            Jitter::Bounded(_) => "bounded",
            Jitter::Full => "full",
            Jitter::Decorrelated => "decorrelated",
        }
    }
}

/// When and how often a call is tried again.
///
/// The wait before retry `n` (1 for the first retry) is drawn from a range:
///
/// | jitter | range |
/// |---|---|
/// | none | `b` |
/// | bounded `s` | `b - s ..= b + s` |
/// | full | `0 ..= b` |
/// | decorrelated | `base ..= 3 × previous wait` (the base before the first retry) |
///
/// where `b = min(max_delay, base_delay × 2^(n-1))`, and no range reaches past `max_delay`.
/// When the server names a wait (`Retry-After`, a rate-limit reset), the range is moved so
/// that it starts there: the client never comes back earlier than asked, and clients told the
/// same instant still spread over the range's width. A server's wait is never capped by
/// `max_delay`; a call with a deadline gives up instead when the wait would pass it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (1: never retry).
    pub max_attempts: u32,
    /// The backoff delay before the first retry; it doubles with each retry.
    pub base_delay: Duration,
    /// No backoff delay exceeds this.
    pub max_delay: Duration,
    /// How delays are spread.
    pub jitter: Jitter,
    /// How long one attempt may take, connect to last byte; `None` for no bound.
    pub attempt_timeout: Option<Duration>,
    /// How long a call may take in all, waits included; `None` for no bound.
    pub deadline: Option<Duration>,
}

impl Default for RetryPolicy {
    /// Five attempts, 1 s doubling to at most 60 s, full jitter, 30 s per attempt, no deadline.
    fn default() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
            jitter: Jitter::Full,
            attempt_timeout: Some(Duration::from_secs(30)),
            deadline: None,
        }
    }
}

impl RetryPolicy {
    /// Streampixel's published strategy (seed 000): five attempts, 1 s doubling (1, 2, 4, 8 s)
    /// ± 250 ms, capped at 60 s.
    pub fn streampixel() -> RetryPolicy {
        RetryPolicy {
            jitter: Jitter::Bounded(Duration::from_millis(250)),
            ..RetryPolicy::default()
        }
    }

    /// Pixel Patrol's published strategy (seed 001): three attempts, waiting `Retry-After` on a
    /// 429 and 2^attempt seconds (2, 4 s) otherwise, without jitter.
    pub fn pixel_patrol() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 3,
            base_delay: Duration::from_secs(2),
            jitter: Jitter::None,
            ..RetryPolicy::default()
        }
    }

    /// The named preset: `default`, `streampixel` or `pixel-patrol`.
    pub fn preset(name: &str) -> Option<RetryPolicy> {
        match name {
            "default" => Some(RetryPolicy::default()),
            "streampixel" => Some(RetryPolicy::streampixel()),
            "pixel-patrol" | "pixelpatrol" => Some(RetryPolicy::pixel_patrol()),
            _ => None,
        }
    }

    /// The backoff delay before retry `retry` (1-based), before jitter.
    pub fn backoff(&self, retry: u32) -> Duration {
        let doublings = retry.saturating_sub(1).min(63);
        let factor = 1u64 << doublings;
        let factor = u32::try_from(factor).unwrap_or(u32::MAX);
        self.base_delay
            .checked_mul(factor)
            .unwrap_or(Duration::MAX)
            .min(self.max_delay)
    }

    /// The range the wait before retry `retry` is drawn from, without a server's wait.
    pub fn range(&self, retry: u32, previous: Duration) -> (Duration, Duration) {
        let backoff = self.backoff(retry);
        let (low, high) = match self.jitter {
            Jitter::None => (backoff, backoff),
            Jitter::Bounded(spread) => (backoff.saturating_sub(spread), backoff + spread),
            Jitter::Full => (Duration::ZERO, backoff),
            Jitter::Decorrelated => (
                self.base_delay,
                previous.max(self.base_delay).saturating_mul(3),
            ),
        };
        let high = high.min(self.max_delay);
        (low.min(high), high)
    }

    /// The wait before retry `retry` (1-based): `previous` is the wait before the last retry
    /// (zero before the first), `server` the wait the server named, if any, and `sample` a
    /// uniform draw from `[0, 1)`.
    pub fn wait(
        &self,
        retry: u32,
        previous: Duration,
        server: Option<Duration>,
        sample: f64,
    ) -> Duration {
        let (low, high) = self.range(retry, previous);
        let spread = (high - low).mul_f64(sample.clamp(0.0, 1.0));
        match server {
            Some(asked) if asked > low => asked.saturating_add(spread),
            _ => low + spread,
        }
    }
}

/// How many retries a client (all its clones together) may make: a token bucket that holds at
/// most `max` retries, starts full, gains `per_second` each second and `ratio` with each call,
/// and spends one per retry. With the defaults, retries stay under 20 % of calls plus one a
/// second once the first ten are spent, so a fleet in trouble does not multiply its own load.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryBudget {
    /// Retries earned by each call (0.2: one retry per five calls).
    pub ratio: f64,
    /// Retries earned each second whatever the traffic.
    pub per_second: f64,
    /// Retries that can be saved up.
    pub max: f64,
}

impl Default for RetryBudget {
    fn default() -> RetryBudget {
        RetryBudget {
            ratio: 0.2,
            per_second: 1.0,
            max: 10.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn the_streampixel_schedule_is_the_seeds() {
        let policy = RetryPolicy::streampixel();
        for (retry, centre) in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0)] {
            assert_eq!(
                policy.wait(retry, Duration::ZERO, None, 0.0),
                secs(centre - 0.25)
            );
            assert_eq!(policy.wait(retry, Duration::ZERO, None, 0.5), secs(centre));
            assert_eq!(
                policy.wait(retry, Duration::ZERO, None, 1.0),
                secs(centre + 0.25)
            );
        }
    }

    #[test]
    fn backoff_is_capped_and_never_overflows() {
        let policy = RetryPolicy::default();
        assert_eq!(policy.backoff(7), secs(60.0));
        assert_eq!(policy.backoff(u32::MAX), secs(60.0));
        let bounded = RetryPolicy::streampixel();
        assert_eq!(bounded.wait(30, Duration::ZERO, None, 1.0), secs(60.0));
    }

    #[test]
    fn full_and_decorrelated_jitter_draw_from_their_ranges() {
        let full = RetryPolicy::default();
        assert_eq!(full.range(3, Duration::ZERO), (Duration::ZERO, secs(4.0)));
        let decorrelated = RetryPolicy {
            jitter: Jitter::Decorrelated,
            ..RetryPolicy::default()
        };
        assert_eq!(
            decorrelated.range(1, Duration::ZERO),
            (secs(1.0), secs(3.0))
        );
        assert_eq!(decorrelated.range(2, secs(5.0)), (secs(1.0), secs(15.0)));
        assert_eq!(decorrelated.range(9, secs(50.0)), (secs(1.0), secs(60.0)));
    }

    #[test]
    fn a_servers_wait_is_a_floor_with_the_jitters_width_after_it() {
        let policy = RetryPolicy::streampixel();
        // Retry-After: 120 is beyond the 60 s cap and is honoured anyway.
        assert_eq!(
            policy.wait(1, Duration::ZERO, Some(secs(120.0)), 0.0),
            secs(120.0)
        );
        assert_eq!(
            policy.wait(1, Duration::ZERO, Some(secs(120.0)), 1.0),
            secs(120.5)
        );
        // A server's wait shorter than the backoff leaves the backoff alone.
        assert_eq!(
            policy.wait(4, Duration::ZERO, Some(secs(1.0)), 0.5),
            secs(8.0)
        );
        let none = RetryPolicy {
            jitter: Jitter::None,
            ..policy
        };
        assert_eq!(
            none.wait(1, Duration::ZERO, Some(secs(3.0)), 0.9),
            secs(3.0)
        );
    }

    #[test]
    fn presets_are_found_by_name() {
        assert_eq!(
            RetryPolicy::preset("streampixel"),
            Some(RetryPolicy::streampixel())
        );
        assert_eq!(
            RetryPolicy::preset("pixel-patrol"),
            Some(RetryPolicy::pixel_patrol())
        );
        assert_eq!(RetryPolicy::preset("nope"), None);
        assert_eq!(RetryPolicy::pixel_patrol().backoff(2), secs(4.0));
    }
}
