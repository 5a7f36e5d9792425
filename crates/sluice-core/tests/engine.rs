//! Scenario tests of the decision engine: each algorithm, multi-limit requests, and the seed
//! APIs' own limits, driven by explicit instants (no clock is read anywhere).

use std::time::Duration;

use sluice_core::{
    Algorithm, CounterKey, CounterState, Decision, Limit, LimitError, MAX_CAPACITY, MonthlyCycle,
    Op, Period, Retry, Timestamp, Transition, decide,
};

const SECOND: Duration = Duration::from_secs(1);
const MINUTE: Duration = Duration::from_secs(60);

/// A fixed starting instant that is not aligned on any window: 2026-11-22T10:15:30.25Z.
fn t0() -> Timestamp {
    Timestamp::from_nanos(1_795_342_530_250_000_000)
}

/// One client's view of a set of counters: the limits, their stored states, and a clock reading.
struct Client<'a> {
    limits: Vec<&'a Limit>,
    states: Vec<CounterState>,
}

impl<'a> Client<'a> {
    fn new(limits: &[&'a Limit]) -> Client<'a> {
        Client {
            limits: limits.to_vec(),
            states: vec![CounterState::EMPTY; limits.len()],
        }
    }

    fn request(&mut self, now: Timestamp, cost: u64) -> Decision {
        self.apply(now, Op::Acquire { cost })
    }

    fn apply(&mut self, now: Timestamp, op: Op) -> Decision {
        let transitions: Vec<Transition<'_>> = self
            .limits
            .iter()
            .enumerate()
            .map(|(index, limit)| Transition {
                key: CounterKey::new(b"user:1", format!("limit/{index}").as_bytes()),
                limit,
                op,
            })
            .collect();
        decide(now, &transitions, &mut self.states)
    }
}

fn after(d: Duration) -> Option<Retry> {
    Some(Retry::After(d))
}

#[test]
fn fixed_window_counts_down_then_denies_until_the_window_ends() {
    let limit = Limit::fixed_window(3, Period::Span(1_000_000_000)).unwrap();
    let mut client = Client::new(&[&limit]);
    let now = t0(); // 250 ms into a one-second window
    let window_end = Timestamp::from_nanos(now.as_nanos() - 250_000_000 + 1_000_000_000);

    for remaining in [2, 1, 0] {
        let decision = client.request(now, 1);
        assert!(decision.allowed());
        assert_eq!(decision.limits()[0].remaining(), remaining);
        assert_eq!(decision.limits()[0].reset(), window_end);
    }
    let denied = client.request(now, 1);
    assert!(!denied.allowed());
    assert_eq!(denied.denied_by(), Some(0));
    assert_eq!(denied.retry(), after(Duration::from_millis(750)));

    let just_before = Timestamp::from_nanos(window_end.as_nanos() - 1);
    assert!(!client.request(just_before, 1).allowed());
    assert!(client.request(window_end, 1).allowed());
}

#[test]
fn upload_limit_of_one_per_two_minutes_gives_the_exact_wait() {
    // Seed 000: POST /projects/upload-file, 1 request per 2 minutes per userId.
    let limit = Limit::token_bucket(1, 2 * MINUTE, 1).unwrap();
    let mut client = Client::new(&[&limit]);
    let first = client.request(t0(), 1);
    assert!(first.allowed());
    assert_eq!(first.limits()[0].remaining(), 0);
    assert_eq!(first.limits()[0].reset(), t0().saturating_add(2 * MINUTE));

    let second = client.request(t0().saturating_add(30 * SECOND), 1);
    assert!(!second.allowed());
    assert_eq!(second.retry(), after(90 * SECOND));

    assert!(
        !client
            .request(t0().saturating_add(2 * MINUTE - Duration::from_nanos(1)), 1)
            .allowed()
    );
    assert!(client.request(t0().saturating_add(2 * MINUTE), 1).allowed());
}

#[test]
fn token_bucket_refills_continuously_and_allows_its_burst() {
    // 1,000 per minute with a burst of 10: one token every 60 ms.
    let limit = Limit::token_bucket(1_000, MINUTE, 10).unwrap();
    let mut client = Client::new(&[&limit]);
    for _ in 0..10 {
        assert!(client.request(t0(), 1).allowed());
    }
    let denied = client.request(t0(), 1);
    assert_eq!(denied.retry(), after(Duration::from_millis(60)));
    let later = t0().saturating_add(Duration::from_millis(180));
    let decision = client.request(later, 1);
    assert!(decision.allowed());
    assert_eq!(decision.limits()[0].remaining(), 2);
}

#[test]
fn token_bucket_is_exact_for_rates_that_do_not_divide_a_nanosecond() {
    // 7 per second: a token every 142,857,142.857… ns. Seven tokens take exactly one second to
    // come back, so every whole second admits exactly seven more, for a thousand seconds: the
    // fractions never round away.
    let limit = Limit::token_bucket(7, SECOND, 7).unwrap();
    let mut client = Client::new(&[&limit]);
    for second in 0..1_000u32 {
        let now = t0().saturating_add(second * SECOND);
        if second > 0 {
            let early = Timestamp::from_nanos(now.as_nanos() - 1);
            let decision = client.request(early, 7);
            assert_eq!(
                decision.retry(),
                after(Duration::from_nanos(1)),
                "second {second}"
            );
        }
        assert!(client.request(now, 7).allowed(), "second {second}");
        assert!(!client.request(now, 1).allowed(), "second {second}");
    }
}

#[test]
fn sliding_window_weighs_the_previous_window_by_its_overlap() {
    let limit = Limit::sliding_window(10, MINUTE).unwrap();
    let mut client = Client::new(&[&limit]);
    let window_start = Timestamp::from_secs(t0().as_secs() / 60 * 60);
    for _ in 0..10 {
        assert!(client.request(window_start, 1).allowed());
    }
    // Halfway through the next window, half of the previous window still counts: 5 of 10.
    let halfway = window_start.saturating_add(MINUTE + 30 * SECOND);
    let decision = client.request(halfway, 0);
    assert_eq!(decision.limits()[0].remaining(), 5);
    for _ in 0..5 {
        assert!(client.request(halfway, 1).allowed());
    }
    let denied = client.request(halfway, 1);
    // previous 10 × (60 − e)/60 + 5 + 1 ≤ 10  ⇔  e ≥ 36 s: 6 s after halfway.
    assert_eq!(denied.retry(), after(6 * SECOND));
    // Full again once both windows have passed.
    assert_eq!(
        denied.limits()[0].reset(),
        window_start.saturating_add(3 * MINUTE)
    );
}

#[test]
fn a_denied_request_consumes_nothing_from_the_limits_that_admitted_it() {
    let per_user = Limit::token_bucket(1, 2 * MINUTE, 1).unwrap();
    let global = Limit::fixed_window(1_000, Period::Span(60_000_000_000)).unwrap();
    let mut client = Client::new(&[&global, &per_user]);
    assert!(client.request(t0(), 1).allowed());
    let before = client.states.clone();

    let denied = client.request(t0(), 1);
    assert!(!denied.allowed());
    assert_eq!(denied.denied_by(), Some(1));
    assert!(!denied.limits()[0].denied());
    assert_eq!(denied.limits()[0].remaining(), 999);
    assert_eq!(client.states, before);
}

#[test]
fn a_shadow_limit_reports_what_it_would_deny_and_denies_nothing() {
    let trial = Limit::fixed_window(2, Period::Span(60_000_000_000))
        .unwrap()
        .in_shadow()
        .unwrap();
    let enforced = Limit::fixed_window(3, Period::Span(60_000_000_000)).unwrap();
    let mut client = Client::new(&[&trial, &enforced]);
    for remaining in [1, 0] {
        let decision = client.request(t0(), 1);
        assert!(decision.allowed());
        assert_eq!(decision.limits()[0].remaining(), remaining);
        assert!(!decision.limits()[0].would_deny());
    }
    // Over the shadow limit: admitted, counted by the enforced limit only, and reported.
    let over = client.request(t0(), 1);
    assert!(over.allowed());
    assert_eq!(over.denied_by(), None);
    assert_eq!(over.retry(), None);
    assert!(over.limits()[0].would_deny());
    assert!(!over.limits()[0].denied());
    assert_eq!(over.limits()[0].remaining(), 0);
    assert_eq!(over.limits()[1].remaining(), 0);
    assert_eq!(client.states[0].value, 2);
    // Denied by the enforced limit, the shadow limit's verdict still shows.
    let denied = client.request(t0(), 1);
    assert_eq!(denied.denied_by(), Some(1));
    assert!(denied.limits()[0].would_deny());
    assert_eq!(denied.retry(), after(Duration::from_millis(29_750)));

    // Alone, it never denies either.
    let mut alone = Client::new(&[&trial]);
    assert!(alone.request(t0(), 2).allowed());
    let over = alone.request(t0(), 1);
    assert!(over.allowed());
    assert!(over.limits()[0].would_deny());
    assert_eq!(alone.states[0].value, 2);
}

#[test]
fn shadow_mode_is_refused_where_it_cannot_be_honest() {
    let concurrency = Limit::concurrency(2, MINUTE).unwrap();
    assert_eq!(concurrency.in_shadow(), Err(LimitError::ShadowConcurrency));
    let blocks = Limit::fixed_window(100, Period::Span(60_000_000_000))
        .unwrap()
        .in_blocks(10)
        .unwrap();
    assert_eq!(blocks.in_shadow(), Err(LimitError::Block(10)));
    let shadow = Limit::fixed_window(100, Period::Span(60_000_000_000))
        .unwrap()
        .in_shadow()
        .unwrap();
    assert!(shadow.is_shadow());
    assert_eq!(shadow.clone().in_blocks(10), Err(LimitError::Block(10)));
    assert!(shadow.divided(2).unwrap().is_shadow());
}

#[test]
fn the_longest_wait_decides_which_limit_denied() {
    let short = Limit::fixed_window(1, Period::Span(1_000_000_000)).unwrap();
    let long = Limit::token_bucket(1, 2 * MINUTE, 1).unwrap();
    let mut client = Client::new(&[&short, &long]);
    assert!(client.request(t0(), 1).allowed());
    let denied = client.request(t0(), 1);
    assert_eq!(denied.denied_by(), Some(1));
    assert_eq!(denied.retry(), after(2 * MINUTE));
    assert!(denied.limits()[0].denied());
}

#[test]
fn a_limit_that_counts_rejections_keeps_a_hammering_client_limited() {
    let limit = Limit::fixed_window(2, Period::Span(60_000_000_000))
        .unwrap()
        .counting_rejected()
        .unwrap();
    let other = Limit::fixed_window(100, Period::Span(60_000_000_000)).unwrap();
    let mut client = Client::new(&[&limit, &other]);
    for _ in 0..2 {
        assert!(client.request(t0(), 1).allowed());
    }
    for _ in 0..5 {
        assert!(!client.request(t0(), 1).allowed());
    }
    assert_eq!(client.states[0].value, 7, "rejections are counted");
    assert_eq!(client.states[1].value, 2, "other limits are not");
}

#[test]
fn concurrency_limit_admits_until_full_and_frees_on_release() {
    let limit = Limit::concurrency(2, 30 * SECOND).unwrap();
    let mut client = Client::new(&[&limit]);
    assert!(client.request(t0(), 1).allowed());
    assert!(client.request(t0(), 1).allowed());
    let denied = client.request(t0(), 1);
    assert_eq!(denied.retry(), Some(Retry::OnRelease));
    client.apply(
        t0(),
        Op::Release {
            cost: 1,
            acquired_at: t0(),
        },
    );
    assert!(client.request(t0(), 1).allowed());
    // Holders that never release keep their hold for at least the lease (t0 is 250 ms into a
    // 30-second period, 10:15:30.25), and lose it when the period after theirs ends.
    let dropped = Timestamp::from_nanos(t0().as_nanos() - 250_000_000 + 60_000_000_000);
    let at_lease = client.request(t0().saturating_add(30 * SECOND), 1);
    assert_eq!(at_lease.retry(), Some(Retry::OnRelease));
    let just_before = Timestamp::from_nanos(dropped.as_nanos() - 1);
    assert!(!client.request(just_before, 1).allowed());
    assert!(client.request(dropped, 2).allowed());
}

#[test]
fn a_hold_never_released_is_dropped_however_busy_the_counter() {
    // One holder crashed at t0 with its slot; others come and go every second, each released
    // half a second later, as steady traffic does.
    let limit = Limit::concurrency(2, 30 * SECOND).unwrap();
    let mut client = Client::new(&[&limit]);
    assert!(client.request(t0(), 1).allowed());
    let mut now = t0();
    for _ in 0..60 {
        now = now.saturating_add(SECOND);
        let taken = client.request(now, 1);
        assert!(taken.allowed(), "one slot stays free for the traffic");
        client.apply(
            now.saturating_add(SECOND / 2),
            Op::Release {
                cost: 1,
                acquired_at: taken.now(),
            },
        );
    }
    // Both slots are free again: the crashed holder's is not kept alive by the traffic.
    let both = client.request(now.saturating_add(SECOND), 2);
    assert!(both.allowed());
    assert_eq!(both.limits()[0].remaining(), 0);
}

#[test]
fn a_hold_renewed_within_each_lease_keeps_counting_and_its_release_frees_it() {
    // A WebSocket open for ten minutes under a 30-second lease, renewed every 15 seconds.
    let limit = Limit::concurrency(1, 30 * SECOND).unwrap();
    let mut client = Client::new(&[&limit]);
    let mut held_since = client.request(t0(), 1).now();
    let mut now = t0();
    for _ in 0..40 {
        now = now.saturating_add(15 * SECOND);
        let renewed = client.apply(
            now,
            Op::Renew {
                cost: 1,
                acquired_at: held_since,
            },
        );
        assert!(renewed.allowed());
        assert_eq!(renewed.limits()[0].remaining(), 0, "still held");
        held_since = renewed.now();
        let other = client.request(now.saturating_add(SECOND), 1);
        assert_eq!(other.retry(), Some(Retry::OnRelease), "the slot is taken");
    }
    let released = client.apply(
        now,
        Op::Release {
            cost: 1,
            acquired_at: held_since,
        },
    );
    assert_eq!(
        released.limits()[0].remaining(),
        1,
        "freed by its last renewal's period"
    );
    assert!(client.request(now, 1).allowed());
}

#[test]
fn renewing_a_lapsed_hold_counts_it_again_and_other_limits_are_untouched() {
    let limit = Limit::concurrency(2, 30 * SECOND).unwrap();
    let window = Limit::fixed_window(5, Period::Span(60_000_000_000)).unwrap();
    let mut client = Client::new(&[&limit, &window]);
    let taken = client.request(t0(), 1);
    let window_state = client.states[1];
    // Two leases later the hold has lapsed; it is still in flight, so renewing counts it.
    let later = t0().saturating_add(2 * MINUTE);
    let renewed = client.apply(
        later,
        Op::Renew {
            cost: 1,
            acquired_at: taken.now(),
        },
    );
    assert!(renewed.allowed());
    assert_eq!(renewed.limits()[0].remaining(), 1);
    assert_eq!(
        client.states[1], window_state,
        "a window holds nothing to renew"
    );
}

#[test]
fn release_refunds_only_within_the_window_it_was_taken_in() {
    let limit = Limit::fixed_window(5, Period::Span(60_000_000_000)).unwrap();
    let mut client = Client::new(&[&limit]);
    let taken = client.request(t0(), 3);
    let refunded = client.apply(
        t0(),
        Op::Release {
            cost: 2,
            acquired_at: taken.now(),
        },
    );
    assert_eq!(refunded.limits()[0].remaining(), 4);
    let next_minute = t0().saturating_add(MINUTE);
    client.request(next_minute, 1);
    let stale = client.apply(
        next_minute,
        Op::Release {
            cost: 1,
            acquired_at: taken.now(),
        },
    );
    assert_eq!(
        stale.limits()[0].remaining(),
        4,
        "last window's units stay spent"
    );
}

#[test]
fn a_cost_no_window_can_hold_is_never_admitted() {
    let limit = Limit::fixed_window(10, Period::Span(1_000_000_000)).unwrap();
    let bucket = Limit::token_bucket(10, SECOND, 5).unwrap();
    let sliding = Limit::sliding_window(10, SECOND).unwrap();
    for limit in [&limit, &bucket, &sliding] {
        let mut client = Client::new(&[limit]);
        let decision = client.request(t0(), u64::MAX);
        assert_eq!(decision.retry(), Some(Retry::Never), "{limit:?}");
        assert_eq!(client.states[0], CounterState::EMPTY);
    }
    let zero = Limit::fixed_window(0, Period::Span(1_000_000_000)).unwrap();
    let mut client = Client::new(&[&zero]);
    assert_eq!(client.request(t0(), 1).retry(), Some(Retry::Never));
    assert!(client.request(t0(), 0).allowed());
}

#[test]
fn limits_span_from_one_per_second_to_many_per_year() {
    let per_second = Limit::fixed_window(1, Period::Span(1_000_000_000)).unwrap();
    let year = Duration::from_secs(365 * 24 * 3600);
    let per_year = Limit::sliding_window(MAX_CAPACITY, year).unwrap();
    let bucket_per_year = Limit::token_bucket(MAX_CAPACITY, year, MAX_CAPACITY).unwrap();
    let mut client = Client::new(&[&per_second, &per_year, &bucket_per_year]);
    let decision = client.request(t0(), 1);
    assert!(decision.allowed());
    assert_eq!(decision.limits()[1].remaining(), MAX_CAPACITY - 1);
    assert_eq!(decision.limits()[2].remaining(), MAX_CAPACITY - 1);
}

#[test]
fn limits_outside_the_supported_range_are_refused() {
    assert_eq!(
        Limit::fixed_window(MAX_CAPACITY + 1, Period::Span(1_000_000_000)),
        Err(LimitError::Capacity(MAX_CAPACITY + 1))
    );
    assert!(matches!(
        Limit::sliding_window(1, Duration::from_micros(10)),
        Err(LimitError::Span(_))
    ));
    assert!(matches!(
        Limit::fixed_window(1, Period::Span(0)),
        Err(LimitError::Span(_))
    ));
    assert_eq!(Limit::token_bucket(1, SECOND, 0), Err(LimitError::Burst(0)));
    assert_eq!(
        Limit::concurrency(1, SECOND).unwrap().counting_rejected(),
        Err(LimitError::CountRejectedConcurrency)
    );
    assert_eq!(
        MonthlyCycle::anchored(32, sluice_core::TimeZone::UTC),
        Err(LimitError::AnchorDay(32))
    );
    assert_eq!(
        MonthlyCycle::time_zone("Mars/Olympus_Mons"),
        Err(LimitError::TimeZone("Mars/Olympus_Mons".into()))
    );
}

#[test]
fn stored_states_of_any_shape_never_break_a_decision() {
    let limits = [
        Limit::fixed_window(5, Period::Span(1_000_000)).unwrap(),
        Limit::sliding_window(5, SECOND).unwrap(),
        Limit::token_bucket(5, SECOND, 5).unwrap(),
        Limit::concurrency(5, SECOND).unwrap(),
    ];
    let garbage = CounterState {
        window: u64::MAX,
        value: u64::MAX,
        aux: u64::MAX,
        expires_at: Timestamp::MAX,
    };
    for limit in &limits {
        for now in [Timestamp::UNIX_EPOCH, t0(), Timestamp::MAX] {
            let mut client = Client::new(&[limit]);
            client.states[0] = garbage;
            client.request(now, u64::MAX);
            client.request(now, 1);
            client.apply(
                now,
                Op::Release {
                    cost: u64::MAX,
                    acquired_at: Timestamp::MAX,
                },
            );
        }
    }
}

#[test]
fn a_clock_that_steps_back_never_readmits_what_was_counted() {
    let limits = [
        Limit::fixed_window(2, Period::Span(1_000_000_000)).unwrap(),
        Limit::sliding_window(2, SECOND).unwrap(),
        Limit::token_bucket(2, SECOND, 2).unwrap(),
    ];
    for limit in &limits {
        let mut client = Client::new(&[limit]);
        let now = t0().saturating_add(SECOND);
        assert!(client.request(now, 2).allowed());
        // The wall clock jumps back five seconds (an NTP step).
        let stepped_back = Timestamp::from_nanos(now.as_nanos() - 5_000_000_000);
        let denied = client.request(stepped_back, 1);
        assert!(!denied.allowed(), "{limit:?}");
        let Some(Retry::After(wait)) = denied.retry() else {
            panic!("no wait for {limit:?}")
        };
        assert!(wait > 5 * SECOND, "{limit:?} waits only {wait:?}");
    }
}

#[test]
fn a_limit_divides_into_shares_that_never_add_up_to_more() {
    let minute = Period::Span(60_000_000_000);
    let fixed = Limit::fixed_window(10, minute.clone()).expect("a limit");
    let share = fixed.divided(3).expect("divisible");
    assert_eq!(share.capacity(), 3);
    assert_eq!(share.algorithm(), Algorithm::FixedWindow);
    assert_eq!(share.period(), &minute);
    assert_eq!(fixed.divided(0).expect("one part").capacity(), 10);
    assert_eq!(fixed.divided(11), None, "too small to divide");

    let bucket = Limit::token_bucket(10, Duration::from_secs(60), 4)
        .expect("a limit")
        .counting_rejected()
        .expect("countable");
    let share = bucket.divided(3).expect("divisible");
    assert_eq!(share.capacity(), 3);
    assert_eq!(share.algorithm(), Algorithm::TokenBucket { burst: 1 });
    assert!(share.counts_rejected());
    assert_eq!(bucket.divided(5), None, "a burst of 4 has no share for 5");
}

#[test]
fn blocks_fit_only_limits_that_can_spend_them_and_last_as_long_as_the_bound_allows() {
    let minute = Period::Span(60_000_000_000);
    let fixed = Limit::fixed_window(50, minute.clone()).expect("a limit");
    let in_blocks = fixed
        .clone()
        .in_blocks(10)
        .expect("a fixed window takes blocks");
    assert_eq!(in_blocks.block(), 10);
    assert_eq!(fixed.block(), 0);
    assert_eq!(fixed.block_lifetime(t0(), 3), None, "counted exactly");
    // Until the end of the window: 10:16:00.
    assert_eq!(
        in_blocks.block_lifetime(t0(), 3),
        Some(Timestamp::from_secs(1_795_342_560))
    );

    // 100 per 10 s: 100 ms per unit; a block of 5 for 3 gateways lasts 1.5 s.
    let bucket = Limit::token_bucket(100, 10 * SECOND, 5).expect("a limit");
    let in_blocks = bucket.clone().in_blocks(5).expect("a bucket takes blocks");
    assert_eq!(
        in_blocks.block_lifetime(t0(), 3),
        Some(t0().saturating_add(Duration::from_millis(1_500)))
    );
    assert_eq!(
        bucket.clone().in_blocks(6),
        Err(LimitError::Block(6)),
        "past the burst"
    );
    assert_eq!(bucket.clone().in_blocks(1), Err(LimitError::Block(1)));
    assert_eq!(
        in_blocks.counting_rejected(),
        Err(LimitError::Block(5)),
        "a counted denial has no block to come from"
    );
    let sliding = Limit::sliding_window(10, MINUTE).expect("a limit");
    assert_eq!(sliding.in_blocks(2), Err(LimitError::Block(2)));
    let concurrency = Limit::concurrency(10, MINUTE).expect("a limit");
    assert_eq!(concurrency.in_blocks(2), Err(LimitError::Block(2)));
    let counting = fixed.counting_rejected().expect("countable");
    assert_eq!(counting.in_blocks(2), Err(LimitError::Block(2)));
}
