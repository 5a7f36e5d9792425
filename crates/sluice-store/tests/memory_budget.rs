//! The memory budget: a live counter costs at most 128 bytes at a million counters, counted by
//! the allocator (exact and repeatable, unlike RSS).

use std::sync::Arc;

use sluice_core::{CounterKey, Limit, ManualClock, Op, Transition};
use sluice_store::MemoryStore;
use sluice_test_support::CountingAllocator;
use sluice_test_support::conformance::START;

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

#[test]
fn a_million_live_counters_cost_at_most_128_bytes_each() {
    const COUNTERS: u64 = 1_000_000;
    let clock = ManualClock::new(START);
    let limit = Limit::token_bucket(1_000, std::time::Duration::from_secs(60), 1_000).unwrap();
    let before = CountingAllocator::live_bytes();
    let store = MemoryStore::new(Arc::new(clock));
    for id in 0..COUNTERS {
        let transition = Transition {
            key: CounterKey::new(format!("user:{id}").as_bytes(), b"submit-media"),
            limit: &limit,
            op: Op::Acquire { cost: 1 },
        };
        assert!(store.apply_now(&[transition]).unwrap().allowed());
    }
    let bytes = CountingAllocator::live_bytes() - before;
    assert_eq!(store.len() as u64, COUNTERS);
    let per_counter = bytes as f64 / COUNTERS as f64;
    eprintln!("{per_counter:.1} bytes per live counter at {COUNTERS} counters");
    assert!(per_counter <= 128.0, "{per_counter:.1} bytes per counter");
}
