//! The policy file as written: serde types that mirror the YAML one to one.
//!
//! Every struct denies unknown keys, and every value with a grammar of its own (rates, durations,
//! sizes, route patterns, error-code names, message templates) is parsed while it is read, so
//! that a mistake is reported at the line and column where it was written. References between
//! parts of the file (an identity named by a limit, a plan named by an override) are checked
//! afterwards, in `compile`, using the locations kept by [`Spanned`].

use std::collections::BTreeMap;
use std::time::Duration;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer};
use serde_saphyr::Spanned;
use sluice_contract::{Envelope, ErrorCode, HeaderDialect, Template};

use crate::route::RoutePattern;
use crate::text::{Rate, parse_duration, parse_rate, parse_size};

/// A value parsed from a string with `parse`, reporting its own error at its own location.
macro_rules! parsed_from_string {
    ($name:ident, $inner:ty, $parse:expr) => {
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = StringOrNumber::deserialize(deserializer)?.0;
                let parse: fn(&str) -> Result<$inner, String> = $parse;
                parse(&text).map($name).map_err(D::Error::custom)
            }
        }
    };
}

/// A scalar read as text, so `limit: 100` and `limit: "100"` mean the same.
struct StringOrNumber(String);

impl<'de> Deserialize<'de> for StringOrNumber {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Scalar {
            Text(String),
            Number(u64),
        }
        Ok(StringOrNumber(match Scalar::deserialize(deserializer)? {
            Scalar::Text(text) => text,
            Scalar::Number(number) => number.to_string(),
        }))
    }
}

/// `1 per 2m`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RateText(pub Rate);
parsed_from_string!(RateText, Rate, parse_rate);

/// `15m`, `2 minutes`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DurationText(pub Duration);
parsed_from_string!(DurationText, Duration, parse_duration);

/// A size in bytes, written like `100 KB`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SizeText(
    /// Bytes.
    pub u64,
);
parsed_from_string!(SizeText, u64, parse_size);

/// `POST /projects/upload-file`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PatternText(pub RoutePattern);
parsed_from_string!(PatternText, RoutePattern, RoutePattern::parse);

/// A message template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TemplateText(pub Template);
parsed_from_string!(TemplateText, Template, |text| {
    Template::parse(text).map_err(|error| error.to_string())
});

/// The name of an error code, as a map key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct CodeName(pub ErrorCode);

impl<'de> Deserialize<'de> for CodeName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        ErrorCode::from_name(&name).map(CodeName).ok_or_else(|| {
            let known: Vec<&str> = ErrorCode::ALL.iter().map(|code| code.name()).collect();
            D::Error::custom(format!(
                "unknown error code `{name}`; expected one of {}",
                known.join(", ")
            ))
        })
    }
}

/// A YAML map kept in the order it was written (the docs list fields in that order); a key
/// written twice is an error.
#[derive(Clone, Debug)]
pub struct Ordered<V>(
    /// The entries, in file order.
    pub Vec<(String, V)>,
);

impl<V> Default for Ordered<V> {
    fn default() -> Ordered<V> {
        Ordered(Vec::new())
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for Ordered<V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor<V>(std::marker::PhantomData<V>);
        impl<'de, V: Deserialize<'de>> serde::de::Visitor<'de> for Visitor<V> {
            type Value = Ordered<V>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a map of field names to rules")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut entries: Vec<(String, V)> = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    if entries.iter().any(|(existing, _)| *existing == key) {
                        return Err(A::Error::custom(format!("field `{key}` is listed twice")));
                    }
                    let value = map.next_value()?;
                    entries.push((key, value));
                }
                Ok(Ordered(entries))
            }
        }
        deserializer.deserialize_map(Visitor(std::marker::PhantomData))
    }
}

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PolicyFile {
    pub service: Service,
    #[serde(default)]
    pub errors: Errors,
    #[serde(default)]
    pub headers: HeaderDialect,
    #[serde(default)]
    pub identities: BTreeMap<String, IdentitySource>,
    #[serde(default)]
    pub client_ip: ClientIp,
    #[serde(default)]
    pub authentication: Option<Authentication>,
    #[serde(default)]
    pub plans: BTreeMap<String, Plan>,
    #[serde(default)]
    pub default_plan: Option<Spanned<String>>,
    #[serde(default)]
    pub overrides: Vec<Override>,
    #[serde(default)]
    pub fair_use: Vec<LimitSpec>,
    #[serde(default)]
    pub penalties: Vec<Penalty>,
    #[serde(default)]
    pub cors: Option<CorsSpec>,
    pub routes: Vec<RouteSpec>,
    #[serde(default)]
    pub envoy: Option<EnvoySpec>,
}

