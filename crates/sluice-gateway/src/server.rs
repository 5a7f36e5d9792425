//! The accept loop shared by the gateway and the built-in echo upstream: HTTP/1.1 connections
//! with a bound on how long a client may take to send its headers and on how long it may leave a
//! response unread, and a graceful stop that drains requests in flight within a bound.
//!
//! HTTP/1 is served directly rather than through hyper-util's auto (HTTP/1 + h2c) builder: the
//! auto builder reads the protocol preface with no timer, so a client that connects and sends
//! nothing would hold its connection forever.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::either::Either;

use crate::body::Body;
use crate::deadline::{Deadlines, Stall};
use crate::proxy::Peer;

/// A client's connection, plain or TLS: one type, so that hyper's server code is built (and
/// inlined) once, as it was before TLS, rather than once for each.
type ClientIo = Either<TcpStream, Box<TlsStream<TcpStream>>>;

/// How connections are served.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ConnectionLimits {
    /// A client that has not sent a request's headers within this long is disconnected.
    pub(crate) header_read_timeout: Duration,
    /// A client that leaves a response unread (takes none of it) this long is disconnected.
    pub(crate) send_timeout: Duration,
    /// Most headers hyper parses; the gateway refuses more than its own limit in the API's shape,
    /// so this sits above it.
    pub(crate) max_headers: usize,
    /// How long a stop waits for requests in flight.
    pub(crate) drain_timeout: Duration,
}

/// Serves `listener` with `handle` until `shutdown` completes, then stops accepting and waits up
/// to the drain timeout for open requests to finish. The header-read timeouts run on `timers`.
/// With `tls`, each connection speaks TLS first; a client that has not finished its handshake
/// within the header-read timeout is disconnected, as one slow to send its headers is.
pub(crate) async fn serve<H, F>(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
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
        .timer(timers.clone())
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
        let client = Arc::new(Peer::new(peer, tls.is_some()));
        let service = hyper::service::service_fn(move |request| {
            // Boxed so that hyper moves a pointer, not the whole request state machine.
            let response = Box::pin(handle(request, Arc::clone(&client)));
            async move { Ok::<_, Infallible>(response.await) }
        });
        let Some(acceptor) = &tls else {
            let io = Paced {
                io: TokioIo::new(ClientIo::Left(stream)),
                timers: timers.clone(),
                limit: limits.send_timeout,
                stall: Stall::default(),
            };
            let connection = graceful.watch(builder.serve_connection(io, service));
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    log_ended(&error, peer);
                }
            });
            continue;
        };
        let (acceptor, watcher, builder) = (acceptor.clone(), graceful.watcher(), builder.clone());
        let timers = timers.clone();
        tokio::spawn(async move {
            let secured =
                match tokio::time::timeout(limits.header_read_timeout, acceptor.accept(stream))
                    .await
                {
                    Ok(Ok(secured)) => secured,
                    Ok(Err(error)) => {
                        tracing::debug!(%error, %peer, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake not finished in time");
                        return;
                    }
                };
            let io = Paced {
                io: TokioIo::new(ClientIo::Right(Box::new(secured))),
                timers,
                limit: limits.send_timeout,
                stall: Stall::default(),
            };
            if let Err(error) = watcher.watch(builder.serve_connection(io, service)).await {
                log_ended(&error, peer);
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

fn log_ended(error: &hyper::Error, peer: std::net::SocketAddr) {
    // hyper's own words say where (e.g. writing a body); the cause says why.
    let cause = std::error::Error::source(error).map(ToString::to_string);
    tracing::debug!(%error, cause, %peer, "connection ended with an error");
}

/// A client's connection whose writes wait at most `limit` for the client to take some of what
/// was sent: one that stops reading (a slow-read attack, or a client gone without a word) is
/// disconnected, with its response and the upstream connection behind it, as nginx's
/// `send_timeout` does. A client that keeps reading, however slowly, is never cut. The timer is
/// armed only while a write waits.
struct Paced<T> {
    io: T,
    timers: Deadlines,
    limit: Duration,
    /// Armed while a write waits for room.
    stall: Stall,
}

impl<T> Paced<T> {
    /// `result` of a write, or, once the client has taken nothing for `limit`, an error.
    fn watch<R>(
        &mut self,
        result: Poll<std::io::Result<R>>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<R>> {
        if result.is_ready() {
            self.stall.progressed();
            return result;
        }
        if !self.stall.expired(&self.timers, self.limit, cx) {
            return Poll::Pending;
        }
        Poll::Ready(Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!(
                "the client read nothing of its response for {:?}",
                self.limit
            ),
        )))
    }
}

impl<T: hyper::rt::Read + Unpin> hyper::rt::Read for Paced<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<T: hyper::rt::Write + Unpin> hyper::rt::Write for Paced<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.io).poll_write(cx, buf);
        this.watch(result, cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.watch(result, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.io).poll_flush(cx);
        this.watch(result, cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
