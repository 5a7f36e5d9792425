//! The service in force, replaced whole when the policy is reloaded, so that a running server
//! takes a new policy without dropping a connection or a counter.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use crate::Service;

/// The service in force. A request is decided wholly under the service current when it began;
/// [`LiveService::replace`] puts a new one (a reloaded policy over the same store, so counters
/// carry over by their limits' names) in force for every request after.
///
/// Serving threads keep a copy of their own and compare [`LiveService::generation`] before each
/// request, a read of a word that changes only on reload: sharing one reference count among
/// every request of every thread would move its cache line between cores on every request.
pub struct LiveService<S> {
    current: RwLock<Arc<Service<S>>>,
    /// Bumped after each replacement.
    generation: AtomicU64,
}

impl<S> LiveService<S> {
    /// `service` in force.
    pub fn new(service: Arc<Service<S>>) -> LiveService<S> {
        LiveService {
            current: RwLock::new(service),
            generation: AtomicU64::new(0),
        }
    }

    /// The service in force now.
    pub fn current(&self) -> Arc<Service<S>> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// How many times the service was replaced: a copy taken from [`LiveService::current`]
    /// after reading this is current for as long as this stays the same.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Puts `service` in force for every request from now on.
    pub fn replace(&self, service: Arc<Service<S>>) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = service;
        self.generation.fetch_add(1, Ordering::Release);
    }
}

impl<S> std::fmt::Debug for LiveService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveService")
            .field("generation", &self.generation())
            .finish_non_exhaustive()
    }
}
