//! When Redis goes away: the real server on a real `redis-server` that the test stops in the
//! middle of a load and starts again. A route that fails open admits, one that fails closed
//! answers 503 in the policy's envelope, one that falls back to local counters divides its
//! limit among the live gateways, no request waits longer than the store's timeout, readiness
//! says degraded, and everything recovers on its own when Redis is back.

mod support;

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use sluice_test_support::RedisServer;
use support::Server;

const POLICY: &str = r#"
service:
  name: Failure test
identities:
  user:
    from: header
    name: x-user
routes:
  - match: GET /open
    on_store_failure: open
    limits:
      - rate: 1000000 per 1m
        per: user
  - match: GET /closed
    limits:
      - rate: 1000000 per 1m
        per: user
  - match: GET /local
    on_store_failure: local
    limits:
      - rate: 10 per 1y
        algorithm: fixed_window
        per: user
"#;

/// A request to the gateway fails the test if it takes more than 2 s: a dead Redis must not
/// pile requests up (the store's timeout is 250 ms, then its breaker answers at once).
fn client() -> reqwest::Client {
    support::client(Duration::from_secs(2))
}

/// One decision-API check: (allowed, the status the gateway would answer).
async fn check(client: &reqwest::Client, server: SocketAddr, path: &str) -> (bool, u64, String) {
    let response = client
        .post(format!("http://{server}/v1/check"))
        .header("content-type", "application/json")
        .body(
            serde_json::json!({"method": "GET", "path": path, "headers": {"x-user": "u"}})
                .to_string(),
        )
        .send()
        .await
        .expect("the gateway answers even when Redis does not");
    assert_eq!(response.status(), 200);
    let answer: serde_json::Value =
        serde_json::from_slice(&response.bytes().await.expect("a body")).expect("JSON");
    (
        answer["allowed"] == true,
        answer["status"].as_u64().unwrap_or_default(),
        answer["body"].to_string(),
    )
}

async fn readiness(server: SocketAddr) -> String {
    client()
        .get(format!("http://{server}/readyz"))
        .send()
        .await
        .expect("readiness answers")
        .text()
        .await
        .expect("a body")
}

/// Polls `condition` every 50 ms, up to 200 times (10 s).
async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..200 {
        if condition().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what} did not happen within 10 s");
}

/// `count` gateways enforcing [`POLICY`] on `redis`, with the admin API on [`TOKEN`]; the
/// directory holding the policy lives as long as they do.
async fn gateways(redis: &RedisServer, count: usize) -> (tempfile::TempDir, Vec<Server>) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, POLICY).expect("the policy is written");
    let url = redis.url();
    let args = [
        OsStr::new("--policy"),
        policy.as_os_str(),
        OsStr::new("--store"),
        OsStr::new(&url),
        OsStr::new("--admin-token"),
        OsStr::new(TOKEN),
    ];
    let mut servers = Vec::new();
    for _ in 0..count {
        servers.push(Server::start(args, None).await);
    }
    (dir, servers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_fail_open_or_closed_while_redis_is_down_and_recover() {
    let mut redis = RedisServer::start();
    let (_dir, servers) = gateways(&redis, 1).await;
    let address = servers[0].listen;
    let web = client();
    assert!(check(&web, address, "/open").await.0);
    assert!(check(&web, address, "/closed").await.0);
    assert_eq!(readiness(address).await, "ready\n");

    // A load runs throughout: 16 connections alternating between the routes.
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let mut load = Vec::new();
    for connection in 0..16 {
        let (stop, answered) = (Arc::clone(&stop), Arc::clone(&answered));
        load.push(tokio::spawn(async move {
            let web = client();
            let path = if connection % 2 == 0 {
                "/open"
            } else {
                "/closed"
            };
            let mut answers = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let (allowed, status, _) = check(&web, address, path).await;
                assert!(
                    allowed || (path == "/closed" && status == 503),
                    "{path}: allowed {allowed}, status {status}"
                );
                answers += 1;
                answered.fetch_add(1, Ordering::Relaxed);
            }
            answers
        }));
    }
    eventually("the load running", || async {
        answered.load(Ordering::Relaxed) >= 100
    })
    .await;

    redis.stop();
    eventually("the closed route answering 503", || async {
        check(&web, address, "/closed").await.1 == 503
    })
    .await;
    let (allowed, status, body) = check(&web, address, "/closed").await;
    assert!(!allowed);
    assert_eq!(status, 503);
    assert!(body.contains("message"), "the policy's envelope: {body}");
    assert!(
        check(&web, address, "/open").await.0,
        "the open route admits"
    );
    assert!(readiness(address).await.starts_with("degraded"));

    redis.restart();
    eventually("the closed route admitting again", || async {
        check(&web, address, "/closed").await.0
    })
    .await;
    eventually("readiness back to ready", || async {
        readiness(address).await == "ready\n"
    })
    .await;

    stop.store(true, Ordering::Relaxed);
    let mut answers = 0;
    for task in load {
        answers += task.await.expect("the load's task finished");
    }
    assert!(answers > 100, "the load kept being answered: {answers}");
}

/// What the admin API's metrics say `name` is.
async fn metric(server: &Server, name: &str) -> Option<f64> {
    let text = client()
        .get(format!("http://{}/metrics", server.admin))
        .bearer_auth(TOKEN)
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
}

const TOKEN: &str = "failure-test-admin-token";

/// Two gateways announce themselves through Redis; when it goes away, a route that falls back
/// to local counters gives each gateway half of its limit, so the two together admit exactly
/// the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_counters_divide_the_limit_among_the_live_gateways() {
    let mut redis = RedisServer::start();
    let (_dir, servers) = gateways(&redis, 2).await;
    for server in &servers {
        eventually("both gateways counted as live", || async {
            metric(server, "sluice_store_instances").await == Some(2.0)
        })
        .await;
    }
    let web = client();
    assert!(
        check(&web, servers[0].listen, "/local").await.0,
        "shared counting"
    );

    redis.stop();
    eventually("the store failing", || async {
        check(&web, servers[0].listen, "/closed").await.1 == 503
    })
    .await;
    for server in &servers {
        let mut admitted = 0;
        for _ in 0..8 {
            let (allowed, status, _) = check(&web, server.listen, "/local").await;
            assert!(
                allowed || status == 429,
                "a local denial is a 429: {status}"
            );
            admitted += usize::from(allowed);
        }
        assert_eq!(admitted, 5, "10 per year, shared by 2 gateways");
    }

    redis.restart();
    eventually("shared counting again", || async {
        check(&web, servers[1].listen, "/closed").await.0
    })
    .await;
    let mut admitted = 0;
    for _ in 0..12 {
        admitted += usize::from(check(&web, servers[1].listen, "/local").await.0);
    }
    assert_eq!(
        admitted, 10,
        "the restarted Redis (no persistence) starts from zero"
    );
}
