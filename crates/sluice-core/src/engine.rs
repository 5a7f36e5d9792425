//! The decision engine: every algorithm, written once, as pure functions from (limit, operation,
//! stored state, now) to the next state and a report.
//!
//! All arithmetic is on integers (nanoseconds, cost units) widened to `u128` and saturating, so
//! results are exact and no input can overflow or panic. Limit construction bounds capacities by
//! 2^48 and spans by 2^62 ns, which keeps every product below 2^116.

use smallvec::SmallVec;

use crate::calendar::Window;
use crate::decision::{Decision, LimitStatus, Retry, RetryCode};
use crate::gcra::{Cells, Frac, Whole};
use crate::key::CounterKey;
use crate::limit::{Algorithm, Limit, MAX_CAPACITY, Period};
use crate::state::CounterState;
use crate::time::Timestamp;

/// What a request does to one counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Take `cost` units, if the limit admits them.
    Acquire {
        /// Cost units; 0 reads the counter without taking anything.
        cost: u64,
    },
    /// Give back `cost` units taken by an acquire decided at `acquired_at`: a request that
    /// finished (concurrency) or one that should not count after all (a refunded quota).
    /// A release always succeeds; units whose window has passed are not given back.
    Release {
        /// Cost units to give back.
        cost: u64,
        /// The `now` of the decision that acquired them.
        acquired_at: Timestamp,
    },
    /// Keep `cost` units taken by an acquire decided at `acquired_at` held for another lease: a
    /// concurrency limit counts them from now on as taken now, as if released and taken again in
    /// one step (a hold that had already lapsed is counted again). The holder names `now` of
    /// this decision as their `acquired_at` from then on. Always succeeds; other algorithms are
    /// left as they are.
    Renew {
        /// Cost units held.
        cost: u64,
        /// The `now` of the decision that acquired (or last renewed) them.
        acquired_at: Timestamp,
    },
    /// Forget everything counted: the counter starts afresh (an operator's correction). Always
    /// succeeds.
    Reset,
}

/// One counter a request touches: which counter, under which limit, and what to do to it.
#[derive(Clone, Debug, PartialEq)]
pub struct Transition<'a> {
    /// The counter.
    pub key: CounterKey,
    /// The limit it counts for.
    pub limit: &'a Limit,
    /// What to do to it.
    pub op: Op,
}

/// Decides a request against every counter it touches, all or nothing.
///
/// `states[i]` is the stored state of `transitions[i]`'s counter ([`CounterState::EMPTY`] when
/// the store has none). The request is admitted only if every limit admits it; then every state is
/// replaced by its next value. A denied request leaves every state exactly as it was, except
/// those of limits that count rejected requests: they count every attempt that reaches them.
/// A limit in shadow mode ([`Limit::in_shadow`]) has no say: one that would deny the request
/// moves as it would had it denied it, and its status says so ([`LimitStatus::would_deny`]).
/// Extra elements of the longer slice are ignored.
pub fn decide(
    now: Timestamp,
    transitions: &[Transition<'_>],
    states: &mut [CounterState],
) -> Decision {
    if let ([transition], [state]) = (transitions, &mut *states) {
        return decide_one(now, transition, state);
    }
    let denials = step_all(now, transitions, states);
    conclude_all(now, transitions, states, &denials)
}

/// Which limits of a request deny it, as [`step_all`] found them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denials {
    /// `denied[i]`: whether `transitions[i]`'s limit stands in the request's way (would, for a
    /// limit in shadow mode); empty when none does.
    denied: SmallVec<[bool; 4]>,
}

/// What [`step`] found for a request touching one counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// The limit admits the request.
    Admitted,
    /// The limit denies the request.
    Denied,
    /// The limit, in shadow mode, would deny the request, which is admitted all the same.
    Shadowed,
}

impl Step {
    /// Whether the request is admitted.
    pub fn admitted(self) -> bool {
        self != Step::Denied
    }
}

