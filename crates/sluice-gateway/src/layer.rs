//! sluice as a tower layer, for a Rust service (axum, or any hyper + tower stack) that enforces
//! its policy in its own process rather than behind the gateway: the same decisions, headers and
//! envelopes as the proxy, over the same stores.
//!
//! A request the policy refuses is answered by the layer, in the API's envelope, and never
//! reaches the inner service. An admitted one goes on, its body read first only when the policy
//! reads a field of it (within the route's size limit, decoded as the proxy decodes it, and
//! passed on as sent); its response gets the policy's rate-limit headers and `X-Request-Id`, and
//! a 5xx that is not JSON is answered in the API's envelope, its status kept, as the proxy does
//! with an upstream's. The request is settled once the inner service has answered (concurrency
//! slots given back, quotas that count only successes refunded unless it answered 2xx), or, when
//! its future is dropped first (the client went away), as a failure. The limits in shadow mode
//! that would have refused it reach the inner service as a [`ShadowLimits`] request extension,
//! where the gateway writes them into its access line.
//!
//! The layer does not serve the gateway's own endpoints (health, the decision API), nor pass
//! protocol upgrades through with their holds: a concurrency limit counts an upgraded request
//! until its 101.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::request::Parts;
use http::{Request, Response, StatusCode};
use http_body_util::{Either, Full};
use sluice_contract::{ErrorCode, Values};
use sluice_service::{BodyNeed, CorsAnswer, LiveService, Service, Verdict, is_json};
use sluice_store::CounterStore;

use crate::body::rendered;
use crate::request_id::X_REQUEST_ID;
use crate::{RequestIds, Settling, add_cors, coding, policy_request};

/// The names of the limits in shadow mode that would have refused a request the layer admitted:
/// a request extension for the inner service, present only when some would have, so that the
/// service can log them beside its own line for the request (the gateway's access line says
/// `shadow="…"`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShadowLimits(pub Box<[String]>);

/// The body the inner service gets: the bytes the layer read for the policy (`Left`), or the
/// client's body untouched (`Right`).
pub type LayerRequestBody<B> = Either<Full<Bytes>, B>;

/// The body of a response through the layer: one the layer wrote (`Left`: a refusal, or an
/// error rewritten into the envelope) or the inner service's (`Right`).
pub type LayerResponseBody<B> = Either<Full<Bytes>, B>;

/// Enforces a [`Service`]'s policy in front of an inner tower service.
///
/// ```no_run
/// # use std::sync::Arc;
/// # use sluice_gateway::SluiceLayer;
/// # fn wrap<S: sluice_store::CounterStore + 'static>(service: Arc<sluice_service::Service<S>>) {
/// let layer = SluiceLayer::new(service)
///     .client_ip(|parts| parts.extensions.get::<std::net::SocketAddr>().map(|a| a.ip()));
/// // axum: `Router::new().route(…).layer(layer)`
/// # }
/// ```
pub struct SluiceLayer<S: CounterStore + 'static> {
    source: Source<S>,
    ids: Arc<RequestIds>,
    client_ip: fn(&Parts) -> Option<IpAddr>,
    body_read_timeout: Duration,
}

/// Where the layer finds the service in force.
enum Source<S> {
    Fixed(Arc<Service<S>>),
    Live(Arc<LiveService<S>>),
}

impl<S> Clone for Source<S> {
    fn clone(&self) -> Source<S> {
        match self {
            Source::Fixed(service) => Source::Fixed(Arc::clone(service)),
            Source::Live(services) => Source::Live(Arc::clone(services)),
        }
    }
}

impl<S: CounterStore + 'static> SluiceLayer<S> {
    /// The layer for `service`'s policy. Clients have no address (routes that count per client
    /// address count them all as one) until [`SluiceLayer::client_ip`] says where it is.
    pub fn new(service: Arc<Service<S>>) -> SluiceLayer<S> {
        SluiceLayer::with_source(Source::Fixed(service))
    }

    /// The layer for whichever service `services` has in force: a policy reloaded with
    /// [`LiveService::replace`] decides every request from then on (a request is decided and
    /// settled wholly under the service it began with), over the same counters.
    pub fn live(services: Arc<LiveService<S>>) -> SluiceLayer<S> {
        SluiceLayer::with_source(Source::Live(services))
    }

    fn with_source(source: Source<S>) -> SluiceLayer<S> {
        SluiceLayer {
            source,
            ids: Arc::new(RequestIds::new()),
            client_ip: |_| None,
            body_read_timeout: Duration::from_secs(30),
        }
    }

    /// Where a request's client address is: with axum, in its `ConnectInfo` extension.
    pub fn client_ip(mut self, client_ip: fn(&Parts) -> Option<IpAddr>) -> SluiceLayer<S> {
        self.client_ip = client_ip;
        self
    }

    /// How long a client may take to send a body the policy reads (30 s); then it gets a 408.
    pub fn body_read_timeout(mut self, timeout: Duration) -> SluiceLayer<S> {
        self.body_read_timeout = timeout;
        self
    }
}

impl<S: CounterStore + 'static> Clone for SluiceLayer<S> {
    fn clone(&self) -> SluiceLayer<S> {
        SluiceLayer {
            source: self.source.clone(),
            ids: Arc::clone(&self.ids),
            client_ip: self.client_ip,
            body_read_timeout: self.body_read_timeout,
        }
    }
}