/// Envoy's rate limit service (gRPC `envoy.service.ratelimit.v3`): which descriptors Envoy sends
/// count against which limit, as envoyproxy/ratelimit's own configuration says it.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EnvoySpec {
    /// The domain Envoy's rate limit filter names; descriptors of other domains are not limited.
    pub domain: Spanned<String>,
    pub descriptors: Vec<DescriptorSpec>,
}

/// One kind of descriptor and the limit it counts against.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DescriptorSpec {
    /// The descriptor's entries in order: `key=value` matches that value only, `key` any value,
    /// each value counted apart.
    #[serde(rename = "match")]
    pub entries: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    pub name: Option<Spanned<String>>,
    /// The limit; absent only with `unlimited`.
    #[serde(default)]
    pub rate: Option<RateText>,
    /// Never limited: to exempt values that a less specific rule limits.
    #[serde(default)]
    pub unlimited: Option<Spanned<bool>>,
    #[serde(default)]
    pub algorithm: Option<Spanned<AlgorithmName>>,
    /// Token bucket only: how many at once (default: the rate's count).
    #[serde(default)]
    pub burst: Option<u64>,
    /// Count denied requests too, so hammering keeps a client limited.
    #[serde(default)]
    pub count_rejected: bool,
    /// Shadow mode: counted and reported, never enforced.
    #[serde(default)]
    pub shadow: Option<Spanned<bool>>,
}

/// Browsers calling the API from pages of other origins (CORS, as the Fetch standard defines
/// it): which origins may, and what their preflights may ask for.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CorsSpec {
    /// `https://app.example.com`, as browsers send it in `Origin`; or `*` for any origin.
    pub allow_origins: Spanned<Vec<Spanned<String>>>,
    /// Whether pages may call with cookies or HTTP authentication (not with `*`).
    #[serde(default)]
    pub allow_credentials: Option<Spanned<bool>>,
    /// Methods a preflight may ask for; by default the usual ones.
    #[serde(default)]
    pub allow_methods: Vec<Spanned<String>>,
    /// Request headers a preflight may ask for; by default (or with `*`) whichever it asks for.
    #[serde(default)]
    pub allow_headers: Vec<Spanned<String>>,
    /// How long a browser may keep a preflight's answer.
    #[serde(default)]
    pub max_age: Option<DurationText>,
}

/// Who the API is.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// The API's name, as its docs say it.
    pub name: String,
    /// Where the API lives, for the docs.
    #[serde(default)]
    pub base_url: Option<String>,
    /// A sentence for the top of the docs.
    #[serde(default)]
    pub description: Option<String>,
    /// Whether the API tells paths apart by case (`/Items` from `/items`). Set it to `false`
    /// for an upstream that does not (Express and ASP.NET Core route without regard to case by
    /// default), so that `/PROJECTS/upload-file` cannot step around the limits of
    /// `/projects/upload-file`.
    #[serde(default = "case_sensitive")]
    pub case_sensitive_paths: bool,
    /// What a `;` in a path segment is to the API: part of the segment (`keep`, the default),
    /// or the start of path parameters that the upstream drops before it routes (`strip`), as
    /// Java servlet containers (Tomcat, Jetty, Undertow) and the frameworks on them do. Set it
    /// to `strip` for such an upstream, so that `/projects/upload-file;x=1` and
    /// `/x/..;/projects/upload-file` cannot step around the limits of `/projects/upload-file`.
    #[serde(default)]
    pub path_parameters: PathParameters,
}

fn case_sensitive() -> bool {
    true
}

/// What a `;` in a path segment is to the API (`service.path_parameters`).
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PathParameters {
    /// Part of the segment: `/items;v2` is a path of its own.
    #[default]
    Keep,
    /// The start of the segment's parameters, dropped before routing: `/items;v2` is `/items`.
    Strip,
}

/// The error contract: envelope, and per-code words.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Errors {
    #[serde(default)]
    pub envelope: Envelope,
    #[serde(default)]
    pub messages: BTreeMap<CodeName, Spanned<TemplateText>>,
    #[serde(default)]
    pub titles: BTreeMap<CodeName, String>,
    #[serde(default)]
    pub types: BTreeMap<CodeName, String>,
}

/// Where an identity's value comes from.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", tag = "from", deny_unknown_fields)]
pub enum IdentitySource {
    /// A request header.
    Header {
        /// The header's name.
        name: String,
    },
    /// A query-string parameter.
    Query {
        /// The parameter's name.
        name: String,
    },
    /// A field of the JSON body, by dot path (`user.id`).
    Body {
        /// The dot path.
        field: String,
    },
    /// An attribute of the authenticated API key.
    Key {
        /// Which attribute.
        attribute: KeyAttribute,
    },
    /// The client's address (behind `client_ip.trusted_proxies`).
    ClientIp,
}

