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

/// The wall clock of the machine.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[allow(clippy::disallowed_methods)] // the one sanctioned wall-clock read
    fn now(&self) -> Timestamp {
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        Timestamp::from_nanos(duration_to_nanos(since_epoch))
    }
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

impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now(&self) -> Timestamp {
        (**self).now()
    }
}
