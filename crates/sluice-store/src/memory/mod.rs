//! The in-memory backend: counters in sharded hash tables, each shard behind its own lock.
//!
//! Design, and why:
//! - A counter is named by a 128-bit SipHash-1-3 of its key under a secret chosen at start-up.
//!   Storing the hash instead of the key bytes keeps an entry at 48 bytes whatever the key's
//!   length (the memory budget is 128 bytes per live counter); the secret keeps clients from
//!   forging two keys that share a counter, and 128 bits keep accidental collisions out of reach.
//! - Shards are picked by middle bits of the hash's low half, the table slot by its low bits. A
//!   request locks only the shards its counters live in, in ascending order (so two requests can
//!   never wait on each other in a cycle), and holds them while the engine moves the states:
//!   all or nothing. The decision's report is built after they are let go.
//! - Expired counters read as empty, and stay in place (free to reuse) until their shard's table
//!   reaches twice the live count it had at its last drop; then the dead are dropped. So a flood
//!   of one-shot keys cannot grow a table past twice its peak live size, sweeping costs O(1) per
//!   insert amortised, and a counter that dies and revives is not churned. [`MemoryStore::sweep`]
//!   also gives memory back; a server calls it on a timer.

mod table;

use std::collections::BTreeMap;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::Arc;

use siphasher::sip128::SipHasher13;
use sluice_core::{
    Clock, CounterKey, CounterState, Decision, Timestamp, Transition, conclude, conclude_all, step,
    step_all,
};
use smallvec::SmallVec;

use crate::error::StoreError;
use crate::sync::{Mutex, MutexGuard, lock};
use crate::{CounterStore, Record, RecordStore, RecordTable};
use table::Table;

/// Records by table and id.
type Records = BTreeMap<(RecordTable, Vec<u8>), Vec<u8>>;

/// How to build a [`MemoryStore`].
#[derive(Clone, Copy, Debug)]
pub struct MemoryStoreConfig {
    /// Number of shards, rounded up to a power of two. More shards mean less lock contention and
    /// a little more fixed memory; 64 suits machines up to a few dozen cores.
    pub shards: usize,
    /// The secret keys of the counter-name hash. `None` (the default) draws random ones, which is
    /// what a server wants; tests that need the same shard layout on every run set them.
    pub hash_secret: Option<(u64, u64)>,
}

impl Default for MemoryStoreConfig {
    fn default() -> MemoryStoreConfig {
        MemoryStoreConfig {
            shards: 64,
            hash_secret: None,
        }
    }
}

/// Counters in memory, for one process. Fast, and gone when the process ends.
pub struct MemoryStore {
    /// Invariant: the length is a power of two, `1 << shard_bits`.
    shards: Box<[Shard]>,
    shard_bits: u32,
    /// SipHash-1-3 under the store's secret keys.
    hasher: SipHasher13,
    clock: Arc<dyn Clock>,
    /// Keys and overrides: few, and read rarely.
    records: std::sync::Mutex<Records>,
}

/// One counter of a request that touches several, as the store finds it.
struct Held {
    hash: u128,
    shard: usize,
    /// Which of the request's held shard guards covers it.
    guard: usize,
    /// Where in that shard's table it is, if there.
    place: Option<usize>,
}

/// One shard, aligned to its own cache lines so that locking one does not slow its neighbours.
#[repr(align(128))]
struct Shard {
    table: Mutex<Table>,
}

impl MemoryStore {
    /// An empty store reading time from `clock`, with the default configuration.
    pub fn new(clock: Arc<dyn Clock>) -> MemoryStore {
        MemoryStore::with_config(clock, MemoryStoreConfig::default())
    }

    /// An empty store reading time from `clock`.
    pub fn with_config(clock: Arc<dyn Clock>, config: MemoryStoreConfig) -> MemoryStore {
        let shards = config.shards.clamp(1, 1 << 16).next_power_of_two();
        let secret = config.hash_secret.unwrap_or_else(|| {
            let random = RandomState::new();
            (
                random.hash_one(0x736c_7569_6365_u64),
                random.hash_one(1_u64),
            )
        });
        MemoryStore {
            shards: (0..shards)
                .map(|_| Shard {
                    table: Mutex::new(Table::default()),
                })
                .collect(),
            shard_bits: shards.trailing_zeros(),
            hasher: SipHasher13::new_with_keys(secret.0, secret.1),
            clock,
            records: std::sync::Mutex::default(),
        }
    }

