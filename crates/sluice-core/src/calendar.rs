//! Windows that follow the calendar: calendar months and billing cycles anchored on a day of the
//! month, in UTC or an IANA time zone. Quotas are sold per month, and a month is not a fixed span.
//!
//! Time-zone rules come from the tz database bundled into the binary (jiff's
//! `tzdb-bundle-always`), so looking a zone up reads no file.

use jiff::civil::Date;
use jiff::tz::TimeZone;

use crate::limit::LimitError;
use crate::time::Timestamp;

/// One window of a period: the counter's window index and the instants it spans, `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// A number that identifies the window; consecutive windows have consecutive indexes.
    pub index: u64,
    /// The first instant of the window.
    pub start: Timestamp,
    /// The first instant after the window.
    pub end: Timestamp,
}

/// Months that start on `anchor_day` at midnight in `time_zone`.
///
/// An anchor of 1 is the calendar month. An anchor past the end of a shorter month falls on that
/// month's last day: a cycle anchored on the 31st runs Jan 31 → Feb 28 → Mar 31.
#[derive(Clone, Debug, PartialEq)]
pub struct MonthlyCycle {
    anchor_day: u8,
    time_zone: TimeZone,
}

impl MonthlyCycle {
    /// Calendar months in `time_zone`.
    pub fn calendar_month(time_zone: TimeZone) -> MonthlyCycle {
        MonthlyCycle {
            anchor_day: 1,
            time_zone,
        }
    }

    /// Billing months anchored on `anchor_day` (1 to 31) in `time_zone`.
    pub fn anchored(anchor_day: u8, time_zone: TimeZone) -> Result<MonthlyCycle, LimitError> {
        if !(1..=31).contains(&anchor_day) {
            return Err(LimitError::AnchorDay(anchor_day));
        }
        Ok(MonthlyCycle {
            anchor_day,
            time_zone,
        })
    }

    /// Looks an IANA time-zone name (`"Europe/Berlin"`, `"UTC"`) up in the bundled database.
    pub fn time_zone(name: &str) -> Result<TimeZone, LimitError> {
        TimeZone::get(name).map_err(|_| LimitError::TimeZone(name.to_owned()))
    }

    /// The anchor day, 1 to 31.
    pub fn anchor_day(&self) -> u8 {
        self.anchor_day
    }

    /// The IANA name of the time zone, when it has one.
    pub fn time_zone_name(&self) -> Option<&str> {
        self.time_zone.iana_name()
    }

    /// The cycle containing `now`.
    ///
    /// Never fails: an instant outside the calendar's range (which `Timestamp` cannot reach in
    /// practice) gets a window that never ends.
    pub fn window_at(&self, now: Timestamp) -> Window {
        self.try_window_at(now).unwrap_or(Window {
            index: u64::MAX,
            start: now,
            end: Timestamp::MAX,
        })
    }

    fn try_window_at(&self, now: Timestamp) -> Option<Window> {
        let local = jiff::Timestamp::from_nanosecond(i128::from(now.as_nanos()))
            .ok()?
            .to_zoned(self.time_zone.clone());
        let mut month = YearMonth {
            year: local.year(),
            month: local.month(),
        };
        let mut start = self.cycle_start(month)?;
        if now < start {
            month = month.previous();
            start = self.cycle_start(month)?;
        }
        let end = self.cycle_start(month.next())?;
        Some(Window {
            index: month.index()?,
            start,
            end,
        })
    }

    /// Midnight in the time zone on the anchor day of `month`, clamped to the month's last day.
    fn cycle_start(&self, month: YearMonth) -> Option<Timestamp> {
        let first = Date::new(month.year, month.month, 1).ok()?;
        let day = i8::try_from(self.anchor_day)
            .ok()?
            .min(first.days_in_month());
        let midnight = Date::new(month.year, month.month, day)
            .ok()?
            .to_zoned(self.time_zone.clone())
            .ok()?;
        let nanos = midnight.timestamp().as_nanosecond();
        // Cycles that began before 1970 start at the epoch: no Timestamp is earlier.
        Some(Timestamp::from_nanos(u64::try_from(nanos.max(0)).ok()?))
    }
}

#[derive(Clone, Copy, Debug)]
struct YearMonth {
    year: i16,
    month: i8,
}

impl YearMonth {
    fn previous(self) -> YearMonth {
        if self.month <= 1 {
            YearMonth {
                year: self.year.saturating_sub(1),
                month: 12,
            }
        } else {
            YearMonth {
                year: self.year,
                month: self.month.saturating_sub(1),
            }
        }
    }

    fn next(self) -> YearMonth {
        if self.month >= 12 {
            YearMonth {
                year: self.year.saturating_add(1),
                month: 1,
            }
        } else {
            YearMonth {
                year: self.year,
                month: self.month.saturating_add(1),
            }
        }
    }

    /// Months since January of year 0; positive for every instant a `Timestamp` can hold.
    fn index(self) -> Option<u64> {
        let months = i64::from(self.year)
            .checked_mul(12)?
            .checked_add(i64::from(self.month))?
            .checked_sub(1)?;
        u64::try_from(months).ok()
    }
}
