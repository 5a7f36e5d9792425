//! Why a store could not apply a request.

use sluice_core::CounterKey;

/// Why a store could not apply a request. A denial is not an error: it is a `Decision`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The same counter appeared twice in one request; the request changed nothing.
    #[error("counter {0:?} appears twice in one request")]
    DuplicateKey(CounterKey),
}
