//! Locks, swapped for loom's model-checked ones under `--cfg sluice_loom`, so the memory store's locking
//! can be explored interleaving by interleaving.

#[cfg(sluice_loom)]
pub(crate) use loom::sync::{Mutex, MutexGuard};
#[cfg(not(sluice_loom))]
pub(crate) use std::sync::{Mutex, MutexGuard};

/// Locks `mutex`. No code panics while holding one of our locks (the engine never panics), so a
/// poisoned lock still guards consistent data and is taken as it is.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
