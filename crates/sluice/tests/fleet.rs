//! Exact limits across a fleet: three `sluice serve` processes share one Redis server, and then
//! a 3-primary Redis Cluster, and 200 concurrent connections spread over them are admitted
//! exactly as often as the policy allows — 1,000 of a 1,000-per-minute limit, 1 of a
//! 1-per-2-minutes limit — however the requests interleave across processes.

mod support;

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sluice_test_support::{RedisCluster, RedisServer};
use support::{Server, minute};

const POLICY: &str = r#"
service:
  name: Fleet test
identities:
  user:
    from: header
    name: x-user
routes:
  - match: GET /minute
    limits:
      - rate: 1000 per 1m
        per: user
        algorithm: fixed_window
  - match: POST /upload
    limits:
      - rate: 1 per 2m
        per: user
"#;

const PROCESSES: usize = 3;
const CONNECTIONS: usize = 200;

fn client() -> reqwest::Client {
    support::client(Duration::from_secs(10))
}

/// Sends `total` decision-API checks of `method path` for one user from 200 connections spread
/// over the servers, and counts the admitted ones.
async fn admitted(servers: &[SocketAddr], method: &str, path: &str, user: &str, total: u64) -> u64 {
    let sent = Arc::new(AtomicU64::new(0));
    let admitted = Arc::new(AtomicU64::new(0));
    let body = serde_json::json!({
        "method": method,
        "path": path,
        "headers": {"x-user": user},
    })
    .to_string();
    let mut tasks = Vec::new();
    for connection in 0..CONNECTIONS {
        let server = servers[connection % servers.len()];
        let (sent, admitted, body) = (Arc::clone(&sent), Arc::clone(&admitted), body.clone());
        tasks.push(tokio::spawn(async move {
            let client = client();
            while sent.fetch_add(1, Ordering::Relaxed) < total {
                let response = client
                    .post(format!("http://{server}/v1/check"))
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await
                    .expect("the server answers");
                assert_eq!(response.status(), 200);
                let answer: serde_json::Value =
                    serde_json::from_slice(&response.bytes().await.expect("a body"))
                        .expect("a JSON answer");
                if answer["allowed"] == true {
                    admitted.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for task in tasks {
        task.await.expect("the connection's task finished");
    }
    admitted.load(Ordering::Relaxed)
}

async fn fleet_is_exact(store: &str) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, POLICY).expect("the policy is written");
    let args = [
        OsStr::new("--policy"),
        policy.as_os_str(),
        OsStr::new("--store"),
        OsStr::new(store),
    ];
    let mut servers = Vec::new();
    for _ in 0..PROCESSES {
        servers.push(Server::start(args, None).await);
    }
    let addresses: Vec<SocketAddr> = servers.iter().map(|server| server.listen).collect();
    let run = std::process::id();

    // A fixed window admits exactly its capacity within one window; a load (a second or two)
    // that straddles a minute boundary counts in two, so it runs again, for a new user, in the
    // next minute rather than waiting for one.
    let mut within_one_minute = false;
    for attempt in 0..3 {
        let started = minute();
        let user = format!("m{run}-{attempt}");
        let count = admitted(&addresses, "GET", "/minute", &user, 3_000).await;
        if minute() == started {
            assert_eq!(
                count, 1_000,
                "1,000 per minute across {PROCESSES} processes"
            );
            within_one_minute = true;
            break;
        }
    }
    assert!(within_one_minute, "three loads in a row straddled a minute");

    let upload = admitted(&addresses, "POST", "/upload", &format!("u{run}"), 600).await;
    assert_eq!(upload, 1, "1 per 2 minutes across {PROCESSES} processes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_on_one_redis_admit_exactly_the_limit() {
    let redis = RedisServer::start();
    fleet_is_exact(&redis.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_on_a_redis_cluster_admit_exactly_the_limit() {
    let redis = RedisCluster::start();
    fleet_is_exact(&redis.url()).await;
}
