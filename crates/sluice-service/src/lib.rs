//! sluice's use cases, between the wire and the store: for one request, find its route, check its
//! content type and body, authenticate its API key, resolve who it counts against, decide every
//! limit and quota it touches in one store call, and settle afterwards (refund a quota the
//! upstream did not earn, release a concurrency slot). Every failure leaves as an [`ErrorCode`]
//! rendered in the policy's envelope, with the policy's rate-limit headers.
//!
//! This crate knows no HTTP server and no wire format of its own: the gateway and the decision
//! API both call [`Service::check`] and [`Service::finish`], so they decide exactly alike.

mod admin;
mod cors;
mod envoy;
mod hold;
mod keys;
mod live;
mod meters;
mod probe;
mod request;
mod verdict;

use std::borrow::Cow;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use http::StatusCode;
use serde_json::{Map, Value};
use sluice_contract::{
    ErrorCode, ErrorReply, LimitView, Values, ceil_seconds, decimal_value, rate_limit_headers,
};
use sluice_core::{
    Algorithm, Clock, CounterKey, Decision, Limit, LimitStatus, Op, Retry, SystemClock, Timestamp,
    Transition,
};
use sluice_policy::{
    IdentitySource, InactiveBlocks, KeyAttribute, KeyRecord, KeySource, KeyStatus, LimitRule,
    OverrideRule, Policy, QuotaCounts, QuotaRule, Route, Scope, StoreFailure,
};
use sluice_store::{CounterStore, MemoryStore, RecordStore, StoreError};
use smallvec::SmallVec;

pub use admin::{AdminError, OverrideSpec, Usage};
pub use cors::CorsAnswer;
pub use envoy::{Descriptor, DescriptorStatus, DescriptorVerdict, StoreUnavailable};
pub use hold::{HoldError, RenewedHold};
pub use keys::{IssuedKey, KeyError, KeyRing, NewKey, StoredKey, hash_key};
pub use live::LiveService;
pub use probe::{ProbeOutcome, ResourceProbe};
pub use request::{Request, is_json, is_public};
pub use verdict::{Admission, HeaderList, Rejection, Verdict};

/// The body size read for routes that need their body and name no `max_body`.
pub const DEFAULT_MAX_BODY: u64 = 1024 * 1024;

/// What the gateway must do with a request's body before calling [`Service::check`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyNeed {
    /// No rule reads it: stream it to the upstream untouched.
    Stream,
    /// Read it whole, refusing it (413) beyond `max` bytes, before buffering.
    Read {
        /// The largest body accepted, in bytes.
        max: u64,
    },
}

/// A request's route, looked up once: what the gateway needs to know before reading the body,
/// and what [`Service::check_matched`] decides with.
#[derive(Clone, Copy, Debug)]
pub struct Matched<'s> {
    route: Option<&'s Route>,
    /// The route's index in the policy, for metrics.
    index: Option<usize>,
    /// Whether to read the body first, and up to what size.
    pub body: BodyNeed,
}

/// A failure on its way to becoming a [`Rejection`]: the code, the values its message names, and
/// the headers that go with it.
#[derive(Clone, Debug)]
pub(crate) struct Refusal {
    code: ErrorCode,
    values: Values,
    headers: HeaderList,
}

/// Boxed, so that the `Result`s carrying one stay small on the success path.
pub(crate) type Refused = Box<Refusal>;

impl Refusal {
    pub(crate) fn new(code: ErrorCode, values: Values) -> Refused {
        Box::new(Refusal {
            code,
            values,
            headers: HeaderList::new(),
        })
    }
}

/// A penalty's two counters: denials counted within a span, and the block they trigger.
#[derive(Debug)]
struct Penalty {
    per: Scope,
    strikes: Limit,
    block: Limit,
    strikes_counter: String,
    block_counter: String,
}

