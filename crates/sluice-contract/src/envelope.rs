//! Error envelopes: the JSON shape every failure leaves in, chosen once per API.

use http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::code::ErrorCode;

/// The body shape an API documents for its errors.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "style", deny_unknown_fields)]
pub enum Envelope {
    /// `{"message": …}` and nothing else (Streampixel's shape).
    Message {
        /// When set, the request id is added under this key; off by default, because the shape
        /// promises `message` alone.
        #[serde(default)]
        request_id_field: Option<String>,
    },
    /// `{"error": title, "type": …, "message": …, "retry_after": seconds}` (Pixel Patrol's
    /// shape): `type` only for errors the policy gives a type, `retry_after` only on 429.
    ErrorMessage {
        /// As for [`Envelope::Message`].
        #[serde(default)]
        request_id_field: Option<String>,
    },
    /// RFC 9457 problem details, `application/problem+json`, with the code and the request id
    /// (as `instance`).
    Problem {
        /// Base URI of the `type` member; the code is appended. `about:blank` when absent.
        #[serde(default)]
        type_base: Option<String>,
    },
}

impl Default for Envelope {
    fn default() -> Envelope {
        Envelope::Message {
            request_id_field: None,
        }
    }
}

/// One failure, ready to render: the code, and the words the policy chose for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorReply {
    /// What failed.
    pub code: ErrorCode,
    /// The status to answer with (the code's, or the upstream's for an upstream error).
    pub status: StatusCode,
    /// The short title (`error` member, problem `title`).
    pub title: String,
    /// The rendered message.
    pub message: String,
    /// A type for the `type` member of the two-field envelope (e.g. `moderation_limit`).
    pub kind: Option<String>,
    /// Whole seconds until a retry can succeed, for 429s.
    pub retry_after: Option<u64>,
    /// The request's id.
    pub request_id: Option<String>,
}

/// A rendered error body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RenderedError {
    /// The status line's code.
    pub status: StatusCode,
    /// The `Content-Type` of `body`.
    pub content_type: &'static str,
    /// The body, compact JSON.
    pub body: Vec<u8>,
}

impl Envelope {
    /// The body `reply` leaves in.
    pub fn render(&self, reply: &ErrorReply) -> RenderedError {
        let mut object = Map::new();
        let content_type = match self {
            Envelope::Message { request_id_field } => {
                object.insert("message".into(), reply.message.clone().into());
                add_request_id(&mut object, request_id_field.as_deref(), reply);
                "application/json"
            }
            Envelope::ErrorMessage { request_id_field } => {
                object.insert("error".into(), reply.title.clone().into());
                if let Some(kind) = &reply.kind {
                    object.insert("type".into(), kind.clone().into());
                }
                object.insert("message".into(), reply.message.clone().into());
                if reply.status == StatusCode::TOO_MANY_REQUESTS
                    && let Some(seconds) = reply.retry_after
                {
                    object.insert("retry_after".into(), seconds.into());
                }
                add_request_id(&mut object, request_id_field.as_deref(), reply);
                "application/json"
            }
            Envelope::Problem { type_base } => {
                let kind = match type_base {
                    Some(base) => format!("{base}{}", reply.code.name()),
                    None => "about:blank".to_owned(),
                };
                object.insert("type".into(), kind.into());
                object.insert("title".into(), reply.title.clone().into());
                object.insert("status".into(), reply.status.as_u16().into());
                object.insert("detail".into(), reply.message.clone().into());
                object.insert("code".into(), reply.code.name().into());
                if let Some(id) = &reply.request_id {
                    object.insert("instance".into(), format!("urn:request:{id}").into());
                }
                if let Some(seconds) = reply.retry_after {
                    object.insert("retry_after".into(), seconds.into());
                }
                "application/problem+json"
            }
        };
        RenderedError {
            status: reply.status,
            content_type,
            body: serde_json::to_vec(&Value::Object(object)).unwrap_or_default(),
        }
    }
}

fn add_request_id(object: &mut Map<String, Value>, field: Option<&str>, reply: &ErrorReply) {
    if let (Some(field), Some(id)) = (field, &reply.request_id) {
        object.insert(field.to_owned(), id.clone().into());
    }
}
