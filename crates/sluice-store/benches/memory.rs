//! Bytes per live counter at 1,000,000 counters: the memory store beside governor's keyed
//! limiter, both counted by the same allocator in the same process. The limit is 1 per hour, so
//! every counter stays live while the store fills.
#![allow(missing_docs, clippy::print_stdout)]

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::{Quota, RateLimiter};
use sluice_core::{CounterKey, Limit, Op, SystemClock, Transition};
use sluice_store::MemoryStore;
use sluice_test_support::CountingAllocator;

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

const KEYS: u64 = 1_000_000;

fn main() {
    let before = CountingAllocator::live_bytes();
    let store = MemoryStore::new(Arc::new(SystemClock::new()));
    let limit = Limit::token_bucket(1, Duration::from_secs(3_600), 1).unwrap();
    for id in 0..KEYS {
        let request = [Transition {
            key: CounterKey::new(&id.to_le_bytes(), b"rl"),
            limit: &limit,
            op: Op::Acquire { cost: 1 },
        }];
        store.apply_now(&request).unwrap();
    }
    let sluice = (CountingAllocator::live_bytes() - before) as f64 / KEYS as f64;
    drop(store);

    let before = CountingAllocator::live_bytes();
    let governor = RateLimiter::keyed(Quota::per_hour(NonZeroU32::new(1).unwrap()));
    for id in 0..KEYS {
        let _ = governor.check_key(&id);
    }
    let baseline = (CountingAllocator::live_bytes() - before) as f64 / KEYS as f64;

    println!("bytes per live counter at {KEYS} counters (allocator-counted)");
    println!("  sluice memory store  {sluice:>7.1}");
    println!("  governor keyed       {baseline:>7.1}");
    println!("  ratio                {:>7.2}", sluice / baseline);
}
