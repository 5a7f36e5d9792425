//! From the file as written to a validated [`Policy`]: references resolved, limits built as core
//! [`Limit`]s, routes ordered most specific first. Every problem found is reported, each at the
//! line and column it was written.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde_saphyr::Spanned;
use sluice_contract::{Envelope, ErrorCode, HeaderDialect, Template};
use sluice_core::{Limit, MonthlyCycle, Period};

use crate::error::{PolicyError, PolicyErrors};
use crate::route::RoutePattern;
use crate::syntax::{
    AlgorithmName, Authentication, EnvoySpec, IdentitySource, LimitSpec, PathParameters,
    PolicyFile, QuotaCounts, QuotaPeriod, QuotaSpec, RequestRules, Service, StoreFailure,
};
use crate::text::Rate;

/// Who a counter counts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Everyone together.
    Global,
    /// Each value of the named identity.
    Identity(String),
}

impl Scope {
    /// As the docs say it.
    pub fn describe(&self) -> String {
        match self {
            Scope::Global => "global".to_owned(),
            Scope::Identity(name) => format!("per `{name}`"),
        }
    }
}

/// A rate limit, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct LimitRule {
    /// Its name (the IETF policy name).
    pub name: String,
    /// The counter's name in the store: unique per limit, stable across restarts.
    pub counter: String,
    /// As written.
    pub rate: Rate,
    /// Who it counts.
    pub per: Scope,
    /// The algorithm.
    pub algorithm: AlgorithmName,
    /// Cost units per request.
    pub cost: u64,
    /// The engine's limit.
    pub limit: Limit,
}

/// A billing-period quota, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct QuotaRule {
    /// Its name, which routes use.
    pub name: String,
    /// The counter's name in the store, `quota/NAME`: shared by every plan's quota of that name,
    /// so a customer changing plans keeps the period's usage.
    pub counter: String,
    /// Units per period.
    pub amount: u64,
    /// Who it counts.
    pub per: Scope,
    /// Which responses count.
    pub counts: QuotaCounts,
    /// What a unit is called.
    pub unit: Option<String>,
    /// As written.
    pub period: QuotaPeriod,
    /// The engine's limit (a calendar-aligned fixed window).
    pub limit: Limit,
}

/// A plan, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct PlanRule {
    /// What it is.
    pub description: Option<String>,
    /// Limits on every route for holders of this plan.
    pub limits: Vec<LimitRule>,
    /// Quotas, by name.
    pub quotas: Vec<QuotaRule>,
}

/// A custom arrangement for one identity value.
#[derive(Clone, Debug, PartialEq)]
pub struct OverrideRule {
    /// The identity, and its value.
    pub identity: String,
    /// The value the override applies to.
    pub value: String,
    /// The plan it gets.
    pub plan: Option<String>,
    /// Route limits replaced, by name.
    pub limits: BTreeMap<String, LimitRule>,
}

/// Blocking identities that keep hammering.
#[derive(Clone, Debug, PartialEq)]
pub struct PenaltyRule {
    /// Who is blocked.
    pub per: Scope,
    /// Denials within a span that trigger the block.
    pub after_denials: Rate,
    /// The block's length.
    pub block_for: std::time::Duration,
}

/// A route, validated.
#[derive(Clone, Debug)]
pub struct Route {
    /// Method and path pattern.
    pub pattern: RoutePattern,
    /// Documented as unlimited (fair-use limits apply).
    pub unlimited: bool,
    /// The route's own limits, then the fair-use ones when unlimited.
    pub limits: Vec<LimitRule>,
    /// Quota names of the caller's plan the route spends.
    pub quotas: Vec<String>,
    /// What the request must look like.
    pub request: RequestRules,
    /// Whether an API key is needed.
    pub authenticate: bool,
    /// What the route does while the counter store cannot answer.
    pub on_store_failure: StoreFailure,
    /// What it does.
    pub description: Option<String>,
}

/// Envoy's rate limit service, validated: the domain served and its descriptor rules.
#[derive(Clone, Debug, PartialEq)]
pub struct EnvoyRules {
    /// The domain Envoy's rate limit filter names.
    pub domain: String,
    /// Most specific first: a descriptor counts against the first rule it matches.
    pub descriptors: Vec<DescriptorRule>,
}

/// One kind of descriptor and the limit it counts against.
#[derive(Clone, Debug, PartialEq)]
pub struct DescriptorRule {
    /// The entries a descriptor must have, in order.
    pub entries: Vec<EntryMatch>,
    /// Its limit, each descriptor matched (its values) counting apart; `None` when the rule
    /// says `unlimited`. `per` is global: the descriptor itself names who is counted.
    pub limit: Option<LimitRule>,
}