/// What an API key carries about its holder.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum KeyAttribute {
    /// The key itself (by its id, never its secret).
    Key,
    /// The user who owns it.
    Owner,
    /// The owner's team.
    Team,
    /// The site the key was issued for.
    Site,
}

/// How the client address is found.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClientIp {
    /// Proxies (addresses or CIDR blocks) whose `X-Forwarded-For` is believed. Empty by default:
    /// the header is never trusted unless the policy says which proxies set it.
    #[serde(default)]
    pub trusted_proxies: Vec<Spanned<String>>,
    /// How many leading bits of an IPv6 address name one client (64 by default: a network is
    /// handed a /64, and one host can take any address in it). 128 counts each address.
    #[serde(default)]
    pub ipv6_prefix: Option<Spanned<u8>>,
}

/// Where the API key is read from, and what a key must be to pass.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Authentication {
    /// Where the key is carried.
    pub api_key: KeySource,
    /// The environment this deployment serves (e.g. `live`); keys of another are refused.
    #[serde(default)]
    pub environment: Option<String>,
    /// A file of key hashes, relative to the policy file.
    #[serde(default)]
    pub keys_file: Option<String>,
    /// Requests refused when the key's subscription is inactive: `writes` (every method but
    /// GET, HEAD and OPTIONS), `all` or `none`.
    #[serde(default)]
    pub inactive_subscription_blocks: InactiveBlocks,
}

/// Which requests an inactive subscription blocks.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum InactiveBlocks {
    /// Every method except GET, HEAD and OPTIONS.
    #[default]
    Writes,
    /// Everything.
    All,
    /// Nothing.
    None,
}

/// Where an API key is carried.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", tag = "from", deny_unknown_fields)]
pub enum KeySource {
    /// A field of the JSON body.
    Body {
        /// The dot path.
        field: String,
    },
    /// A header, whole.
    Header {
        /// The header's name.
        name: String,
    },
    /// `Authorization: Bearer <key>`.
    Bearer,
}

/// How a limit counts.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AlgorithmName {
    /// GCRA: smooth, exact retry-after; the default.
    #[default]
    TokenBucket,
    /// Clock-aligned windows.
    FixedWindow,
    /// Two-window weighted estimate.
    SlidingWindow,
    /// Requests in flight.
    Concurrency,
}

/// One rate limit.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LimitSpec {
    #[serde(default)]
    pub name: Option<String>,
    pub rate: RateText,
    /// The identity counted, or `global`.
    pub per: Spanned<String>,
    #[serde(default)]
    pub algorithm: AlgorithmName,
    /// Token bucket only: how many at once (default: the rate's count).
    #[serde(default)]
    pub burst: Option<u64>,
    /// Cost units per request.
    #[serde(default = "one")]
    pub cost: u64,
    /// Count denied requests too, so hammering keeps a client limited.
    #[serde(default)]
    pub count_rejected: bool,
    /// Approximate, for a very hot key on a shared store: each gateway takes this many units
    /// at once and spends them locally (see `Limit::in_blocks` for the bound).
    #[serde(default)]
    pub block: Option<Spanned<u64>>,
    /// Shadow mode (a dry run): counted and reported as if enforced, never refusing a request.
    #[serde(default)]
    pub shadow: Option<Spanned<bool>>,
}

fn one() -> u64 {
    1
}

/// Which responses a quota counts.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum QuotaCounts {
    /// Only requests the upstream answered with 2xx; others are refunded.
    #[default]
    Successful,
    /// Every admitted request.
    All,
}

/// A quota per billing period.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct QuotaSpec {
    pub name: String,
    /// Units per period.
    pub amount: u64,
    /// The identity counted (e.g. `team`).
    pub per: Spanned<String>,
    /// `calendar_month` or a day of the month the cycle starts on (1–31).
    #[serde(default)]
    pub period: QuotaPeriod,
    /// IANA time zone the period's boundaries fall in; UTC by default.
    #[serde(default)]
    pub time_zone: Option<Spanned<String>>,
    #[serde(default)]
    pub counts: QuotaCounts,
    /// What the docs call the unit (e.g. `moderations`).
    #[serde(default)]
    pub unit: Option<String>,
}

/// A quota's period.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum QuotaPeriod {
    /// Calendar months.
    #[default]
    CalendarMonth,
    /// Months starting on this day (31 falls on a short month's last day).
    BillingCycle {
        /// Day of the month, 1–31.
        anchor_day: u8,
    },
}

