//! What the tower layer adds to a request in-process: an axum app's handler called through its
//! router, bare and behind `SluiceLayer` with the load harness's policy (a per-user limit on
//! every request, 10,000 users), in the same binary. No sockets: the difference is the layer's
//! own work (the decision, its headers, the request id, the settle).
//!
//! `cargo bench -p sluice-gateway --bench layer`
#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use criterion::{Criterion, criterion_group, criterion_main};
use http::Request;
use sluice_core::{Clock, SystemClock};
use sluice_gateway::SluiceLayer;
use sluice_service::{KeyRing, Service};
use sluice_store::MemoryStore;
use tower::Service as _;

fn router() -> Router {
    Router::new().route("/items", get(|| async { "ok" }))
}

fn layered() -> Router {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../bench/policy.yaml"
    ))
    .expect("the bench policy");
    let policy = sluice_policy::load("bench/policy.yaml", &text).expect("a valid policy");
    let clock: Arc<dyn Clock> = Arc::new(SystemClock::new());
    let service = Service::new(
        Arc::new(policy),
        MemoryStore::new(Arc::clone(&clock)),
        KeyRing::default(),
    )
    .with_clock(clock);
    router().layer(SluiceLayer::new(Arc::new(service)))
}

fn layer(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    let users: Vec<String> = (0..10_000).map(|user| format!("user-{user}")).collect();
    let mut group = c.benchmark_group("axum-request");
    for (name, mut app) in [("bare", router()), ("sluice-layer", layered())] {
        let mut next = 0usize;
        group.bench_function(name, |b| {
            b.iter(|| {
                next = (next + 7_919) % users.len();
                let request = Request::get("/items")
                    .header("x-user", &users[next])
                    .body(Body::empty())
                    .expect("a request");
                let response = runtime.block_on(app.call(request)).expect("infallible");
                assert_eq!(response.status(), 200);
                black_box(response);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, layer);
criterion_main!(benches);