/// What one counter of a decision counts for.
#[derive(Clone, Copy, Debug)]
enum Counted<'p> {
    Limit(&'p LimitRule),
    Quota(&'p QuotaRule),
    Block(&'p Penalty),
}

/// The use cases of one policy over one store.
pub struct Service<S> {
    policy: Arc<Policy>,
    store: S,
    /// The keys file's keys and the store's, swapped whole when the store's change.
    keys: RwLock<Arc<KeyRing>>,
    /// The keys file's keys, which every reload keeps.
    file_keys: Vec<KeyRecord>,
    /// What rotated keys' grace periods are measured against.
    clock: Arc<dyn Clock>,
    /// Overrides set through the admin API (kept in the store), swapped whole on change.
    runtime_overrides: RwLock<Arc<Vec<OverrideRule>>>,
    meters: meters::Meters,
    penalties: Vec<Penalty>,
    probe: Option<Arc<dyn ResourceProbe>>,
    /// Counters for routes that fall back to local counting while the store is down.
    local: MemoryStore,
    /// Some identity is read from the body, so every route reads it.
    identity_in_body: bool,
    /// The API key is read from the body, so authenticated routes read it.
    key_in_body: bool,
    /// Some limit is in shadow mode (an override keeps the mode of the limit it replaces), so
    /// decisions are looked over for what such limits would have refused.
    any_shadow: bool,
}

impl<S: CounterStore> Service<S> {
    /// The service enforcing `policy` with counters in `store` and API keys from `keys`.
    pub fn new(policy: Arc<Policy>, store: S, keys: KeyRing) -> Service<S> {
        let penalties = policy
            .penalties
            .iter()
            .enumerate()
            .filter_map(|(index, rule)| {
                let strikes =
                    Limit::sliding_window(rule.after_denials.count, rule.after_denials.span)
                        .ok()?;
                let block = Limit::token_bucket(1, rule.block_for, 1).ok()?;
                Some(Penalty {
                    per: rule.per.clone(),
                    strikes,
                    block,
                    strikes_counter: format!("penalty/{index}/strikes"),
                    block_counter: format!("penalty/{index}/block"),
                })
            })
            .collect();
        let identity_in_body = policy
            .identities
            .values()
            .any(|source| matches!(source, IdentitySource::Body { .. }));
        let key_in_body = policy
            .authentication
            .as_ref()
            .is_some_and(|auth| matches!(auth.api_key, KeySource::Body { .. }));
        let any_shadow = policy.limits().any(|rule| rule.limit.is_shadow());
        let meters = meters::Meters::new(&policy);
        Service {
            policy,
            store,
            file_keys: keys.records().cloned().collect(),
            keys: RwLock::new(Arc::new(keys)),
            clock: Arc::new(SystemClock::new()),
            local: MemoryStore::new(Arc::new(SystemClock::new())),
            runtime_overrides: RwLock::default(),
            meters,
            penalties,
            probe: None,
            identity_in_body,
            key_in_body,
            any_shadow,
        }
    }

    /// This service, checking the size of linked resources whose rule says `probe` with
    /// `probe`. Without one, such rules check the URL's form only.
    pub fn with_probe(mut self, probe: Arc<dyn ResourceProbe>) -> Service<S> {
        self.probe = Some(probe);
        self
    }

    /// This service, ending rotated keys' grace periods by `clock` (the system clock by
    /// default).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Service<S> {
        self.local = MemoryStore::new(Arc::clone(&clock));
        self.clock = clock;
        self
    }

    fn runtime_overrides(&self) -> Arc<Vec<OverrideRule>> {
        Arc::clone(
            &self
                .runtime_overrides
                .read()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }

    fn key_ring(&self) -> Arc<KeyRing> {
        Arc::clone(&self.keys.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// The policy enforced.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// What CORS asks of a request with `method` and `headers` (see [`CorsAnswer`]).
    pub fn cors(&self, method: &str, headers: &http::HeaderMap) -> CorsAnswer {
        cors::answer(self.policy.cors.as_ref(), method, headers)
    }

    /// The counter store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Whether the counter store is failing to answer (a Redis that is down): routes then do
    /// what their `on_store_failure` says, and readiness reports it.
    pub fn is_degraded(&self) -> bool {
        self.store.is_degraded()
    }

    /// The route of `method path`, and whether its body must be read first.
    pub fn matched(&self, method: &str, path: &str) -> Matched<'_> {
        let index = self.policy.route_index(method, path);
        let route = index.and_then(|index| self.policy.routes.get(index));
        let reads_body = route.is_some_and(|route| {
            route.request.json
                || !route.request.fields.0.is_empty()
                || (route.authenticate && self.key_in_body)
                || self.identity_in_body
        });
        let body = match route {
            Some(route) if reads_body => BodyNeed::Read {
                max: route
                    .request
                    .max_body
                    .map_or(DEFAULT_MAX_BODY, |size| size.0),
            },
            _ => BodyNeed::Stream,
        };
        Matched { route, index, body }
    }

    /// Decides `request`: admitted (forward it, then call [`Service::finish`]) or refused with a
    /// rendered error.
    pub async fn check(&self, request: &Request<'_>) -> Verdict {
        self.check_matched(self.matched(request.method, request.path), request)
            .await
    }

    /// [`Service::check`] for a request whose route was already looked up with
    /// [`Service::matched`] (to learn whether to read its body).
    pub async fn check_matched(&self, matched: Matched<'_>, request: &Request<'_>) -> Verdict {
        let route = matched.index;
        match self.evaluate(matched, request).await {
            Ok(admission) => {
                self.meters.decided(&self.policy, route, None);
                Verdict::Admit(admission)
            }
            Err(refusal) => {
                self.meters.decided(&self.policy, route, Some(refusal.code));
                Verdict::Reject(self.render(*refusal, None, request.request_id))
            }
        }
    }

    /// Settles an admitted request once its outcome is known: refunds quotas that count only
    /// successful calls when `success` is false, and releases concurrency slots.
    pub async fn finish(&self, admission: Admission, success: bool) {
        let settle: SmallVec<[Transition<'_>; 2]> = admission
            .settle
            .iter()
            .filter(|settle| settle.always || !success)
            .map(|settle| Transition {
                key: settle.key.clone(),
                limit: &settle.limit,
                op: Op::Release {
                    cost: settle.cost,
                    // A slot is given back by the period it was last renewed in; a quota by
                    // the window it was counted in.
                    acquired_at: if settle.always {
                        admission.held_at
                    } else {
                        admission.acquired_at
                    },
                },
            })
            .collect();
        if settle.is_empty() {
            return;
        }
        if admission.local {
            // Settled under the whole limit, not the share: only concurrency slots and
            // fixed-window quotas settle, and their release depends on the period alone.
            let _ = self.local.apply_now(&settle);
        } else {
            // A failed release leaves a count the upstream did not earn; it expires with its
            // window, which is the most a store outage can cost.
            let _ = self.store.apply(&settle).await;
        }
    }

    /// Keeps the concurrency slots of an admitted request that is still going (a tunnel, a
    /// held check) counted for another lease: without it a hold lapses one to two leases after
    /// it was taken, as one whose holder crashed does. Call it every
    /// [`Admission::renew_every`]. Returns whether the store took the renewal; when it did not
    /// (the store is down), the slots stay as they were and lapse unless a later renewal lands.
    pub async fn renew(&self, admission: &mut Admission) -> bool {
        let renew: SmallVec<[Transition<'_>; 2]> = admission
            .settle
            .iter()
            .filter(|settle| settle.always)
            .map(|settle| Transition {
                key: settle.key.clone(),
                limit: &settle.limit,
                op: Op::Renew {
                    cost: settle.cost,
                    acquired_at: admission.held_at,
                },
            })
            .collect();
        if renew.is_empty() {
            return true;
        }
        let renewed = if admission.local {
            self.local.apply_now(&renew)
        } else {
            self.store.apply(&renew).await
        };
        self.meters.renewed(renewed.is_ok());
        match renewed {
            Ok(decision) => {
                admission.held_at = decision.now();
                true
            }
            Err(_) => false,
        }
    }

    /// Renews the admission a hold token carries, as [`Service::renew`] does. `Ok(None)` when
    /// the store did not take the renewal (the token stays good until its hold lapses).
    pub async fn renew_hold(&self, token: &str) -> Result<Option<RenewedHold>, HoldError> {
        let mut admission = Admission::from_hold_token(token)?;
        if !self.renew(&mut admission).await {
            return Ok(None);
        }
        Ok(Some(RenewedHold {
            token: admission.hold_token(),
            renew_every: admission.renew_every(),
        }))
    }

    /// Settles the admission a hold token carries ([`Admission::hold_token`]), as
    /// [`Service::finish`] does: `success` when the call it admitted succeeded.
    pub async fn settle_hold(&self, token: &str, success: bool) -> Result<(), HoldError> {
        let admission = Admission::from_hold_token(token)?;
        self.finish(admission, success).await;
        Ok(())
    }

    /// A failure detected outside the service (by the gateway: a body over its size, a slow
    /// client, an unreachable upstream), rendered in the policy's envelope. `status` overrides
    /// the code's own (an upstream's 5xx is kept).
    pub fn reject(
        &self,
        code: ErrorCode,
        values: Values,
        status: Option<StatusCode>,
        request_id: Option<&str>,
    ) -> Rejection {
        self.render(*Refusal::new(code, values), status, request_id)
    }

    fn render(
        &self,
        refusal: Refusal,
        status: Option<StatusCode>,
        request_id: Option<&str>,
    ) -> Rejection {
        let code = refusal.code;
        let reply = ErrorReply {
            code,
            status: status.unwrap_or_else(|| code.status()),
            title: self.policy.title(code),
            message: self.policy.message(code).render(&refusal.values),
            kind: self.policy.kind(code).map(str::to_owned),
            retry_after: refusal.values.retry.map(ceil_seconds),
            request_id: request_id.map(str::to_owned),
        };
        let rendered = self.policy.envelope.render(&reply);
        Rejection {
            code,
            status: rendered.status,
            headers: refusal.headers,
            content_type: rendered.content_type,
            body: rendered.body,
        }
    }

    async fn evaluate(
        &self,
        matched: Matched<'_>,
        request: &Request<'_>,
    ) -> Result<Admission, Refused> {
        let policy = &*self.policy;
        let Some(route) = matched.route else {
            return Err(Refusal::new(ErrorCode::NotFound, Values::default()));
        };
        let rules = &route.request;
        if rules.json && !request::is_json(request.headers) {
            return Err(Refusal::new(
                ErrorCode::UnsupportedMediaType,
                Values::default(),
            ));
        }
        let body = if let BodyNeed::Read { max } = matched.body {
            let bytes = request.body.unwrap_or_default();
            if u64::try_from(bytes.len()).unwrap_or(u64::MAX) > max {
                return Err(Refusal::new(
                    ErrorCode::BodyTooLarge,
                    Values {
                        max_size: Some(max),
                        ..Values::default()
                    },
                ));
            }
            if rules.json || !rules.fields.0.is_empty() {
                Some(request::parse_object(bytes)?)
            } else {
                // Read only for an identity or key it may carry: a body that is not a JSON
                // object simply carries none.
                request::parse_object(bytes).ok()
            }
        } else {
            None
        };
        let key = self.authenticate(route, request, body.as_ref())?;
        if let Some(body) = &body {
            request::validate_fields(&rules.fields, body)?;
            self.probe_resources(route, body).await?;
        }
        let context = Context {
            policy,
            request,
            body: body.as_ref(),
            key: key.as_deref(),
        };
        self.decide(route, &context).await
    }

    /// Probes every linked resource whose rule asks for it (fields already validated).
    async fn probe_resources(
        &self,
        route: &Route,
        body: &Map<String, Value>,
    ) -> Result<(), Refused> {
        let Some(probe) = &self.probe else {
            return Ok(());
        };
        for (field, rule) in &route.request.fields.0 {
            let Some(url_rule) = rule.url.as_ref().filter(|url_rule| url_rule.probe) else {
                continue;
            };
            let (Some(max), Some(url)) = (
                url_rule.max_resource_size,
                request::lookup(body, field).and_then(Value::as_str),
            ) else {
                continue;
            };
            match probe.check(url, max.0, url_rule.allow_private).await {
                ProbeOutcome::Within => {}
                ProbeOutcome::TooLarge => {
                    return Err(Refusal::new(
                        ErrorCode::ResourceTooLarge,
                        Values {
                            field: Some(field.clone()),
                            max_size: Some(max.0),
                            ..Values::default()
                        },
                    ));
                }
                ProbeOutcome::Unavailable(reason) => {
                    return Err(Refusal::new(
                        ErrorCode::InvalidField,
                        Values {
                            field: Some(field.clone()),
                            reason: Some(reason),
                            ..Values::default()
                        },
                    ));
                }
            }
        }
        Ok(())
    }

    fn authenticate(
        &self,
        route: &Route,
        request: &Request<'_>,
        body: Option<&Map<String, Value>>,
    ) -> Result<Option<Arc<KeyRecord>>, Refused> {
        let Some(auth) = &self.policy.authentication else {
            return Ok(None);
        };
        if !route.authenticate {
            return Ok(None);
        }
        let refuse = |code| Err(Refusal::new(code, Values::default()));
        let secret = match &auth.api_key {
            KeySource::Body { field } => body
                .and_then(|body| request::lookup(body, field))
                .and_then(Value::as_str),
            KeySource::Header { name } => request
                .headers
                .get(name.as_str())
                .and_then(|value| value.to_str().ok()),
            KeySource::Bearer => request
                .headers
                .get(http::header::AUTHORIZATION)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| {
                    let (scheme, token) = value.trim().split_once(' ')?;
                    scheme
                        .eq_ignore_ascii_case("bearer")
                        .then_some(token.trim())
                }),
        };
        let Some(secret) = secret.filter(|secret| !secret.is_empty()) else {
            return refuse(ErrorCode::MissingApiKey);
        };
        let key = self
            .keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .find(secret)
            .cloned();
        let Some(key) = key else {
            return refuse(ErrorCode::InvalidApiKey);
        };
        let expired = key
            .expires_at
            .is_some_and(|expires_at| expires_at <= self.clock.now());
        if key.status == KeyStatus::Revoked || expired {
            return refuse(ErrorCode::RevokedApiKey);
        }
        if let Some(environment) = &auth.environment
            && key.environment.as_ref() != Some(environment)
        {
            return refuse(ErrorCode::WrongEnvironment);
        }
        if key.status == KeyStatus::Suspended {
            let blocked = match auth.inactive_subscription_blocks {
                InactiveBlocks::All => true,
                InactiveBlocks::None => false,
                InactiveBlocks::Writes => !matches!(request.method, "GET" | "HEAD" | "OPTIONS"),
            };
            if blocked {
                return refuse(ErrorCode::SubscriptionInactive);
            }
        }
        Ok(Some(key))
    }

    async fn decide(&self, route: &Route, context: &Context<'_>) -> Result<Admission, Refused> {
        let policy = context.policy;
        // Overrides set at run time come before the policy's own.
        let runtime = self.runtime_overrides();
        let arrangement = runtime.iter().chain(&policy.overrides).find(|rule| {
            context.identity(&rule.identity).ok().flatten().as_deref() == Some(rule.value.as_str())
        });
        let plan = arrangement
            .and_then(|rule| rule.plan.as_deref())
            .or_else(|| context.key.and_then(|key| key.plan.as_deref()))
            .or(policy.default_plan.as_deref())
            .and_then(|name| policy.plans.get(name));

        let mut counted: SmallVec<[Counted<'_>; 4]> = SmallVec::new();
        for rule in &route.limits {
            counted.push(Counted::Limit(replaced(arrangement, rule)));
        }
        if let Some(plan) = plan {
            counted.extend(plan.limits.iter().map(Counted::Limit));
            for name in &route.quotas {
                if let Some(quota) = plan.quotas.iter().find(|quota| &quota.name == name) {
                    counted.push(Counted::Quota(quota));
                }
            }
        }
        counted.extend(self.penalties.iter().map(Counted::Block));

        let mut transitions: SmallVec<[Transition<'_>; 4]> = SmallVec::new();
        for item in &counted {
            let (per, counter, limit, cost) = match item {
                Counted::Limit(rule) => (&rule.per, &rule.counter, &rule.limit, rule.cost),
                Counted::Quota(rule) => (&rule.per, &rule.counter, &rule.limit, 1),
                Counted::Block(penalty) => {
                    (&penalty.per, &penalty.block_counter, &penalty.block, 0)
                }
            };
            transitions.push(Transition {
                key: CounterKey::new(&context.scope(per)?, counter.as_bytes()),
                limit,
                op: Op::Acquire { cost },
            });
        }
        if transitions.is_empty() {
            return Ok(Admission::default());
        }

        let (decision, local) = match self.apply(&transitions).await {
            Ok(decision) => (decision, false),
            Err(refused) => {
                self.meters.store_failed(route.on_store_failure);
                match route.on_store_failure {
                    // Availability over the limits, as the route asks: admitted uncounted.
                    StoreFailure::Open => return Ok(Admission::default()),
                    StoreFailure::Closed => return Err(refused),
                    StoreFailure::Local => match self.decide_locally(&counted, &transitions) {
                        Some(decision) => (decision, true),
                        None => return Err(refused),
                    },
                }
            }
        };
        let shadowed = if self.any_shadow {
            self.count_shadowed(&counted, &decision)
        } else {
            None
        };
        let headers = self.headers(&counted, &decision, None);

        // A blocked identity is refused whatever its limits said; what it just took is given
        // back, so the block costs it nothing after it ends.
        if let Some(wait) = blocked(&counted, &decision) {
            if decision.allowed() {
                self.release_all(&transitions, decision.now()).await;
            }
            return Err(self.blocked(&counted, &decision, wait));
        }
        if let Some(index) = decision.denied_by() {
            // Penalties live in the shared store; counting apart, they wait for it.
            if !local && let Some(wait) = self.strike(context).await? {
                return Err(self.blocked(&counted, &decision, wait));
            }
            let status = decision.limits().get(index);
            let retry = decision.retry().and_then(retry_wait);
            match counted.get(index) {
                Some(Counted::Limit(rule)) => self.meters.denied_by(&rule.name),
                Some(Counted::Quota(quota)) => self.meters.denied_by(&quota.name),
                _ => {}
            }
            let (code, values) = match counted.get(index) {
                Some(Counted::Quota(quota)) => (
                    ErrorCode::QuotaExceeded,
                    Values {
                        retry: status.map(|status| until(status, &decision)),
                        limit: Some(quota.amount),
                        ..Values::default()
                    },
                ),
                Some(Counted::Limit(rule)) if rule.limit.algorithm() == Algorithm::Concurrency => (
                    ErrorCode::ConcurrencyExceeded,
                    Values {
                        limit: Some(rule.rate.count),
                        ..Values::default()
                    },
                ),
                Some(Counted::Limit(rule)) => (
                    ErrorCode::RateLimited,
                    Values {
                        retry,
                        limit: Some(rule.rate.count),
                        window: Some(rule.rate.span),
                        ..Values::default()
                    },
                ),
                _ => (ErrorCode::Internal, Values::default()),
            };
            return Err(Box::new(Refusal {
                code,
                values,
                headers,
            }));
        }

        for item in &counted {
            if let Counted::Quota(quota) = item {
                self.meters.quota(&quota.name, 1);
            }
        }
        let mut settle = Vec::new();
        for (item, transition) in counted.iter().zip(&transitions) {
            // Rate limits count every admitted request, whatever the upstream answers; only
            // concurrency slots and quotas that count successes are settled afterwards.
            let always = match item {
                Counted::Limit(rule) if rule.limit.algorithm() == Algorithm::Concurrency => true,
                Counted::Quota(rule) if rule.counts == QuotaCounts::Successful => false,
                Counted::Limit(_) | Counted::Quota(_) | Counted::Block(_) => continue,
            };
            let Op::Acquire { cost } = transition.op else {
                continue;
            };
            settle.push(verdict::Settle {
                key: transition.key.clone(),
                limit: transition.limit.clone(),
                cost,
                always,
            });
        }
        Ok(Admission {
            headers,
            shadowed,
            settle,
            acquired_at: decision.now(),
            held_at: decision.now(),
            local,
        })
    }

    /// The request counted on this instance alone, each limit divided by the live instances
    /// (penalties, which need the shared counts, left out); `None` when a limit is too small
    /// to divide.
    fn decide_locally(
        &self,
        counted: &[Counted<'_>],
        transitions: &[Transition<'_>],
    ) -> Option<Decision> {
        let parts = self.store.live_instances();
        let shares: SmallVec<[Limit; 4]> = counted
            .iter()
            .zip(transitions)
            .filter(|(item, _)| !matches!(item, Counted::Block(_)))
            .map(|(_, transition)| transition.limit.divided(parts))
            .collect::<Option<_>>()?;
        // Penalties come last in `counted`, so what remains keeps its indices.
        let local: SmallVec<[Transition<'_>; 4]> = transitions
            .iter()
            .zip(&shares)
            .map(|(transition, share)| Transition {
                key: transition.key.clone(),
                limit: share,
                op: transition.op,
            })
            .collect();
        self.local.apply_now(&local).ok()
    }

    async fn apply(&self, transitions: &[Transition<'_>]) -> Result<Decision, Refused> {
        let started = self.clock.now();
        let decision = self.store.apply(transitions).await;
        self.meters.store_seconds.record(
            self.clock
                .now()
                .saturating_duration_since(started)
                .as_secs_f64(),
        );
        decision.map_err(|_| Refusal::new(ErrorCode::StoreUnavailable, Values::default()))
    }

    async fn release_all(&self, transitions: &[Transition<'_>], acquired_at: Timestamp) {
        let releases: SmallVec<[Transition<'_>; 4]> = transitions
            .iter()
            .filter_map(|transition| match transition.op {
                Op::Acquire { cost } if cost > 0 => Some(Transition {
                    key: transition.key.clone(),
                    limit: transition.limit,
                    op: Op::Release { cost, acquired_at },
                }),
                _ => None,
            })
            .collect();
        if !releases.is_empty() {
            let _ = self.store.apply(&releases).await;
        }
    }

    /// Counts a denial against every penalty of the identity; when one runs out of strikes, the
    /// identity is blocked. Returns the block's length when that happened.
    async fn strike(&self, context: &Context<'_>) -> Result<Option<Duration>, Refused> {
        for penalty in &self.penalties {
            let scope = context.scope(&penalty.per)?;
            let strike = [Transition {
                key: CounterKey::new(&scope, penalty.strikes_counter.as_bytes()),
                limit: &penalty.strikes,
                op: Op::Acquire { cost: 1 },
            }];
            if self.apply(&strike).await?.allowed() {
                continue;
            }
            let block = [Transition {
                key: CounterKey::new(&scope, penalty.block_counter.as_bytes()),
                limit: &penalty.block,
                op: Op::Acquire { cost: 1 },
            }];
            let decision = self.apply(&block).await?;
            let wait = decision
                .limits()
                .first()
                .map_or(Duration::ZERO, |status| until(status, &decision));
            return Ok(Some(wait));
        }
        Ok(None)
    }

    fn blocked(&self, counted: &[Counted<'_>], decision: &Decision, wait: Duration) -> Refused {
        Box::new(Refusal {
            code: ErrorCode::Blocked,
            values: Values {
                retry: Some(wait),
                ..Values::default()
            },
            headers: self.headers(counted, decision, Some(wait)),
        })
    }

    /// Counts, by name, the limits in shadow mode that would have refused the request, and
    /// names them (`None` when none would have).
    #[cold]
    fn count_shadowed(
        &self,
        counted: &[Counted<'_>],
        decision: &Decision,
    ) -> Option<Box<[String]>> {
        let mut names = Vec::new();
        for (item, status) in counted.iter().zip(decision.limits()) {
            if status.would_deny()
                && let Counted::Limit(rule) = item
            {
                self.meters.shadow_denied(&rule.name);
                names.push(rule.name.clone());
            }
        }
        (!names.is_empty()).then(|| names.into_boxed_slice())
    }

    /// The policy's rate-limit headers for the rate limits of `decision` (quotas and penalties
    /// are not rate limits; nor, to clients, are limits in shadow mode), with `Retry-After` no
    /// earlier than `at_least`.
    fn headers(
        &self,
        counted: &[Counted<'_>],
        decision: &Decision,
        at_least: Option<Duration>,
    ) -> HeaderList {
        let mut views: SmallVec<[LimitView; 4]> = counted
            .iter()
            .zip(decision.limits())
            .filter_map(|(item, status)| match item {
                // A limit in shadow mode is on trial: clients are not told of it.
                Counted::Limit(rule) if !rule.limit.is_shadow() => Some(LimitView {
                    name: &rule.name,
                    limit: status.limit(),
                    remaining: status.remaining(),
                    window: rule.rate.span,
                    reset_after: until(status, decision),
                    retry: status.retry().and_then(retry_wait),
                }),
                _ => None,
            })
            .collect();
        if let Some(wait) = at_least
            && let Some(view) = views.first_mut()
        {
            // A block outlasts every limit: the closest limit shows it.
            view.retry = Some(view.retry.map_or(wait, |retry| retry.max(wait)));
        }
        let now = Duration::from_nanos(decision.now().as_nanos());
        let mut headers = rate_limit_headers(&self.policy.headers, &views, now);
        if views.is_empty()
            && let Some(wait) = at_least
        {
            headers.push((http::header::RETRY_AFTER, decimal_value(ceil_seconds(wait))));
        }
        headers
    }
}

/// The limit `rule` as `arrangement` (a per-customer override) replaces it, if it does.
fn replaced<'p>(arrangement: Option<&'p OverrideRule>, rule: &'p LimitRule) -> &'p LimitRule {
    arrangement
        .and_then(|arrangement| arrangement.limits.get(&rule.name))
        .unwrap_or(rule)
}

/// How long from the decision until `status` resets.
fn until(status: &LimitStatus, decision: &Decision) -> Duration {
    status.reset().saturating_duration_since(decision.now())
}

fn retry_wait(retry: Retry) -> Option<Duration> {
    match retry {
        Retry::After(wait) => Some(wait),
        // A concurrency slot frees when a request finishes; a second is a fair first guess.
        Retry::OnRelease => Some(Duration::from_secs(1)),
        Retry::Never => None,
    }
}

/// The block's remaining time, when a penalty blocks the identity.
fn blocked(counted: &[Counted<'_>], decision: &Decision) -> Option<Duration> {
    counted
        .iter()
        .zip(decision.limits())
        .filter(|(item, status)| matches!(item, Counted::Block(_)) && status.remaining() == 0)
        .map(|(_, status)| until(status, decision))
        .max()
}

/// Managing the keys kept in the store; every change is seen from the next request on.
impl<S: CounterStore + RecordStore> Service<S> {
    /// Reads the store's keys again (beside the keys file's) and serves from them; returns how
    /// many keys the service now knows.
    pub async fn reload_keys(&self) -> Result<usize, StoreError> {
        let mut records = self.file_keys.clone();
        records.extend(keys::stored_records(&self.store).await?);
        let ring = Arc::new(KeyRing::new(records));
        let count = ring.len();
        *self.keys.write().unwrap_or_else(PoisonError::into_inner) = ring;
        Ok(count)
    }

    /// The keys kept in the store (the keys file's are not listed).
    pub async fn list_keys(&self) -> Result<Vec<StoredKey>, KeyError> {
        Ok(keys::stored_keys(&self.store)
            .await?
            .into_iter()
            .map(|(_, key)| key)
            .collect())
    }

    /// Creates a key; its secret is in the answer and nowhere else.
    pub async fn create_key(&self, new: NewKey) -> Result<IssuedKey, KeyError> {
        let issued = keys::create_key(&self.store, &self.policy, new, self.clock.now()).await?;
        self.reload_keys().await?;
        Ok(issued)
    }

    /// Replaces key `id` by a new secret; the old one works for `grace` more.
    pub async fn rotate_key(&self, id: &str, grace: Duration) -> Result<IssuedKey, KeyError> {
        let issued = keys::rotate_key(&self.store, id, grace, self.clock.now()).await?;
        self.reload_keys().await?;
        Ok(issued)
    }

    /// Sets key `id`'s status (revoke, suspend, or reinstate).
    pub async fn set_key_status(&self, id: &str, status: KeyStatus) -> Result<StoredKey, KeyError> {
        let key = keys::set_status(&self.store, id, status).await?;
        self.reload_keys().await?;
        Ok(key)
    }
}

/// An identity a request gives twice, with different values.
#[derive(Debug)]
pub(crate) struct Ambiguous;

/// Everything known about the request once it is authenticated and valid.
struct Context<'a> {
    policy: &'a Policy,
    request: &'a Request<'a>,
    body: Option<&'a Map<String, Value>>,
    key: Option<&'a KeyRecord>,
}

impl Context<'_> {
    /// The value of identity `name` for this request: `None` when the request does not carry
    /// it. Borrowed from the request or the key where it is there verbatim. A header or query
    /// parameter given twice with different values is [`Ambiguous`]: which one an upstream acts
    /// on differs from framework to framework (the first, the last, both), and counting another
    /// than the one it acts on would let a client spend someone else's allowance instead of its
    /// own.
    fn identity(&self, name: &str) -> Result<Option<Cow<'_, str>>, Ambiguous> {
        let Some(source) = self.policy.identities.get(name) else {
            return Ok(None);
        };
        Ok(match source {
            IdentitySource::Header { name } => {
                let mut values = self.request.headers.get_all(name.as_str()).iter();
                let first = values.next();
                if values.any(|value| Some(value) != first) {
                    return Err(Ambiguous);
                }
                first
                    .and_then(|value| value.to_str().ok())
                    .map(Cow::Borrowed)
            }
            IdentitySource::Query { name } => {
                request::query_param(self.request.query, name)?.map(Cow::Owned)
            }
            IdentitySource::Body { field } => self
                .body
                .and_then(|body| request::lookup(body, field))
                .and_then(|value| match value {
                    Value::String(text) => Some(Cow::Borrowed(text.as_str())),
                    Value::Number(number) => Some(Cow::Owned(request::canonical_number(number))),
                    _ => None,
                }),
            IdentitySource::Key { attribute } => self.key.map(|key| {
                let value = match attribute {
                    KeyAttribute::Key => None,
                    KeyAttribute::Owner => key.owner.as_ref(),
                    KeyAttribute::Team => key.team.as_ref(),
                    KeyAttribute::Site => key.site.as_ref(),
                };
                // A key without the attribute counts on its own.
                Cow::Borrowed(value.unwrap_or(&key.id).as_str())
            }),
            IdentitySource::ClientIp => request::client_ip(
                self.request.peer,
                self.request.headers,
                &self.policy.trusted_proxies,
            )
            .map(|ip| Cow::Owned(request::client_name(ip, self.policy.ipv6_prefix))),
        })
    }

    /// The counter scope of `per` for this request, e.g. `user=42`: on the stack unless long.
    fn scope(&self, per: &Scope) -> Result<SmallVec<[u8; 64]>, Refused> {
        let Scope::Identity(name) = per else {
            return Ok(SmallVec::from_slice(b"*"));
        };
        match self.identity(name) {
            Err(Ambiguous) => Err(Refusal::new(
                ErrorCode::InvalidField,
                Values {
                    field: Some(self.source_name(name)),
                    reason: Some("is given more than once, with different values".to_owned()),
                    ..Values::default()
                },
            )),
            Ok(Some(value)) => {
                let mut scope = SmallVec::with_capacity(name.len() + 1 + value.len());
                scope.extend_from_slice(name.as_bytes());
                scope.push(b'=');
                scope.extend_from_slice(value.as_bytes());
                Ok(scope)
            }
            Ok(None) => Err(Refusal::new(
                ErrorCode::MissingField,
                Values {
                    field: Some(self.source_name(name)),
                    ..Values::default()
                },
            )),
        }
    }

    /// Where identity `name` is read from, as a client would name it.
    fn source_name(&self, name: &str) -> String {
        match self.policy.identities.get(name) {
            Some(IdentitySource::Header { name }) => name.clone(),
            Some(IdentitySource::Query { name }) => name.clone(),
            Some(IdentitySource::Body { field }) => field.clone(),
            Some(IdentitySource::Key { .. }) | Some(IdentitySource::ClientIp) | None => {
                name.to_owned()
            }
        }
    }
}
