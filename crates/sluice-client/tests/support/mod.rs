//! The client's test bench: the real sluice gateway on a loopback port, enforcing an example
//! policy in front of a small upstream that can fail or hang on request, and virtual time — a
//! timer that moves the gateway's manual clock instead of sleeping, and lets every client run
//! until all of them wait before moving time on to the earliest wake-up.

#![allow(unreachable_pub, dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use sluice_client::{Call, Sleep, Timer};
use sluice_core::{Clock, ManualClock, Timestamp};
use sluice_gateway::{Gateway, GatewayConfig, HttpProbe, Upstream};
use sluice_service::{KeyRing, Service};
use sluice_store::MemoryStore;
use tokio::net::TcpListener;
use tokio::sync::{Notify, oneshot};

/// 2026-11-22T10:15:00Z, on a minute boundary.
pub const START: Timestamp = Timestamp::from_secs(1_795_342_500);

/// Streampixel's demo key (seed 000: `apiKey` in the JSON body).
pub const ALICE: &str = "sp_live_alice_demo_key";
/// A Pixel Patrol key on the free plan (seed 001: a bearer token).
pub const FREE: &str = "Bearer pp_free_demo_key";

/// A gateway with its upstream and the virtual time they share.
pub struct Bench {
    pub address: SocketAddr,
    pub time: VirtualTime,
    /// Requests the upstream has seen, by path.
    pub seen: Arc<Mutex<HashMap<String, u32>>>,
    stop: Option<oneshot::Sender<()>>,
}

impl Bench {
    /// The example policy `name`, its text changed by `edit`.
    pub async fn start(name: &str, edit: impl FnOnce(String) -> String) -> Bench {
        let (policy, keys) = deployment(name, edit);
        let seen = Arc::new(Mutex::new(HashMap::new()));
        let upstream = start_upstream(Arc::clone(&seen)).await;
        let clock = ManualClock::new(START);
        let shared: Arc<dyn Clock> = Arc::new(clock.clone());
        let service = Arc::new(
            Service::new(policy, MemoryStore::new(Arc::clone(&shared)), keys)
                .with_probe(Arc::new(
                    HttpProbe::new(Duration::from_secs(2)).expect("a probe"),
                ))
                .with_clock(Arc::clone(&shared)),
        );
        let config = GatewayConfig {
            upstream: Some(
                Upstream::new(&format!("http://{upstream}").parse().expect("uri"))
                    .expect("upstream"),
            ),
            ..GatewayConfig::default()
        };
        let gateway = Arc::new(Gateway::new(service, config, shared));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(gateway.serve(listener, async move {
            let _ = stopped.await;
        }));
        Bench {
            address,
            time: VirtualTime::new(clock),
            seen,
            stop: Some(stop),
        }
    }

    /// Sends `call` in virtual time.
    pub async fn send(&self, call: Call) -> Result<sluice_client::Response, sluice_client::Error> {
        self.time.run_one(call.send()).await
    }

