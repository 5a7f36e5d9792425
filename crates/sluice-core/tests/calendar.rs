//! Calendar months and billing cycles: where monthly quotas start and end.

use sluice_core::{
    CounterKey, CounterState, Limit, MonthlyCycle, Op, Period, Timestamp, Transition, decide,
};

/// An instant from an RFC 3339 string.
fn at(text: &str) -> Timestamp {
    let ts: jiff::Timestamp = text.parse().unwrap();
    Timestamp::from_nanos(u64::try_from(ts.as_nanosecond()).unwrap())
}

fn window(cycle: &MonthlyCycle, now: &str) -> (Timestamp, Timestamp) {
    let window = cycle.window_at(at(now));
    (window.start, window.end)
}

#[test]
fn calendar_months_in_utc() {
    let cycle = MonthlyCycle::calendar_month(MonthlyCycle::time_zone("UTC").unwrap());
    assert_eq!(
        window(&cycle, "2026-02-14T12:00:00Z"),
        (at("2026-02-01T00:00:00Z"), at("2026-03-01T00:00:00Z"))
    );
    assert_eq!(
        window(&cycle, "2026-12-31T23:59:59.999999999Z"),
        (at("2026-12-01T00:00:00Z"), at("2027-01-01T00:00:00Z"))
    );
    assert_eq!(
        window(&cycle, "2027-01-01T00:00:00Z").0,
        at("2027-01-01T00:00:00Z")
    );
}

#[test]
fn calendar_months_follow_the_time_zone_and_its_daylight_saving() {
    let berlin = MonthlyCycle::calendar_month(MonthlyCycle::time_zone("Europe/Berlin").unwrap());
    // March starts at midnight CET (UTC+1); April at midnight CEST (UTC+2).
    assert_eq!(
        window(&berlin, "2026-03-15T00:00:00Z"),
        (at("2026-02-28T23:00:00Z"), at("2026-03-31T22:00:00Z"))
    );
    // 23:30 UTC on the last day of March is already April in Berlin.
    assert_eq!(
        window(&berlin, "2026-03-31T23:30:00Z").0,
        at("2026-03-31T22:00:00Z")
    );
}

#[test]
fn billing_cycles_anchored_on_the_31st_fall_on_the_last_day_of_short_months() {
    let utc = MonthlyCycle::time_zone("UTC").unwrap();
    let cycle = MonthlyCycle::anchored(31, utc).unwrap();
    assert_eq!(
        window(&cycle, "2026-02-10T00:00:00Z"),
        (at("2026-01-31T00:00:00Z"), at("2026-02-28T00:00:00Z"))
    );
    assert_eq!(
        window(&cycle, "2026-03-30T12:00:00Z"),
        (at("2026-02-28T00:00:00Z"), at("2026-03-31T00:00:00Z"))
    );
    // A leap year's February has a 29th.
    assert_eq!(
        window(&cycle, "2028-03-01T00:00:00Z"),
        (at("2028-02-29T00:00:00Z"), at("2028-03-31T00:00:00Z"))
    );
    let fifteenth = MonthlyCycle::anchored(15, MonthlyCycle::time_zone("UTC").unwrap()).unwrap();
    assert_eq!(
        window(&fifteenth, "2026-01-14T23:59:59Z"),
        (at("2025-12-15T00:00:00Z"), at("2026-01-15T00:00:00Z"))
    );
}

#[test]
fn consecutive_cycles_have_consecutive_indexes() {
    let cycle =
        MonthlyCycle::anchored(31, MonthlyCycle::time_zone("America/New_York").unwrap()).unwrap();
    let mut now = at("2025-06-01T00:00:00Z");
    let mut previous = cycle.window_at(now);
    for _ in 0..40 {
        now = previous.end;
        let next = cycle.window_at(now);
        assert_eq!(next.index, previous.index + 1);
        assert_eq!(next.start, previous.end);
        previous = next;
    }
}

#[test]
fn a_monthly_quota_resets_at_the_start_of_the_next_cycle() {
    // Seed 001's moderation limit: a number of moderations per calendar month.
    let quota = Limit::fixed_window(
        3,
        Period::Monthly(MonthlyCycle::calendar_month(
            MonthlyCycle::time_zone("UTC").unwrap(),
        )),
    )
    .unwrap();
    let transitions = [Transition {
        key: CounterKey::new(b"team:7", b"moderations"),
        limit: &quota,
        op: Op::Acquire { cost: 1 },
    }];
    let mut states = [CounterState::EMPTY];
    let now = at("2026-11-30T23:59:00Z");
    for _ in 0..3 {
        assert!(decide(now, &transitions, &mut states).allowed());
    }
    let denied = decide(now, &transitions, &mut states);
    assert_eq!(
        denied.retry(),
        Some(sluice_core::Retry::After(std::time::Duration::from_secs(
            60
        )))
    );
    assert_eq!(denied.limits()[0].reset(), at("2026-12-01T00:00:00Z"));
    assert!(decide(at("2026-12-01T00:00:00Z"), &transitions, &mut states).allowed());
}
