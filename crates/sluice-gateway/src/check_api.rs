//! The decision API: `POST /v1/check` takes a description of a request (method, path, headers,
//! body, client address) and answers what the gateway would have done with it — admitted or
//! not, the status, the headers and the error body — without forwarding anything.
//! `POST /v1/check/batch` takes `{"checks": [...]}` and answers `{"results": [...]}` in order.
//!
//! A check counts its call as done when it answers, unless it asks to `hold` its admission:
//! then its answer carries a `hold` token, and the caller settles the call once it is over with
//! `POST /v1/settle` (`{"hold": TOKEN, "success": BOOL}`), which gives its concurrency slots
//! back and refunds the quotas that count only successful calls when it failed. A call that
//! lasts longer than its concurrency limit's lease keeps its slot with `POST /v1/renew`
//! (`{"hold": TOKEN}`) every `renew_every_ms`, which answers with the token to use from then on;
//! a hold not renewed lapses one to two leases after it was taken or last renewed.
//!
//! This is sluice's own API, so mistakes in the description itself are answered in sluice's own
//! shape (RFC 9457 problem+json with a code); the verdicts inside use the policy's envelope.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::IpAddr;

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;
use sluice_contract::{Envelope, ErrorCode, ErrorReply};
use sluice_service::{CorsAnswer, Request, Service, Verdict};
use sluice_store::CounterStore;

/// Most checks one batch may carry.
pub const MAX_BATCH: usize = 1_000;

/// One request to decide. Strings borrow from the request body where JSON escapes allow.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CheckRequest<'a> {
    /// The method, e.g. `POST`.
    #[serde(borrow)]
    method: Cow<'a, str>,
    /// The path, optionally with `?query`.
    #[serde(borrow)]
    path: Cow<'a, str>,
    /// Request headers, by name: a value, or the values of a header the request repeats.
    #[serde(default, borrow)]
    headers: BTreeMap<Cow<'a, str>, Values<'a>>,
    /// The JSON body, if any, as it was written.
    #[serde(default, borrow)]
    body: Option<&'a RawValue>,
    /// The client's address, for identities that count per address.
    #[serde(default)]
    client_ip: Option<IpAddr>,
    /// The request's id, for envelopes that carry one.
    #[serde(default)]
    request_id: Option<String>,
    /// Keep the admission until the caller settles it with `POST /v1/settle`.
    #[serde(default)]
    hold: bool,
}

/// A header's value, or its values when the request repeats it (`["a", "b"]`), so that a check
/// sees a repeated identity header as the proxy does (and refuses two different ones).
#[derive(Debug)]
enum Values<'a> {
    One(Cow<'a, str>),
    Many(Vec<Cow<'a, str>>),
}

impl Values<'_> {
    fn iter(&self) -> impl Iterator<Item = &str> {
        let (one, many) = match self {
            Values::One(value) => (Some(&**value), &[][..]),
            Values::Many(values) => (None, &values[..]),
        };
        one.into_iter().chain(many.iter().map(|value| &**value))
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Values<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Values<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string, or an array of strings")
            }
            fn visit_borrowed_str<E: serde::de::Error>(
                self,
                value: &'de str,
            ) -> Result<Self::Value, E> {
                Ok(Values::One(Cow::Borrowed(value)))
            }
            fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<Self::Value, E> {
                Ok(Values::One(Cow::Owned(value.to_owned())))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                let mut values = Vec::new();
                while let Some(value) = seq.next_element::<String>()? {
                    values.push(Cow::Owned(value));
                }
                Ok(Values::Many(values))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// A call whose check held its admission, still going.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RenewRequest<'a> {
    /// The token the check (or the last renewal) answered with.
    #[serde(borrow)]
    hold: Cow<'a, str>,
}

/// A renewed hold: the token that settles or renews it from now on, and how soon to renew it.
#[derive(Debug, Serialize)]
struct RenewResponse {
    hold: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    renew_every_ms: Option<u64>,
}

/// The end of a call whose check held its admission.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SettleRequest<'a> {
    /// The token the check answered with.
    #[serde(borrow)]
    hold: Cow<'a, str>,
    /// Whether the call succeeded (a 2xx): quotas that count only successes are refunded
    /// otherwise.
    success: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BatchRequest<'a> {
    #[serde(borrow)]
    checks: Vec<CheckRequest<'a>>,
}

