//! The accept loop shared by the gateway and the built-in echo upstream: HTTP/1.1 connections
//! with a bound on how long a client may take to send its headers and on how long it may leave a
//! response unread, and a graceful stop that drains requests in flight within a bound. A client
//! that asks for HTTP/2 gets it — by ALPN `h2` over TLS, or by opening a plain connection with
//! HTTP/2's preface (prior knowledge) — its requests put in HTTP/1.1's terms for the policy and
//! the upstream.
//!
//! Not hyper-util's auto (HTTP/1 + h2c) builder: it reads the protocol preface with no timer, so
//! a client that connects and sends nothing would hold its connection forever. Here the first
//! bytes are peeked within the header-read timeout, and a TLS handshake is bounded by it; an
//! HTTP/2 connection is then closed once it has had no request open and sent nothing for a
//! header-read timeout (within two, as it is looked at once per timeout).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderValue, Request, Response, header};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

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
    /// The largest header section an HTTP/2 client may send, decoded (hyper's 16 KiB default
    /// turns away large cookies that HTTP/1.1 takes); also above the gateway's own limit.
    pub(crate) http2_header_list: u32,
    /// How long a stop waits for requests in flight.
    pub(crate) drain_timeout: Duration,
    /// Whether a plain connection that opens with HTTP/2's preface is served HTTP/2 (h2c with
    /// prior knowledge); over TLS, the acceptor's ALPN says.
    pub(crate) http2: bool,
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
    let mut h2 = http2::Builder::new(TokioExecutor::new());
    h2.timer(timers.clone())
        .max_header_list_size(limits.http2_header_list);
    // Connections are stopped by hand (HTTP/1: no new request; HTTP/2: GOAWAY) and waited for
    // as tasks, rather than through hyper-util's watcher, which cannot watch an HTTP/1
    // connection that may be upgraded.
    let (stopping, connections) = (CancellationToken::new(), TaskTracker::new());
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
        let (acceptor, builder) = (tls.clone(), builder.clone());
        let (h2, stopping) = (h2.clone(), stopping.clone());
        let timers = timers.clone();
        connections.spawn(async move {
            // A stop does not wait for a client that has not yet said what it speaks.
            let opened = async {
                match acceptor {
                    None if !limits.http2 => Some((ClientIo::Left(stream), false)),
                    None => match opening(&stream, limits.header_read_timeout).await {
                        Opening::Nothing => None,
                        opened => Some((ClientIo::Left(stream), matches!(opened, Opening::Http2))),
                    },
                    Some(acceptor) => {
                        let handshake = acceptor.accept(stream);
                        let secured =
                            match tokio::time::timeout(limits.header_read_timeout, handshake).await
                            {
                                Ok(Ok(secured)) => secured,
                                Ok(Err(error)) => {
                                    tracing::debug!(%error, %peer, "TLS handshake failed");
                                    return None;
                                }
                                Err(_) => {
                                    tracing::debug!(%peer, "TLS handshake not finished in time");
                                    return None;
                                }
                            };
                        let http2 = secured.get_ref().1.alpn_protocol() == Some(b"h2");
                        Some((ClientIo::Right(Box::new(secured)), http2))
                    }
                }
            };
            let opened = tokio::select! {
                opened = opened => opened,
                () = stopping.cancelled() => None,
            };
            let Some((io, http2)) = opened else {
                return;
            };
            let io = Paced {
                io: TokioIo::new(io),
                timers,
                limit: limits.send_timeout,
                stall: Stall::default(),
            };
            if http2 {
                serve_http2(h2, io, handle, client, limits, stopping).await;
                return;
            }
            let service = hyper::service::service_fn(move |request| {
                // Boxed so that hyper moves a pointer, not the whole request state machine.
                let response = Box::pin(handle(request, Arc::clone(&client)));
                async move { Ok::<_, Infallible>(response.await) }
            });
            // With upgrades: a request the handler answers with 101 leaves its connection to the
            // handler's tunnel (`hyper::upgrade::on`), and this task ends.
            let connection = builder.serve_connection(io, service).with_upgrades();
            tokio::pin!(connection);
            let stop = stopping.cancelled();
            tokio::pin!(stop);
            let mut told = false;
            let ended = std::future::poll_fn(|cx| {
                if !told && stop.as_mut().poll(cx).is_ready() {
                    // The request in flight, if any, is answered; then the connection closes.
                    told = true;
                    connection.as_mut().graceful_shutdown();
                }
                connection.as_mut().poll(cx)
            })
            .await;
            if let Err(error) = ended {
                log_ended(&error, peer);
            }
        });
    }
    drop(listener);
    stopping.cancel();
    connections.close();
    tokio::select! {
        () = connections.wait() => {}
        () = tokio::time::sleep(limits.drain_timeout) => {
            tracing::warn!("requests still open after the drain timeout were cut");
        }
    }
}

/// How a client opened a plain connection.
enum Opening {
    /// With HTTP/2's connection preface: HTTP/2 with prior knowledge (RFC 9113, 3.3).
    Http2,
    /// With anything else: HTTP/1.
    Http1,
    /// With nothing, within the header-read timeout, or it hung up.
    Nothing,
}