/// One entry of a [`DescriptorRule`]: its key, and its value when the rule fixes one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryMatch {
    /// The entry's key.
    pub key: String,
    /// The value it must have; `None` for any, each counted apart.
    pub value: Option<String>,
}

impl EnvoyRules {
    /// The rule for a descriptor with these entries (key, value), if one matches: same keys in
    /// the same order, and the values a rule fixes. A fixed value wins over any value, entry by
    /// entry from the first, as in envoyproxy/ratelimit.
    pub fn rule<'e>(
        &self,
        entries: impl ExactSizeIterator<Item = (&'e str, &'e str)> + Clone,
    ) -> Option<&DescriptorRule> {
        let length = entries.len();
        self.descriptors.iter().find(|rule| {
            rule.entries.len() == length
                && rule
                    .entries
                    .iter()
                    .zip(entries.clone())
                    .all(|(want, (key, value))| {
                        want.key == key && want.value.as_deref().is_none_or(|fixed| fixed == value)
                    })
        })
    }
}

fn describe_entries(entries: &[EntryMatch]) -> String {
    entries
        .iter()
        .map(|entry| match &entry.value {
            Some(value) => format!("{}={value}", entry.key),
            None => entry.key.clone(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// An address block whose `X-Forwarded-For` is believed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrustedProxy {
    /// The network address.
    pub address: IpAddr,
    /// Prefix length in bits.
    pub prefix: u8,
}

impl TrustedProxy {
    /// Whether `address` lies in this block.
    pub fn contains(&self, address: IpAddr) -> bool {
        fn masked(bits: u128, width: u32, prefix: u8) -> u128 {
            let keep = u32::from(prefix).min(width);
            if keep == 0 { 0 } else { bits >> (width - keep) }
        }
        match (self.address, address) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                masked(u32::from(net).into(), 32, self.prefix)
                    == masked(u32::from(ip).into(), 32, self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                masked(u128::from(net), 128, self.prefix)
                    == masked(u128::from(ip), 128, self.prefix)
            }
            _ => false,
        }
    }
}

/// A validated policy: what the gateway enforces and the docs describe.
#[derive(Clone, Debug)]
pub struct Policy {
    /// Who the API is.
    pub service: Service,
    /// The error body shape.
    pub envelope: Envelope,
    /// Rate-limit headers.
    pub headers: HeaderDialect,
    /// Identities, by name.
    pub identities: BTreeMap<String, IdentitySource>,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<TrustedProxy>,
    /// How many leading bits of an IPv6 client address name one client (1 to 128).
    pub ipv6_prefix: u8,
    /// API keys, when the API uses them.
    pub authentication: Option<Authentication>,
    /// Plans, by name.
    pub plans: BTreeMap<String, PlanRule>,
    /// The plan of keys that name none.
    pub default_plan: Option<String>,
    /// Per-identity arrangements.
    pub overrides: Vec<OverrideRule>,
    /// Penalties.
    pub penalties: Vec<PenaltyRule>,
    /// Routes, most specific first.
    pub routes: Vec<Route>,
    /// How browsers on other origins may call the API, if they may.
    pub cors: Option<Cors>,
    /// What Envoy's rate limit service counts, when the policy serves Envoy.
    pub envoy: Option<EnvoyRules>,
    messages: BTreeMap<ErrorCode, Template>,
    titles: BTreeMap<ErrorCode, String>,
    types: BTreeMap<ErrorCode, String>,
}

/// How the API answers browsers calling it from pages of other origins (CORS).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cors {
    /// The origins allowed (`https://app.example.com`, in lower case).
    pub origins: Vec<String>,
    /// Whether any origin is (`*`).
    pub any_origin: bool,
    /// Whether pages may call with credentials (never with any origin).
    pub credentials: bool,
    /// The methods a preflight may ask for, as `Access-Control-Allow-Methods` lists them.
    pub methods: String,
    /// The request headers a preflight may ask for, as `Access-Control-Allow-Headers` lists
    /// them; `None` allows whichever it asks for.
    pub headers: Option<String>,
    /// How long, in seconds, a browser may keep a preflight's answer.
    pub max_age: Option<u64>,
}

impl Cors {
    /// Whether pages of `origin` (an `Origin` header's value) may call the API.
    pub fn allows(&self, origin: &str) -> bool {
        self.any_origin
            || self
                .origins
                .iter()
                .any(|allowed| allowed.eq_ignore_ascii_case(origin))
    }
}

/// The methods a preflight may ask for unless the policy lists them.
const DEFAULT_CORS_METHODS: &str = "GET, HEAD, POST, PUT, PATCH, DELETE";

/// `origin` if it is one an `Origin` header can carry (`scheme://host[:port]`), in lower case.
fn parse_origin(origin: &str) -> Result<String, String> {
    let expected = || {
        format!(
            "an origin is scheme://host[:port] as browsers send it, like \
             https://app.example.com (no path, no trailing slash), or `*`; found `{origin}`"
        )
    };
    let (scheme, rest) = origin.split_once("://").ok_or_else(expected)?;
    let host_ok = !rest.is_empty()
        && rest
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
    if !matches!(scheme, "http" | "https") || !host_ok {
        return Err(expected());
    }
    Ok(origin.to_ascii_lowercase())
}

/// Whether `token` is an HTTP token (RFC 9110, 5.6.2): a method's or a header's name.
fn is_token(token: &str) -> bool {
    !token.is_empty()
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// The engine's limit for `rate` counted by `algorithm`.
fn build_limit(
    algorithm: AlgorithmName,
    rate: Rate,
    burst: Option<u64>,
    count_rejected: bool,
) -> Result<Limit, sluice_core::LimitError> {
    let built = match algorithm {
        AlgorithmName::TokenBucket => {
            Limit::token_bucket(rate.count, rate.span, burst.unwrap_or(rate.count).max(1))
        }
        AlgorithmName::FixedWindow => Limit::fixed_window(
            rate.count,
            Period::Span(u64::try_from(rate.span.as_nanos()).unwrap_or(u64::MAX)),
        ),
        AlgorithmName::SlidingWindow => Limit::sliding_window(rate.count, rate.span),
        AlgorithmName::Concurrency => Limit::concurrency(rate.count, rate.span),
    };
    built.and_then(|limit| {
        if count_rejected {
            limit.counting_rejected()
        } else {
            Ok(limit)
        }
    })
}

impl Policy {
    /// Every limit the policy declares: its routes', its plans' and its Envoy descriptor
    /// rules'. (An override's limits are versions of these, with other rates.)
    pub fn limits(&self) -> impl Iterator<Item = &LimitRule> {
        self.routes
            .iter()
            .flat_map(|route| &route.limits)
            .chain(self.plans.values().flat_map(|plan| &plan.limits))
            .chain(
                self.envoy
                    .iter()
                    .flat_map(|envoy| &envoy.descriptors)
                    .filter_map(|rule| rule.limit.as_ref()),
            )
    }

    /// An override set at run time (through the admin API) for `identity` = `value`: the plan it
    /// gets, and route limits replaced by name with new rates (e.g. `"10000 per 1m"`). A replaced
    /// limit keeps its counter, its algorithm, its cost, whether it counts rejected requests and
    /// its shadow mode, so what was counted under the old rate counts under the new one.
    pub fn runtime_override(
        &self,
        identity: &str,
        value: &str,
        plan: Option<&str>,
        limits: &BTreeMap<String, String>,
    ) -> Result<OverrideRule, String> {
        if !self.identities.contains_key(identity) {
            return Err(format!(
                "identity `{identity}` is not declared in the policy"
            ));
        }
        if let Some(plan) = plan
            && !self.plans.contains_key(plan)
        {
            return Err(format!("plan `{plan}` is not declared in the policy"));
        }
        let mut replaced = BTreeMap::new();
        for (name, text) in limits {
            let rate = crate::text::parse_rate(text).map_err(|error| format!("{name}: {error}"))?;
            let original = self
                .routes
                .iter()
                .flat_map(|route| &route.limits)
                .find(|limit| &limit.name == name)
                .ok_or_else(|| format!("no route limit is named `{name}`"))?;
            let limit = build_limit(
                original.algorithm,
                rate,
                None,
                original.limit.counts_rejected(),
            )
            .and_then(|limit| {
                if original.limit.is_shadow() {
                    limit.in_shadow()
                } else {
                    Ok(limit)
                }
            })
            .map_err(|error| format!("{name}: {error}"))?;
            replaced.insert(
                name.clone(),
                LimitRule {
                    name: name.clone(),
                    counter: original.counter.clone(),
                    rate,
                    per: Scope::Identity(identity.to_owned()),
                    algorithm: original.algorithm,
                    cost: original.cost,
                    limit,
                },
            );
        }
        Ok(OverrideRule {
            identity: identity.to_owned(),
            value: value.to_owned(),
            plan: plan.map(str::to_owned),
            limits: replaced,
        })
    }

    /// The index in `routes` of the route a request goes by (the one [`Policy::route`] finds).
    pub fn route_index(&self, method: &str, path: &str) -> Option<usize> {
        self.find_route(method, path).map(|(index, _)| index)
    }

    /// The route a request goes by, and its path parameters: the most specific match for the
    /// normal form of its path ([`normal_path`](crate::normal_path)). A HEAD request goes by
    /// a HEAD route of its path if the policy has one, and else as a GET: HEAD is GET without
    /// the body (RFC 9110, 9.3.2), web frameworks run the GET handler for it, and a GET
    /// route's limits would otherwise be one method away from stepping around.
    pub fn route(&self, method: &str, path: &str) -> Option<(&Route, Vec<(String, String)>)> {
        let (index, params) = self.find_route(method, path)?;
        Some((self.routes.get(index)?, params))
    }

    fn find_route(&self, method: &str, path: &str) -> Option<(usize, Vec<(String, String)>)> {
        let path = match self.service.path_parameters {
            PathParameters::Keep => Cow::Borrowed(path),
            PathParameters::Strip => crate::route::without_path_parameters(path),
        };
        let path = crate::route::normal_path(&path);
        let first = |method: &str, named_only: bool| {
            self.routes.iter().enumerate().find_map(|(index, route)| {
                if named_only && route.pattern.method() != Some(method) {
                    return None;
                }
                route
                    .pattern
                    .matches(method, &path, self.service.case_sensitive_paths)
                    .map(|params| (index, params))
            })
        };
        if method == "HEAD" {
            return first("HEAD", true).or_else(|| first("GET", false));
        }
        first(method, false)
    }

    /// The message template for `code`: the policy's, or the registry's default.
    pub fn message(&self, code: ErrorCode) -> Template {
        self.messages
            .get(&code)
            .cloned()
            .unwrap_or_else(|| Template::parse(code.default_message()).unwrap_or_default())
    }

    /// The title for `code`: the policy's, or the registry's.
    pub fn title(&self, code: ErrorCode) -> String {
        self.titles
            .get(&code)
            .cloned()
            .unwrap_or_else(|| code.title().to_owned())
    }

    /// The `type` member the policy gives `code`, if any.
    pub fn kind(&self, code: ErrorCode) -> Option<&str> {
        self.types.get(&code).map(String::as_str)
    }
}

struct Compiler<'a> {
    file: &'a str,
    errors: Vec<PolicyError>,
    identities: BTreeSet<String>,
}

impl Compiler<'_> {
    fn error<T>(&mut self, at: &Spanned<T>, message: String) {
        self.error_at(&at.referenced, message);
    }

    fn error_at(&mut self, at: &serde_saphyr::Location, message: String) {
        self.errors.push(PolicyError {
            file: self.file.to_owned(),
            line: at.line(),
            column: at.column(),
            message,
        });
    }

    fn scope(&mut self, per: &Spanned<String>) -> Scope {
        if per.value == "global" {
            return Scope::Global;
        }
        if !self.identities.contains(&per.value) {
            let known: Vec<&str> = self.identities.iter().map(String::as_str).collect();
            self.error(
                per,
                format!(
                    "unknown identity `{}`; expected `global` or one of the identities defined \
                     under `identities:` ({})",
                    per.value,
                    if known.is_empty() {
                        "none are defined".to_owned()
                    } else {
                        known.join(", ")
                    }
                ),
            );
        }
        Scope::Identity(per.value.clone())
    }

    fn limit(
        &mut self,
        spec: &LimitSpec,
        default_name: String,
        counter_prefix: &str,
    ) -> Option<LimitRule> {
        let per = self.scope(&spec.per);
        let rate = spec.rate.0;
        let name = spec.name.clone().unwrap_or(default_name);
        let built = build_limit(spec.algorithm, rate, spec.burst, spec.count_rejected);
        let built = match (built, &spec.block) {
            (Ok(limit), Some(block)) => match limit.in_blocks(block.value) {
                Ok(limit) => Ok(limit),
                Err(error) => {
                    self.error(block, format!("invalid limit `{name}`: {error}"));
                    return None;
                }
            },
            (built, _) => built,
        };
        let built = match (built, &spec.shadow) {
            (Ok(limit), Some(shadow)) if shadow.value => match limit.in_shadow() {
                Ok(limit) => Ok(limit),
                Err(error) => {
                    self.error(shadow, format!("invalid limit `{name}`: {error}"));
                    return None;
                }
            },
            (built, _) => built,
        };
        match built {
            Ok(limit) => Some(LimitRule {
                counter: format!("{counter_prefix}{name}"),
                name,
                rate,
                per,
                algorithm: spec.algorithm,
                cost: spec.cost,
                limit,
            }),
            Err(error) => {
                self.error(&spec.per, format!("invalid limit `{name}`: {error}"));
                None
            }
        }
    }

    fn quota(&mut self, spec: &QuotaSpec, plan: &str) -> Option<QuotaRule> {
        let per = self.scope(&spec.per);
        let zone = match &spec.time_zone {
            None => sluice_core::TimeZone::UTC,
            Some(name) => match MonthlyCycle::time_zone(&name.value) {
                Ok(zone) => zone,
                Err(error) => {
                    self.error(name, format!("{error}"));
                    return None;
                }
            },
        };
        let cycle = match spec.period {
            QuotaPeriod::CalendarMonth => Ok(MonthlyCycle::calendar_month(zone)),
            QuotaPeriod::BillingCycle { anchor_day } => MonthlyCycle::anchored(anchor_day, zone),
        };
        match cycle.and_then(|cycle| Limit::fixed_window(spec.amount, Period::Monthly(cycle))) {
            Ok(limit) => Some(QuotaRule {
                name: spec.name.clone(),
                counter: format!("quota/{}", spec.name),
                amount: spec.amount,
                per,
                counts: spec.counts,
                unit: spec.unit.clone(),
                period: spec.period,
                limit,
            }),
            Err(error) => {
                self.error(
                    &spec.per,
                    format!("invalid quota `{}` of plan `{plan}`: {error}", spec.name),
                );
                None
            }
        }
    }
}

