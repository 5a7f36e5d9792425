//! The API's rate-limit page, in Markdown, rendered from the policy: limits, size limits, quotas,
//! headers, the error format with an example body, the status codes, and how to retry. The same
//! information the seed pages publish, so the page and the behaviour cannot drift apart.

use std::fmt::Write as _;
use std::time::Duration;

use sluice_contract::{
    ErrorCode, ErrorReply, LimitView, ResetUnit, Values, rate_limit_headers, size_words,
    window_words,
};

use crate::compile::{LimitRule, Policy, Route, Scope};
use crate::syntax::{IdentitySource, KeyAttribute, QuotaPeriod};

/// `1,000`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// `1 request per 2 minutes`, `1,000 requests per minute`.
fn rate_words(count: u64, span: Duration) -> String {
    format!(
        "{} {} per {}",
        thousands(count),
        if count == 1 { "request" } else { "requests" },
        window_words(span)
    )
}

fn scope_words(policy: &Policy, scope: &Scope) -> String {
    let Scope::Identity(name) = scope else {
        return "All clients together".to_owned();
    };
    match policy.identities.get(name) {
        Some(IdentitySource::Body { field }) => format!("Per `{field}`"),
        Some(IdentitySource::Header { name }) => format!("Per `{name}` header"),
        Some(IdentitySource::Query { name }) => format!("Per `{name}` query parameter"),
        Some(IdentitySource::Key { attribute }) => match attribute {
            KeyAttribute::Key => "Per API key".to_owned(),
            KeyAttribute::Owner => "Per user".to_owned(),
            KeyAttribute::Team => "Per team".to_owned(),
            KeyAttribute::Site => "Per site key".to_owned(),
        },
        Some(IdentitySource::ClientIp) if policy.ipv6_prefix < 128 => format!(
            "Per client IP address (IPv6 addresses by their /{} network)",
            policy.ipv6_prefix
        ),
        Some(IdentitySource::ClientIp) => "Per client IP address".to_owned(),
        None => format!("Per `{name}`"),
    }
}

/// The route as a reader knows it: its pattern, or `catch_all` for the `* /*` kind.
fn endpoint_words(route: &Route, catch_all: &str) -> String {
    if route.pattern.is_wildcard() && route.pattern.method().is_none() {
        catch_all.to_owned()
    } else {
        format!("`{}`", route.pattern)
    }
}

/// The limits a client can run into: a limit in shadow mode is on trial, not a promise.
fn enforced(limits: &[LimitRule]) -> impl Iterator<Item = &LimitRule> {
    limits.iter().filter(|limit| !limit.limit.is_shadow())
}

fn limit_cell(limit: &LimitRule) -> String {
    format!("**{}**", rate_words(limit.rate.count, limit.rate.span))
}

