//! Seed 000 (Streampixel) through the gateway: per-userId upload limits, API keys in the body,
//! field validation, fair use on "unlimited" routes, the account block, and `{"message"}` as the
//! only error shape.

use std::time::Duration;

use http::StatusCode;
use serde_json::{Value, json};

use super::support::{Bench, Reply, members};

pub const ALICE: &str = "sp_live_alice_demo_key";

pub fn upload(key: &str, user: &str) -> Value {
    json!({
        "apiKey": key,
        "userId": user,
        "projectId": "proj_1",
        "fileUrl": "https://downloads.example.com/build.zip",
    })
}

/// Asserts the error is exactly `{"message": message}` with `status`.
fn assert_message(reply: &Reply, status: StatusCode, message: &str) {
    assert_eq!(reply.status, status, "{}", reply.text());
    let body = reply.json();
    assert_eq!(members(&body), ["message"], "{body}");
    assert_eq!(body["message"], message);
    assert_eq!(reply.header("content-type"), Some("application/json"));
}

#[tokio::test]
async fn uploads_are_limited_to_one_per_two_minutes_per_user() {
    let bench = Bench::start("streampixel").await;
    let first = bench
        .post("/projects/upload-file", &[], &upload(ALICE, "alice"))
        .await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text());
    assert_eq!(
        first.header("ratelimit-policy"),
        Some(r#""upload-file";q=1;w=120"#)
    );
    assert_eq!(
        first.header("ratelimit"),
        Some(r#""upload-file";r=0;t=120"#)
    );

    let second = bench
        .post("/projects/upload-file", &[], &upload(ALICE, "alice"))
        .await;
    assert_message(
        &second,
        StatusCode::TOO_MANY_REQUESTS,
        "Rate limit exceeded. Try again in 2 minutes.",
    );
    assert_eq!(second.header("retry-after"), Some("120"));

    // Another user, and the other upload endpoint, have their own windows.
    let bob = bench
        .post("/projects/upload-file", &[], &upload(ALICE, "bob"))
        .await;
    assert_eq!(bob.status, StatusCode::OK, "{}", bob.text());
    let distribute =
        json!({"apiKey": ALICE, "userId": "alice", "projectId": "proj_1", "uploadId": "up_1"});
    let distributed = bench
        .post("/projects/distribute-file", &[], &distribute)
        .await;
    assert_eq!(distributed.status, StatusCode::OK, "{}", distributed.text());

    // One second short of the window: still refused, and told exactly how long is left.
    bench.advance(Duration::from_secs(119));
    let early = bench
        .post("/projects/upload-file", &[], &upload(ALICE, "alice"))
        .await;
    assert_message(
        &early,
        StatusCode::TOO_MANY_REQUESTS,
        "Rate limit exceeded. Try again in 1 second.",
    );
    assert_eq!(early.header("retry-after"), Some("1"));

    bench.advance(Duration::from_secs(1));
    let again = bench
        .post("/projects/upload-file", &[], &upload(ALICE, "alice"))
        .await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.text());
    assert_eq!(
        bench.seen.lock().expect("lock").len(),
        4,
        "refused requests never reach the upstream"
    );
    bench.stop().await;
}

