//! The registry of stable error codes: every failure sluice can answer with, its HTTP and gRPC
//! status, and what it means.
//!
//! Codes are part of the public contract. They are append-only: a code is never renamed, removed
//! or given another meaning, because clients match on them. Every property is reached through an
//! exhaustive `match` with no catch-all arm, so adding a code without describing it fully does not
//! compile.

use std::fmt;

use http::StatusCode;

/// A gRPC status code, as numbered by the gRPC specification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrpcCode {
    /// 3: the request is wrong and retrying it unchanged will not help.
    InvalidArgument,
    /// 4: a deadline passed before the operation finished.
    DeadlineExceeded,
    /// 5: the target does not exist.
    NotFound,
    /// 7: the caller is known but may not do this.
    PermissionDenied,
    /// 8: a limit or quota is exhausted.
    ResourceExhausted,
    /// 13: an unexpected failure.
    Internal,
    /// 14: a dependency is unavailable; retrying later may help.
    Unavailable,
    /// 16: the caller could not be authenticated.
    Unauthenticated,
}

impl GrpcCode {
    /// The number the gRPC specification gives this code.
    pub fn number(self) -> u8 {
        match self {
            GrpcCode::InvalidArgument => 3,
            GrpcCode::DeadlineExceeded => 4,
            GrpcCode::NotFound => 5,
            GrpcCode::PermissionDenied => 7,
            GrpcCode::ResourceExhausted => 8,
            GrpcCode::Internal => 13,
            GrpcCode::Unavailable => 14,
            GrpcCode::Unauthenticated => 16,
        }
    }

    /// The specification's name, e.g. `RESOURCE_EXHAUSTED`.
    pub fn name(self) -> &'static str {
        match self {
            GrpcCode::InvalidArgument => "INVALID_ARGUMENT",
            GrpcCode::DeadlineExceeded => "DEADLINE_EXCEEDED",
            GrpcCode::NotFound => "NOT_FOUND",
            GrpcCode::PermissionDenied => "PERMISSION_DENIED",
            GrpcCode::ResourceExhausted => "RESOURCE_EXHAUSTED",
            GrpcCode::Internal => "INTERNAL",
            GrpcCode::Unavailable => "UNAVAILABLE",
            GrpcCode::Unauthenticated => "UNAUTHENTICATED",
        }
    }
}

