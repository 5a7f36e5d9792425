//! The decision API: the same verdicts as the proxy, as JSON, one at a time or in a batch.

use http::StatusCode;
use serde_json::json;
use sluice_gateway::GatewayConfig;

use super::support::Bench;

fn check(user: &str) -> serde_json::Value {
    json!({
        "method": "POST",
        "path": "/projects/upload-file",
        "headers": {"content-type": "application/json"},
        "body": {
            "apiKey": "sp_live_alice_demo_key",
            "userId": user,
            "projectId": "proj_1",
            "fileUrl": "https://downloads.example.com/build.zip",
        },
    })
}

async fn decision_api() -> Bench {
    Bench::serve(
        "streampixel",
        GatewayConfig::default(),
        std::sync::Arc::new(std::sync::Mutex::new(Vec::new())),
    )
    .await
}

#[tokio::test]
async fn a_check_answers_what_the_gateway_would_have_done() {
    let bench = decision_api().await;
    let first = bench.post("/v1/check", &[], &check("alice")).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text());
    assert_eq!(
        first.json(),
        json!({
            "allowed": true,
            "status": 200,
            "headers": {
                "ratelimit-policy": "\"upload-file\";q=1;w=120",
                "ratelimit": "\"upload-file\";r=0;t=120",
            },
        })
    );
    let second = bench.post("/v1/check", &[], &check("alice")).await;
    assert_eq!(
        second.json(),
        json!({
            "allowed": false,
            "status": 429,
            "code": "rate_limited",
            "headers": {
                "ratelimit-policy": "\"upload-file\";q=1;w=120",
                "ratelimit": "\"upload-file\";r=0;t=120",
                "retry-after": "120",
                "content-type": "application/json",
            },
            "body": {"message": "Rate limit exceeded. Try again in 2 minutes."},
        })
    );
    bench.stop().await;
}

#[tokio::test]
async fn a_batch_answers_every_check_in_order() {
    let bench = decision_api().await;
    let batch = json!({"checks": [check("carol"), check("carol"), check("dave")]});
    let reply = bench.post("/v1/check/batch", &[], &batch).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let allowed: Vec<bool> = reply.json()["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|result| result["allowed"].as_bool().expect("bool"))
        .collect();
    assert_eq!(allowed, [true, false, true]);
    bench.stop().await;
}

#[tokio::test]
async fn a_malformed_check_is_answered_as_problem_json() {
    let bench = decision_api().await;
    let reply = bench
        .send(
            "POST",
            "/v1/check",
            &[("content-type", "application/json")],
            r#"{"method": 7}"#,
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        reply.header("content-type"),
        Some("application/problem+json")
    );
    let body = reply.json();
    assert_eq!(body["code"], "malformed_body");
    assert!(
        body["detail"]
            .as_str()
            .expect("detail")
            .contains("invalid type"),
        "{body}"
    );
    // Without an upstream, nothing else is served.
    let other = bench.send("GET", "/projects", &[], "").await;
    assert_eq!(other.status, StatusCode::NOT_FOUND);
    bench.stop().await;
}
