//! Where counters live: the [`CounterStore`] contract and its backends.
//!
//! A store knows nothing of policies or algorithms. It offers one atomic primitive — apply the
//! transitions of every counter a request touches, all or nothing — and leaves the arithmetic to
//! [`sluice_core::decide`], so every backend decides exactly alike. The shared conformance suite
//! (`sluice-test-support`) holds each backend to that.

mod embedded;
mod error;
mod memory;
mod redis_store;
mod sync;

use std::future::Future;

use sluice_core::{Decision, Transition};

pub use embedded::{CommitStats, EmbeddedStore, EmbeddedStoreConfig};
pub use error::StoreError;
pub use memory::{MemoryStore, MemoryStoreConfig};
pub use redis_store::{RedisStore, RedisStoreConfig, RedisTarget};

/// A place that keeps counters and applies requests to them atomically.
pub trait CounterStore: Send + Sync {
    /// Applies one request's transitions at the store's current instant, all or nothing, and
    /// reports every counter the request touched.
    ///
    /// No other request observes a state in which some of these transitions happened and others
    /// did not. Each counter may appear at most once ([`StoreError::DuplicateKey`] otherwise).
    fn apply(
        &self,
        transitions: &[Transition<'_>],
    ) -> impl Future<Output = Result<Decision, StoreError>> + Send;

    /// Whether the store is failing to answer right now (a remote store that is down or slow):
    /// what readiness and metrics report. Local stores never are.
    fn is_degraded(&self) -> bool {
        false
    }

    /// How many gateways share these counters, as they last announced themselves: what a
    /// route that falls back to local counters divides its limits by. 1 for a store of one
    /// process.
    fn live_instances(&self) -> u64 {
        1
    }
}

impl<S: CounterStore + ?Sized> CounterStore for std::sync::Arc<S> {
    fn apply(
        &self,
        transitions: &[Transition<'_>],
    ) -> impl Future<Output = Result<Decision, StoreError>> + Send {
        (**self).apply(transitions)
    }

    fn is_degraded(&self) -> bool {
        (**self).is_degraded()
    }

    fn live_instances(&self) -> u64 {
        (**self).live_instances()
    }
}

/// The kinds of record a store keeps beside its counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RecordTable {
    /// API keys, by the hash of their secret.
    Keys,
    /// Per-identity limit overrides set at run time, by identity.
    Overrides,
}

/// One record: its id and its value.
pub type Record = (Vec<u8>, Vec<u8>);

/// Small records that every gateway sharing a store must see alike (API keys, overrides), kept
/// as opaque bytes: the store knows their table, never their meaning.
pub trait RecordStore: Send + Sync {
    /// Stores `value` as record `id` of `table`, or deletes the record when `value` is `None`.
    /// Durable (where the backend is) when the future completes.
    fn put_record(
        &self,
        table: RecordTable,
        id: &[u8],
        value: Option<&[u8]>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Every record of `table`, in id order.
    fn records(
        &self,
        table: RecordTable,
    ) -> impl Future<Output = Result<Vec<Record>, StoreError>> + Send;
}

impl<S: RecordStore + ?Sized> RecordStore for std::sync::Arc<S> {
    fn put_record(
        &self,
        table: RecordTable,
        id: &[u8],
        value: Option<&[u8]>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        (**self).put_record(table, id, value)
    }

    fn records(
        &self,
        table: RecordTable,
    ) -> impl Future<Output = Result<Vec<Record>, StoreError>> + Send {
        (**self).records(table)
    }
}

/// The store a deployment configured, whichever backend it is: what the server runs on.
#[derive(Debug)]
pub enum AnyStore {
    /// Counters in this process only.
    Memory(MemoryStore),
    /// Counters in memory, quotas and records durable in a local file.
    Embedded(EmbeddedStore),
    /// Counters, quotas and records in Redis or a Redis Cluster, shared by a fleet.
    Redis(RedisStore),
}

impl AnyStore {
    /// Drops expired counters from memory; a server calls it on a timer.
    pub fn sweep(&self) {
        match self {
            AnyStore::Memory(store) => store.sweep(),
            AnyStore::Embedded(store) => store.sweep(),
            // Redis expires keys itself; blocks taken from it run out here.
            AnyStore::Redis(store) => store.sweep(),
        }
    }
}

impl CounterStore for AnyStore {
    async fn apply(&self, transitions: &[Transition<'_>]) -> Result<Decision, StoreError> {
        match self {
            AnyStore::Memory(store) => store.apply_now(transitions),
            AnyStore::Embedded(store) => store.apply(transitions).await,
            // Boxed: a Redis call's future is about 2.7 KB, and held inline it would be part of
            // every request's future on every store, which is copied whole into the heap block
            // the server boxes it in; one allocation beside a network round trip costs nothing.
            AnyStore::Redis(store) => Box::pin(store.apply(transitions)).await,
        }
    }

    fn is_degraded(&self) -> bool {
        match self {
            AnyStore::Memory(_) | AnyStore::Embedded(_) => false,
            AnyStore::Redis(store) => store.is_degraded(),
        }
    }

    fn live_instances(&self) -> u64 {
        match self {
            AnyStore::Memory(_) | AnyStore::Embedded(_) => 1,
            AnyStore::Redis(store) => store.live_instances(),
        }
    }
}

impl RecordStore for AnyStore {
    async fn put_record(
        &self,
        table: RecordTable,
        id: &[u8],
        value: Option<&[u8]>,
    ) -> Result<(), StoreError> {
        match self {
            AnyStore::Memory(store) => store.put_record(table, id, value).await,
            AnyStore::Embedded(store) => store.put_record(table, id, value).await,
            AnyStore::Redis(store) => store.put_record(table, id, value).await,
        }
    }

    async fn records(&self, table: RecordTable) -> Result<Vec<Record>, StoreError> {
        match self {
            AnyStore::Memory(store) => store.records(table).await,
            AnyStore::Embedded(store) => store.records(table).await,
            AnyStore::Redis(store) => store.records(table).await,
        }
    }
}
