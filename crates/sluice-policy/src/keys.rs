//! The keys file a policy may name: API keys, each stored only as the SHA-256 hash of its secret,
//! with its holder's attributes (owner, team, site), plan, environment and status. Keys in the
//! file are read-only; keys managed at run time (`sluice keys`, the admin API) live in the store.

use std::collections::BTreeSet;

use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::compile::Policy;
use crate::error::{PolicyError, PolicyErrors};

/// Whether a key may be used.
#[derive(Clone, Copy, Debug, Default, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum KeyStatus {
    /// In use.
    #[default]
    Active,
    /// Withdrawn: refused with 401 from the next request on.
    Revoked,
    /// Its subscription expired: the requests the policy's `inactive_subscription_blocks` names
    /// are refused with 403, others pass.
    Suspended,
}

impl KeyStatus {
    /// As the keys file and the admin API write it.
    pub fn name(self) -> &'static str {
        match self {
            KeyStatus::Active => "active",
            KeyStatus::Revoked => "revoked",
            KeyStatus::Suspended => "suspended",
        }
    }
}

/// One key as the file describes it, validated.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyRecord {
    /// The key's public id: what logs, counters and the `key` identity use, never the secret.
    pub id: String,
    /// SHA-256 of the secret.
    pub hash: [u8; 32],
    /// The user who owns it.
    pub owner: Option<String>,
    /// The owner's team.
    pub team: Option<String>,
    /// The site it was issued for.
    pub site: Option<String>,
    /// Its plan; the policy's default plan when absent.
    pub plan: Option<String>,
    /// The environment it belongs to (e.g. `prod`).
    pub environment: Option<String>,
    /// Whether it may be used.
    pub status: KeyStatus,
    /// When it stops working (a rotated key's grace period ends); `None` for never.
    pub expires_at: Option<sluice_core::Timestamp>,
}

impl std::fmt::Debug for KeyRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The hash is not the secret, but it has no business in logs either.
        f.debug_struct("KeyRecord")
            .field("id", &self.id)
            .field("owner", &self.owner)
            .field("team", &self.team)
            .field("site", &self.site)
            .field("plan", &self.plan)
            .field("environment", &self.environment)
            .field("status", &self.status)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    keys: Vec<KeySpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeySpec {
    id: Spanned<String>,
    hash: Spanned<String>,
    #[serde(default)]
    owner: Option<String>,
    #[serde(default)]
    team: Option<String>,
    #[serde(default)]
    site: Option<String>,
    #[serde(default)]
    plan: Option<Spanned<String>>,
    #[serde(default)]
    environment: Option<String>,
    #[serde(default)]
    status: KeyStatus,
}

/// Parses and validates the keys file `text`, read from `file`, against `policy` (which plans
/// exist).
pub fn load_keys(file: &str, text: &str, policy: &Policy) -> Result<Vec<KeyRecord>, PolicyErrors> {
    let parsed: KeysFile = crate::parse_yaml(file, text)?;
    let mut errors = Vec::new();
    let mut error = |at: &Spanned<String>, message: String| {
        errors.push(PolicyError {
            file: file.to_owned(),
            line: at.referenced.line(),
            column: at.referenced.column(),
            message,
        });
    };
    let mut ids = BTreeSet::new();
    let mut hashes = BTreeSet::new();
    let mut records = Vec::with_capacity(parsed.keys.len());
    for spec in parsed.keys {
        if !ids.insert(spec.id.value.clone()) {
            error(
                &spec.id,
                format!("key id `{}` is listed twice", spec.id.value),
            );
        }
        let hash = match parse_hash(&spec.hash.value) {
            Some(hash) => hash,
            None => {
                error(
                    &spec.hash,
                    "expected `sha256:` followed by 64 hexadecimal digits (the SHA-256 of the \
                     key; `sluice keys hash` prints it)"
                        .to_owned(),
                );
                continue;
            }
        };
        if !hashes.insert(hash) {
            error(&spec.hash, "this key hash is listed twice".to_owned());
        }
        if let Some(plan) = &spec.plan
            && !policy.plans.contains_key(&plan.value)
        {
            let known: Vec<&str> = policy.plans.keys().map(String::as_str).collect();
            error(
                plan,
                format!(
                    "unknown plan `{}`; expected one of the policy's plans ({})",
                    plan.value,
                    if known.is_empty() {
                        "it defines none".to_owned()
                    } else {
                        known.join(", ")
                    }
                ),
            );
        }
        records.push(KeyRecord {
            id: spec.id.value,
            hash,
            owner: spec.owner,
            team: spec.team,
            site: spec.site,
            plan: spec.plan.map(|plan| plan.value),
            environment: spec.environment,
            status: spec.status,
            expires_at: None,
        });
    }
    if errors.is_empty() {
        Ok(records)
    } else {
        Err(PolicyErrors(errors))
    }
}

/// `sha256:` and 64 hex digits, as bytes.
fn parse_hash(text: &str) -> Option<[u8; 32]> {
    let hex = text.trim().strip_prefix("sha256:")?.as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let mut hash = [0u8; 32];
    for (byte, pair) in hash.iter_mut().zip(hex.chunks_exact(2)) {
        let digit = |c: u8| char::from(c).to_digit(16);
        let (high, low) = (digit(*pair.first()?)?, digit(*pair.get(1)?)?);
        *byte = u8::try_from(high * 16 + low).ok()?;
    }
    Some(hash)
}

/// `hash` in the keys file's notation, `sha256:` and 64 lowercase hex digits.
pub fn hash_text(hash: &[u8; 32]) -> String {
    let mut text = String::with_capacity(71);
    text.push_str("sha256:");
    for byte in hash {
        text.push_str(&format!("{byte:02x}"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_round_trip_through_their_notation() {
        let hash: [u8; 32] = std::array::from_fn(|index| u8::try_from(index * 7).unwrap_or(0));
        assert_eq!(parse_hash(&hash_text(&hash)), Some(hash));
        assert_eq!(parse_hash("sha256:abc"), None);
        assert_eq!(parse_hash(&format!("md5:{}", "0".repeat(64))), None);
        assert_eq!(parse_hash(&format!("sha256:{}", "g".repeat(64))), None);
    }
}