    /// Applies one request, as [`CounterStore::apply`] does, without the future around it.
    #[inline]
    pub fn apply_now(&self, transitions: &[Transition<'_>]) -> Result<Decision, StoreError> {
        self.apply_observed(transitions, |_, _, _| {})
    }

    /// The instant the store decides at.
    pub(crate) fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// Applies one request and shows `observe` each counter's state before and after, by the
    /// transition's index, while the counters are still locked: whoever records the changes
    /// records them in the order they happened.
    #[inline]
    pub(crate) fn apply_observed(
        &self,
        transitions: &[Transition<'_>],
        mut observe: impl FnMut(usize, &CounterState, &CounterState),
    ) -> Result<Decision, StoreError> {
        let now = self.clock.now();
        if let [transition] = transitions {
            return Ok(self.apply_one(transition, now, observe));
        }
        let mut counters: SmallVec<[Held; 4]> = transitions
            .iter()
            .map(|transition| {
                let hash = self.hash(&transition.key);
                Held {
                    hash,
                    shard: self.shard_of(hash),
                    guard: 0,
                    place: None,
                }
            })
            .collect();
        for (index, counter) in counters.iter().enumerate() {
            if let Some(duplicate) = counters
                .iter()
                .skip(index + 1)
                .position(|other| other.hash == counter.hash)
            {
                return Err(StoreError::DuplicateKey(
                    transitions[index + 1 + duplicate].key.clone(),
                ));
            }
        }
        let mut shard_ids: SmallVec<[usize; 4]> =
            counters.iter().map(|counter| counter.shard).collect();
        shard_ids.sort_unstable();
        shard_ids.dedup();
        // Ascending order: no two requests ever wait on each other in a cycle.
        let mut guards: SmallVec<[MutexGuard<'_, Table>; 4]> = shard_ids
            .iter()
            .map(|&id| lock(&self.shards[id].table))
            .collect();
        // One probe per counter: which guard covers it and where in that table it is, then its
        // state by that place.
        let mut states: SmallVec<[CounterState; 4]> = SmallVec::with_capacity(counters.len());
        for counter in &mut counters {
            counter.guard = shard_ids
                .iter()
                .position(|&id| id == counter.shard)
                .unwrap_or(0);
            let table = &guards[counter.guard];
            counter.place = table.find(counter.hash);
            states.push(
                counter
                    .place
                    .map_or(CounterState::EMPTY, |at| table.state_at(at)),
            );
        }
        let before = states.clone();
        let denials = step_all(now, transitions, &mut states);
        for (index, (old, new)) in before.iter().zip(&states).enumerate() {
            observe(index, old, new);
        }
        // Counters in place first: adding one may move every counter of its table.
        for (counter, state) in counters.iter().zip(&states) {
            if let Some(at) = counter.place {
                guards[counter.guard].set_at(at, *state);
            }
        }
        for (counter, state) in counters.iter().zip(&states) {
            if counter.place.is_none() {
                guards[counter.guard].add(counter.hash, *state, now);
            }
        }
        // The report is built after the shards are let go.
        drop(guards);
        Ok(conclude_all(now, transitions, &states, &denials))
    }

    /// The common case, one counter: one lock and one table probe for a counter that exists, held
    /// only while the state moves.
    #[inline]
    fn apply_one(
        &self,
        transition: &Transition<'_>,
        now: Timestamp,
        mut observe: impl FnMut(usize, &CounterState, &CounterState),
    ) -> Decision {
        let hash = self.hash(&transition.key);
        let (state, admitted) =
            lock(&self.shards[self.shard_of(hash)].table).update(hash, now, |state| {
                let before = *state;
                let admitted = step(now, transition, state);
                observe(0, &before, state);
                (*state, admitted)
            });
        // The report is built after the shard is let go.
        conclude(now, transition, &state, admitted)
    }

    /// Puts back a counter's state as a durable copy recorded it.
    pub(crate) fn restore(&self, key: &CounterKey, state: CounterState, now: Timestamp) {
        let hash = self.hash(key);
        lock(&self.shards[self.shard_of(hash)].table).put(hash, state, now);
    }

    /// Removes every expired counter and gives memory back to the allocator where a table is
    /// mostly empty. Locks one shard at a time.
    pub fn sweep(&self) {
        let now = self.clock.now();
        for shard in &self.shards {
            lock(&shard.table).sweep(now);
        }
    }

    /// Counters held, live or expired-but-not-yet-swept.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(&s.table).len()).sum()
    }

    /// Whether the store holds no counter.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Counters the tables have room for without growing.
    pub fn capacity(&self) -> usize {
        self.shards.iter().map(|s| lock(&s.table).capacity()).sum()
    }

    /// The shard `key`'s counter lives in; for tests and diagnostics.
    pub fn shard_of_key(&self, key: &CounterKey) -> usize {
        self.shard_of(self.hash(key))
    }

    fn hash(&self, key: &CounterKey) -> u128 {
        self.hasher.hash(key.encoded()).as_u128()
    }

    fn shard_of(&self, hash: u128) -> usize {
        // Bits 32 and up of the low half pick the shard. The table takes its slots from that
        // half's low bits and its tags from its top 7, so the three stay independent, and the
        // lock and the probe wait only for the half of the hash that is computed first.
        ((hash as u64) >> 32 & ((1 << self.shard_bits) - 1)) as usize
    }
}

impl CounterStore for MemoryStore {
    fn apply(
        &self,
        transitions: &[Transition<'_>],
    ) -> impl Future<Output = Result<Decision, StoreError>> + Send {
        std::future::ready(self.apply_now(transitions))
    }
}

impl RecordStore for MemoryStore {
    fn put_record(
        &self,
        table: RecordTable,
        id: &[u8],
        value: Option<&[u8]>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        let mut records = self
            .records
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match value {
            Some(value) => records.insert((table, id.to_vec()), value.to_vec()),
            None => records.remove(&(table, id.to_vec())),
        };
        std::future::ready(Ok(()))
    }

    fn records(
        &self,
        table: RecordTable,
    ) -> impl Future<Output = Result<Vec<Record>, StoreError>> + Send {
        let records = self
            .records
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        std::future::ready(Ok(records
            .range((table, Vec::new())..)
            .take_while(|((kind, _), _)| *kind == table)
            .map(|((_, id), value)| (id.clone(), value.clone()))
            .collect()))
    }
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("shards", &self.shards.len())
            .finish_non_exhaustive()
    }
}
