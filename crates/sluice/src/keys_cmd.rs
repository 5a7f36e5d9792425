//! `sluice keys`: API keys in the configured store. `create` prints the new secret once (only its
//! hash is stored); `list`, `rotate`, `revoke`, `suspend` and `activate` name keys by their id.
//! With `--admin URL` the command goes through a running server's admin API; otherwise it opens
//! the store itself (which a running server holds: the error says so). `keys hash` reads a key
//! from standard input and prints the line a keys file stores for it.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use sluice_core::{Clock, SystemClock};
use sluice_policy::KeyStatus;
use sluice_service::{IssuedKey, KeyRing, NewKey, Service, StoredKey};

use crate::serve;

/// `sluice keys …`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum KeysCommand {
    /// Creates a key and prints its secret, once.
    Create {
        /// The user who owns the key.
        #[arg(long)]
        owner: String,
        /// The owner's team (what team quotas count against).
        #[arg(long)]
        team: Option<String>,
        /// The site the key is issued for.
        #[arg(long)]
        site: Option<String>,
        /// The plan (declared in the policy); the policy's default plan when absent.
        #[arg(long)]
        plan: Option<String>,
        /// The environment, e.g. live or test; the policy's required one when absent, else live.
        #[arg(long = "env")]
        environment: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Lists the stored keys (never their secrets).
    List {
        #[command(flatten)]
        target: Target,
    },
    /// Issues a new secret for a key; the old secret keeps working for the grace period.
    Rotate {
        /// The key's id (`key_…`).
        id: String,
        /// How long the old secret keeps working, e.g. 24h, 7d, 0s.
        #[arg(long, default_value = "24h", value_parser = duration)]
        grace: Duration,
        #[command(flatten)]
        target: Target,
    },
    /// Revokes a key: refused from the next request on.
    Revoke {
        /// The key's id.
        id: String,
        #[command(flatten)]
        target: Target,
    },
    /// Suspends a key (an expired subscription): the policy's writes get 403, reads work.
    Suspend {
        /// The key's id.
        id: String,
        #[command(flatten)]
        target: Target,
    },
    /// Makes a revoked or suspended key active again.
    Activate {
        /// The key's id.
        id: String,
        #[command(flatten)]
        target: Target,
    },
    /// Reads an API key from standard input and prints its `sha256:…` hash for a keys file.
    Hash,
}

/// Where the keys are: a store opened directly, or a running server's admin API.
#[derive(Debug, clap::Args)]
pub(crate) struct Target {
    /// The policy (plans and the required environment are checked against it).
    #[arg(long, env = "SLUICE_POLICY", value_name = "FILE")]
    policy: Option<PathBuf>,
    /// The store, as `sluice serve --store` names it.
    #[arg(
        long,
        env = "SLUICE_STORE",
        default_value = "sluice-data",
        value_name = "DIR"
    )]
    store: String,
    /// A running server's admin API (e.g. http://127.0.0.1:9901), used instead of the store.
    #[arg(long, env = "SLUICE_ADMIN_URL", value_name = "URL")]
    admin: Option<String>,
    /// The admin API's bearer token.
    #[arg(long, env = "SLUICE_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
}

fn duration(text: &str) -> Result<Duration, String> {
    sluice_policy::parse_duration(text)
}

/// What a command asks of the keys.
#[derive(Clone)]
pub(crate) enum Operation {
    Create(NewKey),
    List,
    Rotate(String, Duration),
    Status(String, KeyStatus),
}

