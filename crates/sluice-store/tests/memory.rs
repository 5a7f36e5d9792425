//! The memory backend: the shared conformance suite, exact counting under many threads, and
//! memory that stays bounded by live counters.

use std::sync::Arc;
use std::time::Duration;

use sluice_core::{Clock, CounterKey, Limit, ManualClock, Op, Period, Timestamp, Transition};
use sluice_store::{MemoryStore, MemoryStoreConfig};
use sluice_test_support::conformance::START;

mod conformance {
    use sluice_store::MemoryStore;
    sluice_test_support::store_conformance!(|clock| async move { MemoryStore::new(clock) });
}

/// The same suite on a single shard, where every counter of a request shares one lock.
mod conformance_one_shard {
    use sluice_store::{MemoryStore, MemoryStoreConfig};
    sluice_test_support::store_conformance!(|clock| async move {
        MemoryStore::with_config(
            clock,
            MemoryStoreConfig {
                shards: 1,
                ..MemoryStoreConfig::default()
            },
        )
    });
}

fn store(clock: &ManualClock) -> MemoryStore {
    MemoryStore::new(Arc::new(clock.clone()) as Arc<dyn Clock>)
}

fn acquire<'a>(key: CounterKey, limit: &'a Limit) -> Transition<'a> {
    Transition {
        key,
        limit,
        op: Op::Acquire { cost: 1 },
    }
}

#[test]
fn many_threads_racing_are_admitted_exactly_as_often_as_the_limits_allow() {
    const THREADS: u64 = 8;
    const ATTEMPTS: u64 = 10_000;
    let clock = ManualClock::new(START);
    let store = Arc::new(MemoryStore::with_config(
        Arc::new(clock.clone()),
        MemoryStoreConfig {
            shards: 4,
            ..MemoryStoreConfig::default()
        },
    ));
    let hour = Period::Span(3_600_000_000_000);
    let global = Arc::new(Limit::fixed_window(30_000, hour.clone()).unwrap());
    let per_thread = Arc::new(Limit::fixed_window(5_000, hour).unwrap());
    let threads: Vec<_> = (0..THREADS)
        .map(|thread| {
            let (store, global, per_thread) = (
                Arc::clone(&store),
                Arc::clone(&global),
                Arc::clone(&per_thread),
            );
            std::thread::spawn(move || {
                let mut admitted = 0u64;
                for _ in 0..ATTEMPTS {
                    let request = [
                        acquire(CounterKey::new(b"global", b"all"), &global),
                        acquire(
                            CounterKey::new(format!("thread:{thread}").as_bytes(), b"all"),
                            &per_thread,
                        ),
                    ];
                    if store.apply_now(&request).unwrap().allowed() {
                        admitted += 1;
                    }
                }
                admitted
            })
        })
        .collect();
    let admitted: Vec<u64> = threads.into_iter().map(|t| t.join().unwrap()).collect();

    // The per-thread limits allow 40,000 in all; the global 30,000 binds, exactly.
    assert_eq!(admitted.iter().sum::<u64>(), 30_000);
    for (thread, count) in admitted.iter().enumerate() {
        let own = Transition {
            key: CounterKey::new(format!("thread:{thread}").as_bytes(), b"all"),
            limit: &per_thread,
            op: Op::Acquire { cost: 0 },
        };
        // A thread's own counter counted exactly its admitted requests: never a denied one.
        let remaining = store.apply_now(&[own]).unwrap().limits()[0].remaining();
        assert_eq!(remaining, 5_000 - count, "thread {thread}");
    }
}

#[test]
fn a_flood_of_one_shot_keys_does_not_grow_memory_forever() {
    let clock = ManualClock::new(START);
    let store = store(&clock);
    let limit = Limit::fixed_window(1, Period::Span(1_000_000_000)).unwrap();
    const WAVE: u64 = 100_000;
    let mut first_capacity = 0;
    for wave in 0..10u64 {
        for i in 0..WAVE {
            let key = CounterKey::new(format!("ip:{wave}:{i}").as_bytes(), b"req");
            assert!(store.apply_now(&[acquire(key, &limit)]).unwrap().allowed());
        }
        if wave == 0 {
            first_capacity = store.capacity();
        }
        // A wave's counters are dead one second later. A table holds at most twice its peak live
        // count (one wave) before dropping the dead, however many waves come: 1,000,000 keys in
        // all, never more than ~3 waves' worth of room.
        assert!(
            store.capacity() as u64 <= 3 * WAVE,
            "wave {wave}: capacity {} for {WAVE} live counters",
            store.capacity()
        );
        clock.advance(Duration::from_secs(1));
    }
    store.sweep();
    assert!(
        store.is_empty(),
        "{} counters left after a sweep",
        store.len()
    );
    assert!(
        store.capacity() < first_capacity / 8,
        "tables shrink once empty"
    );
}

