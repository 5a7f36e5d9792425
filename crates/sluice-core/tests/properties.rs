//! Property tests of the decision engine's promises: no algorithm admits more than its limit
//! within its own window definition, retry-after is exact, a denied request changes no counter,
//! and no input makes a decision panic.

use std::time::Duration;

use proptest::prelude::*;
use sluice_core::{
    Algorithm, CounterKey, CounterState, Decision, Limit, MAX_CAPACITY, Op, Period, Retry,
    Timestamp, Transition, decide,
};

/// 2026-11-22T10:15:30.25Z, so windows are not aligned on the start.
const START: u64 = 1_795_342_530_250_000_000;

fn span_of(limit: &Limit) -> u64 {
    match limit.period() {
        Period::Span(span) => *span,
        Period::Monthly(_) => unreachable!("only spans are generated"),
    }
}

prop_compose! {
    fn a_limit(count_rejected: bool)(
        algorithm in 0..4u8,
        capacity in 1u64..=12,
        span in prop_oneof![
            Just(1_000_000u64),
            Just(1_000_000_000u64),
            Just(120_000_000_000u64),
            1_000_000u64..=5_000_000_000,
        ],
        burst in 1u64..=12,
        counting in any::<bool>(),
    ) -> Limit {
        limit_of(algorithm, capacity, span, burst, count_rejected && counting)
    }
}

/// A limit of algorithm `algorithm` (fixed window, sliding window, token bucket, concurrency),
/// counting rejected requests if `counting` and the algorithm can.
fn limit_of(algorithm: u8, capacity: u64, span: u64, burst: u64, counting: bool) -> Limit {
    let span_duration = Duration::from_nanos(span);
    let limit = match algorithm {
        0 => Limit::fixed_window(capacity, Period::Span(span)),
        1 => Limit::sliding_window(capacity, span_duration),
        2 => Limit::token_bucket(capacity, span_duration, burst),
        _ => Limit::concurrency(capacity, span_duration),
    }
    .unwrap();
    if counting && algorithm != 3 {
        limit.counting_rejected().unwrap()
    } else {
        limit
    }
}

/// `one`, and beside it a counter of `companion` that the request costs nothing: the general,
/// several-counter path for a request the one-counter path can take alone.
fn beside_a_companion<'a>(one: &Transition<'a>, companion: &'a Limit) -> [Transition<'a>; 2] {
    [
        one.clone(),
        Transition {
            key: CounterKey::new(b"user:1", b"b"),
            limit: companion,
            op: Op::Acquire { cost: 0 },
        },
    ]
}

/// A stored state from its four numbers, as a store might hand back anything.
fn stored((window, value, aux, expires_at): (u64, u64, u64, u64)) -> CounterState {
    CounterState {
        window,
        value,
        aux,
        expires_at: Timestamp::from_nanos(expires_at),
    }
}

/// One step of a client's history: wait `advance` thousandths of the first limit's span, then
/// acquire `cost` or release the oldest acquisition.
#[derive(Clone, Debug)]
struct Step {
    advance_permille: u64,
    cost: u64,
    release: bool,
}

fn steps(max: usize) -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(
        (
            prop_oneof![3 => 0u64..60, 1 => 0u64..2_500],
            prop_oneof![8 => 1u64..=3, 1 => Just(0u64), 1 => 4u64..=30],
            prop::bool::weighted(0.2),
        )
            .prop_map(|(advance_permille, cost, release)| Step {
                advance_permille,
                cost,
                release,
            }),
        1..max,
    )
}

fn transitions<'a>(limits: &'a [Limit], op: Op) -> Vec<Transition<'a>> {
    limits
        .iter()
        .enumerate()
        .map(|(index, limit)| Transition {
            key: CounterKey::new(b"user:1", &[u8::try_from(index).unwrap()]),
            limit,
            op,
        })
        .collect()
}

fn acquire(limits: &[Limit], states: &mut [CounterState], now: Timestamp, cost: u64) -> Decision {
    decide(now, &transitions(limits, Op::Acquire { cost }), states)
}

