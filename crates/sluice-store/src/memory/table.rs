//! One shard's hash table of counters, and the sweep that keeps it no larger than its live set.

use std::hash::BuildHasher;

use foldhash::fast::SeedableRandomState;
use hashbrown::HashTable;
use sluice_core::{CounterState, Timestamp};

/// A table keeps up to this many counters before it drops any dead one: a floor of about 100 KB
/// per shard (6.5 MB for 64 shards) within which counters that die and revive — a bucket that
/// refills between a client's requests — are reused in place instead of removed and re-inserted.
const MIN_SWEEP: usize = 1024;

/// A counter: its name and its state. 48 bytes.
#[derive(Clone, Copy)]
struct Entry {
    key: u128,
    state: CounterState,
}

/// A counter's 128-bit name (its key packed, or hashed when long) and where it goes: its slot
/// hash under the table's [`SeedableRandomState`].
#[derive(Clone, Copy, Debug)]
pub(super) struct Name {
    pub(super) id: u128,
    pub(super) slot: u64,
}

pub(super) struct Table {
    entries: HashTable<Entry>,
    /// The store's slot hash, for placing entries again when the table grows.
    slots: SeedableRandomState,
    /// Drop expired entries on insert once `entries` holds this many (at least `MIN_SWEEP`).
    /// Raised to twice the live count after each such drop and never lowered by one, so dead
    /// counters wait for reuse until the table is genuinely crowded; lowered only by `sweep`.
    drop_at: usize,
}

impl Table {
    /// An empty table placing counters by `slots`, the hash their [`Name`]s' slots come from.
    pub(super) fn new(slots: SeedableRandomState) -> Table {
        Table {
            entries: HashTable::new(),
            slots,
            drop_at: 0,
        }
    }

    /// Stores `state` for `name`. A state that is already expired is not inserted (an existing
    /// entry is updated in place and left for the sweep).
    pub(super) fn put(&mut self, name: Name, state: CounterState, now: Timestamp) {
        if let Some(entry) = self
            .entries
            .find_mut(name.slot, |entry| entry.key == name.id)
        {
            entry.state = state;
        } else {
            self.add(name, state, now);
        }
    }

    /// Where `name`'s counter is, if the table holds it: valid until the next insert.
    pub(super) fn find(&self, name: Name) -> Option<usize> {
        self.entries
            .find_bucket_index(name.slot, |entry| entry.key == name.id)
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
    pub(super) fn add(&mut self, name: Name, state: CounterState, now: Timestamp) {
        if state.is_live(now) {
            self.insert(name, state, now);
        }
    }

    /// The state of `name`'s counter, if the table holds it, in one probe.
    pub(super) fn get_mut(&mut self, name: Name) -> Option<&mut CounterState> {
        self.entries
            .find_mut(name.slot, |entry| entry.key == name.id)
            .map(|entry| &mut entry.state)
    }

    /// Inserts a new counter. Expired entries are dropped only when the table reaches its drop
    /// threshold: until then a dead counter costs nothing and is reused in place if its key comes
    /// back (a bucket that refills between requests dies and revives constantly). The threshold
    /// doubles past the live count, so this costs O(1) per insert, amortised, and a table holds
    /// at most twice the peak live count between sweeps.
    fn insert(&mut self, name: Name, state: CounterState, now: Timestamp) {
        if self.entries.len() >= self.drop_at.max(MIN_SWEEP) {
            self.drop_expired(now);
            self.drop_at = self
                .drop_at
                .max(self.entries.len().saturating_mul(2))
                .max(MIN_SWEEP);
        }
        let slots = &self.slots;
        self.entries.insert_unique(
            name.slot,
            Entry {
                key: name.id,
                state,
            },
            |entry| slots.hash_one(entry.key),
        );
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
            let slots = &self.slots;
            self.entries
                .shrink_to(live.saturating_mul(2), |entry| slots.hash_one(entry.key));
        }
    }

    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(super) fn capacity(&self) -> usize {
        self.entries.capacity()
    }
}