/// Each of `spellings` goes by the upload route (a first upload admitted, with its limit's
/// headers, and the plain path's next one denied) and is forwarded as it was sent.
async fn counts_as_the_upload_route(bench: &Bench, spellings: &[&str]) {
    for (index, spelling) in spellings.iter().enumerate() {
        let user = format!("user-{index}");
        let first = bench.post(spelling, &[], &upload(ALICE, &user)).await;
        assert_eq!(first.status, StatusCode::OK, "{spelling}: {}", first.text());
        assert_eq!(
            first.header("ratelimit-policy"),
            Some(r#""upload-file";q=1;w=120"#),
            "{spelling}"
        );
        assert_eq!(bench.last_seen().uri, *spelling);
        let plain = bench
            .post("/projects/upload-file", &[], &upload(ALICE, &user))
            .await;
        assert_eq!(plain.status, StatusCode::TOO_MANY_REQUESTS, "{spelling}");
    }
}

#[tokio::test]
async fn a_path_spelled_another_way_counts_against_the_same_route() {
    // An upstream that decodes `%75` to `u`, or resolves `..`, serves these as the upload
    // endpoint: they are counted as it, and forwarded as they were sent.
    let bench = Bench::start("streampixel").await;
    counts_as_the_upload_route(
        &bench,
        &[
            "/projects/%75pload-file",
            "/projects/./upload-file",
            "/projects/x/../upload-file",
            "/projects/%2E%2E/projects/upload-file",
        ],
    )
    .await;
    bench.stop().await;
}

#[tokio::test]
async fn path_parameters_count_against_the_route_when_the_upstream_drops_them() {
    // A Java servlet container routes `/projects/upload-file;x=1`, and resolves `..;`, as if the
    // `;` parameters were not there: with `path_parameters: strip` they count as the upload
    // endpoint, and are forwarded as they were sent.
    let bench = Bench::edited("streampixel", |text| {
        text.replacen("service:\n", "service:\n  path_parameters: strip\n", 1)
    })
    .await;
    counts_as_the_upload_route(
        &bench,
        &[
            "/projects/upload-file;jsessionid=0",
            "/projects;v=2/upload-file;x",
            "/x/..;/projects/upload-file",
        ],
    )
    .await;
    bench.stop().await;
}

fn gzip(content: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(content).expect("write");
    encoder.finish().expect("finish")
}

#[tokio::test]
async fn a_compressed_body_is_read_as_the_upstream_reads_it() {
    let bench = Bench::start("streampixel").await;
    let path = "/projects/upload-file";
    let send = |coding: &'static str, body: Vec<u8>| {
        let bench = &bench;
        async move {
            let headers = [
                ("content-type", "application/json"),
                ("content-encoding", coding),
            ];
            bench.send("POST", path, &headers, body).await
        }
    };
    // A gzip upload counts against its user, and goes upstream compressed, as sent.
    let coded = gzip(&serde_json::to_vec(&upload(ALICE, "zoe")).expect("json"));
    let first = send("gzip", coded.clone()).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text());
    let seen = bench.last_seen();
    assert_eq!(seen.body, coded);
    assert_eq!(seen.headers["content-encoding"], "gzip");
    let again = bench.post(path, &[], &upload(ALICE, "zoe")).await;
    assert_message(
        &again,
        StatusCode::TOO_MANY_REQUESTS,
        "Rate limit exceeded. Try again in 2 minutes.",
    );
    // Its fields are checked as a plain body's are.
    let mut missing = upload(ALICE, "yuri");
    missing.as_object_mut().expect("object").remove("userId");
    let reply = send("gzip", gzip(&serde_json::to_vec(&missing).expect("json"))).await;
    assert_message(
        &reply,
        StatusCode::BAD_REQUEST,
        "Missing required field: userId",
    );
    // A coding the gateway cannot read is refused, naming the ones it can.
    let reply = send("br", b"not brotli".to_vec()).await;
    assert_message(
        &reply,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "Content-Encoding must be gzip, deflate or identity",
    );
    assert_eq!(
        reply.header("accept-encoding"),
        Some("gzip, deflate, identity")
    );
    // Bytes that are not gzip are a malformed body.
    let reply = send("gzip", b"{\"userId\":\"x\"}".to_vec()).await;
    assert_message(
        &reply,
        StatusCode::BAD_REQUEST,
        "Request body must be a JSON object",
    );
    // 8 MB of content in a few KB of gzip stops at the route's 64 KB.
    let mut bomb = serde_json::to_vec(&upload(ALICE, "xena")).expect("json");
    bomb.extend(std::iter::repeat_n(b' ', 8 << 20));
    let bomb = gzip(&bomb);
    assert!(bomb.len() < 64 << 10, "{}", bomb.len());
    let reply = send("gzip", bomb).await;
    assert_message(
        &reply,
        StatusCode::PAYLOAD_TOO_LARGE,
        "Request body exceeds 64 KB",
    );
    bench.stop().await;
}

