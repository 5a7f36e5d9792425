//! Durations and sizes in the words API documentation uses: "2 minutes", "60 seconds", "100 KB".

use std::time::Duration;

const UNITS: [(u64, &str, &str); 4] = [
    (86_400, "day", "days"),
    (3_600, "hour", "hours"),
    (60, "minute", "minutes"),
    (1, "second", "seconds"),
];

fn count(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// Whole seconds, rounded up: a wait is never rendered shorter than it is.
pub fn ceil_seconds(wait: Duration) -> u64 {
    wait.as_secs()
        .saturating_add(u64::from(wait.subsec_nanos() > 0))
}

/// A wait in the largest unit that fits, with at most one smaller unit, rounded up so that a
/// client waiting exactly that long is never early: 120 s is "2 minutes", 90 s "1 minute 30
/// seconds", 3,601 s "1 hour 1 minute", 0.2 s "1 second".
pub fn duration_words(wait: Duration) -> String {
    let seconds = ceil_seconds(wait);
    if seconds == 0 {
        return count(0, "second", "seconds");
    }
    for (index, &(size, one, many)) in UNITS.iter().enumerate() {
        if seconds < size {
            continue;
        }
        let major = seconds / size;
        let rest = seconds % size;
        let Some(&(minor_size, minor_one, minor_many)) = UNITS.get(index + 1) else {
            return count(major, one, many);
        };
        if rest == 0 {
            return count(major, one, many);
        }
        let minor = rest.div_ceil(minor_size);
        if minor.saturating_mul(minor_size) >= size {
            return count(major.saturating_add(1), one, many);
        }
        return format!(
            "{} {}",
            count(major, one, many),
            count(minor, minor_one, minor_many)
        );
    }
    count(seconds, "second", "seconds")
}

/// A wait in whole seconds, rounded up: "60 seconds", "1 second".
pub fn seconds_words(wait: Duration) -> String {
    count(ceil_seconds(wait), "second", "seconds")
}

/// A window in words for a limits table: "minute" for 1 minute, "2 minutes" otherwise.
pub fn window_words(window: Duration) -> String {
    let seconds = window.as_secs();
    for &(size, one, many) in UNITS.iter().filter(|_| window.subsec_nanos() == 0) {
        if seconds >= size && seconds.is_multiple_of(size) {
            let n = seconds / size;
            return if n == 1 {
                one.to_owned()
            } else {
                format!("{n} {many}")
            };
        }
    }
    let millis = window.as_millis();
    format!("{millis} ms")
}

/// A byte count as the policy would write it: "10 MB" (10,000,000 bytes), "64 KiB", "512 bytes".
pub fn size_words(bytes: u64) -> String {
    const UNITS: [(u64, &str); 6] = [
        (1_000_000_000, "GB"),
        (1 << 30, "GiB"),
        (1_000_000, "MB"),
        (1 << 20, "MiB"),
        (1_000, "KB"),
        (1 << 10, "KiB"),
    ];
    for (size, name) in UNITS {
        if bytes >= size && bytes.is_multiple_of(size) {
            return format!("{} {name}", bytes / size);
        }
    }
    count(bytes, "byte", "bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn waits_read_as_the_seeds_write_them() {
        assert_eq!(duration_words(secs(120)), "2 minutes");
        assert_eq!(duration_words(secs(60)), "1 minute");
        assert_eq!(seconds_words(secs(60)), "60 seconds");
        assert_eq!(seconds_words(Duration::from_millis(200)), "1 second");
    }

    #[test]
    fn waits_round_up_never_down() {
        assert_eq!(duration_words(Duration::from_millis(119_001)), "2 minutes");
        assert_eq!(duration_words(secs(90)), "1 minute 30 seconds");
        assert_eq!(duration_words(secs(3_601)), "1 hour 1 minute");
        assert_eq!(duration_words(secs(3_659)), "1 hour 1 minute");
        assert_eq!(duration_words(secs(3_600 + 59 * 60 + 1)), "2 hours");
        assert_eq!(duration_words(secs(86_400 * 3)), "3 days");
        assert_eq!(duration_words(Duration::ZERO), "0 seconds");
    }

    #[test]
    fn windows_and_sizes_read_naturally() {
        assert_eq!(window_words(secs(60)), "minute");
        assert_eq!(window_words(secs(120)), "2 minutes");
        assert_eq!(window_words(Duration::from_millis(1_500)), "1500 ms");
        assert_eq!(size_words(100_000), "100 KB");
        assert_eq!(size_words(10_000_000), "10 MB");
        assert_eq!(size_words(65_536), "64 KiB");
        assert_eq!(size_words(1), "1 byte");
    }
}
