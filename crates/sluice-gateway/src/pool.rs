//! Keep-alive connections to the upstream, one pool per accept loop: a request takes the
//! connection most recently put back, sends on it, and its response body puts it back once the
//! body has been read to its end and the connection is ready for another request. One upstream
//! and one thread per pool, so there is nothing to key connections by and no lock anyone else
//! contends for; a general client's pool (keyed by scheme and authority, shared across threads,
//! returning every connection through a spawned task) cost the proxy more per request than its
//! own header handling.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_util::either::Either;

use crate::body::Outgoing;
use crate::deadline::{Deadlines, Stall};
use crate::proxy::UpstreamTls;

/// A connection to the upstream, plain or TLS: one type, so that hyper's client code is built
/// (and inlined) once, as it was before TLS, rather than once for each.
type UpstreamIo = Either<TcpStream, Box<TlsStream<TcpStream>>>;

/// Idle connections kept per pool; more are closed when they come back.
const MAX_IDLE: usize = 1024;
/// Connecting gives up after this long (the request's own timeout still bounds the whole).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// An idle connection is closed after one to two of these without use.
const IDLE_SWEEP: Duration = Duration::from_secs(30);

/// Why a request could not be sent or answered.
#[derive(Debug)]
pub(crate) enum UpstreamError {
    /// No connection could be opened.
    Connect(std::io::Error),
    /// The connection failed during the exchange.
    Exchange(hyper::Error),
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamError::Connect(error) => write!(f, "cannot connect: {error}"),
            UpstreamError::Exchange(error) => write!(f, "{error}"),
        }
    }
}

/// The connections of one accept loop to the upstream at `address`.
#[derive(Debug)]
pub(crate) struct Pool {
    address: String,
    /// For an `https://` upstream, how its connections speak TLS.
    tls: Option<UpstreamTls>,
    /// The accept loop's timers, and how long a response's body may pause between two parts.
    timers: Deadlines,
    body_idle: Duration,
    idle: Mutex<Vec<Idle>>,
    /// The current sweep period; a connection idle since an earlier one is closed by the next
    /// sweep.
    period: AtomicU64,
}

#[derive(Debug)]
struct Idle {
    sender: SendRequest<Outgoing>,
    period: u64,
}

impl Pool {
    /// A pool for the upstream at `address` (`host:port`), over TLS when `tls` says how, with a
    /// task on the current runtime that closes connections left idle, ending when the pool is
    /// dropped. A response body that sends nothing for `body_idle` (timed by `timers`) ends in
    /// an error.
    pub(crate) fn new(
        address: String,
        tls: Option<UpstreamTls>,
        timers: Deadlines,
        body_idle: Duration,
    ) -> Arc<Pool> {
        let pool = Arc::new(Pool {
            address,
            tls,
            timers,
            body_idle,
            idle: Mutex::new(Vec::new()),
            period: AtomicU64::new(0),
        });
        let weak = Arc::downgrade(&pool);
        tokio::spawn(sweep(weak));
        pool
    }

    /// Sends `request` on an idle connection, or on a new one when none is idle. A request a
    /// reused connection could not take (closed by the upstream while idle) goes on another.
    pub(crate) async fn send(
        self: &Arc<Pool>,
        mut request: Request<Outgoing>,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        loop {
            let (mut sender, reused) = match self.take() {
                Some(sender) => (sender, true),
                // Boxed: connecting (a TLS handshake's state among it) is rare, and would
                // otherwise make every request's future as large as the handshake's.
                None => (Box::pin(self.connect()).await?, false),
            };
            // Pooled connections were ready when they came back; one may have closed since.
            if reused && !sender.is_ready() && sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(request).await {
                Ok(response) => {
                    let pool = Arc::clone(self);
                    return Ok(response.map(|body| UpstreamBody {
                        body,
                        ended: false,
                        sender: Some(sender),
                        pool,
                        stall: Stall::default(),
                    }));
                }
                Err(mut error) => match error.take_message() {
                    Some(unsent) if reused => request = unsent,
                    _ => return Err(UpstreamError::Exchange(error.into_error())),
                },
            }
        }
    }

    /// Sends `request`, which asks to switch protocols, on a new connection of its own that can
    /// switch (`hyper::upgrade::on` the response) and never goes back to the pool.
    pub(crate) async fn upgrade(
        self: &Arc<Pool>,
        request: Request<Outgoing>,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        // The stream itself behind the trait object, not the pool's `Either` of them: that
        // `Either` in a vtable is no longer inlined where the pooled connections read.
        let io: Box<dyn SwitchingIo> = match Box::pin(self.open()).await? {
            UpstreamIo::Left(plain) => Box::new(plain),
            UpstreamIo::Right(secured) => secured,
        };
        let mut sender = handshake_switching(io).await?;
        let response = sender
            .send_request(request.map(SwitchingBody))
            .await
            .map_err(UpstreamError::Exchange)?;
        // The sender can go: a 101 has switched the connection already, and any other answer's
        // body is read to its end before the connection closes.
        let pool = Arc::clone(self);
        Ok(response.map(|body| UpstreamBody {
            body,
            ended: false,
            sender: None,
            pool,
            stall: Stall::default(),
        }))
    }

