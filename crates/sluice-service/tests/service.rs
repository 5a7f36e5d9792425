//! The service without HTTP: what an admitted request leaves behind once its upstream call has
//! failed or succeeded.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;
use sluice_core::{Clock, ManualClock, Timestamp};
use sluice_service::{KeyRing, Request, Service, Verdict};
use sluice_store::MemoryStore;

fn service(name: &str) -> (Service<MemoryStore>, ManualClock) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .join(name);
    let read = |file: &str| std::fs::read_to_string(dir.join(file)).expect("the example exists");
    let policy = sluice_policy::load("policy.yaml", &read("policy.yaml"))
        .unwrap_or_else(|errors| panic!("{errors}"));
    let keys = sluice_policy::load_keys("keys.yaml", &read("keys.yaml"), &policy)
        .unwrap_or_else(|errors| panic!("{errors}"));
    let clock = ManualClock::new(Timestamp::from_secs(1_795_342_500));
    let shared: Arc<dyn Clock> = Arc::new(clock.clone());
    let service = Service::new(
        Arc::new(policy),
        MemoryStore::new(shared),
        KeyRing::new(keys),
    );
    (service, clock)
}

/// The service for a policy given as text, with no keys.
fn inline(policy: &str) -> Service<MemoryStore> {
    inline_clocked(policy).0
}

/// The service for a policy given as text, with no keys, and the clock it reads.
fn inline_clocked(policy: &str) -> (Service<MemoryStore>, ManualClock) {
    let policy =
        sluice_policy::load("policy.yaml", policy).unwrap_or_else(|errors| panic!("{errors}"));
    let clock = ManualClock::new(Timestamp::from_secs(1_795_342_500));
    let shared: Arc<dyn Clock> = Arc::new(clock.clone());
    let service = Service::new(
        Arc::new(policy),
        MemoryStore::new(shared),
        KeyRing::default(),
    );
    (service, clock)
}

/// One feed at a time per user, held under a 30-second lease.
const ONE_FEED: &str = "service:\n  name: Test\nidentities:\n  user: { from: header, name: x-user }\nroutes:\n  - match: GET /feed\n    limits:\n      - name: feeds\n        rate: 1 per 30s\n        algorithm: concurrency\n        per: user\n";

async fn feed(service: &Service<MemoryStore>) -> Verdict {
    let mut headers = HeaderMap::new();
    headers.insert("x-user", "ann".parse().expect("value"));
    service
        .check(&Request {
            method: "GET",
            path: "/feed",
            query: None,
            headers: &headers,
            peer: None,
            body: None,
            request_id: None,
        })
        .await
}

#[tokio::test]
async fn a_request_renewing_its_slot_keeps_it_for_as_long_as_it_lasts() {
    let (service, clock) = inline_clocked(ONE_FEED);
    let Verdict::Admit(mut admission) = feed(&service).await else {
        panic!("the first feed is admitted");
    };
    let every = admission.renew_every().expect("it holds a slot");
    assert_eq!(every, Duration::from_secs(15), "half the lease");
    // Ten minutes, twenty leases: the slot stays taken throughout.
    for _ in 0..40 {
        clock.advance(every);
        assert!(service.renew(&mut admission).await);
        assert!(
            matches!(feed(&service).await, Verdict::Reject(ref r) if r.status == 429),
            "a second feed is refused while the first is open"
        );
    }
    service.finish(admission, true).await;
    assert!(
        matches!(feed(&service).await, Verdict::Admit(_)),
        "the slot is free once the first feed is over"
    );
}

#[tokio::test]
async fn a_slot_not_renewed_lapses_within_two_leases() {
    let (service, clock) = inline_clocked(ONE_FEED);
    let Verdict::Admit(_admission) = feed(&service).await else {
        panic!("the first feed is admitted");
    };
    clock.advance(Duration::from_secs(60));
    assert!(matches!(feed(&service).await, Verdict::Admit(_)));
}

#[tokio::test]
async fn a_hold_token_renewed_keeps_its_slot_and_the_new_token_settles_it() {
    let (service, clock) = inline_clocked(ONE_FEED);
    let Verdict::Admit(admission) = feed(&service).await else {
        panic!("the first feed is admitted");
    };
    let mut token = admission.hold_token();
    for _ in 0..10 {
        clock.advance(Duration::from_secs(20));
        let renewed = service
            .renew_hold(&token)
            .await
            .expect("a token it issued")
            .expect("the store took it");
        assert_eq!(renewed.renew_every, Some(Duration::from_secs(15)));
        token = renewed.token;
    }
    assert!(matches!(feed(&service).await, Verdict::Reject(_)));
    service
        .settle_hold(&token, true)
        .await
        .expect("a token it issued");
    assert!(matches!(feed(&service).await, Verdict::Admit(_)));
    assert!(service.renew_hold("not a token").await.is_err());
}

