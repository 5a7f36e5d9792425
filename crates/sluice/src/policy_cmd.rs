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

/// The policy; or, when it is invalid, `None` after printing its errors to stderr.
fn load(args: &PolicyArgs) -> anyhow::Result<Option<Policy>> {
    let text = std::fs::read_to_string(&args.policy)
        .with_context(|| format!("cannot read policy file {}", args.policy.display()))?;
    let name = args.policy.display().to_string();
    match sluice_policy::load(&name, &text) {
        Ok(policy) => Ok(Some(policy)),
        Err(errors) => {
            eprintln!("{errors}");
            Ok(None)
        }
    }
}

pub(crate) fn check(args: &PolicyArgs) -> anyhow::Result<ExitCode> {
    let Some(policy) = load(args)? else {
        return Ok(ExitCode::FAILURE);
    };
    let envoy = policy.envoy.as_ref().map_or_else(String::new, |envoy| {
        let rules = envoy.descriptors.len();
        let plural = if rules == 1 { "" } else { "s" };
        format!(
            ", {rules} Envoy descriptor rule{plural} for domain `{}`",
            envoy.domain
        )
    });
    // Limits on trial, so that one left in shadow mode by mistake is seen.
    let shadow = policy
        .limits()
        .filter(|rule| rule.limit.is_shadow())
        .count();
    let shadow = match shadow {
        0 => String::new(),
        1 => ", 1 limit in shadow mode".to_owned(),
        count => format!(", {count} limits in shadow mode"),
    };
    println!(
        "{}: ok ({} routes, {} plans{envoy}{shadow})",
        args.policy.display(),
        policy.routes.len(),
        policy.plans.len()
    );
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn docs(args: &PolicyArgs) -> anyhow::Result<ExitCode> {
    let Some(policy) = load(args)? else {
        return Ok(ExitCode::FAILURE);
    };
    print!("{}", sluice_policy::docs(&policy));
    Ok(ExitCode::SUCCESS)
}
