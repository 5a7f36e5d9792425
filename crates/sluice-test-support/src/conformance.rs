//! The store conformance suite: what every [`CounterStore`] must do, whatever keeps its counters.
//!
//! Each case is an `async fn` taking a [`Subject`]: a store built on a [`ManualClock`] that the
//! case advances. The strongest case, [`decisions_match_the_engine`], replays generated traffic
//! against the store and against `sluice_core::decide` over a plain map, and requires identical
//! decisions: a backend that does its own arithmetic (a Redis script) must match the engine to
//! the nanosecond.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use sluice_core::{
    Clock, CounterKey, CounterState, Decision, Limit, MAX_CAPACITY, ManualClock, MonthlyCycle, Op,
    Period, Retry, Timestamp, Transition, decide,
};
use sluice_store::{CounterStore, StoreError};

use crate::Rng;

/// The instant every case starts at: 2026-11-22T10:15:30.25Z, aligned on no window.
pub const START: Timestamp = Timestamp::from_nanos(1_795_342_530_250_000_000);

/// A store under test, and the clock it reads.
pub struct Subject<S> {
    /// The store, shared so cases can drive it from many tasks.
    pub store: Arc<S>,
    /// The clock the store reads; cases advance it.
    pub clock: ManualClock,
}

impl<S: CounterStore + 'static> Subject<S> {
    /// Builds the store with `make`, handing it a manual clock set to [`START`].
    pub async fn new<F, Fut>(make: F) -> Subject<S>
    where
        F: FnOnce(Arc<dyn Clock>) -> Fut,
        Fut: Future<Output = S>,
    {
        let clock = ManualClock::new(START);
        let store = make(Arc::new(clock.clone())).await;
        Subject {
            store: Arc::new(store),
            clock,
        }
    }

    async fn apply(&self, transitions: &[Transition<'_>]) -> Decision {
        match self.store.apply(transitions).await {
            Ok(decision) => decision,
            Err(error) => panic!("the store failed a valid request: {error}"),
        }
    }

    async fn acquire(&self, key: &CounterKey, limit: &Limit, cost: u64) -> Decision {
        self.apply(&[acquire(key, limit, cost)]).await
    }
}

/// Generates one `#[tokio::test]` per conformance case for a backend.
///
/// `$make` is a closure from `Arc<dyn Clock>` to a future of the store, e.g.
/// `|clock| async move { MemoryStore::new(clock) }`.
#[macro_export]
macro_rules! store_conformance {
    ($make:expr) => {
        $crate::store_conformance!(@cases $make;
            an_empty_request_is_admitted,
            admits_up_to_capacity_then_denies,
            windows_reset_at_their_boundary,
            counters_are_independent,
            a_denied_request_changes_no_counter,
            limits_that_count_rejections_count_them,
            shadow_limits_count_and_never_deny,
            releases_give_capacity_back,
            a_hold_never_released_is_dropped,
            a_renewed_hold_keeps_counting,
            a_reset_counter_starts_afresh,
            expired_counters_start_afresh,
            monthly_quotas_follow_the_calendar,
            a_clock_stepping_back_readmits_nothing,
            duplicate_keys_are_refused,
            concurrent_requests_are_counted_exactly,
            decisions_match_the_engine,
            extreme_limits_match_the_engine,
        );
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                let subject = $crate::conformance::Subject::new($make).await;
                $crate::conformance::$case(&subject).await;
            }
        )*
    };
}

fn acquire<'a>(key: &CounterKey, limit: &'a Limit, cost: u64) -> Transition<'a> {
    Transition {
        key: key.clone(),
        limit,
        op: Op::Acquire { cost },
    }
}

fn key(scope: &str, name: &str) -> CounterKey {
    CounterKey::new(scope.as_bytes(), name.as_bytes())
}

fn per_second(capacity: u64) -> Limit {
    Limit::fixed_window(capacity, Period::Span(1_000_000_000)).expect("a valid limit")
}

