//! Coarse timeouts for the per-request timers every connection and proxied request arms: the
//! header-read timeout (hyper's, through [`hyper::rt::Timer`]) and the upstream timeout.
//!
//! Nearly all of these timers are cancelled long before they fire, and none needs better than a
//! tenth of its length. tokio's timer wheel cost the proxy about 3,000 instructions per request
//! for the two (8 % of its user-space work, measured with `bench/proxy-instructions.sh`). Here a
//! timer is an entry in a slab under an uncontended lock, and one task per accept loop ticks at a
//! fixed resolution while any timer is armed, wakes the expired, and sleeps when none is. A
//! deadline counts from a clock read when the timer is armed, never from the last tick's time: a
//! ticker the runtime runs late (a loaded machine) would otherwise make every timer armed
//! meanwhile fire early by as much.
//!
//! A timer never fires before its deadline, and at most about a resolution after it (plus
//! whatever delays the runtime in running the ticker).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use slab::Slab;
// tokio's instant: the std one outside tests, and one a test can pause.
use tokio::time::Instant;

/// The coarsest a resolution gets: timeouts of a second and more fire within 0.1 s of it.
const MAX_RESOLUTION: Duration = Duration::from_millis(100);
/// The finest: below this, ticking would cost more than tokio's own timers.
const MIN_RESOLUTION: Duration = Duration::from_millis(1);
/// What a deadline too far to represent becomes: never, in practice.
const FAR_FUTURE: Duration = Duration::from_secs(30 * 365 * 86_400);

/// Timers of one accept loop. Cloning shares them.
#[derive(Clone, Debug)]
pub(crate) struct Deadlines {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    resolution: Duration,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// The time the last tick read (an instant already past): a timer armed with a deadline
    /// before it is due at once.
    now: Instant,
    timers: Slab<Timer>,
    /// No unfired timer expires before this: the ticker skips its walk until then.
    earliest: Instant,
    /// Whether the ticker idles, with no timer to watch.
    idle: bool,
    /// The ticker's waker while it idles.
    ticker: Option<Waker>,
}

#[derive(Debug)]
struct Timer {
    deadline: Instant,
    waker: Option<Waker>,
    fired: bool,
}

impl Deadlines {
    /// Timers ticking every `resolution` (clamped to 1–100 ms), with a ticking task on the
    /// current tokio runtime that ends once the last handle and timer are gone.
    pub(crate) fn new(resolution: Duration) -> Deadlines {
        let now = Instant::now();
        let inner = Arc::new(Inner {
            resolution: resolution.clamp(MIN_RESOLUTION, MAX_RESOLUTION),
            state: Mutex::new(State {
                now,
                timers: Slab::new(),
                earliest: now,
                idle: true,
                ticker: None,
            }),
        });
        tokio::spawn(tick(Arc::downgrade(&inner)));
        Deadlines { inner }
    }

    /// Timers for timeouts the shortest of which is `shortest`: ticking at a tenth of it.
    pub(crate) fn for_timeouts(shortest: Duration) -> Deadlines {
        Deadlines::new(shortest / 10)
    }

    /// A timer firing `duration` from now.
    fn sleep_for(&self, duration: Duration) -> Sleep {
        self.sleep_until(later(Instant::now(), duration))
    }

    /// A timer firing at `deadline`.
    fn sleep_until(&self, deadline: Instant) -> Sleep {
        Sleep {
            inner: Arc::clone(&self.inner),
            deadline,
            key: None,
        }
    }

    /// `future`, or `Err(Elapsed)` if it has not finished within `duration`.
    pub(crate) fn timeout<F: Future>(&self, duration: Duration, future: F) -> Timeout<F> {
        Timeout {
            future,
            sleep: self.sleep_for(duration),
        }
    }
}

