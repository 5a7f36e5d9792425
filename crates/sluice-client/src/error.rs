//! What a failed call tells its caller: the last answer's status and the parts of its body
//! every documented envelope carries (`message` from `{"message"}`, from
//! `{"error","type","message","retry_after"}` and from problem+json's `detail`), the request id,
//! why the client stopped trying, and every attempt it made.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use serde_json::Value;

use crate::attempt::Attempt;

/// An error answer, read from any of the envelopes sluice renders.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    /// The status.
    pub status: StatusCode,
    /// `message` (or problem+json's `detail`), when the body had one.
    pub message: Option<String>,
    /// The short title: `error`, or problem+json's `title`.
    pub title: Option<String>,
    /// The error's type: `type` (e.g. `moderation_limit`), or problem+json's `code`.
    pub kind: Option<String>,
    /// The wait the server asked for: `Retry-After`, else the body's `retry_after`.
    pub retry_after: Option<Duration>,
    /// `X-Request-Id`, else the body's request id (problem+json's `instance`).
    pub request_id: Option<String>,
    /// The body as received.
    pub body: Bytes,
}

impl ApiError {
    /// Reads an answer; `retry_after` is the header's wait, already parsed.
    pub fn read(
        status: StatusCode,
        headers: &HeaderMap,
        body: Bytes,
        retry_after: Option<Duration>,
    ) -> ApiError {
        let json: Option<Value> = serde_json::from_slice(&body).ok();
        let text = |name: &str| {
            json.as_ref()
                .and_then(|value| value.get(name))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        let problem = headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|kind| kind.starts_with("application/problem+json"));
        let (message, title, kind) = if problem {
            (text("detail"), text("title"), text("code"))
        } else {
            (text("message"), text("error"), text("type"))
        };
        let body_wait = json
            .as_ref()
            .and_then(|value| value.get("retry_after"))
            .and_then(Value::as_u64)
            .map(Duration::from_secs);
        let request_id = headers
            .get("x-request-id")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
            .or_else(|| {
                text("instance").map(|id| id.strip_prefix("urn:request:").unwrap_or(&id).into())
            })
            .or_else(|| text("request_id"))
            .or_else(|| text("requestId"));
        ApiError {
            status,
            message,
            title,
            kind,
            retry_after: retry_after.or(body_wait),
            request_id,
            body,
        }
    }
}

/// Why the client stopped trying.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GiveUp {
    /// The answer cannot succeed on a retry (a 4xx other than 429).
    NotRetryable,
    /// A 5xx or a failure after the request was sent, on a call that is not idempotent: the
    /// server may have done the work, so repeating it blindly could do it twice.
    NotIdempotent,
    /// Every attempt the policy allows was made.
    Attempts,
    /// The wait before the next attempt would pass the call's deadline; it is `wait`.
    Deadline {
        /// The wait the client would have had to make.
        wait: Duration,
    },
    /// The client's retry budget is spent.
    Budget,
}

impl fmt::Display for GiveUp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GiveUp::NotRetryable => f.write_str("the answer cannot succeed on a retry"),
            GiveUp::NotIdempotent => f.write_str(
                "the call is not idempotent and the server may have done the work \
                 (send an Idempotency-Key or mark the call idempotent to retry it)",
            ),
            GiveUp::Attempts => f.write_str("no attempts left"),
            GiveUp::Deadline { wait } => write!(
                f,
                "the next attempt would have to wait {:.3}s, past the call's deadline",
                wait.as_secs_f64()
            ),
            GiveUp::Budget => f.write_str("the client's retry budget is spent"),
        }
    }
}

/// How a call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server answered with an error, and the client stopped trying.
    #[error("{} ({}): {}", .error.status, .error.message.as_deref().unwrap_or("no message"), .reason)]
    Status {
        /// The last answer.
        error: Box<ApiError>,
        /// Why there was no further attempt.
        reason: GiveUp,
        /// Every attempt, in order.
        attempts: Vec<Attempt>,
    },
    /// The last attempt got no answer (connect failure, timeout, reset), and the client stopped
    /// trying.
    #[error("request failed: {source} ({reason})")]
    Transport {
        /// The last failure.
        #[source]
        source: reqwest::Error,
        /// Why there was no further attempt.
        reason: GiveUp,
        /// Every attempt, in order.
        attempts: Vec<Attempt>,
    },
    /// The call was paced and the wait for the rate-limit window to reset passes its deadline:
    /// nothing was sent.
    #[error("the rate limit resets in {:.3}s, past the call's deadline; nothing was sent", .wait.as_secs_f64())]
    Paced {
        /// How long the client would have had to wait.
        wait: Duration,
        /// The attempts made before (none when the first was paced).
        attempts: Vec<Attempt>,
    },
    /// The request could not be built (a bad URL, a body that does not serialize).
    #[error("invalid request: {0}")]
    Request(String),
}