    /// The URL of `path` on the gateway.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    /// How many requests the upstream saw on `path`.
    pub fn seen(&self, path: &str) -> u32 {
        self.seen
            .lock()
            .expect("lock")
            .get(path)
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn deployment(
    name: &str,
    edit: impl FnOnce(String) -> String,
) -> (Arc<sluice_policy::Policy>, KeyRing) {
    let read = |file: &str| {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../examples")
            .join(name)
            .join(file);
        (
            format!("examples/{name}/{file}"),
            std::fs::read_to_string(path).expect("the example exists"),
        )
    };
    let (file, text) = read("policy.yaml");
    let policy =
        sluice_policy::load(&file, &edit(text)).unwrap_or_else(|errors| panic!("{errors}"));
    let (keys_file, keys_text) = read("keys.yaml");
    let keys = sluice_policy::load_keys(&keys_file, &keys_text, &policy)
        .unwrap_or_else(|errors| panic!("{errors}"));
    (Arc::new(policy), KeyRing::new(keys))
}

/// An upstream that answers 200 `{"ok":true}`, except: `/flaky/N/…` answers its first N
/// requests with a 503 HTML page, and `/hang…` never answers.
async fn start_upstream(seen: Arc<Mutex<HashMap<String, u32>>>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let seen = Arc::clone(&seen);
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let seen = Arc::clone(&seen);
                async move {
                    let path = request.uri().path().to_owned();
                    let _ = request.into_body().collect().await;
                    let count = {
                        let mut seen = seen.lock().expect("lock");
                        let count = seen.entry(path.clone()).or_insert(0);
                        *count += 1;
                        *count
                    };
                    if path.starts_with("/hang") {
                        std::future::pending::<()>().await;
                    }
                    let failures = path
                        .strip_prefix("/flaky/")
                        .and_then(|rest| rest.split('/').next())
                        .and_then(|n| n.parse::<u32>().ok())
                        .unwrap_or(0);
                    let response = if count <= failures {
                        Response::builder()
                            .status(503)
                            .header("content-type", "text/html")
                            .body(Full::new(Bytes::from_static(b"<html>down</html>")))
                    } else {
                        Response::builder()
                            .header("content-type", "application/json")
                            .body(Full::new(Bytes::from_static(br#"{"ok":true}"#)))
                    };
                    Ok::<_, Infallible>(response.expect("a response"))
                }
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    address
}

/// Virtual time for clients and the gateway at once.
///
/// A client's sleep parks it; when every task [`VirtualTime::run`] drives is parked or done,
/// the gateway's clock jumps to the earliest wake-up and those sleepers go on. Time never moves
/// while a request is in flight, so each retry reaches the gateway at exactly the instant the
/// client chose.
#[derive(Clone)]
pub struct VirtualTime {
    clock: ManualClock,
    state: Arc<Mutex<Sim>>,
    wake: Arc<Notify>,
}

#[derive(Default)]
struct Sim {
    /// Tasks neither parked nor done.
    running: usize,
    sleepers: Vec<(Timestamp, oneshot::Sender<()>)>,
    /// Every sleep asked for, in order.
    slept: Vec<Duration>,
}

impl VirtualTime {
    fn new(clock: ManualClock) -> VirtualTime {
        VirtualTime {
            clock,
            state: Arc::new(Mutex::new(Sim::default())),
            wake: Arc::new(Notify::new()),
        }
    }

    /// The gateway's instant.
    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// Time since [`START`].
    pub fn since_start(&self) -> Duration {
        self.clock.now().saturating_duration_since(START)
    }

    /// Moves time on by `by`, outside any run.
    pub fn advance(&self, by: Duration) {
        self.clock.advance(by);
    }

    /// Every sleep a client asked for, in order.
    pub fn slept(&self) -> Vec<Duration> {
        self.state.lock().expect("lock").slept.clone()
    }

    /// Runs `tasks` to completion in virtual time; their outputs, in order.
    pub async fn run<T: Send + 'static>(
        &self,
        tasks: Vec<std::pin::Pin<Box<dyn Future<Output = T> + Send>>>,
    ) -> Vec<T> {
        self.state.lock().expect("lock").running += tasks.len();
        let handles: Vec<_> = tasks
            .into_iter()
            .map(|task| {
                let time = self.clone();
                tokio::spawn(async move {
                    let out = task.await;
                    time.state.lock().expect("lock").running -= 1;
                    time.wake.notify_one();
                    out
                })
            })
            .collect();
        let driver = {
            let time = self.clone();
            tokio::spawn(async move {
                loop {
                    time.wake.notified().await;
                    time.step();
                }
            })
        };
        let mut outputs = Vec::with_capacity(handles.len());
        for handle in handles {
            outputs.push(handle.await.expect("a task finished"));
        }
        driver.abort();
        outputs
    }

    /// Runs one task in virtual time.
    pub async fn run_one<T: Send + 'static>(
        &self,
        task: impl Future<Output = T> + Send + 'static,
    ) -> T {
        self.run(vec![Box::pin(task)])
            .await
            .pop()
            .expect("one output")
    }

    /// When every task is parked, moves the clock to the earliest wake-up and wakes those due.
    fn step(&self) {
        let mut sim = self.state.lock().expect("lock");
        if sim.running > 0 || sim.sleepers.is_empty() {
            return;
        }
        let earliest = sim
            .sleepers
            .iter()
            .map(|(at, _)| *at)
            .min()
            .expect("a sleeper");
        if earliest > self.clock.now() {
            self.clock.set(earliest);
        }
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut sim.sleepers)
            .into_iter()
            .partition(|(at, _)| *at <= earliest);
        sim.sleepers = later;
        sim.running += due.len();
        for (_, wake) in due {
            let _ = wake.send(());
        }
    }
}

impl Timer for VirtualTime {
    fn elapsed(&self) -> Duration {
        self.since_start()
    }

    fn wall(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(self.clock.now().as_nanos())
    }

    fn sleep(&self, wait: Duration) -> Sleep {
        let (wake, woken) = oneshot::channel();
        {
            let mut sim = self.state.lock().expect("lock");
            sim.slept.push(wait);
            sim.sleepers
                .push((self.clock.now().saturating_add(wait), wake));
            sim.running -= 1;
        }
        self.wake.notify_one();
        Box::pin(async move {
            let _ = woken.await;
        })
    }
}

/// The seconds in `wait`, for reports.
pub fn secs(wait: Duration) -> f64 {
    wait.as_secs_f64()
}
