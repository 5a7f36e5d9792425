//! Request ids: the client's `X-Request-Id` when it sent a usable one, or a new one that is
//! unique across restarts (a random per-process prefix and a counter), cheap enough to mint on
//! every request.
//!
//! tower-http's `SetRequestId` keeps whatever id a client sends; this gateway echoes the id into
//! logs and error bodies, so an unusable one (too long, spaces, quotes) is replaced instead.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};

use http::{HeaderMap, HeaderName, HeaderValue};

/// The header ids travel in.
pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Mints request ids.
#[derive(Debug)]
pub struct RequestIds {
    prefix: u64,
    next: AtomicU64,
}

impl RequestIds {
    /// A generator with a fresh random prefix.
    pub fn new() -> RequestIds {
        RequestIds {
            prefix: RandomState::new().hash_one(0x0072_6571_6964_u64),
            next: AtomicU64::new(0),
        }
    }

    /// The id of a request with `headers`: the client's if usable, else a new one.
    pub fn of(&self, headers: &HeaderMap) -> HeaderValue {
        if let Some(id) = headers.get(&X_REQUEST_ID).filter(|id| usable(id)) {
            return id.clone();
        }
        let count = self.next.fetch_add(1, Ordering::Relaxed);
        // The prefix in 16 hex digits, the count in 8 or more: written by hand, since
        // `format!` cost a twentieth of a decision-API request.
        let mut id = [0u8; 32];
        hex(&mut id[..16], self.prefix);
        let digits = 8usize.max(16 - count.leading_zeros() as usize / 4);
        hex(&mut id[16..16 + digits], count);
        HeaderValue::from_bytes(&id[..16 + digits]).unwrap_or(HeaderValue::from_static("unknown"))
    }
}

/// Writes `value`'s low `out.len()` hex digits into `out`, most significant first.
fn hex(out: &mut [u8], mut value: u64) {
    for digit in out.iter_mut().rev() {
        *digit = b"0123456789abcdef"[(value & 0xf) as usize];
        value >>= 4;
    }
}

impl Default for RequestIds {
    fn default() -> RequestIds {
        RequestIds::new()
    }
}

/// Whether a client's id is fit to echo and log: 1 to 128 printable characters, no quotes.
fn usable(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 128
        && bytes
            .iter()
            .all(|byte| byte.is_ascii_graphic() && *byte != b'"' && *byte != b'\\')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_ids_are_the_prefix_and_the_count_in_hex() {
        let ids = RequestIds {
            prefix: 0x0123_4567_89ab_cdef,
            next: AtomicU64::new(0xfe),
        };
        let none = HeaderMap::new();
        assert_eq!(ids.of(&none), "0123456789abcdef000000fe");
        assert_eq!(ids.of(&none), "0123456789abcdef000000ff");
        ids.next.store(0x1_2345_6789, Ordering::Relaxed);
        assert_eq!(ids.of(&none), "0123456789abcdef123456789");
        ids.next.store(u64::MAX, Ordering::Relaxed);
        assert_eq!(ids.of(&none), "0123456789abcdefffffffffffffffff");
    }
}
