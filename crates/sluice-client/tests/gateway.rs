//! The client against the real sluice gateway on loopback, in virtual time: 429 then success,
//! `Retry-After` to the instant, what is never retried, deadlines, the retry budget, pacing,
//! idempotency, timeouts, redaction in captured logs, and a herd of clients spreading out.

mod support;

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use serde_json::{Value, json};
use sluice_client::{
    Client, Error, GiveUp, Jitter, Next, Outcome, REDACTED, Response, RetryBudget, RetryPolicy,
};
use sluice_test_support::CapturedLogs;
use support::{ALICE, Bench, FREE, START, secs};

fn upload(user: &str) -> Value {
    json!({
        "apiKey": ALICE,
        "userId": user,
        "projectId": "proj_1",
        "fileUrl": "https://downloads.example.com/build.zip",
    })
}

fn client(bench: &Bench, policy: RetryPolicy) -> Client {
    Client::builder()
        .policy(policy)
        .timer(Arc::new(bench.time.clone()))
        .seed(7)
        .build()
        .expect("a client")
}

fn no_jitter() -> RetryPolicy {
    RetryPolicy {
        jitter: Jitter::None,
        ..RetryPolicy::default()
    }
}

fn waits(attempts: &[sluice_client::Attempt]) -> Vec<Duration> {
    attempts
        .iter()
        .filter_map(|attempt| match &attempt.next {
            Next::Retry { wait, .. } => Some(*wait),
            _ => None,
        })
        .collect()
}

fn statuses(attempts: &[sluice_client::Attempt]) -> Vec<String> {
    attempts
        .iter()
        .map(|attempt| attempt.outcome.to_string())
        .collect()
}

#[tokio::test]
async fn a_429_is_retried_exactly_when_retry_after_says_and_then_succeeds() {
    let bench = Bench::start("streampixel", |text| text).await;
    // Pacing off, so that the second upload draws the 429 instead of waiting for it.
    let client = Client::builder()
        .policy(no_jitter())
        .pacing(false)
        .timer(Arc::new(bench.time.clone()))
        .build()
        .expect("a client");
    let url = bench.url("/projects/upload-file");
    let first = {
        let call = client.post(&url).json(&upload("alice"));
        bench.send(call).await.expect("the first upload")
    };
    assert_eq!(first.status, StatusCode::OK);

    let second = {
        let call = client.post(&url).json(&upload("alice"));
        bench.send(call).await.expect("admitted on the retry")
    };
    assert_eq!(second.status, StatusCode::OK);
    assert_eq!(
        statuses(&second.attempts),
        ["429 Too Many Requests", "200 OK"]
    );
    let first_attempt = &second.attempts[0];
    assert_eq!(
        first_attempt.rate_limit.retry_after,
        Some(Duration::from_secs(120))
    );
    assert_eq!(waits(&second.attempts), [Duration::from_secs(120)]);
    assert_eq!(bench.time.slept(), [Duration::from_secs(120)]);
    assert_eq!(bench.time.since_start(), Duration::from_secs(120));
    assert_eq!(
        bench.seen("/projects/upload-file"),
        2,
        "the 429 never reached it"
    );
}

#[tokio::test]
async fn no_retry_comes_before_retry_after_whatever_the_jitter() {
    let bench = Bench::start("streampixel", |text| text).await;
    for (n, jitter) in [
        Jitter::Bounded(Duration::from_millis(250)),
        Jitter::Full,
        Jitter::Decorrelated,
    ]
    .into_iter()
    .enumerate()
    {
        let user = format!("user-{n}");
        let client = Client::builder()
            .policy(RetryPolicy {
                jitter,
                ..RetryPolicy::default()
            })
            .pacing(false)
            .timer(Arc::new(bench.time.clone()))
            .build()
            .expect("a client");
        let url = bench.url("/projects/upload-file");
        for expected in [vec!["200 OK"], vec!["429 Too Many Requests", "200 OK"]] {
            let call = client.post(&url).json(&upload(&user));
            let response = bench.send(call).await.expect("admitted");
            assert_eq!(statuses(&response.attempts), expected);
        }
        let waited = *bench.time.slept().last().expect("a wait");
        assert!(
            waited >= Duration::from_secs(120) && waited < Duration::from_secs(123),
            "{jitter:?}: {waited:?}"
        );
    }
}

