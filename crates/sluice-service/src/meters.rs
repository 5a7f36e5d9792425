//! The service's metrics, through the `metrics` facade (a no-op until the binary installs a
//! recorder): decisions by route and outcome, denials by limit (and those limits in shadow mode
//! would have made), quota units counted, holds renewed, and the store's latency. Labels come from the policy only (route patterns, limit and
//! quota names, error codes), never from a request, so their number is bounded by the policy.

use metrics::{Counter, Histogram};
use sluice_contract::ErrorCode;
use sluice_policy::{Policy, StoreFailure};

/// Handles registered once, so the admitted path records without building labels.
pub(crate) struct Meters {
    /// `sluice_decisions_total{route, outcome="allowed"}`, by route index.
    allowed: Vec<Counter>,
    /// `sluice_store_apply_seconds`.
    pub(crate) store_seconds: Histogram,
}

impl Meters {
    pub(crate) fn new(policy: &Policy) -> Meters {
        Meters {
            allowed: policy
                .routes
                .iter()
                .map(|route| {
                    metrics::counter!(
                        "sluice_decisions_total",
                        "route" => route.pattern.to_string(),
                        "outcome" => "allowed"
                    )
                })
                .collect(),
            store_seconds: metrics::histogram!("sluice_store_apply_seconds"),
        }
    }

    /// Counts a request the store could not decide, by what its route did about it
    /// (`sluice_store_failures_total{mode="open"|"closed"}`).
    pub(crate) fn store_failed(&self, mode: StoreFailure) {
        let mode = match mode {
            StoreFailure::Open => "open",
            StoreFailure::Closed => "closed",
            StoreFailure::Local => "local",
        };
        metrics::counter!("sluice_store_failures_total", "mode" => mode).increment(1);
    }

    /// Counts one decision on `route` (the index of the policy's route, if it matched one).
    pub(crate) fn decided(
        &self,
        policy: &Policy,
        route: Option<usize>,
        refused: Option<ErrorCode>,
    ) {
        match (route, refused) {
            (Some(index), None) => {
                if let Some(counter) = self.allowed.get(index) {
                    counter.increment(1);
                }
            }
            (route, refused) => {
                let label = route
                    .and_then(|index| policy.routes.get(index))
                    .map_or_else(|| "-".to_owned(), |route| route.pattern.to_string());
                metrics::counter!(
                    "sluice_decisions_total",
                    "route" => label,
                    "outcome" => refused.map_or("allowed", ErrorCode::name)
                )
                .increment(1);
            }
        }
    }

    /// Counts one renewal of a request's concurrency holds
    /// (`sluice_hold_renewals_total{outcome="renewed"|"failed"}`): a failed one leaves the holds
    /// to lapse unless a later renewal lands.
    pub(crate) fn renewed(&self, renewed: bool) {
        let outcome = if renewed { "renewed" } else { "failed" };
        metrics::counter!("sluice_hold_renewals_total", "outcome" => outcome).increment(1);
    }

    /// Counts one call of Envoy's rate limit service by its answer
    /// (`sluice_envoy_calls_total{outcome="ok"|"over_limit"|"unavailable"}`).
    pub(crate) fn envoy(&self, outcome: &'static str) {
        metrics::counter!("sluice_envoy_calls_total", "outcome" => outcome).increment(1);
    }

    /// Counts a denial by the limit or quota `name`.
    pub(crate) fn denied_by(&self, name: &str) {
        metrics::counter!("sluice_limit_denials_total", "limit" => name.to_owned()).increment(1);
    }

    /// Counts a request the limit `name`, in shadow mode, would have refused.
    pub(crate) fn shadow_denied(&self, name: &str) {
        metrics::counter!("sluice_limit_shadow_denials_total", "limit" => name.to_owned())
            .increment(1);
    }

    /// Counts `units` of quota `name` taken.
    pub(crate) fn quota(&self, name: &str, units: u64) {
        metrics::counter!("sluice_quota_units_total", "quota" => name.to_owned()).increment(units);
    }
}
