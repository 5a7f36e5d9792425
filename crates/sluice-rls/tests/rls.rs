//! The rate limit service over real gRPC on a loopback port, called as Envoy's rate limit filter
//! calls it: descriptors counted against the policy's `envoy:` rules, a status per descriptor,
//! the policy's headers, and its error body for the 429 when over the limit.

use std::sync::Arc;
use std::time::Duration;

use sluice_core::{Clock, ManualClock, Timestamp};
use sluice_rls::Rls;
use sluice_rls::proto::rate_limit_descriptor::Entry;
use sluice_rls::proto::rate_limit_response::{Code, rate_limit};
use sluice_rls::proto::rate_limit_service_client::RateLimitServiceClient;
use sluice_rls::proto::{RateLimitDescriptor, RateLimitRequest, RateLimitResponse};
use sluice_service::{KeyRing, LiveService, Service};
use sluice_store::MemoryStore;
use tonic::transport::Channel;

const POLICY: &str = r#"
service:
  name: Pixel Patrol
errors:
  envelope:
    style: error_message
  messages:
    rate_limited: "Too many requests. Please try again in {retry_in_seconds}."
headers:
  x_ratelimit: unix_seconds
routes: []
envoy:
  domain: pixelpatrol
  descriptors:
    - match: [generic_key=submit-media, site]
      name: submit-media
      rate: 2 per 1m
      algorithm: fixed_window
"#;

