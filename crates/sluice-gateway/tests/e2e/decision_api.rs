//! The decision API: the same verdicts as the proxy, as JSON, one at a time or in a batch.

use std::time::Duration;

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
    // A method or a path no HTTP request could carry is named.
    for (check, detail) in [
        (
            r#"{"method": "P OST", "path": "/projects"}"#,
            "`P OST` is not an HTTP method",
        ),
        (
            r#"{"method": "GET", "path": "projects"}"#,
            "the path `projects` does not start with `/`",
        ),
    ] {
        let reply = bench
            .send(
                "POST",
                "/v1/check",
                &[("content-type", "application/json")],
                check,
            )
            .await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{check}");
        assert_eq!(reply.json()["code"], "invalid_field", "{check}");
        assert_eq!(reply.json()["detail"], detail, "{check}");
    }
    // Without an upstream, nothing else is served.
    let other = bench.send("GET", "/projects", &[], "").await;
    assert_eq!(other.status, StatusCode::NOT_FOUND);
    bench.stop().await;
}

fn held(check: serde_json::Value) -> serde_json::Value {
    let mut check = check;
    check["hold"] = json!(true);
    check
}

async fn settle(bench: &Bench, token: &serde_json::Value, success: bool) {
    let settled = bench
        .post(
            "/v1/settle",
            &[],
            &json!({"hold": token, "success": success}),
        )
        .await;
    assert_eq!(settled.status, StatusCode::OK, "{}", settled.text());
    assert_eq!(settled.json(), json!({"settled": true}));
}

/// Streampixel with one upload at a time per user (a concurrency limit, leased for 30 s) in
/// place of one per two minutes.
async fn one_upload_at_a_time() -> Bench {
    Bench::edited("streampixel", |text| {
        text.replacen(
            "name: upload-file\n        rate: 1 per 2m\n",
            "name: upload-file\n        rate: 1 per 30s\n        algorithm: concurrency\n",
            1,
        )
    })
    .await
}

#[tokio::test]
async fn a_held_check_keeps_its_concurrency_slot_until_it_is_settled() {
    let bench = one_upload_at_a_time().await;
    // Without a hold, the call counts as over when the check answers: the slot is free again.
    for _ in 0..2 {
        let answer = bench.post("/v1/check", &[], &check("alice")).await.json();
        assert_eq!(answer["allowed"], true, "{answer}");
        assert!(answer.get("hold").is_none(), "{answer}");
    }
    let first = bench
        .post("/v1/check", &[], &held(check("alice")))
        .await
        .json();
    assert_eq!(first["allowed"], true, "{first}");
    let token = &first["hold"];
    assert!(token.is_string(), "{first}");
    let busy = bench
        .post("/v1/check", &[], &held(check("alice")))
        .await
        .json();
    assert_eq!(busy["code"], "concurrency_exceeded", "{busy}");
    assert!(busy.get("hold").is_none(), "{busy}");
    // Another user has a slot of its own.
    let bob = bench
        .post("/v1/check", &[], &held(check("bob")))
        .await
        .json();
    assert_eq!(bob["allowed"], true, "{bob}");

    settle(&bench, token, true).await;
    let again = bench
        .post("/v1/check", &[], &held(check("alice")))
        .await
        .json();
    assert_eq!(again["allowed"], true, "{again}");
    bench.stop().await;
}