/// How the client of `stream` opened it, read without taking a byte (so that hyper reads them
/// again), waiting at most `within` for the first.
async fn opening(stream: &TcpStream, within: Duration) -> Opening {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let mut seen = [0_u8; PREFACE.len()];
    let looked = tokio::time::timeout(within, async {
        loop {
            match stream.peek(&mut seen).await {
                Ok(0) | Err(_) => return Opening::Nothing,
                Ok(read) if seen.get(..read) != PREFACE.get(..read) => return Opening::Http1,
                Ok(read) if read == PREFACE.len() => return Opening::Http2,
                // A preface cut short, which peeking again would see at once: wait for the rest.
                Ok(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    });
    looked.await.unwrap_or(Opening::Nothing)
}

/// Serves one HTTP/2 connection until it ends: on a stop, or once it has been idle for a
/// header-read timeout, it is told to go away (GOAWAY) and given the drain timeout to finish
/// the streams it has open.
async fn serve_http2<H, F>(
    builder: http2::Builder<TokioExecutor>,
    io: Paced<TokioIo<ClientIo>>,
    handle: H,
    client: Arc<Peer>,
    limits: ConnectionLimits,
    stopping: CancellationToken,
) where
    H: Fn(Request<Incoming>, Arc<Peer>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let activity = Arc::new(Activity::default());
    let peer = client.address();
    let service = {
        let activity = Arc::clone(&activity);
        hyper::service::service_fn(move |mut request: Request<Incoming>| {
            let open = Open::new(&activity);
            in_http1_terms(&mut request);
            let response = Box::pin(handle(request, Arc::clone(&client)));
            async move {
                // The stream counts as open until its response body is done with.
                Ok::<_, Infallible>(response.await.map(|body| Tracked { body, _open: open }))
            }
        })
    };
    let io = Noted {
        io,
        activity: Arc::clone(&activity),
    };
    let connection = builder.serve_connection(io, service);
    tokio::pin!(connection);
    let going = async {
        tokio::select! {
            () = stopping.cancelled() => {}
            () = async {
                loop {
                    tokio::time::sleep(limits.header_read_timeout).await;
                    if activity.idle() {
                        break;
                    }
                }
            } => {}
        }
    };
    let ended = tokio::select! {
        ended = connection.as_mut() => Some(ended),
        () = going => None,
    };
    let ended = match ended {
        Some(ended) => ended,
        None => {
            connection.as_mut().graceful_shutdown();
            match tokio::time::timeout(limits.drain_timeout, connection).await {
                Ok(ended) => ended,
                Err(_) => return,
            }
        }
    };
    if let Err(error) = ended {
        log_ended(&error, peer);
    }
}

/// An HTTP/2 request put in the terms HTTP/1.1 gives it, which is how the policy reads headers
/// and how an HTTP/1.1 upstream must receive it: its `:authority` is its `Host` (RFC 9113,
/// 8.3.1), and cookies sent as several fields are one field again (8.2.3).
fn in_http1_terms(request: &mut Request<Incoming>) {
    if let Some(authority) = request.uri().authority()
        && let Ok(host) = HeaderValue::from_str(authority.as_str())
    {
        request.headers_mut().insert(header::HOST, host);
    }
    let headers = request.headers_mut();
    let mut cookies = headers.get_all(header::COOKIE).iter();
    if let (Some(first), Some(_)) = (cookies.next(), cookies.next()) {
        let mut joined = first.as_bytes().to_vec();
        for cookie in headers.get_all(header::COOKIE).iter().skip(1) {
            joined.extend_from_slice(b"; ");
            joined.extend_from_slice(cookie.as_bytes());
        }
        if let Ok(value) = HeaderValue::from_bytes(&joined) {
            headers.insert(header::COOKIE, value);
        }
    }
}

/// What an HTTP/2 connection is doing: streams open, and whether the client has sent anything
/// or a stream has ended since the connection was last looked at.
#[derive(Default)]
struct Activity {
    open: AtomicUsize,
    stirred: AtomicBool,
}

impl Activity {
    /// No stream open, nothing read and no stream ended since the last look: a client that has
    /// just had a slow answer is not told to go away as it sends its next request.
    fn idle(&self) -> bool {
        let stirred = self.stirred.swap(false, Ordering::Relaxed);
        self.open.load(Ordering::Relaxed) == 0 && !stirred
    }
}

/// One open stream of [`Activity`], for as long as this lives.
struct Open(Arc<Activity>);

impl Open {
    fn new(activity: &Arc<Activity>) -> Open {
        activity.open.fetch_add(1, Ordering::Relaxed);
        Open(Arc::clone(activity))
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.stirred.store(true, Ordering::Relaxed);
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that keeps its stream counted as open until hyper is done with it.
struct Tracked {
    body: Body,
    _open: Open,
}

impl hyper::body::Body for Tracked {
    type Data = <Body as hyper::body::Body>::Data;
    type Error = <Body as hyper::body::Body>::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A connection whose reads are noted in its [`Activity`].
struct Noted<T> {
    io: T,
    activity: Arc<Activity>,
}

impl<T: hyper::rt::Read + Unpin> hyper::rt::Read for Noted<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.io).poll_read(cx, buf);
        if result.is_ready() {
            this.activity.stirred.store(true, Ordering::Relaxed);
        }
        result
    }
}

impl<T: hyper::rt::Write + Unpin> hyper::rt::Write for Noted<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_is_idle_only_after_a_look_with_nothing_open_read_or_ended_since() {
        let activity = Arc::new(Activity::default());
        assert!(activity.idle(), "a connection that has done nothing");
        let open = Open::new(&activity);
        assert!(!activity.idle(), "a stream open");
        assert!(!activity.idle(), "a stream still open");
        drop(open);
        // An answer just ended: the client may be sending its next request.
        assert!(!activity.idle(), "a stream ended since the last look");
        assert!(activity.idle());
        activity.stirred.store(true, Ordering::Relaxed);
        assert!(!activity.idle(), "bytes read since the last look");
        assert!(activity.idle());
    }
}