/// A request that touches no counter is admitted and reports nothing.
pub async fn an_empty_request_is_admitted<S: CounterStore + 'static>(subject: &Subject<S>) {
    let decision = subject.apply(&[]).await;
    assert!(decision.allowed());
    assert!(decision.limits().is_empty());
    assert_eq!(decision.now(), START);
}

/// A fresh counter admits its capacity, counting down, then denies with the exact wait.
pub async fn admits_up_to_capacity_then_denies<S: CounterStore + 'static>(subject: &Subject<S>) {
    let limit = per_second(3);
    let counter = key("user:1", "uploads");
    for remaining in [2, 1, 0] {
        let decision = subject.acquire(&counter, &limit, 1).await;
        assert!(decision.allowed());
        assert_eq!(decision.limits()[0].remaining(), remaining);
        assert_eq!(decision.limits()[0].limit(), 3);
        assert_eq!(
            decision.limits()[0].reset(),
            Timestamp::from_secs(START.as_secs() + 1)
        );
    }
    let denied = subject.acquire(&counter, &limit, 1).await;
    assert!(!denied.allowed());
    assert_eq!(denied.denied_by(), Some(0));
    assert_eq!(
        denied.retry(),
        Some(Retry::After(Duration::from_millis(750)))
    );
}

/// A fixed window forgets its count at the boundary, not a nanosecond earlier.
pub async fn windows_reset_at_their_boundary<S: CounterStore + 'static>(subject: &Subject<S>) {
    let limit = per_second(1);
    let counter = key("user:1", "uploads");
    assert!(subject.acquire(&counter, &limit, 1).await.allowed());
    subject
        .clock
        .advance(Duration::from_millis(750) - Duration::from_nanos(1));
    assert!(!subject.acquire(&counter, &limit, 1).await.allowed());
    subject.clock.advance(Duration::from_nanos(1));
    assert!(subject.acquire(&counter, &limit, 1).await.allowed());
}

/// Counters with a different scope or a different name never share a count.
pub async fn counters_are_independent<S: CounterStore + 'static>(subject: &Subject<S>) {
    let limit = per_second(1);
    // The same bytes split differently between scope and name are different counters too.
    let counters = [
        key("user:1", "uploads"),
        key("user:2", "uploads"),
        key("user:1", "distributes"),
        key("user:1u", "ploads"),
    ];
    for counter in &counters {
        assert!(
            subject.acquire(counter, &limit, 1).await.allowed(),
            "{counter:?}"
        );
    }
    for counter in &counters {
        assert!(
            !subject.acquire(counter, &limit, 1).await.allowed(),
            "{counter:?}"
        );
    }
}

/// A request denied by one limit consumes nothing from the others.
pub async fn a_denied_request_changes_no_counter<S: CounterStore + 'static>(subject: &Subject<S>) {
    let per_user = Limit::token_bucket(1, Duration::from_secs(120), 1).expect("a valid limit");
    let per_route = per_second(100);
    let user = key("user:1", "upload-file");
    let route = key("route:upload-file", "all");
    let request = [acquire(&route, &per_route, 1), acquire(&user, &per_user, 1)];
    assert!(subject.apply(&request).await.allowed());
    for _ in 0..5 {
        let denied = subject.apply(&request).await;
        assert!(!denied.allowed());
        assert_eq!(denied.denied_by(), Some(1));
        assert_eq!(denied.limits()[0].remaining(), 99);
    }
    let route_only = subject.acquire(&route, &per_route, 0).await;
    assert_eq!(route_only.limits()[0].remaining(), 99);
}

/// A limit declared to count rejections counts every attempt that reaches it.
pub async fn limits_that_count_rejections_count_them<S: CounterStore + 'static>(
    subject: &Subject<S>,
) {
    let limit = per_second(2).counting_rejected().expect("a valid limit");
    let counter = key("user:1", "polls");
    for _ in 0..6 {
        subject.acquire(&counter, &limit, 1).await;
    }
    subject.clock.advance(Duration::from_millis(750));
    let next_window = subject.acquire(&counter, &limit, 1).await;
    assert!(next_window.allowed());
    assert_eq!(next_window.limits()[0].remaining(), 1);
}

