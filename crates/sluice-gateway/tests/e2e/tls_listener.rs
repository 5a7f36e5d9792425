//! The gateway as the edge: its listener speaks TLS with a certificate that can be replaced
//! while it serves, tells the upstream the client came over https, and drops a client that does
//! not finish its handshake in time. A client that asks for HTTP/2 gets it, with the same
//! limits and error bodies, and an HTTP/2 connection left idle is told to go away.

use std::sync::Arc;
use std::time::Duration;

use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use sluice_gateway::ServerTls;
use sluice_service::KeyRing;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::ServerName;

use sluice_test_support::{TestCert, tls_client};

use super::support::{Bench, Reply, deployment, deployment_edited, members};

/// A TLS connection to `bench` that trusts only `ca_pem` and offers `protocols` (ALPN).
async fn connect_tls(
    bench: &Bench,
    ca_pem: &str,
    protocols: &[&[u8]],
) -> Result<TlsStream<TcpStream>, String> {
    let tcp = TcpStream::connect(bench.address).await.expect("connect");
    let name = ServerName::try_from("localhost").expect("a name");
    tls_client(ca_pem, protocols)
        .connect(name, tcp)
        .await
        .map_err(|error| error.to_string())
}

/// A POST of `body` to `path` over a TLS connection to `bench` that trusts only `ca_pem`:
/// the status, or the error that stopped it.
async fn post_over_tls(
    bench: &Bench,
    ca_pem: &str,
    path: &str,
    body: &serde_json::Value,
) -> Result<StatusCode, String> {
    let secured = connect_tls(bench, ca_pem, &[]).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(secured))
        .await
        .map_err(|error| error.to_string())?;
    tokio::spawn(connection);
    let request = Request::post(path)
        .header("host", "localhost")
        .header("x-forwarded-proto", "http")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(
            serde_json::to_vec(body).expect("json"),
        )))
        .expect("request");
    let response = sender
        .send_request(request)
        .await
        .map_err(|error| error.to_string())?;
    let status = response.status();
    response.into_body().collect().await.expect("the body");
    Ok(status)
}

fn poll() -> serde_json::Value {
    json!({"apiKey": "sp_live_alice_demo_key", "userId": "alice"})
}

#[tokio::test]
async fn the_gateway_serves_https_with_a_certificate_it_can_replace() {
    let first = TestCert::new("localhost");
    let tls = Arc::new(
        ServerTls::from_pem(first.chain_pem.as_bytes(), first.key_pem.as_bytes())
            .expect("a certificate"),
    );
    let bench = Bench::with("streampixel", |config| config.tls = Some(Arc::clone(&tls))).await;
    let status = post_over_tls(&bench, &first.ca_pem, "/projects/list", &poll()).await;
    assert_eq!(status, Ok(StatusCode::OK));
    let seen = bench.last_seen().headers;
    let forwarded = seen["forwarded"].to_str().expect("ASCII");
    assert!(forwarded.contains(";proto=https"), "{forwarded}");
    // Apps that redirect plain HTTP to HTTPS read this one; a client's own claim is replaced.
    assert_eq!(seen["x-forwarded-proto"], "https");

    // Renewed: new connections get the new certificate; a client that trusts only the old
    // CA no longer connects.
    let renewed = TestCert::new("localhost");
    tls.reload(renewed.chain_pem.as_bytes(), renewed.key_pem.as_bytes())
        .expect("reloaded");
    let status = post_over_tls(&bench, &renewed.ca_pem, "/projects/list", &poll()).await;
    assert_eq!(status, Ok(StatusCode::OK));
    let refused = post_over_tls(&bench, &first.ca_pem, "/projects/list", &poll()).await;
    assert!(refused.is_err(), "{refused:?}");

    // A key that is not the certificate's is refused, and the one in force stays.
    let error = tls
        .reload(renewed.chain_pem.as_bytes(), first.key_pem.as_bytes())
        .unwrap_err();
    assert!(
        error.contains("does not go with the certificate"),
        "{error}"
    );
    let status = post_over_tls(&bench, &renewed.ca_pem, "/projects/list", &poll()).await;
    assert_eq!(status, Ok(StatusCode::OK));
    bench.stop().await;
}

// Paused time: the header-read timeout (10 s by default) passes as soon as nothing else is left
// to do, and the guard after it fails the test if the gateway left the connection open.
#[tokio::test(start_paused = true)]
async fn a_client_that_does_not_finish_its_handshake_is_disconnected() {
    let cert = TestCert::new("localhost");
    let tls = Arc::new(
        ServerTls::from_pem(cert.chain_pem.as_bytes(), cert.key_pem.as_bytes()).expect("TLS"),
    );
    let bench = Bench::with("streampixel", |config| config.tls = Some(tls)).await;
    let mut silent = TcpStream::connect(bench.address).await.expect("connect");
    let mut buffer = [0_u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(60), silent.read(&mut buffer))
        .await
        .expect("closed by the gateway, not left open");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    bench.stop().await;
}

