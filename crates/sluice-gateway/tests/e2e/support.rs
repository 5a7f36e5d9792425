//! The test bench: a gateway started on `127.0.0.1:0` with an example policy and a manual clock,
//! a recording upstream behind it, and a small HTTP client.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use sluice_core::{Clock, ManualClock, Timestamp};
use sluice_gateway::{Gateway, GatewayConfig, HttpProbe, Upstream};
use sluice_service::{KeyRing, Service};
use sluice_store::MemoryStore;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// 2026-11-22T10:15:00Z, on a minute boundary so that clock-aligned windows are easy to reason
/// about.
pub const START: Timestamp = Timestamp::from_secs(1_795_342_500);

/// What the upstream saw of one request.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A running gateway with its upstream.
pub struct Bench {
    pub address: SocketAddr,
    gateway: Arc<Gateway<Arc<MemoryStore>>>,
    store: Arc<MemoryStore>,
    upstream: Option<SocketAddr>,
    pub clock: ManualClock,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    client: Client<HttpConnector, Full<Bytes>>,
    stop: Option<oneshot::Sender<()>>,
    served: Option<tokio::task::JoinHandle<()>>,
}

/// A response, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.body).expect("a UTF-8 body")
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|error| panic!("not JSON ({error}): {}", self.text()))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .map(|value| value.to_str().expect("ASCII header"))
    }
}

fn example(name: &str, file: &str) -> (String, String) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .join(name)
        .join(file);
    let text = std::fs::read_to_string(&path).expect("the example exists");
    (format!("examples/{name}/{file}"), text)
}

/// The example policy `name` with its keys.
pub fn deployment(name: &str) -> (Arc<sluice_policy::Policy>, KeyRing) {
    deployment_edited(name, |text| text)
}

/// The example policy `name`, its text changed by `edit`, with its keys.
pub fn deployment_edited(
    name: &str,
    edit: impl FnOnce(String) -> String,
) -> (Arc<sluice_policy::Policy>, KeyRing) {
    let (file, text) = example(name, "policy.yaml");
    let text = edit(text);
    let policy = sluice_policy::load(&file, &text).unwrap_or_else(|errors| panic!("{errors}"));
    let (keys_file, keys_text) = example(name, "keys.yaml");
    let keys = sluice_policy::load_keys(&keys_file, &keys_text, &policy)
        .unwrap_or_else(|errors| panic!("{errors}"));
    (Arc::new(policy), KeyRing::new(keys))
}

impl Bench {
    /// The gateway with the example policy `name`, in front of a recording upstream.
    pub async fn start(name: &str) -> Bench {
        Bench::with(name, |_| {}).await
    }

    /// As [`Bench::start`], with the configuration adjusted by `adjust`.
    pub async fn with(name: &str, adjust: impl FnOnce(&mut GatewayConfig)) -> Bench {
        Bench::launch(deployment(name), adjust).await
    }

    /// As [`Bench::start`], with the policy's text changed by `edit`.
    pub async fn edited(name: &str, edit: impl FnOnce(String) -> String) -> Bench {
        Bench::launch(deployment_edited(name, edit), |_| {}).await
    }

    /// The gateway with the example policy `name` and exactly `config`.
    pub async fn serve(name: &str, config: GatewayConfig, seen: Arc<Mutex<Vec<Seen>>>) -> Bench {
        Bench::serve_deployment(deployment(name), config, seen, None).await
    }

    /// `deployment` in front of a fresh recording upstream, configured by `adjust`.
    pub async fn launch(
        deployment: (Arc<sluice_policy::Policy>, KeyRing),
        adjust: impl FnOnce(&mut GatewayConfig),
    ) -> Bench {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let upstream = start_upstream(Arc::clone(&seen)).await;
        let mut config = GatewayConfig {
            upstream: Some(
                Upstream::new(&format!("http://{upstream}").parse().expect("uri"))
                    .expect("upstream"),
            ),
            ..GatewayConfig::default()
        };
        adjust(&mut config);
        Bench::serve_deployment(deployment, config, seen, Some(upstream)).await
    }