    /// The most recently returned connection that is still open.
    fn take(&self) -> Option<SendRequest<Outgoing>> {
        let mut idle = self
            .idle
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        while let Some(entry) = idle.pop() {
            if !entry.sender.is_closed() {
                return Some(entry.sender);
            }
        }
        None
    }

    /// Pools `sender` once its connection is ready for another request: at once when it is
    /// (the common case), else from a task that waits for it — the upstream may have answered
    /// before the request's body was all sent, and the next request must not wait behind it.
    fn put_back(self: &Arc<Pool>, mut sender: SendRequest<Outgoing>) {
        if sender.is_closed() {
            return;
        }
        if sender.is_ready() {
            self.pool(sender);
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let pool = Arc::clone(self);
            runtime.spawn(async move {
                if sender.ready().await.is_ok() {
                    pool.pool(sender);
                }
            });
        }
    }

    fn pool(&self, sender: SendRequest<Outgoing>) {
        let period = self.period.load(Ordering::Relaxed);
        let mut idle = self
            .idle
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(Idle { sender, period });
        }
    }

    /// Ends a sweep period: closes the connections idle since before it began.
    fn sweep(&self) {
        let ending = self.period.fetch_add(1, Ordering::Relaxed);
        let mut idle = self
            .idle
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        idle.retain(|entry| entry.period == ending && !entry.sender.is_closed());
    }

    /// A new connection, for the pool.
    async fn connect(&self) -> Result<SendRequest<Outgoing>, UpstreamError> {
        handshake(self.open().await?).await
    }

    /// A new connection to the upstream, TLS set up if it speaks TLS.
    async fn open(&self) -> Result<UpstreamIo, UpstreamError> {
        let stream =
            match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&self.address)).await {
                Err(_) => {
                    return Err(UpstreamError::Connect(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!(
                            "no connection to {} within {CONNECT_TIMEOUT:?}",
                            self.address
                        ),
                    )));
                }
                Ok(connected) => connected.map_err(UpstreamError::Connect)?,
            };
        stream.set_nodelay(true).map_err(UpstreamError::Connect)?;
        let Some(tls) = &self.tls else {
            return Ok(UpstreamIo::Left(stream));
        };
        // A TLS handshake that fails (an untrusted certificate, another name) is a failure to
        // connect, as one that hangs is.
        let secured = tokio::time::timeout(
            CONNECT_TIMEOUT,
            tls.connector.connect(tls.name.clone(), stream),
        )
        .await
        .map_err(|_| {
            UpstreamError::Connect(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "no TLS session with {} within {CONNECT_TIMEOUT:?}",
                    self.address
                ),
            ))
        })?
        .map_err(UpstreamError::Connect)?;
        Ok(UpstreamIo::Right(Box::new(secured)))
    }
}

/// Opens an HTTP/1.1 client connection over `io`, driven by a task of its own.
async fn handshake(io: UpstreamIo) -> Result<SendRequest<Outgoing>, UpstreamError> {
    let (sender, connection) = http1::handshake(TokioIo::new(io))
        .await
        .map_err(UpstreamError::Exchange)?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "upstream connection ended");
        }
    });
    Ok(sender)
}

/// A connection that may switch protocols, and the body of a request asking it to, as types of
/// their own: hyper's client is then built a second time for them, and the pooled connections'
/// copy, used from one place only, stays inlined as it was (driving connections that may switch
/// through the same copy cost 340 to 460 more instructions per proxied request).
trait SwitchingIo: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}

impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> SwitchingIo for T {}

/// See [`SwitchingIo`].
struct SwitchingBody(Outgoing);

impl HttpBody for SwitchingBody {
    type Data = <Outgoing as HttpBody>::Data;
    type Error = <Outgoing as HttpBody>::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().0).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.0.size_hint()
    }
}

/// Opens an HTTP/1.1 client connection that may switch protocols over `io`, driven by a task of
/// its own.
async fn handshake_switching(
    io: Box<dyn SwitchingIo>,
) -> Result<SendRequest<SwitchingBody>, UpstreamError> {
    let (sender, connection) = http1::handshake(TokioIo::new(io))
        .await
        .map_err(UpstreamError::Exchange)?;
    tokio::spawn(async move {
        if let Err(error) = connection.with_upgrades().await {
            tracing::debug!(%error, "upstream connection ended");
        }
    });
    Ok(sender)
}

