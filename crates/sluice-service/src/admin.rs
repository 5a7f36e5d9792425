//! What an operator does to a running deployment, behind the admin API: see an identity's usage
//! of every limit and quota that applies to it, reset its counters, and give it a custom
//! arrangement (a plan, replaced route limits) that takes effect on its next request.
//!
//! Run-time overrides are kept in the store as records (identity=value → JSON of
//! [`OverrideSpec`]), so they survive restarts and every gateway sharing the store applies them.
//! A replaced limit keeps its counter: raising a limit from 100 to 200 per minute leaves what was
//! counted this minute counted.

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError};

use serde::{Deserialize, Serialize};
use sluice_core::{CounterKey, Limit, Op, Transition};
use sluice_policy::{IdentitySource, KeyAttribute, KeyRecord, OverrideRule, Scope};
use sluice_store::{CounterStore, RecordStore, RecordTable, StoreError};

use crate::Service;

/// A custom arrangement for one identity value, as the admin API takes and shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverrideSpec {
    /// The identity (declared in the policy), e.g. `site`.
    pub identity: String,
    /// Its value, e.g. `site_enterprise_example`.
    pub value: String,
    /// The plan it gets instead of its key's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    /// Route limits replaced, by name, with their new rates (`"10000 per 1m"`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub limits: BTreeMap<String, String>,
}

/// One limit or quota as it stands for one identity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// The limit's or quota's name.
    pub name: String,
    /// `limit` or `quota`.
    pub kind: &'static str,
    /// Whether it is a limit in shadow mode: counted, never enforced.
    pub shadow: bool,
    /// Its capacity in the current window.
    pub limit: u64,
    /// How much of it is used.
    pub used: u64,
    /// How much is left.
    pub remaining: u64,
    /// When it is whole again, Unix seconds.
    pub reset: u64,
}

/// Why an operator's request was refused.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The request names something the policy does not have, or is malformed.
    #[error("{0}")]
    Invalid(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One counter that applies to an identity.
struct Applies<'a> {
    name: &'a str,
    kind: &'static str,
    counter: &'a str,
    limit: &'a Limit,
}

impl<S: CounterStore + RecordStore> Service<S> {
    /// Reads what the store keeps for the service (API keys, run-time overrides) again; a
    /// server calls it on start.
    pub async fn reload(&self) -> Result<(), AdminError> {
        self.reload_keys().await?;
        self.reload_overrides().await?;
        Ok(())
    }

    /// Reads the run-time overrides from the store again; returns how many there are.
    pub async fn reload_overrides(&self) -> Result<usize, AdminError> {
        let mut rules = Vec::new();
        for spec in self.list_overrides().await? {
            rules.push(self.compile_override(&spec)?);
        }
        let count = rules.len();
        *self
            .runtime_overrides
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(rules);
        Ok(count)
    }

    /// The overrides set at run time (the policy's own are not listed).
    pub async fn list_overrides(&self) -> Result<Vec<OverrideSpec>, AdminError> {
        let mut specs = Vec::new();
        for (_, value) in self.store.records(RecordTable::Overrides).await? {
            specs.push(serde_json::from_slice(&value).map_err(|_| {
                AdminError::Store(StoreError::Storage(
                    "a stored override is unreadable".into(),
                ))
            })?);
        }
        Ok(specs)
    }

    /// Sets (or replaces) the override for `spec.identity` = `spec.value`, from the next request
    /// on.
    pub async fn set_override(&self, spec: OverrideSpec) -> Result<(), AdminError> {
        self.compile_override(&spec)?;
        let value =
            serde_json::to_vec(&spec).map_err(|error| AdminError::Invalid(error.to_string()))?;
        self.store
            .put_record(
                RecordTable::Overrides,
                record_id(&spec.identity, &spec.value).as_bytes(),
                Some(&value),
            )
            .await?;
        self.reload_overrides().await?;
        Ok(())
    }

    /// Removes the run-time override of `identity` = `value`; whether there was one.
    pub async fn remove_override(&self, identity: &str, value: &str) -> Result<bool, AdminError> {
        let existed = self
            .list_overrides()
            .await?
            .iter()
            .any(|spec| spec.identity == identity && spec.value == value);
        self.store
            .put_record(
                RecordTable::Overrides,
                record_id(identity, value).as_bytes(),
                None,
            )
            .await?;
        self.reload_overrides().await?;
        Ok(existed)
    }

    /// Every limit and quota that applies to `identity` = `value`, as it stands now.
    pub async fn usage(&self, identity: &str, value: &str) -> Result<Vec<Usage>, AdminError> {
        self.counters(identity, value, None, Op::Acquire { cost: 0 })
            .await
    }

