//! The embedded backend, sluice's default: counters decided in memory, long-lived ones (quotas)
//! and records (API keys, overrides) made durable in a redb file with group commit.
//!
//! Design, and why:
//! - Every counter lives in a [`MemoryStore`], which decides; the file never sits on the
//!   decision's path. A counter whose window is long enough to matter after a restart (a
//!   calendar month, or at least [`EmbeddedStoreConfig::durable_from`]) is *durable*: each change
//!   to it is queued, while its shard is still locked, so the queue holds changes in the order
//!   they happened and the last write of a key is its newest state.
//! - One committer thread writes the queue in batches: everything queued while the previous
//!   batch was being fsync'd goes into the next transaction. A request that changed a durable
//!   counter returns only once the batch holding its change is on disk, so a client never sees a
//!   2xx whose count a crash could lose; but a thousand waiting requests cost one fsync, not a
//!   thousand.
//! - A failed commit fails the requests waiting on it (their counts stay in memory and are
//!   retried with the next batch), so the file can hold less than memory only for requests whose
//!   callers were told they failed. After a failed commit the file is closed and opened again:
//!   redb refuses every later transaction on a handle that once saw an I/O error, so a disk that
//!   filled up and was freed would otherwise fail every quota until the process restarted.
//! - Short-window counters are not written: after a restart they start empty, which can admit at
//!   most one window's worth again. Opening the store reads back every live durable counter and
//!   drops the expired ones.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use sluice_core::{
    Algorithm, Clock, CounterKey, CounterState, Decision, Limit, Period, Timestamp, Transition,
};
use smallvec::SmallVec;
use tokio::sync::watch;

use crate::memory::MemoryStore;
use crate::{CounterStore, Record, RecordStore, RecordTable, StoreError};

/// Durable counters: the key's encoding → its state (`window`, `value`, `aux`, `expires_at` as
/// four little-endian `u64`s). The name carries the encoding's version.
const COUNTERS: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("counters.v1");
const KEYS: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("keys.v1");
const OVERRIDES: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("overrides.v1");

/// The file inside the data directory.
const FILE: &str = "sluice.redb";

/// How to build an [`EmbeddedStore`].
#[derive(Clone, Copy, Debug)]
pub struct EmbeddedStoreConfig {
    /// Counters whose window is at least this long (and every calendar-month counter) survive a
    /// restart; shorter ones live in memory only. One hour by default.
    pub durable_from: Duration,
}

impl Default for EmbeddedStoreConfig {
    fn default() -> EmbeddedStoreConfig {
        EmbeddedStoreConfig {
            durable_from: Duration::from_secs(3600),
        }
    }
}

/// Counters in memory, with quotas and records kept durable in a redb file.
pub struct EmbeddedStore {
    memory: MemoryStore,
    shared: Arc<Shared>,
    durable_from: u64,
    committer: Option<JoinHandle<()>>,
    path: PathBuf,
}

/// What the request threads and the committer share.
struct Shared {
    /// `None` between a failed commit and the next successful reopen.
    db: RwLock<Option<Database>>,
    path: PathBuf,
    queue: Mutex<Queue>,
    wake: Condvar,
    commits: AtomicU64,
    written: AtomicU64,
}

/// What the committer has done since the store opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommitStats {
    /// Transactions committed (one fsync each).
    pub commits: u64,
    /// Counter changes and record writes they carried.
    pub writes: u64,
}

/// Changes waiting for the next commit.
struct Queue {
    counters: Vec<(CounterKey, CounterState)>,
    records: Vec<RecordWrite>,
    /// Tells everyone waiting on this batch how its commit went.
    done: watch::Sender<Option<Result<(), Arc<str>>>>,
    closed: bool,
}

impl Queue {
    fn is_empty(&self) -> bool {
        self.counters.is_empty() && self.records.is_empty()
    }
}

