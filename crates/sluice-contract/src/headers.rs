//! Rate-limit header dialects: `X-RateLimit-*`, the IETF `RateLimit-Policy` / `RateLimit` fields
//! (draft-ietf-httpapi-ratelimit-headers, structured-field syntax) and `Retry-After`.

use std::time::Duration;

use http::{HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};

use crate::words::ceil_seconds;

/// How `X-RateLimit-Reset` counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResetUnit {
    /// The Unix time, in seconds, at which the window resets (GitHub, Pixel Patrol).
    #[default]
    UnixSeconds,
    /// Seconds from now until the reset.
    Seconds,
    /// Milliseconds from now until the reset.
    Millis,
}

/// Which rate-limit headers an API sends. `Retry-After` is sent on every 429 whatever the
/// dialect.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderDialect {
    /// `X-RateLimit-Limit`, `-Remaining` and `-Reset` for the limit closest to denying, with
    /// the reset counted this way; absent to send none.
    #[serde(default)]
    pub x_ratelimit: Option<ResetUnit>,
    /// `RateLimit-Policy` and `RateLimit` for every limit the request touched.
    #[serde(default)]
    pub ietf: bool,
}

/// One limit as a request left it, in the terms headers speak.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitView<'a> {
    /// The policy's name for the limit (the IETF policy name).
    pub name: &'a str,
    /// Capacity per window.
    pub limit: u64,
    /// Units still available now.
    pub remaining: u64,
    /// The window.
    pub window: Duration,
    /// How long until `remaining` is back to `limit`.
    pub reset_after: Duration,
    /// Set when this limit denied the request: how long until it would admit it.
    pub retry: Option<Duration>,
}

impl LimitView<'_> {
    /// Seconds until this limit stops being in the way: the retry for a limit that denied, the
    /// reset otherwise. The IETF `t` parameter.
    fn wait(&self) -> Duration {
        self.retry.unwrap_or(self.reset_after)
    }
}

// Built when compiling: `HeaderName::from_static` at run time checks its name against the
// standard headers' table on every call, 900 instructions a proxied request for these three.
const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// The headers for a decision over `limits`, made at `now` (time since the Unix epoch).
///
/// `Retry-After` is present exactly when some limit denied, and is the longest such wait in
/// whole seconds rounded up: never earlier than any `t` the IETF fields advertise.
pub fn rate_limit_headers(
    dialect: &HeaderDialect,
    limits: &[LimitView<'_>],
    now: Duration,
) -> Vec<(HeaderName, HeaderValue)> {
    let mut headers = Vec::with_capacity(4);
    if let (Some(unit), Some(closest)) = (dialect.x_ratelimit, closest(limits)) {
        let reset = match unit {
            ResetUnit::UnixSeconds => ceil_seconds(now.saturating_add(closest.reset_after)),
            ResetUnit::Seconds => ceil_seconds(closest.reset_after),
            ResetUnit::Millis => u64::try_from(closest.reset_after.as_nanos().div_ceil(1_000_000))
                .unwrap_or(u64::MAX),
        };
        headers.push((X_RATELIMIT_LIMIT, decimal_value(closest.limit)));
        headers.push((X_RATELIMIT_REMAINING, decimal_value(closest.remaining)));
        headers.push((X_RATELIMIT_RESET, decimal_value(reset)));
    }
    if dialect.ietf && !limits.is_empty() {
        let policy = limits
            .iter()
            .map(|limit| {
                format!(
                    "{};q={};w={}",
                    sf_string(limit.name),
                    limit.limit,
                    ceil_seconds(limit.window)
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        let state = limits
            .iter()
            .map(|limit| {
                format!(
                    "{};r={};t={}",
                    sf_string(limit.name),
                    limit.remaining,
                    ceil_seconds(limit.wait())
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        for (name, value) in [(RATELIMIT_POLICY, policy), (RATELIMIT, state)] {
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.push((name, value));
            }
        }
    }
    if let Some(wait) = limits.iter().filter_map(|limit| limit.retry).max() {
        headers.push((http::header::RETRY_AFTER, decimal_value(ceil_seconds(wait))));
    }
    headers
}

/// `number` as a header value, in one allocation of its exact size (`HeaderValue::from(u64)`
/// makes two: a 20-byte buffer, then the buffer trimmed). Every response carries three.
pub fn decimal_value(number: u64) -> HeaderValue {
    let mut digits = itoa::Buffer::new();
    // Digits are always a valid header value.
    HeaderValue::from_bytes(digits.format(number).as_bytes())
        .unwrap_or_else(|_| HeaderValue::from(number))
}

/// The limit a client should watch: the one that denied with the longest wait, or else the one
/// with the smallest share left.
fn closest<'v, 'a>(limits: &'v [LimitView<'a>]) -> Option<&'v LimitView<'a>> {
    if let Some(denied) = limits
        .iter()
        .filter(|limit| limit.retry.is_some())
        .max_by_key(|limit| limit.retry)
    {
        return Some(denied);
    }
    limits.iter().min_by(|a, b| {
        // remaining_a / limit_a < remaining_b / limit_b, without division.
        let left = u128::from(a.remaining).saturating_mul(u128::from(b.limit));
        let right = u128::from(b.remaining).saturating_mul(u128::from(a.limit));
        left.cmp(&right)
    })
}

/// A structured-field string (RFC 8941): quoted, with `"` and `\` escaped and anything outside
/// printable ASCII dropped.
fn sf_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len().saturating_add(2));
    out.push('"');
    for c in text.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => {}
        }
    }
    out.push('"');
    out
}
