//! The admin API, on its own listener (loopback by default) behind its own bearer token: an
//! identity's usage, counter resets, run-time overrides, API keys, Prometheus metrics and the
//! API's OpenAPI document. Every error is problem+json; no answer ever carries a key's secret
//! except the one that creates it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use sluice_contract::ErrorCode;
use sluice_policy::KeyStatus;
use sluice_service::{AdminError, KeyError, LiveService, NewKey, OverrideSpec};
use sluice_store::{CounterStore, RecordStore};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;

use crate::body::Body;
use crate::check_api::{ApiError, api_error};
use crate::deadline::Deadlines;
use crate::server;

/// The OpenAPI document of this API.
pub const OPENAPI: &str = include_str!("admin_openapi.json");

/// The largest request body the admin API reads.
const MAX_BODY: usize = 64 * 1024;

/// What the admin API needs besides the service.
pub struct Admin<S> {
    /// Each admin request acts through the service in force when it arrives.
    services: Arc<LiveService<S>>,
    /// SHA-256 of the token: compared in constant time, and the token itself is not kept.
    token_hash: [u8; 32],
    /// Renders the metrics registry, when one is installed.
    metrics: Option<Box<dyn Fn() -> String + Send + Sync>>,
}

impl<S: CounterStore + RecordStore + 'static> Admin<S> {
    /// The admin API over the service `services` has in force, answering only requests
    /// bearing `token`.
    pub fn new(services: Arc<LiveService<S>>, token: &str) -> Admin<S> {
        Admin {
            services,
            token_hash: Sha256::digest(token.as_bytes()).into(),
            metrics: None,
        }
    }

    /// Serves `GET /metrics` with what `render` returns (Prometheus text format).
    pub fn with_metrics(mut self, render: impl Fn() -> String + Send + Sync + 'static) -> Self {
        self.metrics = Some(Box::new(render));
        self
    }

    /// Serves `listener` until `shutdown` completes.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        let limits = server::ConnectionLimits {
            header_read_timeout: Duration::from_secs(10),
            send_timeout: Duration::from_secs(60),
            max_headers: 100,
            http2_header_list: 64 * 1024,
            http2: false,
            drain_timeout: Duration::from_secs(5),
        };
        server::serve(
            listener,
            None,
            limits,
            Deadlines::for_timeouts(limits.header_read_timeout),
            move |request, _peer| {
                let admin = Arc::clone(&self);
                async move { admin.handle(request).await }
            },
            shutdown,
        )
        .await;
    }

    async fn handle(&self, request: Request<Incoming>) -> Response<Body> {
        match self.route(request).await {
            Ok((status, content_type, body)) => response(status, content_type, body),
            Err(error) => response(
                error.status,
                "application/problem+json",
                Bytes::from(error.body),
            ),
        }
    }

    fn authorized(&self, request: &Request<Incoming>) -> bool {
        let Some(token) = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
        else {
            return false;
        };
        let presented: [u8; 32] = Sha256::digest(token.trim().as_bytes()).into();
        bool::from(presented.ct_eq(&self.token_hash))
    }

    async fn route(
        &self,
        request: Request<Incoming>,
    ) -> Result<(StatusCode, &'static str, Bytes), ApiError> {
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let query: BTreeMap<String, String> = request
            .uri()
            .query()
            .map(|query| {
                url::form_urlencoded::parse(query.as_bytes())
                    .into_owned()
                    .collect()
            })
            .unwrap_or_default();
        if method == Method::GET && path == "/openapi.json" {
            return Ok((StatusCode::OK, "application/json", Bytes::from(OPENAPI)));
        }
        if !self.authorized(&request) {
            return Err(api_error(
                ErrorCode::InvalidApiKey,
                "the admin API needs `Authorization: Bearer <admin token>`".into(),
            ));
        }
        let body = read_body(request).await?;
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let service = &self.services.current();
        match (&method, segments.as_slice()) {
            (&Method::GET, ["metrics"]) => {
                let text = self
                    .metrics
                    .as_ref()
                    .map(|render| render())
                    .unwrap_or_default();
                Ok((
                    StatusCode::OK,
                    "text/plain; version=0.0.4",
                    Bytes::from(text),
                ))
            }
            (&Method::GET, ["v1", "usage"]) => {
                let (identity, value) = identity(&query)?;
                let usage = service.usage(identity, value).await.map_err(admin_error)?;
                json(
                    StatusCode::OK,
                    &serde_json::json!({"identity": identity, "value": value, "usage": usage}),
                )
            }
            (&Method::POST, ["v1", "reset"]) => {
                #[derive(Deserialize)]
                #[serde(deny_unknown_fields)]
                struct Reset {
                    identity: String,
                    value: String,
                    #[serde(default)]
                    name: Option<String>,
                }
                let reset: Reset = parse(&body)?;
                let usage = service
                    .reset(&reset.identity, &reset.value, reset.name.as_deref())
                    .await
                    .map_err(admin_error)?;
                json(StatusCode::OK, &serde_json::json!({"usage": usage}))
            }
            (&Method::GET, ["v1", "overrides"]) => {
                let overrides = service.list_overrides().await.map_err(admin_error)?;
                json(StatusCode::OK, &serde_json::json!({"overrides": overrides}))
            }
            (&Method::PUT, ["v1", "overrides"]) => {
                let spec: OverrideSpec = parse(&body)?;
                service
                    .set_override(spec.clone())
                    .await
                    .map_err(admin_error)?;
                json(StatusCode::OK, &spec)
            }
            (&Method::DELETE, ["v1", "overrides"]) => {
                let (identity, value) = identity(&query)?;
                if service
                    .remove_override(identity, value)
                    .await
                    .map_err(admin_error)?
                {
                    Ok((StatusCode::NO_CONTENT, "application/json", Bytes::new()))
                } else {
                    Err(api_error(
                        ErrorCode::NotFound,
                        format!("no override for {identity}={value}"),
                    ))
                }
            }
            (&Method::GET, ["v1", "keys"]) => {
                let keys = service.list_keys().await.map_err(key_error)?;
                json(StatusCode::OK, &serde_json::json!({"keys": keys}))
            }
            (&Method::POST, ["v1", "keys"]) => {
                let new: NewKey = parse(&body)?;
                let issued = service.create_key(new).await.map_err(key_error)?;
                json(StatusCode::CREATED, &issued)
            }
            (&Method::POST, ["v1", "keys", id, action]) => {
                let status = match *action {
                    "revoke" => KeyStatus::Revoked,
                    "suspend" => KeyStatus::Suspended,
                    "activate" => KeyStatus::Active,
                    "rotate" => {
                        #[derive(Deserialize, Default)]
                        #[serde(deny_unknown_fields)]
                        struct Rotate {
                            #[serde(default)]
                            grace_seconds: Option<u64>,
                        }
                        let rotate: Rotate = if body.is_empty() {
                            Rotate::default()
                        } else {
                            parse(&body)?
                        };
                        let grace = Duration::from_secs(rotate.grace_seconds.unwrap_or(86_400));
                        let issued = service.rotate_key(id, grace).await.map_err(key_error)?;
                        return json(StatusCode::CREATED, &issued);
                    }
                    _ => return Err(not_found(&method, &path)),
                };
                let key = service
                    .set_key_status(id, status)
                    .await
                    .map_err(key_error)?;
                json(StatusCode::OK, &key)
            }
            _ => Err(not_found(&method, &path)),
        }
    }
}

