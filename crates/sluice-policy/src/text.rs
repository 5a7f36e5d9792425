//! The small languages inside policy values: rates (`1000 per 1m`), durations (`2 minutes`) and
//! sizes (`100 KB`), each parsed by hand because each is a single line with a clear grammar.

use std::time::Duration;

/// `count per span`, e.g. `1 per 2m`, `1,000 requests per minute`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    /// Requests (cost units) per span.
    pub count: u64,
    /// The span.
    pub span: Duration,
}

fn number(text: &str) -> Option<u64> {
    let digits: String = text.chars().filter(|c| *c != ',' && *c != '_').collect();
    if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// `"100 KB"` → `("100", " KB")`: the leading digits (with `,` or `_` separators) and the rest.
fn split_amount(text: &str) -> (&str, &str) {
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == ',' || c == '_'))
        .unwrap_or(text.len());
    text.split_at(split)
}

const DAY: u64 = 86_400;

fn unit_seconds(unit: &str) -> Option<Duration> {
    let seconds = match unit.to_ascii_lowercase().as_str() {
        "ms" | "millisecond" | "milliseconds" => return Some(Duration::from_millis(1)),
        "s" | "sec" | "secs" | "second" | "seconds" => 1,
        "m" | "min" | "mins" | "minute" | "minutes" => 60,
        "h" | "hr" | "hrs" | "hour" | "hours" => 3_600,
        "d" | "day" | "days" => DAY,
        "w" | "week" | "weeks" => 7 * DAY,
        "y" | "year" | "years" => 365 * DAY,
        _ => return None,
    };
    Some(Duration::from_secs(seconds))
}

/// A duration: `2m`, `2 minutes`, `90s`, `1 hour`, or a bare unit (`minute`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let expected = || {
        format!(
            "expected a duration like `2m`, `90 seconds` or `1 hour`, found `{}`",
            text.trim()
        )
    };
    let text = text.trim();
    let (amount, unit) = split_amount(text);
    let amount = if amount.is_empty() {
        1
    } else {
        number(amount).ok_or_else(expected)?
    };
    let unit = unit_seconds(unit.trim()).ok_or_else(expected)?;
    let total = unit
        .checked_mul(u32::try_from(amount).map_err(|_| expected())?)
        .ok_or_else(expected)?;
    if total.is_zero() {
        return Err(format!(
            "a duration must be longer than zero, found `{text}`"
        ));
    }
    Ok(total)
}

/// A rate: `N per SPAN`, with an optional `request`/`requests` after the count.
pub fn parse_rate(text: &str) -> Result<Rate, String> {
    let expected = || {
        format!(
            "expected a rate like `1 per 2m` or `1000 requests per minute`, found `{}`",
            text.trim()
        )
    };
    let (count, span) = text.split_once(" per ").ok_or_else(expected)?;
    let count = count
        .trim()
        .trim_end_matches("requests")
        .trim_end_matches("request")
        .trim();
    let count = number(count).ok_or_else(expected)?;
    let span =
        parse_duration(span).map_err(|error| format!("{error} (in rate `{}`)", text.trim()))?;
    Ok(Rate { count, span })
}

/// A size: `100 KB` (10^3), `64 KiB` (2^10), `10MB`, `512 bytes`, `512`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let expected = || {
        format!(
            "expected a size like `100 KB`, `10 MB`, `64 KiB` or `512 bytes`, found `{}`",
            text.trim()
        )
    };
    let text = text.trim();
    let (amount, unit) = split_amount(text);
    let amount = number(amount).ok_or_else(expected)?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" | "byte" | "bytes" => 1,
        "kb" => 1_000,
        "kib" => 1 << 10,
        "mb" => 1_000_000,
        "mib" => 1 << 20,
        "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        _ => return Err(expected()),
    };
    amount.checked_mul(scale).ok_or_else(expected)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_read_as_people_write_them() {
        let two_minutes = Duration::from_secs(120);
        assert_eq!(
            parse_rate("1 per 2m"),
            Ok(Rate {
                count: 1,
                span: two_minutes
            })
        );
        assert_eq!(
            parse_rate("1 request per 2 minutes"),
            Ok(Rate {
                count: 1,
                span: two_minutes
            })
        );
        assert_eq!(
            parse_rate("1,000 requests per minute"),
            Ok(Rate {
                count: 1000,
                span: Duration::from_secs(60)
            })
        );
        assert_eq!(
            parse_rate("5 per 1y").map(|rate| rate.span),
            Ok(Duration::from_secs(365 * 86_400))
        );
    }

    #[test]
    fn bad_values_say_what_was_expected() {
        let error = parse_rate("1 per 2x").unwrap_err();
        assert!(error.contains("expected a duration"), "{error}");
        assert!(parse_rate("lots per minute").is_err());
        assert!(parse_duration("0s").is_err());
        assert!(
            parse_size("10 parsecs")
                .unwrap_err()
                .contains("`10 parsecs`")
        );
    }

    #[test]
    fn sizes_distinguish_decimal_and_binary_units() {
        assert_eq!(parse_size("100 KB"), Ok(100_000));
        assert_eq!(parse_size("10MB"), Ok(10_000_000));
        assert_eq!(parse_size("64 KiB"), Ok(65_536));
        assert_eq!(parse_size("512"), Ok(512));
    }
}
