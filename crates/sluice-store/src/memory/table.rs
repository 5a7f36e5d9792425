//! One shard's hash table of counters, and the sweep that keeps it no larger than its live set.

use hashbrown::HashTable;
use sluice_core::{CounterState, Timestamp};

/// A table keeps up to this many counters before it drops any dead one: a floor of about 100 KB
/// per shard (6.5 MB for 64 shards) within which counters that die and revive — a bucket that
/// refills between a client's requests — are reused in place instead of removed and re-inserted.
const MIN_SWEEP: usize = 1024;

/// A counter: its key's 128-bit hash and its state. 48 bytes.
#[derive(Clone, Copy)]
struct Entry {
    key: u128,
    state: CounterState,
}

fn slot_hash(entry: &Entry) -> u64 {
    entry.key as u64
}

#[derive(Default)]
pub(super) struct Table {
    entries: HashTable<Entry>,
    /// Drop expired entries on insert once `entries` holds this many (at least `MIN_SWEEP`).
    /// Raised to twice the live count after each such drop and never lowered by one, so dead
    /// counters wait for reuse until the table is genuinely crowded; lowered only by `sweep`.
    drop_at: usize,
}

impl Table {
    /// Stores `state` for `key`. A state that is already expired is not inserted (an existing
    /// entry is updated in place and left for the sweep).
    pub(super) fn put(&mut self, key: u128, state: CounterState, now: Timestamp) {
        if let Some(entry) = self.entries.find_mut(key as u64, |entry| entry.key == key) {
            entry.state = state;
        } else {
            self.add(key, state, now);
        }
    }

    /// Where `key`'s counter is, if the table holds it: valid until the next insert.
    pub(super) fn find(&self, key: u128) -> Option<usize> {
        self.entries
            .find_bucket_index(key as u64, |entry| entry.key == key)
    }

    /// The state of the counter [`Table::find`] found at `index`.
    pub(super) fn state_at(&self, index: usize) -> CounterState {
        self.entries
            .get_bucket(index)
            .map_or(CounterState::EMPTY, |entry| entry.state)
    }

    /// Replaces the state of the counter [`Table::find`] found at `index`, without a probe.
    pub(super) fn set_at(&mut self, index: usize, state: CounterState) {
        if let Some(entry) = self.entries.get_bucket_mut(index) {
            entry.state = state;
        }
    }

    /// Adds a counter the table does not hold, unless its state is already expired.
    pub(super) fn add(&mut self, key: u128, state: CounterState, now: Timestamp) {
        if state.is_live(now) {
            self.insert(key, state, now);
        }
    }

    /// Runs `f` on the state of `key` (empty if absent) and stores what it leaves, with a single
    /// probe when the counter exists.
    pub(super) fn update<R>(
        &mut self,
        key: u128,
        now: Timestamp,
        f: impl FnOnce(&mut CounterState) -> R,
    ) -> R {
        if let Some(entry) = self.entries.find_mut(key as u64, |entry| entry.key == key) {
            return f(&mut entry.state);
        }
        let mut state = CounterState::EMPTY;
        let result = f(&mut state);
        self.add(key, state, now);
        result
    }

    /// Inserts a new counter. Expired entries are dropped only when the table reaches its drop
    /// threshold: until then a dead counter costs nothing and is reused in place if its key comes
    /// back (a bucket that refills between requests dies and revives constantly). The threshold
    /// doubles past the live count, so this costs O(1) per insert, amortised, and a table holds
    /// at most twice the peak live count between sweeps.
    fn insert(&mut self, key: u128, state: CounterState, now: Timestamp) {
        if self.entries.len() >= self.drop_at.max(MIN_SWEEP) {
            self.drop_expired(now);
            self.drop_at = self
                .drop_at
                .max(self.entries.len().saturating_mul(2))
                .max(MIN_SWEEP);
        }
        self.entries
            .insert_unique(key as u64, Entry { key, state }, slot_hash);
    }

    fn drop_expired(&mut self, now: Timestamp) {
        self.entries.retain(|entry| entry.state.is_live(now));
    }

    /// Drops expired entries and shrinks the table when it is mostly empty.
    pub(super) fn sweep(&mut self, now: Timestamp) {
        self.drop_expired(now);
        let live = self.entries.len();
        self.drop_at = live.saturating_mul(2).max(MIN_SWEEP);
        if self.entries.capacity() > live.saturating_mul(4).max(MIN_SWEEP) {
            self.entries.shrink_to(live.saturating_mul(2), slot_hash);
        }
    }

    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(super) fn capacity(&self) -> usize {
        self.entries.capacity()
    }
}
