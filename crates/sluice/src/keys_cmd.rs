//! `sluice keys`: helpers for the keys file until the managed key store exists. `keys hash`
//! reads a key from standard input and prints the line a keys file stores for it, so the key
//! itself never has to appear on a command line or in shell history.

use std::io::Read;
use std::process::ExitCode;

use anyhow::{Context, bail};

/// `sluice keys …`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum KeysCommand {
    /// Reads an API key from standard input and prints its `sha256:…` hash for a keys file.
    Hash,
}

pub(crate) fn run(command: KeysCommand) -> anyhow::Result<ExitCode> {
    match command {
        KeysCommand::Hash => {
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
    }
}