/// What the gateway would have answered.
#[derive(Debug, Serialize)]
pub(crate) struct CheckResponse {
    allowed: bool,
    status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<&'static str>,
    headers: Headers,
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<Value>,
    /// The token that settles the admission, for a check that held it.
    #[serde(skip_serializing_if = "Option::is_none")]
    hold: Option<String>,
    /// For a held admission that holds concurrency slots: how often to renew it while the call
    /// lasts, in ms (half the shortest lease).
    #[serde(skip_serializing_if = "Option::is_none")]
    renew_every_ms: Option<u64>,
    /// The limits in shadow mode that would have refused the request, by name.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    shadow: Vec<String>,
}

/// Response headers, written as a JSON object without copying them into one.
#[derive(Debug)]
struct Headers(Vec<(HeaderName, HeaderValue)>);

impl Serialize for Headers {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(
            self.0
                .iter()
                .filter_map(|(name, value)| Some((name.as_str(), value.to_str().ok()?))),
        )
    }
}

#[derive(Debug, Serialize)]
struct BatchResponse {
    results: Vec<CheckResponse>,
}

/// A failure of the decision API itself: status and problem+json body.
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) body: Vec<u8>,
}

pub(crate) fn api_error(code: ErrorCode, detail: String) -> ApiError {
    let rendered = Envelope::Problem { type_base: None }.render(&ErrorReply {
        code,
        status: code.status(),
        title: code.title().to_owned(),
        message: detail,
        kind: None,
        retry_after: None,
        request_id: None,
    });
    ApiError {
        status: rendered.status,
        body: rendered.body,
    }
}

/// The answer to a check request larger than `max` bytes.
pub(crate) fn too_large(max: usize) -> ApiError {
    api_error(
        ErrorCode::BodyTooLarge,
        format!("a check request carries at most {max} bytes"),
    )
}

/// Decides one check described by the JSON `body`.
pub(crate) async fn check_one<S: CounterStore>(
    service: &Service<S>,
    body: &[u8],
) -> Result<Vec<u8>, ApiError> {
    let check: CheckRequest = parse("check", body)?;
    let response = decide(service, check).await?;
    Ok(serde_json::to_vec(&response).unwrap_or_default())
}

/// Decides every check of the batch described by the JSON `body`, in order.
pub(crate) async fn check_batch<S: CounterStore>(
    service: &Service<S>,
    body: &[u8],
) -> Result<Vec<u8>, ApiError> {
    let batch: BatchRequest = parse("check", body)?;
    if batch.checks.len() > MAX_BATCH {
        return Err(api_error(
            ErrorCode::InvalidField,
            format!(
                "a batch carries at most {MAX_BATCH} checks; this one has {}",
                batch.checks.len()
            ),
        ));
    }
    let mut results = Vec::with_capacity(batch.checks.len());
    for check in batch.checks {
        results.push(decide(service, check).await?);
    }
    Ok(serde_json::to_vec(&BatchResponse { results }).unwrap_or_default())
}

/// Settles the call a held admission admitted, as described by the JSON `body`.
pub(crate) async fn settle<S: CounterStore>(
    service: &Service<S>,
    body: &[u8],
) -> Result<Vec<u8>, ApiError> {
    let request: SettleRequest = parse("settle", body)?;
    service
        .settle_hold(&request.hold, request.success)
        .await
        .map_err(|error| api_error(ErrorCode::InvalidField, error.to_string()))?;
    Ok(br#"{"settled":true}"#.to_vec())
}

/// Renews the hold described by the JSON `body` for another lease.
pub(crate) async fn renew<S: CounterStore>(
    service: &Service<S>,
    body: &[u8],
) -> Result<Vec<u8>, ApiError> {
    let request: RenewRequest = parse("renew", body)?;
    let renewed = service
        .renew_hold(&request.hold)
        .await
        .map_err(|error| api_error(ErrorCode::InvalidField, error.to_string()))?
        .ok_or_else(|| {
            api_error(
                ErrorCode::StoreUnavailable,
                "the counter store did not take the renewal; the hold stands until it lapses"
                    .to_owned(),
            )
        })?;
    let response = RenewResponse {
        hold: renewed.token,
        renew_every_ms: renewed.renew_every.map(millis),
    };
    Ok(serde_json::to_vec(&response).unwrap_or_default())
}

fn millis(every: std::time::Duration) -> u64 {
    u64::try_from(every.as_millis()).unwrap_or(u64::MAX)
}

/// The `what` request (check, settle, renew) `body` describes, or why it does not.
fn parse<'a, T: Deserialize<'a>>(what: &str, body: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|error| {
        api_error(
            ErrorCode::MalformedBody,
            format!("the {what} request is not valid: {error}"),
        )
    })
}