async fn check(
    service: &Service<MemoryStore>,
    path: &str,
    headers: &HeaderMap,
    body: &str,
) -> Verdict {
    service
        .check(&Request {
            method: "POST",
            path,
            query: None,
            headers,
            peer: None,
            body: Some(body.as_bytes()),
            request_id: None,
        })
        .await
}

fn json_headers(authorization: Option<&str>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", "application/json".parse().expect("value"));
    if let Some(authorization) = authorization {
        headers.insert("authorization", authorization.parse().expect("value"));
    }
    headers
}

#[tokio::test]
async fn a_failed_call_still_counts_against_the_rate_limit() {
    let (service, _clock) = service("streampixel");
    let upload = r#"{"apiKey":"sp_live_alice_demo_key","userId":"uma","projectId":"p","fileUrl":"https://x.example.com/b.zip"}"#;
    let headers = json_headers(None);
    let Verdict::Admit(admission) =
        check(&service, "/projects/upload-file", &headers, upload).await
    else {
        panic!("the first upload is admitted");
    };
    service.finish(admission, false).await;
    let again = check(&service, "/projects/upload-file", &headers, upload).await;
    assert!(
        matches!(again, Verdict::Reject(ref rejection) if rejection.status == 429),
        "{again:?}"
    );
}

#[tokio::test]
async fn a_failed_call_gives_its_quota_back() {
    let (service, clock) = service("pixelpatrol");
    let headers = json_headers(Some("Bearer pp_free_demo_key"));
    let submit = r#"{"body":"hello"}"#;
    // The free plan has 1,000 moderations a month. 600 failed calls give theirs back...
    for _ in 0..600 {
        let Verdict::Admit(admission) = check(&service, "/submit-media", &headers, submit).await
        else {
            panic!("admitted");
        };
        service.finish(admission, false).await;
    }
    // ...so, a minute later (the rate limit counted them), 1,000 calls still succeed.
    clock.advance(std::time::Duration::from_secs(60));
    for _ in 0..1000 {
        let Verdict::Admit(admission) = check(&service, "/submit-media", &headers, submit).await
        else {
            panic!("the quota was not refunded");
        };
        service.finish(admission, true).await;
    }
    clock.advance(std::time::Duration::from_secs(60));
    let over = check(&service, "/submit-media", &headers, submit).await;
    assert!(
        matches!(over, Verdict::Reject(ref rejection) if rejection.status == 403),
        "{over:?}"
    );
}

#[tokio::test]
async fn an_ipv6_client_counts_by_its_network_whichever_address_it_takes() {
    let service = inline(
        "service:\n  name: Test\nidentities:\n  ip: { from: client_ip }\nroutes:\n  - match: GET /a\n    limits:\n      - rate: 1 per 1m\n        per: ip\n",
    );
    let headers = HeaderMap::new();
    let from = |peer: &str| Request {
        method: "GET",
        path: "/a",
        query: None,
        headers: &headers,
        peer: Some(peer.parse().expect("an address")),
        body: None,
        request_id: None,
    };
    let admitted = async |peer: &str| matches!(service.check(&from(peer)).await, Verdict::Admit(_));
    assert!(admitted("2001:db8:1:2::1").await);
    // Another address of the same /64: the same client, already at its limit.
    assert!(!admitted("2001:db8:1:2:9f3c:51aa:7e02:d4b1").await);
    assert!(admitted("2001:db8:1:3::1").await);
    // An IPv4 client as a dual-stack listener sees it is the IPv4 address it is.
    assert!(admitted("::ffff:198.51.100.7").await);
    assert!(!admitted("198.51.100.7").await);
}

#[tokio::test]
async fn an_identity_given_twice_with_different_values_is_refused() {
    let service = inline(
        "service:\n  name: Test\nidentities:\n  user: { from: header, name: x-user }\n  site: { from: query, name: site }\nroutes:\n  - match: GET /a\n    limits:\n      - rate: 5 per 1m\n        per: user\n      - rate: 5 per 1m\n        per: site\n",
    );
    let verdict = async |users: &[&str], query: &str| {
        let mut headers = HeaderMap::new();
        for user in users {
            headers.append("x-user", user.parse().expect("a value"));
        }
        let request = Request {
            method: "GET",
            path: "/a",
            query: Some(query),
            headers: &headers,
            peer: None,
            body: None,
            request_id: None,
        };
        match service.check(&request).await {
            Verdict::Admit(_) => "admitted".to_owned(),
            Verdict::Reject(rejection) => String::from_utf8(rejection.body).expect("UTF-8"),
        }
    };
    assert_eq!(verdict(&["alice"], "site=s1").await, "admitted");
    // The same value twice says nothing new.
    assert_eq!(
        verdict(&["alice", "alice"], "site=s1&site=s1").await,
        "admitted"
    );
    let header = verdict(&["victim", "alice"], "site=s1").await;
    assert!(header.contains("x-user"), "{header}");
    assert!(header.contains("more than once"), "{header}");
    let query = verdict(&["alice"], "site=victim&site=s1").await;
    assert!(query.contains("site"), "{query}");
    assert!(query.contains("more than once"), "{query}");
}