/// Checks, from the history of admitted requests alone, that the limit was never exceeded.
fn assert_within_limit(limit: &Limit, admitted: &[(u64, u64)]) {
    let capacity = u128::from(limit.capacity());
    let span = u128::from(span_of(limit));
    let Some(&(now, _)) = admitted.last() else {
        return;
    };
    match limit.algorithm() {
        Algorithm::FixedWindow => {
            let window = now / span_of(limit);
            let in_window: u64 = admitted
                .iter()
                .filter(|(at, _)| at / span_of(limit) == window)
                .map(|(_, cost)| cost)
                .sum();
            assert!(
                u128::from(in_window) <= capacity,
                "{in_window} in one window"
            );
        }
        Algorithm::SlidingWindow => {
            let window = now / span_of(limit);
            let elapsed = u128::from(now % span_of(limit));
            let sum_in = |w: u64| -> u128 {
                admitted
                    .iter()
                    .filter(|(at, _)| at / span_of(limit) == w)
                    .map(|(_, cost)| u128::from(*cost))
                    .sum()
            };
            let current = sum_in(window);
            let previous = if window > 0 { sum_in(window - 1) } else { 0 };
            // previous × (span − elapsed)/span + current ≤ capacity, in integers.
            assert!(
                previous * (span - elapsed) + current * span <= capacity * span,
                "weighted estimate over the limit: previous {previous}, current {current}"
            );
        }
        Algorithm::TokenBucket { burst } => {
            // GCRA: any run of admissions between t_i and t_j holds at most
            // burst + (t_j − t_i) × capacity / span cost units.
            let last = admitted.len() - 1;
            for first in 0..=last {
                let total: u128 = admitted[first..]
                    .iter()
                    .map(|(_, cost)| u128::from(*cost))
                    .sum();
                let elapsed = u128::from(now - admitted[first].0);
                assert!(
                    total * span <= u128::from(burst) * span + elapsed * capacity,
                    "{total} units in {elapsed} ns"
                );
            }
        }
        Algorithm::Concurrency => {}
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// No algorithm ever admits more than its limit within its own window definition; the
    /// concurrency limit is checked against a model of who holds what.
    #[test]
    fn no_algorithm_admits_more_than_its_limit(limit in a_limit(true), steps in steps(120)) {
        let limits = [limit];
        let limit = &limits[0];
        let span = span_of(limit);
        let mut states = [CounterState::EMPTY];
        let mut now = START;
        let mut admitted: Vec<(u64, u64)> = Vec::new();
        // The concurrency model: who holds what since when. A hold lasts until it is released
        // or the lease-long period after the one it was taken in ends.
        let mut held: Vec<(u64, u64)> = Vec::new();
        for step in steps {
            now += span / 1_000 * step.advance_permille;
            let at = Timestamp::from_nanos(now);
            if limit.algorithm() == Algorithm::Concurrency {
                held.retain(|(taken, _)| taken / span + 2 > now / span);
                if step.release && !held.is_empty() {
                    let (taken, cost) = held.remove(0);
                    let op = Op::Release { cost, acquired_at: Timestamp::from_nanos(taken) };
                    decide(at, &transitions(&limits, op), &mut states);
                    continue;
                }
            }
            let decision = acquire(&limits, &mut states, at, step.cost);
            if decision.allowed() {
                admitted.push((now, step.cost));
                if limit.algorithm() == Algorithm::Concurrency {
                    held.push((now, step.cost));
                }
                assert_within_limit(limit, &admitted);
            }
            if limit.algorithm() == Algorithm::Concurrency {
                let held: u64 = held.iter().map(|(_, cost)| cost).sum();
                prop_assert!(held <= limit.capacity());
                // The state's table (`CounterState`): this period's holds, and the last's.
                let state = states[0];
                let period = now / span;
                let in_flight = if !state.is_live(at) {
                    0
                } else if state.window == period {
                    state.value + state.aux
                } else if state.window + 1 == period {
                    state.value
                } else {
                    0
                };
                prop_assert_eq!(in_flight, held);
                prop_assert_eq!(decision.limits()[0].remaining(), limit.capacity() - held);
            }
        }
    }

    /// A denied request told to retry after `d` is admitted at exactly now + d and still denied
    /// one nanosecond earlier, for any mix of limits.
    #[test]
    fn retry_after_is_exact(
        limits in prop::collection::vec(a_limit(true), 1..4),
        steps in steps(80),
    ) {
        let span = span_of(&limits[0]);
        let mut states = vec![CounterState::EMPTY; limits.len()];
        let mut now = START;
        for step in steps {
            now += span / 1_000 * step.advance_permille;
            let at = Timestamp::from_nanos(now);
            let decision = acquire(&limits, &mut states, at, step.cost);
            let Some(Retry::After(wait)) = decision.retry() else { continue };
            let wait = u64::try_from(wait.as_nanos()).unwrap();
            let admit_at = Timestamp::from_nanos(now + wait);
            let mut copy = states.clone();
            prop_assert!(
                acquire(&limits, &mut copy, admit_at, step.cost).allowed(),
                "not admitted after the advertised {wait} ns"
            );
            if wait > 0 {
                let mut copy = states.clone();
                let early = Timestamp::from_nanos(now + wait - 1);
                prop_assert!(
                    !acquire(&limits, &mut copy, early, step.cost).allowed(),
                    "admitted 1 ns before the advertised {wait} ns"
                );
            }
        }
    }

    /// A request denied by any of its limits leaves every counter exactly as it was.
    #[test]
    fn a_denied_request_changes_no_counter(
        limits in prop::collection::vec(a_limit(false), 2..5),
        steps in steps(80),
    ) {
        let span = span_of(&limits[0]);
        let mut states = vec![CounterState::EMPTY; limits.len()];
        let mut now = START;
        for step in steps {
            now += span / 1_000 * step.advance_permille;
            let before = states.clone();
            let decision = acquire(&limits, &mut states, Timestamp::from_nanos(now), step.cost);
            if !decision.allowed() {
                prop_assert_eq!(&states, &before);
                prop_assert!(decision.denied_by().is_some());
                prop_assert!(decision.limits()[decision.denied_by().unwrap()].denied());
            }
        }
    }

    /// A counter decides alone exactly as it does beside a counter that admits everything: the
    /// one-counter path (which has a fast path of its own for token buckets) and the general
    /// path give the same status, the same answer and the same next state, for any stored
    /// state, cost and instant.
    #[test]
    fn one_counter_decides_alone_as_it_does_among_others(
        algorithm in 0..4u8,
        capacity in prop_oneof![Just(0u64), 1u64..=12, any::<u64>().prop_map(|c| c % (MAX_CAPACITY + 1))],
        span in prop_oneof![Just(1_000_000_000u64), 1_000_000u64..=3_155_760_000_000_000_000],
        burst in prop_oneof![1u64..=12, 1u64..=MAX_CAPACITY],
        state in prop_oneof![
            Just((0u64, 0u64, 0u64, 0u64)),
            (0u64..4, START..START + 4_000_000_000, 0u64..12, START..START + 4_000_000_000),
            (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>()),
        ],
        now in prop_oneof![START..START + 4_000_000_000, any::<u64>()],
        cost in prop_oneof![0u64..=13, any::<u64>()],
        counting in any::<bool>(),
        shadow in any::<bool>(),
    ) {
        let limit = limit_of(algorithm, capacity, span, burst, counting);
        let limit = if shadow && algorithm != 3 { limit.in_shadow().unwrap() } else { limit };
        let companion = Limit::fixed_window(1, Period::Span(1_000_000_000)).unwrap();
        let stored = stored(state);
        let now = Timestamp::from_nanos(now);
        let op = Op::Acquire { cost };
        let one = Transition { key: CounterKey::new(b"user:1", b"a"), limit: &limit, op };
        let mut alone = [stored];
        let decision = decide(now, std::slice::from_ref(&one), &mut alone);
        let beside = beside_a_companion(&one, &companion);
        let mut together = [stored, CounterState::EMPTY];
        let general = decide(now, &beside, &mut together);
        prop_assert_eq!(decision.limits()[0], general.limits()[0]);
        prop_assert_eq!(decision.denied_by(), general.denied_by());
        prop_assert_eq!(alone[0], together[0]);
    }

    /// A limit in shadow mode never changes the answer, the other limits decide as they would
    /// without it, and it counts as if it were enforced: alone when the request is admitted,
    /// as every limit enforced would when another limit denies it.
    #[test]
    fn a_shadow_limit_counts_as_if_enforced_and_never_decides(
        limits in prop::collection::vec(a_limit(true), 1..5),
        shadows in prop::collection::vec(any::<bool>(), 4),
        steps in steps(80),
    ) {
        let mixed: Vec<Limit> = limits
            .iter()
            .zip(&shadows)
            .map(|(limit, &shadow)| {
                if shadow && limit.algorithm() != Algorithm::Concurrency {
                    limit.clone().in_shadow().unwrap()
                } else {
                    limit.clone()
                }
            })
            .collect();
        let enforced: Vec<usize> = (0..mixed.len()).filter(|&i| !mixed[i].is_shadow()).collect();
        let enforced_limits: Vec<Limit> = enforced.iter().map(|&i| limits[i].clone()).collect();
        let span = span_of(&limits[0]);
        let mut states = vec![CounterState::EMPTY; limits.len()];
        let mut now = START;
        for step in steps {
            now += span / 1_000 * step.advance_permille;
            let at = Timestamp::from_nanos(now);
            let before = states.clone();
            let decision = acquire(&mixed, &mut states, at, step.cost);

            let mut without: Vec<CounterState> = enforced.iter().map(|&i| before[i]).collect();
            let alone = acquire(&enforced_limits, &mut without, at, step.cost);
            prop_assert_eq!(decision.allowed(), alone.allowed());
            for (j, &i) in enforced.iter().enumerate() {
                prop_assert_eq!(states[i], without[j]);
                prop_assert_eq!(decision.limits()[i], alone.limits()[j]);
            }
            let mut all = before.clone();
            acquire(&limits, &mut all, at, step.cost);
            for (i, limit) in mixed.iter().enumerate().filter(|(_, limit)| limit.is_shadow()) {
                prop_assert!(!decision.limits()[i].denied());
                if decision.allowed() {
                    let mut one = [before[i]];
                    let own = acquire(&limits[i..=i], &mut one, at, step.cost);
                    prop_assert_eq!(states[i], one[0], "{:?}", limit);
                    prop_assert_eq!(decision.limits()[i].would_deny(), !own.allowed());
                } else {
                    prop_assert_eq!(states[i], all[i], "{:?}", limit);
                }
            }
        }
    }

    /// Whatever a store hands back and whatever a request asks, a decision is made.
    #[test]
    fn no_input_makes_a_decision_panic(
        algorithm in 0..4u8,
        capacity in prop_oneof![Just(0u64), Just(MAX_CAPACITY), any::<u64>().prop_map(|c| c % (MAX_CAPACITY + 1))],
        span in prop_oneof![Just(1_000_000u64), Just(3_155_760_000_000_000_000u64), 1_000_000u64..=3_155_760_000_000_000_000],
        burst in prop_oneof![Just(1u64), Just(MAX_CAPACITY), 1u64..=MAX_CAPACITY],
        state in (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>()),
        now in any::<u64>(),
        cost in any::<u64>(),
        acquired_at in any::<u64>(),
        counting in any::<bool>(),
    ) {
        let limit = limit_of(algorithm, capacity, span, burst, counting);
        let limits = [limit];
        let stored = stored(state);
        let now = Timestamp::from_nanos(now);
        for op in [Op::Acquire { cost }, Op::Acquire { cost: 1 }, Op::Release { cost, acquired_at: Timestamp::from_nanos(acquired_at) }] {
            let mut states = [stored];
            let decision = decide(now, &transitions(&limits, op), &mut states);
            prop_assert_eq!(decision.limits().len(), 1);
        }
    }
}

proptest! {
    /// A key's encoding is its scope's length (four bytes, little-endian), its scope and its
    /// name, whatever their lengths: the shortest keys, put together in a register, and longer
    /// ones written piece by piece alike.
    #[test]
    fn a_key_encodes_its_scope_length_scope_and_name(
        scope in prop::collection::vec(any::<u8>(), 0..24),
        name in prop::collection::vec(any::<u8>(), 0..24),
    ) {
        let key = CounterKey::new(&scope, &name);
        let mut expected = u32::try_from(scope.len()).unwrap().to_le_bytes().to_vec();
        expected.extend_from_slice(&scope);
        expected.extend_from_slice(&name);
        prop_assert_eq!(key.encoded(), &expected[..]);
        prop_assert_eq!(key.scope(), &scope[..]);
        prop_assert_eq!(key.name(), &name[..]);
        prop_assert_eq!(CounterKey::from_encoded(&expected), key);
    }
}

proptest! {
    /// A token bucket whose interval is whole nanoseconds (its span divides by its capacity),
    /// taking one request at a time through the one-counter path, which decides it on plain
    /// integers, moves and answers exactly as the general path does, request after request:
    /// through refills, an empty bucket, a saturated span and a stored state the general path
    /// wrote.
    #[test]
    fn a_whole_nanosecond_bucket_decides_as_the_general_path(
        capacity in prop_oneof![Just(1u64), 1u64..=1_000],
        interval in prop_oneof![Just(1_000_000u64), 1_000_000u64..=60_000_000_000],
        burst in prop_oneof![Just(1u64), 1u64..=2_000],
        start in prop_oneof![Just(START), any::<u64>()],
        waits in prop::collection::vec(prop_oneof![Just(0u64), 0u64..=120_000_000_000], 1..40),
    ) {
        let limit = Limit::token_bucket(capacity, Duration::from_nanos(capacity * interval), burst)
            .unwrap();
        let companion = Limit::fixed_window(1, Period::Span(1_000_000_000)).unwrap();
        let one = Transition {
            key: CounterKey::new(b"user:1", b"a"),
            limit: &limit,
            op: Op::Acquire { cost: 1 },
        };
        let beside = beside_a_companion(&one, &companion);
        let mut alone = [CounterState::EMPTY];
        let mut together = [CounterState::EMPTY, CounterState::EMPTY];
        let mut now = start;
        for wait in waits {
            now = now.saturating_add(wait);
            let at = Timestamp::from_nanos(now);
            let decision = decide(at, std::slice::from_ref(&one), &mut alone);
            together[1] = CounterState::EMPTY;
            let general = decide(at, &beside, &mut together);
            prop_assert_eq!(decision.limits()[0], general.limits()[0]);
            prop_assert_eq!(decision.denied_by(), general.denied_by());
            prop_assert_eq!(alone[0], together[0]);
        }
    }
}