fn not_found(method: &Method, path: &str) -> ApiError {
    api_error(
        ErrorCode::NotFound,
        format!("no admin operation {method} {path}; see /openapi.json"),
    )
}

fn identity(query: &BTreeMap<String, String>) -> Result<(&str, &str), ApiError> {
    match (query.get("identity"), query.get("value")) {
        (Some(identity), Some(value)) => Ok((identity, value)),
        _ => Err(api_error(
            ErrorCode::MissingField,
            "query parameters `identity` and `value` are required".into(),
        )),
    }
}

async fn read_body(request: Request<Incoming>) -> Result<Bytes, ApiError> {
    match Limited::new(request.into_body(), MAX_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(_) => Err(api_error(
            ErrorCode::BodyTooLarge,
            format!("an admin request carries at most {MAX_BODY} bytes"),
        )),
    }
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|error| {
        api_error(
            ErrorCode::MalformedBody,
            format!("invalid request: {error}"),
        )
    })
}

fn json<T: serde::Serialize>(
    status: StatusCode,
    value: &T,
) -> Result<(StatusCode, &'static str, Bytes), ApiError> {
    let body = serde_json::to_vec(value)
        .map_err(|error| api_error(ErrorCode::Internal, error.to_string()))?;
    Ok((status, "application/json", Bytes::from(body)))
}

fn admin_error(error: AdminError) -> ApiError {
    match error {
        AdminError::Invalid(message) => api_error(ErrorCode::InvalidField, message),
        AdminError::Store(error) => api_error(ErrorCode::StoreUnavailable, error.to_string()),
    }
}

fn key_error(error: KeyError) -> ApiError {
    match error {
        KeyError::NotFound(_) => api_error(ErrorCode::NotFound, error.to_string()),
        KeyError::UnknownPlan(_) => api_error(ErrorCode::InvalidField, error.to_string()),
        KeyError::MissingOwner => api_error(ErrorCode::MissingField, error.to_string()),
        KeyError::Store(error) => api_error(ErrorCode::StoreUnavailable, error.to_string()),
    }
}

fn response(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Body> {
    let mut response = Response::new(Body::Left(Full::new(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    response
}