/// The first half of [`decide`] for a request touching any number of counters: moves every state
/// exactly as `decide` would and says which limits deny. A store runs this while it holds the
/// counters and [`conclude_all`] after letting go, so the counters are held only for the
/// arithmetic that changes them.
pub fn step_all(
    now: Timestamp,
    transitions: &[Transition<'_>],
    states: &mut [CounterState],
) -> Denials {
    let count = transitions.len().min(states.len());
    let states = states.get_mut(..count).unwrap_or_default();
    let stored: SmallVec<[CounterState; 4]> = SmallVec::from_slice(states);
    // Admitted, as nearly every request is: each state moves on as its limit says.
    let mut allowed = true;
    let mut shadowed = false;
    for (transition, state) in transitions.iter().zip(states.iter_mut()) {
        let outcome = evaluate(transition.limit, transition.op, *state, now);
        if outcome.admits || !transition.limit.is_shadow() {
            allowed &= outcome.admits;
            *state = outcome.admitted;
        } else {
            // A shadow limit that would deny: it moves as if it had, and the request goes on.
            shadowed = true;
            *state = outcome.rejected.unwrap_or(*state);
        }
    }
    if allowed && !shadowed {
        return Denials {
            denied: SmallVec::new(),
        };
    }
    if allowed {
        // Admitted, though some shadow limits would have denied: which ones.
        let denied = transitions
            .iter()
            .zip(stored)
            .map(|(transition, stored)| {
                transition.limit.is_shadow()
                    && !evaluate(transition.limit, transition.op, stored, now).admits
            })
            .collect();
        return Denials { denied };
    }
    // Denied: every state as it was, except those of limits that count rejected requests. A
    // shadow limit is flagged as any other; `conclude_all` reports it as one that would deny.
    let denied = transitions
        .iter()
        .zip(states.iter_mut())
        .zip(stored)
        .map(|((transition, state), stored)| {
            let outcome = evaluate(transition.limit, transition.op, stored, now);
            if let Some(rejected) = outcome.rejected {
                // Counting the attempt may leave a limit that admitted it full: then it stands in
                // the way of the retry too.
                *state = rejected;
                !outcome.admits || !evaluate(transition.limit, transition.op, *state, now).admits
            } else {
                *state = stored;
                !outcome.admits
            }
        })
        .collect();
    Denials { denied }
}

/// The second half of [`decide`] for a request touching any number of counters: the decision,
/// from the states [`step_all`] left and its denials. Reads nothing but its arguments.
pub fn conclude_all(
    now: Timestamp,
    transitions: &[Transition<'_>],
    states: &[CounterState],
    denials: &Denials,
) -> Decision {
    let mut limits: SmallVec<[LimitStatus; 4]> = SmallVec::new();
    let mut denied_by: Option<(usize, Retry)> = None;
    for (index, (transition, state)) in transitions.iter().zip(states).enumerate() {
        let denied = denials.denied.get(index).copied().unwrap_or(false);
        let mut status = report(
            transition.limit,
            transition.op,
            live(*state, now),
            now,
            denied,
        );
        if denied && transition.limit.is_shadow() {
            status.retry = RetryCode::shadowed();
        }
        if let Some(retry) = status.retry() {
            denied_by = match denied_by {
                Some((_, worst)) if retry.max(worst) == worst => denied_by,
                _ => Some((index, retry)),
            };
        }
        limits.push(status);
    }
    Decision {
        now,
        limits,
        denied_by: denied_by.map(|(index, _)| index),
    }
}

/// `decide` for a request touching one counter, the most common shape, without the bookkeeping
/// that several counters need.
fn decide_one(now: Timestamp, transition: &Transition<'_>, state: &mut CounterState) -> Decision {
    let step = step(now, transition, state);
    conclude(now, transition, state, step)
}

/// What [`step`] found, for [`conclude`] to report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stepped {
    step: Step,
    /// The limit's status, when the step had it at hand; `conclude` works it out otherwise.
    status: Option<LimitStatus>,
}

impl Stepped {
    /// Whether the limit admits the request.
    pub fn step(&self) -> Step {
        self.step
    }

    fn of(step: Step) -> Stepped {
        Stepped { step, status: None }
    }
}

/// The first half of [`decide`] for a request touching one counter: moves the counter's state
/// exactly as `decide` would, and says whether the request is admitted. A store runs this while
/// it holds the counter and [`conclude`] after letting go, so the counter is held only for the
/// arithmetic that changes it.
#[inline(always)]
pub fn step(now: Timestamp, transition: &Transition<'_>, state: &mut CounterState) -> Stepped {
    let limit = transition.limit;
    if let (Algorithm::TokenBucket { .. }, Op::Acquire { cost }) =
        (limit.algorithm(), transition.op)
        && limit.capacity() > 0
        && !limit.counts_rejected()
        && !limit.is_shadow()
    {
        // The commonest step of all, straight: `token_bucket` without the denied future, and
        // an admitted request's status from the values at hand, as `token_bucket_report` finds
        // it (the tolerance less the debt, in whole requests), instead of from a second look
        // at the state once the counter is let go.
        let cells = limit.cells();
        if let (Some(whole), 1, 0) = (cells.whole(), cost, state.aux) {
            return step_whole(now, limit, whole, state);
        }
        let at = Frac::from_nanos(now.as_nanos());
        let tat = if state.is_live(now) {
            cells.frac(state.value, state.aux)
        } else {
            Frac::default()
        };
        let next = cells.add(tat.max(at), cells.weight(clamp_cost(cost)));
        let ceiling = cells.add(at, cells.tolerance);
        if !next.le(ceiling) {
            return Stepped::of(Step::Denied);
        }
        *state = CounterState {
            window: 0,
            value: next.whole,
            aux: next.part,
            expires_at: Timestamp::from_nanos(next.ceil()),
        };
        let status = LimitStatus {
            limit: limit.capacity(),
            remaining: cells.intervals_in(cells.sub(cells.tolerance, cells.sub(next, at))),
            reset: if next.gt(at) {
                Timestamp::from_nanos(next.ceil())
            } else {
                now
            },
            retry: RetryCode::new(None),
        };
        return Stepped {
            step: Step::Admitted,
            status: Some(status),
        };
    }
    step_any(now, transition, state)
}

/// [`step`]'s token bucket taking one request, when its interval and tolerance are whole
/// nanoseconds and so is the stored instant: the same arithmetic on plain integers, every
/// fraction being zero.
#[inline(always)]
fn step_whole(now: Timestamp, limit: &Limit, whole: Whole, state: &mut CounterState) -> Stepped {
    let at = now.as_nanos();
    let tat = if state.is_live(now) { state.value } else { 0 };
    let next = tat.max(at).saturating_add(whole.interval);
    if next > at.saturating_add(whole.tolerance) {
        return Stepped::of(Step::Denied);
    }
    *state = CounterState {
        window: 0,
        value: next,
        aux: 0,
        expires_at: Timestamp::from_nanos(next),
    };
    let debt = next.saturating_sub(at);
    Stepped {
        step: Step::Admitted,
        status: Some(LimitStatus {
            limit: limit.capacity(),
            remaining: whole.intervals_in(whole.tolerance.saturating_sub(debt)),
            reset: if next > at {
                Timestamp::from_nanos(next)
            } else {
                now
            },
            retry: RetryCode::new(None),
        }),
    }
}

/// [`step`] for any limit and operation.
#[inline(never)]
fn step_any(now: Timestamp, transition: &Transition<'_>, state: &mut CounterState) -> Stepped {
    let limit = transition.limit;
    let outcome = evaluate(limit, transition.op, *state, now);
    if outcome.admits {
        *state = outcome.admitted;
        return Stepped::of(Step::Admitted);
    }
    if let Some(rejected) = outcome.rejected {
        *state = rejected;
    }
    Stepped::of(if limit.is_shadow() {
        Step::Shadowed
    } else {
        Step::Denied
    })
}

/// The second half of [`decide`] for a request touching one counter: the decision, from the
/// state [`step`] left and its answer. Reads nothing but its arguments.
pub fn conclude(
    now: Timestamp,
    transition: &Transition<'_>,
    state: &CounterState,
    stepped: Stepped,
) -> Decision {
    let Stepped { step, status } = stepped;
    let status = status.unwrap_or_else(|| {
        let mut status = report(
            transition.limit,
            transition.op,
            live(*state, now),
            now,
            step != Step::Admitted,
        );
        if step == Step::Shadowed {
            status.retry = RetryCode::shadowed();
        }
        status
    });
    let mut limits = SmallVec::new();
    limits.push(status);
    Decision {
        now,
        limits,
        denied_by: (step == Step::Denied).then_some(0),
    }
}

/// The two futures of one counter: if the whole request is admitted, and if it is denied.
#[derive(Clone, Copy, Debug)]
struct Outcome {
    admits: bool,
    admitted: CounterState,
    /// `Some` only for limits that count rejected requests.
    rejected: Option<CounterState>,
}

/// A reset: everything forgotten. (`evaluate` answers it before any algorithm runs; the
/// algorithms answer it alike so that each stands on its own.)
fn reset() -> Outcome {
    Outcome {
        admits: true,
        admitted: CounterState::EMPTY,
        rejected: None,
    }
}

fn live(state: CounterState, now: Timestamp) -> CounterState {
    if state.is_live(now) {
        state
    } else {
        CounterState::EMPTY
    }
}

/// Clamps a cost so that products with spans stay inside `u128`; anything above the maximum
/// capacity is denied the same way whatever its size. A backend that runs the algorithms
/// elsewhere (the Redis script) clamps costs alike.
pub fn clamp_cost(cost: u64) -> u64 {
    cost.min(MAX_CAPACITY.saturating_add(1))
}

fn evaluate(limit: &Limit, op: Op, stored: CounterState, now: Timestamp) -> Outcome {
    let state = live(stored, now);
    if limit.capacity() == 0 {
        // Nothing is ever admitted and nothing is ever counted.
        let admits = !matches!(op, Op::Acquire { cost } if cost > 0);
        return Outcome {
            admits,
            admitted: stored,
            rejected: None,
        };
    }
    if op == Op::Reset {
        return reset();
    }
    if matches!(op, Op::Renew { .. }) && limit.algorithm() != Algorithm::Concurrency {
        // Only a concurrency limit holds units for as long as their request lasts.
        return Outcome {
            admits: true,
            admitted: stored,
            rejected: None,
        };
    }
    // Algorithms fill `rejected` only for limits that count rejected requests.
    match limit.algorithm() {
        Algorithm::FixedWindow => fixed_window(limit, op, state, now),
        Algorithm::SlidingWindow => sliding_window(limit, op, state, now),
        Algorithm::TokenBucket { .. } => token_bucket(limit, op, state, now),
        Algorithm::Concurrency => concurrency(limit, op, state, now),
    }
}

fn report(limit: &Limit, op: Op, state: CounterState, now: Timestamp, denied: bool) -> LimitStatus {
    let cost = match op {
        Op::Acquire { cost } => clamp_cost(cost),
        Op::Release { .. } | Op::Renew { .. } | Op::Reset => 0,
    };
    if limit.capacity() == 0 {
        return LimitStatus {
            limit: 0,
            remaining: 0,
            reset: now,
            retry: RetryCode::new(denied.then_some(Retry::Never)),
        };
    }
    match limit.algorithm() {
        Algorithm::FixedWindow => fixed_window_report(limit, cost, state, now, denied),
        Algorithm::SlidingWindow => sliding_window_report(limit, cost, state, now, denied),
        Algorithm::TokenBucket { burst } => {
            token_bucket_report(limit, burst, cost, state, now, denied)
        }
        Algorithm::Concurrency => LimitStatus {
            limit: limit.capacity(),
            remaining: {
                let view = Sliding::at(limit, state, now);
                limit
                    .capacity()
                    .saturating_sub(view.current.saturating_add(view.previous))
            },
            reset: now,
            retry: RetryCode::new(denied.then(|| {
                if cost > limit.capacity() {
                    Retry::Never
                } else {
                    Retry::OnRelease
                }
            })),
        },
    }
}

fn span_of(limit: &Limit) -> u64 {
    match limit.period() {
        Period::Span(span) => (*span).max(1),
        // Limit construction allows calendar periods only for fixed windows; a month is the
        // harmless reading should one ever reach another algorithm.
        Period::Monthly(_) => 2_629_800_000_000_000,
    }
}

fn wait_until(at: Timestamp, now: Timestamp) -> Retry {
    Retry::After(at.saturating_duration_since(now))
}

// --- fixed window -------------------------------------------------------------------------

/// The window a fixed-window counter counts in at `now`, and its count there.
///
/// A stored window later than now's means the clock stepped back; that window keeps counting
/// until the clock catches up, so a step back never re-admits what was already counted.
fn fixed_window_at(limit: &Limit, state: CounterState, now: Timestamp) -> (Window, u64) {
    let window = limit.period().window_at(now);
    if state.window > window.index {
        let stored = Window {
            index: state.window,
            start: now,
            end: state.expires_at,
        };
        (stored, state.value)
    } else if state.window == window.index {
        (window, state.value)
    } else {
        (window, 0)
    }
}

fn fixed_window(limit: &Limit, op: Op, state: CounterState, now: Timestamp) -> Outcome {
    let (window, count) = fixed_window_at(limit, state, now);
    match op {
        Op::Acquire { cost } => {
            let total = count.saturating_add(clamp_cost(cost));
            let next = CounterState {
                window: window.index,
                value: total,
                aux: 0,
                expires_at: window.end,
            };
            Outcome {
                admits: total <= limit.capacity(),
                admitted: next,
                rejected: limit.counts_rejected().then_some(next),
            }
        }
        Op::Reset => reset(),
        // Answered by `evaluate`: only a concurrency limit holds units.
        Op::Renew { .. } => Outcome {
            admits: true,
            admitted: state,
            rejected: None,
        },
        Op::Release { cost, acquired_at } => {
            let mut next = state;
            if count > 0 && limit.period().window_at(acquired_at).index == window.index {
                next.value = count.saturating_sub(cost);
            }
            Outcome {
                admits: true,
                admitted: next,
                rejected: None,
            }
        }
    }
}

fn fixed_window_report(
    limit: &Limit,
    cost: u64,
    state: CounterState,
    now: Timestamp,
    denied: bool,
) -> LimitStatus {
    let (window, count) = fixed_window_at(limit, state, now);
    LimitStatus {
        limit: limit.capacity(),
        remaining: limit.capacity().saturating_sub(count),
        reset: window.end,
        retry: RetryCode::new(denied.then(|| {
            if cost > limit.capacity() {
                Retry::Never
            } else {
                // The next window starts from zero, and the cost fits in an empty window.
                wait_until(window.end, now)
            }
        })),
    }
}

// --- sliding window -----------------------------------------------------------------------

/// A counter of two clock-aligned windows (the sliding window's, and the concurrency limit's
/// lease-long periods) as seen at `now`.
struct Sliding {
    span: u128,
    /// Start of the current window, in ns.
    start: u128,
    /// Elapsed ns of the current window.
    elapsed: u128,
    index: u64,
    current: u64,
    previous: u64,
}

impl Sliding {
    fn at(limit: &Limit, state: CounterState, now: Timestamp) -> Sliding {
        let span = span_of(limit);
        // A stored window later than now's means the clock stepped back: look at the counter
        // from the start of that window instead, so a step back never re-admits anything.
        let now = now.max(Timestamp::from_nanos(state.window.saturating_mul(span)));
        let index = now.as_nanos().checked_div(span).unwrap_or(0);
        let start = index.saturating_mul(span);
        let (current, previous) = if state.window == index {
            (state.value, state.aux)
        } else if state.window.checked_add(1) == Some(index) {
            (0, state.value)
        } else {
            (0, 0)
        };
        Sliding {
            span: u128::from(span),
            start: u128::from(start),
            elapsed: u128::from(now.as_nanos().saturating_sub(start)),
            index,
            current,
            previous,
        }
    }

    /// The previous window's count weighted by its overlap with the sliding window, times span.
    fn weighted_previous(&self) -> u128 {
        u128::from(self.previous).saturating_mul(self.span.saturating_sub(self.elapsed))
    }

    /// The two counts once `cost` units taken at `acquired_at` are given back: by the window
    /// they were counted in, and not at all if that window has passed out of both.
    fn released(&self, limit: &Limit, cost: u64, acquired_at: Timestamp) -> (u64, u64) {
        let acquired = acquired_at
            .as_nanos()
            .checked_div(span_of(limit))
            .unwrap_or(0);
        let (mut current, mut previous) = (self.current, self.previous);
        if acquired == self.index {
            current = current.saturating_sub(cost);
        } else if acquired.checked_add(1) == Some(self.index) {
            previous = previous.saturating_sub(cost);
        }
        (current, previous)
    }

    /// The state after the current window's count becomes `current` and the previous `previous`.
    fn state(&self, current: u64, previous: u64) -> CounterState {
        CounterState {
            window: self.index,
            value: current,
            aux: previous,
            expires_at: to_timestamp(self.start.saturating_add(self.span.saturating_mul(2))),
        }
    }
}

fn sliding_window(limit: &Limit, op: Op, state: CounterState, now: Timestamp) -> Outcome {
    let view = Sliding::at(limit, state, now);
    match op {
        Op::Acquire { cost } => {
            let current = view.current.saturating_add(clamp_cost(cost));
            let estimate = view
                .weighted_previous()
                .saturating_add(u128::from(current).saturating_mul(view.span));
            let ceiling = u128::from(limit.capacity()).saturating_mul(view.span);
            let next = view.state(current, view.previous);
            Outcome {
                admits: estimate <= ceiling,
                admitted: next,
                rejected: limit.counts_rejected().then_some(next),
            }
        }
        Op::Reset => reset(),
        // Answered by `evaluate`: only a concurrency limit holds units.
        Op::Renew { .. } => Outcome {
            admits: true,
            admitted: state,
            rejected: None,
        },
        Op::Release { cost, acquired_at } => {
            let (current, previous) = view.released(limit, cost, acquired_at);
            Outcome {
                admits: true,
                admitted: view.state(current, previous),
                rejected: None,
            }
        }
    }
}

fn sliding_window_report(
    limit: &Limit,
    cost: u64,
    state: CounterState,
    now: Timestamp,
    denied: bool,
) -> LimitStatus {
    let view = Sliding::at(limit, state, now);
    let capacity = u128::from(limit.capacity());
    let ceiling = capacity.saturating_mul(view.span);
    let headroom = ceiling
        .saturating_sub(view.weighted_previous())
        .checked_div(view.span)
        .unwrap_or(0);
    let remaining = to_u64(headroom.saturating_sub(u128::from(view.current)));
    let window_end = view.start.saturating_add(view.span);
    let reset = if view.current > 0 {
        to_timestamp(window_end.saturating_add(view.span))
    } else if view.previous > 0 {
        to_timestamp(window_end)
    } else {
        now
    };
    let retry = denied.then(|| {
        let cost = u128::from(cost);
        if cost > capacity {
            return Retry::Never;
        }
        let current = u128::from(view.current);
        let admit_at = if current.saturating_add(cost) <= capacity {
            // Later in this window, once the previous window's weight has shrunk enough:
            // previous × (span − e) ≤ (capacity − current − cost) × span.
            let room = capacity
                .saturating_sub(current)
                .saturating_sub(cost)
                .saturating_mul(view.span);
            let shrink = room
                .checked_div(u128::from(view.previous))
                .unwrap_or(view.span)
                .min(view.span);
            view.start.saturating_add(view.span.saturating_sub(shrink))
        } else {
            // In the next window, where this window's count becomes the weighted previous one:
            // current × (span − e) ≤ (capacity − cost) × span.
            let room = capacity.saturating_sub(cost).saturating_mul(view.span);
            let shrink = room
                .checked_div(current)
                .unwrap_or(view.span)
                .min(view.span);
            window_end.saturating_add(view.span.saturating_sub(shrink))
        };
        wait_until(to_timestamp(admit_at).max(now), now)
    });
    LimitStatus {
        limit: limit.capacity(),
        remaining,
        reset,
        retry: RetryCode::new(retry),
    }
}

// --- token bucket (GCRA) ------------------------------------------------------------------

/// The bucket at `now`: its theoretical arrival time (TAT) and the debt it runs ahead of now.
/// The state stores the TAT as whole nanoseconds (`value`) and a fraction (`aux`, in
/// 1/capacity ns), so the bucket never drifts by rounding.
struct Bucket<'a> {
    cells: &'a Cells,
    now: Frac,
    tat: Frac,
}

