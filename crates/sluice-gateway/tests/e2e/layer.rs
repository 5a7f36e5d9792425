//! The tower layer in front of a real axum app on a loopback port: seed 000's limits, keys and
//! envelope enforced in-process, the app reached only by what the policy admits.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::routing::post;
use http::StatusCode;
use serde_json::{Value, json};
use sluice_core::{Clock, ManualClock, Timestamp};
use sluice_gateway::{ShadowLimits, SluiceLayer};
use sluice_service::{KeyRing, LiveService};
use sluice_store::MemoryStore;
use tokio::sync::Semaphore;

use super::streampixel::{ALICE, upload};
use super::support::{deployment_edited, members, service_over};

/// Seed 000's app behind the layer: uploads answer with the user they were for, `POST /boom` fails
/// as a panicking handler's framework would (a text 500), and `/projects/render` takes one
/// permit of `gate` before it answers. Counts the requests that reach it.
struct App {
    address: SocketAddr,
    clock: ManualClock,
    reached: Arc<AtomicUsize>,
    gate: Arc<Semaphore>,
    client: reqwest::Client,
    /// The services the layer takes the one in force from, for [`live_app`].
    services: Option<Arc<LiveService<Arc<MemoryStore>>>>,
    store: Arc<MemoryStore>,
    shared: Arc<dyn Clock>,
}

/// Seed 000's policy, with one render at a time per user on a route of its own and a limit on
/// trial (in shadow mode) on another, edited by `edit`.
fn deployment(edit: impl FnOnce(String) -> String) -> (Arc<sluice_policy::Policy>, KeyRing) {
    deployment_edited("streampixel", |policy| {
        edit(policy).replacen(
            "routes:\n",
            "routes:
  - match: POST /projects/render
    limits:
      - name: renders
        rate: 1 per 1m
        algorithm: concurrency
        per: user
    request:
      json: true
      max_body: 64 KB
  - match: POST /projects/trial
    limits:
      - name: trials
        rate: 1 per 1h
        per: user
        shadow: true
    request:
      json: true
      max_body: 64 KB
",
            1,
        )
    })
}

async fn app() -> App {
    serve(false).await
}

/// The app behind a layer that takes the service in force from a [`LiveService`].
async fn live_app() -> App {
    serve(true).await
}

async fn serve(live: bool) -> App {
    let clock = ManualClock::new(Timestamp::from_secs(1_795_342_530));
    let shared: Arc<dyn Clock> = Arc::new(clock.clone());
    let store = Arc::new(MemoryStore::new(Arc::clone(&shared)));
    let service = service_over(deployment(|policy| policy), Arc::clone(&store), &shared);
    let services = live.then(|| Arc::new(LiveService::new(Arc::clone(&service))));
    let layer = match &services {
        Some(services) => SluiceLayer::live(Arc::clone(services)),
        None => SluiceLayer::new(service),
    };
    let reached = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Semaphore::new(0));
    let counted = |reached: &Arc<AtomicUsize>| {
        let reached = Arc::clone(reached);
        move || reached.fetch_add(1, Ordering::SeqCst)
    };
    let (upload, boom, render) = (counted(&reached), counted(&reached), counted(&reached));
    let waiting = Arc::clone(&gate);
    let router = Router::new()
        .route(
            "/projects/upload-file",
            post(move |body: axum::body::Bytes| async move {
                upload();
                let sent: Value = serde_json::from_slice(&body).expect("the body as sent");
                (
                    [(http::header::CONTENT_TYPE, "application/json")],
                    json!({"uploaded_for": sent["userId"]}).to_string(),
                )
            }),
        )
        .route(
            "/boom",
            post(move || async move {
                boom();
                (StatusCode::INTERNAL_SERVER_ERROR, "kaboom")
            }),
        )
        .route(
            "/projects/trial",
            post(|request: axum::extract::Request| async move {
                let shadow = request.extensions().get::<ShadowLimits>().cloned();
                json!({"shadow": shadow.map(|names| names.0.to_vec())}).to_string()
            }),
        )
        .route(
            "/projects/render",
            post(move || async move {
                render();
                let permit = waiting.acquire().await.expect("the gate stays open");
                permit.forget();
                "rendered"
            }),
        )
        .layer(layer.client_ip(|parts| {
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|info| info.0.ip())
        }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let address = listener.local_addr().expect("an address");
    tokio::spawn(async move {
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .expect("the app serves");
    });
    App {
        address,
        clock,
        reached,
        gate,
        client: reqwest::Client::new(),
        services,
        store,
        shared,
    }
}

