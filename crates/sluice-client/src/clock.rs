//! The one door through which time enters the client: a `Timer` trait (how long since start,
//! the wall clock, and sleeping) and the system timer — the only wall-clock read in this crate.
//!
//! Every wait the client chooses goes through `Timer::sleep`, so a test can run a client in
//! virtual time: a timer that moves a manual clock instead of sleeping lets a retry after
//! `Retry-After: 120` happen at once, two minutes later by every clock involved.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant, SystemTime};

/// A future a timer returns from `sleep`.
pub type Sleep = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// A source of time for the client.
pub trait Timer: Send + Sync + 'static {
    /// Monotonic time since an origin of the timer's choosing: deadlines, the retry budget and
    /// pacing count with it.
    fn elapsed(&self) -> Duration;
    /// The wall clock, for HTTP-date `Retry-After` values and Unix-time resets.
    fn wall(&self) -> SystemTime;
    /// Waits `wait`.
    fn sleep(&self, wait: Duration) -> Sleep;
}

/// The machine's clocks and tokio's timer.
#[derive(Debug)]
pub struct SystemTimer {
    origin: Instant,
}

impl SystemTimer {
    /// A timer whose `elapsed` counts from now.
    #[expect(
        clippy::disallowed_methods,
        reason = "this is the client's one clock read"
    )]
    pub fn new() -> SystemTimer {
        SystemTimer {
            origin: Instant::now(),
        }
    }
}

impl Default for SystemTimer {
    fn default() -> SystemTimer {
        SystemTimer::new()
    }
}

impl Timer for SystemTimer {
    fn elapsed(&self) -> Duration {
        self.origin.elapsed()
    }

    #[expect(
        clippy::disallowed_methods,
        reason = "this is the client's one clock read"
    )]
    fn wall(&self) -> SystemTime {
        SystemTime::now()
    }

    fn sleep(&self, wait: Duration) -> Sleep {
        Box::pin(tokio::time::sleep(wait))
    }
}
