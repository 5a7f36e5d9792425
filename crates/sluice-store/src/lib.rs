//! Where counters live: the [`CounterStore`] contract and its backends.
//!
//! A store knows nothing of policies or algorithms. It offers one atomic primitive — apply the
//! transitions of every counter a request touches, all or nothing — and leaves the arithmetic to
//! [`sluice_core::decide`], so every backend decides exactly alike. The shared conformance suite
//! (`sluice-test-support`) holds each backend to that.

mod error;
mod memory;
mod sync;

use std::future::Future;

use sluice_core::{Decision, Transition};

pub use error::StoreError;
pub use memory::{MemoryStore, MemoryStoreConfig};

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
}

impl<S: CounterStore + ?Sized> CounterStore for std::sync::Arc<S> {
    fn apply(
        &self,
        transitions: &[Transition<'_>],
    ) -> impl Future<Output = Result<Decision, StoreError>> + Send {
        (**self).apply(transitions)
    }
}
