//! The admin API and `sluice keys` against the real server process: keys created, listed,
//! rotated and revoked from the command line while the server holds the store; usage, overrides
//! and metrics over HTTP behind the admin token; and neither a key secret nor a terminal escape
//! code in the server's log file.

mod support;

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use support::{Server, minute};

fn policy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/pixelpatrol/policy.yaml")
}

fn client() -> reqwest::Client {
    support::client(Duration::from_secs(10))
}

async fn start(data: &Path, log: &Path, upstream: SocketAddr) -> Server {
    let (policy, upstream) = (policy(), format!("http://{upstream}"));
    let args = [
        OsStr::new("--policy"),
        policy.as_os_str(),
        OsStr::new("--store"),
        data.as_os_str(),
        OsStr::new("--upstream"),
        OsStr::new(&upstream),
    ];
    Server::start(args, Some(log)).await
}

/// `sluice keys ARGS…` against the store `data`; its standard output.
fn keys(data: &Path, args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("keys")
        .args(args)
        .arg("--policy")
        .arg(policy())
        .arg("--store")
        .arg(data)
        .output()
        .expect("the binary runs");
    assert!(
        output.status.success(),
        "sluice keys {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8")
}

async fn moderate(server: &Server, secret: &str) -> u16 {
    client()
        .post(format!("http://{}/submit-media", server.listen))
        .bearer_auth(secret)
        .header("content-type", "application/json")
        .body(r#"{"body":"hello"}"#)
        .send()
        .await
        .expect("the gateway answers")
        .status()
        .as_u16()
}

async fn admin(
    server: &Server,
    token: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = client()
        .request(
            method.parse().expect("a method"),
            format!("http://{}{path}", server.admin),
        )
        .bearer_auth(token);
    if let Some(body) = body {
        request = request.body(body.to_string());
    }
    let response = request.send().await.expect("the admin API answers");
    let status = response.status().as_u16();
    let text = response.text().await.expect("a body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// What the client saw of its moderations: admitted, and limited with a 429.
#[derive(Default)]
struct Tally {
    allowed: u64,
    limited: u64,
}

impl Tally {
    /// Counts a response's status, and gives it back.
    fn of(&mut self, status: u16) -> u16 {
        match status {
            200 => self.allowed += 1,
            429 => self.limited += 1,
            _ => {}
        }
        status
    }
}

/// Team `t1`'s usage through the admin API, with `token`: the status and the body.
async fn team_usage(server: &Server, token: &str) -> (u16, Value) {
    admin(
        server,
        token,
        "GET",
        "/v1/usage?identity=team&value=t1",
        None,
    )
    .await
}

/// Resets every counter of site `s1` through the admin API.
async fn reset_site(server: &Server, token: &str) {
    let reset = json!({"identity": "site", "value": "s1"});
    let (status, body) = admin(server, token, "POST", "/v1/reset", Some(reset)).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_usage_overrides_and_metrics_through_the_running_server() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let data = dir.path().join("data");
    let echo = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let upstream = echo.local_addr().expect("an address");
    tokio::spawn(sluice_gateway::serve_echo(echo, std::future::pending()));
    let log = data.with_extension("log");
    let server = start(&data, &log, upstream).await;
    let token = serde_json::from_slice::<Value>(
        &std::fs::read(data.join("admin.json")).expect("the admin file"),
    )
    .expect("json")["token"]
        .as_str()
        .expect("a token")
        .to_owned();

    // The CLI goes through the admin API while the server holds the store.
    let secret = keys(
        &data,
        &[
            "create", "--owner", "ada", "--team", "t1", "--site", "s1", "--plan", "pro",
        ],
    );
    let secret = secret.trim().to_owned();
    assert!(secret.starts_with("sk_live_"), "{secret}");
    let mut seen = Tally::default();
    for _ in 0..3 {
        assert_eq!(seen.of(moderate(&server, &secret).await), 200);
    }
    let listed = keys(&data, &["list"]);
    assert!(
        listed.contains("ada") && listed.contains("active"),
        "{listed}"
    );
    assert!(!listed.contains(&secret), "a listing never shows a secret");
    let id = listed
        .split_whitespace()
        .find(|word| word.starts_with("key_"))
        .expect("a key id")
        .to_owned();

    // Usage, behind the token.
    let (status, _) = team_usage(&server, "wrong").await;
    assert_eq!(status, 401);
    let (status, usage) = team_usage(&server, &token).await;
    assert_eq!(status, 200, "{usage}");
    assert_eq!(usage["usage"][0]["name"], "moderations");
    assert_eq!(usage["usage"][0]["used"], 3);
    assert_eq!(usage["usage"][0]["limit"], 50_000);

    // An override takes effect on the next request, counting what was counted: three requests
    // and then one more fill 4 per minute, and the fifth is limited. `submit-media` is a fixed
    // window, and an attempt that straddles a minute boundary counts in two, so it runs again
    // from a reset counter without the override, rather than waiting for the next minute.
    let mut within_one_minute = false;
    for attempt in 0..3 {
        let started = minute();
        if attempt > 0 {
            let query = "/v1/overrides?identity=site&value=s1";
            let (status, body) = admin(&server, &token, "DELETE", query, None).await;
            assert_eq!(status, 204, "{body}");
            reset_site(&server, &token).await;
            for _ in 0..3 {
                assert_eq!(seen.of(moderate(&server, &secret).await), 200);
            }
        }
        let (status, body) = admin(
            &server,
            &token,
            "PUT",
            "/v1/overrides",
            Some(
                json!({"identity": "site", "value": "s1", "limits": {"submit-media": "4 per 1m"}}),
            ),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let fourth = seen.of(moderate(&server, &secret).await);
        let fifth = seen.of(moderate(&server, &secret).await);
        if minute() == started {
            assert_eq!(
                (fourth, fifth),
                (200, 429),
                "4 per minute, 3 counted before"
            );
            within_one_minute = true;
            break;
        }
    }
    assert!(
        within_one_minute,
        "three attempts in a row straddled a minute"
    );
    let (status, body) = admin(
        &server,
        &token,
        "PUT",
        "/v1/overrides",
        Some(json!({"identity": "planet"})),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    reset_site(&server, &token).await;
    assert_eq!(seen.of(moderate(&server, &secret).await), 200);
    let (status, usage) = team_usage(&server, &token).await;
    assert_eq!(status, 200, "{usage}");
    assert_eq!(
        usage["usage"][0]["used"], seen.allowed,
        "the quota counts what was admitted"
    );

    // Metrics: decisions by route and outcome, denials by limit, quota units, store latency.
    let (status, metrics) = admin(&server, &token, "GET", "/metrics", None).await;
    assert_eq!(status, 200);
    let metrics = metrics.as_str().expect("text").to_owned();
    let Tally { allowed, limited } = seen;
    for expected in [
        format!(
            r#"sluice_decisions_total{{route="POST /submit-media",outcome="allowed"}} {allowed}"#
        ),
        format!(
            r#"sluice_decisions_total{{route="POST /submit-media",outcome="rate_limited"}} {limited}"#
        ),
        format!(r#"sluice_limit_denials_total{{limit="submit-media"}} {limited}"#),
        format!(r#"sluice_quota_units_total{{quota="moderations"}} {allowed}"#),
        "sluice_store_apply_seconds_bucket".to_owned(),
    ] {
        assert!(
            metrics.contains(&expected),
            "missing {expected} in\n{metrics}"
        );
    }

    // Rotation: both secrets work during the grace period; revocation stops the new one.
    let rotated = keys(&data, &["rotate", &id, "--grace", "1h"])
        .trim()
        .to_owned();
    assert_ne!(rotated, secret);
    assert_eq!(moderate(&server, &secret).await, 200);
    assert_eq!(moderate(&server, &rotated).await, 200);
    let new_id = keys(&data, &["list"])
        .split_whitespace()
        .filter(|word| word.starts_with("key_"))
        .find(|word| *word != id)
        .expect("the new key's id")
        .to_owned();
    keys(&data, &["revoke", &new_id]);
    assert_eq!(moderate(&server, &rotated).await, 401);
    keys(&data, &["suspend", &id]);
    let listed = keys(&data, &["list"]);
    assert!(
        listed.contains("suspended") && listed.contains("revoked"),
        "{listed}"
    );

    let (status, openapi) = admin(&server, "", "GET", "/openapi.json", None).await;
    assert_eq!(status, 200);
    assert_eq!(openapi["openapi"], "3.1.0");

    drop(server);
    let log = std::fs::read_to_string(log).expect("the log");
    assert!(log.contains("POST"), "the log has request lines:\n{log}");
    // A log file is read by people and tools, not a terminal: no colour escape codes.
    assert!(
        !log.contains('\u{1b}'),
        "terminal escape codes in a log file:\n{log}"
    );
    for secret in [&secret, &rotated, &token] {
        assert!(
            !log.contains(secret.as_str()),
            "a secret leaked into the log"
        );
    }
}
