//! `sluice check` and `sluice docs`: read a policy file, validate it, and either report its
//! problems (file:line:column each) or render the API's rate-limit page from it.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use sluice_policy::Policy;

/// Where the policy is.
#[derive(Debug, clap::Args)]
pub(crate) struct PolicyArgs {
    /// The policy file (YAML).
    #[arg(value_name = "POLICY", env = "SLUICE_POLICY")]
    policy: PathBuf,
}

/// The policy, or its errors printed to stderr.
fn load(args: &PolicyArgs) -> anyhow::Result<Result<Policy, String>> {
    let text = std::fs::read_to_string(&args.policy)
        .with_context(|| format!("cannot read policy file {}", args.policy.display()))?;
    let name = args.policy.display().to_string();
    Ok(sluice_policy::load(&name, &text).map_err(|errors| errors.to_string()))
}

pub(crate) fn check(args: &PolicyArgs) -> anyhow::Result<ExitCode> {
    match load(args)? {
        Ok(policy) => {
            println!(
                "{}: ok ({} routes, {} plans)",
                args.policy.display(),
                policy.routes.len(),
                policy.plans.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(errors) => {
            eprintln!("{errors}");
            Ok(ExitCode::FAILURE)
        }
    }
}

pub(crate) fn docs(args: &PolicyArgs) -> anyhow::Result<ExitCode> {
    match load(args)? {
        Ok(policy) => {
            print!("{}", sluice_policy::docs(&policy));
            Ok(ExitCode::SUCCESS)
        }
        Err(errors) => {
            eprintln!("{errors}");
            Ok(ExitCode::FAILURE)
        }
    }
}
