//! sluice's HTTP front: a reverse proxy that enforces the policy in front of an upstream API, the
//! decision API (`POST /v1/check`) for services that call sluice instead, and the health
//! endpoints (`/healthz`, `/readyz`).
//!
//! This crate translates between HTTP and the service and holds no business rule: what is
//! admitted, and how a refusal reads, is decided by [`sluice_service::Service`]. What it owns is
//! the wire: reading a body only when the policy needs it and never past its size limit, timing
//! out slow clients and slow upstreams, stripping hop-by-hop headers, request ids, and turning
//! upstream failures into the API's envelope.

mod admin;
mod affinity;
mod body;
mod check_api;
mod coding;
mod deadline;
mod echo;
mod layer;
mod pool;
mod probe;
mod proxy;
mod request_id;
mod server;
mod tls;
mod tunnel;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use sluice_contract::{ErrorCode, Values};
use sluice_core::Clock;
use sluice_service::{BodyNeed, CorsAnswer, LiveService, Service, Verdict, is_json};
use sluice_store::CounterStore;
use tokio::net::TcpListener;

pub use admin::{Admin, OPENAPI};
pub use body::Body;
pub use check_api::MAX_BATCH;
pub use echo::serve_echo;
pub use layer::{LayerRequestBody, LayerResponseBody, ShadowLimits, Sluice, SluiceLayer};
pub use probe::HttpProbe;
pub use proxy::Upstream;
pub use request_id::RequestIds;
pub use tls::ServerTls;

use crate::body::{full, json_response, rejection_response};
use crate::deadline::Deadlines;
use crate::pool::Pool;
use crate::proxy::Peer;
use crate::request_id::X_REQUEST_ID;
use crate::tunnel::Tunnels;

/// How the gateway behaves; every bound has a default a public deployment can live with.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// Where admitted requests go. Without one, the listener serves the decision API only.
    pub upstream: Option<Upstream>,
    /// Serve `POST /v1/check` on this listener even when proxying.
    pub decision_api: bool,
    /// How long the upstream may take to start its response (504 after), and to send each next
    /// part of its body (the client's connection is closed after).
    pub upstream_timeout: Duration,
    /// How long a client may take to send its headers (the connection is closed after).
    pub header_read_timeout: Duration,
    /// How long a client may leave a response unread, taking none of it (the connection is
    /// closed after).
    pub send_timeout: Duration,
    /// How long a client may take to send a body the policy reads (408 after).
    pub body_read_timeout: Duration,
    /// How long a stop waits for requests in flight.
    pub drain_timeout: Duration,
    /// Most request headers accepted (431 beyond, in the API's envelope).
    pub max_headers: usize,
    /// Most bytes of request headers accepted, names and values, as HTTP/1.1 writes them (431
    /// beyond, in the API's envelope): a client's half-megabyte cookie is not the upstream's
    /// problem. Envoy's default is 60 KiB, nginx's 32 KiB.
    pub max_header_bytes: usize,
    /// Whether [`Gateway::serve_threads`] pins each serving thread to a CPU of its own when
    /// there is one thread per CPU the process may run on (otherwise the kernel places them).
    pub pin_threads: bool,
    /// TLS on the listener, for a gateway that is the edge; `None` serves plain HTTP.
    pub tls: Option<Arc<ServerTls>>,
    /// Serve HTTP/2 to clients that ask for it: by ALPN over TLS, with prior knowledge (h2c) on
    /// a plain listener. Otherwise HTTP/1.1 only.
    pub http2: bool,
    /// The protocols an HTTP/1.1 client may switch to through the gateway (`Upgrade:`, compared
    /// without case and without a `/version`): such a request is forwarded asking the same, and
    /// once the upstream agrees the two connections are joined. Any other `Upgrade` header is
    /// dropped as hop-by-hop and the request forwarded as a plain one. `websocket` by default; not
    /// `h2c`, which would let a client speak HTTP/2 to the upstream past the policy (h2c
    /// smuggling).
    pub upgrades: Vec<String>,
    /// A tunnel (an upgraded connection) that carries nothing either way for this long is
    /// closed, within twice this.
    pub tunnel_idle_timeout: Duration,
}