impl App {
    async fn post(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(format!("http://{}{path}", self.address))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .expect("the app answers")
    }

    /// Puts seed 000's policy, edited by `edit`, in force over the same counters, as a reload
    /// does.
    fn reload(&self, edit: impl FnOnce(String) -> String) {
        let service = service_over(deployment(edit), Arc::clone(&self.store), &self.shared);
        self.services.as_ref().expect("a live app").replace(service);
    }

    fn reached(&self) -> usize {
        self.reached.load(Ordering::SeqCst)
    }
}

async fn json_of(response: reqwest::Response) -> Value {
    let bytes = response.bytes().await.expect("a whole body");
    serde_json::from_slice(&bytes).expect("a JSON body")
}

/// Asserts the answer is exactly `{"message": message}` with `status`.
async fn assert_message(response: reqwest::Response, status: StatusCode, message: &str) {
    assert_eq!(response.status().as_u16(), status.as_u16());
    assert!(response.headers().contains_key("x-request-id"));
    let body = json_of(response).await;
    assert_eq!(members(&body), ["message"], "{body}");
    assert_eq!(body["message"], message);
}

#[tokio::test]
async fn the_layer_holds_an_axum_app_to_seed_000s_upload_limit() {
    let app = app().await;
    let first = app
        .post("/projects/upload-file", &upload(ALICE, "alice"))
        .await;
    assert_eq!(first.status(), 200);
    assert_eq!(
        first.headers()["ratelimit"].to_str().expect("text"),
        r#""upload-file";r=0;t=120"#
    );
    assert!(first.headers().contains_key("x-request-id"));
    let body = json_of(first).await;
    assert_eq!(
        body,
        json!({"uploaded_for": "alice"}),
        "the body read for the policy goes on as sent"
    );

    let second = app
        .post("/projects/upload-file", &upload(ALICE, "alice"))
        .await;
    assert_eq!(second.headers()["retry-after"], "120");
    assert_message(
        second,
        StatusCode::TOO_MANY_REQUESTS,
        "Rate limit exceeded. Try again in 2 minutes.",
    )
    .await;
    assert_eq!(app.reached(), 1, "a refused upload never reaches the app");

    let bob = app
        .post("/projects/upload-file", &upload(ALICE, "bob"))
        .await;
    assert_eq!(bob.status(), 200, "another user has a window of their own");
    app.clock.advance(Duration::from_secs(120));
    let later = app
        .post("/projects/upload-file", &upload(ALICE, "alice"))
        .await;
    assert_eq!(later.status(), 200, "the window has passed");
    assert_eq!(app.reached(), 3);
}

#[tokio::test]
async fn the_layer_refuses_bad_keys_and_fields_in_the_apis_envelope() {
    let app = app().await;
    let unknown = app
        .post("/projects/upload-file", &upload("sp_live_nobody", "alice"))
        .await;
    assert_eq!(unknown.status(), 401);
    let mut missing = upload(ALICE, "alice");
    missing
        .as_object_mut()
        .expect("an object")
        .remove("projectId");
    let missing = app.post("/projects/upload-file", &missing).await;
    assert_eq!(missing.status(), 400);
    let body = json_of(missing).await;
    assert_eq!(members(&body), ["message"], "{body}");
    assert!(
        body["message"]
            .as_str()
            .expect("text")
            .contains("projectId"),
        "{body}"
    );
    let text = app
        .client
        .post(format!("http://{}/projects/upload-file", app.address))
        .header("content-type", "text/plain")
        .body("hello")
        .send()
        .await
        .expect("an answer");
    assert_eq!(text.status(), 415);
    assert_eq!(app.reached(), 0, "nothing refused reaches the app");
}

