//! Why a store could not apply a request.

use sluice_core::CounterKey;

/// Why a store could not apply a request. A denial is not an error: it is a `Decision`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The same counter appeared twice in one request; the request changed nothing.
    #[error("counter {0:?} appears twice in one request")]
    DuplicateKey(CounterKey),
    /// The backend could not read or write its storage; the request may or may not have been
    /// counted.
    #[error("storage failed: {0}")]
    Storage(String),
    /// The backend did not answer (a Redis server down, slow or unreachable); the request may
    /// or may not have been counted.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Another process holds the store's file (a running server, usually).
    #[error("{} is in use by another process (a running sluice server?)", .0.display())]
    InUse(std::path::PathBuf),
}
