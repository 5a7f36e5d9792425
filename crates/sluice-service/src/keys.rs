//! The API keys a deployment accepts, held as SHA-256 hashes only: a presented key is hashed and
//! the hash looked up, so the secrets themselves are never stored, and the final comparison is
//! constant-time so that a lookup leaks nothing about how close a guess came.
//!
//! Keys come from two places: the policy's keys file (read-only), and the store, where
//! `sluice keys` and the admin API create, rotate, revoke and suspend them. A stored key is a
//! record keyed by its hash, whose value is the JSON of [`StoredKey`]: never the secret.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sluice_core::Timestamp;
use sluice_policy::{KeyRecord, KeyStatus, Policy};
use sluice_store::{RecordStore, RecordTable, StoreError};
use subtle::ConstantTimeEq;

/// The SHA-256 of an API key's secret, as the keys file stores it.
pub fn hash_key(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Every known key, by hash.
#[derive(Debug, Default)]
pub struct KeyRing {
    by_hash: HashMap<[u8; 32], Arc<KeyRecord>>,
}

impl KeyRing {
    /// A ring of `records` (as loaded by [`sluice_policy::load_keys`]).
    pub fn new(records: Vec<KeyRecord>) -> KeyRing {
        KeyRing {
            by_hash: records
                .into_iter()
                .map(|record| (record.hash, Arc::new(record)))
                .collect(),
        }
    }

    /// The key whose secret is `secret`, if it is known (whatever its status).
    pub fn find(&self, secret: &str) -> Option<&Arc<KeyRecord>> {
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

    /// Every key, in no particular order.
    pub fn records(&self) -> impl Iterator<Item = &KeyRecord> {
        self.by_hash.values().map(|record| &**record)
    }
}

/// A key as the store keeps it: everything but the secret (and the hash, which is the record's
/// id).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StoredKey {
    /// Public id (`key_…`), what operators name the key by.
    pub id: String,
    /// The user who owns it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// The owner's team.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    /// The site it was issued for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    /// Its plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    /// Its environment (e.g. `live`, `test`, `prod`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    /// Whether it may be used.
    pub status: KeyStatus,
    /// When it was created, Unix seconds.
    pub created_at: u64,
    /// When it stops working, Unix seconds (a rotated key's grace period).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
}

impl StoredKey {
    fn record(&self, hash: [u8; 32]) -> KeyRecord {
        KeyRecord {
            id: self.id.clone(),
            hash,
            owner: self.owner.clone(),
            team: self.team.clone(),
            site: self.site.clone(),
            plan: self.plan.clone(),
            environment: self.environment.clone(),
            status: self.status,
            expires_at: self.expires_at.map(Timestamp::from_secs),
        }
    }
}

/// The attributes of a key to create.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    /// The user who owns it (required).
    pub owner: String,
    /// The owner's team.
    #[serde(default)]
    pub team: Option<String>,
    /// The site it is issued for.
    #[serde(default)]
    pub site: Option<String>,
    /// Its plan; the policy's default plan when absent.
    #[serde(default)]
    pub plan: Option<String>,
    /// Its environment; the policy's required environment when absent, else `live`.
    #[serde(default)]
    pub environment: Option<String>,
}

/// A key just created: the only time its secret exists outside the client's hands.
#[derive(Debug, Serialize)]
pub struct IssuedKey {
    /// The secret, shown once.
    pub secret: String,
    /// What the store keeps.
    #[serde(flatten)]
    pub key: StoredKey,
}

/// Why a key operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// No stored key has this id.
    #[error("no key with id {0}")]
    NotFound(String),
    /// The plan is not declared in the policy.
    #[error("plan {0:?} is not declared in the policy")]
    UnknownPlan(String),
    /// An owner is required.
    #[error("a key needs an owner")]
    MissingOwner,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Every key kept in `store`, with its hash.
pub(crate) async fn stored_keys<S: RecordStore>(
    store: &S,
) -> Result<Vec<([u8; 32], StoredKey)>, StoreError> {
    let mut keys = Vec::new();
    for (id, value) in store.records(RecordTable::Keys).await? {
        let (Ok(hash), Ok(key)) = (
            <[u8; 32]>::try_from(id.as_slice()),
            serde_json::from_slice::<StoredKey>(&value),
        ) else {
            return Err(StoreError::Storage(
                "a stored key record is unreadable".into(),
            ));
        };
        keys.push((hash, key));
    }
    keys.sort_by(|a, b| (a.1.created_at, &a.1.id).cmp(&(b.1.created_at, &b.1.id)));
    Ok(keys)
}

