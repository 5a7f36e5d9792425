//! The client and its retry loop: every call is sent, read, and either returned or tried again
//! after the wait the policy, the server's headers and the shared budget allow.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use http::{HeaderMap, Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sluice_contract::ResetUnit;
use url::Url;

use crate::attempt::{Attempt, Next, Outcome};
use crate::clock::{SystemTimer, Timer};
use crate::error::{ApiError, Error, GiveUp};
use crate::policy::{RetryBudget, RetryPolicy};
use crate::redact::Redactor;
use crate::shared::Shared;
use crate::signals::RateLimitInfo;

/// Reports each attempt as it ends, before any wait that follows it.
pub type Observer = Arc<dyn Fn(&Attempt) + Send + Sync>;

/// An HTTP client that retries the way rate-limited APIs ask. Clones share the connection pool,
/// the retry budget and the pacing table.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    timer: Arc<dyn Timer>,
    shared: Arc<Shared>,
    settings: Arc<Settings>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("policy", &self.settings.policy)
            .field("pacing", &self.settings.pacing)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Settings {
    policy: RetryPolicy,
    pacing: bool,
    reset_unit: Option<ResetUnit>,
    redactor: Redactor,
}

/// Builds a [`Client`].
pub struct ClientBuilder {
    policy: RetryPolicy,
    budget: Option<RetryBudget>,
    pacing: bool,
    reset_unit: Option<ResetUnit>,
    redactor: Redactor,
    timer: Option<Arc<dyn Timer>>,
    http: Option<reqwest::Client>,
    seed: Option<u64>,
}

impl Default for ClientBuilder {
    fn default() -> ClientBuilder {
        ClientBuilder {
            policy: RetryPolicy::default(),
            budget: Some(RetryBudget::default()),
            pacing: true,
            reset_unit: None,
            redactor: Redactor::default(),
            timer: None,
            http: None,
            seed: None,
        }
    }
}

impl ClientBuilder {
    /// The retry policy for every call (a call may replace it).
    pub fn policy(mut self, policy: RetryPolicy) -> ClientBuilder {
        self.policy = policy;
        self
    }

    /// The retry budget shared by the client's clones; `None` for no budget.
    pub fn budget(mut self, budget: Option<RetryBudget>) -> ClientBuilder {
        self.budget = budget;
        self
    }

    /// Whether a call waits for the window to reset when the last answer on its endpoint (the
    /// same origin and path) said nothing was left. On by default; turn it off for a client
    /// that calls for many users, whose limits the headers of one do not describe.
    pub fn pacing(mut self, on: bool) -> ClientBuilder {
        self.pacing = on;
        self
    }

    /// How the API counts `X-RateLimit-Reset`; guessed from the value's size when unset.
    pub fn reset_unit(mut self, unit: ResetUnit) -> ClientBuilder {
        self.reset_unit = Some(unit);
        self
    }

    /// Redacts the values of `name` too (in bodies, queries and headers) in every log line.
    pub fn redact(mut self, name: &str) -> ClientBuilder {
        self.redactor.add(name);
        self
    }

    /// The source of time and sleeps (the system's by default).
    pub fn timer(mut self, timer: Arc<dyn Timer>) -> ClientBuilder {
        self.timer = Some(timer);
        self
    }

    /// The HTTP client to send with (rustls, default settings otherwise).
    pub fn http(mut self, http: reqwest::Client) -> ClientBuilder {
        self.http = Some(http);
        self
    }

    /// Seeds the jitter's random source, for reproducible schedules.
    pub fn seed(mut self, seed: u64) -> ClientBuilder {
        self.seed = Some(seed);
        self
    }