/// A gateway with `deployment` serving HTTPS with a fresh certificate, and that certificate's
/// CA.
async fn https_bench(
    deployment: (Arc<sluice_policy::Policy>, KeyRing),
    http2: bool,
) -> (Bench, String) {
    let cert = TestCert::new("localhost");
    let tls = ServerTls::from_pem(cert.chain_pem.as_bytes(), cert.key_pem.as_bytes()).expect("TLS");
    let bench = Bench::launch(deployment, |config| {
        config.tls = Some(Arc::new(tls));
        config.http2 = http2;
    })
    .await;
    (bench, cert.ca_pem)
}

/// An HTTP/2 connection to `bench`, which must have chosen HTTP/2, and the task driving it.
async fn connect_http2(
    bench: &Bench,
    ca_pem: &str,
) -> (
    http2::SendRequest<Full<Bytes>>,
    tokio::task::JoinHandle<hyper::Result<()>>,
) {
    let secured = connect_tls(bench, ca_pem, &[b"h2", b"http/1.1"])
        .await
        .expect("a TLS connection");
    assert_eq!(secured.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (sender, connection) = http2::handshake(TokioExecutor::new(), TokioIo::new(secured))
        .await
        .expect("an HTTP/2 connection");
    (sender, tokio::spawn(connection))
}

/// `request` over `sender`, read whole.
async fn send(
    sender: &mut http2::SendRequest<Full<Bytes>>,
    request: Request<Full<Bytes>>,
) -> Reply {
    let response = sender.send_request(request).await.expect("an answer");
    let (parts, body) = response.into_parts();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.expect("a whole body").to_bytes(),
    }
}

fn json_post(path: &str, body: &Value) -> Request<Full<Bytes>> {
    Request::post(format!("https://localhost{path}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(
            serde_json::to_vec(body).expect("json"),
        )))
        .expect("a request")
}

fn upload(user: &str) -> Value {
    json!({
        "apiKey": "sp_live_alice_demo_key",
        "userId": user,
        "projectId": "proj_1",
        "fileUrl": "https://downloads.example.com/build.zip",
    })
}