/// Every `IDLE_SWEEP`, closes the connections not used since the sweep before.
async fn sweep(pool: Weak<Pool>) {
    let mut ticks = tokio::time::interval(IDLE_SWEEP);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let Some(pool) = pool.upgrade() else { return };
        pool.sweep();
    }
}

/// An upstream response's body, streamed through; once read to its end, its connection goes
/// back to the pool. A body dropped before its end takes its connection with it, since what is
/// left of the response would stand in the next one's way. An upstream that stops sending for
/// the pool's `body_idle` midway ends the body in an error (the client's connection is closed:
/// a response already begun has no other way to say it is incomplete), as nginx's
/// `proxy_read_timeout` does; without that, a stalled upstream held the client for ever.
#[derive(Debug)]
pub struct UpstreamBody {
    body: Incoming,
    ended: bool,
    /// The pooled connection it came on, to put back; `None` for a connection of its own, or
    /// once the body failed.
    sender: Option<SendRequest<Outgoing>>,
    /// The pool, and the timers of its stall watch.
    pool: Arc<Pool>,
    /// Armed while the upstream keeps the next part waiting.
    stall: Stall,
}

/// Why an upstream's body ended early.
#[derive(Debug)]
pub struct BodyError(BodyErrorKind);

#[derive(Debug)]
enum BodyErrorKind {
    Upstream(hyper::Error),
    Stalled(Duration),
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            BodyErrorKind::Upstream(error) => write!(f, "{error}"),
            BodyErrorKind::Stalled(after) => {
                write!(
                    f,
                    "the upstream sent nothing for {after:?} midway through its body"
                )
            }
        }
    }
}

impl std::error::Error for BodyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.0 {
            BodyErrorKind::Upstream(error) => Some(error),
            BodyErrorKind::Stalled(_) => None,
        }
    }
}