/// A limit in shadow mode counts what it admits and reports what it would deny, and never denies:
/// alone, beside an enforced limit of another scope (a Redis Cluster decides the two apart),
/// and when that limit denies (it then keeps nothing, and gives back nothing it did not take).
pub async fn shadow_limits_count_and_never_deny<S: CounterStore + 'static>(subject: &Subject<S>) {
    let shadow = per_second(2).in_shadow().expect("a valid limit");
    let enforced = per_second(3);
    let user = key("user:1", "uploads");
    let route = key("route:uploads", "all");
    let request = [acquire(&user, &shadow, 1), acquire(&route, &enforced, 1)];
    for remaining in [1, 0] {
        let decision = subject.apply(&request).await;
        assert!(decision.allowed());
        assert_eq!(decision.limits()[0].remaining(), remaining);
        assert!(!decision.limits()[0].would_deny());
    }
    let over = subject.apply(&request).await;
    assert!(over.allowed());
    assert_eq!(over.denied_by(), None);
    assert!(over.limits()[0].would_deny());
    assert_eq!(over.limits()[1].remaining(), 0);
    let denied = subject.apply(&request).await;
    assert_eq!(denied.denied_by(), Some(1));
    assert!(denied.limits()[0].would_deny());
    let left = subject.acquire(&user, &shadow, 0).await;
    assert_eq!(left.limits()[0].remaining(), 0);
    assert!(!left.limits()[0].would_deny());

    subject.clock.advance(Duration::from_secs(1));
    // Denied by a limit it could never pass: the shadow limit, which had room, keeps nothing.
    let never = per_second(1);
    let other = key("route:other", "all");
    let refused = subject
        .apply(&[acquire(&user, &shadow, 1), acquire(&other, &never, 2)])
        .await;
    assert_eq!(refused.denied_by(), Some(1));
    assert!(!refused.limits()[0].would_deny());
    let left = subject.acquire(&user, &shadow, 0).await;
    assert_eq!(left.limits()[0].remaining(), 2);

    // Alone, over its limit: admitted, reported, not counted.
    assert!(subject.acquire(&user, &shadow, 2).await.allowed());
    let alone = subject.acquire(&user, &shadow, 1).await;
    assert!(alone.allowed());
    assert!(alone.limits()[0].would_deny());
    assert_eq!(alone.limits()[0].remaining(), 0);
    subject.clock.advance(Duration::from_millis(750));
    let next = subject.acquire(&user, &shadow, 1).await;
    assert_eq!(next.limits()[0].remaining(), 1);
}

/// Released units can be acquired again; a concurrency limit frees its slot.
pub async fn releases_give_capacity_back<S: CounterStore + 'static>(subject: &Subject<S>) {
    let in_flight = Limit::concurrency(2, Duration::from_secs(30)).expect("a valid limit");
    let counter = key("user:1", "in-flight");
    let first = subject.acquire(&counter, &in_flight, 1).await;
    assert!(subject.acquire(&counter, &in_flight, 1).await.allowed());
    let denied = subject.acquire(&counter, &in_flight, 1).await;
    assert_eq!(denied.retry(), Some(Retry::OnRelease));
    let release = Transition {
        key: counter.clone(),
        limit: &in_flight,
        op: Op::Release {
            cost: 1,
            acquired_at: first.now(),
        },
    };
    let released = subject.apply(&[release]).await;
    assert!(released.allowed());
    assert_eq!(released.limits()[0].remaining(), 1);
    assert!(subject.acquire(&counter, &in_flight, 1).await.allowed());
}

