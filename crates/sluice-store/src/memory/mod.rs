//! The in-memory backend: counters in sharded hash tables, each shard behind its own lock.
//!
//! Design, and why:
//! - A counter is named by 128 bits: a short key's own bytes (up to 16 encoded bytes: a scope
//!   and a name of 12 bytes together, such as a numeric user id and a short limit name), packed
//!   so that no two keys share them; a longer key's 128-bit SipHash-1-3 under a secret chosen at
//!   start-up, one byte of it set to a value no packed key has. Storing the name instead of the
//!   key bytes keeps an entry at 48 bytes whatever the key's length (the memory budget is 128
//!   bytes per live counter). The secret keeps clients from forging two long keys that share a
//!   counter, and 128 bits keep accidental collisions out of reach; short keys cannot collide
//!   at all. SipHash's rounds are the longest step of a decision (its latency sits between the
//!   key and the shard lock), which is why short keys skip it.
//! - Where a name goes is a second, keyed hash of it (foldhash's, as hashbrown's own default):
//!   its bits 32 and up pick the shard, its low bits the table slot. Clients know their short
//!   keys' names, so the placement, not the name, carries the secret: they cannot aim their
//!   keys at one shard or one probe chain. A request locks only the shards its counters live
//!   in, in ascending order (so two requests can never wait on each other in a cycle), and holds
//!   them while the engine moves the states: all or nothing. The decision's report is built
//!   after they are let go.
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

use foldhash::SharedSeed;
use foldhash::fast::SeedableRandomState;
use siphasher::sip128::SipHasher13;
use sluice_core::{
    Clock, CounterKey, CounterState, Decision, Timestamp, Transition, conclude, conclude_all, step,
    step_all,
};
use smallvec::SmallVec;

use crate::error::StoreError;
use crate::sync::{Mutex, MutexGuard, lock};
use crate::{CounterStore, Record, RecordStore, RecordTable};
use table::{Name, Table};

/// Records by table and id.
type Records = BTreeMap<(RecordTable, Vec<u8>), Vec<u8>>;

/// How to build a [`MemoryStore`].
#[derive(Clone, Copy, Debug)]
pub struct MemoryStoreConfig {
    /// Number of shards, rounded up to a power of two. More shards mean less lock contention and
    /// a little more fixed memory; 64 suits machines up to a few dozen cores.
    pub shards: usize,
    /// The secret keys of the counter-name and placement hashes. `None` (the default) draws
    /// random ones, which is what a server wants; tests that need the same shard layout on every
    /// run set them.
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
    /// SipHash-1-3 under the store's secret keys: long keys' names.
    hasher: SipHasher13,
    /// Where a name goes: foldhash under a secret seed.
    slots: SeedableRandomState,
    clock: Arc<dyn Clock>,
    /// Keys and overrides: few, and read rarely.
    records: std::sync::Mutex<Records>,
}

/// One counter of a request that touches several, as the store finds it.
struct Held {
    name: Name,
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
        let (secret, slots) = match config.hash_secret {
            Some(secret) => (
                secret,
                SeedableRandomState::with_seed(secret.0 ^ secret.1, SharedSeed::global_fixed()),
            ),
            None => {
                let random = RandomState::new();
                let secret = (
                    random.hash_one(0x736c_7569_6365_u64),
                    random.hash_one(1_u64),
                );
                (secret, SeedableRandomState::random())
            }
        };
        MemoryStore {
            shards: (0..shards)
                .map(|_| Shard {
                    table: Mutex::new(Table::new(slots.clone())),
                })
                .collect(),
            shard_bits: shards.trailing_zeros(),
            hasher: SipHasher13::new_with_keys(secret.0, secret.1),
            slots,
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
                let name = self.name(&transition.key);
                Held {
                    name,
                    shard: self.shard_of(name),
                    guard: 0,
                    place: None,
                }
            })
            .collect();
        for (index, counter) in counters.iter().enumerate() {
            if let Some(duplicate) = counters
                .iter()
                .skip(index + 1)
                .position(|other| other.name.id == counter.name.id)
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
            counter.place = table.find(counter.name);
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
                guards[counter.guard].add(counter.name, *state, now);
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
        let name = self.name(&transition.key);
        let mut table = lock(&self.shards[self.shard_of(name)].table);
        let (state, stepped) = match table.get_mut(name) {
            Some(state) => {
                let before = *state;
                let stepped = step(now, transition, state);
                observe(0, &before, state);
                (*state, stepped)
            }
            None => {
                let mut state = CounterState::EMPTY;
                let stepped = step(now, transition, &mut state);
                observe(0, &CounterState::EMPTY, &state);
                table.add(name, state, now);
                (state, stepped)
            }
        };
        // The report is built after the shard is let go.
        drop(table);
        conclude(now, transition, &state, stepped)
    }

    /// Puts back a counter's state as a durable copy recorded it.
    pub(crate) fn restore(&self, key: &CounterKey, state: CounterState, now: Timestamp) {
        let name = self.name(key);
        lock(&self.shards[self.shard_of(name)].table).put(name, state, now);
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
        self.shard_of(self.name(key))
    }

    /// `key`'s counter's name and slot hash.
    #[inline(always)]
    fn name(&self, key: &CounterKey) -> Name {
        let id = match identity(key) {
            Some(id) => id,
            None => self.long_name(key),
        };
        Name {
            id,
            slot: self.slots.hash_one(id),
        }
    }

    /// The name of a key too long to be its own: its hash, with byte 1 set to a value no packed
    /// name has there (they have their length, at most 16).
    #[inline(never)]
    fn long_name(&self, key: &CounterKey) -> u128 {
        self.hasher.hash(key.encoded()).as_u128() | 0xff << 8
    }

    fn shard_of(&self, name: Name) -> usize {
        // Bits 32 and up of the slot hash pick the shard. The table takes its slots from the
        // low bits and its tags from the top 7, so the three stay independent.
        (name.slot >> 32 & ((1 << self.shard_bits) - 1)) as usize
    }
}

/// A short key's name: its encoding (`CounterKey::encoded`: the scope's length in four bytes,
/// then the scope and the name) as `CounterKey::packed` reads it, or `None` when it is longer
/// than 16 bytes. The scope of a key that short is at most 12 bytes long, so the length's second
/// byte is zero (an encoding where it is not is taken as long); it carries the encoding's length
/// instead, and bytes past the length are zero. Two encodings of one length differ in a byte
/// kept, so no two keys share a name.
#[inline(always)]
fn identity(key: &CounterKey) -> Option<u128> {
    let packed = key.packed()?;
    if packed >> 8 & 0xff != 0 {
        return None;
    }
    Some(packed | (key.encoded().len() as u128) << 8)
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