/// A record to store (`Some`) or delete (`None`).
type RecordWrite = (RecordTable, Vec<u8>, Option<Vec<u8>>);

type Outcome = watch::Receiver<Option<Result<(), Arc<str>>>>;

impl EmbeddedStore {
    /// Opens (creating it if needed) the store kept in directory `dir`, reading time from
    /// `clock`, and loads every live durable counter back into memory.
    pub fn open(
        dir: &Path,
        clock: Arc<dyn Clock>,
        config: EmbeddedStoreConfig,
    ) -> Result<EmbeddedStore, StoreError> {
        std::fs::create_dir_all(dir).map_err(|error| {
            StoreError::Storage(format!("cannot create {}: {error}", dir.display()))
        })?;
        let path = dir.join(FILE);
        let db = Database::create(&path).map_err(|error| match error {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::InUse(path.clone()),
            other => StoreError::Storage(format!("cannot open {}: {other}", path.display())),
        })?;
        let memory = MemoryStore::new(clock);
        restore(&db, &memory)?;
        let (done, _) = watch::channel(None);
        let shared = Arc::new(Shared {
            db: RwLock::new(Some(db)),
            path: path.clone(),
            queue: Mutex::new(Queue {
                counters: Vec::new(),
                records: Vec::new(),
                done,
                closed: false,
            }),
            wake: Condvar::new(),
            commits: AtomicU64::new(0),
            written: AtomicU64::new(0),
        });
        let committer = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("sluice-commit".into())
                .spawn(move || commit_loop(&shared))
                .map_err(|error| StoreError::Storage(format!("cannot start committer: {error}")))?
        };
        Ok(EmbeddedStore {
            memory,
            shared,
            durable_from: u64::try_from(config.durable_from.as_nanos()).unwrap_or(u64::MAX),
            committer: Some(committer),
            path,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many commits carried how many writes: the group commit at work.
    pub fn commit_stats(&self) -> CommitStats {
        CommitStats {
            commits: self.shared.commits.load(Ordering::Relaxed),
            writes: self.shared.written.load(Ordering::Relaxed),
        }
    }

    /// Removes expired counters from memory (the file's are dropped when the store opens).
    pub fn sweep(&self) {
        self.memory.sweep();
    }

    fn durable(&self, limit: &Limit) -> bool {
        match (limit.algorithm(), limit.period()) {
            (Algorithm::Concurrency, _) => false,
            (_, Period::Monthly(_)) => true,
            (_, Period::Span(span)) => *span >= self.durable_from,
        }
    }

    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.shared
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    async fn apply_durably(&self, transitions: &[Transition<'_>]) -> Result<Decision, StoreError> {
        let mut outcome: Option<Outcome> = None;
        let decision = self
            .memory
            .apply_observed(transitions, |index, before, after| {
                if before == after {
                    return;
                }
                if let Some(transition) = transitions.get(index)
                    && self.durable(transition.limit)
                {
                    let mut queue = self.queue();
                    queue.counters.push((transition.key.clone(), *after));
                    if outcome.is_none() {
                        outcome = Some(queue.done.subscribe());
                    }
                    self.shared.wake.notify_one();
                }
            })?;
        if let Some(outcome) = outcome {
            wait(outcome).await?;
        }
        Ok(decision)
    }
}

/// Waits for the batch `outcome` belongs to.
async fn wait(mut outcome: Outcome) -> Result<(), StoreError> {
    let result = outcome
        .wait_for(Option::is_some)
        .await
        .map_err(|_| StoreError::Storage("the store was closed before committing".into()))?;
    match &*result {
        Some(Err(error)) => Err(StoreError::Storage(error.to_string())),
        _ => Ok(()),
    }
}

impl CounterStore for EmbeddedStore {
    fn apply(
        &self,
        transitions: &[Transition<'_>],
    ) -> impl Future<Output = Result<Decision, StoreError>> + Send {
        self.apply_durably(transitions)
    }
}

impl RecordStore for EmbeddedStore {
    async fn put_record(
        &self,
        table: RecordTable,
        id: &[u8],
        value: Option<&[u8]>,
    ) -> Result<(), StoreError> {
        let outcome = {
            let mut queue = self.queue();
            queue
                .records
                .push((table, id.to_vec(), value.map(<[u8]>::to_vec)));
            self.shared.wake.notify_one();
            queue.done.subscribe()
        };
        wait(outcome).await
    }

    async fn records(&self, table: RecordTable) -> Result<Vec<Record>, StoreError> {
        let storage = |error: &dyn std::fmt::Display| StoreError::Storage(error.to_string());
        let db = self
            .shared
            .db
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(db) = db.as_ref() else {
            return Err(storage(&"the store's file is closed after a failed write"));
        };
        let read = db.begin_read().map_err(|e| storage(&e))?;
        let table = match read.open_table(definition(table)) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(error) => return Err(storage(&error)),
        };
        let mut records = Vec::new();
        for entry in table.iter().map_err(|e| storage(&e))? {
            let (id, value) = entry.map_err(|e| storage(&e))?;
            records.push((id.value().to_vec(), value.value().to_vec()));
        }
        Ok(records)
    }
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        self.queue().closed = true;
        self.shared.wake.notify_one();
        if let Some(committer) = self.committer.take() {
            // The committer writes what is queued before it stops.
            let _ = committer.join();
        }
    }
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn definition(table: RecordTable) -> TableDefinition<'static, &'static [u8], &'static [u8]> {
    match table {
        RecordTable::Keys => KEYS,
        RecordTable::Overrides => OVERRIDES,
    }
}

/// Writes queued changes, one transaction and one fsync per batch, until the store closes.
fn commit_loop(shared: &Shared) {
    // Failed commits in a row: the first is logged, then one a minute, then the recovery.
    let mut failures: u64 = 0;
    loop {
        let (counters, records, done) = {
            let mut queue = shared.queue.lock().unwrap_or_else(PoisonError::into_inner);
            while queue.is_empty() && !queue.closed {
                queue = shared
                    .wake
                    .wait(queue)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            if queue.is_empty() {
                return;
            }
            let (next, _) = watch::channel(None);
            (
                std::mem::take(&mut queue.counters),
                std::mem::take(&mut queue.records),
                std::mem::replace(&mut queue.done, next),
            )
        };
        let written = match &*shared.db.read().unwrap_or_else(PoisonError::into_inner) {
            Some(db) => write(db, &counters, &records),
            None => Err("the file could not be opened again".to_owned()),
        };
        match written {
            Ok(()) => {
                if failures > 0 {
                    tracing::warn!(failures, "the embedded store commits again");
                    failures = 0;
                }
                shared.commits.fetch_add(1, Ordering::Relaxed);
                let writes = counters.len().saturating_add(records.len());
                shared
                    .written
                    .fetch_add(u64::try_from(writes).unwrap_or(u64::MAX), Ordering::Relaxed);
                done.send_replace(Some(Ok(())));
            }
            Err(error) => {
                if failures.is_multiple_of(600) {
                    tracing::error!(%error, failures, "the embedded store could not commit; retrying with the next batch");
                }
                failures = failures.saturating_add(1);
                // Older than anything queued since: they go first, so the newest state of a key
                // is still written last.
                let mut queue = shared.queue.lock().unwrap_or_else(PoisonError::into_inner);
                let newer = std::mem::replace(&mut queue.counters, counters);
                queue.counters.extend(newer);
                let newer = std::mem::replace(&mut queue.records, records);
                queue.records.extend(newer);
                let closing = queue.closed;
                let unwritten = queue.counters.len().saturating_add(queue.records.len());
                drop(queue);
                done.send_replace(Some(Err(error.as_str().into())));
                if closing {
                    // Closing on a disk that still fails: every caller of these was told so;
                    // retrying for ever would only keep the process from exiting.
                    tracing::error!(%error, unwritten, "the embedded store closes with changes it could not write");
                    return;
                }
                reopen(shared);
                // Do not spin on a disk that keeps failing.
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Closes the file and opens it again, for a handle that saw an I/O error (which redb then
/// refuses to use). Readers wait meanwhile; memory still decides.
fn reopen(shared: &Shared) {
    let mut db = shared.db.write().unwrap_or_else(PoisonError::into_inner);
    // Closed first: redb refuses a second handle on one file.
    *db = None;
    match Database::create(&shared.path) {
        Ok(opened) => *db = Some(opened),
        Err(error) => tracing::debug!(%error, "the embedded store cannot open its file again yet"),
    }
}

fn write(
    db: &Database,
    counters: &[(CounterKey, CounterState)],
    records: &[RecordWrite],
) -> Result<(), String> {
    let transaction = db.begin_write().map_err(|e| e.to_string())?;
    {
        let mut table = transaction
            .open_table(COUNTERS)
            .map_err(|e| e.to_string())?;
        for (key, state) in counters {
            table
                .insert(key.encoded(), encode(state).as_slice())
                .map_err(|e| e.to_string())?;
        }
        for (kind, id, value) in records {
            let mut table = transaction
                .open_table(definition(*kind))
                .map_err(|e| e.to_string())?;
            match value {
                Some(value) => table.insert(id.as_slice(), value.as_slice()),
                None => table.remove(id.as_slice()),
            }
            .map_err(|e| e.to_string())?;
        }
    }
    transaction.commit().map_err(|e| e.to_string())
}

/// Loads every live durable counter into `memory` and deletes the expired ones from the file.
fn restore(db: &Database, memory: &MemoryStore) -> Result<(), StoreError> {
    let storage = |error: &dyn std::fmt::Display| StoreError::Storage(error.to_string());
    let now = memory.now();
    let transaction = db.begin_write().map_err(|e| storage(&e))?;
    {
        let mut table = transaction.open_table(COUNTERS).map_err(|e| storage(&e))?;
        let mut expired: Vec<Vec<u8>> = Vec::new();
        for entry in table.iter().map_err(|e| storage(&e))? {
            let (key, value) = entry.map_err(|e| storage(&e))?;
            let key = key.value();
            match decode(value.value()) {
                Some(state) if state.is_live(now) => {
                    memory.restore(&CounterKey::from_encoded(key), state, now);
                }
                _ => expired.push(key.to_vec()),
            }
        }
        for key in expired {
            table.remove(key.as_slice()).map_err(|e| storage(&e))?;
        }
    }
    transaction.commit().map_err(|e| storage(&e))
}

fn encode(state: &CounterState) -> [u8; 32] {
    let mut bytes = [0u8; 32];
    let fields = [
        state.window,
        state.value,
        state.aux,
        state.expires_at.as_nanos(),
    ];
    for (chunk, field) in bytes.chunks_exact_mut(8).zip(fields) {
        chunk.copy_from_slice(&field.to_le_bytes());
    }
    bytes
}

fn decode(bytes: &[u8]) -> Option<CounterState> {
    let mut fields: SmallVec<[u64; 4]> = SmallVec::new();
    for chunk in bytes.chunks_exact(8) {
        fields.push(u64::from_le_bytes(chunk.try_into().ok()?));
    }
    match fields.as_slice() {
        [window, value, aux, expires_at] if bytes.len() == 32 => Some(CounterState {
            window: *window,
            value: *value,
            aux: *aux,
            expires_at: Timestamp::from_nanos(*expires_at),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_through_their_encoding() {
        let state = CounterState {
            window: 7,
            value: u64::MAX,
            aux: 3,
            expires_at: Timestamp::from_nanos(1_795_342_530_250_000_000),
        };
        assert_eq!(decode(&encode(&state)), Some(state));
        assert_eq!(decode(&[0; 31]), None);
    }
}