impl<'a> Bucket<'a> {
    fn at(limit: &'a Limit, state: CounterState, now: Timestamp) -> Bucket<'a> {
        let cells = limit.cells();
        Bucket {
            cells,
            now: Frac::from_nanos(now.as_nanos()),
            tat: cells.frac(state.value, state.aux),
        }
    }

    fn state(&self, tat: Frac) -> CounterState {
        CounterState {
            window: 0,
            value: tat.whole,
            aux: tat.part,
            expires_at: Timestamp::from_nanos(tat.ceil()),
        }
    }
}

fn token_bucket(limit: &Limit, op: Op, state: CounterState, now: Timestamp) -> Outcome {
    let bucket = Bucket::at(limit, state, now);
    let cells = bucket.cells;
    let base = bucket.tat.max(bucket.now);
    match op {
        Op::Acquire { cost } => {
            let tat = cells.add(base, cells.weight(clamp_cost(cost)));
            let ceiling = cells.add(bucket.now, cells.tolerance);
            // A denied request that is counted anyway adds debt, but never beyond a second full
            // bucket: hammering keeps a client limited for at most one more refill.
            Outcome {
                admits: tat.le(ceiling),
                admitted: bucket.state(tat),
                rejected: limit
                    .counts_rejected()
                    .then(|| bucket.state(tat.min(cells.add(ceiling, cells.tolerance)).max(base))),
            }
        }
        Op::Reset => reset(),
        // Answered by `evaluate`: only a concurrency limit holds units.
        Op::Renew { .. } => Outcome {
            admits: true,
            admitted: state,
            rejected: None,
        },
        Op::Release { cost, .. } => {
            let tat = cells.sub(bucket.tat, cells.weight(clamp_cost(cost)));
            Outcome {
                admits: true,
                admitted: bucket.state(tat.max(bucket.now)),
                rejected: None,
            }
        }
    }
}

fn token_bucket_report(
    limit: &Limit,
    burst: u64,
    cost: u64,
    state: CounterState,
    now: Timestamp,
    denied: bool,
) -> LimitStatus {
    let bucket = Bucket::at(limit, state, now);
    let cells = bucket.cells;
    let debt = cells.sub(bucket.tat, bucket.now);
    let remaining = cells.intervals_in(cells.sub(cells.tolerance, debt));
    let reset = if bucket.tat.gt(bucket.now) {
        Timestamp::from_nanos(bucket.tat.ceil())
    } else {
        now
    };
    let retry = denied.then(|| {
        if cost > burst {
            return Retry::Never;
        }
        // Admitted at t once TAT + cost × interval ≤ t + tolerance.
        let needed = cells.add(bucket.tat, cells.weight(cost));
        let admit_at = cells.sub(needed, cells.tolerance).ceil();
        wait_until(Timestamp::from_nanos(admit_at).max(now), now)
    });
    LimitStatus {
        limit: limit.capacity(),
        remaining,
        reset,
        retry: RetryCode::new(retry),
    }
}

// --- concurrency --------------------------------------------------------------------------

fn concurrency(limit: &Limit, op: Op, state: CounterState, now: Timestamp) -> Outcome {
    // Holds are counted by the lease-long, clock-aligned period they were taken in, as the
    // sliding window counts its two windows: in flight is what this period and the last took
    // and did not give back. A hold never given back (its holder crashed, or its release was
    // lost) so drops out between one and two leases after it was taken, however busy the
    // counter stays; one counter-wide lease renewed by every acquire would keep it for good.
    let view = Sliding::at(limit, state, now);
    match op {
        Op::Acquire { cost } => {
            let current = view.current.saturating_add(clamp_cost(cost));
            Outcome {
                admits: current.saturating_add(view.previous) <= limit.capacity(),
                admitted: view.state(current, view.previous),
                rejected: None,
            }
        }
        Op::Reset => reset(),
        Op::Release { cost, acquired_at } => {
            let (current, previous) = view.released(limit, cost, acquired_at);
            let mut next = view.state(current, previous);
            if current == 0 && previous == 0 {
                // Nothing in flight: the counter is worth nothing from now on.
                next.expires_at = now;
            }
            Outcome {
                admits: true,
                admitted: next,
                rejected: None,
            }
        }
        Op::Renew { cost, acquired_at } => {
            // Given back by the period it was counted in (if it still counts), taken again in
            // this one.
            let (current, previous) = view.released(limit, cost, acquired_at);
            Outcome {
                admits: true,
                admitted: view.state(current.saturating_add(clamp_cost(cost)), previous),
                rejected: None,
            }
        }
    }
}

// --- conversions --------------------------------------------------------------------------

fn to_u64(value: u128) -> u64 {
    u64::try_from(value).unwrap_or(u64::MAX)
}

fn to_timestamp(nanos: u128) -> Timestamp {
    Timestamp::from_nanos(to_u64(nanos))
}