impl HttpBody for UpstreamBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let Poll::Ready(frame) = Pin::new(&mut this.body).poll_frame(cx) else {
            // Nothing yet: the watch runs from the first wait, and only a part resets it.
            let pool = &this.pool;
            if !this.stall.expired(&pool.timers, pool.body_idle, cx) {
                return Poll::Pending;
            }
            let after = pool.body_idle;
            this.sender = None;
            return Poll::Ready(Some(Err(BodyError(BodyErrorKind::Stalled(after)))));
        };
        this.stall.progressed();
        match &frame {
            None => this.ended = true,
            Some(Err(_)) => this.sender = None,
            Some(Ok(_)) => {}
        }
        Poll::Ready(
            frame.map(|frame| frame.map_err(|error| BodyError(BodyErrorKind::Upstream(error)))),
        )
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        if let Some(sender) = self.sender.take()
            && (self.ended || self.body.is_end_stream())
        {
            self.pool.put_back(sender);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::net::SocketAddr;
    use std::sync::atomic::AtomicUsize;

    use http_body_util::{BodyExt, Either, Full};
    use hyper::service::service_fn;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    use super::*;

    /// An upstream answering `ok`, counting the connections it accepts. `/close` answers with
    /// `Connection: close`; `/big` answers a megabyte.
    async fn upstream() -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let accepted = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                let service = service_fn(|request: Request<Incoming>| async move {
                    let mut response = Response::new(Full::new(Bytes::from_static(b"ok")));
                    match request.uri().path() {
                        "/close" => {
                            response.headers_mut().insert(
                                http::header::CONNECTION,
                                http::HeaderValue::from_static("close"),
                            );
                        }
                        "/big" => {
                            *response.body_mut() = Full::new(Bytes::from(vec![b'x'; 1 << 20]))
                        }
                        _ => {}
                    }
                    Ok::<_, Infallible>(response)
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        (address, accepted)
    }

    /// A pool for `address` with the gateway's default timeouts.
    fn pool_for(address: SocketAddr) -> Arc<Pool> {
        let timeout = Duration::from_secs(30);
        Pool::new(
            address.to_string(),
            None,
            Deadlines::for_timeouts(timeout),
            timeout,
        )
    }

    fn get(path: &str) -> Request<Outgoing> {
        Request::builder()
            .uri(path)
            .header(http::header::HOST, "upstream")
            .body(Either::Left(Full::new(Bytes::new())))
            .expect("a request")
    }

    async fn fetch(pool: &Arc<Pool>, path: &str) -> Bytes {
        let response = pool.send(get(path)).await.expect("an answer");
        response
            .into_body()
            .collect()
            .await
            .expect("a body")
            .to_bytes()
    }

    fn idle(pool: &Pool) -> usize {
        pool.idle.lock().expect("lock").len()
    }

    #[tokio::test]
    async fn one_connection_serves_requests_one_after_another() {
        let (address, accepted) = upstream().await;
        let pool = pool_for(address);
        for _ in 0..5 {
            assert_eq!(fetch(&pool, "/").await, "ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(idle(&pool), 1);
    }

    #[tokio::test]
    async fn concurrent_requests_each_get_a_connection_and_give_it_back() {
        let (address, accepted) = upstream().await;
        let pool = pool_for(address);
        let four = || async {
            let answers = tokio::join!(
                fetch(&pool, "/"),
                fetch(&pool, "/"),
                fetch(&pool, "/"),
                fetch(&pool, "/"),
            );
            assert_eq!(answers, (ok(), ok(), ok(), ok()));
        };
        four().await;
        assert_eq!(accepted.load(Ordering::SeqCst), 4);
        assert_eq!(idle(&pool), 4);
        four().await;
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            4,
            "the four idle ones are reused"
        );
    }

    fn ok() -> Bytes {
        Bytes::from_static(b"ok")
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closes_is_not_reused() {
        let (address, accepted) = upstream().await;
        let pool = pool_for(address);
        assert_eq!(fetch(&pool, "/close").await, "ok");
        assert_eq!(fetch(&pool, "/").await, "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_body_dropped_before_its_end_takes_its_connection_with_it() {
        let (address, accepted) = upstream().await;
        let pool = pool_for(address);
        let mut body = pool.send(get("/big")).await.expect("an answer").into_body();
        let first = body.frame().await.expect("a frame").expect("data");
        assert!(first.is_data());
        drop(body);
        assert_eq!(
            idle(&pool),
            0,
            "a connection with a response left on it is not pooled"
        );
        assert_eq!(fetch(&pool, "/").await, "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_connection_idle_through_a_whole_sweep_period_is_closed() {
        // An upstream that sees its connection closed.
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let pool = pool_for(address);
        let sent = tokio::spawn({
            let pool = Arc::clone(&pool);
            async move { pool.send(get("/")).await.map(|response| response.status()) }
        });
        let (mut stream, _) = listener.accept().await.expect("a connection");
        let mut request = [0_u8; 1024];
        let read = stream.read(&mut request).await.expect("the request");
        assert!(request[..read].starts_with(b"GET / HTTP/1.1\r\n"));
        tokio::io::AsyncWriteExt::write_all(&mut stream, b"HTTP/1.1 204 No Content\r\n\r\n")
            .await
            .expect("answered");
        let status = sent.await.expect("joined").expect("an answer");
        assert_eq!(status, http::StatusCode::NO_CONTENT);
        assert_eq!(idle(&pool), 1);

        pool.sweep();
        assert_eq!(idle(&pool), 1, "used in the period the first sweep ends");
        pool.sweep();
        assert_eq!(idle(&pool), 0, "idle through a whole period");
        let read = stream.read(&mut request).await.expect("end of stream");
        assert_eq!(read, 0, "the upstream sees the connection closed");
    }

    #[tokio::test]
    async fn a_connection_still_sending_its_request_does_not_hold_up_the_next() {
        // An upstream that answers once it has a request's head and never reads its body.
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let accepted = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buffer = [0_u8; 4096];
                    while !head.windows(4).any(|window| window == b"\r\n\r\n") {
                        let read = stream.read(&mut buffer).await.expect("read");
                        assert!(read > 0, "the head ends first");
                        head.extend_from_slice(&buffer[..read]);
                    }
                    tokio::io::AsyncWriteExt::write_all(
                        &mut stream,
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
                    )
                    .await
                    .expect("answered");
                    // Held open, unread, until the test ends.
                    std::future::pending::<()>().await;
                });
            }
        });
        let pool = pool_for(address);
        let upload = Request::builder()
            .method("POST")
            .uri("/upload")
            .header(http::header::HOST, "upstream")
            .body(Either::Left(Full::new(Bytes::from(vec![0_u8; 32 << 20]))))
            .expect("a request");
        let early = pool.send(upload).await.expect("an early answer");
        let body = early
            .into_body()
            .collect()
            .await
            .expect("a body")
            .to_bytes();
        assert_eq!(body, "ok");
        assert_eq!(idle(&pool), 0, "its connection is still sending the upload");

        let next = tokio::time::timeout(Duration::from_secs(10), fetch(&pool, "/"))
            .await
            .expect("the next request is not held up behind the upload");
        assert_eq!(next, "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn nothing_listening_is_a_connect_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        drop(listener);
        let pool = pool_for(address);
        let error = pool.send(get("/")).await.expect_err("refused");
        assert!(matches!(error, UpstreamError::Connect(_)), "{error:?}");
        assert!(error.to_string().starts_with("cannot connect"), "{error}");
    }
}
