//! The operator's use cases without HTTP: an identity's usage of every limit and quota that
//! applies to it, counters reset, and overrides set at run time that take effect on the next
//! request and carry the counts over.

mod support;

use std::sync::Arc;

use sluice_core::{Clock, ManualClock, Timestamp};
use sluice_service::{AdminError, KeyRing, NewKey, OverrideSpec, Service, Usage};
use sluice_store::MemoryStore;
use support::{example_policy, moderate};

async fn pixel_patrol() -> (Service<Arc<MemoryStore>>, String) {
    let policy = example_policy("pixelpatrol");
    let clock = ManualClock::new(Timestamp::from_secs(1_795_342_500));
    let shared: Arc<dyn Clock> = Arc::new(clock);
    let store = Arc::new(MemoryStore::new(Arc::clone(&shared)));
    let service = Service::new(policy, store, KeyRing::default()).with_clock(shared);
    let issued = service
        .create_key(NewKey {
            owner: "ada".into(),
            team: Some("t1".into()),
            site: Some("s1".into()),
            plan: Some("pro".into()),
            ..NewKey::default()
        })
        .await
        .expect("a key");
    (service, issued.secret)
}

fn line<'a>(usage: &'a [Usage], name: &str) -> &'a Usage {
    usage
        .iter()
        .find(|line| line.name == name)
        .unwrap_or_else(|| panic!("{name} missing from {usage:?}"))
}

#[tokio::test]
async fn usage_shows_every_limit_and_quota_of_an_identity() {
    let (service, secret) = pixel_patrol().await;
    for _ in 0..3 {
        assert_eq!(moderate(&service, &secret).await, 200);
    }
    let site = service.usage("site", "s1").await.unwrap();
    let submit = line(&site, "submit-media");
    assert_eq!(
        (submit.kind, submit.limit, submit.used, submit.remaining),
        ("limit", 1000, 3, 997)
    );
    assert_eq!(line(&site, "get-media-status").used, 0);
    // The team's quota comes from its key's plan (pro: 50,000 a month).
    let team = service.usage("team", "t1").await.unwrap();
    let quota = line(&team, "moderations");
    assert_eq!((quota.kind, quota.limit, quota.used), ("quota", 50_000, 3));
    // 2026-12-01T00:00:00Z: the calendar month's end.
    assert_eq!(quota.reset, 1_796_083_200);

    let unknown = service.usage("planet", "earth").await;
    assert!(matches!(unknown, Err(AdminError::Invalid(ref message)) if message.contains("planet")));
}

#[tokio::test]
async fn a_reset_counter_starts_afresh() {
    let (service, secret) = pixel_patrol().await;
    for _ in 0..3 {
        moderate(&service, &secret).await;
    }
    let after = service
        .reset("team", "t1", Some("moderations"))
        .await
        .unwrap();
    assert_eq!(line(&after, "moderations").used, 0);
    // Only the named counter.
    assert_eq!(
        line(&service.usage("site", "s1").await.unwrap(), "submit-media").used,
        3
    );
    assert!(service.reset("team", "t1", Some("nothing")).await.is_err());
}

#[tokio::test]
async fn an_override_applies_from_the_next_request_and_keeps_the_count() {
    let (service, secret) = pixel_patrol().await;
    for _ in 0..3 {
        moderate(&service, &secret).await;
    }
    let tight = OverrideSpec {
        identity: "site".into(),
        value: "s1".into(),
        plan: None,
        limits: [("submit-media".to_owned(), "5 per 1m".to_owned())].into(),
    };
    service.set_override(tight.clone()).await.unwrap();
    // 3 already counted under the old limit count under the new one: 2 more, then 429.
    assert_eq!(
        line(&service.usage("site", "s1").await.unwrap(), "submit-media").remaining,
        2
    );
    assert_eq!(moderate(&service, &secret).await, 200);
    assert_eq!(moderate(&service, &secret).await, 200);
    assert_eq!(moderate(&service, &secret).await, 429);

    // Raised: the five counted leave five of ten.
    let raised = OverrideSpec {
        limits: [("submit-media".to_owned(), "10 per 1m".to_owned())].into(),
        ..tight
    };
    service.set_override(raised.clone()).await.unwrap();
    assert_eq!(service.list_overrides().await.unwrap(), vec![raised]);
    let submit = line(&service.usage("site", "s1").await.unwrap(), "submit-media").clone();
    assert_eq!((submit.limit, submit.used), (10, 5));

    // Removed: back to the plan's 1,000.
    assert!(service.remove_override("site", "s1").await.unwrap());
    assert_eq!(
        line(&service.usage("site", "s1").await.unwrap(), "submit-media").limit,
        1000
    );

    let bad = OverrideSpec {
        identity: "site".into(),
        value: "s1".into(),
        plan: Some("platinum".into()),
        limits: Default::default(),
    };
    assert!(matches!(
        service.set_override(bad).await,
        Err(AdminError::Invalid(_))
    ));
}