impl Default for GatewayConfig {
    fn default() -> GatewayConfig {
        GatewayConfig {
            upstream: None,
            decision_api: true,
            upstream_timeout: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(10),
            send_timeout: Duration::from_secs(60),
            body_read_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(10),
            max_headers: 100,
            max_header_bytes: 64 * 1024,
            pin_threads: true,
            tls: None,
            http2: true,
            upgrades: vec!["websocket".to_owned()],
            tunnel_idle_timeout: Duration::from_secs(300),
        }
    }
}

/// The gateway over the service in force.
pub struct Gateway<S> {
    services: Arc<LiveService<S>>,
    config: GatewayConfig,
    ids: RequestIds,
    clock: Arc<dyn Clock>,
}

/// What one accept loop's requests share: the gateway, the service they are decided under, and
/// the loop's own upstream connections and timers (one clone per request for all).
struct Lane<S> {
    gateway: Arc<Gateway<S>>,
    /// The service in force when the lane was made, at `generation` of the gateway's services.
    service: Arc<Service<S>>,
    generation: u64,
    pool: Option<Arc<Pool>>,
    timers: Deadlines,
    tunnels: Tunnels,
}

impl<S> Lane<S> {
    /// The loop's lane for its next request: `lane` while its service is still in force, else
    /// one with the service now in force (and the same connections and timers) in its place.
    fn next(lane: &std::sync::Mutex<Arc<Lane<S>>>) -> Arc<Lane<S>> {
        let mut lane = lane
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let services = &lane.gateway.services;
        let generation = services.generation();
        if generation != lane.generation {
            let service = services.current();
            *lane = Arc::new(Lane {
                gateway: Arc::clone(&lane.gateway),
                service,
                generation,
                pool: lane.pool.clone(),
                timers: lane.timers.clone(),
                tunnels: lane.tunnels.clone(),
            });
        }
        Arc::clone(&lane)
    }
}

/// Largest decision-API request body: a full batch of checks with bodies.
const MAX_CHECK_BODY: usize = 8 * 1024 * 1024;