impl Error {
    /// The last answer's status.
    pub fn status(&self) -> Option<StatusCode> {
        self.api().map(|error| error.status)
    }

    /// The last answer, when there was one.
    pub fn api(&self) -> Option<&ApiError> {
        match self {
            Error::Status { error, .. } => Some(&**error),
            _ => None,
        }
    }

    /// The last answer's `message`.
    pub fn message(&self) -> Option<&str> {
        self.api().and_then(|error| error.message.as_deref())
    }

    /// The last answer's error type (`moderation_limit`).
    pub fn kind(&self) -> Option<&str> {
        self.api().and_then(|error| error.kind.as_deref())
    }

    /// The last answer's request id.
    pub fn request_id(&self) -> Option<&str> {
        self.api().and_then(|error| error.request_id.as_deref())
    }

    /// How long the server asked to wait, or the wait that passed the deadline.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::Status {
                reason: GiveUp::Deadline { wait },
                ..
            }
            | Error::Transport {
                reason: GiveUp::Deadline { wait },
                ..
            }
            | Error::Paced { wait, .. } => Some(*wait),
            Error::Status { error, .. } => error.retry_after,
            _ => None,
        }
    }

    /// Why the client stopped trying.
    pub fn reason(&self) -> Option<GiveUp> {
        match self {
            Error::Status { reason, .. } | Error::Transport { reason, .. } => Some(*reason),
            _ => None,
        }
    }

    /// Every attempt made.
    pub fn attempts(&self) -> &[Attempt] {
        match self {
            Error::Status { attempts, .. }
            | Error::Transport { attempts, .. }
            | Error::Paced { attempts, .. } => attempts,
            Error::Request(_) => &[],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(content_type: &str, body: &str, request_id: Option<&str>) -> ApiError {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", content_type.parse().expect("value"));
        if let Some(id) = request_id {
            headers.insert("x-request-id", id.parse().expect("value"));
        }
        ApiError::read(
            StatusCode::TOO_MANY_REQUESTS,
            &headers,
            Bytes::from(body.to_owned()),
            None,
        )
    }

    #[test]
    fn every_envelope_yields_its_message() {
        let message = read(
            "application/json",
            r#"{"message":"Rate limit exceeded. Try again in 2 minutes."}"#,
            Some("req-1"),
        );
        assert_eq!(
            message.message.as_deref(),
            Some("Rate limit exceeded. Try again in 2 minutes.")
        );
        assert_eq!(message.request_id.as_deref(), Some("req-1"));

        let typed = read(
            "application/json",
            r#"{"error":"Moderation limit exceeded","type":"moderation_limit","message":"Upgrade.","retry_after":60}"#,
            None,
        );
        assert_eq!(typed.kind.as_deref(), Some("moderation_limit"));
        assert_eq!(typed.title.as_deref(), Some("Moderation limit exceeded"));
        assert_eq!(typed.retry_after, Some(Duration::from_secs(60)));

        let problem = read(
            "application/problem+json",
            r#"{"type":"https://errors.example.com/rate_limited","title":"Too Many Requests","status":429,"detail":"Slow down.","code":"rate_limited","instance":"urn:request:abc"}"#,
            None,
        );
        assert_eq!(problem.message.as_deref(), Some("Slow down."));
        assert_eq!(problem.kind.as_deref(), Some("rate_limited"));
        assert_eq!(problem.request_id.as_deref(), Some("abc"));
    }

    #[test]
    fn a_body_that_is_not_json_yields_nothing_but_itself() {
        let error = read("text/html", "<html>oops</html>", None);
        assert_eq!(error.message, None);
        assert_eq!(error.body, "<html>oops</html>");
    }
}
