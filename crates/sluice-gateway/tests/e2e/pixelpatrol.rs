//! Seed 001 (Pixel Patrol) through the gateway: per-site-key limits with `X-RateLimit-*` on every
//! response, the documented 429 body with `retry_after`, field size limits, the monthly
//! moderation quota per team answered with 403 and `type: moderation_limit`, and an enterprise
//! customer's custom limits.

use std::time::Duration;

use http::StatusCode;
use serde_json::json;

use super::support::{Bench, START, members};

const FREE: &str = "Bearer pp_free_demo_key";
const FREE_SECOND_SITE: &str = "Bearer pp_free_second_demo_key";
const PRO: &str = "Bearer pp_pro_demo_key";
const ENTERPRISE: &str = "Bearer pp_enterprise_demo_key";

fn submission() -> serde_json::Value {
    json!({"body": "Is this text acceptable?", "metadata": {"source": "comments"}})
}

#[tokio::test]
async fn submissions_are_limited_per_site_key_with_x_ratelimit_headers() {
    let bench = Bench::start("pixelpatrol").await;
    // 20 seconds into a clock minute: the window resets at the minute's end.
    bench.advance(Duration::from_secs(20));
    let reset = (START.as_secs() + 60).to_string();
    let first = bench
        .post("/submit-media", &[("authorization", PRO)], &submission())
        .await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text());
    assert_eq!(first.header("x-ratelimit-limit"), Some("1000"));
    assert_eq!(first.header("x-ratelimit-remaining"), Some("999"));
    assert_eq!(first.header("x-ratelimit-reset"), Some(reset.as_str()));
    for _ in 1..1000 {
        let reply = bench
            .post("/submit-media", &[("authorization", PRO)], &submission())
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    }
    let limited = bench
        .post("/submit-media", &[("authorization", PRO)], &submission())
        .await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        limited.json(),
        json!({
            "error": "Rate limit exceeded",
            "message": "Too many requests. Please try again in 40 seconds.",
            "retry_after": 40,
        })
    );
    assert_eq!(
        members(&limited.json()),
        ["error", "message", "retry_after"]
    );
    assert_eq!(limited.header("retry-after"), Some("40"));
    assert_eq!(limited.header("x-ratelimit-remaining"), Some("0"));
    assert_eq!(limited.header("x-ratelimit-reset"), Some(reset.as_str()));

    // The status endpoint has its own, larger allowance.
    let status = bench
        .post(
            "/get-media-status",
            &[("authorization", PRO)],
            &json!({"id": "med_1"}),
        )
        .await;
    assert_eq!(status.status, StatusCode::OK, "{}", status.text());
    assert_eq!(status.header("x-ratelimit-limit"), Some("2000"));
    assert_eq!(status.header("x-ratelimit-remaining"), Some("1999"));

    // The next clock minute starts afresh.
    bench.advance(Duration::from_secs(40));
    let next = bench
        .post("/submit-media", &[("authorization", PRO)], &submission())
        .await;
    assert_eq!(next.status, StatusCode::OK, "{}", next.text());
    assert_eq!(next.header("x-ratelimit-remaining"), Some("999"));
    bench.stop().await;
}

