//! A small upstream that answers every request with 200 and a JSON description of it: what
//! `sluice demo` puts behind the gateway so a newcomer needs nothing else running.

use std::future::Future;
use std::time::Duration;

use http::{Response, StatusCode};
use http_body_util::BodyExt;
use serde_json::json;
use tokio::net::TcpListener;

use crate::body::{Body, json_response};
use crate::deadline::Deadlines;
use crate::server::{ConnectionLimits, serve};

/// Serves the echo upstream on `listener` until `shutdown` completes.
pub async fn serve_echo(listener: TcpListener, shutdown: impl Future<Output = ()>) {
    let limits = ConnectionLimits {
        header_read_timeout: Duration::from_secs(10),
        send_timeout: Duration::from_secs(60),
        max_headers: 256,
        http2_header_list: 64 * 1024,
        http2: false,
        drain_timeout: Duration::from_secs(5),
    };
    serve(
        listener,
        None,
        limits,
        Deadlines::for_timeouts(limits.header_read_timeout),
        |request: http::Request<hyper::body::Incoming>, _peer| async move {
            let (parts, body) = request.into_parts();
            let bytes = body
                .collect()
                .await
                .map(|collected| collected.to_bytes().len())
                .unwrap_or(0);
            let description = json!({
                "echo": true,
                "method": parts.method.as_str(),
                "path": parts.uri.path(),
                "body_bytes": bytes,
            });
            let response: Response<Body> = json_response(
                StatusCode::OK,
                serde_json::to_vec(&description).unwrap_or_default(),
            );
            response
        },
        shutdown,
    )
    .await;
}