/// A concurrency hold never released (its holder crashed, or the release was lost) drops out
/// within two leases even while other requests keep taking and giving back slots.
pub async fn a_hold_never_released_is_dropped<S: CounterStore + 'static>(subject: &Subject<S>) {
    let in_flight = Limit::concurrency(2, Duration::from_secs(30)).expect("a valid limit");
    let counter = key("user:1", "in-flight");
    assert!(subject.acquire(&counter, &in_flight, 1).await.allowed());
    for _ in 0..60 {
        subject.clock.advance(Duration::from_secs(1));
        let taken = subject.acquire(&counter, &in_flight, 1).await;
        assert!(taken.allowed(), "one slot stays free for the traffic");
        let release = Transition {
            key: counter.clone(),
            limit: &in_flight,
            op: Op::Release {
                cost: 1,
                acquired_at: taken.now(),
            },
        };
        assert!(subject.apply(&[release]).await.allowed());
    }
    let both = subject.acquire(&counter, &in_flight, 2).await;
    assert!(both.allowed(), "the lost hold still counts: {both:?}");
    assert_eq!(both.limits()[0].remaining(), 0);
}

/// A hold renewed within every lease keeps counting for as long as it is held, however long
/// that is, and its release, naming its last renewal, frees it.
pub async fn a_renewed_hold_keeps_counting<S: CounterStore + 'static>(subject: &Subject<S>) {
    let in_flight = Limit::concurrency(1, Duration::from_secs(30)).expect("a valid limit");
    let counter = key("user:1", "in-flight");
    let mut held_since = subject.acquire(&counter, &in_flight, 1).await.now();
    for _ in 0..12 {
        subject.clock.advance(Duration::from_secs(20));
        let renew = Transition {
            key: counter.clone(),
            limit: &in_flight,
            op: Op::Renew {
                cost: 1,
                acquired_at: held_since,
            },
        };
        let renewed = subject.apply(&[renew]).await;
        assert!(renewed.allowed());
        assert_eq!(
            renewed.limits()[0].remaining(),
            0,
            "still held: {renewed:?}"
        );
        held_since = renewed.now();
        let other = subject.acquire(&counter, &in_flight, 1).await;
        assert_eq!(
            other.retry(),
            Some(Retry::OnRelease),
            "the slot stays taken"
        );
    }
    let release = Transition {
        key: counter.clone(),
        limit: &in_flight,
        op: Op::Release {
            cost: 1,
            acquired_at: held_since,
        },
    };
    assert_eq!(subject.apply(&[release]).await.limits()[0].remaining(), 1);
    assert!(subject.acquire(&counter, &in_flight, 1).await.allowed());
}

/// A reset forgets everything a counter counted, whatever its algorithm, and touches no other.
pub async fn a_reset_counter_starts_afresh<S: CounterStore + 'static>(subject: &Subject<S>) {
    let utc = MonthlyCycle::time_zone("UTC").expect("UTC exists");
    let limits = [
        per_second(3),
        Limit::sliding_window(3, Duration::from_secs(60)).expect("a valid limit"),
        Limit::token_bucket(3, Duration::from_secs(60), 3).expect("a valid limit"),
        Limit::fixed_window(3, Period::Monthly(MonthlyCycle::calendar_month(utc)))
            .expect("a valid limit"),
    ];
    for (index, limit) in limits.iter().enumerate() {
        let counter = key("user:reset", &format!("limit/{index}"));
        let other = key("user:other", &format!("limit/{index}"));
        assert!(subject.acquire(&counter, limit, 3).await.allowed());
        assert!(subject.acquire(&other, limit, 1).await.allowed());
        assert!(!subject.acquire(&counter, limit, 1).await.allowed());
        let reset = Transition {
            key: counter.clone(),
            limit,
            op: Op::Reset,
        };
        let decision = subject.apply(&[reset]).await;
        assert!(decision.allowed());
        assert_eq!(decision.limits()[0].remaining(), 3, "limit {index}");
        assert!(subject.acquire(&counter, limit, 3).await.allowed());
        let untouched = subject.acquire(&other, limit, 0).await;
        assert_eq!(untouched.limits()[0].remaining(), 2, "limit {index}");
    }
}

