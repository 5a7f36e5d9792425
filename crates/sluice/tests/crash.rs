//! The embedded store's promise, held against the real server process: once a client has received
//! a 2xx that a quota counted, the count survives `kill -9` of the server at any instant.
//!
//! The test runs `sluice serve` on the embedded store in front of an echo upstream, drives counted
//! requests at it from many connections, kills it with SIGKILL in the middle of the load, and
//! reads the quota back: it must be at least the 2xx the clients received and at most the
//! requests they sent. Then the restarted server counts on from there.

mod support;

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sluice_core::{Clock, CounterKey, Op, SystemClock, Transition};
use sluice_store::{CounterStore, EmbeddedStore, EmbeddedStoreConfig};
use support::Server;

const POLICY: &str = r#"
service:
  name: Crash test
identities:
  team:
    from: header
    name: x-team
plans:
  standard:
    quotas:
      - name: calls
        amount: 100000000
        per: team
default_plan: standard
routes:
  - match: POST /count
    quotas: [calls]
"#;

const CLIENTS: usize = 32;

fn client() -> reqwest::Client {
    support::client(Duration::from_secs(10))
}

async fn start(policy: &Path, store: &Path, upstream: SocketAddr) -> (Server, SocketAddr) {
    let upstream = format!("http://{upstream}");
    let args = [
        OsStr::new("--policy"),
        policy.as_os_str(),
        OsStr::new("--store"),
        store.as_os_str(),
        OsStr::new("--upstream"),
        OsStr::new(&upstream),
    ];
    let server = Server::start(args, None).await;
    let listen = server.listen;
    (server, listen)
}

/// What the store holds for the crash team's quota, read with the server stopped.
async fn stored_usage(policy: &sluice_policy::Policy, store: &Path) -> u64 {
    let quota = &policy.plans["standard"].quotas[0];
    let clock: Arc<dyn Clock> = Arc::new(SystemClock::new());
    let store = EmbeddedStore::open(store, clock, EmbeddedStoreConfig::default())
        .expect("the store opens once the server is gone");
    let read = Transition {
        key: CounterKey::new(b"team=crash", quota.counter.as_bytes()),
        limit: &quota.limit,
        op: Op::Acquire { cost: 0 },
    };
    let decision = store.apply(&[read]).await.expect("the store answers");
    quota.amount - decision.limits()[0].remaining()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counted_requests_survive_kill_9() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let policy_path = dir.path().join("policy.yaml");
    std::fs::write(&policy_path, POLICY).expect("the policy is written");
    let policy = sluice_policy::load("policy.yaml", POLICY).expect("a valid policy");
    let data = dir.path().join("data");

    let echo = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port for the upstream");
    let upstream = echo.local_addr().expect("an address");
    tokio::spawn(sluice_gateway::serve_echo(echo, std::future::pending()));

    let (server, listen) = start(&policy_path, &data, upstream).await;
    let sent = Arc::new(AtomicU64::new(0));
    let succeeded = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (sent, succeeded) = (Arc::clone(&sent), Arc::clone(&succeeded));
            tokio::spawn(async move {
                let client = client();
                loop {
                    sent.fetch_add(1, Ordering::SeqCst);
                    let response = client
                        .post(format!("http://{listen}/count"))
                        .header("x-team", "crash")
                        .body("{}")
                        .send()
                        .await;
                    match response {
                        Ok(response) if response.status().is_success() => {
                            succeeded.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok(response) => panic!("unexpected answer {}", response.status()),
                        // The server is gone: this client stops.
                        Err(_) => break,
                    }
                }
            })
        })
        .collect();

    // Mid-load: once a good number of 2xx are in, with 32 requests in flight.
    while succeeded.load(Ordering::SeqCst) < 2_000 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(server); // SIGKILL, and reaped
    for client in clients {
        client.await.expect("a client task ends");
    }
    let (sent, succeeded) = (
        sent.load(Ordering::SeqCst),
        succeeded.load(Ordering::SeqCst),
    );

    let stored = stored_usage(&policy, &data).await;
    eprintln!("sent {sent}, 2xx {succeeded}, stored {stored}");
    assert!(
        stored >= succeeded,
        "the store lost counts: {stored} stored, {succeeded} 2xx received"
    );
    assert!(
        stored <= sent,
        "the store counted requests never sent: {stored} stored, {sent} sent"
    );

    // The restarted server counts on from what was stored.
    let (server, listen) = start(&policy_path, &data, upstream).await;
    let response = client()
        .post(format!("http://{listen}/count"))
        .header("x-team", "crash")
        .body("{}")
        .send()
        .await
        .expect("the restarted server answers");
    assert!(response.status().is_success());
    drop(server);
    assert_eq!(stored_usage(&policy, &data).await, stored + 1);
}
