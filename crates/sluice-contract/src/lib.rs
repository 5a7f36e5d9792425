//! sluice's wire contract, the single place that knows what leaves the gateway: the registry of
//! stable error codes, the error envelopes an API may document, message templates, and the
//! rate-limit header dialects.
//!
//! This crate knows nothing of limits, stores or HTTP servers: it turns values (a code, a
//! message, a few numbers per limit) into bodies and headers. The gateway and the client SDK both
//! depend on it, so the two always agree on the wire.

mod code;
mod envelope;
mod headers;
mod template;
mod words;

pub use code::{ErrorCode, GrpcCode, reference_markdown};
pub use envelope::{Envelope, ErrorReply, RenderedError};
pub use headers::{HeaderDialect, LimitView, ResetUnit, decimal_value, rate_limit_headers};
pub use template::{Placeholder, Template, TemplateError, Values};
pub use words::{ceil_seconds, duration_words, seconds_words, size_words, window_words};
