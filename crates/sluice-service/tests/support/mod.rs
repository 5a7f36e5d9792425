//! Helpers the service's test files share: the example policies, and a request's outcome as the
//! status a client would see (an admitted request is settled as a success).

use std::path::Path;
use std::sync::Arc;

use http::HeaderMap;
use sluice_service::{Request, Service, Verdict};
use sluice_store::{CounterStore, RecordStore};

/// The example policy `examples/NAME/policy.yaml`.
pub(crate) fn example_policy(name: &str) -> Arc<sluice_policy::Policy> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .join(name)
        .join("policy.yaml");
    let text = std::fs::read_to_string(path).expect("the example exists");
    Arc::new(sluice_policy::load("policy.yaml", &text).unwrap_or_else(|errors| panic!("{errors}")))
}

/// The status `verdict` gives the client; an admitted request is finished as a success.
pub(crate) async fn settle<S: CounterStore + RecordStore>(
    service: &Service<S>,
    verdict: Verdict,
) -> u16 {
    match verdict {
        Verdict::Admit(admission) => {
            service.finish(admission, true).await;
            200
        }
        Verdict::Reject(rejection) => rejection.status.as_u16(),
    }
}

/// Pixel Patrol's moderation call with `secret` as its bearer key: the status it gets.
pub(crate) async fn moderate<S: CounterStore + RecordStore>(
    service: &Service<S>,
    secret: &str,
) -> u16 {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", "application/json".parse().unwrap());
    headers.insert("authorization", format!("Bearer {secret}").parse().unwrap());
    let verdict = service
        .check(&Request {
            method: "POST",
            path: "/submit-media",
            query: None,
            headers: &headers,
            peer: None,
            body: Some(br#"{"body":"hello"}"#),
            request_id: None,
        })
        .await;
    settle(service, verdict).await
}
