//! Holds: an admitted request that its caller settles later, carried by the caller as a token.
//!
//! The decision API answers for calls it never sees end. A check that asks to hold its
//! admission gets a token instead of being settled at once; the caller hands it back when the
//! call is over, with its outcome, and the service settles it as the proxy settles a request it
//! forwarded: a concurrency slot given back, a quota that counts only successful calls refunded.
//!
//! The token is the admission itself (the counters to settle, under their limits, and the
//! instant they were taken at), so any gateway sharing the store settles it, after a restart
//! too. It is not signed: a caller of the decision API enforces the decisions it gets, and one
//! that meant to break its limits would ignore them rather than forge a token.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sluice_core::{Algorithm, CounterKey, Limit, MonthlyCycle, Period, Timestamp};

use crate::verdict::{Admission, Settle};

/// Why a hold token was refused.
#[derive(Debug, thiserror::Error)]
#[error("not a hold this API issued: {0}")]
pub struct HoldError(String);

/// A hold renewed ([`crate::Service::renew_hold`]).
#[derive(Debug)]
pub struct RenewedHold {
    /// The token that settles, or renews, the hold from now on; the old one would give its
    /// slots back by a period they no longer count in.
    pub token: String,
    /// When to renew it next, at the latest ([`Admission::renew_every`]).
    pub renew_every: Option<Duration>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Hold {
    /// When the counts were taken, in ns since the epoch.
    at: u64,
    /// When the concurrency slots were last renewed, if since (ns since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    held: Option<u64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    local: bool,
    counts: Vec<Count>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Count {
    /// The counter's key, base64url.
    key: String,
    cost: u64,
    /// Given back whatever the outcome (a concurrency slot), else only on failure.
    always: bool,
    limit: Kind,
}

/// The limits a settle gives back to: what a release needs of them (their windows).
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum Kind {
    Concurrency {
        capacity: u64,
        lease_ns: u64,
    },
    Window {
        capacity: u64,
        span_ns: u64,
    },
    Monthly {
        capacity: u64,
        anchor_day: u8,
        time_zone: String,
    },
}

impl Admission {
    /// The token that settles this admission through [`crate::Service::settle_hold`].
    pub fn hold_token(&self) -> String {
        let counts = self
            .settle
            .iter()
            .filter_map(|settle| {
                Some(Count {
                    key: URL_SAFE_NO_PAD.encode(settle.key.encoded()),
                    cost: settle.cost,
                    always: settle.always,
                    limit: kind(&settle.limit)?,
                })
            })
            .collect();
        let hold = Hold {
            at: self.acquired_at.as_nanos(),
            held: (self.held_at != self.acquired_at).then(|| self.held_at.as_nanos()),
            local: self.local,
            counts,
        };
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&hold).unwrap_or_default())
    }

    /// The admission `token` carries.
    pub(crate) fn from_hold_token(token: &str) -> Result<Admission, HoldError> {
        let bytes = URL_SAFE_NO_PAD
            .decode(token.trim())
            .map_err(|error| HoldError(error.to_string()))?;
        let hold: Hold =
            serde_json::from_slice(&bytes).map_err(|error| HoldError(error.to_string()))?;
        let settle = hold
            .counts
            .into_iter()
            .map(|count| {
                let key = URL_SAFE_NO_PAD
                    .decode(&count.key)
                    .map_err(|error| HoldError(error.to_string()))?;
                Ok(Settle {
                    key: CounterKey::from_encoded(&key),
                    limit: limit(count.limit)?,
                    cost: count.cost,
                    always: count.always,
                })
            })
            .collect::<Result<_, HoldError>>()?;
        Ok(Admission {
            headers: Vec::new(),
            shadowed: None,
            settle,
            acquired_at: Timestamp::from_nanos(hold.at),
            held_at: Timestamp::from_nanos(hold.held.unwrap_or(hold.at)),
            local: hold.local,
        })
    }
}

/// What a token says of `limit`: the limits admissions settle are concurrency limits and
/// quotas (fixed windows), and nothing else is ever settled.
fn kind(limit: &Limit) -> Option<Kind> {
    let capacity = limit.capacity();
    match (limit.algorithm(), limit.period()) {
        (Algorithm::Concurrency, Period::Span(span)) => Some(Kind::Concurrency {
            capacity,
            lease_ns: *span,
        }),
        (Algorithm::FixedWindow, Period::Span(span)) => Some(Kind::Window {
            capacity,
            span_ns: *span,
        }),
        (Algorithm::FixedWindow, Period::Monthly(cycle)) => Some(Kind::Monthly {
            capacity,
            anchor_day: cycle.anchor_day(),
            time_zone: cycle.time_zone_name().unwrap_or("UTC").to_owned(),
        }),
        _ => None,
    }
}

fn limit(kind: Kind) -> Result<Limit, HoldError> {
    let invalid = |error: sluice_core::LimitError| HoldError(error.to_string());
    match kind {
        Kind::Concurrency { capacity, lease_ns } => {
            Limit::concurrency(capacity, Duration::from_nanos(lease_ns)).map_err(invalid)
        }
        Kind::Window { capacity, span_ns } => {
            Limit::fixed_window(capacity, Period::Span(span_ns)).map_err(invalid)
        }
        Kind::Monthly {
            capacity,
            anchor_day,
            time_zone,
        } => {
            let zone = MonthlyCycle::time_zone(&time_zone).map_err(invalid)?;
            let cycle = MonthlyCycle::anchored(anchor_day, zone).map_err(invalid)?;
            Limit::fixed_window(capacity, Period::Monthly(cycle)).map_err(invalid)
        }
    }
}
