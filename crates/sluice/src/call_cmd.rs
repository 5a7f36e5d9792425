//! `sluice call`: one HTTP call through the client SDK, every attempt printed — its status, the
//! rate-limit headers, and the wait the client chose and why. A user's tool to see how an API
//! limits them, and how a well-behaved client answers.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use http::Method;
use sluice_client::{Attempt, Client, Error, Jitter, Next, RetryPolicy};

/// Flags of `sluice call`.
#[derive(Debug, clap::Args)]
pub(crate) struct CallArgs {
    /// The HTTP method (GET, POST, …).
    method: String,
    /// The URL to call.
    url: String,
    /// A JSON body, sent with `content-type: application/json`.
    #[arg(long, value_name = "BODY")]
    json: Option<String>,
    /// A header, `Name: value`; repeat for several.
    #[arg(long = "header", short = 'H', value_name = "H")]
    headers: Vec<String>,
    /// The retry strategy to start from: `default` (5 attempts, 1 s doubling to 60 s, full
    /// jitter), `streampixel` (seed 000: ± 250 ms jitter) or `pixel-patrol` (seed 001: 3
    /// attempts, 2 s doubling, no jitter).
    #[arg(long, default_value = "default")]
    preset: String,
    /// Attempts in all, the first included.
    #[arg(long)]
    attempts: Option<u32>,
    /// Jitter: none, bounded (± 250 ms), full or decorrelated.
    #[arg(long)]
    jitter: Option<String>,
    /// The backoff before the first retry (e.g. 500ms, 1s); it doubles with each retry.
    #[arg(long, value_parser = duration)]
    base_delay: Option<Duration>,
    /// No backoff exceeds this (a server's Retry-After may).
    #[arg(long, value_parser = duration)]
    max_delay: Option<Duration>,
    /// Bounds the whole call, waits included: a server's wait past it ends the call at once.
    #[arg(long, value_parser = duration)]
    deadline: Option<Duration>,
    /// Bounds each attempt.
    #[arg(long, value_parser = duration)]
    timeout: Option<Duration>,
    /// Retry a POST or PATCH after a 5xx or a timeout too (the server tolerates a repeat).
    #[arg(long)]
    idempotent: bool,
}

/// `500ms`, `1.5s`, `2m`, `1h`, or bare seconds.
fn duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (e.g. 500ms, 2s, 1m)"))?;
    let scale = match unit.trim() {
        "ms" => 0.001,
        "" | "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        other => return Err(format!("unknown unit {other:?} (ms, s, m or h)")),
    };
    Duration::try_from_secs_f64(number * scale).map_err(|error| format!("{text:?}: {error}"))
}

impl CallArgs {
    fn policy(&self) -> anyhow::Result<RetryPolicy> {
        let mut policy = RetryPolicy::preset(&self.preset).with_context(|| {
            format!(
                "unknown preset {:?} (default, streampixel or pixel-patrol)",
                self.preset
            )
        })?;
        if let Some(attempts) = self.attempts {
            if attempts == 0 {
                bail!("--attempts must be at least 1");
            }
            policy.max_attempts = attempts;
        }
        if let Some(jitter) = &self.jitter {
            policy.jitter = match jitter.as_str() {
                "none" => Jitter::None,
                "bounded" => Jitter::Bounded(Duration::from_millis(250)),
                "full" => Jitter::Full,
                "decorrelated" => Jitter::Decorrelated,
                other => bail!("unknown jitter {other:?} (none, bounded, full or decorrelated)"),
            };
        }
        if let Some(base) = self.base_delay {
            policy.base_delay = base;
        }
        if let Some(max) = self.max_delay {
            policy.max_delay = max;
        }
        if self.deadline.is_some() {
            policy.deadline = self.deadline;
        }
        if self.timeout.is_some() {
            policy.attempt_timeout = self.timeout;
        }
        Ok(policy)
    }
}

pub(crate) async fn run(args: CallArgs) -> anyhow::Result<ExitCode> {
    let method = Method::from_bytes(args.method.to_ascii_uppercase().as_bytes())
        .with_context(|| format!("{:?} is not an HTTP method", args.method))?;
    let policy = args.policy()?;
    let client = Client::builder().policy(policy).build()?;
    let mut call = client.request(method.clone(), &args.url);
    for header in &args.headers {
        let (name, value) = header
            .split_once(':')
            .with_context(|| format!("--header {header:?} is not `Name: value`"))?;
        call = call.header(name.trim(), value.trim());
    }
    if let Some(json) = &args.json {
        let body: serde_json::Value =
            serde_json::from_str(json).context("--json is not valid JSON")?;
        call = call.json(&body);
    }
    if args.idempotent {
        call = call.idempotent(true);
    }
    let jitter = match policy.jitter {
        Jitter::None => "no jitter".to_owned(),
        Jitter::Bounded(spread) => format!("jitter ± {}", seconds(spread)),
        other => format!("{} jitter", other.name()),
    };
    println!(
        "{method} {} — up to {} attempts, backoff {} doubling to {}, {jitter}",
        args.url,
        policy.max_attempts,
        seconds(policy.base_delay),
        seconds(policy.max_delay),
    );
    match call.observe(print_attempt).send().await {
        Ok(response) => {
            println!();
            println!("{}", response.text());
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => {
            println!();
            match &error {
                Error::Status { error: answer, .. } => {
                    println!("{}", String::from_utf8_lossy(&answer.body));
                    println!("failed: {error}");
                }
                _ => println!("failed: {error}"),
            }
            if let Some(id) = error.request_id() {
                println!("request id: {id} (quote it with the time when you report a failure)");
            }
            Ok(ExitCode::FAILURE)
        }
    }
}

fn print_attempt(attempt: &Attempt) {
    if !attempt.paced.is_zero() {
        println!(
            "(waited {} first: the last answer said nothing was left until the reset)",
            seconds(attempt.paced)
        );
    }
    let id = attempt
        .request_id
        .as_deref()
        .map(|id| format!("  [request id {id}]"))
        .unwrap_or_default();
    println!("attempt {}: {}{id}", attempt.number, attempt.outcome);
    for (name, value) in &attempt.headers {
        println!("  {name}: {value}");
    }
    if let Some(message) = &attempt.message {
        println!("  message: {message}");
    }
    match &attempt.next {
        Next::Done => {}
        next => println!("  → {next}"),
    }
}

fn seconds(wait: Duration) -> String {
    format!("{}s", wait.as_secs_f64())
}
