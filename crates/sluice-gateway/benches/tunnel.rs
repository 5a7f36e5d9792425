//! What a WebSocket tunnel through the gateway adds to a message: round trips of one message
//! (1 KiB and 64 KiB) to a WebSocket echo upstream, straight and through the gateway, all on
//! one thread, interleaved; the median of several rounds of each, and their ratio, printed.
//!
//! One thread, so that what is measured is the tunnel's own work (two more hops, each a read
//! and a write). With the gateway on a thread of its own, a round trip is four wake-ups of
//! another thread, and on this project's VMs those dominate and vary with where the kernel
//! puts the threads: nginx in the same harness measured 62 µs a round trip interleaved with
//! the gateway and 103 µs alone, the gateway 106 µs either way. So nginx is not a baseline here.
//!
//! `cargo bench -p sluice-gateway --bench tunnel`
#![allow(missing_docs)]
// A benchmark measures elapsed time; it decides nothing with it.
#![allow(clippy::disallowed_methods)]
// Its table is its output.
#![allow(clippy::print_stdout)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use sluice_core::{Clock, SystemClock};
use sluice_gateway::{Gateway, GatewayConfig, Upstream};
use sluice_service::{KeyRing, Service};
use sluice_store::MemoryStore;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const POLICY: &str = include_str!("../../../bench/policy.yaml");
const ROUNDS: usize = 7;
const TRIPS: usize = 2_000;

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A WebSocket upstream sending every message back.
async fn echo_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let Ok(mut socket) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(message)) = socket.next().await {
                    if message.is_close() || socket.send(message).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    address
}

/// The gateway with the load harness's policy in front of `upstream`, on this runtime.
async fn gateway(upstream: SocketAddr) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(serve(upstream, listener));
    address
}

async fn serve(upstream: SocketAddr, listener: TcpListener) {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock::new());
    let policy = sluice_policy::load("bench/policy.yaml", POLICY).expect("the bench policy");
    let store = Arc::new(MemoryStore::new(Arc::clone(&clock)));
    let service = Arc::new(Service::new(Arc::new(policy), store, KeyRing::default()));
    let config = GatewayConfig {
        upstream: Some(
            Upstream::new(&format!("http://{upstream}").parse().expect("a URI")).expect("upstream"),
        ),
        ..GatewayConfig::default()
    };
    let gateway = Arc::new(Gateway::new(service, config, clock));
    gateway.serve(listener, std::future::pending()).await;
}

async fn open(address: SocketAddr) -> Socket {
    let mut request = format!("ws://{address}/live")
        .into_client_request()
        .expect("a request");
    request
        .headers_mut()
        .insert("x-user", "user-1".parse().expect("a value"));
    let (socket, _) = tokio_tungstenite::connect_async_with_config(request, None, true)
        .await
        .expect("a WebSocket");
    socket
}

/// The time `TRIPS` round trips of `size` bytes take on `socket`, per round trip.
async fn round_trips(socket: &mut Socket, size: usize) -> Duration {
    let payload = vec![7_u8; size];
    let start = Instant::now();
    for _ in 0..TRIPS {
        socket
            .send(Message::binary(payload.clone()))
            .await
            .expect("send");
        let echoed = socket.next().await.expect("a message").expect("a frame");
        assert_eq!(echoed.len(), size);
    }
    start.elapsed() / TRIPS as u32
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn main() {
    // `cargo bench` passes `--bench`; a filter or other flags are not taken.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let upstream = echo_upstream().await;
        let through = gateway(upstream).await;
        let mut sockets = [open(upstream).await, open(through).await];
        println!(
            "WebSocket round trips on one thread, {TRIPS} per round, median of {ROUNDS} rounds"
        );
        println!("| message | direct µs | through sluice µs | ratio |");
        println!("|---|---|---|---|");
        for size in [1024, 64 * 1024] {
            // Warm both paths, then interleave the rounds.
            let mut times = [Vec::new(), Vec::new()];
            for round in 0..=ROUNDS {
                for (socket, times) in sockets.iter_mut().zip(&mut times) {
                    let time = round_trips(socket, size).await;
                    if round > 0 {
                        times.push(time);
                    }
                }
            }
            let [direct, gated] = times.map(|times| median(times).as_secs_f64() * 1e6);
            println!(
                "| {} KiB | {direct:.1} | {gated:.1} | {:.2}x |",
                size / 1024,
                gated / direct
            );
        }
    });
}