    /// The address of this bench's upstream, which also serves images: `/image/N` is N bytes
    /// with a length, `/stream/N` is N bytes without one (and refuses HEAD).
    pub fn upstream_address(&self) -> SocketAddr {
        self.upstream.expect("a bench with its own upstream")
    }

    async fn serve_deployment(
        (policy, keys): (Arc<sluice_policy::Policy>, KeyRing),
        config: GatewayConfig,
        seen: Arc<Mutex<Vec<Seen>>>,
        upstream: Option<SocketAddr>,
    ) -> Bench {
        let clock = ManualClock::new(START);
        let shared: Arc<dyn Clock> = Arc::new(clock.clone());
        let store = Arc::new(MemoryStore::new(Arc::clone(&shared)));
        let service = service_over((policy, keys), Arc::clone(&store), &shared);
        let gateway = Arc::new(Gateway::new(service, config, shared));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let (stop, stopped) = oneshot::channel::<()>();
        let served = tokio::spawn(Arc::clone(&gateway).serve(listener, async move {
            let _ = stopped.await;
        }));
        Bench {
            address,
            gateway,
            store,
            upstream,
            clock,
            seen,
            client: Client::builder(TokioExecutor::new()).build_http(),
            stop: Some(stop),
            served: Some(served),
        }
    }

    /// Sends `method path` with `headers` and `body`.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Reply {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.address));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request
            .body(Full::new(body.into()))
            .expect("a valid request");
        let response = self
            .client
            .request(request)
            .await
            .expect("the gateway answers");
        let (parts, body) = response.into_parts();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body: body.collect().await.expect("a whole body").to_bytes(),
        }
    }

    /// A JSON POST.
    pub async fn post(&self, path: &str, headers: &[(&str, &str)], json: &Value) -> Reply {
        let mut all = vec![("content-type", "application/json")];
        all.extend_from_slice(headers);
        self.send("POST", path, &all, serde_json::to_vec(json).expect("json"))
            .await
    }

    /// Puts the example policy `name`, its text changed by `edit`, in force over the same
    /// counters, as `sluice serve` does on SIGHUP.
    pub fn reload(&self, name: &str, edit: impl FnOnce(String) -> String) {
        let clock: Arc<dyn Clock> = Arc::new(self.clock.clone());
        let service = service_over(
            deployment_edited(name, edit),
            Arc::clone(&self.store),
            &clock,
        );
        self.gateway.services().replace(service);
    }

    /// What the upstream saw of the last request it was sent.
    pub fn last_seen(&self) -> Seen {
        self.seen
            .lock()
            .expect("seen")
            .last()
            .expect("the upstream saw a request")
            .clone()
    }

    /// Moves the shared clock forward.
    pub fn advance(&self, by: Duration) {
        self.clock.advance(by);
    }

    /// Stops the gateway and waits for it to drain.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(served) = self.served.take() {
            served.await.expect("the gateway stops cleanly");
        }
    }
}

pub fn service_over(
    (policy, keys): (Arc<sluice_policy::Policy>, KeyRing),
    store: Arc<MemoryStore>,
    clock: &Arc<dyn Clock>,
) -> Arc<Service<Arc<MemoryStore>>> {
    let probe = HttpProbe::new(Duration::from_secs(2)).expect("a probe");
    Arc::new(
        Service::new(policy, store, keys)
            .with_probe(Arc::new(probe))
            .with_clock(Arc::clone(clock)),
    )
}

