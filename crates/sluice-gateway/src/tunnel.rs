//! Protocol upgrades passed through: a client's HTTP/1.1 request to switch protocols (a
//! WebSocket's opening handshake, or any other `Upgrade:`) is decided by the policy like any
//! other request and, once admitted, sent to the upstream on a connection of its own. When the
//! upstream agrees (101), the client's connection and that one are joined, and bytes are copied
//! both ways, untouched, until either side closes (then both are), the tunnel carries nothing
//! for its idle timeout, or the gateway stops.
//!
//! The request is settled when its tunnel closes, so a concurrency limit on the route counts open
//! tunnels (at most N WebSockets per user), not handshakes. A tunnel renews its hold every half
//! lease for as long as it is open, since a hold no one renews or gives back lapses after one to
//! two leases (that is how a crashed gateway's holds come back).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderMap, HeaderValue, Method, Request, Response, Version, header};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use sluice_core::Clock;

use crate::pool::UpstreamBody;
use crate::proxy::strip_hop_by_hop;

/// An admitted request's hold on its counters, kept for as long as its tunnel is open.
pub(crate) trait Held: Send + 'static {
    /// How often to renew it; `None` when it holds nothing that lapses.
    fn renew_every(&self) -> Option<Duration>;

    /// Keeps it for another lease; `false` when the store did not take the renewal.
    fn renew(&mut self) -> Pin<Box<dyn Future<Output = bool> + Send + '_>>;

    /// Gives it back: the tunnel is closed.
    fn settle(self: Box<Self>) -> Pin<Box<dyn Future<Output = ()> + Send>>;
}

/// The tunnels of one accept loop.
#[derive(Clone)]
pub(crate) struct Tunnels {
    /// A tunnel that carries nothing either way for this long is closed (within twice this:
    /// it is looked at once per timeout).
    idle_timeout: Duration,
    stopping: CancellationToken,
    tracker: TaskTracker,
    /// For how long a tunnel was open, in its log line.
    clock: Arc<dyn Clock>,
}

/// Whether a request with this method, version and headers asks to switch protocols, to ones
/// that are all `allowed`: an HTTP/1.1 request with an `Upgrade` header that its `Connection`
/// header names (RFC 9110 §7.8). `CONNECT` is not a switch of protocols and is not tunnelled.
pub(crate) fn requested(
    method: &Method,
    version: Version,
    headers: &HeaderMap,
    allowed: &[String],
) -> bool {
    // A value that is not text names nothing that can be allowed.
    let tokens = |name| {
        headers
            .get_all(name)
            .iter()
            .flat_map(|value| value.to_str().unwrap_or("\u{0}").split(','))
            .map(str::trim)
            .filter(|token| !token.is_empty())
    };
    let protocol_allowed = |token: &str| {
        let name = token.split('/').next().unwrap_or(token).trim();
        allowed
            .iter()
            .any(|allowed| allowed.eq_ignore_ascii_case(name))
    };
    version == Version::HTTP_11
        && method != Method::CONNECT
        && tokens(header::CONNECTION).any(|token| token.eq_ignore_ascii_case("upgrade"))
        && tokens(header::UPGRADE).next().is_some()
        && tokens(header::UPGRADE).all(protocol_allowed)
}

/// A client's request to switch protocols, taken from it.
pub(crate) struct Switching {
    /// The client's connection, once the gateway has answered 101.
    client: OnUpgrade,
    /// What it asked to switch to (`Upgrade`).
    protocols: Vec<HeaderValue>,
}

impl Switching {
    /// What `request` asks to switch to, if it does; boxed, so that the proxy's future, which
    /// holds it, hardly grows for the requests that do not.
    #[inline(never)]
    pub(crate) fn asked(
        request: &mut Request<Incoming>,
        allowed: &[String],
    ) -> Option<Box<Switching>> {
        if !requested(
            request.method(),
            request.version(),
            request.headers(),
            allowed,
        ) {
            return None;
        }
        let protocols = request
            .headers()
            .get_all(header::UPGRADE)
            .iter()
            .cloned()
            .collect();
        Some(Box::new(Switching {
            client: hyper::upgrade::on(request),
            protocols,
        }))
    }

    /// Asks the upstream, in `headers`, to switch as the client asked: `Connection` and
    /// `Upgrade` are hop-by-hop and were dropped with the others.
    pub(crate) fn ask(&self, headers: &mut HeaderMap) {
        switch_to(headers, &self.protocols);
    }
}

/// `Connection: upgrade` and `Upgrade: protocols` in `headers`.
fn switch_to(headers: &mut HeaderMap, protocols: &[HeaderValue]) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    for protocol in protocols {
        headers.append(header::UPGRADE, protocol.clone());
    }
}

impl Tunnels {
    pub(crate) fn new(idle_timeout: Duration, clock: Arc<dyn Clock>) -> Tunnels {
        Tunnels {
            idle_timeout,
            stopping: CancellationToken::new(),
            tracker: TaskTracker::new(),
            clock,
        }
    }

