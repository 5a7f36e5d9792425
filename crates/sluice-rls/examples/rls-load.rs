//! A gRPC load generator for `bench/rls.sh`: `ShouldRateLimit` calls with one descriptor,
//! `[generic_key=api, user=N]` over `--keys` users, from `--concurrency` callers sharing
//! `--connections` HTTP/2 connections, for `--seconds`; prints calls/s and p50/p99 latency.
//!
//! With `--floor ADDR` it instead serves the baseline: a rate limit service that answers every
//! call OK at once, deciding nothing, so the harness measures what gRPC alone costs.
#![allow(clippy::print_stdout, clippy::disallowed_methods, missing_docs)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sluice_rls::proto::rate_limit_descriptor::Entry;
use sluice_rls::proto::rate_limit_response::{Code, DescriptorStatus};
use sluice_rls::proto::rate_limit_service_client::RateLimitServiceClient;
use sluice_rls::proto::rate_limit_service_server::{RateLimitService, RateLimitServiceServer};
use sluice_rls::proto::{RateLimitDescriptor, RateLimitRequest, RateLimitResponse};
use tonic::{Request, Response, Status};

struct Floor;

#[tonic::async_trait]
impl RateLimitService for Floor {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        let statuses = request
            .into_inner()
            .descriptors
            .iter()
            .map(|_| DescriptorStatus {
                code: Code::Ok.into(),
                ..DescriptorStatus::default()
            })
            .collect();
        Ok(Response::new(RateLimitResponse {
            overall_code: Code::Ok.into(),
            statuses,
            ..RateLimitResponse::default()
        }))
    }
}

fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|arg| arg == name)
        .and_then(|at| args.get(at + 1).cloned())
}

fn number(args: &[String], name: &str, default: u64) -> u64 {
    flag(args, name).map_or(default, |text| text.parse().expect("a number"))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(address) = flag(&args, "--floor") {
        let address: SocketAddr = address.parse().expect("an address");
        // One thread, as `sluice serve` runs its rate limit service on its main thread.
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
            .block_on(async {
                tonic::transport::Server::builder()
                    .add_service(RateLimitServiceServer::new(Floor))
                    .serve(address)
                    .await
                    .expect("serves");
            });
        return;
    }
    let target = flag(&args, "--target").expect("--target ADDR");
    let connections = number(&args, "--connections", 4);
    let concurrency = number(&args, "--concurrency", 64);
    let seconds = number(&args, "--seconds", 10);
    let keys = number(&args, "--keys", 10_000);
    // One thread: the load generator takes one of the machine's cores, as wrk -t1 would.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async move {
        let mut channels = Vec::new();
        for _ in 0..connections {
            let channel = tonic::transport::Endpoint::from_shared(format!("http://{target}"))
                .expect("a URL")
                .tcp_nodelay(true)
                .connect()
                .await
                .expect("connects");
            channels.push(channel);
        }
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let mut callers = Vec::new();
        for caller in 0..concurrency {
            let mut client =
                RateLimitServiceClient::new(channels[(caller % connections) as usize].clone());
            callers.push(tokio::spawn(async move {
                let mut state = 0x2545_f491_4f6c_dd1d ^ (caller + 1);
                let mut latencies: Vec<u32> = Vec::new();
                let mut refused = 0u64;
                while Instant::now() < deadline {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    let request = RateLimitRequest {
                        domain: "bench".into(),
                        descriptors: vec![RateLimitDescriptor {
                            entries: vec![
                                Entry {
                                    key: "generic_key".into(),
                                    value: "api".into(),
                                },
                                Entry {
                                    key: "user".into(),
                                    value: (state % keys).to_string(),
                                },
                            ],
                            ..RateLimitDescriptor::default()
                        }],
                        hits_addend: 1,
                    };
                    let started = Instant::now();
                    let answer = client.should_rate_limit(request).await.expect("answered");
                    let micros = started.elapsed().as_micros();
                    latencies.push(u32::try_from(micros).unwrap_or(u32::MAX));
                    if answer.into_inner().overall_code() != Code::Ok {
                        refused += 1;
                    }
                }
                (latencies, refused)
            }));
        }
        let started = Instant::now();
        let mut latencies = Vec::new();
        let mut refused = 0;
        for caller in callers {
            let (mine, theirs) = caller.await.expect("joined");
            latencies.extend(mine);
            refused += theirs;
        }
        let elapsed = started.elapsed().as_secs_f64();
        latencies.sort_unstable();
        let at = |q: f64| {
            let index = ((latencies.len() as f64 - 1.0) * q).round() as usize;
            f64::from(latencies.get(index).copied().unwrap_or(0)) / 1000.0
        };
        println!(
            "calls/s {:.0} p50_ms {:.2} p99_ms {:.2} calls {} over_limit {}",
            latencies.len() as f64 / elapsed,
            at(0.50),
            at(0.99),
            latencies.len(),
            refused
        );
    });
}