/// The rate-limit page for `policy`.
pub fn docs(policy: &Policy) -> String {
    let mut out = String::new();
    let name = &policy.service.name;
    let _ = writeln!(out, "# {name}: rate limits and errors\n");
    if let Some(description) = &policy.service.description {
        let _ = writeln!(out, "{description}\n");
    }
    if let Some(base) = &policy.service.base_url {
        let _ = writeln!(out, "Base URL: `{base}`\n");
    }

    // --- rate limits
    let _ = writeln!(out, "## Rate limits\n");
    let _ = writeln!(out, "| Endpoint | Limit | Scope |");
    let _ = writeln!(out, "| --- | --- | --- |");
    let mut routes: Vec<_> = policy.routes.iter().collect();
    // Specific routes first, catch-alls last, as a reader scans the table.
    routes.sort_by_key(|route| route.pattern.is_wildcard());
    for route in &routes {
        let endpoint = endpoint_words(route, "All other endpoints");
        if route.unlimited {
            let scope = enforced(&route.limits)
                .next()
                .map_or_else(|| "—".to_owned(), |limit| scope_words(policy, &limit.per));
            let _ = writeln!(
                out,
                "| {endpoint} | Unlimited (subject to fair use) | {scope} |"
            );
            continue;
        }
        for limit in enforced(&route.limits) {
            let _ = writeln!(
                out,
                "| {endpoint} | {} | {} |",
                limit_cell(limit),
                scope_words(policy, &limit.per)
            );
        }
        if enforced(&route.limits).next().is_none() {
            let _ = writeln!(out, "| {endpoint} | No limit | — |");
        }
    }
    out.push('\n');

    if let Some(fair) = policy.routes.iter().find(|route| route.unlimited) {
        let _ = writeln!(
            out,
            "\"Unlimited\" still means fair use: aggressive polling, parallel fan-out or repeated \
             retries are throttled. Fair use allows:\n"
        );
        for limit in enforced(&fair.limits) {
            let _ = writeln!(
                out,
                "- {} ({})",
                rate_words(limit.rate.count, limit.rate.span),
                lower_first(&scope_words(policy, &limit.per))
            );
        }
        out.push('\n');
    }

    for penalty in &policy.penalties {
        let _ = writeln!(
            out,
            "Clients that keep hammering after being limited are blocked: {} rejected requests \
             within {} block the account ({}) on every endpoint for {}, answered with `429` \
             and a `Retry-After` of the block's remaining time.\n",
            thousands(penalty.after_denials.count),
            sluice_contract::duration_words(penalty.after_denials.span),
            lower_first(&scope_words(policy, &penalty.per)),
            sluice_contract::duration_words(penalty.block_for),
        );
    }

    // --- overrides
    if !policy.overrides.is_empty() {
        let _ = writeln!(
            out,
            "Enterprise customers can have custom limits; contact support. ({} arranged.)\n",
            policy.overrides.len()
        );
    }

    // --- content sizes
    let mut sizes = Vec::new();
    for route in &policy.routes {
        if let Some(max) = route.request.max_body {
            let endpoint = endpoint_words(route, "any other endpoint");
            sizes.push((format!("Request body of {endpoint}"), max.0));
        }
        for (field, rule) in &route.request.fields.0 {
            let label = rule
                .description
                .clone()
                .unwrap_or_else(|| format!("`{field}` field"));
            if let Some(max) = rule.max_size {
                sizes.push((label.clone(), max.0));
            }
            if let Some(url) = &rule.url
                && let Some(max) = url.max_resource_size
            {
                let label = url
                    .description
                    .clone()
                    .unwrap_or_else(|| format!("Resource linked by `{field}`"));
                sizes.push((label, max.0));
            }
        }
    }
    if !sizes.is_empty() {
        let _ = writeln!(out, "## Content size limits\n");
        let _ = writeln!(out, "| Content | Maximum size |");
        let _ = writeln!(out, "| --- | --- |");
        for (label, size) in sizes {
            let _ = writeln!(out, "| {label} | {} |", size_words(size));
        }
        out.push('\n');
    }

    // --- quotas
    let quota_plans: Vec<_> = policy
        .plans
        .iter()
        .filter(|(_, plan)| !plan.quotas.is_empty())
        .collect();
    if !quota_plans.is_empty() {
        let _ = writeln!(out, "## Plan quotas\n");
        let _ = writeln!(
            out,
            "Rate limits prevent abuse (requests per minute); quotas follow your plan (usage per \
             billing period). They are counted separately.\n"
        );
        let _ = writeln!(out, "| Plan | Quota | Period | Scope |");
        let _ = writeln!(out, "| --- | --- | --- | --- |");
        for (name, plan) in quota_plans {
            for quota in &plan.quotas {
                let period = match quota.period {
                    QuotaPeriod::CalendarMonth => "calendar month".to_owned(),
                    QuotaPeriod::BillingCycle { anchor_day } => {
                        format!("month from day {anchor_day} of the billing cycle")
                    }
                };
                let _ = writeln!(
                    out,
                    "| {name} | {} {} | {period} | {} |",
                    thousands(quota.amount),
                    quota.unit.as_deref().unwrap_or("requests"),
                    scope_words(policy, &quota.per)
                );
            }
        }
        let _ = writeln!(
            out,
            "\nWhen a quota is used up the API answers `{}`.\n",
            ErrorCode::QuotaExceeded.status()
        );
    }

    // --- headers
    let example = LimitView {
        name: "limit",
        limit: 1000,
        remaining: 999,
        window: Duration::from_secs(60),
        reset_after: Duration::from_secs(60),
        retry: None,
    };
    let headers = rate_limit_headers(
        &policy.headers,
        &[example],
        Duration::from_secs(1_640_995_140),
    );
    if !headers.is_empty() {
        let _ = writeln!(out, "## Rate limit headers\n");
        let _ = writeln!(out, "Every response carries:\n\n```");
        for (name, value) in &headers {
            let _ = writeln!(
                out,
                "{}: {}",
                display_header(name.as_str()),
                value.to_str().unwrap_or("")
            );
        }
        let _ = writeln!(out, "```\n");
        if let Some(unit) = policy.headers.x_ratelimit {
            let reset = match unit {
                ResetUnit::UnixSeconds => "Unix timestamp when the window resets",
                ResetUnit::Seconds => "seconds until the window resets",
                ResetUnit::Millis => "milliseconds until the window resets",
            };
            let _ = writeln!(
                out,
                "- `X-RateLimit-Limit`: maximum requests allowed per window"
            );
            let _ = writeln!(
                out,
                "- `X-RateLimit-Remaining`: requests remaining in the current window"
            );
            let _ = writeln!(out, "- `X-RateLimit-Reset`: {reset}");
        }
        if policy.headers.ietf {
            let _ = writeln!(
                out,
                "- `RateLimit-Policy` and `RateLimit` (IETF draft): every limit that applied, with \
                 its quota `q`, window `w`, remaining `r` and seconds to reset `t`"
            );
        }
        out.push('\n');
    }

    // --- errors
    let _ = writeln!(out, "## Errors\n");
    let _ = writeln!(
        out,
        "Every error response, whatever its status, has the same JSON shape. When you exceed a limit the API answers `429 Too Many Requests` with a `Retry-After` header (seconds) and this body:\n"
    );
    let sample = policy
        .routes
        .iter()
        .flat_map(|route| enforced(&route.limits))
        .next();
    // The wait right after the limit is reached: a whole window for a fixed window, one
    // emission interval for a token bucket.
    let retry = sample.map_or(Duration::from_secs(60), |limit| match limit.algorithm {
        crate::syntax::AlgorithmName::TokenBucket => limit
            .rate
            .span
            .checked_div(u32::try_from(limit.rate.count).unwrap_or(u32::MAX))
            .unwrap_or(limit.rate.span),
        _ => limit.rate.span,
    });
    let values = Values {
        retry: Some(retry),
        limit: sample.map(|limit| limit.rate.count),
        window: sample.map(|limit| limit.rate.span),
        ..Values::default()
    };
    let body = render(policy, ErrorCode::RateLimited, &values);
    let _ = writeln!(out, "```json\n{body}\n```\n");

    let _ = writeln!(out, "## Status codes\n");
    let _ = writeln!(out, "| Status | Code | Meaning | Example message |");
    let _ = writeln!(out, "| --- | --- | --- | --- |");
    for code in produced_codes(policy) {
        let values = Values {
            retry: Some(retry),
            field: Some(example_field(policy)),
            max_size: example_size(policy),
            reason: Some("must be a string".into()),
            ..values.clone()
        };
        let message = policy.message(code).render(&values);
        let status = code.status();
        let _ = writeln!(
            out,
            "| `{} {}` | `{}` | {} | \"{}\" |",
            status.as_u16(),
            status.canonical_reason().unwrap_or(""),
            code.name(),
            code.description(),
            message
        );
    }
    out.push('\n');

    // --- retry
    let _ = writeln!(out, "## Retry strategy\n");
    let _ = writeln!(
        out,
        "- **Retry** on `429` and `5xx` only; any other `4xx` means the request is wrong, and retrying will not fix it."
    );
    let _ = writeln!(
        out,
        "- On `429`, wait at least `Retry-After` seconds: a request sent earlier is refused again."
    );
    let _ = writeln!(
        out,
        "- Otherwise back off exponentially with jitter (1 s, 2 s, 4 s, … ± 250 ms), capping the delay (60 s) and the attempts (5)."
    );
    let _ = writeln!(
        out,
        "- Never blindly repeat a non-idempotent request that timed out: check whether it took effect first."
    );
    let _ = writeln!(
        out,
        "- Keep hammering a limited endpoint and the whole identity may be blocked for a while."
    );
    out
}