/// Once a counter's state expires the counter starts afresh, even if the backend still holds it.
pub async fn expired_counters_start_afresh<S: CounterStore + 'static>(subject: &Subject<S>) {
    let bucket = Limit::token_bucket(10, Duration::from_secs(60), 10).expect("a valid limit");
    let counter = key("site:abc", "submit-media");
    assert!(subject.acquire(&counter, &bucket, 10).await.allowed());
    assert!(!subject.acquire(&counter, &bucket, 1).await.allowed());
    subject.clock.advance(Duration::from_secs(60));
    let fresh = subject.acquire(&counter, &bucket, 0).await;
    assert_eq!(fresh.limits()[0].remaining(), 10);
}

/// A monthly quota is spent within the calendar month and comes back on the 1st.
pub async fn monthly_quotas_follow_the_calendar<S: CounterStore + 'static>(subject: &Subject<S>) {
    let utc = MonthlyCycle::time_zone("UTC").expect("UTC exists");
    let quota = Limit::fixed_window(2, Period::Monthly(MonthlyCycle::calendar_month(utc)))
        .expect("a valid limit");
    let counter = key("team:7", "moderations");
    assert!(subject.acquire(&counter, &quota, 2).await.allowed());
    let denied = subject.acquire(&counter, &quota, 1).await;
    // From 2026-11-22T10:15:30.25Z to 2026-12-01T00:00:00Z.
    let december = Timestamp::from_secs(1_796_083_200);
    assert_eq!(denied.limits()[0].reset(), december);
    subject.clock.set(december);
    assert!(subject.acquire(&counter, &quota, 1).await.allowed());
}

/// When the clock steps back, a counted window stays counted.
pub async fn a_clock_stepping_back_readmits_nothing<S: CounterStore + 'static>(
    subject: &Subject<S>,
) {
    let limits = [
        per_second(1),
        Limit::sliding_window(1, Duration::from_secs(1)).expect("a valid limit"),
        Limit::token_bucket(1, Duration::from_secs(1), 1).expect("a valid limit"),
    ];
    for (index, limit) in limits.iter().enumerate() {
        let counter = key("user:1", &format!("uploads/{index}"));
        assert!(subject.acquire(&counter, limit, 1).await.allowed());
    }
    subject
        .clock
        .set(Timestamp::from_nanos(START.as_nanos() - 2_000_000_000));
    for (index, limit) in limits.iter().enumerate() {
        let counter = key("user:1", &format!("uploads/{index}"));
        let decision = subject.acquire(&counter, limit, 1).await;
        assert!(!decision.allowed(), "{limit:?}");
    }
}

/// A request naming one counter twice is refused and changes nothing.
pub async fn duplicate_keys_are_refused<S: CounterStore + 'static>(subject: &Subject<S>) {
    let limit = per_second(5);
    let counter = key("user:1", "uploads");
    let other = key("user:2", "uploads");
    let request = [
        acquire(&other, &limit, 1),
        acquire(&counter, &limit, 1),
        acquire(&counter, &limit, 1),
    ];
    match subject.store.apply(&request).await {
        Err(StoreError::DuplicateKey(duplicate)) => assert_eq!(duplicate, counter),
        other => panic!("expected a duplicate-key error, got {other:?}"),
    }
    let untouched = subject.acquire(&other, &limit, 0).await;
    assert_eq!(untouched.limits()[0].remaining(), 5);
}

