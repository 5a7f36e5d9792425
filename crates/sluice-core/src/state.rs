//! The few numbers a store keeps per counter, whatever the algorithm.

use crate::time::Timestamp;

/// What a store keeps for one counter: four numbers that every backend stores verbatim.
///
/// The engine gives the fields their meaning, per algorithm:
///
/// | algorithm      | `window`               | `value`                     | `aux`                          |
/// |----------------|------------------------|-----------------------------|--------------------------------|
/// | fixed window   | index of the window    | cost counted in it          | —                              |
/// | sliding window | index of current window| cost counted in current     | cost counted in previous       |
/// | token bucket   | —                      | theoretical arrival, ns     | its fraction, in 1/capacity ns |
/// | concurrency    | index of lease period  | cost in flight, taken in it | same, taken in the previous    |
///
/// A state whose `expires_at` is not after now is worth exactly [`CounterState::EMPTY`]: a backend
/// may delete it at that instant (and should, to bound memory).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CounterState {
    /// See the table above.
    pub window: u64,
    /// See the table above.
    pub value: u64,
    /// See the table above.
    pub aux: u64,
    /// The first instant at which this state is worth nothing.
    pub expires_at: Timestamp,
}

impl CounterState {
    /// A counter that has never counted anything.
    pub const EMPTY: CounterState = CounterState {
        window: 0,
        value: 0,
        aux: 0,
        expires_at: Timestamp::UNIX_EPOCH,
    };

    /// Whether the state still means something at `now`.
    pub fn is_live(&self, now: Timestamp) -> bool {
        self.expires_at > now
    }
}
