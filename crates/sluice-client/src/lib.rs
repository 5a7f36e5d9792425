//! sluice's client SDK: an HTTP client whose every call retries the way rate-limited APIs tell
//! their users to — and no other way.
//!
//! - It retries 429s, 5xx answers and failed connections, never any other 4xx.
//! - Waits grow exponentially from a base delay, capped, over a bounded number of attempts,
//!   with jitter ([`Jitter`]: the seeds' bounded ± spread, full, or decorrelated). Each seed
//!   API's published strategy is a preset ([`RetryPolicy::streampixel`],
//!   [`RetryPolicy::pixel_patrol`]).
//! - It never comes back earlier than the server asked (`Retry-After` in seconds or as an
//!   HTTP-date, a body's `retry_after`, a rate-limit reset), and gives up at once, with the wait
//!   in the error, when that wait passes the call's deadline.
//! - It paces: after an answer saying nothing is left in the window, the next call to that
//!   endpoint on any clone waits for the reset instead of drawing a 429.
//! - Clones share a retry budget, so a fleet in trouble does not multiply its own load.
//! - POST and PATCH are retried after a 429 or a refused connection (the server did no work),
//!   but after a 5xx or a timeout only with an `Idempotency-Key` or when marked idempotent.
//! - Errors carry the status, the `message` of any documented envelope, the `retry_after`, the
//!   error type and the request id; logs go through `tracing` with `apiKey` and other secrets
//!   redacted wherever they appear.
//!
//! ```no_run
//! # async fn run() -> Result<(), sluice_client::Error> {
//! use sluice_client::{Client, RetryPolicy};
//!
//! let client = Client::builder().policy(RetryPolicy::streampixel()).build()?;
//! let response = client
//!     .post("https://api.streampixel.io/projects/list")
//!     .json(&serde_json::json!({"apiKey": "…", "userId": "alice"}))
//!     .send()
//!     .await?;
//! println!("{} after {} attempts", response.status, response.attempts.len());
//! # Ok(())
//! # }
//! ```
//!
//! The crate knows only the wire contract (`sluice-contract`), not the server.

mod attempt;
mod client;
mod clock;
mod error;
mod policy;
mod redact;
mod shared;
mod signals;

pub use attempt::{Attempt, Next, Outcome};
pub use client::{Call, Client, ClientBuilder, Observer, Response};
pub use clock::{Sleep, SystemTimer, Timer};
pub use error::{ApiError, Error, GiveUp};
pub use policy::{Jitter, RetryBudget, RetryPolicy};
pub use redact::{REDACTED, Redactor};
pub use signals::{RateLimitInfo, retry_after};
pub use sluice_contract::ResetUnit;
