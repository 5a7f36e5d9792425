//! Names for counters: which identity a counter belongs to and which limit it counts for.

use std::fmt;

use smallvec::SmallVec;

/// Names one counter: the identity it belongs to (its *scope*, e.g. `user:42`) and the limit it
/// counts for (its *name*, e.g. `upload-file/0`).
///
/// The scope decides placement: a backend keeps all counters of one scope together (one Redis
/// Cluster slot), so the counters a request touches can be updated in one atomic step.
///
/// The key is held as one encoding, `scope length (u32, little-endian) ‖ scope ‖ name`, which is
/// unambiguous (`"ab" / "c"` differs from `"a" / "bc"`) and is what backends hash or store. Keys
/// up to 56 encoded bytes live inline, so building one allocates nothing.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct CounterKey {
    /// Invariant: starts with the scope's length as 4 little-endian bytes, then the scope, then
    /// the name.
    encoded: SmallVec<[u8; INLINE]>,
}

const PREFIX: usize = 4;
const INLINE: usize = 56;
/// Keys up to this many encoded bytes are put together in a register and written in one store.
const PACKED: usize = 16;

impl CounterKey {
    /// The key of the counter `name` within `scope`. A scope longer than 4 GiB is cut there.
    pub fn new(scope: &[u8], name: &[u8]) -> CounterKey {
        let scope = scope.get(..u32::MAX as usize).unwrap_or(scope);
        let length = u32::try_from(scope.len()).unwrap_or(u32::MAX).to_le_bytes();
        let total = PREFIX
            .saturating_add(scope.len())
            .saturating_add(name.len());
        // Short keys (nearly all) are written straight into the inline buffer; the shortest in
        // one store, so that a reader of whole words right after (the memory store names such
        // keys by their bytes, and a hash reads words) gets them forwarded from that store,
        // where pieces written apart would make it wait for them to reach the cache.
        let mut inline = [0u8; INLINE];
        if total <= PACKED {
            let packed = u128::from(u32::from_le_bytes(length))
                | little_endian(scope) << 32
                | little_endian(name)
                    .checked_shl(bits(scope.len()).saturating_add(32))
                    .unwrap_or(0);
            if let Some(head) = inline.first_chunk_mut::<PACKED>() {
                *head = packed.to_le_bytes();
            }
            return CounterKey {
                encoded: SmallVec::from_buf_and_len(inline, total),
            };
        }
        if let Some((prefix, rest)) = inline.split_at_mut_checked(PREFIX)
            && let Some((scope_part, rest)) = rest.split_at_mut_checked(scope.len())
            && let Some(name_part) = rest.get_mut(..name.len())
        {
            prefix.copy_from_slice(&length);
            scope_part.copy_from_slice(scope);
            name_part.copy_from_slice(name);
            return CounterKey {
                encoded: SmallVec::from_buf_and_len(inline, total),
            };
        }
        let mut encoded = SmallVec::with_capacity(total);
        encoded.extend_from_slice(&length);
        encoded.extend_from_slice(scope);
        encoded.extend_from_slice(name);
        CounterKey { encoded }
    }

    /// The key whose [`CounterKey::encoded`] form is `encoded` (as a backend stored it). Bytes
    /// that no key encodes to still make a key, whose scope and name read as empty where the
    /// encoding does not hold them.
    pub fn from_encoded(encoded: &[u8]) -> CounterKey {
        CounterKey {
            encoded: SmallVec::from_slice(encoded),
        }
    }

    /// The identity the counter belongs to.
    pub fn scope(&self) -> &[u8] {
        self.encoded
            .get(PREFIX..PREFIX.saturating_add(self.scope_len()))
            .unwrap_or_default()
    }

    /// The limit the counter counts for.
    pub fn name(&self) -> &[u8] {
        self.encoded
            .get(PREFIX.saturating_add(self.scope_len())..)
            .unwrap_or_default()
    }

    /// The whole key in its unambiguous encoding.
    pub fn encoded(&self) -> &[u8] {
        &self.encoded
    }

    /// The encoding as a little-endian number, when it is at most 16 bytes long (the bytes past
    /// its end read as zero): what a backend that names short keys by their bytes reads, in two
    /// loads at most.
    pub fn packed(&self) -> Option<u128> {
        (self.encoded.len() <= PACKED).then(|| little_endian(&self.encoded))
    }

    fn scope_len(&self) -> usize {
        let mut length = [0u8; PREFIX];
        if let Some(prefix) = self.encoded.get(..PREFIX) {
            length.copy_from_slice(prefix);
        }
        u32::from_le_bytes(length) as usize
    }
}

/// `bytes` (at most 16 of them; more are not all read) as a little-endian number, read in at
/// most two loads for four bytes or more.
fn little_endian(bytes: &[u8]) -> u128 {
    let length = bytes.len();
    // From eight bytes up: the first eight, and past them the last `length - 8` of the last
    // eight, shifted down to where they start.
    if let (Some(head), Some(last)) = (bytes.first_chunk::<8>(), bytes.last_chunk::<8>()) {
        let rest = u64::from_le_bytes(*last)
            .checked_shr(bits(16_usize.saturating_sub(length)))
            .unwrap_or(0);
        return u128::from(rest) << 64 | u128::from(u64::from_le_bytes(*head));
    }
    // Four to seven: two loads that overlap, whose shared bytes are the same, so or-ing them in
    // place is exact.
    if let (Some(head), Some(last)) = (bytes.first_chunk::<4>(), bytes.last_chunk::<4>()) {
        return u128::from(u32::from_le_bytes(*head))
            | u128::from(u32::from_le_bytes(*last))
                .checked_shl(bits(length.saturating_sub(4)))
                .unwrap_or(0);
    }
    bytes
        .iter()
        .rev()
        .fold(0, |value, &byte| value << 8 | u128::from(byte))
}

/// The bits in `bytes` bytes, for a shift.
fn bits(bytes: usize) -> u32 {
    u32::try_from(bytes).map_or(u32::MAX, |bytes| bytes.saturating_mul(8))
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
