//! One decision through the memory store, beside governor's keyed limiter in the same binary:
//! one limit and three limits, over 10,000 and 1,000,000 keys, on 1 and 2 threads.
//!
//! Both sides get the same input — a client id drawn from a fixed pseudo-random sequence — and
//! a quota that admits everything, so both take their full update path. sluice runs a GCRA token
//! bucket (governor's algorithm) on the production `SystemClock`; governor on its default
//! quanta clock. With three limits, sluice makes one atomic decision over three counters;
//! governor makes three independent checks (it has no atomic multi-limit form).
//!
//! `cargo bench -p sluice-store --bench decide`; times are per decision per thread.
#![allow(missing_docs)]
// A benchmark measures elapsed time; it decides nothing with it.
#![allow(clippy::disallowed_methods)]

use std::hint::black_box;
use std::num::NonZeroU32;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use sluice_core::{CounterKey, Limit, Op, SystemClock, Transition};
use sluice_store::MemoryStore;

const RATE: u32 = 1_000_000_000;

fn quota() -> Quota {
    Quota::per_second(NonZeroU32::new(RATE).unwrap())
}

/// The next client id in `0..keys`: an xorshift step, so both sides see the same sequence.
fn next_id(state: &mut u64, keys: u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state % keys
}

trait Limiter: Send + Sync {
    fn one(&self, id: u64) -> bool;
    fn three(&self, id: u64) -> bool;
}

struct Sluice {
    store: MemoryStore,
    limit: Limit,
}

impl Sluice {
    fn new() -> Sluice {
        Sluice {
            store: MemoryStore::new(Arc::new(SystemClock::new())),
            limit: Limit::token_bucket(u64::from(RATE), Duration::from_secs(1), u64::from(RATE))
                .unwrap(),
        }
    }

    fn transition(&self, scope: &[u8], name: &[u8]) -> Transition<'_> {
        Transition {
            key: CounterKey::new(scope, name),
            limit: &self.limit,
            op: Op::Acquire { cost: 1 },
        }
    }
}

impl Limiter for Sluice {
    fn one(&self, id: u64) -> bool {
        // The per-user counter of `three`, as governor's `one` and `three` share `per_key`: both
        // sides hold the same counters.
        let request = [self.transition(&id.to_le_bytes(), b"user")];
        self.store.apply_now(&request).unwrap().allowed()
    }

    fn three(&self, id: u64) -> bool {
        let request = [
            self.transition(&id.to_le_bytes(), b"user"),
            self.transition(&(id % 100).to_le_bytes(), b"route"),
            self.transition(b"", b"global"),
        ];
        self.store.apply_now(&request).unwrap().allowed()
    }
}

struct Governor {
    per_key: DefaultKeyedRateLimiter<u64>,
    per_route: DefaultKeyedRateLimiter<u64>,
    global: DefaultDirectRateLimiter,
}

impl Governor {
    fn new() -> Governor {
        Governor {
            per_key: RateLimiter::keyed(quota()),
            per_route: RateLimiter::keyed(quota()),
            global: RateLimiter::direct(quota()),
        }
    }
}

impl Limiter for Governor {
    fn one(&self, id: u64) -> bool {
        self.per_key.check_key(&id).is_ok()
    }

    fn three(&self, id: u64) -> bool {
        self.per_key.check_key(&id).is_ok()
            & self.per_route.check_key(&(id % 100)).is_ok()
            & self.global.check().is_ok()
    }
}

/// Runs `iterations` decisions on each of `threads` threads at once; returns the wall time.
fn run(limiter: &dyn Limiter, three: bool, keys: u64, threads: u64, iterations: u64) -> Duration {
    let barrier = Barrier::new(threads as usize + 1);
    std::thread::scope(|scope| {
        for thread in 0..threads {
            let barrier = &barrier;
            scope.spawn(move || {
                let mut state = 0x2545_f491_4f6c_dd1d ^ (thread + 1);
                barrier.wait();
                for _ in 0..iterations {
                    let id = next_id(&mut state, keys);
                    black_box(if three {
                        limiter.three(id)
                    } else {
                        limiter.one(id)
                    });
                }
                barrier.wait();
            });
        }
        barrier.wait();
        let start = std::time::Instant::now();
        barrier.wait();
        start.elapsed()
    })
}

fn prefill(limiter: &dyn Limiter, keys: u64) {
    for id in 0..keys {
        limiter.one(id);
        limiter.three(id);
    }
}

fn decisions(c: &mut Criterion) {
    for keys in [10_000u64, 1_000_000] {
        let sluice = Sluice::new();
        let governor = Governor::new();
        prefill(&sluice, keys);
        prefill(&governor, keys);
        for (limits, three) in [("1-limit", false), ("3-limits", true)] {
            for threads in [1u64, 2] {
                let mut group = c.benchmark_group(format!("{limits}/{keys}-keys/{threads}-thread"));
                group.sample_size(20);
                group.warm_up_time(Duration::from_millis(500));
                group.measurement_time(Duration::from_secs(2));
                for (name, limiter) in [
                    ("sluice", &sluice as &dyn Limiter),
                    ("governor", &governor as &dyn Limiter),
                ] {
                    group.bench_function(BenchmarkId::from_parameter(name), |b| {
                        b.iter_custom(|iterations| run(limiter, three, keys, threads, iterations))
                    });
                }
                group.finish();
            }
        }
    }
}

criterion_group!(benches, decisions);
criterion_main!(benches);