    /// Resets the counters of `identity` = `value` (only the limit or quota `name`, if given) and
    /// returns its usage afterwards.
    pub async fn reset(
        &self,
        identity: &str,
        value: &str,
        name: Option<&str>,
    ) -> Result<Vec<Usage>, AdminError> {
        let reset = self.counters(identity, value, name, Op::Reset).await?;
        if reset.is_empty() {
            return Err(AdminError::Invalid(match name {
                Some(name) => format!("no limit or quota `{name}` applies to {identity}={value}"),
                None => format!("no limit or quota applies to {identity}={value}"),
            }));
        }
        self.usage(identity, value).await
    }

    fn compile_override(&self, spec: &OverrideSpec) -> Result<OverrideRule, AdminError> {
        self.policy
            .runtime_override(
                &spec.identity,
                &spec.value,
                spec.plan.as_deref(),
                &spec.limits,
            )
            .map_err(AdminError::Invalid)
    }

    async fn counters(
        &self,
        identity: &str,
        value: &str,
        only: Option<&str>,
        op: Op,
    ) -> Result<Vec<Usage>, AdminError> {
        let policy = &*self.policy;
        if !policy.identities.contains_key(identity) {
            return Err(AdminError::Invalid(format!(
                "identity `{identity}` is not declared in the policy"
            )));
        }
        let runtime = self.runtime_overrides();
        let arrangement = runtime
            .iter()
            .chain(&policy.overrides)
            .find(|rule| rule.identity == identity && rule.value == value);
        let ring = self.key_ring();
        let plan = arrangement
            .and_then(|rule| rule.plan.as_deref())
            .or_else(|| {
                let Some(IdentitySource::Key { attribute }) = policy.identities.get(identity)
                else {
                    return None;
                };
                ring.records()
                    .find(|key| attribute_of(key, *attribute) == Some(value))
                    .and_then(|key| key.plan.as_deref())
            })
            .or(policy.default_plan.as_deref())
            .and_then(|name| policy.plans.get(name));

        let mine = |per: &Scope| matches!(per, Scope::Identity(name) if name == identity);
        let mut applies: Vec<Applies<'_>> = Vec::new();
        for rule in policy.routes.iter().flat_map(|route| &route.limits) {
            let rule = arrangement
                .and_then(|arrangement| arrangement.limits.get(&rule.name))
                .unwrap_or(rule);
            if mine(&rule.per) {
                applies.push(Applies {
                    name: &rule.name,
                    kind: "limit",
                    counter: &rule.counter,
                    limit: &rule.limit,
                });
            }
        }
        if let Some(plan) = plan {
            for rule in plan.limits.iter().filter(|rule| mine(&rule.per)) {
                applies.push(Applies {
                    name: &rule.name,
                    kind: "limit",
                    counter: &rule.counter,
                    limit: &rule.limit,
                });
            }
            for quota in plan.quotas.iter().filter(|quota| mine(&quota.per)) {
                applies.push(Applies {
                    name: &quota.name,
                    kind: "quota",
                    counter: &quota.counter,
                    limit: &quota.limit,
                });
            }
        }
        applies.retain(|applies| only.is_none_or(|name| name == applies.name));
        let mut seen = std::collections::HashSet::new();
        applies.retain(|applies| seen.insert(applies.counter));
        if applies.is_empty() {
            return Ok(Vec::new());
        }

        let scope = format!("{identity}={value}");
        let transitions: Vec<Transition<'_>> = applies
            .iter()
            .map(|applies| Transition {
                key: CounterKey::new(scope.as_bytes(), applies.counter.as_bytes()),
                limit: applies.limit,
                op,
            })
            .collect();
        let decision = self.store.apply(&transitions).await?;
        Ok(applies
            .iter()
            .zip(decision.limits())
            .map(|(applies, status)| Usage {
                name: applies.name.to_owned(),
                kind: applies.kind,
                shadow: applies.limit.is_shadow(),
                limit: status.limit(),
                used: status.limit().saturating_sub(status.remaining()),
                remaining: status.remaining(),
                reset: status.reset().as_secs(),
            })
            .collect())
    }
}

fn attribute_of(key: &KeyRecord, attribute: KeyAttribute) -> Option<&str> {
    match attribute {
        KeyAttribute::Key => Some(&key.id),
        KeyAttribute::Owner => key.owner.as_deref(),
        KeyAttribute::Team => key.team.as_deref(),
        KeyAttribute::Site => key.site.as_deref(),
    }
}

fn record_id(identity: &str, value: &str) -> String {
    format!("{identity}={value}")
}