#[tokio::test]
async fn a_400_and_a_401_are_never_retried_and_say_why() {
    let bench = Bench::start("streampixel", |text| text).await;
    let client = client(&bench, RetryPolicy::streampixel());
    let url = bench.url("/projects/upload-file");

    let mut missing = upload("alice");
    missing.as_object_mut().expect("object").remove("projectId");
    let call = client.post(&url).json(&missing);
    let error = bench.send(call).await.expect_err("a 400");
    assert_eq!(error.status(), Some(StatusCode::BAD_REQUEST));
    assert_eq!(error.message(), Some("Missing required field: projectId"));
    assert_eq!(error.reason(), Some(GiveUp::NotRetryable));
    assert_eq!(error.attempts().len(), 1);
    assert!(error.request_id().is_some(), "the gateway's X-Request-Id");

    let mut wrong_key = upload("alice");
    wrong_key["apiKey"] = "sp_live_nobody".into();
    let call = client.post(&url).json(&wrong_key);
    let error = bench.send(call).await.expect_err("a 401");
    assert_eq!(error.status(), Some(StatusCode::UNAUTHORIZED));
    assert_eq!(error.message(), Some("Unauthorized: Invalid API Key"));
    assert_eq!(error.attempts().len(), 1);
    assert!(bench.time.slept().is_empty());
}

#[tokio::test]
async fn the_moderation_limit_is_a_typed_403_that_is_not_retried() {
    let bench = Bench::start("pixelpatrol", |text| {
        text.replacen("amount: 1000\n", "amount: 1\n", 1)
    })
    .await;
    let client = client(&bench, RetryPolicy::pixel_patrol());
    let url = bench.url("/submit-media");
    let submit = || {
        client
            .post(&url)
            .header("authorization", FREE)
            .json(&json!({"body": "hello"}))
    };
    let first = bench.send(submit()).await.expect("the one moderation");
    assert_eq!(first.status, StatusCode::OK);
    let error = bench.send(submit()).await.expect_err("over the quota");
    assert_eq!(error.status(), Some(StatusCode::FORBIDDEN));
    assert_eq!(error.kind(), Some("moderation_limit"));
    assert_eq!(
        error.api().and_then(|api| api.title.as_deref()),
        Some("Moderation limit exceeded")
    );
    assert_eq!(error.attempts().len(), 1);
}

#[tokio::test]
async fn a_wait_past_the_deadline_returns_at_once_with_the_servers_wait() {
    let bench = Bench::start("streampixel", |text| text).await;
    let client = Client::builder()
        .pacing(false)
        .timer(Arc::new(bench.time.clone()))
        .build()
        .expect("a client");
    let url = bench.url("/projects/upload-file");
    let call = client.post(&url).json(&upload("alice"));
    bench.send(call).await.expect("the first upload");

    let call = client
        .post(&url)
        .json(&upload("alice"))
        .deadline(Duration::from_secs(30));
    let error = bench.send(call).await.expect_err("too long a wait");
    assert_eq!(error.status(), Some(StatusCode::TOO_MANY_REQUESTS));
    let Some(GiveUp::Deadline { wait }) = error.reason() else {
        panic!("not a deadline: {error}");
    };
    assert!(wait >= Duration::from_secs(120), "{wait:?}");
    assert_eq!(error.retry_after(), Some(wait));
    assert_eq!(
        error.message(),
        Some("Rate limit exceeded. Try again in 2 minutes.")
    );
    assert!(bench.time.slept().is_empty(), "it did not wait at all");
    assert_eq!(bench.time.since_start(), Duration::ZERO);
}