impl<S: CounterStore + 'static> Gateway<S> {
    /// A gateway in front of `service`, reading `clock` only to time requests for the log.
    pub fn new(service: Arc<Service<S>>, config: GatewayConfig, clock: Arc<dyn Clock>) -> Self {
        Gateway::live(Arc::new(LiveService::new(service)), config, clock)
    }

    /// A gateway in front of whichever service `services` has in force: each request is
    /// decided under the one in force when it arrives.
    pub fn live(
        services: Arc<LiveService<S>>,
        config: GatewayConfig,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Gateway {
            services,
            config,
            ids: RequestIds::new(),
            clock,
        }
    }

    /// The services this gateway serves: [`LiveService::replace`] puts a reloaded policy in
    /// force.
    pub fn services(&self) -> &Arc<LiveService<S>> {
        &self.services
    }

    /// Serves `listeners`, one thread each with its own single-threaded runtime, until `stop`
    /// completes; then every thread stops accepting and drains, and this returns once all have.
    ///
    /// One runtime per core, rather than one work-stealing runtime over all of them: a
    /// request's tasks (client connection, upstream connection) then stay on one thread, with no
    /// cross-thread wake-ups or parking. On a 2-core machine that doubled single-connection
    /// throughput and cut p99 latency from tens of milliseconds to a fraction of one. With one
    /// thread per CPU the process may run on, and [`GatewayConfig::pin_threads`], each thread is
    /// pinned to its own CPU (the `affinity` module says why).
    pub async fn serve_threads(
        self: Arc<Self>,
        listeners: Vec<std::net::TcpListener>,
        stop: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        let (stopping, stopped) = tokio::sync::watch::channel(false);
        let cpus = self
            .config
            .pin_threads
            .then(affinity::allowed_cpus)
            .flatten()
            .and_then(|allowed| affinity::placement(allowed, listeners.len()));
        if let Some(cpus) = &cpus {
            tracing::debug!(?cpus, "each serving thread pinned to a CPU of its own");
        }
        let mut threads = Vec::with_capacity(listeners.len());
        for (index, listener) in listeners.into_iter().enumerate() {
            let cpu = cpus.as_ref().and_then(|cpus| cpus.get(index).copied());
            let gateway = Arc::clone(&self);
            let mut stopped = stopped.clone();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let thread = std::thread::Builder::new()
                .name(format!("sluice-{index}"))
                .spawn(move || {
                    if let Some(cpu) = cpu
                        && let Err(error) = affinity::pin_current_thread(cpu)
                    {
                        tracing::warn!(%error, cpu, "cannot pin a serving thread to its CPU");
                    }
                    runtime.block_on(async move {
                        match TcpListener::from_std(listener) {
                            Ok(listener) => {
                                let stop = async move {
                                    let _ = stopped.wait_for(|stop| *stop).await;
                                };
                                gateway.serve(listener, stop).await;
                            }
                            Err(error) => tracing::error!(%error, "cannot serve a listener"),
                        }
                    });
                })?;
            threads.push(thread);
        }
        stop.await;
        let _ = stopping.send(true);
        tokio::task::spawn_blocking(move || {
            for thread in threads {
                let _ = thread.join();
            }
        })
        .await
        .map_err(std::io::Error::other)
    }

    /// Serves `listener` until `shutdown` completes; then stops accepting, lets requests in
    /// flight finish within the drain timeout, closes the tunnels of upgraded connections, and
    /// returns.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        let limits = server::ConnectionLimits {
            header_read_timeout: self.config.header_read_timeout,
            send_timeout: self.config.send_timeout,
            // hyper answers a plain 431 beyond its own limit; leave room to answer in the
            // API's envelope instead.
            max_headers: self.config.max_headers.saturating_mul(4).max(512),
            // The same for HTTP/2's header list (which counts 32 bytes more per field).
            http2_header_list: u32::try_from(self.config.max_header_bytes.saturating_mul(2))
                .unwrap_or(u32::MAX)
                .max(64 * 1024),
            drain_timeout: self.config.drain_timeout,
            http2: self.config.http2,
        };
        // Each accept loop has its own upstream connections and timers, so that they live on its
        // thread.
        let timers = Deadlines::for_timeouts(
            self.config
                .header_read_timeout
                .min(self.config.upstream_timeout)
                .min(self.config.send_timeout),
        );
        let tls = self
            .config
            .tls
            .as_ref()
            .map(|tls| tls.acceptor(self.config.http2));
        let generation = self.services.generation();
        let tunnels = Tunnels::new(self.config.tunnel_idle_timeout, Arc::clone(&self.clock));
        let lanes = Arc::new(std::sync::Mutex::new(Arc::new(Lane {
            service: self.services.current(),
            generation,
            pool: self.config.upstream.as_ref().map(|upstream| {
                Pool::new(
                    upstream.address().to_owned(),
                    upstream.tls().cloned(),
                    timers.clone(),
                    self.config.upstream_timeout,
                )
            }),
            timers: timers.clone(),
            tunnels: tunnels.clone(),
            gateway: self,
        })));
        server::serve(
            listener,
            tls,
            limits,
            timers,
            move |request, peer: Arc<Peer>| {
                let lane = Lane::next(&lanes);
                async move { lane.gateway.handle(&lane, request, &peer).await }
            },
            shutdown,
        )
        .await;
        // Requests have drained; a tunnel may have run for hours and would run for hours more.
        tunnels.close().await;
    }

    async fn handle(
        &self,
        lane: &Lane<S>,
        request: Request<Incoming>,
        peer: &Peer,
    ) -> Response<Body> {
        // The clock is read for the log line only, so only when it will be written.
        let logging = tracing::enabled!(tracing::Level::INFO);
        let started = logging.then(|| self.clock.now());
        let request_id = self.ids.of(request.headers());
        let method = request.method().clone();
        // A clone shares the URI's bytes: kept for the log line once the request is consumed.
        let uri = request.uri().clone();
        let path = uri.path();
        let mut line = AccessLine {
            clock: &*self.clock,
            started,
            request_id: &request_id,
            method: &method,
            path,
            version: request.version(),
            shadowed: None,
        };
        let cors = lane.service.cors(method.as_str(), request.headers());
        let mut response = match (&method, path) {
            // A preflight is answered here: it is neither counted nor forwarded.
            _ if matches!(cors, CorsAnswer::Preflight(_)) => {
                let mut response = Response::new(full(""));
                *response.status_mut() = StatusCode::NO_CONTENT;
                response
            }
            (_, "/healthz") => plain(StatusCode::OK, "ok\n"),
            // Degraded stays 200: every gateway shares the store, so taking them all out of
            // rotation would stop the routes that fail open too.
            (_, "/readyz") if lane.service.is_degraded() => plain(
                StatusCode::OK,
                "degraded: the counter store is not answering; routes fail open or closed as \
                 their policy says\n",
            ),
            (_, "/readyz") => plain(StatusCode::OK, "ready\n"),
            (&Method::POST, "/v1/check" | "/v1/check/batch" | "/v1/settle" | "/v1/renew")
                if self.config.decision_api || self.config.upstream.is_none() =>
            {
                self.decision_api(&lane.service, request, path).await
            }
            _ => match (&lane.pool, &self.config.upstream) {
                (Some(pool), Some(upstream)) => {
                    self.proxy(lane, upstream, pool, request, peer, &mut line)
                        .await
                }
                _ => rejection_response(lane.service.reject(
                    ErrorCode::NotFound,
                    Values::default(),
                    None,
                    request_id.to_str().ok(),
                )),
            },
        };
        response
            .headers_mut()
            .insert(X_REQUEST_ID.clone(), request_id.clone());
        let (CorsAnswer::Preflight(list) | CorsAnswer::Headers(list)) = cors;
        add_cors(response.headers_mut(), list);
        line.write(response.status().as_u16());
        response
    }

    async fn decision_api(
        &self,
        service: &Service<S>,
        request: Request<Incoming>,
        path: &str,
    ) -> Response<Body> {
        let answer = match Limited::new(request.into_body(), MAX_CHECK_BODY)
            .collect()
            .await
        {
            Err(_) => Err(check_api::too_large(MAX_CHECK_BODY)),
            Ok(collected) => match path {
                "/v1/check/batch" => check_api::check_batch(service, &collected.to_bytes()).await,
                "/v1/settle" => check_api::settle(service, &collected.to_bytes()).await,
                "/v1/renew" => check_api::renew(service, &collected.to_bytes()).await,
                _ => check_api::check_one(service, &collected.to_bytes()).await,
            },
        };
        match answer {
            Ok(json) => json_response(StatusCode::OK, json),
            Err(error) => {
                let mut response = json_response(error.status, error.body);
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/problem+json"),
                );
                response
            }
        }
    }

    async fn proxy(
        &self,
        lane: &Lane<S>,
        upstream: &Upstream,
        pool: &Arc<Pool>,
        mut request: Request<Incoming>,
        peer: &Peer,
        line: &mut AccessLine<'_>,
    ) -> Response<Body> {
        let request_id = line.request_id;
        let service = &lane.service;
        // hyper marks a request that asks to switch protocols; the headers are read only then.
        let mut switching = if request.extensions().get::<OnUpgrade>().is_some() {
            tunnel::Switching::asked(&mut request, &self.config.upgrades)
        } else {
            None
        };
        let id = request_id.to_str().ok();
        let reject = |code: ErrorCode, values: Values, status: Option<StatusCode>| {
            rejection_response(service.reject(code, values, status, id))
        };
        if request.headers().len() > self.config.max_headers
            || header_bytes(request.headers()) > self.config.max_header_bytes
        {
            return reject(ErrorCode::HeadersTooLarge, Values::default(), None);
        }
        let (parts, incoming) = request.into_parts();
        let matched = service.matched(parts.method.as_str(), parts.uri.path());
        let (bytes, forward) = match matched.body {
            BodyNeed::Stream => (None, Either::Right(incoming)),
            BodyNeed::Read { max } => {
                let read = coding::read_for_policy(
                    &parts.headers,
                    incoming,
                    max,
                    self.config.body_read_timeout,
                );
                match read.await {
                    Ok((content, bytes)) => (Some(content), Either::Left(Full::new(bytes))),
                    Err((code, values)) => return reject(code, values, None),
                }
            }
        };
        let request = policy_request(&parts, Some(peer.address().ip()), bytes.as_deref(), id);
        let verdict = service.check_matched(matched, &request).await;
        let mut admission = match verdict {
            Verdict::Reject(rejection) => return rejection_response(rejection),
            Verdict::Admit(admission) => admission,
        };
        let limit_headers = std::mem::take(&mut admission.headers);
        line.shadowed = admission.shadowed.take();
        let settling = Settling::new(service, admission);
        let mut outgoing = match proxy::upstream_request(upstream, parts, forward, peer, request_id)
        {
            Ok(outgoing) => outgoing,
            Err(_) => {
                settling.finish(false).await;
                return reject(ErrorCode::Internal, Values::default(), None);
            }
        };
        let timeout = self.config.upstream_timeout;
        let answer = match &switching {
            None => {
                lane.timers
                    .timeout(timeout, Box::pin(pool.send(outgoing)))
                    .await
            }
            Some(switching) => {
                switching.ask(outgoing.headers_mut());
                let sent = Box::pin(pool.upgrade(outgoing));
                lane.timers.timeout(timeout, sent).await
            }
        };
        let mut response = match answer {
            Err(_) => {
                settling.finish(false).await;
                reject(ErrorCode::UpstreamTimeout, Values::default(), None)
            }
            Ok(Err(error)) => {
                tracing::warn!(request_id = id.unwrap_or_default(), %error, "upstream request failed");
                settling.finish(false).await;
                reject(ErrorCode::UpstreamUnavailable, Values::default(), None)
            }
            Ok(Ok(upstream_response))
                if upstream_response.status() == StatusCode::SWITCHING_PROTOCOLS =>
            {
                let Some(switching) = switching.take() else {
                    // Switched on a request that did not ask to: nothing can be said on it.
                    settling.finish(false).await;
                    return reject(ErrorCode::UpstreamUnavailable, Values::default(), None);
                };
                // Held while the tunnel is open: a concurrency limit counts open tunnels.
                let held = settling.detach();
                let id = id.unwrap_or_default();
                lane.tunnels
                    .open(*switching, upstream_response, id, held)
                    .map(Either::Right)
            }
            Ok(Ok(upstream_response)) => {
                let status = upstream_response.status();
                settling.finish(status.is_success()).await;
                if status.is_server_error() && !is_json(upstream_response.headers()) {
                    // The API promises its envelope for every failure; an upstream's HTML error
                    // page is replaced, its status kept.
                    reject(ErrorCode::UpstreamError, Values::default(), Some(status))
                } else {
                    let (mut parts, body) = upstream_response.into_parts();
                    proxy::strip_hop_by_hop(&mut parts.headers);
                    Response::from_parts(parts, Either::Right(body))
                }
            }
        };
        let headers = response.headers_mut();
        for (name, value) in limit_headers {
            headers.insert(name, value);
        }
        response
    }
}