async fn decide<S: CounterStore>(
    service: &Service<S>,
    check: CheckRequest<'_>,
) -> Result<CheckResponse, ApiError> {
    // What no HTTP request could carry is the caller's mistake, not a request to decide on.
    if http::Method::from_bytes(check.method.as_bytes()).is_err() {
        return Err(api_error(
            ErrorCode::InvalidField,
            format!("`{}` is not an HTTP method", check.method),
        ));
    }
    if !check.path.starts_with('/') {
        return Err(api_error(
            ErrorCode::InvalidField,
            format!("the path `{}` does not start with `/`", check.path),
        ));
    }
    let mut headers = HeaderMap::with_capacity(check.headers.len());
    for (name, values) in &check.headers {
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
            api_error(
                ErrorCode::InvalidField,
                format!("`{name}` is not a valid header name"),
            )
        })?;
        for value in values.iter() {
            // A field's value has no leading or trailing whitespace (RFC 9110, 5.5), as the
            // proxy's parser reads it: `alice ` is the same user as `alice` through both.
            let value = HeaderValue::from_str(value.trim_matches([' ', '\t'])).map_err(|_| {
                api_error(
                    ErrorCode::InvalidField,
                    format!("the value of header `{name}` is not a valid header value"),
                )
            })?;
            headers.append(name.clone(), value);
        }
    }
    let (path, query) = match check.path.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (&*check.path, None),
    };
    let cors = match service.cors(&check.method, &headers) {
        // A preflight the gateway answers itself, counting nothing.
        CorsAnswer::Preflight(list) => {
            return Ok(CheckResponse {
                allowed: true,
                status: StatusCode::NO_CONTENT.as_u16(),
                code: None,
                headers: Headers(list),
                body: None,
                hold: None,
                renew_every_ms: None,
                shadow: Vec::new(),
            });
        }
        CorsAnswer::Headers(list) => list,
    };
    let body = check.body.map(|body| body.get().as_bytes());
    let request = Request {
        method: &check.method,
        path,
        query,
        headers: &headers,
        peer: check.client_ip,
        body,
        request_id: check.request_id.as_deref(),
    };
    Ok(match service.check(&request).await {
        Verdict::Admit(mut admission) => {
            let mut headers = std::mem::take(&mut admission.headers);
            headers.extend(cors);
            let headers = Headers(headers);
            let shadow = admission.shadowed.take().map(Vec::from).unwrap_or_default();
            let (hold, renew_every_ms) = if check.hold {
                (
                    Some(admission.hold_token()),
                    admission.renew_every().map(millis),
                )
            } else {
                // Nothing is forwarded, so the call counts as done: concurrency slots are
                // given back and quotas stay counted.
                service.finish(admission, true).await;
                (None, None)
            };
            CheckResponse {
                allowed: true,
                status: StatusCode::OK.as_u16(),
                code: None,
                headers,
                body: None,
                hold,
                renew_every_ms,
                shadow,
            }
        }
        Verdict::Reject(rejection) => {
            let mut headers = rejection.headers;
            headers.push((
                http::header::CONTENT_TYPE,
                HeaderValue::from_static(rejection.content_type),
            ));
            headers.extend(cors);
            CheckResponse {
                allowed: false,
                status: rejection.status.as_u16(),
                code: Some(rejection.code.name()),
                headers: Headers(headers),
                body: serde_json::from_slice(&rejection.body).ok(),
                hold: None,
                renew_every_ms: None,
                shadow: Vec::new(),
            }
        }
    })
}
