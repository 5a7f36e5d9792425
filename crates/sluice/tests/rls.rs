//! `sluice serve --rls-listen`: Envoy's rate limit service beside the gateway, from the same
//! policy file, over real gRPC; and a SIGTERM that stops both cleanly.

mod support;

use sluice_rls::proto::rate_limit_descriptor::Entry;
use sluice_rls::proto::rate_limit_response::Code;
use sluice_rls::proto::rate_limit_service_client::RateLimitServiceClient;
use sluice_rls::proto::{RateLimitDescriptor, RateLimitRequest};
use support::{Server, free_port};

const POLICY: &str = r#"
service:
  name: Streampixel
errors:
  envelope:
    style: message
  messages:
    rate_limited: "Rate limit exceeded. Try again in {retry_in}."
routes: []
envoy:
  domain: streampixel
  descriptors:
    - match: [generic_key=upload-file, user]
      rate: 1 per 2m
"#;

fn upload(user: &str) -> RateLimitRequest {
    RateLimitRequest {
        domain: "streampixel".into(),
        descriptors: vec![RateLimitDescriptor {
            entries: vec![
                Entry {
                    key: "generic_key".into(),
                    value: "upload-file".into(),
                },
                Entry {
                    key: "user".into(),
                    value: user.into(),
                },
            ],
            ..RateLimitDescriptor::default()
        }],
        hits_addend: 0,
    }
}

/// `sluice serve` of `POLICY` on the memory store with `extra` flags and `--rls-listen`: its
/// directory, the server, and the rate limit service's address.
async fn serve(extra: &[&str]) -> (tempfile::TempDir, Server, std::net::SocketAddr) {
    let rls = free_port();
    let rls_text = rls.to_string();
    let mut args = vec!["--rls-listen", &rls_text];
    args.extend_from_slice(extra);
    let (dir, server) = support::serve_policy(POLICY, &args, false).await;
    (dir, server, rls)
}

#[tokio::test]
async fn envoy_asks_the_server_and_gets_the_policys_answer() {
    let (_dir, mut server, rls) = serve(&[]).await;
    let mut client = RateLimitServiceClient::connect(format!("http://{rls}"))
        .await
        .expect("the rate limit service answers");

    let first = client
        .should_rate_limit(upload("42"))
        .await
        .expect("answered")
        .into_inner();
    assert_eq!(first.overall_code(), Code::Ok);
    let second = client
        .should_rate_limit(upload("42"))
        .await
        .expect("answered")
        .into_inner();
    assert_eq!(second.overall_code(), Code::OverLimit);
    // Seed 000's promise, word for word, for Envoy to send with its 429.
    assert_eq!(
        String::from_utf8(second.raw_body).expect("utf-8"),
        r#"{"message":"Rate limit exceeded. Try again in 2 minutes."}"#
    );
    let other = client
        .should_rate_limit(upload("43"))
        .await
        .expect("answered")
        .into_inner();
    assert_eq!(other.overall_code(), Code::Ok);

    server.signal("TERM");
    assert!(server.exited().await.success());
}

#[tokio::test]
async fn every_serving_thread_answers_envoy_over_the_same_counters() {
    let (_dir, mut server, rls) = serve(&["--threads", "2"]).await;
    // Its threads, as `ps -L` names them.
    let names: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", server.pid()))
        .expect("the server's threads")
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_owned())
        .collect();
    for thread in ["sluice-rls-0", "sluice-rls-1"] {
        assert!(names.iter().any(|name| name == thread), "{names:?}");
    }

    // Sixteen Envoy connections at once, which the kernel spreads over the threads' listeners:
    // one user's one upload is admitted once, whichever thread decides it.
    let mut calls = Vec::new();
    for _ in 0..16 {
        let address = format!("http://{rls}");
        calls.push(tokio::spawn(async move {
            let mut client = RateLimitServiceClient::connect(address)
                .await
                .expect("the rate limit service answers");
            client
                .should_rate_limit(upload("7"))
                .await
                .expect("answered")
                .into_inner()
                .overall_code()
        }));
    }
    let mut codes = Vec::new();
    for call in calls {
        codes.push(call.await.expect("the call ran"));
    }
    assert_eq!(
        codes.iter().filter(|code| **code == Code::Ok).count(),
        1,
        "{codes:?}"
    );
    assert_eq!(
        codes
            .iter()
            .filter(|code| **code == Code::OverLimit)
            .count(),
        15,
        "{codes:?}"
    );

    server.signal("TERM");
    assert!(server.exited().await.success());
}

#[test]
fn the_checker_counts_the_envoy_rules() {
    let said = support::check(POLICY);
    assert!(
        said.ends_with(
            ": ok (0 routes, 0 plans, 1 Envoy descriptor rule for domain `streampixel`)\n"
        ),
        "{said}"
    );
}