    /// The answer to the client whose request `switching` the upstream agreed to with
    /// `response` (101): that agreement, with its hop-by-hop headers as the client's connection
    /// needs them. Once it is sent, the client's connection and the upstream's are joined on a
    /// task of their own, which keeps `held` renewed while the tunnel is open and settles it when
    /// the tunnel closes.
    #[inline(never)]
    pub(crate) fn open(
        &self,
        switching: Switching,
        mut response: Response<UpstreamBody>,
        request_id: &str,
        held: Box<dyn Held>,
    ) -> Response<UpstreamBody> {
        let upstream = hyper::upgrade::on(&mut response);
        let (mut parts, body) = response.into_parts();
        let protocols: Vec<HeaderValue> = parts
            .headers
            .get_all(header::UPGRADE)
            .iter()
            .cloned()
            .collect();
        strip_hop_by_hop(&mut parts.headers);
        switch_to(&mut parts.headers, &protocols);
        self.join(switching.client, upstream, request_id.to_owned(), held);
        Response::from_parts(parts, body)
    }

    /// Joins the client's connection and the upstream's once both have switched, on a task of
    /// its own; renews `held` while the tunnel is open and settles it once it has closed.
    fn join(
        &self,
        client: OnUpgrade,
        upstream: OnUpgrade,
        request_id: String,
        mut held: Box<dyn Held>,
    ) {
        let (idle_timeout, stopping) = (self.idle_timeout, self.stopping.clone());
        let clock = Arc::clone(&self.clock);
        self.tracker.spawn(async move {
            let switched = tokio::select! {
                switched = async { tokio::try_join!(client, upstream) } => switched,
                () = stopping.cancelled() => {
                    held.settle().await;
                    return;
                }
            };
            match switched {
                Ok((client, upstream)) => {
                    let opened = clock.now();
                    let open = metrics::gauge!("sluice_tunnels_open");
                    open.increment(1);
                    let carrying = carry(client, upstream, idle_timeout, &stopping);
                    let carried = renewing(carrying, &mut *held, &request_id).await;
                    open.decrement(1);
                    for (direction, bytes) in [
                        ("to_upstream", carried.to_upstream),
                        ("to_client", carried.to_client),
                    ] {
                        metrics::counter!("sluice_tunnel_bytes_total", "direction" => direction)
                            .increment(bytes);
                    }
                    // The request's access line was written with its 101; this one says how
                    // the tunnel went.
                    tracing::info!(
                        request_id,
                        ended = carried.ended,
                        to_upstream = carried.to_upstream,
                        to_client = carried.to_client,
                        seconds = clock.now().saturating_duration_since(opened).as_secs(),
                        "tunnel closed"
                    );
                }
                Err(error) => {
                    tracing::debug!(request_id, %error, "a connection did not switch protocols");
                }
            }
            held.settle().await;
        });
    }

