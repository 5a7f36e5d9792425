//! temporary profiling harness
#![allow(missing_docs, clippy::print_stdout)]
use sluice_core::{CounterKey, Limit, Op, SystemClock, Transition};
use sluice_store::MemoryStore;
use std::sync::Arc;
use std::time::Duration;
fn main() {
    let store = MemoryStore::new(Arc::new(SystemClock::new()));
    let limit = Limit::token_bucket(1_000_000_000, Duration::from_secs(1), 1_000_000_000).unwrap();
    let n: u64 = std::env::args()
        .nth(1)
        .map(|a| a.parse().unwrap())
        .unwrap_or(200_000);
    let mut s = 88172645463325252u64;
    let mut ok = 0u64;
    for _ in 0..n {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        let id = s % 10_000;
        let t = [Transition {
            key: CounterKey::new(&id.to_le_bytes(), b"rl"),
            limit: &limit,
            op: Op::Acquire { cost: 1 },
        }];
        ok += store.apply_now(&t).unwrap().allowed() as u64;
    }
    println!("{ok}");
}
