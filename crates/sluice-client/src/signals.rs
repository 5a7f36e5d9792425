//! What a response says about when to come back: `Retry-After` (delay-seconds or HTTP-date),
//! `X-RateLimit-Limit/-Remaining/-Reset`, and the IETF `RateLimit` field (and its older
//! `RateLimit-Remaining`/`-Reset` spelling). Pure parsing: the caller passes the wall clock.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderMap;
use sluice_contract::ResetUnit;

/// The rate-limit state a response advertised.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RateLimitInfo {
    /// `X-RateLimit-Limit`, or the IETF policy's quota.
    pub limit: Option<u64>,
    /// Units left in the window: the smallest any header advertised.
    pub remaining: Option<u64>,
    /// How long until the window that has the least left resets.
    pub reset: Option<Duration>,
    /// `Retry-After`, as a wait from now.
    pub retry_after: Option<Duration>,
    /// When some limit has nothing left: how long until it has (the longest such wait).
    pub exhausted_for: Option<Duration>,
}

impl RateLimitInfo {
    /// Reads `headers` at wall-clock `now`; `unit` says how `X-RateLimit-Reset` counts, or
    /// `None` to guess from its size (past 10^12 Unix milliseconds, past 10^9 Unix seconds,
    /// else seconds from now).
    pub fn from_headers(headers: &HeaderMap, now: SystemTime, unit: Option<ResetUnit>) -> Self {
        let mut info = RateLimitInfo {
            retry_after: header(headers, "retry-after").and_then(|v| retry_after(v, now)),
            ..RateLimitInfo::default()
        };
        let number = |name: &str| header(headers, name).and_then(|v| v.trim().parse::<u64>().ok());
        let x_remaining = number("x-ratelimit-remaining");
        let x_reset = number("x-ratelimit-reset").map(|value| reset_wait(value, now, unit));
        info.limit = number("x-ratelimit-limit");
        info.note(x_remaining, x_reset);
        // The IETF draft's earlier, one-field-per-header spelling; its reset is delta-seconds.
        info.note(
            number("ratelimit-remaining"),
            number("ratelimit-reset").map(Duration::from_secs),
        );
        if let Some(value) = header(headers, "ratelimit") {
            for item in value.split(',') {
                let (remaining, reset) = ietf_item(item);
                info.note(remaining, reset);
            }
        }
        if info.limit.is_none()
            && let Some(value) = header(headers, "ratelimit-policy")
        {
            info.limit = value.split(',').filter_map(|item| param(item, "q")).min();
        }
        info
    }

    /// Records one advertised (remaining, reset) pair.
    fn note(&mut self, remaining: Option<u64>, reset: Option<Duration>) {
        let Some(remaining) = remaining else {
            return;
        };
        if self.remaining.is_none_or(|least| remaining < least) {
            self.remaining = Some(remaining);
            self.reset = reset;
        }
        if remaining == 0
            && let Some(reset) = reset
        {
            self.exhausted_for = Some(self.exhausted_for.map_or(reset, |w| w.max(reset)));
        }
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|value| value.to_str().ok())
}

/// `Retry-After` as a wait from `now`: delay-seconds, or an HTTP-date (a date in the past is
/// no wait at all).
pub fn retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

fn reset_wait(value: u64, now: SystemTime, unit: Option<ResetUnit>) -> Duration {
    let unit = unit.unwrap_or(if value >= 1_000_000_000_000 {
        ResetUnit::Millis
    } else if value >= 1_000_000_000 {
        ResetUnit::UnixSeconds
    } else {
        ResetUnit::Seconds
    });
    let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    match unit {
        ResetUnit::Seconds => Duration::from_secs(value),
        ResetUnit::UnixSeconds => Duration::from_secs(value).saturating_sub(since_epoch),
        // A value this large is Unix milliseconds (ResetUnit::Millis counts from now, but no
        // window is thirty years long).
        ResetUnit::Millis if value >= 1_000_000_000_000 => {
            Duration::from_millis(value).saturating_sub(since_epoch)
        }
        ResetUnit::Millis => Duration::from_millis(value),
    }
}

/// One member of an IETF `RateLimit` list: `"name";r=REMAINING;t=SECONDS`.
fn ietf_item(item: &str) -> (Option<u64>, Option<Duration>) {
    (param(item, "r"), param(item, "t").map(Duration::from_secs))
}

/// The integer parameter `key` of a structured-field list member.
fn param(item: &str, key: &str) -> Option<u64> {
    item.split(';').skip(1).find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        (name.trim() == key).then(|| value.trim().parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(seconds)
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, value.parse().expect("a header value"));
        }
        map
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now = at(1_795_342_500); // 2026-11-22T10:15:00Z
        assert_eq!(retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(
            retry_after("Sun, 22 Nov 2026 10:16:30 GMT", now),
            Some(Duration::from_secs(90))
        );
        assert_eq!(
            retry_after("Sun, 22 Nov 2026 10:14:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after("soon", now), None);
        assert_eq!(retry_after("-5", now), None);
    }

    #[test]
    fn x_ratelimit_reset_is_read_in_any_unit() {
        let now = at(1_795_342_500);
        let read = |reset: &str, unit| {
            RateLimitInfo::from_headers(
                &headers(&[
                    ("x-ratelimit-limit", "1000"),
                    ("x-ratelimit-remaining", "0"),
                    ("x-ratelimit-reset", reset),
                ]),
                now,
                unit,
            )
        };
        let unix = read("1795342560", None);
        assert_eq!(unix.limit, Some(1000));
        assert_eq!(unix.remaining, Some(0));
        assert_eq!(unix.exhausted_for, Some(Duration::from_secs(60)));
        assert_eq!(
            read("42", None).exhausted_for,
            Some(Duration::from_secs(42))
        );
        assert_eq!(
            read("1795342560500", None).exhausted_for,
            Some(Duration::from_millis(60_500))
        );
        assert_eq!(
            read("1500", Some(ResetUnit::Millis)).exhausted_for,
            Some(Duration::from_millis(1500))
        );
    }

    #[test]
    fn the_ietf_fields_name_the_longest_exhausted_wait() {
        let info = RateLimitInfo::from_headers(
            &headers(&[
                (
                    "ratelimit-policy",
                    r#""upload";q=1;w=120, "fair-use";q=10;w=1"#,
                ),
                ("ratelimit", r#""upload";r=0;t=120, "fair-use";r=9;t=1"#),
            ]),
            at(0),
            None,
        );
        assert_eq!(info.limit, Some(1));
        assert_eq!(info.remaining, Some(0));
        assert_eq!(info.reset, Some(Duration::from_secs(120)));
        assert_eq!(info.exhausted_for, Some(Duration::from_secs(120)));

        let left =
            RateLimitInfo::from_headers(&headers(&[("ratelimit", r#""a";r=3;t=10"#)]), at(0), None);
        assert_eq!(left.remaining, Some(3));
        assert_eq!(left.exhausted_for, None);
    }

    #[test]
    fn garbage_headers_are_ignored() {
        let info = RateLimitInfo::from_headers(
            &headers(&[
                ("x-ratelimit-remaining", "lots"),
                ("ratelimit", "r=0;t=;;=,,"),
                ("retry-after", "tomorrow"),
            ]),
            at(0),
            None,
        );
        assert_eq!(info, RateLimitInfo::default());
    }
}