struct Running {
    client: RateLimitServiceClient<Channel>,
    clock: ManualClock,
    services: Arc<LiveService<Arc<MemoryStore>>>,
    store: Arc<MemoryStore>,
    clock_shared: Arc<dyn Clock>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

fn service(
    text: &str,
    store: &Arc<MemoryStore>,
    clock: &Arc<dyn Clock>,
) -> Arc<Service<Arc<MemoryStore>>> {
    let policy = Arc::new(sluice_policy::load("policy.yaml", text).expect("valid"));
    Arc::new(
        Service::new(policy, Arc::clone(store), KeyRing::default()).with_clock(Arc::clone(clock)),
    )
}

async fn start() -> Running {
    // 30 s into a minute: the fixed window resets in 30 s.
    let clock = ManualClock::new(Timestamp::from_secs(1_795_342_530));
    let shared: Arc<dyn Clock> = Arc::new(clock.clone());
    let store = Arc::new(MemoryStore::new(Arc::clone(&shared)));
    let services = Arc::new(LiveService::new(service(POLICY, &store, &shared)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let address = listener.local_addr().expect("an address");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(Rls::new(Arc::clone(&services)).serve(listener, async {
        let _ = stopped.await;
    }));
    let client = RateLimitServiceClient::connect(format!("http://{address}"))
        .await
        .expect("connects");
    Running {
        client,
        clock,
        services,
        store,
        clock_shared: shared,
        stop: Some(stop),
        server,
    }
}

fn submit(site: &str) -> RateLimitDescriptor {
    RateLimitDescriptor {
        entries: vec![
            Entry {
                key: "generic_key".into(),
                value: "submit-media".into(),
            },
            Entry {
                key: "site".into(),
                value: site.into(),
            },
        ],
        ..RateLimitDescriptor::default()
    }
}

async fn call(
    client: &mut RateLimitServiceClient<Channel>,
    domain: &str,
    descriptors: Vec<RateLimitDescriptor>,
) -> RateLimitResponse {
    client
        .should_rate_limit(RateLimitRequest {
            domain: domain.into(),
            descriptors,
            hits_addend: 0,
        })
        .await
        .expect("answered")
        .into_inner()
}

fn header<'r>(response: &'r RateLimitResponse, name: &str) -> &'r str {
    response
        .response_headers_to_add
        .iter()
        .find(|header| header.key == name)
        .map(|header| header.value.as_str())
        .unwrap_or_else(|| panic!("no {name} in {:?}", response.response_headers_to_add))
}

#[tokio::test]
async fn envoy_gets_the_limit_per_site_and_the_policys_429_body() {
    // This thread's recorder: the test's runtime runs the server on it.
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let metrics = recorder.handle();
    let _recording = metrics::set_default_local_recorder(&recorder);
    let mut running = start().await;
    let client = &mut running.client;
    for remaining in [1, 0] {
        let answer = call(client, "pixelpatrol", vec![submit("s1")]).await;
        assert_eq!(answer.overall_code(), Code::Ok);
        let status = &answer.statuses[0];
        assert_eq!(status.code(), Code::Ok);
        assert_eq!(status.limit_remaining, remaining);
        let limit = status.current_limit.as_ref().expect("a limit");
        assert_eq!(
            (limit.name.as_str(), limit.requests_per_unit, limit.unit()),
            ("submit-media", 2, rate_limit::Unit::Minute)
        );
        let reset = status.duration_until_reset.expect("a reset");
        assert_eq!((reset.seconds, reset.nanos), (30, 0));
        assert_eq!(header(&answer, "x-ratelimit-limit"), "2");
        assert_eq!(
            header(&answer, "x-ratelimit-remaining"),
            remaining.to_string()
        );
        assert!(answer.raw_body.is_empty());
    }

    let over = call(client, "pixelpatrol", vec![submit("s1")]).await;
    assert_eq!(over.overall_code(), Code::OverLimit);
    assert_eq!(over.statuses[0].code(), Code::OverLimit);
    assert_eq!(
        String::from_utf8(over.raw_body.clone()).expect("utf-8"),
        r#"{"error":"Rate limit exceeded","message":"Too many requests. Please try again in 30 seconds.","retry_after":30}"#
    );
    assert_eq!(header(&over, "retry-after"), "30");
    assert_eq!(header(&over, "content-type"), "application/json");

    // Another site has its own counter; the window passes on the injected clock.
    let other = call(client, "pixelpatrol", vec![submit("s2")]).await;
    assert_eq!(other.overall_code(), Code::Ok);
    running.clock.advance(Duration::from_secs(30));
    let next = call(&mut running.client, "pixelpatrol", vec![submit("s1")]).await;
    assert_eq!(next.overall_code(), Code::Ok);

    let rendered = metrics.render();
    for line in [
        r#"sluice_envoy_calls_total{outcome="ok"} 4"#,
        r#"sluice_envoy_calls_total{outcome="over_limit"} 1"#,
        r#"sluice_limit_denials_total{limit="submit-media"} 1"#,
    ] {
        assert!(rendered.contains(line), "{line} in {rendered}");
    }
}

#[tokio::test]
async fn unknown_descriptors_and_domains_pass_and_hits_add_up() {
    let mut running = start().await;
    let client = &mut running.client;
    let unknown = RateLimitDescriptor {
        entries: vec![Entry {
            key: "remote_address".into(),
            value: "10.0.0.1".into(),
        }],
        ..RateLimitDescriptor::default()
    };
    let answer = call(client, "pixelpatrol", vec![unknown, submit("s1")]).await;
    assert_eq!(answer.overall_code(), Code::Ok);
    assert_eq!(answer.statuses.len(), 2);
    assert_eq!(answer.statuses[0].code(), Code::Ok);
    assert!(answer.statuses[0].current_limit.is_none());
    assert_eq!(answer.statuses[1].limit_remaining, 1);

    let elsewhere = call(client, "another", vec![submit("s1")]).await;
    assert_eq!(elsewhere.overall_code(), Code::Ok);
    assert!(elsewhere.statuses[0].current_limit.is_none());

    // Two hits when only one is left: over, and nothing counted.
    let two = client
        .should_rate_limit(RateLimitRequest {
            domain: "pixelpatrol".into(),
            descriptors: vec![submit("s1")],
            hits_addend: 2,
        })
        .await
        .expect("answered")
        .into_inner();
    assert_eq!(two.overall_code(), Code::OverLimit);
    // A descriptor's own hits_addend wins over the request's.
    let own = RateLimitDescriptor {
        hits_addend: Some(1),
        ..submit("s1")
    };
    let one = client
        .should_rate_limit(RateLimitRequest {
            domain: "pixelpatrol".into(),
            descriptors: vec![own],
            hits_addend: 5,
        })
        .await
        .expect("answered")
        .into_inner();
    assert_eq!(one.overall_code(), Code::Ok);
    assert_eq!(one.statuses[0].limit_remaining, 0);

    let empty = client
        .should_rate_limit(RateLimitRequest {
            domain: "pixelpatrol".into(),
            descriptors: Vec::new(),
            hits_addend: 0,
        })
        .await
        .expect_err("refused");
    assert_eq!(empty.code(), tonic::Code::InvalidArgument);
    let many = client
        .should_rate_limit(RateLimitRequest {
            domain: "pixelpatrol".into(),
            descriptors: vec![submit("s9"); sluice_rls::MAX_DESCRIPTORS + 1],
            hits_addend: 0,
        })
        .await
        .expect_err("refused");
    assert_eq!(many.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        many.message(),
        "65 descriptors in one request; at most 64 are decided together"
    );
}

#[tokio::test]
async fn a_reloaded_policy_decides_the_next_call_over_the_same_counters() {
    let mut running = start().await;
    let client = &mut running.client;
    call(client, "pixelpatrol", vec![submit("s1")]).await;
    call(client, "pixelpatrol", vec![submit("s1")]).await;
    let raised = POLICY.replace("rate: 2 per 1m", "rate: 3 per 1m");
    running
        .services
        .replace(service(&raised, &running.store, &running.clock_shared));
    // The two already counted stay counted: one more fits under the new limit, not three.
    let third = call(client, "pixelpatrol", vec![submit("s1")]).await;
    assert_eq!(third.overall_code(), Code::Ok);
    assert_eq!(third.statuses[0].limit_remaining, 0);
    let fourth = call(client, "pixelpatrol", vec![submit("s1")]).await;
    assert_eq!(fourth.overall_code(), Code::OverLimit);

    // Shutdown: the server stops when told, and ends cleanly.
    running
        .stop
        .take()
        .expect("once")
        .send(())
        .expect("running");
    running.server.await.expect("joined").expect("clean stop");
}

#[tokio::test]
async fn a_redis_that_goes_away_is_unavailable_to_envoy_until_it_is_back() {
    let mut redis = sluice_test_support::RedisServer::start();
    let target = sluice_store::RedisTarget::parse(&redis.url()).expect("a Redis URL");
    let store = sluice_store::RedisStore::connect(&target, &Default::default())
        .await
        .expect("the store connects");
    let policy = Arc::new(sluice_policy::load("policy.yaml", POLICY).expect("valid"));
    let services = Arc::new(LiveService::new(Arc::new(Service::new(
        policy,
        store,
        KeyRing::default(),
    ))));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let address = listener.local_addr().expect("an address");
    tokio::spawn(Rls::new(services).serve(listener, std::future::pending()));
    let mut client = RateLimitServiceClient::connect(format!("http://{address}"))
        .await
        .expect("connects");
    let answer = call(&mut client, "pixelpatrol", vec![submit("s1")]).await;
    assert_eq!(answer.overall_code(), Code::Ok);

    redis.kill();
    let gone = client
        .should_rate_limit(RateLimitRequest {
            domain: "pixelpatrol".into(),
            descriptors: vec![submit("s1")],
            hits_addend: 0,
        })
        .await
        .expect_err("no store, no answer");
    // Envoy's failure_mode_deny decides what the client gets.
    assert_eq!(gone.code(), tonic::Code::Unavailable);

    // Back on the same port: served again once the store reconnects (10 s at most).
    redis.restart();
    for attempt in 0.. {
        let answer = client
            .should_rate_limit(RateLimitRequest {
                domain: "pixelpatrol".into(),
                descriptors: vec![submit("s2")],
                hits_addend: 0,
            })
            .await;
        match answer {
            Ok(answer) => {
                assert_eq!(answer.into_inner().overall_code(), Code::Ok);
                break;
            }
            Err(status) if attempt < 100 => {
                assert_eq!(status.code(), tonic::Code::Unavailable, "{status}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(status) => panic!("still unavailable after 10 s: {status}"),
        }
    }
}