    /// The client.
    pub fn build(self) -> Result<Client, Error> {
        let http = match self.http {
            Some(http) => http,
            None => reqwest::Client::builder()
                .user_agent(concat!("sluice-client/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(|error| Error::Request(error.to_string()))?,
        };
        let timer = self
            .timer
            .unwrap_or_else(|| Arc::new(SystemTimer::new()) as Arc<dyn Timer>);
        let rng = self
            .seed
            .map_or_else(fastrand::Rng::new, fastrand::Rng::with_seed);
        Ok(Client {
            http,
            shared: Arc::new(Shared::new(self.budget, rng, timer.elapsed())),
            timer,
            settings: Arc::new(Settings {
                policy: self.policy,
                pacing: self.pacing,
                reset_unit: self.reset_unit,
                redactor: self.redactor,
            }),
        })
    }
}

impl Client {
    /// A client with the default policy.
    pub fn new() -> Result<Client, Error> {
        Client::builder().build()
    }

    /// A builder.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    /// A call of `method` on `url`.
    pub fn request(&self, method: Method, url: &str) -> Call {
        Call {
            client: self.clone(),
            method,
            url: Url::parse(url).map_err(|error| format!("{url}: {error}")),
            headers: HeaderMap::new(),
            body: None,
            idempotent: None,
            policy: self.settings.policy,
            observer: None,
        }
    }

    /// A GET.
    pub fn get(&self, url: &str) -> Call {
        self.request(Method::GET, url)
    }

    /// A POST.
    pub fn post(&self, url: &str) -> Call {
        self.request(Method::POST, url)
    }
}

/// One call, built up and then sent with [`Call::send`].
#[must_use = "a call does nothing until it is sent"]
pub struct Call {
    client: Client,
    method: Method,
    url: Result<Url, String>,
    headers: HeaderMap,
    body: Option<Result<Bytes, String>>,
    idempotent: Option<bool>,
    policy: RetryPolicy,
    observer: Option<Observer>,
}

impl Call {
    /// Adds a header; a name or value that is not valid fails the call when it is sent.
    pub fn header(mut self, name: &str, value: &str) -> Call {
        match (
            HeaderName::try_from(name),
            HeaderValue::try_from(value.to_owned()),
        ) {
            (Ok(name), Ok(value)) => {
                self.headers.append(name, value);
            }
            _ => self.url = Err(format!("invalid header {name:?}")),
        }
        self
    }

    /// A JSON body, with its content type.
    pub fn json<T: Serialize + ?Sized>(mut self, body: &T) -> Call {
        self.headers
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        self.body = Some(
            serde_json::to_vec(body)
                .map(Bytes::from)
                .map_err(|error| error.to_string()),
        );
        self
    }

    /// A body as it is (set a content type with [`Call::header`]).
    pub fn body(mut self, body: impl Into<Bytes>) -> Call {
        self.body = Some(Ok(body.into()));
        self
    }

    /// Says whether the call may be repeated after a 5xx or a failure once sent. By default
    /// GET, HEAD, OPTIONS, PUT, DELETE and TRACE may be, and POST and PATCH only with an
    /// `Idempotency-Key` header; any method is retried after a 429 and after a failure to
    /// connect, since the server did no work then.
    pub fn idempotent(mut self, idempotent: bool) -> Call {
        self.idempotent = Some(idempotent);
        self
    }

    /// Replaces the client's retry policy for this call.
    pub fn policy(mut self, policy: RetryPolicy) -> Call {
        self.policy = policy;
        self
    }

    /// Bounds the whole call, waits included.
    pub fn deadline(mut self, deadline: Duration) -> Call {
        self.policy.deadline = Some(deadline);
        self
    }

    /// Bounds each attempt.
    pub fn attempt_timeout(mut self, timeout: Duration) -> Call {
        self.policy.attempt_timeout = Some(timeout);
        self
    }

    /// Reports each attempt to `observer` as it ends.
    pub fn observe(mut self, observer: impl Fn(&Attempt) + Send + Sync + 'static) -> Call {
        self.observer = Some(Arc::new(observer));
        self
    }

    /// Sends the call, retrying as the policy allows.
    pub async fn send(self) -> Result<Response, Error> {
        let url = self.url.clone().map_err(Error::Request)?;
        let body = match &self.body {
            Some(Ok(body)) => Some(body.clone()),
            Some(Err(error)) => return Err(Error::Request(error.clone())),
            None => None,
        };
        let idempotent = self.idempotent.unwrap_or_else(|| {
            matches!(
                self.method,
                Method::GET
                    | Method::HEAD
                    | Method::OPTIONS
                    | Method::PUT
                    | Method::DELETE
                    | Method::TRACE
            ) || self.headers.contains_key("idempotency-key")
        });
        Sending {
            endpoint: endpoint(&url),
            url,
            body,
            idempotent,
            call: self,
        }
        .run()
        .await
    }
}

/// A successful answer.
#[derive(Debug)]
pub struct Response {
    /// The status (2xx or 3xx).
    pub status: StatusCode,
    /// The headers.
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
    /// The rate-limit state the answer advertised.
    pub rate_limit: RateLimitInfo,
    /// Every attempt, in order; the last is this answer.
    pub attempts: Vec<Attempt>,
}

impl Response {
    /// The body as JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A call being sent.
struct Sending {
    call: Call,
    url: Url,
    endpoint: String,
    body: Option<Bytes>,
    idempotent: bool,
}

/// One attempt's result, read whole.
enum Answer {
    Status {
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
    },
    Failed(reqwest::Error),
}

/// How an attempt that did not succeed ended.
enum Failed {
    Answer(Box<ApiError>),
    Transport(reqwest::Error),
}

impl Failed {
    fn into_error(self, reason: GiveUp, attempts: Vec<Attempt>) -> Error {
        match self {
            Failed::Answer(error) => Error::Status {
                error,
                reason,
                attempts,
            },
            Failed::Transport(source) => Error::Transport {
                source,
                reason,
                attempts,
            },
        }
    }
}

/// The server's wait and where it was read.
struct ServerWait {
    wait: Duration,
    source: &'static str,
}

impl Sending {
    async fn run(self) -> Result<Response, Error> {
        let client = &self.call.client;
        let timer = &client.timer;
        let policy = self.call.policy;
        let start = timer.elapsed();
        let deadline = policy
            .deadline
            .map(|deadline| start.saturating_add(deadline));
        client.shared.deposit(start);
        let mut attempts: Vec<Attempt> = Vec::new();
        let mut previous = Duration::ZERO;
        let mut number = 0u32;
        loop {
            number += 1;
            let paced = match self.pace(deadline).await {
                Ok(paced) => paced,
                Err(wait) => return Err(Error::Paced { wait, attempts }),
            };
            let answer = self.attempt(deadline).await;
            let now = timer.elapsed();
            let mut attempt = Attempt {
                number,
                paced,
                outcome: Outcome::Answered(StatusCode::OK),
                headers: Vec::new(),
                rate_limit: RateLimitInfo::default(),
                request_id: None,
                message: None,
                next: Next::Done,
            };
            // The last failure, kept for the error if this attempt is the last.
            let failed = match answer {
                Answer::Status {
                    status,
                    headers,
                    body,
                } => {
                    let info = RateLimitInfo::from_headers(
                        &headers,
                        timer.wall(),
                        client.settings.reset_unit,
                    );
                    self.remember(&info, now);
                    attempt.outcome = Outcome::Answered(status);
                    attempt.headers = rate_limit_headers(&headers);
                    attempt.rate_limit = info.clone();
                    attempt.request_id = headers
                        .get("x-request-id")
                        .and_then(|value| value.to_str().ok())
                        .map(str::to_owned);
                    if status.as_u16() < 400 {
                        self.report(&attempt);
                        attempts.push(attempt);
                        return Ok(Response {
                            status,
                            headers,
                            body,
                            rate_limit: info,
                            attempts,
                        });
                    }
                    let error = ApiError::read(status, &headers, body, info.retry_after);
                    attempt.message.clone_from(&error.message);
                    let retryable = if status == StatusCode::TOO_MANY_REQUESTS {
                        // The server refused before doing any work: safe for any method.
                        Ok(())
                    } else if status.is_server_error() {
                        self.idempotent.then_some(()).ok_or(GiveUp::NotIdempotent)
                    } else {
                        Err(GiveUp::NotRetryable)
                    };
                    let server = server_wait(status, &error, &info);
                    if status == StatusCode::TOO_MANY_REQUESTS
                        && let Some(server) = &server
                    {
                        self.pace_endpoint(now.saturating_add(server.wait), now);
                    }
                    attempt.next = self.next(number, retryable, server, &mut previous, deadline);
                    self.log_answer(&attempt, &headers, &error);
                    Failed::Answer(Box::new(error))
                }
                Answer::Failed(failure) => {
                    // A refused connection carried no request; anything later may have.
                    let retryable = if failure.is_connect() || self.idempotent {
                        Ok(())
                    } else {
                        Err(GiveUp::NotIdempotent)
                    };
                    attempt.outcome = Outcome::Failed(describe(&failure));
                    attempt.next = self.next(number, retryable, None, &mut previous, deadline);
                    self.log_failure(&attempt);
                    Failed::Transport(failure)
                }
            };
            self.report(&attempt);
            let next = attempt.next.clone();
            attempts.push(attempt);
            match next {
                Next::Retry { wait, .. } => timer.sleep(wait).await,
                Next::GiveUp(reason) => return Err(failed.into_error(reason, attempts)),
                // `next` never says done after a failure; were it to, the call is over.
                Next::Done => return Err(failed.into_error(GiveUp::Attempts, attempts)),
            }
        }
    }

    /// Waits until the endpoint's window has something left, if the client paces; the wait
    /// made, or the wait that would pass the deadline.
    async fn pace(&self, deadline: Option<Duration>) -> Result<Duration, Duration> {
        let client = &self.call.client;
        if !client.settings.pacing {
            return Ok(Duration::ZERO);
        }
        let now = client.timer.elapsed();
        let Some(wait) = client.shared.paced_for(&self.endpoint, now) else {
            return Ok(Duration::ZERO);
        };
        if deadline.is_some_and(|deadline| now.saturating_add(wait) > deadline) {
            return Err(wait);
        }
        tracing::debug!(
            target: "sluice_client",
            url = %client.settings.redactor.url(&self.url),
            wait_ms = wait.as_millis(),
            "pacing: the rate limit has nothing left until its reset",
        );
        client.timer.sleep(wait).await;
        Ok(wait)
    }

    async fn attempt(&self, deadline: Option<Duration>) -> Answer {
        let client = &self.call.client;
        let mut request = client
            .http
            .request(self.call.method.clone(), self.url.clone())
            .headers(self.call.headers.clone());
        if let Some(body) = &self.body {
            request = request.body(body.clone());
        }
        let left = deadline.map(|deadline| deadline.saturating_sub(client.timer.elapsed()));
        let timeout = match (self.call.policy.attempt_timeout, left) {
            (Some(timeout), Some(left)) => Some(timeout.min(left)),
            (timeout, left) => timeout.or(left),
        };
        if let Some(timeout) = timeout {
            request = request.timeout(timeout.max(Duration::from_millis(1)));
        }
        let response = match request.send().await {
            Ok(response) => response,
            Err(failure) => return Answer::Failed(failure),
        };
        let status = response.status();
        let headers = response.headers().clone();
        match response.bytes().await {
            Ok(body) => Answer::Status {
                status,
                headers,
                body,
            },
            Err(failure) => Answer::Failed(failure),
        }
    }

    /// Notes what the answer said about the endpoint's window.
    fn remember(&self, info: &RateLimitInfo, now: Duration) {
        if let Some(wait) = info.exhausted_for {
            self.pace_endpoint(now.saturating_add(wait), now);
        } else if info.remaining.is_some_and(|left| left > 0) {
            self.call.client.shared.clear(&self.endpoint);
        }
    }

    fn pace_endpoint(&self, until: Duration, now: Duration) {
        if self.call.client.settings.pacing {
            self.call.client.shared.pace(&self.endpoint, until, now);
        }
    }

    /// What to do after attempt `number`; on a retry, `previous` becomes its wait.
    fn next(
        &self,
        number: u32,
        retryable: Result<(), GiveUp>,
        server: Option<ServerWait>,
        previous: &mut Duration,
        deadline: Option<Duration>,
    ) -> Next {
        let client = &self.call.client;
        let policy = &self.call.policy;
        if let Err(reason) = retryable {
            return Next::GiveUp(reason);
        }
        if number >= policy.max_attempts {
            return Next::GiveUp(GiveUp::Attempts);
        }
        let (low, high) = policy.range(number, *previous);
        let wait = policy.wait(
            number,
            *previous,
            server.as_ref().map(|server| server.wait),
            client.shared.sample(),
        );
        let now = client.timer.elapsed();
        if deadline.is_some_and(|deadline| now.saturating_add(wait) > deadline) {
            return Next::GiveUp(GiveUp::Deadline { wait });
        }
        if !client.shared.withdraw(now) {
            return Next::GiveUp(GiveUp::Budget);
        }
        let jitter = policy.jitter.name();
        let why = match server {
            Some(server) if server.wait > low && high == low => format!(
                "the server asked for {} ({})",
                seconds(server.wait),
                server.source
            ),
            Some(server) if server.wait > low => format!(
                "the server asked for {} ({}), plus {:.3}s of {jitter} jitter (up to {:.3}s)",
                seconds(server.wait),
                server.source,
                (wait - server.wait).as_secs_f64(),
                (high - low).as_secs_f64(),
            ),
            _ if high == low => format!(
                "backoff {} before retry {number}",
                seconds(policy.backoff(number))
            ),
            _ => format!(
                "backoff {} before retry {number}, {jitter} jitter over {}..{}",
                seconds(policy.backoff(number)),
                seconds(low),
                seconds(high),
            ),
        };
        *previous = wait;
        Next::Retry { wait, why }
    }

    fn report(&self, attempt: &Attempt) {
        if let Some(observer) = &self.call.observer {
            observer(attempt);
        }
    }

    fn log_answer(&self, attempt: &Attempt, headers: &HeaderMap, error: &ApiError) {
        let redactor = &self.call.client.settings.redactor;
        let url = redactor.url(&self.url);
        let content_type = headers
            .get(CONTENT_TYPE)
            .and_then(|value| value.to_str().ok());
        let unexpected = error.status != StatusCode::TOO_MANY_REQUESTS;
        if unexpected && matches!(attempt.next, Next::GiveUp(_)) {
            // The seeds' advice: log the whole exchange, secrets redacted, on an unexpected
            // error.
            tracing::warn!(
                target: "sluice_client",
                method = %self.call.method,
                url = %url,
                attempt = attempt.number,
                status = error.status.as_u16(),
                request_id = error.request_id.as_deref().unwrap_or("-"),
                request_headers = %redactor.headers(&self.call.headers),
                request_body = %self.request_body(),
                response_body = %redactor.body(&error.body, content_type),
                next = %attempt.next,
                "call failed",
            );
        } else {
            tracing::info!(
                target: "sluice_client",
                method = %self.call.method,
                url = %url,
                attempt = attempt.number,
                status = error.status.as_u16(),
                request_id = error.request_id.as_deref().unwrap_or("-"),
                message = error.message.as_deref().unwrap_or("-"),
                next = %attempt.next,
                "error answer",
            );
        }
    }

    fn log_failure(&self, attempt: &Attempt) {
        let redactor = &self.call.client.settings.redactor;
        tracing::warn!(
            target: "sluice_client",
            method = %self.call.method,
            url = %redactor.url(&self.url),
            attempt = attempt.number,
            failure = %attempt.outcome,
            request_headers = %redactor.headers(&self.call.headers),
            request_body = %self.request_body(),
            next = %attempt.next,
            "no answer",
        );
    }

    fn request_body(&self) -> String {
        let content_type = self
            .call
            .headers
            .get(CONTENT_TYPE)
            .and_then(|value| value.to_str().ok());
        self.call
            .client
            .settings
            .redactor
            .body(self.body.as_deref().unwrap_or_default(), content_type)
    }
}

/// The wait a refusal names: `Retry-After` (or the body's `retry_after`), and on a 429 the
/// reset of an exhausted rate-limit window too, whichever is longer — a retry before either
/// would only be refused again.
fn server_wait(status: StatusCode, error: &ApiError, info: &RateLimitInfo) -> Option<ServerWait> {
    let asked = match (info.retry_after, error.retry_after) {
        (Some(wait), _) => Some(ServerWait {
            wait,
            source: "Retry-After",
        }),
        (None, Some(wait)) => Some(ServerWait {
            wait,
            source: "retry_after in the body",
        }),
        (None, None) => None,
    };
    let reset = info
        .exhausted_for
        .filter(|_| status == StatusCode::TOO_MANY_REQUESTS)
        .map(|wait| ServerWait {
            wait,
            source: "the rate-limit reset",
        });
    match (asked, reset) {
        (Some(asked), Some(reset)) if reset.wait > asked.wait => Some(reset),
        (asked, reset) => asked.or(reset),
    }
}

/// Pacing's key: the origin and path (the query is not part of a route).
fn endpoint(url: &Url) -> String {
    format!("{}{}", url.origin().ascii_serialization(), url.path())
}

/// The headers `sluice call` shows for an attempt.
fn rate_limit_headers(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .filter(|(name, _)| {
            let name = name.as_str();
            name.starts_with("x-ratelimit-")
                || name.starts_with("ratelimit")
                || name == "retry-after"
        })
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                value.to_str().unwrap_or("<not text>").to_owned(),
            )
        })
        .collect()
}

fn describe(failure: &reqwest::Error) -> String {
    let kind = if failure.is_connect() {
        "could not connect"
    } else if failure.is_timeout() {
        "timed out"
    } else {
        "failed"
    };
    let mut text = kind.to_owned();
    let mut source: Option<&dyn std::error::Error> = std::error::Error::source(failure);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn seconds(wait: Duration) -> String {
    format!("{}s", wait.as_secs_f64())
}