#[tokio::test]
async fn retries_stop_when_the_shared_budget_is_spent() {
    let bench = Bench::start("streampixel", |text| text).await;
    let client = Client::builder()
        .policy(no_jitter())
        .budget(Some(RetryBudget {
            ratio: 0.0,
            per_second: 0.0,
            max: 2.0,
        }))
        .timer(Arc::new(bench.time.clone()))
        .build()
        .expect("a client");
    let clone = client.clone();
    let url = bench.url("/flaky/100/builds");
    let call = client
        .post(&url)
        .header("idempotency-key", "k1")
        .json(&upload("alice"));
    let error = bench.send(call).await.expect_err("always down");
    assert_eq!(error.status(), Some(StatusCode::SERVICE_UNAVAILABLE));
    assert_eq!(error.reason(), Some(GiveUp::Budget));
    assert_eq!(
        error.attempts().len(),
        3,
        "two retries, then the budget is spent"
    );

    let call = clone
        .post(&url)
        .header("idempotency-key", "k2")
        .json(&upload("alice"));
    let error = bench.send(call).await.expect_err("still down");
    assert_eq!(error.reason(), Some(GiveUp::Budget));
    assert_eq!(
        error.attempts().len(),
        1,
        "the clone shares the spent budget"
    );
    assert_eq!(bench.seen("/flaky/100/builds"), 4);
}

#[tokio::test]
async fn pacing_waits_for_the_reset_instead_of_drawing_a_429() {
    let bench = Bench::start("pixelpatrol", |text| {
        text.replacen("rate: 1000 per 1m", "rate: 2 per 1m", 1)
    })
    .await;
    let client = client(&bench, RetryPolicy::pixel_patrol());
    let other = client.clone();
    let url = bench.url("/submit-media");
    for _ in 0..2 {
        let call = client
            .post(&url)
            .header("authorization", FREE)
            .json(&json!({"body": "hello"}));
        let response = bench.send(call).await.expect("admitted");
        assert_eq!(response.attempts[0].paced, Duration::ZERO);
    }
    // The second answer said X-RateLimit-Remaining: 0 until the next minute.
    bench.time.advance(Duration::from_secs(15));
    let call = other
        .post(&url)
        .header("authorization", FREE)
        .json(&json!({"body": "hello"}))
        .deadline(Duration::from_secs(10));
    let error = bench.send(call).await.expect_err("too long a wait");
    assert!(
        matches!(error, Error::Paced { wait, .. } if wait == Duration::from_secs(45)),
        "{error}"
    );
    assert_eq!(bench.seen("/submit-media"), 2, "nothing was sent");
    let call = other
        .post(&url)
        .header("authorization", FREE)
        .json(&json!({"body": "hello"}));
    let response = bench.send(call).await.expect("admitted");
    assert_eq!(statuses(&response.attempts), ["200 OK"], "no 429 drawn");
    assert_eq!(response.attempts[0].paced, Duration::from_secs(45));
    assert_eq!(bench.time.since_start(), Duration::from_secs(60));
    assert_eq!(response.rate_limit.remaining, Some(1));
}

#[tokio::test]
async fn a_5xx_is_retried_only_when_the_call_is_idempotent() {
    let bench = Bench::start("streampixel", |text| text).await;
    let client = client(&bench, RetryPolicy::streampixel());

    let url = bench.url("/flaky/2/with-key");
    let call = client
        .post(&url)
        .header("idempotency-key", "build-42")
        .json(&upload("alice"));
    let response = bench.send(call).await.expect("third time lucky");
    assert_eq!(
        statuses(&response.attempts),
        [
            "503 Service Unavailable",
            "503 Service Unavailable",
            "200 OK"
        ]
    );
    let waits = waits(&response.attempts);
    assert!(
        (secs(waits[0]) - 1.0).abs() <= 0.25 && (secs(waits[1]) - 2.0).abs() <= 0.25,
        "1 s then 2 s, ± 250 ms: {waits:?}"
    );

    let url = bench.url("/flaky/2/bare");
    let call = client.post(&url).json(&upload("alice"));
    let error = bench.send(call).await.expect_err("not repeated");
    assert_eq!(error.status(), Some(StatusCode::SERVICE_UNAVAILABLE));
    assert_eq!(error.message(), Some("Internal server error"));
    assert_eq!(error.reason(), Some(GiveUp::NotIdempotent));
    assert_eq!(bench.seen("/flaky/2/bare"), 1);
}

