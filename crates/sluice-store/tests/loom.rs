//! Model checks of the memory store's locking with loom: every interleaving of two racing
//! requests is explored, and none deadlocks, half-applies a request or over-admits.
//!
//! Built only with `RUSTFLAGS="--cfg sluice_loom"` (the test script does it), which swaps the
//! store's locks for loom's.
#![cfg(sluice_loom)]

use std::sync::Arc;

use loom::thread;
use sluice_core::{CounterKey, Limit, ManualClock, Op, Period, Timestamp, Transition};
use sluice_store::{MemoryStore, MemoryStoreConfig};

fn store() -> MemoryStore {
    MemoryStore::with_config(
        Arc::new(ManualClock::new(Timestamp::from_secs(1_795_342_530))),
        MemoryStoreConfig {
            shards: 2,
            hash_secret: Some((7, 11)),
        },
    )
}

/// Two counters that live in different shards, so a request over both takes two locks.
fn keys_in_two_shards(store: &MemoryStore) -> (CounterKey, CounterKey) {
    let first = CounterKey::new(b"user:0", b"n");
    let other = (1..64u32)
        .map(|i| CounterKey::new(format!("user:{i}").as_bytes(), b"n"))
        .find(|key| store.shard_of_key(key) != store.shard_of_key(&first))
        .expect("two shards are in use");
    (first, other)
}

fn request<'a>(limit: &'a Limit, keys: &[&CounterKey]) -> Vec<Transition<'a>> {
    keys.iter()
        .map(|key| Transition {
            key: (*key).clone(),
            limit,
            op: Op::Acquire { cost: 1 },
        })
        .collect()
}

fn remaining(store: &MemoryStore, limit: &Limit, key: &CounterKey) -> u64 {
    let peek = Transition {
        key: key.clone(),
        limit,
        op: Op::Acquire { cost: 0 },
    };
    store.apply_now(&[peek]).unwrap().limits()[0].remaining()
}

fn hourly(capacity: u64) -> Arc<Limit> {
    Arc::new(Limit::fixed_window(capacity, Period::Span(3_600_000_000_000)).unwrap())
}

#[test]
fn requests_taking_two_locks_in_opposite_orders_never_deadlock_or_half_apply() {
    loom::model(|| {
        let store = Arc::new(store());
        let limit = hourly(1);
        let (a, b) = keys_in_two_shards(&store);
        let racer = {
            let (store, limit, a, b) =
                (Arc::clone(&store), Arc::clone(&limit), a.clone(), b.clone());
            thread::spawn(move || {
                store
                    .apply_now(&request(&limit, &[&b, &a]))
                    .unwrap()
                    .allowed()
            })
        };
        let mine = store
            .apply_now(&request(&limit, &[&a, &b]))
            .unwrap()
            .allowed();
        let theirs = racer.join().unwrap();
        assert!(
            mine ^ theirs,
            "exactly one of two requests for the last unit wins"
        );
        assert_eq!(remaining(&store, &limit, &a), 0);
        assert_eq!(remaining(&store, &limit, &b), 0);
    });
}

#[test]
fn a_request_over_two_counters_races_one_over_either() {
    loom::model(|| {
        let store = Arc::new(store());
        let limit = hourly(1);
        let (a, b) = keys_in_two_shards(&store);
        let racer = {
            let (store, limit, b) = (Arc::clone(&store), Arc::clone(&limit), b.clone());
            thread::spawn(move || store.apply_now(&request(&limit, &[&b])).unwrap().allowed())
        };
        let both = store
            .apply_now(&request(&limit, &[&a, &b]))
            .unwrap()
            .allowed();
        let only_b = racer.join().unwrap();
        assert!(both ^ only_b, "b has one unit: exactly one request gets it");
        // `a` was counted exactly when the two-counter request was admitted.
        assert_eq!(remaining(&store, &limit, &a), u64::from(!both));
        assert_eq!(remaining(&store, &limit, &b), 0);
    });
}
