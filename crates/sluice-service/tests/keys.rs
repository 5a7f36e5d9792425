//! Keys managed in the store: created keys work at once; a rotated key's old secret works for its
//! grace period and not a second longer; a revoked key is refused from the next request on; a
//! suspended key keeps its reads and loses its writes; every change survives a new service over
//! the same store, which is what a restart (or a second gateway) sees.

mod support;

use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;
use sluice_core::{Clock, ManualClock, Timestamp};
use sluice_policy::KeyStatus;
use sluice_service::{KeyError, KeyRing, NewKey, Request, Service};
use sluice_store::{MemoryStore, RecordStore, RecordTable};
use support::{example_policy, moderate, settle};

struct Fixture {
    service: Service<Arc<MemoryStore>>,
    store: Arc<MemoryStore>,
    clock: ManualClock,
    name: &'static str,
}

impl Fixture {
    fn new(name: &'static str) -> Fixture {
        let clock = ManualClock::new(Timestamp::from_secs(1_795_342_500));
        let shared: Arc<dyn Clock> = Arc::new(clock.clone());
        let store = Arc::new(MemoryStore::new(Arc::clone(&shared)));
        let service = Service::new(example_policy(name), Arc::clone(&store), KeyRing::default())
            .with_clock(shared);
        Fixture {
            service,
            store,
            clock,
            name,
        }
    }

    /// A second service over the same store, as after a restart.
    async fn restarted(&self) -> Service<Arc<MemoryStore>> {
        let shared: Arc<dyn Clock> = Arc::new(self.clock.clone());
        let service = Service::new(
            example_policy(self.name),
            Arc::clone(&self.store),
            KeyRing::default(),
        )
        .with_clock(shared);
        service.reload_keys().await.expect("the keys load");
        service
    }
}

/// Streampixel with `secret` in the body: a write (an upload) or a read (a listing).
async fn streampixel(service: &Service<Arc<MemoryStore>>, secret: &str, write: bool) -> u16 {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", "application/json".parse().unwrap());
    let body = serde_json::json!({
        "apiKey": secret,
        "userId": "erin",
        "projectId": "p",
        "fileUrl": "https://x.example.com/b.zip",
    })
    .to_string();
    let verdict = service
        .check(&Request {
            method: if write { "POST" } else { "GET" },
            path: if write {
                "/projects/upload-file"
            } else {
                "/projects"
            },
            query: None,
            headers: &headers,
            peer: None,
            body: Some(body.as_bytes()),
            request_id: None,
        })
        .await;
    settle(service, verdict).await
}

fn new_key(owner: &str, team: &str) -> NewKey {
    NewKey {
        owner: owner.into(),
        team: Some(team.into()),
        site: Some(format!("site_{owner}")),
        ..NewKey::default()
    }
}

#[tokio::test]
async fn a_created_key_works_at_once_and_its_secret_is_not_stored() {
    let fixture = Fixture::new("pixelpatrol");
    let issued = fixture
        .service
        .create_key(new_key("ada", "t1"))
        .await
        .unwrap();
    assert!(issued.secret.starts_with("sk_live_"), "{}", issued.secret);
    assert_eq!(moderate(&fixture.service, &issued.secret).await, 200);
    assert_eq!(moderate(&fixture.service, "sk_live_guess").await, 401);

    let listed = fixture.service.list_keys().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, issued.key.id);
    assert_eq!(listed[0].owner.as_deref(), Some("ada"));
    for (id, value) in fixture.store.records(RecordTable::Keys).await.unwrap() {
        let (id, value) = (
            String::from_utf8_lossy(&id),
            String::from_utf8_lossy(&value),
        );
        assert!(
            !id.contains(&issued.secret) && !value.contains(&issued.secret),
            "the secret must never be stored"
        );
    }
    // Survives a restart.
    assert_eq!(
        moderate(&fixture.restarted().await, &issued.secret).await,
        200
    );
}

#[tokio::test]
async fn a_rotated_key_works_for_its_grace_period_and_then_stops() {
    let fixture = Fixture::new("pixelpatrol");
    let old = fixture
        .service
        .create_key(new_key("bo", "t2"))
        .await
        .unwrap();
    let new = fixture
        .service
        .rotate_key(&old.key.id, Duration::from_secs(3600))
        .await
        .unwrap();
    assert_ne!(new.secret, old.secret);
    assert_eq!(new.key.team.as_deref(), Some("t2"), "attributes carry over");
    assert_eq!(moderate(&fixture.service, &old.secret).await, 200);
    assert_eq!(moderate(&fixture.service, &new.secret).await, 200);

    fixture.clock.advance(Duration::from_secs(3599));
    assert_eq!(moderate(&fixture.service, &old.secret).await, 200);
    fixture.clock.advance(Duration::from_secs(1));
    assert_eq!(moderate(&fixture.service, &old.secret).await, 401);
    assert_eq!(moderate(&fixture.service, &new.secret).await, 200);
    let restarted = fixture.restarted().await;
    assert_eq!(moderate(&restarted, &old.secret).await, 401);
    assert_eq!(moderate(&restarted, &new.secret).await, 200);
}

#[tokio::test]
async fn a_revoked_key_is_refused_from_the_next_request_on() {
    let fixture = Fixture::new("pixelpatrol");
    let issued = fixture
        .service
        .create_key(new_key("cy", "t3"))
        .await
        .unwrap();
    assert_eq!(moderate(&fixture.service, &issued.secret).await, 200);
    fixture
        .service
        .set_key_status(&issued.key.id, KeyStatus::Revoked)
        .await
        .unwrap();
    assert_eq!(moderate(&fixture.service, &issued.secret).await, 401);
    assert_eq!(
        moderate(&fixture.restarted().await, &issued.secret).await,
        401
    );
}

#[tokio::test]
async fn a_suspended_key_keeps_its_reads_and_loses_its_writes() {
    let fixture = Fixture::new("streampixel");
    let issued = fixture
        .service
        .create_key(NewKey {
            owner: "erin".into(),
            ..NewKey::default()
        })
        .await
        .unwrap();
    assert_eq!(
        issued.key.environment.as_deref(),
        Some("prod"),
        "the policy's environment by default"
    );
    fixture
        .service
        .set_key_status(&issued.key.id, KeyStatus::Suspended)
        .await
        .unwrap();
    assert_eq!(
        streampixel(&fixture.service, &issued.secret, true).await,
        403
    );
    assert_eq!(
        streampixel(&fixture.service, &issued.secret, false).await,
        200
    );

    // Reinstated, it writes again.
    fixture
        .service
        .set_key_status(&issued.key.id, KeyStatus::Active)
        .await
        .unwrap();
    assert_eq!(
        streampixel(&fixture.service, &issued.secret, true).await,
        200
    );
}

#[tokio::test]
async fn mistakes_are_named() {
    let fixture = Fixture::new("pixelpatrol");
    let unknown_plan = fixture
        .service
        .create_key(NewKey {
            owner: "dee".into(),
            plan: Some("platinum".into()),
            ..NewKey::default()
        })
        .await;
    assert!(matches!(unknown_plan, Err(KeyError::UnknownPlan(ref plan)) if plan == "platinum"));
    let missing = fixture
        .service
        .set_key_status("key_nope", KeyStatus::Revoked)
        .await;
    assert!(matches!(missing, Err(KeyError::NotFound(_))));
    let no_owner = fixture.service.create_key(NewKey::default()).await;
    assert!(matches!(no_owner, Err(KeyError::MissingOwner)));
}