/// A request's access log line: written with the response's status when there is one, and
/// otherwise, when the client hangs up before its answer and the request is dropped midway, with
/// 499 (nginx's "client closed request"), so that a request the client gave up on still leaves
/// its id in the log.
struct AccessLine<'a> {
    clock: &'a dyn Clock,
    /// When the request began; `None` when the line is not logged (or already written).
    started: Option<sluice_core::Timestamp>,
    request_id: &'a HeaderValue,
    method: &'a Method,
    path: &'a str,
    version: http::Version,
    /// The limits in shadow mode that would have refused the request.
    shadowed: Option<Box<[String]>>,
}

/// What the access log says of a request whose client left before its answer.
const CLIENT_CLOSED: u16 = 499;

impl AccessLine<'_> {
    fn write(&mut self, status: u16) {
        let Some(started) = self.started.take() else {
            return;
        };
        let shadow = self.shadowed.as_ref().map(|names| names.join(","));
        let elapsed = self.clock.now().saturating_duration_since(started);
        tracing::info!(
            request_id = self.request_id.to_str().unwrap_or_default(),
            method = self.method.as_str(),
            path = self.path,
            // Named when it is not HTTP/1.1, the usual case: a field costs every line.
            protocol = match self.version {
                http::Version::HTTP_2 => Some("HTTP/2"),
                http::Version::HTTP_10 => Some("HTTP/1.0"),
                _ => None,
            },
            status,
            micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            shadow,
            "request"
        );
    }
}

