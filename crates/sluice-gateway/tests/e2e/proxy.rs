//! The proxy as an upstream and a client see it: what is forwarded, what comes back, request
//! ids, and upstream failures in the API's envelope.

use std::net::TcpListener as StdListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::StatusCode;
use serde_json::json;
use sluice_gateway::{GatewayConfig, Upstream};

use super::support::{Bench, members};

const ALICE: &str = "sp_live_alice_demo_key";

fn poll() -> serde_json::Value {
    json!({"apiKey": ALICE, "userId": "alice"})
}

#[tokio::test]
async fn requests_are_forwarded_without_hop_by_hop_headers_and_with_forwarding_headers() {
    let bench = Bench::start("streampixel").await;
    let reply = bench
        .post(
            "/projects/list?page=2",
            &[
                ("connection", "keep-alive, x-hop"),
                ("x-hop", "secret"),
                ("x-request-id", "client-chosen-id-1"),
                ("x-custom", "kept"),
            ],
            &poll(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.header("x-request-id"), Some("client-chosen-id-1"));
    assert!(reply.header("date").is_some(), "every response is dated");
    assert_eq!(reply.header("x-upstream-said"), Some("hello"));
    assert!(
        reply.header("ratelimit").is_some(),
        "2xx responses carry the rate-limit headers"
    );
    assert_eq!(reply.json(), json!({"ok": true}));

    let seen = bench.seen.lock().expect("lock").pop().expect("forwarded");
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.uri, "/projects/list?page=2");
    assert_eq!(
        seen.headers.get("x-custom").map(|v| v.as_bytes()),
        Some(&b"kept"[..])
    );
    assert!(seen.headers.get("x-hop").is_none());
    assert!(
        seen.headers
            .get("connection")
            .is_none_or(|v| v != "keep-alive, x-hop")
    );
    assert_eq!(
        seen.headers
            .get("x-forwarded-for")
            .map(|v| v.to_str().expect("ascii")),
        Some("127.0.0.1")
    );
    let forwarded = seen
        .headers
        .get("forwarded")
        .expect("Forwarded")
        .to_str()
        .expect("ascii");
    assert_eq!(
        forwarded,
        format!("for=127.0.0.1;proto=http;host=\"{}\"", bench.address),
        "the client's Host travels in Forwarded"
    );
    assert_eq!(
        seen.headers
            .get("x-forwarded-host")
            .map(|v| v.to_str().expect("ascii")),
        Some(bench.address.to_string().as_str())
    );
    assert_eq!(
        seen.headers.get("host").map(|v| v.to_str().expect("ascii")),
        Some(bench.upstream_address().to_string().as_str()),
        "the upstream is addressed by its own name"
    );
    assert_eq!(
        seen.headers
            .get("x-request-id")
            .map(|v| v.to_str().expect("ascii")),
        Some("client-chosen-id-1")
    );
    assert_eq!(seen.body, serde_json::to_vec(&poll()).expect("json"));

    // Without an id of its own (or with an unusable one), the client gets a fresh one.
    let first = bench.post("/projects/list", &[], &poll()).await;
    let second = bench
        .post("/projects/list", &[("x-request-id", "has spaces")], &poll())
        .await;
    let (first, second) = (first.header("x-request-id"), second.header("x-request-id"));
    assert!(first.is_some_and(|id| id.len() == 24), "{first:?}");
    assert!(
        second.is_some_and(|id| id.len() == 24 && Some(id) != first),
        "{second:?}"
    );
    bench.stop().await;
}