/// An upstream that records what it sees and answers as the request's `x-upstream-*` headers
/// ask: `x-upstream-status` (default 200), `x-upstream-type` (default application/json),
/// `x-upstream-hang` (never answers), `x-upstream-stall` (answers, sends the first 10 bytes of
/// its 100-byte body, and never the rest).
pub async fn start_upstream(seen: Arc<Mutex<Vec<Seen>>>) -> SocketAddr {
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
                    if let Some(response) = image(&request) {
                        return Ok::<_, Infallible>(response);
                    }
                    let (parts, body) = request.into_parts();
                    let body = body
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    seen.lock().expect("lock").push(Seen {
                        method: parts.method.to_string(),
                        uri: parts.uri.to_string(),
                        headers: parts.headers.clone(),
                        body,
                    });
                    let header = |name: &str| {
                        parts
                            .headers
                            .get(name)
                            .and_then(|value| value.to_str().ok())
                            .map(str::to_owned)
                    };
                    if header("x-upstream-hang").is_some() {
                        std::future::pending::<()>().await;
                    }
                    let status = header("x-upstream-status")
                        .and_then(|status| status.parse::<u16>().ok())
                        .unwrap_or(200);
                    let kind =
                        header("x-upstream-type").unwrap_or_else(|| "application/json".to_owned());
                    let body = if kind.contains("json") {
                        if status >= 400 {
                            r#"{"message":"Project not found","upstream":true}"#.to_owned()
                        } else {
                            r#"{"ok":true}"#.to_owned()
                        }
                    } else {
                        "<html><body>Bad things</body></html>".to_owned()
                    };
                    if header("x-upstream-stall").is_some() {
                        let response = Response::builder()
                            .header("content-type", "application/json")
                            .header("content-length", "100")
                            .body(
                                Chunks {
                                    remaining: 10,
                                    then_stall: true,
                                }
                                .boxed_unsync(),
                            )
                            .expect("response");
                        return Ok::<_, Infallible>(response);
                    }
                    let response = Response::builder()
                        .status(status)
                        .header("content-type", kind)
                        .header("connection", "keep-alive")
                        .header("x-upstream-said", "hello")
                        .body(Full::new(Bytes::from(body)).boxed_unsync())
                        .expect("response");
                    Ok::<_, Infallible>(response)
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

/// A body of `remaining` zero bytes in 64 KiB chunks, with no length declared; then its end, or
/// (`then_stall`) nothing more, for ever.
struct Chunks {
    remaining: usize,
    then_stall: bool,
}

impl hyper::body::Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        if self.remaining == 0 {
            return if self.then_stall {
                std::task::Poll::Pending
            } else {
                std::task::Poll::Ready(None)
            };
        }
        let size = self.remaining.min(64 * 1024);
        self.remaining -= size;
        std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(Bytes::from(vec![
            0u8;
            size
        ])))))
    }
}

/// `/image/N` (N bytes, length declared) and `/stream/N` (N bytes, no length, HEAD refused).
fn image(request: &Request<Incoming>) -> Option<Response<UpstreamBody>> {
    let path = request.uri().path();
    let (kind, size) = path.strip_prefix('/')?.split_once('/')?;
    let size: usize = size.parse().ok()?;
    let response = match kind {
        "image" => Response::builder()
            .header("content-type", "image/png")
            .body(Full::new(Bytes::from(vec![0u8; size])).boxed_unsync())
            .ok()?,
        "stream" if request.method() == http::Method::HEAD => Response::builder()
            .status(StatusCode::METHOD_NOT_ALLOWED)
            .body(Full::new(Bytes::new()).boxed_unsync())
            .ok()?,
        "stream" => Response::builder()
            .header("content-type", "image/png")
            .body(
                Chunks {
                    remaining: size,
                    then_stall: false,
                }
                .boxed_unsync(),
            )
            .ok()?,
        _ => return None,
    };
    Some(response)
}

type UpstreamBody = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

/// The member names of a JSON object body, in order.
pub fn members(value: &Value) -> Vec<String> {
    value
        .as_object()
        .expect("an object")
        .keys()
        .cloned()
        .collect()
}
