//! sluice's decision engine: limits, the algorithms that count them, and the decisions they make.
//!
//! Everything here is pure. Nothing does IO, reads a clock, spawns, or panics on any input: time
//! comes in as a [`Timestamp`] argument (read from a [`Clock`] by the caller), a denial is a
//! [`Decision`] value, and all arithmetic is exact integer math that saturates.
//!
//! A store keeps one [`CounterState`] per [`CounterKey`]; [`decide`] turns the states a request
//! touches into their next values and a [`Decision`], all or nothing.

#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

mod calendar;
mod clock;
mod decision;
mod engine;
mod gcra;
mod key;
mod limit;
mod state;
mod time;

pub use calendar::{MonthlyCycle, Window};
pub use clock::{Clock, ManualClock, SystemClock};
pub use decision::{Decision, LimitStatus, Retry};
pub use engine::{
    Denials, Op, Step, Stepped, Transition, clamp_cost, conclude, conclude_all, decide, step,
    step_all,
};
pub use jiff::tz::TimeZone;
pub use key::CounterKey;
pub use limit::{
    Algorithm, BucketTerms, Limit, LimitError, MAX_CAPACITY, MAX_SPAN, MIN_SPAN, Period,
};
pub use state::CounterState;
pub use time::Timestamp;