impl Drop for AccessLine<'_> {
    fn drop(&mut self) {
        self.write(CLIENT_CLOSED);
    }
}

/// An admitted request's settling ([`Service::finish`]), done however the request ends: by
/// [`Settling::finish`] once the upstream answered or failed, or, when the client hangs up first
/// and drops the request midway, as a failure from a task of its own. Without that, a client
/// that gave up kept its concurrency slot until its lease ran out (one to two leases) and was
/// charged for a call that never succeeded.
struct Settling<'a, S: CounterStore + 'static> {
    service: &'a Arc<Service<S>>,
    /// `None` once settled.
    admission: Option<sluice_service::Admission>,
}

impl<'a, S: CounterStore + 'static> Settling<'a, S> {
    fn new(service: &'a Arc<Service<S>>, admission: sluice_service::Admission) -> Self {
        Settling {
            service,
            admission: Some(admission),
        }
    }

    /// Settles the request as it ended: `success` when the upstream answered with a 2xx.
    async fn finish(mut self, success: bool) {
        if let Some(admission) = self.admission.take() {
            self.service.finish(admission, success).await;
        }
    }

    /// The admission of a request the upstream switched protocols for, to be kept renewed
    /// while its tunnel is open and settled (a success) when it closes, wherever that is.
    fn detach(mut self) -> Box<dyn tunnel::Held> {
        Box::new(Detached {
            service: Arc::clone(self.service),
            admission: self.admission.take().unwrap_or_default(),
        })
    }
}

