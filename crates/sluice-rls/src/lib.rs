//! sluice as Envoy's rate limit service: gRPC `envoy.service.ratelimit.v3.RateLimitService`,
//! a drop-in for envoyproxy/ratelimit behind Envoy's or Istio's rate limit filter.
//!
//! This crate only translates: a `ShouldRateLimit` call becomes one
//! [`check_descriptors`](sluice_service::Service::check_descriptors) over the policy's `envoy:`
//! rules, and its verdict becomes Envoy's answer: a status per descriptor, the policy's
//! rate-limit headers for the client's response, and, when over the limit, the policy's error
//! body (`raw_body`) with its content type, so the 429 Envoy sends is the same one the gateway
//! would send.
//!
//! A store that cannot answer is a gRPC `UNAVAILABLE`: Envoy's `failure_mode_deny` then decides
//! whether the request passes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sluice_service::{Descriptor, DescriptorStatus, HeaderList, LiveService};
use sluice_store::CounterStore;
use tonic::{Request, Response, Status};

/// The messages and the gRPC server and client generated from the vendored `rls.proto`.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("envoy.service.ratelimit.v3");
}

use proto::rate_limit_response::{Code, DescriptorStatus as WireStatus, RateLimit, rate_limit};
use proto::rate_limit_service_server::{RateLimitService, RateLimitServiceServer};
use proto::{HeaderValue, RateLimitRequest, RateLimitResponse};

/// The serving threads of [`Rls::spawn_threads`].
#[derive(Debug)]
pub struct Serving {
    stopping: tokio::sync::watch::Sender<bool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Serving {
    /// Stops accepting on every thread and returns once each has let its calls in flight
    /// finish (each is one store call).
    pub async fn stop(self) -> std::io::Result<()> {
        let _ = self.stopping.send(true);
        let threads = self.threads;
        tokio::task::spawn_blocking(move || {
            for thread in threads {
                let _ = thread.join();
            }
        })
        .await
        .map_err(std::io::Error::other)
    }
}

/// The most descriptors one call may carry. Envoy sends one per rate limit action list of the
/// route, a handful; the bound keeps a call's single store call, and the work of telling its
/// descriptors apart, small.
pub const MAX_DESCRIPTORS: usize = 64;

/// The rate limit service over the policy in force.
pub struct Rls<S> {
    services: Arc<LiveService<S>>,
}

impl<S> Clone for Rls<S> {
    fn clone(&self) -> Rls<S> {
        Rls {
            services: Arc::clone(&self.services),
        }
    }
}

impl<S> Rls<S>
where
    S: CounterStore + Send + Sync + 'static,
{
    /// The service deciding with whichever policy `services` has in force at each call.
    pub fn new(services: Arc<LiveService<S>>) -> Rls<S> {
        Rls { services }
    }

    /// The tonic service, for a server of the caller's own.
    pub fn into_server(self) -> RateLimitServiceServer<Rls<S>> {
        RateLimitServiceServer::new(self)
    }

    /// Serves gRPC (HTTP/2 without TLS, as Envoy's rate limit cluster speaks it) on `listener`
    /// until `shutdown` completes, then lets calls in flight finish.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), tonic::transport::Error> {
        let address: Option<SocketAddr> = listener.local_addr().ok();
        tracing::info!(rls = ?address, "Envoy rate limit service is serving");
        self.serve_quietly(listener, shutdown).await
    }

    /// [`Rls::serve`] on each of `listeners` (one port shared with `SO_REUSEPORT`, so that the
    /// kernel spreads Envoy's connections across them), one thread each with a single-threaded
    /// runtime of its own, as the gateway serves: a call's tasks stay on one thread, with no
    /// cross-thread wake-ups. The threads are running when this returns; [`Serving::stop`]
    /// stops them.
    pub fn spawn_threads(self, listeners: Vec<std::net::TcpListener>) -> std::io::Result<Serving> {
        let address = listeners.first().and_then(|first| first.local_addr().ok());
        let (stopping, stopped) = tokio::sync::watch::channel(false);
        let mut threads = Vec::with_capacity(listeners.len());
        for (index, listener) in listeners.into_iter().enumerate() {
            let rls = self.clone();
            let mut stopped = stopped.clone();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let thread = std::thread::Builder::new()
                .name(format!("sluice-rls-{index}"))
                .spawn(move || {
                    runtime.block_on(async move {
                        let stop = async move {
                            let _ = stopped.wait_for(|stop| *stop).await;
                        };
                        let served = match tokio::net::TcpListener::from_std(listener) {
                            Ok(listener) => rls.serve_quietly(listener, stop).await,
                            Err(error) => {
                                tracing::error!(%error, "cannot serve a rate limit listener");
                                return;
                            }
                        };
                        if let Err(error) = served {
                            tracing::error!(%error, "the rate limit service stopped");
                        }
                    });
                })?;
            threads.push(thread);
        }
        tracing::info!(
            rls = ?address,
            threads = threads.len(),
            "Envoy rate limit service is serving"
        );
        Ok(Serving { stopping, threads })
    }

    async fn serve_quietly(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), tonic::transport::Error> {
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        tonic::transport::Server::builder()
            .add_service(self.into_server())
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await
    }
}