fn lower_first(text: &str) -> String {
    let mut chars = text.chars();
    chars.next().map_or_else(String::new, |first| {
        first.to_lowercase().chain(chars).collect()
    })
}

fn display_header(name: &str) -> String {
    match name {
        "x-ratelimit-limit" => "X-RateLimit-Limit".into(),
        "x-ratelimit-remaining" => "X-RateLimit-Remaining".into(),
        "x-ratelimit-reset" => "X-RateLimit-Reset".into(),
        "ratelimit-policy" => "RateLimit-Policy".into(),
        "ratelimit" => "RateLimit".into(),
        other => other.into(),
    }
}

fn example_field(policy: &Policy) -> String {
    policy
        .routes
        .iter()
        .flat_map(|route| route.request.fields.0.iter())
        .find(|(_, rule)| rule.required)
        .map_or_else(|| "field".to_owned(), |(name, _)| name.clone())
}

fn example_size(policy: &Policy) -> Option<u64> {
    policy.routes.iter().find_map(|route| {
        route.request.max_body.map(|size| size.0).or_else(|| {
            route
                .request
                .fields
                .0
                .iter()
                .find_map(|(_, rule)| rule.max_size.map(|size| size.0))
        })
    })
}

fn render(policy: &Policy, code: ErrorCode, values: &Values) -> String {
    let reply = ErrorReply {
        code,
        status: code.status(),
        title: policy.title(code),
        message: policy.message(code).render(values),
        kind: policy.kind(code).map(str::to_owned),
        retry_after: values.retry.map(sluice_contract::ceil_seconds),
        request_id: None,
    };
    let rendered = policy.envelope.render(&reply);
    let value: serde_json::Value = serde_json::from_slice(&rendered.body).unwrap_or_default();
    serde_json::to_string_pretty(&value).unwrap_or_default()
}