/// Many tasks racing on shared counters are admitted exactly as many times as the limits allow,
/// and a request is never half-applied.
pub async fn concurrent_requests_are_counted_exactly<S: CounterStore + 'static>(
    subject: &Subject<S>,
) {
    const TASKS: u64 = 16;
    const ATTEMPTS: u64 = 100;
    let global = Arc::new(per_second(500));
    let per_task = Arc::new(per_second(40));
    let mut handles = Vec::new();
    for task in 0..TASKS {
        let store = Arc::clone(&subject.store);
        let (global, per_task) = (Arc::clone(&global), Arc::clone(&per_task));
        handles.push(tokio::spawn(async move {
            let shared = key("global", "all");
            let own = key(&format!("task:{task}"), "all");
            let mut admitted = 0u64;
            for _ in 0..ATTEMPTS {
                let request = [acquire(&shared, &global, 1), acquire(&own, &per_task, 1)];
                if store
                    .apply(&request)
                    .await
                    .expect("a valid request")
                    .allowed()
                {
                    admitted += 1;
                }
            }
            admitted
        }));
    }
    let mut admitted = Vec::new();
    for handle in handles {
        admitted.push(handle.await.expect("the task finished"));
    }
    // 16 tasks × 40 = 640 admissible by the per-task limits, so the global 500 binds.
    assert_eq!(admitted.iter().sum::<u64>(), 500);
    let global_left = subject.acquire(&key("global", "all"), &global, 0).await;
    assert_eq!(global_left.limits()[0].remaining(), 0);
    for (task, count) in admitted.iter().enumerate() {
        let own = key(&format!("task:{task}"), "all");
        let left = subject.acquire(&own, &per_task, 0).await;
        assert_eq!(left.limits()[0].remaining(), 40 - count, "task {task}");
    }
}

/// Generated traffic — every algorithm, several scopes, multi-limit requests, releases, clock
/// advances — gets from the store exactly the decisions the engine makes over a plain map.
pub async fn decisions_match_the_engine<S: CounterStore + 'static>(subject: &Subject<S>) {
    let utc = MonthlyCycle::time_zone("UTC").expect("UTC exists");
    let limits = [
        per_second(5),
        Limit::sliding_window(7, Duration::from_secs(2)).expect("a valid limit"),
        Limit::token_bucket(3, Duration::from_secs(1), 2).expect("a valid limit"),
        Limit::concurrency(2, Duration::from_secs(3)).expect("a valid limit"),
        per_second(4).counting_rejected().expect("a valid limit"),
        Limit::fixed_window(
            60,
            Period::Monthly(MonthlyCycle::anchored(22, utc).expect("valid")),
        )
        .expect("a valid limit"),
        Limit::token_bucket(1, Duration::from_secs(120), 1)
            .expect("a valid limit")
            .counting_rejected()
            .expect("a valid limit"),
        Limit::token_bucket(2, Duration::from_secs(1), 2)
            .expect("a valid limit")
            .in_shadow()
            .expect("a valid limit"),
        per_second(3)
            .counting_rejected()
            .and_then(Limit::in_shadow)
            .expect("a valid limit"),
        Limit::sliding_window(4, Duration::from_secs(2))
            .and_then(Limit::in_shadow)
            .expect("a valid limit"),
    ];
    let scopes = ["user:1", "user:2", "site:x"];
    let mut model: HashMap<CounterKey, CounterState> = HashMap::new();
    let mut acquired: Vec<Timestamp> = vec![START];
    let mut rng = Rng::new(0x51u64);
    for step in 0..3_000 {
        subject.clock.advance(Duration::from_millis(rng.below(400)));
        let scope = scopes[rng.below(3) as usize];
        let count = 1 + rng.below(3) as usize;
        let mut chosen: Vec<usize> = Vec::new();
        while chosen.len() < count {
            let limit = rng.below(limits.len() as u64) as usize;
            if !chosen.contains(&limit) {
                chosen.push(limit);
            }
        }
        let op = match rng.below(10) {
            0 | 1 => Op::Release {
                cost: 1 + rng.below(2),
                acquired_at: acquired[rng.below(acquired.len() as u64) as usize],
            },
            2 => Op::Renew {
                cost: 1 + rng.below(2),
                acquired_at: acquired[rng.below(acquired.len() as u64) as usize],
            },
            _ => Op::Acquire { cost: rng.below(3) },
        };
        let transitions: Vec<Transition<'_>> = chosen
            .iter()
            .map(|&limit| Transition {
                key: CounterKey::new(scope.as_bytes(), format!("limit-{limit}").as_bytes()),
                limit: &limits[limit],
                op,
            })
            .collect();

        let got = matches_the_engine(subject, &mut model, &transitions, step).await;
        if got.allowed() {
            acquired.push(got.now());
        }
    }
}