/// `at + by`, with `by` capped at a far future (a configured `Duration::MAX` means never, and
/// must not overflow the instant).
fn later(at: Instant, by: Duration) -> Instant {
    // Any instant a process holds has 30 years of room after it: the fallback is never taken.
    at.checked_add(by.min(FAR_FUTURE)).unwrap_or(at)
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock; a poisoned one still holds consistent timers.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Let an idle ticker see that nothing is left and end.
        let ticker = self
            .state
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .ticker
            .take();
        if let Some(ticker) = ticker {
            ticker.wake();
        }
    }
}

/// Ticks while any timer is armed, waking those whose deadline has passed; idles otherwise.
async fn tick(inner: Weak<Inner>) {
    let Some(resolution) = inner.upgrade().map(|inner| inner.resolution) else {
        return;
    };
    let mut ticks = tokio::time::interval(resolution);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let walked = std::future::poll_fn(|cx| {
            let Some(inner) = inner.upgrade() else {
                return Poll::Ready(None);
            };
            let mut state = inner.lock();
            let now = Instant::now();
            state.now = now;
            if state.timers.is_empty() {
                if state.timers.capacity() > 1024 {
                    // A burst of connections is over: give its memory back.
                    state.timers = Slab::new();
                }
                state.idle = true;
                state.ticker = Some(cx.waker().clone());
                return Poll::Pending;
            }
            let resumed = std::mem::take(&mut state.idle);
            if now >= state.earliest {
                let mut earliest = now + resolution;
                for (_, timer) in &mut state.timers {
                    if timer.fired {
                        continue;
                    }
                    if timer.deadline <= now {
                        timer.fired = true;
                        if let Some(waker) = timer.waker.take() {
                            waker.wake();
                        }
                    } else {
                        earliest = earliest.min(timer.deadline);
                    }
                }
                state.earliest = earliest;
            }
            Poll::Ready(Some(resumed))
        })
        .await;
        match walked {
            None => return,
            // Back from idling: the next tick is a resolution from now.
            Some(true) => ticks.reset(),
            Some(false) => {}
        }
    }
}

/// A timer of [`Deadlines`]; disarmed when dropped.
#[derive(Debug)]
pub(crate) struct Sleep {
    inner: Arc<Inner>,
    deadline: Instant,
    /// The slab entry, once polled.
    key: Option<usize>,
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        let mut state = this.inner.lock();
        match this.key {
            Some(key) => {
                let Some(timer) = state.timers.get_mut(key) else {
                    return Poll::Ready(());
                };
                if timer.fired {
                    return Poll::Ready(());
                }
                match &mut timer.waker {
                    Some(waker) if waker.will_wake(cx.waker()) => {}
                    waker => *waker = Some(cx.waker().clone()),
                }
            }
            None => {
                if state.now >= this.deadline {
                    return Poll::Ready(());
                }
                this.key = Some(state.timers.insert(Timer {
                    deadline: this.deadline,
                    waker: Some(cx.waker().clone()),
                    fired: false,
                }));
                state.earliest = state.earliest.min(this.deadline);
                if let Some(ticker) = state.ticker.take() {
                    // The ticker idles with no timer to watch: it ticks again.
                    ticker.wake();
                }
            }
        }
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            self.inner.lock().timers.try_remove(key);
        }
    }
}

impl hyper::rt::Sleep for Sleep {}

impl hyper::rt::Timer for Deadlines {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(self.sleep_for(duration))
    }

    fn sleep_until(&self, deadline: std::time::Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(Deadlines::sleep_until(self, Instant::from_std(deadline)))
    }

    fn now(&self) -> std::time::Instant {
        Instant::now().into_std()
    }
}

/// The error of a [`Timeout`] whose time ran out.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Elapsed;

/// A future with a time limit, from [`Deadlines::timeout`].
#[derive(Debug)]
pub(crate) struct Timeout<F> {
    future: F,
    sleep: Sleep,
}

impl<F: Future + Unpin> Future for Timeout<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Poll::Ready(output) = Pin::new(&mut self.future).poll(cx) {
            return Poll::Ready(Ok(output));
        }
        match Pin::new(&mut self.sleep).poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(Elapsed)),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// A watch for a stall: no progress for a while. Armed at the first wait, and disarmed by
