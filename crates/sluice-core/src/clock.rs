//! The one door through which time enters sluice: a `Clock` trait, a manual clock for tests, and
//! the system clock — the only wall-clock read in the workspace.
//!
//! The decision engine never calls a clock itself; callers (stores, services) read a `Clock` and
//! pass the instant in. That keeps every decision reproducible from its inputs.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::time::{Timestamp, duration_to_nanos};

/// A source of the current instant.
pub trait Clock: Send + Sync + 'static {
    /// The current instant.
    fn now(&self) -> Timestamp;
}

/// The wall clock of the machine, read cheaply.
///
/// Reading the OS wall clock costs a fifth of a decision, so this clock counts with the CPU's
/// timestamp counter (through `quanta`, which falls back to the OS monotonic clock where the
/// counter is unreliable) from an offset to the wall clock. The offset is taken again from the
/// OS wall clock once a second, so the clock follows NTP adjustments and steps within a second;
/// a step back is handled by the engine like any clock stepping back.
#[derive(Debug)]
pub struct SystemClock {
    counter: quanta::Clock,
    /// The counter's reading at construction; `elapsed` counts from it.
    start: u64,
    /// Wall-clock ns minus elapsed ns at the last re-anchoring (wrapping arithmetic).
    offset: AtomicU64,
    /// Elapsed ns at the last re-anchoring.
    anchored_at: AtomicU64,
}

/// How often the offset to the OS wall clock is taken again.
const REANCHOR_NANOS: u64 = 1_000_000_000;

impl SystemClock {
    /// A clock anchored to the OS wall clock now.
    pub fn new() -> SystemClock {
        let counter = quanta::Clock::new();
        let start = counter.raw();
        let clock = SystemClock {
            counter,
            start,
            offset: AtomicU64::new(0),
            anchored_at: AtomicU64::new(0),
        };
        clock.anchor(0);
        clock
    }

    fn elapsed(&self) -> u64 {
        self.counter.delta_as_nanos(self.start, self.counter.raw())
    }

    fn anchor(&self, elapsed: u64) {
        self.offset
            .store(wall_nanos().wrapping_sub(elapsed), Ordering::Relaxed);
        self.anchored_at.store(elapsed, Ordering::Relaxed);
    }
}

impl Default for SystemClock {
    fn default() -> SystemClock {
        SystemClock::new()
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        let elapsed = self.elapsed();
        if elapsed.saturating_sub(self.anchored_at.load(Ordering::Relaxed)) >= REANCHOR_NANOS {
            // Several threads may re-anchor at once; each stores a valid offset.
            self.anchor(elapsed);
        }
        Timestamp::from_nanos(elapsed.wrapping_add(self.offset.load(Ordering::Relaxed)))
    }
}

/// The OS wall clock, in ns since the epoch: the one sanctioned wall-clock read.
#[allow(clippy::disallowed_methods)]
fn wall_nanos() -> u64 {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    duration_to_nanos(since_epoch)
}

/// A clock that moves only when told to. Clones share the same instant, so a test can hand one
/// clone to a store and keep another to advance time.
#[derive(Clone, Debug, Default)]
pub struct ManualClock {
    nanos: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock stopped at `start`.
    pub fn new(start: Timestamp) -> ManualClock {
        ManualClock {
            nanos: Arc::new(AtomicU64::new(start.as_nanos())),
        }
    }

    /// Moves the clock `by` later (saturating).
    pub fn advance(&self, by: Duration) {
        let by = duration_to_nanos(by);
        // fetch_update cannot fail with a closure that always returns Some.
        let _ = self
            .nanos
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |nanos| {
                Some(nanos.saturating_add(by))
            });
    }

    /// Sets the clock to `to`, which may be earlier than now (a clock stepping back).
    pub fn set(&self, to: Timestamp) {
        self.nanos.store(to.as_nanos(), Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_nanos(self.nanos.load(Ordering::SeqCst))
    }
}
