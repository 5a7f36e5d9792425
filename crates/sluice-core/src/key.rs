//! Names for counters: which identity a counter belongs to and which limit it counts for.

use std::fmt;

use smallvec::SmallVec;

/// Names one counter: the identity it belongs to (its *scope*, e.g. `user:42`) and the limit it
/// counts for (its *name*, e.g. `upload-file/0`).
///
/// The scope decides placement: a backend keeps all counters of one scope together (one Redis
/// Cluster slot), so the counters a request touches can be updated in one atomic step. Keys up to
/// 48 bytes live inline, so building one allocates nothing.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct CounterKey {
    /// Invariant: at most `bytes.len()`; `bytes[..scope_len]` is the scope.
    scope_len: usize,
    bytes: SmallVec<[u8; 48]>,
}

impl CounterKey {
    /// The key of the counter `name` within `scope`.
    pub fn new(scope: &[u8], name: &[u8]) -> CounterKey {
        let mut bytes = SmallVec::with_capacity(scope.len().saturating_add(name.len()));
        bytes.extend_from_slice(scope);
        bytes.extend_from_slice(name);
        CounterKey {
            scope_len: scope.len(),
            bytes,
        }
    }

    /// The identity the counter belongs to.
    pub fn scope(&self) -> &[u8] {
        self.bytes.get(..self.scope_len).unwrap_or_default()
    }

    /// The limit the counter counts for.
    pub fn name(&self) -> &[u8] {
        self.bytes.get(self.scope_len..).unwrap_or_default()
    }
}

impl fmt::Debug for CounterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "CounterKey({:?} / {:?})",
            String::from_utf8_lossy(self.scope()),
            String::from_utf8_lossy(self.name())
        )
    }
}
