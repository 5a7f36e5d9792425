//! Exact limits across a fleet: three `sluice serve` processes share one Redis server, and then
//! a 3-primary Redis Cluster, and 200 concurrent connections spread over them are admitted
//! exactly as often as the policy allows — 1,000 of a 1,000-per-minute limit, 1 of a
//! 1-per-2-minutes limit — however the requests interleave across processes.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sluice_core::{Clock, SystemClock};
use sluice_test_support::{RedisCluster, RedisServer};

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

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("an address")
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(1)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("a client")
}

async fn start(policy: &Path, store: &str) -> (Server, SocketAddr) {
    let listen = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("serve")
        .arg("--policy")
        .arg(policy)
        .args(["--store", store])
        .args(["--listen", &listen.to_string()])
        .args(["--threads", "1"])
        .args(["--admin-listen", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the binary runs");
    let server = Server(child);
    let probe = client();
    for _ in 0..500 {
        if probe
            .get(format!("http://{listen}/healthz"))
            .send()
            .await
            .is_ok()
        {
            return (server, listen);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the server did not come up on {listen}");
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

/// A fixed window admits exactly its capacity only if the load does not straddle a window
/// boundary; the load takes a second or two, so it starts with 20 s of the minute ahead.
async fn clear_of_a_minute_boundary() {
    let now = SystemClock::new().now().as_nanos();
    let into_minute = Duration::from_nanos(now % 60_000_000_000);
    if into_minute > Duration::from_secs(40) {
        tokio::time::sleep(Duration::from_secs(60) - into_minute).await;
    }
}

async fn fleet_is_exact(store: &str) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, POLICY).expect("the policy is written");
    let mut servers = Vec::new();
    let mut addresses = Vec::new();
    for _ in 0..PROCESSES {
        let (server, address) = start(&policy, store).await;
        servers.push(server);
        addresses.push(address);
    }
    let run = std::process::id();

    clear_of_a_minute_boundary().await;
    let minute = admitted(&addresses, "GET", "/minute", &format!("m{run}"), 3_000).await;
    assert_eq!(
        minute, 1_000,
        "1,000 per minute across {PROCESSES} processes"
    );

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