#[tokio::test]
async fn a_timeout_is_retried_only_when_the_call_is_idempotent() {
    let bench = Bench::start("streampixel", |text| text).await;
    let client = client(
        &bench,
        RetryPolicy {
            max_attempts: 2,
            attempt_timeout: Some(Duration::from_millis(150)),
            ..no_jitter()
        },
    );
    let call = client.post(&bench.url("/hang/post")).json(&upload("alice"));
    let error = bench.send(call).await.expect_err("a timeout");
    assert!(matches!(error, Error::Transport { .. }), "{error}");
    assert_eq!(error.reason(), Some(GiveUp::NotIdempotent));
    assert!(
        matches!(&error.attempts()[0].outcome, Outcome::Failed(failure) if failure.starts_with("timed out")),
        "{:?}",
        error.attempts()
    );

    let call = client
        .post(&bench.url("/hang/marked"))
        .json(&upload("alice"))
        .idempotent(true);
    let error = bench.send(call).await.expect_err("two timeouts");
    assert_eq!(error.reason(), Some(GiveUp::Attempts));
    assert_eq!(error.attempts().len(), 2);
}

#[tokio::test]
async fn a_refused_connection_is_retried_even_for_a_post() {
    let bench = Bench::start("streampixel", |text| text).await;
    let nothing = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = nothing.local_addr().expect("address");
    drop(nothing);
    let client = client(
        &bench,
        RetryPolicy {
            max_attempts: 3,
            ..no_jitter()
        },
    );
    let call = client
        .post(&format!("http://{address}/projects/upload-file"))
        .json(&upload("alice"));
    let error = bench.send(call).await.expect_err("nobody there");
    assert_eq!(error.reason(), Some(GiveUp::Attempts));
    assert_eq!(
        waits(error.attempts()),
        [Duration::from_secs(1), Duration::from_secs(2)]
    );
    assert!(
        error
            .attempts()
            .iter()
            .all(|attempt| matches!(&attempt.outcome, Outcome::Failed(f) if f.starts_with("could not connect"))),
        "{:?}",
        error.attempts()
    );
}

