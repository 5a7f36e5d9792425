//! The accept loop shared by the gateway and the built-in echo upstream: HTTP/1.1 connections
//! with a bound on how long a client may take to send its headers, and a graceful stop that
//! drains requests in flight within a bound.
//!
//! HTTP/1 is served directly rather than through hyper-util's auto (HTTP/1 + h2c) builder: the
//! auto builder reads the protocol preface with no timer, so a client that connects and sends
//! nothing would hold its connection forever.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::body::Body;
use crate::deadline::Deadlines;
use crate::proxy::Peer;

/// How connections are served.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ConnectionLimits {
    /// A client that has not sent a request's headers within this long is disconnected.
    pub(crate) header_read_timeout: Duration,
    /// Most headers hyper parses; the gateway refuses more than its own limit in the API's shape,
    /// so this sits above it.
    pub(crate) max_headers: usize,
    /// How long a stop waits for requests in flight.
    pub(crate) drain_timeout: Duration,
}

/// Serves `listener` with `handle` until `shutdown` completes, then stops accepting and waits up
/// to the drain timeout for open requests to finish. The header-read timeouts run on `timers`.
pub(crate) async fn serve<H, F>(
    listener: TcpListener,
    limits: ConnectionLimits,
    timers: Deadlines,
    handle: H,
    shutdown: impl Future<Output = ()>,
) where
    H: Fn(Request<Incoming>, Arc<Peer>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let mut builder = http1::Builder::new();
    builder
        .timer(timers)
        .header_read_timeout(limits.header_read_timeout)
        .max_headers(limits.max_headers);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, most likely: back off rather than spin.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let handle = handle.clone();
        let client = Arc::new(Peer::new(peer));
        let service = hyper::service::service_fn(move |request| {
            // Boxed so that hyper moves a pointer, not the whole request state machine.
            let response = Box::pin(handle(request, Arc::clone(&client)));
            async move { Ok::<_, Infallible>(response.await) }
        });
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, %peer, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(limits.drain_timeout) => {
            tracing::warn!("requests still open after the drain timeout were cut");
        }
    }
}
