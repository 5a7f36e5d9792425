//! Envoy's rate limit service, as a use case: the descriptors of one `ShouldRateLimit` call
//! decided against the policy's `envoy:` rules in one store call, all or nothing, with the
//! policy's rate-limit headers and, when over the limit, its error body for Envoy to send.
//!
//! The gRPC front (`sluice-rls`) only translates to and from Envoy's messages.

use std::time::Duration;

use sluice_contract::{ErrorCode, Values};
use sluice_core::{CounterKey, Op, Transition};
use sluice_policy::LimitRule;
use sluice_store::CounterStore;
use smallvec::SmallVec;

use crate::verdict::{HeaderList, Rejection};
use crate::{Counted, Refusal, Service, retry_wait, until};

/// One descriptor of an Envoy rate limit request.
#[derive(Clone, Debug)]
pub struct Descriptor<'a> {
    /// Its entries, key and value, in order.
    pub entries: Vec<(&'a str, &'a str)>,
    /// The hits it adds, when it says (else the request's).
    pub hits: Option<u64>,
}

/// How one descriptor stands after the call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DescriptorStatus {
    /// Its own limit refused the call.
    pub over_limit: bool,
    /// The limit's name.
    pub name: String,
    /// Hits allowed per `period`.
    pub limit: u64,
    /// The limit's period.
    pub period: Duration,
    /// Hits left now.
    pub remaining: u64,
    /// How long until the limit is fully available again.
    pub reset_after: Duration,
}

/// The answer to one Envoy rate limit request.
#[derive(Debug)]
pub struct DescriptorVerdict {
    /// One per descriptor, in order; `None` for a descriptor that no rule limits.
    pub statuses: Vec<Option<DescriptorStatus>>,
    /// The policy's rate-limit headers, for the client's response.
    pub headers: HeaderList,
    /// When some limit refused the call: the error Envoy answers the client with, in the
    /// policy's envelope. Nothing was counted then.
    pub rejection: Option<Rejection>,
}

/// The store could not answer; Envoy's `failure_mode_deny` decides what the client gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the counter store is unavailable")]
pub struct StoreUnavailable;

impl<S: CounterStore> Service<S> {
    /// Decides one Envoy rate limit request: every descriptor a rule of the policy's `envoy:`
    /// section matches counts `hits` (or its own) against that rule's limit, each distinct
    /// descriptor on its own counter, in one store call. If any limit refuses, nothing is
    /// counted and the verdict carries the rejection. Descriptors of another domain, or that no
    /// rule matches, are not limited.
    pub async fn check_descriptors(
        &self,
        domain: &str,
        descriptors: &[Descriptor<'_>],
        hits: u64,
    ) -> Result<DescriptorVerdict, StoreUnavailable> {
        let rules = self
            .policy
            .envoy
            .as_ref()
            .filter(|envoy| envoy.domain == domain);
        // Each descriptor's counter, once: a descriptor sent twice counts twice on one counter.
        let mut counters: SmallVec<[(&LimitRule, CounterKey, u64); 4]> = SmallVec::new();
        let mut slots: Vec<Option<usize>> = Vec::with_capacity(descriptors.len());
        for descriptor in descriptors {
            // No rule, or an `unlimited` one: not limited.
            let Some(rule) = rules
                .and_then(|rules| rules.rule(descriptor.entries.iter().copied()))
                .and_then(|rule| rule.limit.as_ref())
            else {
                slots.push(None);
                continue;
            };
            let key = CounterKey::new(&scope(descriptor), rule.counter.as_bytes());
            let cost = descriptor.hits.unwrap_or(hits);
            let slot = match counters.iter().position(|(_, known, _)| *known == key) {
                Some(slot) => {
                    counters[slot].2 = counters[slot].2.saturating_add(cost);
                    slot
                }
                None => {
                    counters.push((rule, key, cost));
                    counters.len() - 1
                }
            };
            slots.push(Some(slot));
        }
        if counters.is_empty() {
            self.meters.envoy("ok");
            return Ok(DescriptorVerdict {
                statuses: slots.iter().map(|_| None).collect(),
                headers: HeaderList::new(),
                rejection: None,
            });
        }

        let transitions: SmallVec<[Transition<'_>; 4]> = counters
            .iter()
            .map(|(rule, key, cost)| Transition {
                key: key.clone(),
                limit: &rule.limit,
                op: Op::Acquire { cost: *cost },
            })
            .collect();
        let Ok(decision) = self.apply(&transitions).await else {
            self.meters.envoy("unavailable");
            return Err(StoreUnavailable);
        };
        self.meters.envoy(if decision.allowed() {
            "ok"
        } else {
            "over_limit"
        });
        let counted: SmallVec<[Counted<'_>; 4]> = counters
            .iter()
            .map(|(rule, _, _)| Counted::Limit(rule))
            .collect();
        if self.any_shadow {
            self.count_shadowed(&counted, &decision);
        }
        let headers = self.headers(&counted, &decision, None);
        let statuses = slots
            .iter()
            .map(|slot| {
                let slot = (*slot)?;
                let (rule, _, _) = counters.get(slot)?;
                let status = decision.limits().get(slot)?;
                Some(DescriptorStatus {
                    over_limit: status.denied(),
                    name: rule.name.clone(),
                    limit: rule.rate.count,
                    period: rule.rate.span,
                    remaining: status.remaining(),
                    reset_after: until(status, &decision),
                })
            })
            .collect();
        let rejection = decision.denied_by().map(|index| {
            let rule = counters.get(index).map(|(rule, _, _)| *rule);
            if let Some(rule) = rule {
                self.meters.denied_by(&rule.name);
            }
            let refusal = Refusal {
                code: ErrorCode::RateLimited,
                values: Values {
                    retry: decision.retry().and_then(retry_wait),
                    limit: rule.map(|rule| rule.rate.count),
                    window: rule.map(|rule| rule.rate.span),
                    ..Values::default()
                },
                headers: headers.clone(),
            };
            self.render(refusal, None, None)
        });
        Ok(DescriptorVerdict {
            statuses,
            headers,
            rejection,
        })
    }
}

/// Who a descriptor counts: all its values, each length-prefixed so that no two descriptors
/// share a scope.
fn scope(descriptor: &Descriptor<'_>) -> SmallVec<[u8; 64]> {
    let mut scope = SmallVec::new();
    for (_, value) in &descriptor.entries {
        let length = u32::try_from(value.len()).unwrap_or(u32::MAX);
        scope.extend_from_slice(&length.to_le_bytes());
        scope.extend_from_slice(value.as_bytes());
    }
    scope
}