/// The codes a gateway running this policy can answer with, in registry order.
fn produced_codes(policy: &Policy) -> Vec<ErrorCode> {
    let routes = &policy.routes;
    let any = |test: &dyn Fn(&Route) -> bool| routes.iter().any(test);
    ErrorCode::ALL
        .iter()
        .copied()
        .filter(|code| match code {
            ErrorCode::RateLimited => any(&|route| enforced(&route.limits).next().is_some()),
            ErrorCode::QuotaExceeded => any(&|route| !route.quotas.is_empty()),
            ErrorCode::Blocked => !policy.penalties.is_empty(),
            ErrorCode::ConcurrencyExceeded => any(&|route| {
                route
                    .limits
                    .iter()
                    .any(|limit| limit.algorithm == crate::syntax::AlgorithmName::Concurrency)
            }),
            ErrorCode::MissingApiKey | ErrorCode::InvalidApiKey | ErrorCode::RevokedApiKey => {
                policy.authentication.is_some()
            }
            ErrorCode::WrongEnvironment => policy
                .authentication
                .as_ref()
                .is_some_and(|auth| auth.environment.is_some()),
            ErrorCode::Forbidden => false,
            ErrorCode::SubscriptionInactive => policy.authentication.is_some(),
            ErrorCode::UnsupportedMediaType | ErrorCode::MalformedBody => {
                any(&|route| route.request.json)
            }
            ErrorCode::MissingField => {
                any(&|route| route.request.fields.0.iter().any(|(_, rule)| rule.required))
            }
            ErrorCode::InvalidField => any(&|route| !route.request.fields.0.is_empty()),
            ErrorCode::BodyTooLarge => any(&|route| route.request.max_body.is_some()),
            ErrorCode::FieldTooLarge => any(&|route| {
                route
                    .request
                    .fields
                    .0
                    .iter()
                    .any(|(_, rule)| rule.max_size.is_some())
            }),
            ErrorCode::ResourceTooLarge => any(&|route| {
                route.request.fields.0.iter().any(|(_, rule)| {
                    rule.url
                        .as_ref()
                        .is_some_and(|url| url.max_resource_size.is_some())
                })
            }),
            ErrorCode::NotFound => false,
            ErrorCode::HeadersTooLarge | ErrorCode::RequestTimeout => false,
            ErrorCode::UpstreamUnavailable
            | ErrorCode::UpstreamTimeout
            | ErrorCode::UpstreamError
            | ErrorCode::Internal => true,
            ErrorCode::StoreUnavailable => false,
            _ => false,
        })
        .collect()
}