/// The `envoy:` section: each descriptor rule's entries parsed and its limit built; rules
/// ordered most specific first.
fn compile_envoy(compiler: &mut Compiler<'_>, spec: &EnvoySpec) -> EnvoyRules {
    if spec.domain.value.is_empty() {
        compiler.error(
            &spec.domain,
            "name the domain Envoy's rate limit filter sends".to_owned(),
        );
    }
    let mut rules: Vec<DescriptorRule> = Vec::new();
    let mut names: BTreeSet<String> = BTreeSet::new();
    for descriptor in &spec.descriptors {
        let mut entries = Vec::new();
        for entry in &descriptor.entries.value {
            let (key, value) = match entry.value.split_once('=') {
                Some((key, value)) => (key.trim(), Some(value.trim())),
                None => (entry.value.trim(), None),
            };
            if key.is_empty() || value.is_some_and(str::is_empty) {
                compiler.error(
                    entry,
                    format!(
                        "`{}` is not an entry: write `key` for any value, or `key=value`",
                        entry.value
                    ),
                );
            }
            entries.push(EntryMatch {
                key: key.to_owned(),
                value: value.map(str::to_owned),
            });
        }
        if entries.is_empty() {
            compiler.error(
                &descriptor.entries,
                "list the descriptor's entries, like [generic_key=uploads, user]".to_owned(),
            );
            continue;
        }
        let written = describe_entries(&entries);
        if rules.iter().any(|rule| rule.entries == entries) {
            compiler.error(
                &descriptor.entries,
                format!("descriptor `{written}` is listed twice"),
            );
            continue;
        }
        let name = descriptor
            .name
            .as_ref()
            .map_or_else(|| written.clone(), |name| name.value.clone());
        if !names.insert(name.clone()) {
            let at = descriptor
                .name
                .as_ref()
                .map_or(&descriptor.entries.referenced, |n| &n.referenced);
            compiler.error_at(at, format!("two descriptors are named `{name}`"));
            continue;
        }
        let algorithm = descriptor
            .algorithm
            .as_ref()
            .map_or(AlgorithmName::default(), |algorithm| algorithm.value);
        if algorithm == AlgorithmName::Concurrency {
            if let Some(written) = &descriptor.algorithm {
                compiler.error(
                    written,
                    "Envoy never says when a request ends, so its descriptors cannot hold \
                     concurrency slots; choose token_bucket, fixed_window or sliding_window"
                        .to_owned(),
                );
            }
            continue;
        }
        let unlimited = descriptor.unlimited.as_ref().filter(|on| on.value);
        let rate = match (&descriptor.rate, unlimited) {
            (None, Some(_)) => {
                rules.push(DescriptorRule {
                    entries,
                    limit: None,
                });
                continue;
            }
            (Some(rate), None) => rate.0,
            (Some(_), Some(on)) => {
                compiler.error(
                    on,
                    format!(
                        "descriptor `{written}` is `unlimited` but also has a rate; choose one"
                    ),
                );
                continue;
            }
            (None, None) => {
                compiler.error(
                    &descriptor.entries,
                    format!(
                        "descriptor `{written}` needs a `rate` (like `100 per 1m`), or \
                         `unlimited: true`"
                    ),
                );
                continue;
            }
        };
        let built = build_limit(algorithm, rate, descriptor.burst, descriptor.count_rejected);
        let built = match (built, &descriptor.shadow) {
            (Ok(limit), Some(shadow)) if shadow.value => match limit.in_shadow() {
                Ok(limit) => Ok(limit),
                Err(error) => {
                    compiler.error(
                        shadow,
                        format!("invalid limit for descriptor `{written}`: {error}"),
                    );
                    continue;
                }
            },
            (built, _) => built,
        };
        match built {
            Ok(limit) => rules.push(DescriptorRule {
                entries,
                limit: Some(LimitRule {
                    counter: format!("envoy/{name}"),
                    name,
                    rate,
                    per: Scope::Global,
                    algorithm,
                    cost: 1,
                    limit,
                }),
            }),
            Err(error) => compiler.error(
                &descriptor.entries,
                format!("invalid limit for descriptor `{written}`: {error}"),
            ),
        }
    }
    // Entry by entry, a fixed value before any value; otherwise the file's order.
    rules.sort_by_key(|rule| {
        rule.entries
            .iter()
            .map(|entry| entry.value.is_none())
            .collect::<Vec<_>>()
    });
    EnvoyRules {
        domain: spec.domain.value.clone(),
        descriptors: rules,
    }
}