#[tokio::test]
async fn pages_of_an_allowed_origin_can_call_and_read_the_limits() {
    let bench = Bench::edited("streampixel", |text| {
        text.replacen(
            "\nroutes:\n",
            "\ncors:\n  allow_origins: [https://console.streampixel.io]\n  max_age: 10m\nroutes:\n",
            1,
        )
    })
    .await;
    let path = "/projects/upload-file";
    let origin = ("origin", "https://console.streampixel.io");
    // The preflight, which carries no key and no body, is answered by the gateway.
    let preflight = bench
        .send(
            "OPTIONS",
            path,
            &[
                origin,
                ("access-control-request-method", "POST"),
                ("access-control-request-headers", "content-type"),
            ],
            "",
        )
        .await;
    assert_eq!(
        preflight.status,
        StatusCode::NO_CONTENT,
        "{}",
        preflight.text()
    );
    assert_eq!(
        preflight.header("access-control-allow-origin"),
        Some("https://console.streampixel.io")
    );
    assert_eq!(
        preflight.header("access-control-allow-headers"),
        Some("content-type")
    );
    assert_eq!(preflight.header("access-control-max-age"), Some("600"));
    assert!(bench.seen.lock().expect("seen").is_empty());
    // The upload, and the 429 after it, can both be read by the page, limits and all.
    for (status, header) in [
        (StatusCode::OK, "ratelimit"),
        (StatusCode::TOO_MANY_REQUESTS, "retry-after"),
    ] {
        let reply = bench.post(path, &[origin], &upload(ALICE, "page")).await;
        assert_eq!(reply.status, status, "{}", reply.text());
        assert_eq!(
            reply.header("access-control-allow-origin"),
            Some("https://console.streampixel.io")
        );
        assert_eq!(reply.header("vary"), Some("Origin"));
        let exposed = reply
            .header("access-control-expose-headers")
            .expect("exposed")
            .to_ascii_lowercase();
        assert!(exposed.contains(header), "{exposed}");
        assert!(reply.header(header).is_some(), "{:?}", reply.headers);
    }
    // Another origin is told nothing, and its preflight is a request like any other.
    let other = ("origin", "https://evil.example.com");
    let reply = bench.post(path, &[other], &upload(ALICE, "other")).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("access-control-allow-origin"), None);
    assert_eq!(reply.header("vary"), Some("Origin"));
    let refused = bench
        .send(
            "OPTIONS",
            path,
            &[other, ("access-control-request-method", "POST")],
            "",
        )
        .await;
    assert_eq!(refused.header("access-control-allow-origin"), None);
    assert_ne!(refused.status, StatusCode::NO_CONTENT);
    bench.stop().await;
}

#[tokio::test]
async fn api_keys_are_checked_as_the_page_describes() {
    let bench = Bench::start("streampixel").await;
    let invalid = "Unauthorized: Invalid API Key";
    let mut missing = upload(ALICE, "alice");
    missing.as_object_mut().expect("object").remove("apiKey");
    let reply = bench.post("/projects/upload-file", &[], &missing).await;
    assert_message(&reply, StatusCode::UNAUTHORIZED, invalid);
    for key in [
        "sp_live_wrong",
        "sp_live_revoked_demo_key",
        "sp_dev_alice_demo_key",
        "",
    ] {
        let reply = bench
            .post("/projects/upload-file", &[], &upload(key, "alice"))
            .await;
        assert_message(&reply, StatusCode::UNAUTHORIZED, invalid);
    }
    // An expired subscription: writes are refused, reads still work.
    let expired = "sp_live_expired_demo_key";
    let write = bench
        .post("/projects/upload-file", &[], &upload(expired, "erin"))
        .await;
    assert_message(
        &write,
        StatusCode::FORBIDDEN,
        "Forbidden: subscription expired; write actions are blocked",
    );
    let read = bench
        .send(
            "GET",
            "/projects",
            &[("content-type", "application/json")],
            serde_json::to_vec(&json!({"apiKey": expired, "userId": "erin"})).expect("json"),
        )
        .await;
    assert_eq!(read.status, StatusCode::OK, "{}", read.text());
    assert!(bench.seen.lock().expect("lock").len() == 1);
    bench.stop().await;
}

#[tokio::test]
async fn missing_and_mistyped_fields_are_named() {
    let bench = Bench::start("streampixel").await;
    let cases = [
        ("fileUrl", Value::Null, "Missing required field: fileUrl"),
        (
            "projectId",
            Value::Null,
            "Missing required field: projectId",
        ),
        (
            "userId",
            json!(42),
            "Invalid field: userId must be a string",
        ),
        (
            "projectId",
            json!("  "),
            "Invalid field: projectId must not be empty",
        ),
        (
            "fileUrl",
            json!("http://downloads.example.com/a.zip"),
            "Invalid field: fileUrl must be a public https URL",
        ),
        (
            "fileUrl",
            json!("https://169.254.169.254/latest/meta-data"),
            "Invalid field: fileUrl must be a public https URL",
        ),
    ];
    for (field, value, message) in cases {
        let mut body = upload(ALICE, "alice");
        let object = body.as_object_mut().expect("object");
        if value.is_null() {
            object.remove(field);
        } else {
            object.insert(field.to_owned(), value);
        }
        let reply = bench.post("/projects/upload-file", &[], &body).await;
        assert_message(&reply, StatusCode::BAD_REQUEST, message);
    }
    let text = bench
        .send(
            "POST",
            "/projects/upload-file",
            &[("content-type", "text/plain")],
            "hello",
        )
        .await;
    assert_message(
        &text,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "Content-Type must be application/json",
    );
    let none = bench.send("POST", "/projects/upload-file", &[], "{}").await;
    assert_message(
        &none,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "Content-Type must be application/json",
    );
    // None of them used up alice's upload.
    let ok = bench
        .post("/projects/upload-file", &[], &upload(ALICE, "alice"))
        .await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text());
    bench.stop().await;
}