/// A plan: a named tier.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Plan {
    #[serde(default)]
    pub description: Option<String>,
    /// Limits added to every route's own.
    #[serde(default)]
    pub limits: Vec<LimitSpec>,
    /// Quotas, by name; a route's `quotas` names them.
    #[serde(default)]
    pub quotas: Vec<QuotaSpec>,
}

/// A custom plan for one identity value (an enterprise customer).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Override {
    /// The identity it applies to, and its value.
    pub identity: Spanned<String>,
    pub value: String,
    /// The plan the identity gets instead of its key's.
    #[serde(default)]
    pub plan: Option<Spanned<String>>,
    /// Route limits replaced, by limit name.
    #[serde(default)]
    pub limits: BTreeMap<String, RateText>,
}

/// Blocking an identity that keeps hammering.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Penalty {
    pub per: Spanned<String>,
    /// Denials within a span that trigger the block, e.g. `10 per 1m`.
    pub after_denials: RateText,
    /// How long the block lasts.
    pub block_for: DurationText,
}

/// JSON types a field may be required to have.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FieldType {
    /// A JSON string.
    String,
    /// Any JSON number.
    Number,
    /// A JSON number without a fraction.
    Integer,
    /// `true` or `false`.
    Boolean,
    /// A JSON object.
    Object,
    /// A JSON array.
    Array,
}

impl FieldType {
    /// As the docs and messages say it.
    pub fn name(self) -> &'static str {
        match self {
            FieldType::String => "string",
            FieldType::Number => "number",
            FieldType::Integer => "integer",
            FieldType::Boolean => "boolean",
            FieldType::Object => "object",
            FieldType::Array => "array",
        }
    }
}

/// A rule on one body field.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldRule {
    /// The JSON type required.
    #[serde(default, rename = "type")]
    pub kind: Option<FieldType>,
    /// Absent → 400.
    #[serde(default)]
    pub required: bool,
    /// A string must not be empty (or only whitespace).
    #[serde(default)]
    pub non_empty: bool,
    /// The field's size, as JSON text (the string's bytes, for a string).
    #[serde(default)]
    pub max_size: Option<SizeText>,
    /// The field is a link that must be an absolute `https` URL to a public host.
    #[serde(default)]
    pub url: Option<UrlRule>,
    /// What the docs call it (e.g. `Text content`).
    #[serde(default)]
    pub description: Option<String>,
}

/// Rules for a field holding a URL.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UrlRule {
    /// The largest resource the URL may point at; checked by probing it when `probe` is set.
    #[serde(default)]
    pub max_resource_size: Option<SizeText>,
    /// Probe the URL (HEAD, then a bounded GET) to check its size.
    #[serde(default)]
    pub probe: bool,
    /// Allow private, loopback and link-local hosts (for tests and internal APIs).
    #[serde(default)]
    pub allow_private: bool,
    /// What the docs call the resource (e.g. `Image files (via URL)`).
    #[serde(default)]
    pub description: Option<String>,
}

/// What a route requires of the request itself.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestRules {
    /// `Content-Type: application/json` required (415 otherwise).
    #[serde(default)]
    pub json: bool,
    /// The whole body's size.
    #[serde(default)]
    pub max_body: Option<SizeText>,
    /// Field rules, in the order the file lists them.
    #[serde(default)]
    pub fields: Ordered<FieldRule>,
}

/// One route.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RouteSpec {
    #[serde(rename = "match")]
    pub pattern: Spanned<PatternText>,
    /// Documented as unlimited: the policy's `fair_use` limits apply.
    #[serde(default)]
    pub unlimited: bool,
    #[serde(default)]
    pub limits: Vec<LimitSpec>,
    /// Quotas of the caller's plan this route spends, by name.
    #[serde(default)]
    pub quotas: Vec<Spanned<String>>,
    #[serde(default)]
    pub request: RequestRules,
    /// Whether the route needs an API key (when the policy authenticates).
    #[serde(default = "yes")]
    pub authenticate: bool,
    /// What the route does while the counter store cannot answer.
    #[serde(default)]
    pub on_store_failure: StoreFailure,
    #[serde(default)]
    pub description: Option<String>,
}

/// What a route does while the counter store (Redis) cannot answer.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StoreFailure {
    /// Refuse with 503 `store_unavailable`: nothing passes uncounted.
    #[default]
    Closed,
    /// Admit without counting: availability over the limits.
    Open,
    /// Count on this instance alone, each limit divided by the number of live instances (as
    /// they last announced themselves through the store), so that the fleet together stays
    /// within the limits. A limit smaller than the number of instances cannot be divided; the
    /// request is then refused as `closed` would.
    Local,
}

fn yes() -> bool {
    true
}
