//! What every clone of a client shares: the retry budget, the pacing table (per endpoint, the
//! instant before which a call would only draw a 429) and the jitter's random source.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use crate::policy::RetryBudget;

/// At most this many endpoints are remembered for pacing; past it, those whose wait is over
/// are forgotten.
const PACED_ENDPOINTS: usize = 1024;

/// State shared by a client's clones.
#[derive(Debug)]
pub(crate) struct Shared {
    budget: Option<Mutex<Budget>>,
    paced: Mutex<HashMap<String, Duration>>,
    rng: Mutex<fastrand::Rng>,
}

#[derive(Debug)]
struct Budget {
    config: RetryBudget,
    tokens: f64,
    at: Duration,
}

impl Budget {
    fn refill(&mut self, now: Duration) {
        let elapsed = now.saturating_sub(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.config.per_second).min(self.config.max);
        self.at = self.at.max(now);
    }
}

impl Shared {
    pub(crate) fn new(budget: Option<RetryBudget>, rng: fastrand::Rng, now: Duration) -> Shared {
        Shared {
            budget: budget.map(|config| {
                Mutex::new(Budget {
                    config,
                    tokens: config.max,
                    at: now,
                })
            }),
            paced: Mutex::new(HashMap::new()),
            rng: Mutex::new(rng),
        }
    }

    /// A call starts: it earns its share of a retry.
    pub(crate) fn deposit(&self, now: Duration) {
        if let Some(budget) = &self.budget {
            let mut budget = budget.lock().unwrap_or_else(PoisonError::into_inner);
            budget.refill(now);
            budget.tokens = (budget.tokens + budget.config.ratio).min(budget.config.max);
        }
    }

    /// Spends one retry; false when none is left.
    pub(crate) fn withdraw(&self, now: Duration) -> bool {
        let Some(budget) = &self.budget else {
            return true;
        };
        let mut budget = budget.lock().unwrap_or_else(PoisonError::into_inner);
        budget.refill(now);
        if budget.tokens >= 1.0 {
            budget.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Nothing is left on `endpoint` until `until`.
    pub(crate) fn pace(&self, endpoint: &str, until: Duration, now: Duration) {
        let mut paced = self.paced.lock().unwrap_or_else(PoisonError::into_inner);
        if paced.len() >= PACED_ENDPOINTS && !paced.contains_key(endpoint) {
            paced.retain(|_, until| *until > now);
        }
        let entry = paced.entry(endpoint.to_owned()).or_insert(until);
        *entry = (*entry).max(until);
    }

    /// Something is left on `endpoint` again (a success came back).
    pub(crate) fn clear(&self, endpoint: &str) {
        self.paced
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(endpoint);
    }

    /// How long a call to `endpoint` must wait from `now` before it can be admitted.
    pub(crate) fn paced_for(&self, endpoint: &str, now: Duration) -> Option<Duration> {
        let paced = self.paced.lock().unwrap_or_else(PoisonError::into_inner);
        let until = *paced.get(endpoint)?;
        (until > now).then(|| until - now)
    }

    /// A uniform sample from [0, 1).
    pub(crate) fn sample(&self) -> f64 {
        self.rng
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .f64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn the_budget_starts_full_and_refills_with_calls_and_time() {
        let shared = Shared::new(
            Some(RetryBudget {
                ratio: 0.5,
                per_second: 1.0,
                max: 2.0,
            }),
            fastrand::Rng::with_seed(1),
            secs(0),
        );
        assert!(shared.withdraw(secs(0)));
        assert!(shared.withdraw(secs(0)));
        assert!(!shared.withdraw(secs(0)));
        shared.deposit(secs(0));
        assert!(!shared.withdraw(secs(0)), "half a retry is not a retry");
        shared.deposit(secs(0));
        assert!(shared.withdraw(secs(0)));
        assert!(shared.withdraw(secs(1)), "a second earns one");
        assert!(!shared.withdraw(secs(1)));
        assert!(shared.withdraw(secs(100)));
        assert!(shared.withdraw(secs(100)));
        assert!(!shared.withdraw(secs(100)), "no more than max is saved up");
    }

    #[test]
    fn pacing_remembers_the_latest_instant_per_endpoint() {
        let shared = Shared::new(None, fastrand::Rng::with_seed(1), secs(0));
        shared.pace("a", secs(10), secs(0));
        shared.pace("a", secs(5), secs(0));
        assert_eq!(shared.paced_for("a", secs(4)), Some(secs(6)));
        assert_eq!(shared.paced_for("a", secs(10)), None);
        assert_eq!(shared.paced_for("b", secs(0)), None);
        shared.clear("a");
        assert_eq!(shared.paced_for("a", secs(0)), None);
        for n in 0..PACED_ENDPOINTS {
            shared.pace(&n.to_string(), secs(1), secs(0));
        }
        shared.pace("late", secs(3), secs(2));
        assert_eq!(shared.paced_for("late", secs(2)), Some(secs(1)));
        assert_eq!(
            shared.paced.lock().expect("lock").len(),
            1,
            "entries whose wait is over were forgotten"
        );
    }
}