#[tokio::test]
async fn an_apps_text_500_is_answered_in_the_envelope_with_its_status() {
    let app = app().await;
    let boom = app
        .post("/boom", &json!({"apiKey": ALICE, "userId": "alice"}))
        .await;
    assert_eq!(boom.status(), 500);
    assert_eq!(app.reached(), 1);
    let body = json_of(boom).await;
    assert_eq!(members(&body), ["message"], "{body}");
}

#[tokio::test]
async fn a_concurrency_slot_is_held_while_the_app_works_and_given_back_when_it_answers() {
    let app = app().await;
    let render = json!({"apiKey": ALICE, "userId": "alice"});
    let first = tokio::spawn({
        let client = app.client.clone();
        let url = format!("http://{}/projects/render", app.address);
        let render = render.clone();
        async move {
            client
                .post(url)
                .header("content-type", "application/json")
                .body(render.to_string())
                .send()
                .await
        }
    });
    // Once the first render is in the app, a second for the same user is refused.
    while app.reached() == 0 {
        tokio::task::yield_now().await;
    }
    let busy = app.post("/projects/render", &render).await;
    assert_eq!(busy.status(), 429, "{:?}", busy.text().await);
    app.gate.add_permits(1);
    let done = first.await.expect("the task").expect("an answer");
    assert_eq!(done.status(), 200);
    // The manual clock never moves: only the settle can have freed the slot.
    app.gate.add_permits(1);
    let again = app.post("/projects/render", &render).await;
    assert_eq!(again.status(), 200, "{:?}", again.text().await);
}

#[tokio::test]
async fn a_policy_reloaded_through_a_live_service_decides_the_next_request() {
    let app = live_app().await;
    let upload_twice = |policy: String| {
        policy.replacen(
            "name: upload-file\n        rate: 1 per 2m\n",
            "name: upload-file\n        rate: 2 per 2m\n",
            1,
        )
    };
    let first = app
        .post("/projects/upload-file", &upload(ALICE, "alice"))
        .await;
    assert_eq!(first.status(), 200);
    let refused = app
        .post("/projects/upload-file", &upload(ALICE, "alice"))
        .await;
    assert_eq!(refused.status(), 429);
    // Two per two minutes from now on: a user new to the counter gets two, the third refused;
    // alice's counter carries over, still spent.
    app.reload(upload_twice);
    for _ in 0..2 {
        let admitted = app
            .post("/projects/upload-file", &upload(ALICE, "bob"))
            .await;
        assert_eq!(admitted.status(), 200);
        assert_eq!(
            admitted.headers()["ratelimit-policy"]
                .to_str()
                .expect("text"),
            r#""upload-file";q=2;w=120"#
        );
    }
    let third = app
        .post("/projects/upload-file", &upload(ALICE, "bob"))
        .await;
    assert_eq!(third.status(), 429);
    let alice = app
        .post("/projects/upload-file", &upload(ALICE, "alice"))
        .await;
    assert_eq!(alice.status(), 429, "the reload kept alice's count");
}

#[tokio::test]
async fn the_app_is_told_which_limits_on_trial_would_have_refused_its_request() {
    let app = app().await;
    let mut told = Vec::new();
    for _ in 0..2 {
        let response = app.post("/projects/trial", &upload(ALICE, "alice")).await;
        assert_eq!(response.status(), 200, "a limit on trial refuses nothing");
        assert!(
            !response.headers().contains_key("ratelimit"),
            "nor is a client told of it"
        );
        told.push(json_of(response).await["shadow"].clone());
    }
    assert_eq!(told, [json!(null), json!(["trials"])]);
}
