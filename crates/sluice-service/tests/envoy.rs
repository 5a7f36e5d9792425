//! Envoy's rate limit service as a use case, without gRPC: descriptors counted against the
//! policy's `envoy:` rules, each distinct descriptor on its own counter, all or nothing, with
//! the policy's headers and error body when over the limit.

use std::sync::Arc;
use std::time::Duration;

use sluice_core::{Clock, ManualClock, Timestamp};
use sluice_service::{Descriptor, KeyRing, Service};
use sluice_store::MemoryStore;

const POLICY: &str = r#"
service:
  name: Edge
errors:
  envelope:
    style: error_message
  messages:
    rate_limited: "Too many requests. Please try again in {retry_in_seconds}."
headers:
  x_ratelimit: unix_seconds
routes: []
envoy:
  domain: edge
  descriptors:
    - match: [generic_key=uploads, user]
      name: uploads
      rate: 2 per 1m
      algorithm: fixed_window
    - match: [generic_key=uploads, user=ci]
      unlimited: true
    - match: [remote_address]
      rate: 100 per 1s
"#;

fn service() -> (Service<Arc<MemoryStore>>, ManualClock) {
    let policy = Arc::new(sluice_policy::load("policy.yaml", POLICY).expect("valid"));
    // Midway through a minute, so the fixed window's reset is 30 s away.
    let clock = ManualClock::new(Timestamp::from_secs(1_795_342_530));
    let shared: Arc<dyn Clock> = Arc::new(clock.clone());
    let store = Arc::new(MemoryStore::new(Arc::clone(&shared)));
    (
        Service::new(policy, store, KeyRing::default()).with_clock(shared),
        clock,
    )
}

fn upload(user: &str) -> Descriptor<'_> {
    Descriptor {
        entries: vec![("generic_key", "uploads"), ("user", user)],
        hits: None,
    }
}

fn header<'h>(headers: &'h [(http::HeaderName, http::HeaderValue)], name: &str) -> &'h str {
    headers
        .iter()
        .find(|(key, _)| key == name)
        .and_then(|(_, value)| value.to_str().ok())
        .unwrap_or_else(|| panic!("no {name} in {headers:?}"))
}

#[tokio::test]
async fn each_user_gets_the_limit_and_the_one_over_it_gets_the_policys_body() {
    let (service, clock) = service();
    for remaining in [1, 0] {
        let verdict = service
            .check_descriptors("edge", &[upload("ada")], 1)
            .await
            .expect("decided");
        assert!(verdict.rejection.is_none());
        let status = verdict.statuses[0].as_ref().expect("limited");
        assert_eq!(
            (status.over_limit, status.limit, status.remaining),
            (false, 2, remaining)
        );
        assert_eq!(status.name, "uploads");
        assert_eq!(status.period, Duration::from_secs(60));
        assert_eq!(status.reset_after, Duration::from_secs(30));
        assert_eq!(
            header(&verdict.headers, "x-ratelimit-remaining"),
            remaining.to_string()
        );
    }

    let over = service
        .check_descriptors("edge", &[upload("ada")], 1)
        .await
        .expect("decided");
    assert!(over.statuses[0].as_ref().expect("limited").over_limit);
    let rejection = over.rejection.expect("refused");
    assert_eq!(rejection.status, http::StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        String::from_utf8(rejection.body).expect("utf-8"),
        r#"{"error":"Rate limit exceeded","message":"Too many requests. Please try again in 30 seconds.","retry_after":30}"#
    );
    assert_eq!(header(&rejection.headers, "retry-after"), "30");

    // Another user has a counter of their own.
    let other = service
        .check_descriptors("edge", &[upload("grace")], 1)
        .await
        .expect("decided");
    assert!(other.rejection.is_none());

    // The window passes on the injected clock.
    clock.advance(Duration::from_secs(30));
    let next = service
        .check_descriptors("edge", &[upload("ada")], 1)
        .await
        .expect("decided");
    assert!(next.rejection.is_none());
}

#[tokio::test]
async fn a_refused_call_counts_nothing_and_hits_add_up() {
    let (service, _clock) = service();
    let address = Descriptor {
        entries: vec![("remote_address", "10.0.0.1")],
        hits: None,
    };
    // One call of 1 upload and 1 address hit; then 2 uploads more with the address: refused,
    // and the address keeps its 99.
    let first = service
        .check_descriptors("edge", &[upload("ada"), address.clone()], 1)
        .await
        .expect("decided");
    assert_eq!(first.statuses[1].as_ref().expect("limited").remaining, 99);
    let refused = service
        .check_descriptors("edge", &[address.clone(), upload("ada")], 2)
        .await
        .expect("decided");
    assert!(refused.rejection.is_some());
    let statuses: Vec<bool> = refused
        .statuses
        .iter()
        .map(|status| status.as_ref().expect("limited").over_limit)
        .collect();
    assert_eq!(statuses, [false, true]);
    let after = service
        .check_descriptors(
            "edge",
            &[Descriptor {
                hits: Some(0),
                ..address.clone()
            }],
            1,
        )
        .await
        .expect("decided");
    assert_eq!(after.statuses[0].as_ref().expect("limited").remaining, 99);

    // The same descriptor twice in one call counts twice, on one counter.
    let twice = service
        .check_descriptors("edge", &[upload("grace"), upload("grace")], 1)
        .await
        .expect("decided");
    assert!(twice.rejection.is_none());
    assert_eq!(twice.statuses[1].as_ref().expect("limited").remaining, 0);
}

#[tokio::test]
async fn what_no_rule_names_is_not_limited() {
    let (service, _clock) = service();
    let unknown = Descriptor {
        entries: vec![("generic_key", "downloads"), ("user", "ada")],
        hits: None,
    };
    for _ in 0..5 {
        let verdict = service
            .check_descriptors("edge", std::slice::from_ref(&unknown), 1)
            .await
            .expect("decided");
        assert_eq!(verdict.statuses, [None]);
        assert!(verdict.rejection.is_none());
        // Another domain's uploads are not this policy's.
        let elsewhere = service
            .check_descriptors("other", &[upload("ada")], 1)
            .await
            .expect("decided");
        assert_eq!(elsewhere.statuses, [None]);
        // An `unlimited` rule exempts the value it fixes from the limit on every other one.
        let exempt = service
            .check_descriptors("edge", &[upload("ci")], 1)
            .await
            .expect("decided");
        assert_eq!(exempt.statuses, [None]);
        assert!(exempt.rejection.is_none());
    }
}

#[tokio::test]
async fn a_descriptor_rule_in_shadow_mode_answers_ok_over_its_limit_and_tells_envoy_nothing() {
    let text = POLICY.replace(
        "      algorithm: fixed_window\n",
        "      algorithm: fixed_window\n      shadow: true\n",
    );
    let policy = Arc::new(sluice_policy::load("policy.yaml", &text).expect("valid"));
    let clock = ManualClock::new(Timestamp::from_secs(1_795_342_530));
    let shared: Arc<dyn Clock> = Arc::new(clock.clone());
    let store = Arc::new(MemoryStore::new(Arc::clone(&shared)));
    let service = Service::new(policy, store, KeyRing::default()).with_clock(shared);
    for remaining in [1, 0, 0] {
        let verdict = service
            .check_descriptors("edge", &[upload("ada")], 1)
            .await
            .expect("decided");
        assert!(verdict.rejection.is_none());
        let status = verdict.statuses[0].as_ref().expect("counted");
        assert_eq!((status.over_limit, status.remaining), (false, remaining));
        assert!(verdict.headers.is_empty(), "{:?}", verdict.headers);
    }
}