#[tokio::test]
async fn a_held_check_renewed_keeps_its_slot_past_its_lease() {
    // This thread's recorder: the test's runtime runs the gateway on it.
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let metrics = recorder.handle();
    let _recording = metrics::set_default_local_recorder(&recorder);
    let bench = one_upload_at_a_time().await;
    let first = bench
        .post("/v1/check", &[], &held(check("alice")))
        .await
        .json();
    assert_eq!(first["allowed"], true, "{first}");
    assert_eq!(first["renew_every_ms"], 15_000, "half the lease: {first}");
    let mut token = first["hold"].clone();
    // Five minutes, ten leases, renewed every 20 s: the call keeps its slot throughout.
    for _ in 0..15 {
        bench.clock.advance(Duration::from_secs(20));
        let renewed = bench.post("/v1/renew", &[], &json!({"hold": token})).await;
        assert_eq!(renewed.status, StatusCode::OK, "{}", renewed.text());
        let renewed = renewed.json();
        assert_eq!(renewed["renew_every_ms"], 15_000, "{renewed}");
        token = renewed["hold"].clone();
        let busy = bench
            .post("/v1/check", &[], &held(check("alice")))
            .await
            .json();
        assert_eq!(busy["code"], "concurrency_exceeded", "{busy}");
    }
    assert!(
        metrics
            .render()
            .contains(r#"sluice_hold_renewals_total{outcome="renewed"} 15"#),
        "{}",
        metrics.render()
    );
    settle(&bench, &token, true).await;
    let again = bench.post("/v1/check", &[], &check("alice")).await.json();
    assert_eq!(again["allowed"], true, "{again}");

    let refused = bench
        .post("/v1/renew", &[], &json!({"hold": "not-a-token"}))
        .await;
    assert_eq!(
        refused.status,
        StatusCode::BAD_REQUEST,
        "{}",
        refused.text()
    );
    assert_eq!(refused.json()["code"], "invalid_field");
    bench.stop().await;
}

#[tokio::test]
async fn a_held_check_whose_call_failed_gets_its_quota_back() {
    let bench = Bench::edited("pixelpatrol", |text| {
        text.replacen("amount: 1000\n", "amount: 2\n", 1)
    })
    .await;
    let moderation = || {
        held(json!({
            "method": "POST",
            "path": "/submit-media",
            "headers": {
                "content-type": "application/json",
                "authorization": "Bearer pp_free_demo_key",
            },
            "body": {"body": "Is this text acceptable?"},
        }))
    };
    // Three calls admitted, one failed: the free plan's two moderations are used only now.
    for success in [false, true, true] {
        let answer = bench.post("/v1/check", &[], &moderation()).await.json();
        assert_eq!(answer["allowed"], true, "{answer}");
        settle(&bench, &answer["hold"], success).await;
    }
    let used_up = bench.post("/v1/check", &[], &moderation()).await.json();
    assert_eq!(used_up["status"], 403, "{used_up}");
    assert_eq!(used_up["code"], "quota_exceeded", "{used_up}");
    bench.stop().await;
}

#[tokio::test]
async fn a_settle_without_a_token_the_api_issued_is_answered_as_problem_json() {
    let bench = decision_api().await;
    for body in [
        json!({"hold": "not-a-token", "success": true}),
        json!({"hold": "eyJhdCI6MX0", "success": true}),
    ] {
        let refused = bench.post("/v1/settle", &[], &body).await;
        assert_eq!(
            refused.status,
            StatusCode::BAD_REQUEST,
            "{}",
            refused.text()
        );
        assert_eq!(
            refused.header("content-type"),
            Some("application/problem+json")
        );
        assert_eq!(refused.json()["code"], "invalid_field");
    }
    let malformed = bench
        .post("/v1/settle", &[], &json!({"success": true}))
        .await;
    assert_eq!(malformed.status, StatusCode::BAD_REQUEST);
    assert_eq!(malformed.json()["code"], "malformed_body");
    bench.stop().await;
}

#[tokio::test]
async fn a_header_value_is_read_without_its_surrounding_whitespace() {
    let bench = Bench::edited("streampixel", |text| {
        text.replacen(
            "  user:\n    from: body\n    field: userId\n",
            "  user:\n    from: header\n    name: x-user\n",
            1,
        )
    })
    .await;
    let upload = |user: &str| {
        let mut check = check("ignored");
        check["headers"]["x-user"] = json!(user);
        check
    };
    let first = bench.post("/v1/check", &[], &upload("alice")).await.json();
    assert_eq!(first["allowed"], true, "{first}");
    // The proxy's parser drops the spaces around a field's value; so does the decision API.
    let spaced = bench
        .post("/v1/check", &[], &upload(" alice\t"))
        .await
        .json();
    assert_eq!(spaced["code"], "rate_limited", "{spaced}");
    bench.stop().await;
}

#[tokio::test]
async fn a_check_from_an_allowed_origin_answers_with_the_cors_headers_too() {
    let bench = Bench::edited("streampixel", |text| {
        text.replacen(
            "\nroutes:\n",
            "\ncors:\n  allow_origins: [https://console.streampixel.io]\nroutes:\n",
            1,
        )
    })
    .await;
    let origin = "https://console.streampixel.io";
    let mut from_page = check("page");
    from_page["headers"]["origin"] = json!(origin);
    let answer = bench.post("/v1/check", &[], &from_page).await.json();
    assert_eq!(answer["allowed"], true, "{answer}");
    assert_eq!(answer["headers"]["access-control-allow-origin"], origin);
    assert!(answer["headers"]["ratelimit"].is_string(), "{answer}");
    // A preflight is answered as the gateway answers it: 204, counting nothing.
    let preflight = json!({
        "method": "OPTIONS",
        "path": "/projects/upload-file",
        "headers": {"origin": origin, "access-control-request-method": "POST"},
    });
    let answer = bench.post("/v1/check", &[], &preflight).await.json();
    assert_eq!(answer["allowed"], true, "{answer}");
    assert_eq!(answer["status"], 204, "{answer}");
    assert_eq!(answer["headers"]["access-control-allow-origin"], origin);
    assert!(
        answer["headers"]["access-control-allow-methods"].is_string(),
        "{answer}"
    );
    bench.stop().await;
}

#[tokio::test]
async fn a_header_the_request_repeats_is_checked_as_the_proxy_checks_it() {
    let bench = Bench::edited("streampixel", |text| {
        text.replacen(
            "  user:\n    from: body\n    field: userId\n",
            "  user:\n    from: header\n    name: x-user\n",
            1,
        )
    })
    .await;
    let with_users = |users: serde_json::Value| {
        let mut check = check("alice");
        check["headers"]["x-user"] = users;
        check
    };
    // The same value twice is one user; two different ones could be either to an upstream.
    let same = bench
        .post("/v1/check", &[], &with_users(json!(["alice", "alice"])))
        .await
        .json();
    assert_eq!(same["allowed"], true, "{same}");
    let two = bench
        .post("/v1/check", &[], &with_users(json!(["bob", "carol"])))
        .await
        .json();
    assert_eq!(two["allowed"], false, "{two}");
    assert_eq!(two["status"], 400, "{two}");
    assert_eq!(two["code"], "invalid_field", "{two}");
    // Anything but a string or strings is the caller's mistake.
    let wrong = bench.post("/v1/check", &[], &with_users(json!(7))).await;
    assert_eq!(wrong.status, StatusCode::BAD_REQUEST);
    assert_eq!(wrong.json()["code"], "malformed_body");
    bench.stop().await;
}
