//! sluice's policy file: one YAML document declaring an API's identities, keys, routes, limits,
//! quotas, plans, penalties, error contract and headers. [`load`] turns it into a validated
//! [`Policy`] or into errors that each name the file, line and column; [`docs`] renders the API's
//! rate-limit page from it.
//!
//! This crate reads no files and does no IO: the caller hands it the text and the name to report.

mod compile;
mod docs;
mod error;
mod keys;
mod route;
mod syntax;
mod text;

pub use compile::{
    Cors, DescriptorRule, EntryMatch, EnvoyRules, LimitRule, OverrideRule, PenaltyRule, PlanRule,
    Policy, QuotaRule, Route, Scope, TrustedProxy,
};
pub use docs::docs;
pub use error::{PolicyError, PolicyErrors};
pub use keys::{KeyRecord, KeyStatus, hash_text, load_keys};
pub use route::{RoutePattern, normal_path};
pub use syntax::{
    AlgorithmName, Authentication, ClientIp, FieldRule, FieldType, IdentitySource, InactiveBlocks,
    KeyAttribute, KeySource, Ordered, PathParameters, QuotaCounts, QuotaPeriod, RequestRules,
    Service, SizeText, StoreFailure, UrlRule,
};
pub use text::{Rate, parse_duration, parse_rate, parse_size};

/// Parses and validates the policy `text`, read from `file` (used only in error messages).
pub fn load(file: &str, text: &str) -> Result<Policy, PolicyErrors> {
    let parsed: syntax::PolicyFile = parse_yaml(file, text)?;
    compile::compile(file, parsed)
}

/// `text` (read from `file`) as a `T`, or the one error serde-saphyr found, located.
pub(crate) fn parse_yaml<T: serde::de::DeserializeOwned>(
    file: &str,
    text: &str,
) -> Result<T, PolicyErrors> {
    serde_saphyr::from_str(text).map_err(|error| {
        let (line, column) = error
            .location()
            .map_or((1, 1), |location| (location.line(), location.column()));
        PolicyErrors(vec![PolicyError {
            file: file.to_owned(),
            line,
            column,
            message: first_line(&error.to_string()),
        }])
    })
}

/// serde-saphyr's message without its own `line N column M:` prefix and source excerpt: the
/// location is reported in the `file:line:column` form instead.
fn first_line(message: &str) -> String {
    let line = message.lines().next().unwrap_or(message);
    let line = line.strip_prefix("error: ").unwrap_or(line);
    let line = match line.split_once(": ") {
        Some((prefix, rest)) if prefix.starts_with("line ") => rest,
        _ => line,
    };
    // Advice meant for a program calling serde-saphyr, not for whoever writes the file.
    line.strip_suffix(", set DuplicateKeyPolicy in Options if acceptable")
        .unwrap_or(line)
        .to_owned()
}
