//! The record of one attempt, as `sluice call` prints it and an observer sees it: what came
//! back, the rate-limit headers, and what the client chose to do next and why.

use std::fmt;
use std::time::Duration;

use http::StatusCode;

use crate::error::GiveUp;
use crate::signals::RateLimitInfo;

/// One attempt at a call.
#[derive(Clone, Debug)]
pub struct Attempt {
    /// 1 for the first attempt.
    pub number: u32,
    /// How long the client waited before sending it because the last answer on this endpoint
    /// said nothing was left in the window.
    pub paced: Duration,
    /// What came back.
    pub outcome: Outcome,
    /// The rate-limit headers of the answer, as sent (empty for a failure).
    pub headers: Vec<(String, String)>,
    /// The rate-limit state they advertise.
    pub rate_limit: RateLimitInfo,
    /// The answer's request id.
    pub request_id: Option<String>,
    /// The `message` of an error answer's envelope.
    pub message: Option<String>,
    /// What the client did next.
    pub next: Next,
}

/// What came back from one attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// An answer with this status.
    Answered(StatusCode),
    /// No answer: the failure, described.
    Failed(String),
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Answered(status) => write!(f, "{status}"),
            Outcome::Failed(failure) => write!(f, "no answer: {failure}"),
        }
    }
}

/// What the client did after an attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// The answer was a success; the call is over.
    Done,
    /// It waited `wait` and tried again.
    Retry {
        /// The wait before the next attempt.
        wait: Duration,
        /// Why this wait, in words.
        why: String,
    },
    /// It stopped trying.
    GiveUp(GiveUp),
}

impl fmt::Display for Next {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Next::Done => f.write_str("done"),
            Next::Retry { wait, why } => {
                write!(f, "retrying in {:.3}s: {why}", wait.as_secs_f64())
            }
            Next::GiveUp(reason) => write!(f, "giving up: {reason}"),
        }
    }
}
