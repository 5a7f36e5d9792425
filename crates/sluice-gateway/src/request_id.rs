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
        let id = format!("{:016x}{:08x}", self.prefix, count);
        HeaderValue::from_str(&id).unwrap_or(HeaderValue::from_static("unknown"))
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