impl<S: CounterStore + 'static> std::fmt::Debug for SluiceLayer<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SluiceLayer")
            .field("body_read_timeout", &self.body_read_timeout)
            .finish_non_exhaustive()
    }
}

impl<I, S: CounterStore + 'static> tower::Layer<I> for SluiceLayer<S> {
    type Service = Sluice<I, S>;

    fn layer(&self, inner: I) -> Sluice<I, S> {
        Sluice {
            inner,
            layer: Arc::new(self.clone()),
        }
    }
}

/// An inner service behind [`SluiceLayer`].
pub struct Sluice<I, S: CounterStore + 'static> {
    inner: I,
    /// One reference count moved a request, however many settings.
    layer: Arc<SluiceLayer<S>>,
}

impl<I: Clone, S: CounterStore + 'static> Clone for Sluice<I, S> {
    fn clone(&self) -> Sluice<I, S> {
        Sluice {
            inner: self.inner.clone(),
            layer: Arc::clone(&self.layer),
        }
    }
}

impl<I: std::fmt::Debug, S: CounterStore + 'static> std::fmt::Debug for Sluice<I, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sluice")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

type Answer<B, E> = Result<Response<LayerResponseBody<B>>, E>;

impl<I, S, ReqBody, ResBody> tower::Service<Request<ReqBody>> for Sluice<I, S>
where
    I: tower::Service<Request<LayerRequestBody<ReqBody>>, Response = Response<ResBody>>
        + Clone
        + Send
        + 'static,
    I::Future: Send,
    I::Error: Send,
    S: CounterStore + 'static,
    ReqBody: hyper::body::Body<Data = Bytes> + Send + 'static,
    ReqBody::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    ResBody: Send,
{
    type Response = Response<LayerResponseBody<ResBody>>;
    type Error = I::Error;
    type Future = Pin<Box<dyn Future<Output = Answer<ResBody, I::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), I::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        // The service polled ready goes with this request; its clone stays for the next.
        let ready = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, ready);
        let layer = Arc::clone(&self.layer);
        Box::pin(async move { layer.enforce(request, inner).await })
    }
}

impl<S: CounterStore + 'static> SluiceLayer<S> {
    async fn enforce<I, ReqBody, ResBody>(
        &self,
        request: Request<ReqBody>,
        mut inner: I,
    ) -> Answer<ResBody, I::Error>
    where
        I: tower::Service<Request<LayerRequestBody<ReqBody>>, Response = Response<ResBody>>,
        ReqBody: hyper::body::Body<Data = Bytes>,
        ReqBody::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let current;
        let service = match &self.source {
            Source::Fixed(service) => service,
            Source::Live(services) => {
                current = services.current();
                &current
            }
        };
        let request_id = self.ids.of(request.headers());
        let id = request_id.to_str().ok();
        let cors = service.cors(request.method().as_str(), request.headers());
        let answered = |mut response: Response<LayerResponseBody<ResBody>>, cors| {
            let headers = response.headers_mut();
            headers.insert(X_REQUEST_ID.clone(), request_id.clone());
            let (CorsAnswer::Preflight(list) | CorsAnswer::Headers(list)) = cors;
            add_cors(headers, list);
            Ok(response)
        };
        let refused = |code: ErrorCode, values: Values, status: Option<StatusCode>| {
            rendered(service.reject(code, values, status, id)).map(Either::Left)
        };
        if matches!(cors, CorsAnswer::Preflight(_)) {
            // A preflight is answered here: it is neither counted nor passed on.
            let mut response = Response::new(Either::Left(Full::new(Bytes::new())));
            *response.status_mut() = StatusCode::NO_CONTENT;
            return answered(response, cors);
        }
        let (mut parts, body) = request.into_parts();
        let matched = service.matched(parts.method.as_str(), parts.uri.path());
        let (content, body) = match matched.body {
            BodyNeed::Stream => (None, Either::Right(body)),
            BodyNeed::Read { max } => {
                let read =
                    coding::read_for_policy(&parts.headers, body, max, self.body_read_timeout);
                match read.await {
                    Ok((content, bytes)) => (Some(content), Either::Left(Full::new(bytes))),
                    Err((code, values)) => return answered(refused(code, values, None), cors),
                }
            }
        };
        let request = policy_request(&parts, (self.client_ip)(&parts), content.as_deref(), id);
        let verdict = service.check_matched(matched, &request).await;
        let mut admission = match verdict {
            Verdict::Reject(rejection) => {
                return answered(rendered(rejection).map(Either::Left), cors);
            }
            Verdict::Admit(admission) => admission,
        };
        let limit_headers = std::mem::take(&mut admission.headers);
        if let Some(names) = admission.shadowed.take() {
            parts.extensions.insert(ShadowLimits(names));
        }
        let settling = Settling::new(service, admission);
        let response = match inner.call(Request::from_parts(parts, body)).await {
            Ok(response) => response,
            Err(error) => {
                settling.finish(false).await;
                return Err(error);
            }
        };
        let status = response.status();
        settling.finish(status.is_success()).await;
        let mut response = if status.is_server_error() && !is_json(response.headers()) {
            // The API promises its envelope for every failure.
            refused(ErrorCode::UpstreamError, Values::default(), Some(status))
        } else {
            response.map(Either::Right)
        };
        let headers = response.headers_mut();
        for (name, value) in limit_headers {
            headers.insert(name, value);
        }
        answered(response, cors)
    }
}