#[tokio::test]
async fn http2_clients_get_the_same_limits_and_error_bodies() {
    let (captured, _guard) = sluice_test_support::CapturedLogs::start();
    let (bench, ca) = https_bench(deployment("streampixel"), true).await;
    let (mut sender, connection) = connect_http2(&bench, &ca).await;

    // The upstream is sent HTTP/1.1: the client's `:authority` is its Host, and cookies the
    // client sent as several fields arrive as one.
    let request = Request::post("https://localhost/projects/list")
        .header("content-type", "application/json")
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .body(Full::new(Bytes::from(
            serde_json::to_vec(&poll()).expect("json"),
        )))
        .expect("a request");
    let reply = send(&mut sender, request).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert!(reply.header("x-request-id").is_some());
    let seen = bench.last_seen();
    assert_eq!(seen.headers["x-forwarded-host"], "localhost");
    let forwarded = seen.headers["forwarded"].to_str().expect("ASCII");
    assert!(forwarded.contains(";proto=https"), "{forwarded}");
    assert!(forwarded.contains(r#";host="localhost""#), "{forwarded}");
    assert_eq!(seen.headers["host"], bench.upstream_address().to_string());
    assert_eq!(seen.headers.get_all("cookie").iter().count(), 1);
    assert_eq!(seen.headers["cookie"], "a=1; b=2");
    // The access log line names the protocol.
    let logs = captured.text();
    let line = logs
        .lines()
        .find(|line| line.contains("path=\"/projects/list\""));
    assert!(
        line.is_some_and(|line| line.contains("protocol=\"HTTP/2\"")),
        "{logs}"
    );

    // Headers over the gateway's limit (64 KiB) are refused in the API's envelope, not by the
    // HTTP/2 layer's own bare 431.
    let request = Request::post("https://localhost/projects/list")
        .header("content-type", "application/json")
        .header("cookie", format!("session={}", "a".repeat(70_000)))
        .body(Full::new(Bytes::from(
            serde_json::to_vec(&poll()).expect("json"),
        )))
        .expect("a request");
    let reply = send(&mut sender, request).await;
    assert_eq!(reply.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert_eq!(
        reply.json(),
        json!({"message": "Request headers too large"})
    );

    // Two uploads by one user, sent at once on two streams of one connection: one is admitted,
    // the other refused with the seed's own body.
    let (mut other, mut third) = (sender.clone(), sender.clone());
    let (first, second) = tokio::join!(
        send(
            &mut other,
            json_post("/projects/upload-file", &upload("carol"))
        ),
        send(
            &mut third,
            json_post("/projects/upload-file", &upload("carol"))
        ),
    );
    let mut statuses = [first.status, second.status];
    statuses.sort();
    assert_eq!(statuses, [StatusCode::OK, StatusCode::TOO_MANY_REQUESTS]);
    let refused = if first.status == StatusCode::OK {
        second
    } else {
        first
    };
    assert_eq!(members(&refused.json()), ["message"]);
    assert_eq!(
        refused.json()["message"],
        "Rate limit exceeded. Try again in 2 minutes."
    );
    assert_eq!(refused.header("retry-after"), Some("120"));

    // A stop tells the client to go away rather than cutting it: the connection ends cleanly,
    // and the stop does not wait out its drain timeout (10 s) for it.
    tokio::time::timeout(Duration::from_secs(5), bench.stop())
        .await
        .expect("the stop does not wait for an idle HTTP/2 connection");
    let ended = connection.await.expect("the connection's task");
    assert!(ended.is_ok(), "{ended:?}");
}

// Paused time: the upstream's 30 s timeout and the 10 s idle bound pass as soon as nothing else
// is left to do. Requests without a body: on paused time, tokio was seen to move the clock on
// between an HTTP/2 request's headers and its body (sent together), timing the body out, which
// real time does not do (the first test sends bodies over HTTP/2 on real time).
#[tokio::test(start_paused = true)]
async fn an_idle_http2_connection_is_told_to_go_away_and_a_busy_one_is_not() {
    // A route with no body to read.
    let status = deployment_edited("pixelpatrol", |policy| {
        policy.replace(
            "routes:\n",
            "routes:\n  - match: GET /v1/status\n    limits:\n      - name: status\n        \
             rate: 100 per 1m\n        per: site\n",
        )
    });
    let (bench, ca) = https_bench(status, true).await;
    let (mut sender, connection) = connect_http2(&bench, &ca).await;
    let get = |hang: bool| {
        let request = Request::get("https://localhost/v1/status")
            .header("authorization", "Bearer pp_free_demo_key");
        let request = if hang {
            request.header("x-upstream-hang", "1")
        } else {
            request
        };
        request.body(Full::new(Bytes::new())).expect("a request")
    };

    // A request the upstream never answers keeps the connection busy past the idle bound,
    // until the upstream's timeout answers it.
    let reply = send(&mut sender, get(true)).await;
    assert_eq!(
        reply.status,
        StatusCode::GATEWAY_TIMEOUT,
        "{}",
        reply.text()
    );
    // The connection was not told to go away meanwhile, nor as that answer ended: it takes
    // another request.
    let reply = send(&mut sender, get(false)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());

    // Left idle, it is closed cleanly, after the idle bound (10 s) and within two.
    let mut connection = connection;
    let early = tokio::time::timeout(Duration::from_millis(9_900), &mut connection).await;
    assert!(early.is_err(), "closed before the idle bound: {early:?}");
    let ended = tokio::time::timeout(Duration::from_millis(10_200), connection)
        .await
        .expect("the gateway closed the idle connection")
        .expect("the connection's task");
    assert!(ended.is_ok(), "{ended:?}");
    bench.stop().await;
}

#[tokio::test(start_paused = true)]
async fn an_http2_client_that_never_sends_its_preface_is_disconnected() {
    let (bench, ca) = https_bench(deployment("streampixel"), true).await;
    let mut secured = connect_tls(&bench, &ca, &[b"h2"]).await.expect("TLS");
    assert_eq!(secured.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    // Whatever the gateway sent first (its SETTINGS), the connection must then end.
    let mut buffer = Vec::new();
    let _ended = tokio::time::timeout(Duration::from_secs(60), secured.read_to_end(&mut buffer))
        .await
        .expect("closed by the gateway, not left open");
    bench.stop().await;
}

#[tokio::test]
async fn with_http2_off_an_http2_client_gets_http1() {
    let (bench, ca) = https_bench(deployment("streampixel"), false).await;
    let secured = connect_tls(&bench, &ca, &[b"h2", b"http/1.1"])
        .await
        .expect("TLS");
    assert_eq!(secured.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    drop(secured);
    let status = post_over_tls(&bench, &ca, "/projects/list", &poll()).await;
    assert_eq!(status, Ok(StatusCode::OK));
    bench.stop().await;
}