pub(crate) fn run(command: KeysCommand) -> anyhow::Result<ExitCode> {
    let (operation, target) = match command {
        KeysCommand::Hash => return hash(),
        KeysCommand::Create {
            owner,
            team,
            site,
            plan,
            environment,
            target,
        } => (
            Operation::Create(NewKey {
                owner,
                team,
                site,
                plan,
                environment,
            }),
            target,
        ),
        KeysCommand::List { target } => (Operation::List, target),
        KeysCommand::Rotate { id, grace, target } => (Operation::Rotate(id, grace), target),
        KeysCommand::Revoke { id, target } => (Operation::Status(id, KeyStatus::Revoked), target),
        KeysCommand::Suspend { id, target } => {
            (Operation::Status(id, KeyStatus::Suspended), target)
        }
        KeysCommand::Activate { id, target } => (Operation::Status(id, KeyStatus::Active), target),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let outcome = runtime.block_on(async {
        if let Some(url) = &target.admin {
            return crate::admin_client::keys(url, target.admin_token.as_deref(), operation).await;
        }
        // A server holding the store wrote where its admin API is: go through it.
        let admin_file = std::path::Path::new(&target.store).join(serve::ADMIN_FILE);
        if let Some((url, token)) = running_server(&admin_file) {
            match crate::admin_client::keys(&url, Some(&token), operation.clone()).await {
                // A server that has stopped left its file: open the store instead.
                Err(error)
                    if error
                        .downcast_ref::<reqwest::Error>()
                        .is_some_and(reqwest::Error::is_connect) => {}
                done => return done,
            }
        }
        on_store(&target, operation).await
    })?;
    print(outcome);
    Ok(ExitCode::SUCCESS)
}

/// What an operation returns, to print.
pub(crate) enum Outcome {
    Issued(IssuedKey),
    Keys(Vec<StoredKey>),
    Changed(StoredKey),
}

/// The admin API's address and token a server holding the store left in `file`.
fn running_server(file: &std::path::Path) -> Option<(String, String)> {
    let text = std::fs::read(file).ok()?;
    let value: serde_json::Value = serde_json::from_slice(&text).ok()?;
    Some((
        value.get("url")?.as_str()?.to_owned(),
        value.get("token")?.as_str()?.to_owned(),
    ))
}

async fn on_store(target: &Target, operation: Operation) -> anyhow::Result<Outcome> {
    let Some(policy) = &target.policy else {
        bail!("--policy FILE (or SLUICE_POLICY) is required to manage keys in a store");
    };
    let deployment = serve::load(policy)?;
    if target.store == "memory" {
        bail!("--store memory keeps nothing: name the store directory the server uses");
    }
    let clock: Arc<dyn Clock> = Arc::new(SystemClock::new());
    let store = serve::open_store(&target.store, Arc::clone(&clock))
        .await
        .map_err(|error| {
            match error
                .root_cause()
                .downcast_ref::<sluice_store::StoreError>()
            {
                Some(sluice_store::StoreError::InUse(_)) => error.context(
                    "a running server holds this store: manage its keys through its admin API \
                 (--admin http://127.0.0.1:9901 --admin-token …)",
                ),
                _ => error,
            }
        })?;
    let service = Service::new(deployment.policy, store, KeyRing::default()).with_clock(clock);
    Ok(match operation {
        Operation::Create(new) => Outcome::Issued(service.create_key(new).await?),
        Operation::List => Outcome::Keys(service.list_keys().await?),
        Operation::Rotate(id, grace) => Outcome::Issued(service.rotate_key(&id, grace).await?),
        Operation::Status(id, status) => {
            Outcome::Changed(service.set_key_status(&id, status).await?)
        }
    })
}

impl Operation {
    /// The admin API call for this operation: method, path and JSON body.
    pub(crate) fn request(&self) -> (&'static str, String, Option<serde_json::Value>) {
        match self {
            Operation::Create(new) => (
                "POST",
                "/v1/keys".into(),
                Some(serde_json::json!({
                    "owner": new.owner,
                    "team": new.team,
                    "site": new.site,
                    "plan": new.plan,
                    "environment": new.environment,
                })),
            ),
            Operation::List => ("GET", "/v1/keys".into(), None),
            Operation::Rotate(id, grace) => (
                "POST",
                format!("/v1/keys/{id}/rotate"),
                Some(serde_json::json!({ "grace_seconds": grace.as_secs() })),
            ),
            Operation::Status(id, status) => {
                let action = match status {
                    KeyStatus::Active => "activate",
                    KeyStatus::Revoked => "revoke",
                    KeyStatus::Suspended => "suspend",
                };
                ("POST", format!("/v1/keys/{id}/{action}"), None)
            }
        }
    }

    /// Whether the answer is a new secret, a list, or one changed key.
    pub(crate) fn answer(&self, body: &[u8]) -> anyhow::Result<Outcome> {
        Ok(match self {
            Operation::Create(_) | Operation::Rotate(..) => {
                #[derive(serde::Deserialize)]
                struct Issued {
                    secret: String,
                    #[serde(flatten)]
                    key: StoredKey,
                }
                let issued: Issued =
                    serde_json::from_slice(body).context("the admin API's answer")?;
                Outcome::Issued(IssuedKey {
                    secret: issued.secret,
                    key: issued.key,
                })
            }
            Operation::List => {
                #[derive(serde::Deserialize)]
                struct Keys {
                    keys: Vec<StoredKey>,
                }
                let keys: Keys = serde_json::from_slice(body).context("the admin API's answer")?;
                Outcome::Keys(keys.keys)
            }
            Operation::Status(..) => {
                Outcome::Changed(serde_json::from_slice(body).context("the admin API's answer")?)
            }
        })
    }
}

fn print(outcome: Outcome) {
    match outcome {
        Outcome::Issued(issued) => {
            eprintln!(
                "Created {} for {}. The secret below is shown once; only its hash is stored.",
                issued.key.id,
                issued.key.owner.as_deref().unwrap_or("-")
            );
            println!("{}", issued.secret);
        }
        Outcome::Keys(keys) => {
            println!(
                "{:<18} {:<16} {:<12} {:<12} {:<8} {:<10} EXPIRES",
                "ID", "OWNER", "TEAM", "PLAN", "ENV", "STATUS"
            );
            for key in keys {
                println!(
                    "{:<18} {:<16} {:<12} {:<12} {:<8} {:<10} {}",
                    key.id,
                    key.owner.as_deref().unwrap_or("-"),
                    key.team.as_deref().unwrap_or("-"),
                    key.plan.as_deref().unwrap_or("(default)"),
                    key.environment.as_deref().unwrap_or("-"),
                    key.status.name(),
                    key.expires_at
                        .map_or_else(|| "-".to_owned(), |secs| format!("unix {secs}")),
                );
            }
        }
        Outcome::Changed(key) => println!("{} is now {}", key.id, key.status.name()),
    }
}

fn hash() -> anyhow::Result<ExitCode> {
    let mut key = String::new();
    std::io::stdin()
        .read_to_string(&mut key)
        .context("cannot read the key from standard input")?;
    let key = key.trim();
    if key.is_empty() {
        bail!("no key on standard input; try: printf %s \"$KEY\" | sluice keys hash");
    }
    println!(
        "{}",
        sluice_policy::hash_text(&sluice_service::hash_key(key))
    );
    Ok(ExitCode::SUCCESS)
}
