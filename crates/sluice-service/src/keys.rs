//! The API keys a deployment accepts, held as SHA-256 hashes only: a presented key is hashed and
//! the hash looked up, so the secrets themselves are never stored, and the final comparison is
//! constant-time so that a lookup leaks nothing about how close a guess came.

use std::collections::HashMap;

use sha2::{Digest, Sha256};
use sluice_policy::KeyRecord;
use subtle::ConstantTimeEq;

/// The SHA-256 of an API key's secret, as the keys file stores it.
pub fn hash_key(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Every known key, by hash.
#[derive(Debug, Default)]
pub struct KeyRing {
    by_hash: HashMap<[u8; 32], KeyRecord>,
}

impl KeyRing {
    /// A ring of `records` (as loaded by [`sluice_policy::load_keys`]).
    pub fn new(records: Vec<KeyRecord>) -> KeyRing {
        KeyRing {
            by_hash: records
                .into_iter()
                .map(|record| (record.hash, record))
                .collect(),
        }
    }

    /// The key whose secret is `secret`, if it is known (whatever its status).
    pub fn find(&self, secret: &str) -> Option<&KeyRecord> {
        let hash = hash_key(secret);
        // The table finds the candidate by hash; the constant-time comparison confirms it, so a
        // timing difference could at most reveal something about a SHA-256 output, never about
        // the secret.
        self.by_hash
            .get(&hash)
            .filter(|record| bool::from(record.hash.ct_eq(&hash)))
    }

    /// How many keys the ring holds.
    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    /// Whether the ring holds no key.
    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }
}
