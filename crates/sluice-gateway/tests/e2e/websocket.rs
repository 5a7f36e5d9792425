//! WebSockets through the gateway, between a real WebSocket client and a real WebSocket
//! upstream (tokio-tungstenite): the opening handshake is decided by the policy like any request,
//! and once the upstream switches protocols the gateway carries the frames both ways untouched.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, StatusCode};
use sluice_gateway::{GatewayConfig, ServerTls, Upstream};
use sluice_test_support::{TestCert, tls_client};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::support::{Bench, deployment_edited};

const KEY: &str = "Bearer pp_free_demo_key";

/// Pixel Patrol's policy with a live feed, `GET /v1/live`, that a site may hold one of at a time
/// (a concurrency limit), and `GET /v1/refused`, which the upstream will not switch for.
fn live_feed(policy: String) -> String {
    policy.replace(
        "routes:\n",
        "routes:
  - match: GET /v1/live
    limits:
      - name: live-feeds
        rate: 1 per 1m
        algorithm: concurrency
        per: site
  - match: GET /v1/refused
    limits:
      - name: refused
        rate: 100 per 1m
        per: site
",
    )
}

/// A WebSocket upstream that answers each text message with `echo: ` and the message, and each
/// binary one with itself; it records every handshake's headers, and refuses (403) the one to
/// `/v1/refused` (at length with `?big`).
async fn websocket_upstream() -> (SocketAddr, Arc<Mutex<Vec<HeaderMap>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let recorded = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let recorded = Arc::clone(&recorded);
            tokio::spawn(async move {
                // tungstenite's callback signature, large error and all.
                #[allow(clippy::result_large_err)]
                let callback = |request: &Request, response: Response| {
                    recorded
                        .lock()
                        .expect("lock")
                        .push(request.headers().clone());
                    if request.uri().path() == "/v1/refused" {
                        // `?big`: a refusal longer than any one read on the way.
                        let body = match request.uri().query() {
                            Some("big") => "no".repeat(150_000),
                            _ => "not for you".to_owned(),
                        };
                        let mut refusal = ErrorResponse::new(Some(body));
                        *refusal.status_mut() = StatusCode::FORBIDDEN;
                        return Err(refusal);
                    }
                    Ok(response)
                };
                let Ok(mut socket) = tokio_tungstenite::accept_hdr_async(stream, callback).await
                else {
                    return;
                };
                while let Some(Ok(message)) = socket.next().await {
                    let answer = match message {
                        Message::Text(text) => Message::text(format!("echo: {text}")),
                        Message::Binary(bytes) => Message::Binary(bytes),
                        Message::Close(_) => break,
                        _ => continue,
                    };
                    if socket.send(answer).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    (address, seen)
}

/// The gateway with [`live_feed`] in front of a WebSocket upstream, configured by `adjust`.
async fn bench(adjust: impl FnOnce(&mut GatewayConfig)) -> (Bench, Arc<Mutex<Vec<HeaderMap>>>) {
    let (upstream, seen) = websocket_upstream().await;
    let bench = Bench::launch(deployment_edited("pixelpatrol", live_feed), |config| {
        config.upstream = Some(
            Upstream::new(&format!("http://{upstream}").parse().expect("uri")).expect("upstream"),
        );
        adjust(config);
    })
    .await;
    (bench, seen)
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A WebSocket opened, with the gateway's 101; or why not.
type Opened = Result<(Socket, http::Response<Option<Vec<u8>>>), WsError>;

/// Opens a WebSocket to `path` through the gateway, with `authorization` if given.
async fn open(bench: &Bench, path: &str, authorization: Option<&str>) -> Opened {
    let mut request = format!("ws://{}{path}", bench.address)
        .into_client_request()
        .expect("a request");
    if let Some(authorization) = authorization {
        request
            .headers_mut()
            .insert("authorization", authorization.parse().expect("a value"));
    }
    tokio_tungstenite::connect_async(request).await
}

/// A live feed opened through the gateway, one message echoed on it.
async fn live(bench: &Bench, message: &str) -> Socket {
    let (mut socket, _) = open(bench, "/v1/live", Some(KEY)).await.expect("open");
    socket.send(Message::text(message)).await.expect("send");
    let echoed = socket.next().await.expect("a message").expect("a frame");
    assert_eq!(echoed, Message::text(format!("echo: {message}")));
    socket
}

/// Sends a frame larger than any buffer on the way over `socket`, and checks that it comes back
/// whole.
async fn echoes_large_frames<S>(socket: &mut WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let large: Vec<u8> = (0..300_000_u32).map(|n| (n % 251) as u8).collect();
    socket
        .send(Message::binary(large.clone()))
        .await
        .expect("send");
    let echoed = socket.next().await.expect("a message").expect("a frame");
    assert_eq!(echoed.into_data().as_ref(), large.as_slice());
}

/// The answer the gateway gave instead of switching protocols.
fn refusal(opened: Opened) -> (StatusCode, String) {
    match opened {
        Err(WsError::Http(response)) => (
            response.status(),
            String::from_utf8(response.body().clone().unwrap_or_default()).expect("UTF-8"),
        ),
        Err(error) => panic!("not an HTTP answer: {error}"),
        Ok((_, response)) => panic!("switched protocols: {response:?}"),
    }
}

#[tokio::test]
async fn a_websocket_the_policy_admits_carries_frames_both_ways_with_the_limit_headers() {
    let (captured, _guard) = sluice_test_support::CapturedLogs::start();
    // The only test of this binary that installs a recorder (once per process).
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .expect("a recorder");
    let (bench, seen) = bench(|_| {}).await;
    let (mut socket, response) = open(&bench, "/v1/live", Some(KEY)).await.expect("open");
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|value| value.to_str().expect("ASCII").to_owned())
    };
    // The policy's headers ride on the 101, with the request's id.
    assert_eq!(header("x-ratelimit-limit").as_deref(), Some("1"));
    assert_eq!(header("x-ratelimit-remaining").as_deref(), Some("0"));
    assert!(header("x-request-id").is_some(), "{response:?}");

    socket.send(Message::text("hello")).await.expect("send");
    let echoed = socket.next().await.expect("a message").expect("a frame");
    assert_eq!(echoed, Message::text("echo: hello"));
    assert!(
        metrics.render().contains("sluice_tunnels_open 1"),
        "{}",
        metrics.render()
    );
    echoes_large_frames(&mut socket).await;

    // The upstream was asked to switch, with the forwarding headers and its own Host.
    let handshake = seen.lock().expect("lock").last().cloned().expect("seen");
    let value = |name: &str| handshake.get(name).and_then(|value| value.to_str().ok());
    assert_eq!(value("upgrade"), Some("websocket"));
    assert_eq!(value("connection"), Some("upgrade"));
    assert_eq!(value("x-forwarded-for"), Some("127.0.0.1"));
    assert!(value("sec-websocket-key").is_some(), "{handshake:?}");
    assert_ne!(value("host"), Some(bench.address.to_string().as_str()));

    // Closed, the tunnel leaves a log line under the request's id, with what it carried.
    socket.close(None).await.expect("close");
    let id = header("x-request-id").expect("an id");
    let mut attempts = 0;
    let line = loop {
        let logs = captured.text();
        if let Some(line) = logs.lines().find(|line| line.contains("tunnel closed")) {
            break line.to_owned();
        }
        attempts += 1;
        assert!(attempts < 2_000, "no tunnel line: {logs}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert!(line.contains(&format!("request_id=\"{id}\"")), "{line}");
    assert!(line.contains("ended=\"closed by the"), "{line}");
    let carried = |field: &str| -> u64 {
        let start = line.find(&format!("{field}=")).expect(field) + field.len() + 1;
        let digits: String = line[start..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().expect("a count")
    };
    assert!(carried("to_upstream") > 300_000, "{line}");
    assert!(carried("to_client") > 300_000, "{line}");
    let rendered = metrics.render();
    for expected in [
        "sluice_tunnels_open 0".to_owned(),
        format!(
            r#"sluice_tunnel_bytes_total{{direction="to_upstream"}} {}"#,
            carried("to_upstream")
        ),
        format!(
            r#"sluice_tunnel_bytes_total{{direction="to_client"}} {}"#,
            carried("to_client")
        ),
    ] {
        assert!(rendered.contains(&expected), "no {expected} in {rendered}");
    }
    bench.stop().await;
}

#[tokio::test]
async fn a_secure_websocket_through_the_tls_listener_carries_frames_as_a_plain_one() {
    let cert = TestCert::new("localhost");
    let tls = ServerTls::from_pem(cert.chain_pem.as_bytes(), cert.key_pem.as_bytes()).expect("TLS");
    // The listener also offers HTTP/2; a WebSocket client asks for HTTP/1.1, as browsers do.
    let (bench, _seen) = bench(|config| config.tls = Some(Arc::new(tls))).await;
    let tcp = TcpStream::connect(bench.address).await.expect("connect");
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("localhost").expect("a name");
    let secured = tls_client(&cert.ca_pem, &[b"http/1.1"])
        .connect(name, tcp)
        .await
        .expect("a TLS session");
    let mut request = "wss://localhost/v1/live"
        .into_client_request()
        .expect("a request");
    request
        .headers_mut()
        .insert("authorization", KEY.parse().expect("a value"));
    let (mut socket, response) = tokio_tungstenite::client_async(request, secured)
        .await
        .expect("switched");
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    echoes_large_frames(&mut socket).await;
    socket.close(None).await.expect("close");
    bench.stop().await;
}

#[tokio::test]
async fn a_handshake_the_policy_refuses_gets_its_answer_and_never_reaches_the_upstream() {
    let (bench, seen) = bench(|_| {}).await;
    let (status, body) = refusal(open(&bench, "/v1/live", None).await);
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let body: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert!(body["error"].is_string(), "{body}");
    assert!(seen.lock().expect("lock").is_empty());
    bench.stop().await;
}

#[tokio::test]
async fn a_concurrency_limit_counts_open_websockets_until_they_close() {
    let (bench, _seen) = bench(|_| {}).await;
    let mut first = live(&bench, "one").await;

    // The first feed holds the site's one slot for as long as it is open.
    let (status, body) = refusal(open(&bench, "/v1/live", Some(KEY)).await);
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");

    // Closed, it gives the slot back; the manual clock never moves, so no lease frees it.
    first.close(None).await.expect("close");
    let mut attempts = 0;
    let (mut second, _) = loop {
        match open(&bench, "/v1/live", Some(KEY)).await {
            Ok(opened) => break opened,
            Err(WsError::Http(response)) if response.status() == StatusCode::TOO_MANY_REQUESTS => {
                attempts += 1;
                assert!(attempts < 2_000, "the first feed's slot never came back");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(error) => panic!("{error}"),
        }
    };
    second.send(Message::text("two")).await.expect("send");
    assert_eq!(
        second.next().await.expect("a message").expect("a frame"),
        Message::text("echo: two")
    );
    bench.stop().await;
}

#[tokio::test(start_paused = true)]
async fn an_open_websocket_keeps_its_slot_for_longer_than_the_lease() {
    // The feed's limit leases a slot for a minute; this one stays open for five, talking now
    // and then (the gateway's clock and tokio's move together).
    let (bench, _seen) =
        bench(|config| config.tunnel_idle_timeout = Duration::from_secs(3600)).await;
    let mut first = live(&bench, "one").await;
    for round in 0..15 {
        bench.clock.advance(Duration::from_secs(20));
        tokio::time::sleep(Duration::from_secs(20)).await;
        let (status, body) = refusal(open(&bench, "/v1/live", Some(KEY)).await);
        assert_eq!(
            status,
            StatusCode::TOO_MANY_REQUESTS,
            "round {round}: the open feed lost its slot: {body}"
        );
    }
    first.send(Message::text("still here")).await.expect("send");
    assert_eq!(
        first.next().await.expect("a message").expect("a frame"),
        Message::text("echo: still here")
    );
    // Closed, it gives the slot back at once, by the period its last renewal counted it in.
    first.close(None).await.expect("close");
    let mut attempts = 0;
    loop {
        match open(&bench, "/v1/live", Some(KEY)).await {
            Ok(_) => break,
            Err(WsError::Http(response)) if response.status() == StatusCode::TOO_MANY_REQUESTS => {
                attempts += 1;
                assert!(attempts < 2_000, "the first feed's slot never came back");
                tokio::task::yield_now().await;
            }
            Err(error) => panic!("{error}"),
        }
    }
    bench.stop().await;
}

#[tokio::test]
async fn an_upstream_that_will_not_switch_answers_as_itself() {
    let (bench, seen) = bench(|_| {}).await;
    let (status, body) = refusal(open(&bench, "/v1/refused", Some(KEY)).await);
    assert_eq!(status, StatusCode::FORBIDDEN);
    // tungstenite's client shows the body as it came, framed in chunks by the gateway.
    assert!(body.contains("not for you"), "{body}");
    assert_eq!(seen.lock().expect("lock").len(), 1);

    // A long refusal arrives whole, though its connection is no one's to send on again.
    let reply = bench
        .send(
            "GET",
            "/v1/refused?big",
            &[
                ("authorization", KEY),
                ("connection", "upgrade"),
                ("upgrade", "websocket"),
                ("sec-websocket-version", "13"),
                ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ],
            "",
        )
        .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_eq!(reply.body.len(), 300_000);
    assert_eq!(seen.lock().expect("lock").len(), 2);
    bench.stop().await;
}

/// Sends `GET /v1/refused` with `asking` through `bench`, whose upstream is the recording one,
/// and checks that it was forwarded as a plain request, none of `dropped` on it.
async fn forwarded_plainly(bench: &Bench, asking: &[(&str, &str)], dropped: &[&str]) {
    let mut headers = vec![("authorization", KEY)];
    headers.extend_from_slice(asking);
    let reply = bench.send("GET", "/v1/refused", &headers, "").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let seen = bench.last_seen();
    for name in dropped {
        assert!(
            seen.headers.get(*name).is_none(),
            "{name}: {:?}",
            seen.headers
        );
    }
}

#[tokio::test]
async fn with_upgrades_off_the_upgrade_is_not_forwarded() {
    let bench = Bench::launch(deployment_edited("pixelpatrol", live_feed), |config| {
        config.upgrades = Vec::new();
    })
    .await;
    let websocket = [("connection", "upgrade"), ("upgrade", "websocket")];
    forwarded_plainly(&bench, &websocket, &["upgrade", "connection"]).await;
    bench.stop().await;
}

#[tokio::test]
async fn an_h2c_upgrade_is_forwarded_as_a_plain_request() {
    // Had the upstream switched to HTTP/2 for the client, the client's next requests would
    // reach it past the policy.
    let bench = Bench::edited("pixelpatrol", live_feed).await;
    let h2c = [
        ("connection", "Upgrade, HTTP2-Settings"),
        ("upgrade", "h2c"),
        ("http2-settings", "AAMAAABkAAQCAAAAAAIAAAAA"),
    ];
    forwarded_plainly(&bench, &h2c, &["upgrade", "connection", "http2-settings"]).await;
    bench.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_tunnel_is_closed_once_it_carries_nothing_for_its_idle_timeout() {
    let idle = Duration::from_secs(60);
    let (bench, _seen) = bench(|config| config.tunnel_idle_timeout = idle).await;
    let (mut socket, _) = open(&bench, "/v1/live", Some(KEY)).await.expect("open");
    // Talking every half timeout keeps it open for five timeouts.
    for round in 0..10 {
        tokio::time::sleep(idle / 2).await;
        socket
            .send(Message::text(format!("{round}")))
            .await
            .expect("still open");
        let echoed = socket.next().await.expect("a message").expect("a frame");
        assert_eq!(echoed, Message::text(format!("echo: {round}")));
    }
    // Silent, it stays open for a while, and is closed within two timeouts.
    let early = tokio::time::timeout(idle / 2, socket.next()).await;
    assert!(early.is_err(), "closed before its idle timeout: {early:?}");
    let closed = tokio::time::timeout(idle * 2, socket.next())
        .await
        .expect("closed within two idle timeouts");
    assert!(
        !matches!(closed, Some(Ok(Message::Text(_) | Message::Binary(_)))),
        "{closed:?}"
    );
    bench.stop().await;
}

#[tokio::test]
async fn a_stop_closes_open_tunnels_once_requests_have_drained() {
    let (bench, _seen) = bench(|_| {}).await;
    let mut socket = live(&bench, "hi").await;
    // Well within the 10 s drain timeout: nothing else is in flight.
    tokio::time::timeout(Duration::from_secs(5), bench.stop())
        .await
        .expect("the stop does not wait on the tunnel");
    let after = tokio::time::timeout(Duration::from_secs(5), socket.next())
        .await
        .expect("the tunnel is closed");
    assert!(
        !matches!(after, Some(Ok(Message::Text(_) | Message::Binary(_)))),
        "{after:?}"
    );
}