#[tokio::test]
async fn upstream_failures_leave_in_the_apis_envelope() {
    let bench = Bench::with("streampixel", |config| {
        config.upstream_timeout = Duration::from_millis(200);
    })
    .await;
    let html = bench
        .post(
            "/projects/list",
            &[
                ("x-upstream-status", "500"),
                ("x-upstream-type", "text/html"),
            ],
            &poll(),
        )
        .await;
    assert_eq!(html.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(html.json(), json!({"message": "Internal server error"}));

    let unavailable = bench
        .post(
            "/projects/list",
            &[
                ("x-upstream-status", "503"),
                ("x-upstream-type", "text/plain"),
            ],
            &poll(),
        )
        .await;
    assert_eq!(
        unavailable.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "the upstream's status is kept"
    );
    assert_eq!(members(&unavailable.json()), ["message"]);

    // A JSON error from the upstream is the API's own answer: passed through unchanged.
    let own = bench
        .post("/projects/list", &[("x-upstream-status", "404")], &poll())
        .await;
    assert_eq!(own.status, StatusCode::NOT_FOUND);
    assert_eq!(
        own.json(),
        json!({"message": "Project not found", "upstream": true})
    );
    let own_500 = bench
        .post("/projects/list", &[("x-upstream-status", "500")], &poll())
        .await;
    assert_eq!(
        own_500.json(),
        json!({"message": "Project not found", "upstream": true})
    );

    let hung = bench
        .post("/projects/list", &[("x-upstream-hang", "1")], &poll())
        .await;
    assert_eq!(hung.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(hung.json(), json!({"message": "Upstream timed out"}));
    bench.stop().await;
}

#[tokio::test]
async fn an_upstream_that_stops_sending_its_body_midway_is_cut_off() {
    let bench = Bench::with("streampixel", |config| {
        config.upstream_timeout = Duration::from_millis(200);
    })
    .await;
    let mut client = send_on_its_own(&bench, "/projects/list", "x-upstream-stall").await;
    // The gateway waits as long for each part of a body as for the response to begin; then it
    // closes the connection, the only way left to say the response is incomplete.
    let mut answer = Vec::new();
    let read = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::io::AsyncReadExt::read_to_end(&mut client, &mut answer),
    )
    .await;
    assert!(read.is_ok(), "the connection is closed, not left hanging");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    let (_, body) = answer.split_once("\r\n\r\n").expect("a head");
    assert_eq!(body, "\0".repeat(10), "what the upstream sent, and no more");
    still_answers(&bench).await;
    bench.stop().await;
}

/// Sends Alice's poll to `path`, with `header: 1`, on a connection of its own, and leaves the
/// connection to the caller.
async fn send_on_its_own(bench: &Bench, path: &str, header: &str) -> tokio::net::TcpStream {
    let body = poll().to_string();
    let request = format!(
        "POST {path} HTTP/1.1\r\nhost: sluice\r\ncontent-type: application/json\r\n\
         {header}: 1\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut client = tokio::net::TcpStream::connect(bench.address)
        .await
        .expect("connect");
    tokio::io::AsyncWriteExt::write_all(&mut client, request.as_bytes())
        .await
        .expect("sent");
    client
}

/// A plain request still gets its answer.
async fn still_answers(bench: &Bench) {
    let reply = bench.post("/projects/list", &[], &poll()).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
}

#[tokio::test]
async fn an_upstream_answer_framed_both_ways_reaches_the_client_by_its_chunks_alone() {
    // An upstream whose answer has both a length and chunked framing: the chunks win (RFC 9112
    // §6.3), and a proxy forwarding it must drop the length, or the client waits for bytes that
    // never come.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = vec![0_u8; 64 * 1024];
                let _ = tokio::io::AsyncReadExt::read(&mut stream, &mut request).await;
                let answer = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                              content-length: 50\r\ntransfer-encoding: chunked\r\n\r\n\
                              b\r\n{\"ok\":true}\r\n0\r\n\r\n";
                let _ = tokio::io::AsyncWriteExt::write_all(&mut stream, answer.as_bytes()).await;
            });
        }
    });
    let config = GatewayConfig {
        upstream: Some(
            Upstream::new(&format!("http://{address}").parse().expect("uri")).expect("upstream"),
        ),
        ..GatewayConfig::default()
    };
    let bench = Bench::serve("streampixel", config, Arc::new(Mutex::new(Vec::new()))).await;
    let reply = tokio::time::timeout(
        Duration::from_secs(10),
        bench.post("/projects/list", &[], &poll()),
    )
    .await
    .expect("the whole answer arrives");
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json(), json!({"ok": true}));
    assert_eq!(reply.header("content-length"), None, "{:?}", reply.headers);
    bench.stop().await;
}

#[tokio::test]
async fn an_unreachable_upstream_is_a_502() {
    // A port that was free a moment ago and has no listener now.
    let port = StdListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let config = GatewayConfig {
        upstream: Some(
            Upstream::new(&format!("http://127.0.0.1:{port}").parse().expect("uri"))
                .expect("upstream"),
        ),
        ..GatewayConfig::default()
    };
    let bench = Bench::serve("streampixel", config, Arc::new(Mutex::new(Vec::new()))).await;
    let reply = bench.post("/projects/list", &[], &poll()).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(reply.json(), json!({"message": "Upstream unavailable"}));
    assert!(reply.header("x-request-id").is_some());
    bench.stop().await;
}