#[tokio::test]
async fn an_enterprise_customer_gets_its_custom_limits() {
    let bench = Bench::start("pixelpatrol").await;
    let reply = bench
        .post(
            "/submit-media",
            &[("authorization", ENTERPRISE)],
            &submission(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.header("x-ratelimit-limit"), Some("10000"));
    let status = bench
        .post(
            "/get-media-status",
            &[("authorization", ENTERPRISE)],
            &json!({"id": "med_1"}),
        )
        .await;
    assert_eq!(status.header("x-ratelimit-limit"), Some("20000"));
    bench.stop().await;
}

#[tokio::test]
async fn oversized_fields_are_refused_with_the_documented_limits() {
    let bench = Bench::start("pixelpatrol").await;
    // KB are 1,000 bytes, as the policy reference says (KiB for 1,024).
    let text = "x".repeat(100_001);
    let reply = bench
        .post(
            "/submit-media",
            &[("authorization", PRO)],
            &json!({"body": text}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        reply.json(),
        json!({"error": "Content too large", "message": "The body field exceeds the maximum size of 100 KB."})
    );
    let at_limit = bench
        .post(
            "/submit-media",
            &[("authorization", PRO)],
            &json!({"body": "x".repeat(100_000)}),
        )
        .await;
    assert_eq!(at_limit.status, StatusCode::OK, "exactly 100 KB is allowed");

    let metadata = json!({"body": "hi", "metadata": {"blob": "m".repeat(10_000)}});
    let reply = bench
        .post("/submit-media", &[("authorization", PRO)], &metadata)
        .await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        reply.json()["message"],
        "The metadata field exceeds the maximum size of 10 KB."
    );
    let no_key = bench.post("/submit-media", &[], &submission()).await;
    assert_eq!(no_key.status, StatusCode::UNAUTHORIZED);
    assert_eq!(members(&no_key.json()), ["error", "message"]);
    bench.stop().await;
}

#[tokio::test]
async fn the_monthly_moderation_quota_is_per_team_and_counts_only_successes() {
    let bench = Bench::start("pixelpatrol").await;
    // Failed moderations do not burn quota.
    for _ in 0..5 {
        let failed = bench
            .post(
                "/submit-media",
                &[("authorization", FREE), ("x-upstream-status", "503")],
                &submission(),
            )
            .await;
        assert_eq!(failed.status, StatusCode::SERVICE_UNAVAILABLE);
    }
    // The free plan's 1,000 moderations, spread over two sites of the same team and two minutes
    // so the per-minute limit stays out of the way.
    for index in 0..1000 {
        if index == 500 {
            bench.advance(Duration::from_secs(60));
        }
        let key = if index % 2 == 0 {
            FREE
        } else {
            FREE_SECOND_SITE
        };
        let reply = bench
            .post("/submit-media", &[("authorization", key)], &submission())
            .await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "moderation {index}: {}",
            reply.text()
        );
    }
    bench.advance(Duration::from_secs(60));
    for key in [FREE, FREE_SECOND_SITE] {
        let reply = bench
            .post("/submit-media", &[("authorization", key)], &submission())
            .await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.text());
        assert_eq!(
            reply.json(),
            json!({
                "error": "Moderation limit exceeded",
                "type": "moderation_limit",
                "message": "Your team has reached the monthly moderation limit. Please upgrade your plan.",
            })
        );
    }
    // Status polls are not moderations; another team is unaffected.
    let status = bench
        .post(
            "/get-media-status",
            &[("authorization", FREE)],
            &json!({"id": "med_1"}),
        )
        .await;
    assert_eq!(status.status, StatusCode::OK);
    let other = bench
        .post("/submit-media", &[("authorization", PRO)], &submission())
        .await;
    assert_eq!(other.status, StatusCode::OK);

    // A new calendar month (UTC) brings the allowance back: 2026-12-01T00:00:00Z.
    bench
        .clock
        .set(sluice_core::Timestamp::from_secs(1_796_083_200));
    let december = bench
        .post("/submit-media", &[("authorization", FREE)], &submission())
        .await;
    assert_eq!(december.status, StatusCode::OK, "{}", december.text());
    bench.stop().await;
}

#[tokio::test]
async fn images_by_url_are_probed_against_the_10_mb_limit() {
    // The example refuses private hosts; the test's image server is on loopback.
    let bench = Bench::edited("pixelpatrol", |text| {
        text.replace(
            "probe: true",
            "probe: true\n            allow_private: true",
        )
    })
    .await;
    let upstream = bench.upstream_address();
    let submit = |path: String| json!({"image_url": format!("http://{upstream}{path}")});
    let small = bench
        .post(
            "/submit-media",
            &[("authorization", PRO)],
            &submit("/image/2048".into()),
        )
        .await;
    assert_eq!(small.status, StatusCode::OK, "{}", small.text());
    let exactly = bench
        .post(
            "/submit-media",
            &[("authorization", PRO)],
            &submit("/stream/10000000".into()),
        )
        .await;
    assert_eq!(exactly.status, StatusCode::OK, "{}", exactly.text());
    for path in ["/image/10000001", "/stream/10000001"] {
        let large = bench
            .post(
                "/submit-media",
                &[("authorization", PRO)],
                &submit(path.into()),
            )
            .await;
        assert_eq!(
            large.status,
            StatusCode::PAYLOAD_TOO_LARGE,
            "{path}: {}",
            large.text()
        );
        assert_eq!(
            large.json(),
            json!({"error": "Content too large", "message": "The image at image_url exceeds the maximum size of 10 MB."})
        );
    }
    bench.stop().await;
}

#[tokio::test]
async fn images_on_private_hosts_are_refused_without_being_fetched() {
    let bench = Bench::start("pixelpatrol").await;
    for url in [
        "https://127.0.0.1/cat.png",
        "https://169.254.169.254/latest/meta-data",
        "https://[::1]/cat.png",
        "http://cdn.example.com/cat.png",
    ] {
        let reply = bench
            .post(
                "/submit-media",
                &[("authorization", PRO)],
                &json!({"image_url": url}),
            )
            .await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{url}: {}",
            reply.text()
        );
        assert_eq!(
            reply.json()["message"],
            "Invalid field: image_url must be a public https URL"
        );
    }
    // A name with no public address is refused by the probe's resolver (`.invalid` never
    // resolves).
    let reply = bench
        .post(
            "/submit-media",
            &[("authorization", PRO)],
            &json!({"image_url": "https://images.example.invalid/cat.png"}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.text());
    assert_eq!(
        reply.json()["message"],
        "Invalid field: image_url could not be fetched"
    );
    assert!(
        bench.seen.lock().expect("lock").is_empty(),
        "nothing was forwarded"
    );
    bench.stop().await;
}