    /// Closes every tunnel and waits until each has been settled.
    pub(crate) async fn close(&self) {
        self.stopping.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

/// Runs `work` to its end, renewing `held` every [`Held::renew_every`] meanwhile. A renewal under
/// way when the work ends is finished first, so that the settle that follows names the period
/// the hold was last counted in.
async fn renewing<T>(work: impl Future<Output = T>, held: &mut dyn Held, request_id: &str) -> T {
    let Some(every) = held.renew_every() else {
        return work.await;
    };
    let mut work = std::pin::pin!(work);
    loop {
        tokio::select! {
            done = &mut work => return done,
            () = tokio::time::sleep(every) => {}
        }
        let mut renewal = held.renew();
        let renewed = tokio::select! {
            done = &mut work => {
                renewal.await;
                return done;
            }
            renewed = &mut renewal => renewed,
        };
        if !renewed {
            tracing::warn!(
                request_id,
                "a tunnel's concurrency hold could not be renewed; it lapses unless a later \
                 renewal lands"
            );
        }
    }
}

/// How a tunnel ended, and the bytes it carried each way.
struct Carried {
    ended: &'static str,
    to_upstream: u64,
    to_client: u64,
}

async fn carry(
    client: hyper::upgrade::Upgraded,
    upstream: hyper::upgrade::Upgraded,
    idle_timeout: Duration,
    stopping: &CancellationToken,
) -> Carried {
    let stirred = AtomicBool::new(false);
    let closed = Closed::default();
    let (to_upstream, to_client) = (AtomicU64::new(0), AtomicU64::new(0));
    let mut client = Watched::new(TokioIo::new(client), &stirred, &to_client, &closed, CLIENT);
    let mut upstream = Watched::new(
        TokioIo::new(upstream),
        &stirred,
        &to_upstream,
        &closed,
        UPSTREAM,
    );
    // Either side closing ends the tunnel, as nginx's does: the copy passes the close on to the
    // other side (a shutdown), after what had been read from the closing side; a protocol that
    // switched (WebSocket) has no use for a half-open tunnel.
    let ended = tokio::select! {
        copied = tokio::io::copy_bidirectional_with_sizes(
            &mut client,
            &mut upstream,
            BUFFER,
            BUFFER,
        ) => match copied {
            Ok(_) => "closed by both",
            Err(_) => "failed",
        },
        () = closed.notify.notified() => match closed.by.load(Ordering::Relaxed) {
            CLIENT => "closed by the client",
            _ => "closed by the upstream",
        },
        () = async {
            loop {
                tokio::time::sleep(idle_timeout).await;
                if !stirred.swap(false, Ordering::Relaxed) {
                    break;
                }
            }
        } => "idle",
        () = stopping.cancelled() => "stopped",
    };
    Carried {
        ended,
        to_upstream: to_upstream.load(Ordering::Relaxed),
        to_client: to_client.load(Ordering::Relaxed),
    }
}

/// Each way's copy buffer, held for as long as the tunnel is open, idle or not: 32 KiB a tunnel
/// (HAProxy's default buffer size; nginx's is 4 or 8 KiB). A 64 KiB message's round trip
/// through the gateway took 2.6 times a direct one with it, 3.7 times with tokio's default 8 KiB,
/// and 2.1 times with 32 or 64 KiB, which would double or quadruple an idle WebSocket's memory;
/// a 1 KiB message's took 1.9 times with any (`cargo bench -p sluice-gateway --bench tunnel`).
const BUFFER: usize = 16 * 1024;

/// Which side closed a tunnel first, and a wake-up for the tunnel's task when one has.
#[derive(Default)]
struct Closed {
    by: std::sync::atomic::AtomicU8,
    notify: tokio::sync::Notify,
}

const CLIENT: u8 = 1;
const UPSTREAM: u8 = 2;

/// One side of a tunnel, noting any progress, counting the bytes written to it, and telling
/// [`Closed`] when the copy passes the other side's close on to it.
struct Watched<'a, T> {
    io: T,
    stirred: &'a AtomicBool,
    written: &'a AtomicU64,
    closed: &'a Closed,
    /// The other side: the one whose close a shutdown of this one passes on.
    other: u8,
}

impl<'a, T> Watched<'a, T> {
    fn new(
        io: T,
        stirred: &'a AtomicBool,
        written: &'a AtomicU64,
        closed: &'a Closed,
        side: u8,
    ) -> Watched<'a, T> {
        Watched {
            io,
            stirred,
            written,
            closed,
            other: if side == CLIENT { UPSTREAM } else { CLIENT },
        }
    }

    fn stir(&self) {
        self.stirred.store(true, Ordering::Relaxed);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<'_, T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.io).poll_read(cx, buf);
        if result.is_ready() {
            this.stir();
        }
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<'_, T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(written)) = &result {
            this.written.fetch_add(*written as u64, Ordering::Relaxed);
        }
        if result.is_ready() {
            this.stir();
        }
        result
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.io).poll_shutdown(cx);
        if result.is_ready() {
            let _ = this.closed.by.compare_exchange(
                0,
                this.other,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            this.closed.notify.notify_one();
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(*name, http::HeaderValue::from_static(value));
        }
        headers
    }

    #[test]
    fn only_an_http11_upgrade_that_connection_names_to_allowed_protocols_is_a_switch() {
        let allowed = ["websocket".to_owned()];
        let asks = |method: &Method, version, pairs: &[(&'static str, &'static str)]| {
            requested(method, version, &headers(pairs), &allowed)
        };
        let websocket = [
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "WebSocket"),
        ];
        assert!(asks(&Method::GET, Version::HTTP_11, &websocket));
        let split = [
            ("connection", "keep-alive"),
            ("connection", "upgrade"),
            ("upgrade", "websocket"),
        ];
        assert!(asks(&Method::GET, Version::HTTP_11, &split));
        let unnamed = [("connection", "keep-alive"), ("upgrade", "websocket")];
        assert!(!asks(&Method::GET, Version::HTTP_11, &unnamed));
        assert!(!asks(
            &Method::GET,
            Version::HTTP_11,
            &[("connection", "upgrade")]
        ));
        let empty = [("connection", "upgrade"), ("upgrade", " , ")];
        assert!(!asks(&Method::GET, Version::HTTP_11, &empty));
        assert!(!asks(&Method::GET, Version::HTTP_10, &websocket));
        assert!(!asks(&Method::GET, Version::HTTP_2, &websocket));
        assert!(!asks(&Method::CONNECT, Version::HTTP_11, &websocket));
        // h2c would have the upstream speak HTTP/2 with the client, past the policy.
        let h2c = [
            ("connection", "Upgrade, HTTP2-Settings"),
            ("upgrade", "h2c"),
        ];
        assert!(!asks(&Method::GET, Version::HTTP_11, &h2c));
        let both = [("connection", "upgrade"), ("upgrade", "websocket, h2c")];
        assert!(!asks(&Method::GET, Version::HTTP_11, &both));
        let versioned = [("connection", "upgrade"), ("upgrade", "websocket/13")];
        assert!(asks(&Method::GET, Version::HTTP_11, &versioned));
        let none_allowed = requested(&Method::GET, Version::HTTP_11, &headers(&websocket), &[]);
        assert!(!none_allowed);
    }
}