#[tokio::test]
async fn health_endpoints_answer_and_unknown_routes_are_404_in_the_envelope() {
    let bench = Bench::start("pixelpatrol").await;
    assert_eq!(
        bench.send("GET", "/healthz", &[], "").await.status,
        StatusCode::OK
    );
    assert_eq!(
        bench.send("GET", "/readyz", &[], "").await.status,
        StatusCode::OK
    );
    let unknown = bench.send("GET", "/nowhere", &[], "").await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(
        unknown.json(),
        json!({"error": "Not found", "message": "Not found"})
    );
    bench.stop().await;
}

#[tokio::test]
async fn the_log_line_carries_the_request_id_and_never_the_api_key() {
    // The test runtime has one thread, which runs the gateway's tasks too.
    let (captured, _guard) = sluice_test_support::CapturedLogs::start();

    let bench = Bench::start("streampixel").await;
    let reply = bench
        .post(
            "/projects/list?apiKey=sp_live_alice_demo_key",
            &[("x-request-id", "trace-me-42")],
            &poll(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let wrong = bench
        .post(
            "/projects/list",
            &[],
            &json!({"apiKey": "sp_live_typo_key", "userId": "alice"}),
        )
        .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    bench.stop().await;

    let logs = captured.text();
    let line = logs
        .lines()
        .find(|line| line.contains("trace-me-42"))
        .unwrap_or_else(|| panic!("no log line carries the request id:\n{logs}"));
    assert!(line.contains("status=200"), "{line}");
    assert!(
        !logs.contains(ALICE) && !logs.contains("sp_live_typo_key"),
        "a key leaked into the logs:\n{logs}"
    );
}

/// The Streampixel policy with one more route, `POST /projects/render` (an API key and a user id
/// in a JSON body, as the example's other routes), limited by `limit`: one limit's YAML, at the
/// indentation of a list item under `limits:`.
fn with_render_route(policy: &str, limit: &str) -> String {
    policy.replace(
        "  - match: \"* /*\"",
        &format!(
            "  - match: POST /projects/render
    limits:
{limit}    request:
      json: true
      fields:
        apiKey: {{ type: string, required: true, non_empty: true }}
        userId: {{ type: string, required: true, non_empty: true }}
  - match: \"* /*\""
        ),
    )
}

/// The Streampixel policy with one more route, `POST /projects/render`, where a user may have one
/// request in flight; and without its penalty, so that asking again and again is not blocked.
fn one_render_at_a_time(policy: String) -> String {
    let penalty = "penalties:\n  - per: user\n    after_denials: 10 per 1m\n    block_for: 15m\n";
    assert!(
        policy.contains(penalty),
        "the example's penalty has changed"
    );
    with_render_route(
        &policy.replace(penalty, ""),
        "      - name: renders-in-flight
        rate: 1 per 1m
        algorithm: concurrency
        per: user
",
    )
}

#[tokio::test]
async fn a_client_that_hangs_up_before_the_upstream_answers_gives_its_slot_back_and_is_logged() {
    let (captured, _guard) = sluice_test_support::CapturedLogs::start();
    let bench = Bench::edited("streampixel", one_render_at_a_time).await;
    let client = send_on_its_own(&bench, "/projects/render", "x-upstream-hang").await;
    // In flight once the upstream holds it. Both waits below give up after 10 s.
    let attempts = 2_000;
    let pause = || tokio::time::sleep(Duration::from_millis(5));
    for attempt in 0.. {
        if !bench.seen.lock().expect("lock").is_empty() {
            break;
        }
        assert!(attempt < attempts, "the upstream never saw the request");
        pause().await;
    }
    let second = bench.post("/projects/render", &[], &poll()).await;
    assert_eq!(
        second.status,
        StatusCode::TOO_MANY_REQUESTS,
        "one at a time"
    );

    // The first client gives up. Its slot comes back once the gateway sees it gone; the
    // manual clock never moves, so the slot's lease cannot be what frees it.
    drop(client);
    let mut answer = bench.post("/projects/render", &[], &poll()).await;
    for _ in 0..attempts {
        if answer.status != StatusCode::TOO_MANY_REQUESTS {
            break;
        }
        pause().await;
        answer = bench.post("/projects/render", &[], &poll()).await;
    }
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    // The abandoned request still has its access log line, with nginx's 499.
    let logs = captured.text();
    let abandoned = logs
        .lines()
        .filter(|line| line.contains("path=\"/projects/render\""))
        .find(|line| line.contains("status=499"));
    assert!(abandoned.is_some(), "{logs}");
    bench.stop().await;
}

/// An HTTP/2 request with prior knowledge (no TLS, no upgrade) to `bench`: the status, or the
/// error that stopped it.
async fn post_h2c(bench: &Bench) -> Result<StatusCode, String> {
    use http_body_util::{BodyExt, Full};
    use hyper::body::Bytes;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let tcp = tokio::net::TcpStream::connect(bench.address)
        .await
        .expect("connect");
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .map_err(|error| error.to_string())?;
    tokio::spawn(connection);
    let request = http::Request::post("http://localhost/projects/list")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(
            serde_json::to_vec(&poll()).expect("json"),
        )))
        .expect("a request");
    let response = sender
        .send_request(request)
        .await
        .map_err(|error| error.to_string())?;
    let status = response.status();
    response.into_body().collect().await.expect("the body");
    Ok(status)
}