macro_rules! error_codes {
    ($($(#[$doc:meta])* $variant:ident = $name:literal,)*) => {
        /// Every failure sluice answers with. Append-only: see the module documentation.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[non_exhaustive]
        pub enum ErrorCode {
            $($(#[$doc])* $variant,)*
        }

        impl ErrorCode {
            /// Every code, in registry order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)*];

            /// The stable name clients match on, e.g. `rate_limited`.
            pub fn name(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $name,)*
                }
            }
        }
    };
}

error_codes! {
    /// A rate limit is exhausted for now.
    RateLimited = "rate_limited",
    /// A quota for the billing period is used up.
    QuotaExceeded = "quota_exceeded",
    /// The identity is blocked for a while after repeatedly exceeding its limits.
    Blocked = "blocked",
    /// Too many requests of this identity are in flight at once.
    ConcurrencyExceeded = "concurrency_exceeded",
    /// No API key came with the request.
    MissingApiKey = "missing_api_key",
    /// The API key is not one sluice knows.
    InvalidApiKey = "invalid_api_key",
    /// The API key was revoked or rotated away.
    RevokedApiKey = "revoked_api_key",
    /// The API key belongs to another environment (a test key against a live project).
    WrongEnvironment = "wrong_environment",
    /// The caller is authenticated but may not do this.
    Forbidden = "forbidden",
    /// The subscription behind the key has expired; writes are blocked.
    SubscriptionInactive = "subscription_inactive",
    /// The body is not JSON, or the `Content-Type` says it is not.
    UnsupportedMediaType = "unsupported_media_type",
    /// The body is not a well-formed JSON object.
    MalformedBody = "malformed_body",
    /// A required field is missing.
    MissingField = "missing_field",
    /// A field has the wrong type, is empty, or is not an acceptable value.
    InvalidField = "invalid_field",
    /// The whole body is larger than the route allows.
    BodyTooLarge = "body_too_large",
    /// One field of the body is larger than the route allows.
    FieldTooLarge = "field_too_large",
    /// A resource named by URL is larger than the route allows.
    ResourceTooLarge = "resource_too_large",
    /// No route matches the request.
    NotFound = "not_found",
    /// The request's headers are too many or too large.
    HeadersTooLarge = "headers_too_large",
    /// The client sent its request too slowly.
    RequestTimeout = "request_timeout",
    /// The upstream could not be reached.
    UpstreamUnavailable = "upstream_unavailable",
    /// The upstream did not answer in time.
    UpstreamTimeout = "upstream_timeout",
    /// The upstream failed and did not say why in JSON; its status is kept.
    UpstreamError = "upstream_error",
    /// The counter store is unreachable and the policy fails closed.
    StoreUnavailable = "store_unavailable",
    /// An unexpected failure inside sluice.
    Internal = "internal",
    /// The body is compressed in a way the gateway cannot read.
    UnsupportedEncoding = "unsupported_encoding",
}

impl ErrorCode {
    /// The HTTP status the code is answered with (an upstream error keeps the upstream's own).
    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::RateLimited | ErrorCode::Blocked | ErrorCode::ConcurrencyExceeded => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ErrorCode::QuotaExceeded | ErrorCode::Forbidden | ErrorCode::SubscriptionInactive => {
                StatusCode::FORBIDDEN
            }
            ErrorCode::MissingApiKey
            | ErrorCode::InvalidApiKey
            | ErrorCode::RevokedApiKey
            | ErrorCode::WrongEnvironment => StatusCode::UNAUTHORIZED,
            ErrorCode::UnsupportedMediaType | ErrorCode::UnsupportedEncoding => {
                StatusCode::UNSUPPORTED_MEDIA_TYPE
            }
            ErrorCode::MalformedBody | ErrorCode::MissingField | ErrorCode::InvalidField => {
                StatusCode::BAD_REQUEST
            }
            ErrorCode::BodyTooLarge | ErrorCode::FieldTooLarge | ErrorCode::ResourceTooLarge => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ErrorCode::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ErrorCode::UpstreamUnavailable | ErrorCode::UpstreamError => StatusCode::BAD_GATEWAY,
            ErrorCode::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorCode::StoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The gRPC status the code maps to.
    pub fn grpc(self) -> GrpcCode {
        match self {
            ErrorCode::RateLimited
            | ErrorCode::QuotaExceeded
            | ErrorCode::Blocked
            | ErrorCode::ConcurrencyExceeded => GrpcCode::ResourceExhausted,
            ErrorCode::MissingApiKey
            | ErrorCode::InvalidApiKey
            | ErrorCode::RevokedApiKey
            | ErrorCode::WrongEnvironment => GrpcCode::Unauthenticated,
            ErrorCode::Forbidden | ErrorCode::SubscriptionInactive => GrpcCode::PermissionDenied,
            ErrorCode::UnsupportedMediaType
            | ErrorCode::UnsupportedEncoding
            | ErrorCode::MalformedBody
            | ErrorCode::MissingField
            | ErrorCode::InvalidField
            | ErrorCode::BodyTooLarge
            | ErrorCode::FieldTooLarge
            | ErrorCode::ResourceTooLarge
            | ErrorCode::HeadersTooLarge => GrpcCode::InvalidArgument,
            ErrorCode::NotFound => GrpcCode::NotFound,
            ErrorCode::RequestTimeout | ErrorCode::UpstreamTimeout => GrpcCode::DeadlineExceeded,
            ErrorCode::UpstreamUnavailable
            | ErrorCode::UpstreamError
            | ErrorCode::StoreUnavailable => GrpcCode::Unavailable,
            ErrorCode::Internal => GrpcCode::Internal,
        }
    }

    /// Whether a client may retry the same request later (429 and 5xx, as the seeds teach).
    pub fn retryable(self) -> bool {
        let status = self.status();
        status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error()
    }

    /// The short title problem+json and two-field envelopes use when the policy gives none.
    pub fn title(self) -> &'static str {
        match self {
            ErrorCode::RateLimited => "Rate limit exceeded",
            ErrorCode::QuotaExceeded => "Quota exceeded",
            ErrorCode::Blocked => "Temporarily blocked",
            ErrorCode::ConcurrencyExceeded => "Too many concurrent requests",
            ErrorCode::MissingApiKey => "Missing API key",
            ErrorCode::InvalidApiKey => "Invalid API key",
            ErrorCode::RevokedApiKey => "Revoked API key",
            ErrorCode::WrongEnvironment => "Wrong environment",
            ErrorCode::Forbidden => "Forbidden",
            ErrorCode::SubscriptionInactive => "Subscription inactive",
            ErrorCode::UnsupportedMediaType => "Unsupported media type",
            ErrorCode::MalformedBody => "Malformed body",
            ErrorCode::MissingField => "Missing field",
            ErrorCode::InvalidField => "Invalid field",
            ErrorCode::BodyTooLarge => "Payload too large",
            ErrorCode::FieldTooLarge => "Field too large",
            ErrorCode::ResourceTooLarge => "Resource too large",
            ErrorCode::NotFound => "Not found",
            ErrorCode::HeadersTooLarge => "Request headers too large",
            ErrorCode::RequestTimeout => "Request timeout",
            ErrorCode::UpstreamUnavailable => "Bad gateway",
            ErrorCode::UpstreamTimeout => "Gateway timeout",
            ErrorCode::UpstreamError => "Upstream error",
            ErrorCode::StoreUnavailable => "Service unavailable",
            ErrorCode::Internal => "Internal server error",
            ErrorCode::UnsupportedEncoding => "Unsupported content encoding",
        }
    }

    /// The message template used when the policy gives none. Placeholders are listed in
    /// [`crate::Template`].
    pub fn default_message(self) -> &'static str {
        match self {
            ErrorCode::RateLimited => "Rate limit exceeded. Try again in {retry_in}.",
            ErrorCode::QuotaExceeded => "Quota exceeded for this period. It resets in {retry_in}.",
            ErrorCode::Blocked => {
                "Too many rejected requests; temporarily blocked. Try again in {retry_in}."
            }
            ErrorCode::ConcurrencyExceeded => {
                "Too many concurrent requests. Retry when one finishes."
            }
            ErrorCode::MissingApiKey => "Unauthorized: Missing API Key",
            ErrorCode::InvalidApiKey => "Unauthorized: Invalid API Key",
            ErrorCode::RevokedApiKey => "Unauthorized: API Key has been revoked",
            ErrorCode::WrongEnvironment => "Unauthorized: API Key is for another environment",
            ErrorCode::Forbidden => "Forbidden",
            ErrorCode::SubscriptionInactive => "Forbidden: subscription is not active",
            ErrorCode::UnsupportedMediaType => "Content-Type must be application/json",
            ErrorCode::MalformedBody => "Request body must be a JSON object",
            ErrorCode::MissingField => "Missing required field: {field}",
            ErrorCode::InvalidField => "Invalid field: {field} {reason}",
            ErrorCode::BodyTooLarge => "Request body exceeds {max_size}",
            ErrorCode::FieldTooLarge => "Field {field} exceeds {max_size}",
            ErrorCode::ResourceTooLarge => "Resource at {field} exceeds {max_size}",
            ErrorCode::NotFound => "Not found",
            ErrorCode::HeadersTooLarge => "Request headers too large",
            ErrorCode::RequestTimeout => "Request timed out",
            ErrorCode::UpstreamUnavailable => "Upstream unavailable",
            ErrorCode::UpstreamTimeout => "Upstream timed out",
            ErrorCode::UpstreamError => "Internal server error",
            ErrorCode::StoreUnavailable => "Service temporarily unavailable",
            ErrorCode::Internal => "Internal server error",
            ErrorCode::UnsupportedEncoding => "Content-Encoding must be gzip, deflate or identity",
        }
    }

    /// What the code means, for the reference document.
    pub fn description(self) -> &'static str {
        match self {
            ErrorCode::RateLimited => {
                "A rate limit of the route is exhausted. `Retry-After` says when the same request \
                 would be admitted."
            }
            ErrorCode::QuotaExceeded => {
                "A quota for the billing period (e.g. a plan's monthly allowance) is used up."
            }
            ErrorCode::Blocked => {
                "The identity kept sending requests after being limited and is blocked on every \
                 route for a while; `Retry-After` is the block's remaining time."
            }
            ErrorCode::ConcurrencyExceeded => {
                "The identity has as many requests in flight as its concurrency limit allows."
            }
            ErrorCode::MissingApiKey => "The request carries no API key where the policy reads it.",
            ErrorCode::InvalidApiKey => "The API key is not a known key.",
            ErrorCode::RevokedApiKey => "The API key was revoked or rotated away.",
            ErrorCode::WrongEnvironment => {
                "The API key belongs to another environment than the one the request targets."
            }
            ErrorCode::Forbidden => "The caller is authenticated but may not perform the request.",
            ErrorCode::SubscriptionInactive => {
                "The subscription behind the key has expired; write requests are refused."
            }
            ErrorCode::UnsupportedMediaType => {
                "The route needs a JSON body and the `Content-Type` is missing or not JSON."
            }
            ErrorCode::MalformedBody => {
                "The body is not valid UTF-8 JSON, or not the JSON object the route needs."
            }
            ErrorCode::MissingField => "A field the route requires is absent from the body.",
            ErrorCode::InvalidField => {
                "A field has the wrong type, is an empty string, or is not an acceptable value \
                 (e.g. not a public https URL)."
            }
            ErrorCode::BodyTooLarge => "The whole body is larger than the route allows.",
            ErrorCode::FieldTooLarge => "One field of the body is larger than the route allows.",
            ErrorCode::ResourceTooLarge => {
                "A resource the body links to (e.g. an image by URL) is larger than allowed."
            }
            ErrorCode::NotFound => "No route of the policy matches the request.",
            ErrorCode::HeadersTooLarge => "The request has too many headers, or too large ones.",
            ErrorCode::RequestTimeout => {
                "The client did not send its request within the allowed time."
            }
            ErrorCode::UpstreamUnavailable => "The upstream API could not be reached.",
            ErrorCode::UpstreamTimeout => "The upstream API did not answer in time.",
            ErrorCode::UpstreamError => {
                "The upstream API failed with a body that is not JSON; the status is the \
                 upstream's and the body is rewritten into the API's envelope."
            }
            ErrorCode::StoreUnavailable => {
                "The counter store is unreachable and the policy chose to refuse requests rather \
                 than admit them unlimited."
            }
            ErrorCode::Internal => "An unexpected failure inside sluice.",
            ErrorCode::UnsupportedEncoding => {
                "The route reads the body and its `Content-Encoding` is one the gateway cannot \
                 decode; `Accept-Encoding` lists the ones it can."
            }
        }
    }

    /// Whether a failure with this code supplies `placeholder` to its message template.
    pub fn supplies(self, placeholder: crate::Placeholder) -> bool {
        use crate::Placeholder as P;
        match self {
            ErrorCode::RateLimited | ErrorCode::QuotaExceeded => matches!(
                placeholder,
                P::RetryIn | P::RetryInSeconds | P::RetryAfter | P::Limit | P::Window
            ),
            ErrorCode::Blocked => {
                matches!(placeholder, P::RetryIn | P::RetryInSeconds | P::RetryAfter)
            }
            ErrorCode::ConcurrencyExceeded => matches!(placeholder, P::Limit),
            ErrorCode::MissingField => matches!(placeholder, P::Field),
            ErrorCode::InvalidField => matches!(placeholder, P::Field | P::Reason),
            ErrorCode::BodyTooLarge => matches!(placeholder, P::MaxSize),
            ErrorCode::FieldTooLarge | ErrorCode::ResourceTooLarge => {
                matches!(placeholder, P::Field | P::MaxSize)
            }
            ErrorCode::MissingApiKey
            | ErrorCode::InvalidApiKey
            | ErrorCode::RevokedApiKey
            | ErrorCode::WrongEnvironment
            | ErrorCode::Forbidden
            | ErrorCode::SubscriptionInactive
            | ErrorCode::UnsupportedMediaType
            | ErrorCode::UnsupportedEncoding
            | ErrorCode::MalformedBody
            | ErrorCode::NotFound
            | ErrorCode::HeadersTooLarge
            | ErrorCode::RequestTimeout
            | ErrorCode::UpstreamUnavailable
            | ErrorCode::UpstreamTimeout
            | ErrorCode::UpstreamError
            | ErrorCode::StoreUnavailable
            | ErrorCode::Internal => false,
        }
    }

    /// The code named `name`, if there is one.
    pub fn from_name(name: &str) -> Option<ErrorCode> {
        ErrorCode::ALL
            .iter()
            .copied()
            .find(|code| code.name() == name)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The reference document of every code, in Markdown. `docs/error-codes.md` is this text, and a
/// test keeps it fresh.
pub fn reference_markdown() -> String {
    let mut out = String::from(
        "# Error codes\n\n\
         <!-- Generated by sluice_contract::reference_markdown; a test keeps it fresh. \
         Run `UPDATE_EXPECT=1 cargo test -p sluice-contract` after changing the registry. -->\n\n\
         Every failure sluice answers carries one of these codes. Codes are append-only: none is \
         ever renamed, removed or given another meaning. The body's shape is the API's envelope \
         (see the policy); the code appears where the envelope has a place for it.\n\n\
         | code | HTTP | gRPC | retry | meaning |\n\
         |---|---|---|---|---|\n",
    );
    for code in ErrorCode::ALL {
        let status = code.status();
        out.push_str(&format!(
            "| `{}` | {} {} | {} {} | {} | {} |\n",
            code.name(),
            status.as_u16(),
            status.canonical_reason().unwrap_or(""),
            code.grpc().number(),
            code.grpc().name(),
            if code.retryable() { "yes" } else { "no" },
            code.description(),
        ));
    }
    out
}