/// An admission that outlives its request's task: a tunnel's.
struct Detached<S: CounterStore + 'static> {
    service: Arc<Service<S>>,
    admission: sluice_service::Admission,
}

impl<S: CounterStore + 'static> tunnel::Held for Detached<S> {
    fn renew_every(&self) -> Option<Duration> {
        self.admission.renew_every()
    }

    fn renew(&mut self) -> Pin<Box<dyn Future<Output = bool> + Send + '_>> {
        Box::pin(self.service.renew(&mut self.admission))
    }

    fn settle(self: Box<Self>) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let Detached { service, admission } = *self;
        Box::pin(async move { service.finish(admission, true).await })
    }
}

impl<S: CounterStore + 'static> Drop for Settling<'_, S> {
    fn drop(&mut self) {
        let Some(admission) = self.admission.take() else {
            return;
        };
        if !admission.needs_settling() {
            return;
        }
        // Off a runtime only while the process exits, when counters no longer matter.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let service = Arc::clone(self.service);
            runtime.spawn(async move { service.finish(admission, false).await });
        }
    }
}

/// `count` listeners on `address`, all on one port (the first one's, when `address` asks for
/// port 0) with `SO_REUSEPORT`, so the kernel spreads new connections across the threads of
/// [`Gateway::serve_threads`].
pub fn bind_listeners(
    address: SocketAddr,
    count: usize,
) -> std::io::Result<Vec<std::net::TcpListener>> {
    fn bind(address: SocketAddr) -> std::io::Result<std::net::TcpListener> {
        use socket2::{Domain, Socket, Type};
        let socket = Socket::new(Domain::for_address(address), Type::STREAM, None)?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&address.into())?;
        socket.listen(1024)?;
        Ok(socket.into())
    }
    let first = bind(address)?;
    let address = first.local_addr()?;
    let mut listeners = vec![first];
    for _ in 1..count.max(1) {
        listeners.push(bind(address)?);
    }
    Ok(listeners)
}

/// The size of `headers` as HTTP/1.1 writes them: each name, `: `, value and line end.
fn header_bytes(headers: &http::HeaderMap) -> usize {
    headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum()
}

/// Adds CORS's headers to an answer: `Vary` and the exposed headers beside any the upstream
/// sent, the others only where the upstream sent none of its own.
fn add_cors(headers: &mut http::HeaderMap, list: sluice_service::HeaderList) {
    for (name, value) in list {
        if name == header::VARY || name == header::ACCESS_CONTROL_EXPOSE_HEADERS {
            headers.append(name, value);
        } else if !headers.contains_key(&name) {
            headers.insert(name, value);
        }
    }
}

/// What the service decides on for a request whose head is `parts`: from `peer`, with `body`
/// the content the policy reads, if it reads any.
fn policy_request<'a>(
    parts: &'a http::request::Parts,
    peer: Option<std::net::IpAddr>,
    body: Option<&'a [u8]>,
    request_id: Option<&'a str>,
) -> sluice_service::Request<'a> {
    sluice_service::Request {
        method: parts.method.as_str(),
        path: parts.uri.path(),
        query: parts.uri.query(),
        headers: &parts.headers,
        peer,
        body,
        request_id,
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut response = Response::new(full(text));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