#[tokio::test]
async fn a_plain_listener_serves_http2_to_a_client_with_prior_knowledge_unless_told_not_to() {
    // As a load balancer or a service mesh speaks to its backends (h2c).
    let bench = Bench::start("streampixel").await;
    assert_eq!(post_h2c(&bench).await, Ok(StatusCode::OK));
    let seen = bench.last_seen();
    assert_eq!(seen.headers["x-forwarded-host"], "localhost");
    assert_eq!(seen.headers["host"], bench.upstream_address().to_string());
    // HTTP/1.1 clients on the same listener are served as before.
    let reply = bench.post("/projects/list", &[], &poll()).await;
    assert_eq!(reply.status, StatusCode::OK);
    bench.stop().await;

    let bench = Bench::with("streampixel", |config| config.http2 = false).await;
    let refused = post_h2c(&bench).await;
    assert!(refused.is_err(), "{refused:?}");
    let reply = bench.post("/projects/list", &[], &poll()).await;
    assert_eq!(reply.status, StatusCode::OK);
    bench.stop().await;
}

// Paused time: the header-read timeout (10 s) passes as soon as nothing else is left to do.
#[tokio::test(start_paused = true)]
async fn a_client_that_sends_nothing_on_a_plain_listener_is_disconnected() {
    use tokio::io::AsyncReadExt;
    let bench = Bench::start("streampixel").await;
    let mut silent = tokio::net::TcpStream::connect(bench.address)
        .await
        .expect("connect");
    let mut buffer = [0_u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(60), silent.read(&mut buffer))
        .await
        .expect("closed by the gateway, not left open");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    bench.stop().await;
}

#[tokio::test]
async fn a_stop_does_not_wait_for_a_client_that_has_sent_nothing_yet() {
    let bench = Bench::start("streampixel").await;
    let _silent = tokio::net::TcpStream::connect(bench.address)
        .await
        .expect("connect");
    // Accepted, and waiting for its first bytes (for up to the 10 s header-read timeout).
    let reply = bench.post("/projects/list", &[], &poll()).await;
    assert_eq!(reply.status, StatusCode::OK);
    tokio::time::timeout(Duration::from_secs(5), bench.stop())
        .await
        .expect("the stop does not wait out the silent client's header-read timeout");
}

#[tokio::test]
async fn a_limit_in_shadow_mode_forwards_what_it_would_refuse_and_names_itself_in_the_log_line() {
    let (captured, _guard) = sluice_test_support::CapturedLogs::start();
    let bench = Bench::edited("streampixel", |policy| {
        with_render_route(
            &policy,
            "      - name: renders-trial
        rate: 1 per 1m
        algorithm: fixed_window
        per: user
        shadow: true
",
        )
    })
    .await;
    let first = bench
        .post("/projects/render", &[("x-request-id", "trial-1")], &poll())
        .await;
    let second = bench
        .post("/projects/render", &[("x-request-id", "trial-2")], &poll())
        .await;
    for reply in [&first, &second] {
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        // Clients are not told of a limit on trial.
        let told = format!("{:?}", reply.headers);
        assert!(!told.contains("renders-trial"), "{told}");
        assert!(reply.header("retry-after").is_none(), "{told}");
    }
    assert_eq!(bench.seen.lock().expect("lock").len(), 2);
    bench.stop().await;

    let logs = captured.text();
    let line = |id: &str| {
        logs.lines()
            .find(|line| line.contains(id))
            .unwrap_or_else(|| panic!("no line for {id}:\n{logs}"))
            .to_owned()
    };
    assert!(!line("trial-1").contains("shadow"), "{}", line("trial-1"));
    assert!(
        line("trial-2").contains("shadow=\"renders-trial\""),
        "{}",
        line("trial-2")
    );
}