/// The key records of `store`, as the service authenticates against them.
pub(crate) async fn stored_records<S: RecordStore>(
    store: &S,
) -> Result<Vec<KeyRecord>, StoreError> {
    Ok(stored_keys(store)
        .await?
        .into_iter()
        .map(|(hash, key)| key.record(hash))
        .collect())
}

/// Creates a key for `new` in `store` at `now`; the secret is in the answer and nowhere else.
pub(crate) async fn create_key<S: RecordStore>(
    store: &S,
    policy: &Policy,
    new: NewKey,
    now: Timestamp,
) -> Result<IssuedKey, KeyError> {
    if new.owner.trim().is_empty() {
        return Err(KeyError::MissingOwner);
    }
    if let Some(plan) = &new.plan
        && !policy.plans.contains_key(plan)
    {
        return Err(KeyError::UnknownPlan(plan.clone()));
    }
    let environment = new
        .environment
        .or_else(|| {
            policy
                .authentication
                .as_ref()
                .and_then(|auth| auth.environment.clone())
        })
        .unwrap_or_else(|| "live".to_owned());
    let key = StoredKey {
        id: format!("key_{}", random_hex(6)?),
        owner: Some(new.owner),
        team: new.team,
        site: new.site,
        plan: new.plan,
        environment: Some(environment),
        status: KeyStatus::Active,
        created_at: now.as_secs(),
        expires_at: None,
    };
    issue(store, key).await
}

/// Issues a new secret for `key` and stores it.
async fn issue<S: RecordStore>(store: &S, key: StoredKey) -> Result<IssuedKey, KeyError> {
    let environment = key.environment.as_deref().unwrap_or("live");
    let secret = format!("sk_{environment}_{}", random_hex(20)?);
    put(store, &hash_key(&secret), &key).await?;
    Ok(IssuedKey { secret, key })
}

async fn put<S: RecordStore>(
    store: &S,
    hash: &[u8; 32],
    key: &StoredKey,
) -> Result<(), StoreError> {
    let value = serde_json::to_vec(key)
        .map_err(|error| StoreError::Storage(format!("cannot encode a key: {error}")))?;
    store
        .put_record(RecordTable::Keys, hash, Some(&value))
        .await
}

async fn find<S: RecordStore>(store: &S, id: &str) -> Result<([u8; 32], StoredKey), KeyError> {
    stored_keys(store)
        .await?
        .into_iter()
        .find(|(_, key)| key.id == id)
        .ok_or_else(|| KeyError::NotFound(id.to_owned()))
}

/// Sets the status of key `id`: revoked keys are refused from the next request on, suspended
/// ones lose the requests the policy's `inactive_subscription_blocks` names.
pub(crate) async fn set_status<S: RecordStore>(
    store: &S,
    id: &str,
    status: KeyStatus,
) -> Result<StoredKey, KeyError> {
    let (hash, mut key) = find(store, id).await?;
    key.status = status;
    put(store, &hash, &key).await?;
    Ok(key)
}

/// Replaces key `id` with a new secret carrying the same attributes; the old secret keeps
/// working for `grace` from `now`, then stops.
pub(crate) async fn rotate_key<S: RecordStore>(
    store: &S,
    id: &str,
    grace: Duration,
    now: Timestamp,
) -> Result<IssuedKey, KeyError> {
    let (hash, mut old) = find(store, id).await?;
    // In whole seconds, rounded up: the grace period never ends early.
    old.expires_at = Some(now.saturating_add(grace).as_nanos().div_ceil(1_000_000_000));
    let successor = StoredKey {
        id: format!("key_{}", random_hex(6)?),
        status: KeyStatus::Active,
        created_at: now.as_secs(),
        expires_at: None,
        ..old.clone()
    };
    put(store, &hash, &old).await?;
    issue(store, successor).await
}

fn random_hex(bytes: usize) -> Result<String, StoreError> {
    let mut buffer = vec![0u8; bytes];
    getrandom::fill(&mut buffer)
        .map_err(|error| StoreError::Storage(format!("no randomness: {error}")))?;
    Ok(buffer.iter().map(|byte| format!("{byte:02x}")).collect())
}