#[test]
fn a_sweep_keeps_live_counters() {
    let clock = ManualClock::new(START);
    let store = store(&clock);
    let short = Limit::fixed_window(5, Period::Span(1_000_000_000)).unwrap();
    let long = Limit::fixed_window(5, Period::Span(3_600_000_000_000)).unwrap();
    for i in 0..1_000u32 {
        let limit = if i % 2 == 0 { &short } else { &long };
        let key = CounterKey::new(&i.to_le_bytes(), b"n");
        store.apply_now(&[acquire(key, limit)]).unwrap();
    }
    clock.advance(Duration::from_secs(2));
    store.sweep();
    assert_eq!(store.len(), 500);
    let key = CounterKey::new(&1u32.to_le_bytes(), b"n");
    let still = store.apply_now(&[acquire(key, &long)]).unwrap();
    assert_eq!(
        still.limits()[0].remaining(),
        3,
        "the live counter kept its count"
    );
    assert_eq!(
        still.now(),
        Timestamp::from_nanos(START.as_nanos() + 2_000_000_000)
    );
}

#[test]
fn a_request_whose_new_counter_grows_the_table_still_counts_its_others() {
    let clock = ManualClock::new(START);
    let store = MemoryStore::with_config(
        Arc::new(clock.clone()) as Arc<dyn Clock>,
        MemoryStoreConfig {
            shards: 1,
            ..MemoryStoreConfig::default()
        },
    );
    let limit = Limit::fixed_window(10, Period::Span(3_600_000_000_000)).unwrap();
    let key = |i: u32| CounterKey::new(&i.to_le_bytes(), b"n");
    // Fill the one table to the brim, so that the next counter added moves every entry.
    let mut next = 0;
    while store.len() < store.capacity() || store.len() < 2 {
        store.apply_now(&[acquire(key(next), &limit)]).unwrap();
        next += 1;
    }
    let full = store.capacity();
    let decision = store
        .apply_now(&[
            acquire(key(0), &limit),
            acquire(key(next), &limit),
            acquire(key(1), &limit),
        ])
        .unwrap();
    assert!(store.capacity() > full, "the table grew");
    let remaining: Vec<u64> = decision.limits().iter().map(|l| l.remaining()).collect();
    assert_eq!(remaining, [8, 9, 8]);
    for (counter, left) in [(0, 7), (next, 8), (1, 7)] {
        let again = store.apply_now(&[acquire(key(counter), &limit)]).unwrap();
        assert_eq!(
            again.limits()[0].remaining(),
            left,
            "counter {counter} kept its count"
        );
    }
}

/// Keys built to look alike: every length up to and past the shortest keys' (which the store
/// names by their own bytes, and longer ones by a hash), bytes all zero, all ones or a ramp, the
/// same bytes split differently between scope and name, and encodings no key makes whose bytes
/// would pack like another key's.
fn lookalike_keys() -> Vec<CounterKey> {
    let mut keys = Vec::new();
    for total in 0..=20u8 {
        for fill in [0u8, 0xff, 1] {
            let bytes: Vec<u8> = (0..total)
                .map(|i| if fill == 1 { i + 1 } else { fill })
                .collect();
            for split in 0..=usize::from(total) {
                let key = CounterKey::new(&bytes[..split], &bytes[split..]);
                let mut forged = key.encoded().to_vec();
                if let Some(byte) = forged.get_mut(1) {
                    *byte = total + 4;
                    keys.push(CounterKey::from_encoded(&forged));
                }
                keys.push(key);
            }
        }
    }
    keys.sort_by(|a, b| a.encoded().cmp(b.encoded()));
    keys.dedup();
    keys
}

#[test]
fn every_key_counts_on_a_counter_of_its_own_and_finds_it_again() {
    let clock = ManualClock::new(START);
    let store = store(&clock);
    let limit = Limit::fixed_window(1, Period::Span(3_600_000_000_000)).unwrap();
    let keys = lookalike_keys();
    for key in &keys {
        let decision = store.apply_now(&[acquire(key.clone(), &limit)]).unwrap();
        assert!(
            decision.allowed(),
            "{key:?} shared a counter with an earlier key"
        );
    }
    assert_eq!(store.len(), keys.len());
    for key in &keys {
        let decision = store.apply_now(&[acquire(key.clone(), &limit)]).unwrap();
        assert!(!decision.allowed(), "{key:?} lost its counter");
    }
}

proptest::proptest! {
    /// Any two different keys count on different counters.
    #[test]
    fn two_different_keys_never_share_a_counter(
        first in (proptest::collection::vec(0u8..4, 0..14), proptest::collection::vec(0u8..4, 0..14)),
        second in (proptest::collection::vec(0u8..4, 0..14), proptest::collection::vec(0u8..4, 0..14)),
    ) {
        proptest::prop_assume!(first != second);
        let clock = ManualClock::new(START);
        let store = store(&clock);
        let limit = Limit::fixed_window(1, Period::Span(3_600_000_000_000)).unwrap();
        for (scope, name) in [&first, &second] {
            let decision = store.apply_now(&[acquire(CounterKey::new(scope, name), &limit)]).unwrap();
            proptest::prop_assert!(decision.allowed());
        }
    }
}