#[tokio::test]
async fn aggressive_polling_of_an_unlimited_endpoint_is_throttled() {
    let bench = Bench::start("streampixel").await;
    let poll = json!({"apiKey": ALICE, "userId": "alice"});
    // A burst of 20 is fine; the 21st at the same instant is not.
    for _ in 0..20 {
        let reply = bench.post("/projects/list", &[], &poll).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    }
    let throttled = bench.post("/projects/list", &[], &poll).await;
    assert_message(
        &throttled,
        StatusCode::TOO_MANY_REQUESTS,
        "Rate limit exceeded. Try again in 1 second.",
    );
    assert_eq!(throttled.header("retry-after"), Some("1"));
    assert!(
        throttled
            .header("ratelimit")
            .is_some_and(|value| value.starts_with(r#""fair-use";r=0"#))
    );
    // Ten a second is the sustained pace.
    bench.advance(Duration::from_millis(100));
    let paced = bench.post("/projects/list", &[], &poll).await;
    assert_eq!(paced.status, StatusCode::OK, "{}", paced.text());
    // Other users poll undisturbed.
    let other = bench
        .post(
            "/projects/list",
            &[],
            &json!({"apiKey": ALICE, "userId": "bob"}),
        )
        .await;
    assert_eq!(other.status, StatusCode::OK);
    bench.stop().await;
}

#[tokio::test]
async fn hammering_after_429s_blocks_the_whole_account_for_a_while() {
    let bench = Bench::start("streampixel").await;
    let first = bench
        .post("/projects/upload-file", &[], &upload(ALICE, "alice"))
        .await;
    assert_eq!(first.status, StatusCode::OK);
    // Ten refusals within a minute are tolerated...
    for _ in 0..9 {
        let reply = bench
            .post("/projects/upload-file", &[], &upload(ALICE, "alice"))
            .await;
        assert_message(
            &reply,
            StatusCode::TOO_MANY_REQUESTS,
            "Rate limit exceeded. Try again in 2 minutes.",
        );
    }
    // ...the eleventh hammering request gets the account blocked.
    let mut blocked = None;
    for _ in 0..2 {
        let reply = bench
            .post("/projects/upload-file", &[], &upload(ALICE, "alice"))
            .await;
        if reply.text().contains("blocked") {
            blocked = Some(reply);
            break;
        }
    }
    let blocked = blocked.expect("the account is blocked after repeated 429s");
    assert_message(
        &blocked,
        StatusCode::TOO_MANY_REQUESTS,
        "Too many requests. Your account is temporarily blocked. Try again in 15 minutes.",
    );
    assert_eq!(blocked.header("retry-after"), Some("900"));

    // Every endpoint is blocked for that user, even once the upload window has passed.
    bench.advance(Duration::from_secs(5 * 60));
    let poll = bench
        .post(
            "/projects/list",
            &[],
            &json!({"apiKey": ALICE, "userId": "alice"}),
        )
        .await;
    assert_message(
        &poll,
        StatusCode::TOO_MANY_REQUESTS,
        "Too many requests. Your account is temporarily blocked. Try again in 10 minutes.",
    );
    let bob = bench
        .post(
            "/projects/list",
            &[],
            &json!({"apiKey": ALICE, "userId": "bob"}),
        )
        .await;
    assert_eq!(bob.status, StatusCode::OK, "other users are not blocked");

    bench.advance(Duration::from_secs(10 * 60));
    let free = bench
        .post("/projects/upload-file", &[], &upload(ALICE, "alice"))
        .await;
    assert_eq!(free.status, StatusCode::OK, "{}", free.text());
    bench.stop().await;
}