#[tokio::test]
async fn api_keys_never_reach_the_logs() {
    let (captured, _guard) = CapturedLogs::start();

    let bench = Bench::start("streampixel", |text| text).await;
    let client = client(&bench, RetryPolicy::streampixel());
    // The key in the body, in the query and in a header; a bare POST that fails is logged whole.
    let url = bench.url(&format!("/flaky/1/logged?apiKey={ALICE}&page=2"));
    let call = client
        .post(&url)
        .header("x-api-key", ALICE)
        .json(&upload("alice"));
    let error = call.send().await.expect_err("a 503, not repeated");
    assert_eq!(error.reason(), Some(GiveUp::NotIdempotent));
    // And a 429 that is retried.
    let call = client
        .post(&bench.url("/projects/upload-file"))
        .json(&upload("bob"));
    call.send().await.expect("bob's upload");
    let call = Client::builder()
        .pacing(false)
        .policy(RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        })
        .build()
        .expect("a client")
        .post(&bench.url("/projects/upload-file"))
        .json(&upload("bob"));
    call.send().await.expect_err("bob's second upload");

    let logs = captured.text();
    assert!(!logs.contains(ALICE), "a key leaked:\n{logs}");
    assert!(logs.contains("call failed"), "{logs}");
    assert!(
        logs.contains(r#""userId":"alice""#),
        "the body was logged:\n{logs}"
    );
    assert!(
        logs.contains(&format!(r#""apiKey":"{REDACTED}""#)),
        "{logs}"
    );
    assert!(logs.contains("x-api-key: [redacted]"), "{logs}");
    assert!(logs.contains("apiKey=%5Bredacted%5D&page=2"), "{logs}");
    assert!(logs.contains("error answer"), "the 429 was logged:\n{logs}");
}

/// A call, boxed for [`support::VirtualTime::run`].
type Task = std::pin::Pin<Box<dyn Future<Output = Result<Response, Error>> + Send>>;

/// One Pixel Patrol submission by `client`, boxed for the herd.
fn submit(client: &Client, url: &str) -> Task {
    Box::pin(
        client
            .post(url)
            .header("authorization", FREE)
            .json(&json!({"body": "x"}))
            .send(),
    )
}

/// What one jitter mode does to a herd: each client's wait after the shared 429.
async fn herd(jitter: Jitter) -> Vec<Duration> {
    const CLIENTS: usize = 100;
    let bench = Bench::start("pixelpatrol", |text| {
        text.replacen("rate: 1000 per 1m", "rate: 100 per 1m", 1)
    })
    .await;
    let url = bench.url("/submit-media");
    let exhaust = Client::builder()
        .timer(Arc::new(bench.time.clone()))
        .build()
        .expect("a client");
    let calls: Vec<Task> = (0..CLIENTS).map(|_| submit(&exhaust, &url)).collect();
    for response in bench.time.run(calls).await {
        assert_eq!(response.expect("within the limit").status, StatusCode::OK);
    }
    // The minute's window is spent at 10:15:00; now the herd arrives, all at that instant.
    let policy = RetryPolicy {
        jitter,
        ..RetryPolicy::default()
    };
    let calls: Vec<Task> = (0..CLIENTS)
        .map(|n| {
            let client = Client::builder()
                .policy(policy)
                .timer(Arc::new(bench.time.clone()))
                .seed(n as u64)
                .build()
                .expect("a client");
            submit(&client, &url)
        })
        .collect();
    let mut retries = Vec::new();
    for response in bench.time.run(calls).await {
        let response = response.expect("admitted on the retry");
        assert_eq!(
            statuses(&response.attempts),
            ["429 Too Many Requests", "200 OK"]
        );
        let asked = response.attempts[0]
            .rate_limit
            .retry_after
            .expect("Retry-After");
        assert_eq!(asked, Duration::from_secs(60));
        let wait = waits(&response.attempts)[0];
        assert!(
            wait >= asked,
            "{jitter:?}: a retry {wait:?} before Retry-After"
        );
        retries.push(wait - asked);
    }
    assert_eq!(
        bench.time.now(),
        START.saturating_add(*retries.iter().max().expect("some") + Duration::from_secs(60))
    );
    retries.sort();
    retries
}

fn report(jitter: Jitter, retries: &[Duration]) -> (f64, usize) {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let at = |q: f64| ms(retries[((retries.len() - 1) as f64 * q).round() as usize]);
    let spread = ms(retries[retries.len() - 1]) - ms(retries[0]);
    // The most retries landing in any one 100 ms slot.
    let mut most = 0;
    for (i, first) in retries.iter().enumerate() {
        let within = retries[i..]
            .iter()
            .take_while(|later| **later - *first < Duration::from_millis(100))
            .count();
        most = most.max(within);
    }
    eprintln!(
        "herd of {} ({:>12}): retry after Retry-After + min {:7.1} ms, p10 {:7.1}, p50 {:7.1}, p90 {:7.1}, max {:7.1}; most in one 100 ms slot: {most}",
        retries.len(),
        jitter.name(),
        at(0.0),
        at(0.1),
        at(0.5),
        at(0.9),
        at(1.0),
    );
    (spread, most)
}

#[tokio::test]
async fn a_herd_told_the_same_retry_after_spreads_out_and_never_comes_early() {
    let none = herd(Jitter::None).await;
    let (spread, most) = report(Jitter::None, &none);
    assert_eq!(
        (spread, most),
        (0.0, 100),
        "without jitter the herd comes back as one"
    );

    let bounded = Jitter::Bounded(Duration::from_millis(250));
    let (spread, most) = report(bounded, &herd(bounded).await);
    assert!(
        spread > 400.0 && spread <= 500.0 && most < 40,
        "{spread} {most}"
    );

    let (spread, most) = report(Jitter::Full, &herd(Jitter::Full).await);
    assert!(
        spread > 800.0 && spread <= 1000.0 && most < 25,
        "{spread} {most}"
    );

    let (spread, most) = report(Jitter::Decorrelated, &herd(Jitter::Decorrelated).await);
    assert!(
        spread > 1600.0 && spread <= 2000.0 && most < 15,
        "{spread} {most}"
    );
}