/// progress, so a wait that ends at once costs no timer.
#[derive(Debug, Default)]
pub(crate) struct Stall(Option<Sleep>);

impl Stall {
    /// Progress was made: the watch starts again from the next wait.
    pub(crate) fn progressed(&mut self) {
        self.0 = None;
    }

    /// Still waiting: whether `limit` has passed since the wait began (timed on `timers`, from
    /// the first call). `cx` is woken when it passes.
    pub(crate) fn expired(
        &mut self,
        timers: &Deadlines,
        limit: Duration,
        cx: &mut Context<'_>,
    ) -> bool {
        let sleep = self.0.get_or_insert_with(|| timers.sleep_for(limit));
        if Pin::new(sleep).poll(cx).is_pending() {
            return false;
        }
        self.0 = None;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deadlines(resolution_ms: u64) -> Deadlines {
        Deadlines::new(Duration::from_millis(resolution_ms))
    }

    /// A timer armed elsewhere that keeps the ticker ticking, every resolution from now.
    async fn keep_ticking(timers: &Deadlines) -> tokio::task::JoinHandle<Duration> {
        let background = tokio::spawn({
            let timers = timers.clone();
            async move { time_out_after(&timers, Duration::from_secs(10)).await }
        });
        tokio::task::yield_now().await;
        background
    }

    async fn time_out_after(timers: &Deadlines, timeout: Duration) -> Duration {
        let start = Instant::now();
        let outcome = timers
            .timeout(timeout, Box::pin(std::future::pending::<()>()))
            .await;
        assert_eq!(outcome, Err(Elapsed));
        start.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn a_timeout_fires_after_its_deadline_and_within_a_resolution() {
        let timers = deadlines(10);
        for timeout in [1, 5, 200, 2_000] {
            let timeout = Duration::from_millis(timeout);
            let waited = time_out_after(&timers, timeout).await;
            assert!(waited >= timeout, "{waited:?} for {timeout:?}");
            assert!(
                waited <= timeout + Duration::from_millis(10),
                "{waited:?} for {timeout:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_timer_armed_between_ticks_still_waits_its_whole_timeout() {
        let timers = deadlines(10);
        let background = keep_ticking(&timers).await;
        for offset in [3, 7, 9] {
            // Between ticks, the last tick's time is a few ms old.
            tokio::time::sleep(Duration::from_millis(offset)).await;
            let timeout = Duration::from_millis(20);
            let waited = time_out_after(&timers, timeout).await;
            assert!(
                waited >= timeout,
                "{waited:?} armed {offset} ms after a tick"
            );
            assert!(waited <= timeout + Duration::from_millis(10), "{waited:?}");
        }
        background.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_ticker_running_late_never_makes_a_timer_fire_early() {
        let timers = deadlines(10);
        let background = keep_ticking(&timers).await;
        // A loaded machine ran the ticker 50 ms late: its time is that old when a timer is armed.
        timers.inner.lock().now = Instant::now() - Duration::from_millis(50);
        let timeout = Duration::from_millis(20);
        let waited = time_out_after(&timers, timeout).await;
        assert!(waited >= timeout, "{waited:?}");
        assert!(waited <= timeout + Duration::from_millis(10), "{waited:?}");
        background.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_stall_expires_a_limit_after_its_wait_began_and_progress_starts_it_again() {
        let timers = deadlines(10);
        let limit = Duration::from_millis(100);
        let mut stall = Stall::default();
        // Polls the watch once a millisecond, with progress at `progress_at` ms, until it
        // expires; returns when that was.
        let mut watch = async |progress_at: Option<u64>| {
            let start = Instant::now();
            for elapsed in 0_u64.. {
                if Some(elapsed) == progress_at {
                    stall.progressed();
                }
                let expired =
                    std::future::poll_fn(|cx| Poll::Ready(stall.expired(&timers, limit, cx))).await;
                if expired {
                    return start.elapsed();
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            unreachable!("the loop ends by expiring")
        };
        let waited = watch(None).await;
        assert!(
            waited >= limit && waited <= limit + Duration::from_millis(12),
            "{waited:?}"
        );
        let waited = watch(Some(60)).await;
        assert!(
            waited >= limit + Duration::from_millis(60),
            "progress at 60 ms gives another whole limit: {waited:?}"
        );
        assert!(waited <= limit + Duration::from_millis(72), "{waited:?}");
        assert!(timers.inner.lock().timers.is_empty(), "no timer left armed");
    }

    #[tokio::test(start_paused = true)]
    async fn an_endless_timeout_neither_fires_nor_overflows() {
        let timers = deadlines(10);
        let endless = timers.timeout(Duration::MAX, Box::pin(std::future::pending::<()>()));
        let outcome = tokio::time::timeout(Duration::from_secs(3_600), endless).await;
        assert!(outcome.is_err(), "still waiting after an hour");
    }

    #[tokio::test(start_paused = true)]
    async fn a_future_that_finishes_in_time_is_answered_and_its_timer_disarmed() {
        let timers = deadlines(10);
        let quick = timers.timeout(
            Duration::from_millis(200),
            Box::pin(async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                7
            }),
        );
        assert_eq!(quick.await, Ok(7));
        assert!(timers.inner.lock().timers.is_empty());
        let ready = timers.timeout(Duration::from_millis(200), Box::pin(async { 8 }));
        assert_eq!(ready.await, Ok(8));
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_long_idle_a_new_timer_counts_from_the_present() {
        let timers = deadlines(10);
        time_out_after(&timers, Duration::from_millis(30)).await;
        // Nothing armed for a minute: the ticker idles and its time goes stale.
        tokio::time::sleep(Duration::from_secs(60)).await;
        let timeout = Duration::from_millis(100);
        let waited = time_out_after(&timers, timeout).await;
        assert!(waited >= timeout, "{waited:?}");
        assert!(waited <= timeout + Duration::from_millis(10), "{waited:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn hypers_timer_interface_sleeps_as_long_as_asked() {
        use hyper::rt::Timer as _;
        let timers = deadlines(10);
        let start = Instant::now();
        timers.sleep(Duration::from_millis(300)).await;
        let deadline = hyper::rt::Timer::now(&timers) + Duration::from_millis(100);
        hyper::rt::Timer::sleep_until(&timers, deadline).await;
        let waited = start.elapsed();
        assert!(waited >= Duration::from_millis(400), "{waited:?}");
        assert!(waited <= Duration::from_millis(420), "{waited:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn many_timers_fire_each_at_its_own_deadline() {
        let timers = deadlines(5);
        let start = Instant::now();
        let waits = (1..=20u64).map(|step| {
            let timers = timers.clone();
            tokio::spawn(async move {
                let timeout = Duration::from_millis(step * 37);
                let waited = time_out_after(&timers, timeout).await;
                (timeout, waited)
            })
        });
        for wait in waits.collect::<Vec<_>>() {
            let (timeout, waited) = wait.await.expect("task");
            assert!(waited >= timeout, "{waited:?} for {timeout:?}");
            assert!(
                waited <= timeout + Duration::from_millis(5),
                "{waited:?} for {timeout:?}"
            );
        }
        assert!(start.elapsed() >= Duration::from_millis(740));
    }

    #[tokio::test(start_paused = true)]
    async fn the_ticker_ends_with_the_last_handle() {
        let metrics = tokio::runtime::Handle::current().metrics();
        let before = metrics.num_alive_tasks();
        let timers = deadlines(10);
        time_out_after(&timers, Duration::from_millis(30)).await;
        // With nothing armed, the ticker idles; dropping the last handle ends it all the same.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(metrics.num_alive_tasks(), before + 1);
        drop(timers);
        tokio::task::yield_now().await;
        assert_eq!(metrics.num_alive_tasks(), before);
    }
}