/// Applies `transitions` to the store and to the engine over `model`, and requires the same
/// decision from both.
async fn matches_the_engine<S: CounterStore + 'static>(
    subject: &Subject<S>,
    model: &mut HashMap<CounterKey, CounterState>,
    transitions: &[Transition<'_>],
    step: usize,
) -> Decision {
    let got = subject.apply(transitions).await;
    let now = subject.clock.now();
    let mut states: Vec<CounterState> = transitions
        .iter()
        .map(|t| model.get(&t.key).copied().unwrap_or_default())
        .collect();
    let expected = decide(now, transitions, &mut states);
    for (transition, state) in transitions.iter().zip(states) {
        model.insert(transition.key.clone(), state);
    }
    assert_eq!(got, expected, "step {step}: {transitions:?}");
    got
}

/// Limits at the edges of what the engine accepts — capacities up to 2^48, spans from 1 ms to
/// 100 years and of odd lengths, costs beyond capacity, the clock jumping years ahead — get the engine's decisions too: a backend whose arithmetic is narrower than the
/// engine's (a script with only doubles) shows it here.
pub async fn extreme_limits_match_the_engine<S: CounterStore + 'static>(subject: &Subject<S>) {
    const YEAR: u64 = 31_557_600_000_000_000;
    let mut rng = Rng::new(0xE7u64);
    let capacities = [1, 3, 1_000_003, MAX_CAPACITY - 1, MAX_CAPACITY];
    let spans = [
        1_000_000,
        1_000_000_007,
        86_400_000_000_000 - 1,
        YEAR,
        100 * YEAR,
    ];
    let mut limits = Vec::new();
    for (index, &capacity) in capacities.iter().enumerate() {
        for (offset, &span) in spans.iter().enumerate() {
            let span_duration = Duration::from_nanos(span);
            let limit = match (index + offset) % 4 {
                0 => Limit::fixed_window(capacity, Period::Span(span)),
                1 => Limit::sliding_window(capacity, span_duration),
                2 => Limit::token_bucket(capacity, span_duration, capacity.div_ceil(2)),
                _ => Limit::concurrency(capacity, span_duration),
            }
            .expect("a valid limit");
            if offset % 2 == 1 && (index + offset) % 4 != 3 {
                limits.push(limit.counting_rejected().expect("a valid limit"));
            } else {
                limits.push(limit);
            }
        }
    }
    let mut model: HashMap<CounterKey, CounterState> = HashMap::new();
    for step in 0..2_000 {
        // (No steps back here: a store may drop a state once it has expired, so a clock going
        // back past that instant finds it gone; `a_clock_stepping_back_readmits_nothing`.)
        match rng.below(10) {
            0 => subject
                .clock
                .advance(Duration::from_nanos(rng.below(2 * YEAR))),
            _ => subject
                .clock
                .advance(Duration::from_nanos(rng.below(2_000_000_000))),
        }
        let index = rng.below(limits.len() as u64) as usize;
        let limit = &limits[index];
        let capacity = limit.capacity();
        let cost = match rng.below(4) {
            0 => rng.below(capacity.saturating_add(2)),
            1 => capacity.saturating_sub(rng.below(2)),
            2 => u64::MAX - rng.below(2),
            _ => 1,
        };
        let acquired_at = Timestamp::from_nanos(subject.clock.now().as_nanos() - rng.below(YEAR));
        let op = match rng.below(7) {
            0 => Op::Release { cost, acquired_at },
            1 => Op::Renew { cost, acquired_at },
            2 => Op::Acquire { cost: 0 },
            _ => Op::Acquire { cost },
        };
        let transition = Transition {
            key: CounterKey::new(b"edge", format!("limit-{index}").as_bytes()),
            limit,
            op,
        };
        matches_the_engine(subject, &mut model, &[transition], step).await;
    }
}