#[tonic::async_trait]
impl<S> RateLimitService for Rls<S>
where
    S: CounterStore + Send + Sync + 'static,
{
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        let request = request.into_inner();
        if request.descriptors.is_empty() {
            return Err(Status::invalid_argument("no descriptors in the request"));
        }
        if request.descriptors.len() > MAX_DESCRIPTORS {
            return Err(Status::invalid_argument(format!(
                "{} descriptors in one request; at most {MAX_DESCRIPTORS} are decided together",
                request.descriptors.len()
            )));
        }
        let descriptors: Vec<Descriptor<'_>> = request
            .descriptors
            .iter()
            .map(|descriptor| Descriptor {
                entries: descriptor
                    .entries
                    .iter()
                    .map(|entry| (entry.key.as_str(), entry.value.as_str()))
                    .collect(),
                hits: descriptor.hits_addend,
            })
            .collect();
        let hits = u64::from(request.hits_addend.max(1));
        let service = self.services.current();
        let verdict = service
            .check_descriptors(&request.domain, &descriptors, hits)
            .await
            .map_err(|error| Status::unavailable(error.to_string()))?;
        let statuses = verdict
            .statuses
            .iter()
            .map(|status| status.as_ref().map_or_else(unlimited, wire_status))
            .collect();
        let mut response = RateLimitResponse {
            overall_code: Code::Ok.into(),
            statuses,
            response_headers_to_add: wire_headers(&verdict.headers),
            ..RateLimitResponse::default()
        };
        if let Some(rejection) = verdict.rejection {
            response.overall_code = Code::OverLimit.into();
            // The verdict's headers (with Retry-After) are the rejection's; the body's type too.
            response.response_headers_to_add.push(HeaderValue {
                key: http::header::CONTENT_TYPE.as_str().to_owned(),
                value: rejection.content_type.to_owned(),
                ..HeaderValue::default()
            });
            response.raw_body = rejection.body;
        }
        Ok(Response::new(response))
    }
}

/// A descriptor no rule limits: OK, with no limit named (as envoyproxy/ratelimit answers).
fn unlimited() -> WireStatus {
    WireStatus {
        code: Code::Ok.into(),
        ..WireStatus::default()
    }
}

fn wire_status(status: &DescriptorStatus) -> WireStatus {
    let (requests_per_unit, unit) = per_unit(status.limit, status.period);
    WireStatus {
        code: if status.over_limit {
            Code::OverLimit
        } else {
            Code::Ok
        }
        .into(),
        current_limit: Some(RateLimit {
            name: status.name.clone(),
            requests_per_unit,
            unit: unit.into(),
        }),
        limit_remaining: u32::try_from(status.remaining).unwrap_or(u32::MAX),
        duration_until_reset: Some(wire_duration(status.reset_after)),
    }
}

/// Envoy's form of a limit: requests per one unit of time. A period of exactly one unit is said
/// in it; any other (`1 per 2m`) has no unit Envoy can say, and is reported with its own count
/// and an unknown unit rather than as a rate it is not.
fn per_unit(limit: u64, period: Duration) -> (u32, rate_limit::Unit) {
    let unit = match (period.as_secs(), period.subsec_nanos()) {
        (1, 0) => rate_limit::Unit::Second,
        (60, 0) => rate_limit::Unit::Minute,
        (3_600, 0) => rate_limit::Unit::Hour,
        (86_400, 0) => rate_limit::Unit::Day,
        _ => rate_limit::Unit::Unknown,
    };
    (u32::try_from(limit).unwrap_or(u32::MAX), unit)
}

fn wire_duration(duration: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(duration.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(duration.subsec_nanos()).unwrap_or(0),
    }
}

fn wire_headers(headers: &HeaderList) -> Vec<HeaderValue> {
    headers
        .iter()
        .map(|(name, value)| match value.to_str() {
            Ok(text) => HeaderValue {
                key: name.as_str().to_owned(),
                value: text.to_owned(),
                ..HeaderValue::default()
            },
            Err(_) => HeaderValue {
                key: name.as_str().to_owned(),
                raw_value: value.as_bytes().to_vec(),
                ..HeaderValue::default()
            },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limit_is_said_in_its_unit_only_when_its_period_is_one() {
        let cases = [
            (
                1000,
                Duration::from_secs(60),
                (1000, rate_limit::Unit::Minute),
            ),
            (5, Duration::from_secs(1), (5, rate_limit::Unit::Second)),
            (7, Duration::from_secs(3_600), (7, rate_limit::Unit::Hour)),
            (9, Duration::from_secs(86_400), (9, rate_limit::Unit::Day)),
            (1, Duration::from_secs(120), (1, rate_limit::Unit::Unknown)),
            (
                10,
                Duration::from_millis(1_500),
                (10, rate_limit::Unit::Unknown),
            ),
            (
                u64::MAX,
                Duration::from_secs(1),
                (u32::MAX, rate_limit::Unit::Second),
            ),
        ];
        for (limit, period, said) in cases {
            assert_eq!(per_unit(limit, period), said, "{limit} per {period:?}");
        }
    }
}