/// IPv6 clients are told apart by their /64: the network a host is given, in which it can take
/// any address it likes.
const DEFAULT_IPV6_PREFIX: u8 = 64;

fn parse_proxy(text: &str) -> Result<TrustedProxy, String> {
    let expected =
        || format!("expected an IP address or CIDR block like `10.0.0.0/8`, found `{text}`");
    let (address, prefix) = match text.split_once('/') {
        Some((address, prefix)) => (address, Some(prefix)),
        None => (text, None),
    };
    let address: IpAddr = address.trim().parse().map_err(|_| expected())?;
    let width = if address.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        Some(prefix) => prefix.trim().parse::<u8>().map_err(|_| expected())?,
        None => width,
    };
    if prefix > width {
        return Err(expected());
    }
    Ok(TrustedProxy { address, prefix })
}

/// Validates `file` (read from `path`) into a policy.
pub(crate) fn compile(path: &str, file: PolicyFile) -> Result<Policy, PolicyErrors> {
    let mut compiler = Compiler {
        file: path,
        errors: Vec::new(),
        identities: file.identities.keys().cloned().collect(),
    };

    let mut trusted_proxies = Vec::new();
    for proxy in &file.client_ip.trusted_proxies {
        match parse_proxy(&proxy.value) {
            Ok(parsed) => trusted_proxies.push(parsed),
            Err(message) => compiler.error(proxy, message),
        }
    }

    let ipv6_prefix = match &file.client_ip.ipv6_prefix {
        None => DEFAULT_IPV6_PREFIX,
        Some(prefix) if (1..=128).contains(&prefix.value) => prefix.value,
        Some(prefix) => {
            compiler.error(
                prefix,
                format!(
                    "ipv6_prefix is a prefix length from 1 to 128, found {}",
                    prefix.value
                ),
            );
            DEFAULT_IPV6_PREFIX
        }
    };

    let cors = file.cors.as_ref().map(|spec| {
        let any = spec
            .allow_origins
            .value
            .iter()
            .any(|origin| origin.value == "*");
        if spec.allow_origins.value.is_empty() {
            compiler.error(
                &spec.allow_origins,
                "list the origins allowed, like https://app.example.com, or `*` for any".to_owned(),
            );
        }
        let mut origins = Vec::new();
        for origin in &spec.allow_origins.value {
            if origin.value == "*" {
                continue;
            }
            match parse_origin(&origin.value) {
                Ok(parsed) => origins.push(parsed),
                Err(message) => compiler.error(origin, message),
            }
        }
        if any {
            origins.clear();
        }
        let credentials = spec.allow_credentials.as_ref().filter(|on| on.value);
        if let Some(on) = credentials
            && any
        {
            compiler.error(
                on,
                "browsers refuse credentials from an API that allows any origin (`*`): list \
                 the origins instead"
                    .to_owned(),
            );
        }
        for method in &spec.allow_methods {
            if !is_token(&method.value) || method.value.bytes().any(|b| b.is_ascii_lowercase()) {
                compiler.error(
                    method,
                    format!(
                        "expected an upper-case HTTP method, found `{}`",
                        method.value
                    ),
                );
            }
        }
        for header in &spec.allow_headers {
            if !is_token(&header.value) {
                compiler.error(
                    header,
                    format!("expected a header name or `*`, found `{}`", header.value),
                );
            }
        }
        let join = |items: &[Spanned<String>]| {
            items
                .iter()
                .map(|item| item.value.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        Cors {
            origins,
            any_origin: any,
            credentials: credentials.is_some(),
            methods: if spec.allow_methods.is_empty() {
                DEFAULT_CORS_METHODS.to_owned()
            } else {
                join(&spec.allow_methods)
            },
            headers: (!spec.allow_headers.is_empty()
                && spec.allow_headers.iter().all(|header| header.value != "*"))
            .then(|| join(&spec.allow_headers)),
            max_age: spec.max_age.map(|age| age.0.as_secs()),
        }
    });

    let mut plans = BTreeMap::new();
    for (name, plan) in &file.plans {
        let limits = plan
            .limits
            .iter()
            .enumerate()
            .filter_map(|(index, spec)| {
                compiler.limit(spec, format!("{name}-{index}"), &format!("plan/{name}/"))
            })
            .collect();
        let quotas = plan
            .quotas
            .iter()
            .filter_map(|spec| compiler.quota(spec, name))
            .collect();
        plans.insert(
            name.clone(),
            PlanRule {
                description: plan.description.clone(),
                limits,
                quotas,
            },
        );
    }
    let plan_exists = |compiler: &mut Compiler<'_>, name: &Spanned<String>| {
        if !plans.contains_key(&name.value) {
            let known: Vec<&str> = plans.keys().map(String::as_str).collect();
            compiler.error(
                name,
                format!(
                    "unknown plan `{}`; expected one of the plans defined under `plans:` ({})",
                    name.value,
                    known.join(", ")
                ),
            );
        }
    };
    if let Some(plan) = &file.default_plan {
        plan_exists(&mut compiler, plan);
    }

    let fair_use: Vec<LimitRule> = file
        .fair_use
        .iter()
        .enumerate()
        .filter_map(|(index, spec)| compiler.limit(spec, format!("fair-use-{index}"), "fair-use/"))
        .collect();

    let mut routes: Vec<Route> = Vec::new();
    let mut seen: BTreeSet<String> = BTreeSet::new();
    for spec in &file.routes {
        let pattern = spec.pattern.value.0.clone();
        let name = if file.service.case_sensitive_paths {
            pattern.to_string()
        } else {
            pattern.to_string().to_ascii_lowercase()
        };
        if !seen.insert(name) {
            compiler.error(&spec.pattern, format!("route `{pattern}` is defined twice"));
        }
        if file.service.path_parameters == PathParameters::Strip && pattern.has_literal_with(';') {
            compiler.error(
                &spec.pattern,
                format!(
                    "route `{pattern}` has a `;` in a segment, which `service.path_parameters: \
                     strip` cuts from every request's path: no request could match it"
                ),
            );
        }
        let prefix = format!("{pattern}#");
        let mut limits: Vec<LimitRule> = spec
            .limits
            .iter()
            .enumerate()
            .filter_map(|(index, limit)| compiler.limit(limit, format!("limit-{index}"), &prefix))
            .collect();
        if spec.unlimited {
            if !spec.limits.is_empty() {
                compiler.error(
                    &spec.pattern,
                    format!("route `{pattern}` is `unlimited` but also lists limits; choose one"),
                );
            }
            limits.extend(fair_use.iter().cloned());
        }
        for quota in &spec.quotas {
            let offered = plans
                .values()
                .any(|plan| plan.quotas.iter().any(|q| q.name == quota.value));
            if !offered {
                compiler.error(
                    quota,
                    format!(
                        "no plan defines a quota named `{}`; define it under a plan's `quotas:`",
                        quota.value
                    ),
                );
            }
        }
        for (field, rule) in &spec.request.fields.0 {
            if rule.url.is_some()
                && rule
                    .kind
                    .is_some_and(|kind| kind != crate::syntax::FieldType::String)
            {
                compiler.error(
                    &spec.pattern,
                    format!("field `{field}` holds a URL, so its type must be `string`"),
                );
            }
        }
        routes.push(Route {
            pattern,
            unlimited: spec.unlimited,
            limits,
            quotas: spec.quotas.iter().map(|q| q.value.clone()).collect(),
            request: spec.request.clone(),
            authenticate: spec.authenticate,
            on_store_failure: spec.on_store_failure,
            description: spec.description.clone(),
        });
    }
    routes.sort_by(|a, b| b.pattern.specificity_cmp(&a.pattern));

    let envoy = file
        .envoy
        .as_ref()
        .map(|spec| compile_envoy(&mut compiler, spec));

    let mut overrides = Vec::new();
    for spec in &file.overrides {
        compiler.scope(&spec.identity);
        if let Some(plan) = &spec.plan {
            plan_exists(&mut compiler, plan);
        }
        let mut limits = BTreeMap::new();
        for (name, rate) in &spec.limits {
            let Some(original) = routes
                .iter()
                .flat_map(|route| &route.limits)
                .find(|limit| &limit.name == name)
            else {
                compiler.error(
                    &spec.identity,
                    format!(
                        "override for `{}` replaces unknown limit `{name}`",
                        spec.value
                    ),
                );
                continue;
            };
            let replaced = LimitSpec {
                name: Some(name.clone()),
                rate: *rate,
                per: spec.identity.clone(),
                algorithm: original.algorithm,
                burst: None,
                cost: original.cost,
                // A hammering client stays limited under its own rate too.
                count_rejected: original.limit.counts_rejected(),
                block: None,
                // A limit on trial stays on trial for the customers it is replaced for.
                shadow: original
                    .limit
                    .is_shadow()
                    .then(|| Spanned::new(true, spec.identity.referenced, spec.identity.defined)),
            };
            let counter_prefix = original
                .counter
                .strip_suffix(name.as_str())
                .unwrap_or("")
                .to_owned();
            if let Some(rule) = compiler.limit(&replaced, name.clone(), &counter_prefix) {
                limits.insert(name.clone(), rule);
            }
        }
        overrides.push(OverrideRule {
            identity: spec.identity.value.clone(),
            value: spec.value.clone(),
            plan: spec.plan.as_ref().map(|plan| plan.value.clone()),
            limits,
        });
    }

    let penalties = file
        .penalties
        .iter()
        .map(|penalty| PenaltyRule {
            per: compiler.scope(&penalty.per),
            after_denials: penalty.after_denials.0,
            block_for: penalty.block_for.0,
        })
        .collect();

    for (code, template) in &file.errors.messages {
        let code = code.0;
        let missing: Vec<String> = template
            .value
            .0
            .placeholders()
            .filter(|placeholder| !code.supplies(*placeholder))
            .map(|placeholder| format!("{{{}}}", placeholder.name()))
            .collect();
        if !missing.is_empty() {
            compiler.error(
                template,
                format!(
                    "the `{code}` message uses {}, which a `{code}` failure does not supply",
                    missing.join(", ")
                ),
            );
        }
    }

    if !compiler.errors.is_empty() {
        return Err(PolicyErrors(compiler.errors));
    }
    Ok(Policy {
        service: file.service,
        envelope: file.errors.envelope,
        headers: file.headers,
        identities: file.identities,
        trusted_proxies,
        ipv6_prefix,
        authentication: file.authentication,
        plans,
        default_plan: file.default_plan.map(|plan| plan.value),
        overrides,
        penalties,
        routes,
        cors,
        envoy,
        messages: file
            .errors
            .messages
            .into_iter()
            .map(|(code, template)| (code.0, template.value.0))
            .collect(),
        titles: file
            .errors
            .titles
            .into_iter()
            .map(|(code, title)| (code.0, title))
            .collect(),
        types: file
            .errors
            .types
            .into_iter()
            .map(|(code, kind)| (code.0, kind))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxy(text: &str) -> TrustedProxy {
        parse_proxy(text).unwrap_or_else(|error| panic!("{error}"))
    }

    fn ip(text: &str) -> IpAddr {
        text.parse()
            .unwrap_or_else(|error| panic!("{text}: {error}"))
    }

    #[test]
    fn trusted_proxy_blocks_contain_their_addresses_only() {
        let block = proxy("10.1.0.0/16");
        assert!(block.contains(ip("10.1.255.7")));
        assert!(!block.contains(ip("10.2.0.1")));
        assert!(!block.contains(ip("::ffff:10.1.0.1")));
        let single = proxy("192.0.2.7");
        assert!(single.contains(ip("192.0.2.7")));
        assert!(!single.contains(ip("192.0.2.8")));
        assert!(proxy("0.0.0.0/0").contains(ip("203.0.113.9")));
        assert!(proxy("2001:db8::/32").contains(ip("2001:db8:1::1")));
        assert!(parse_proxy("10.0.0.0/33").is_err());
        assert!(parse_proxy("ten").is_err());
    }
}
