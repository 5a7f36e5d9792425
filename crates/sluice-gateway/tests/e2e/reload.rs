//! A policy reloaded while the gateway serves: the next request, on a connection kept alive
//! from before, is decided under the new policy, over the same counters.

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::json;

use super::support::{Bench, Reply};

/// One connection to the gateway, kept alive across requests.
async fn connect(bench: &Bench) -> SendRequest<Full<Bytes>> {
    let stream = tokio::net::TcpStream::connect(bench.address)
        .await
        .expect("connects");
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("a handshake");
    tokio::spawn(connection);
    sender
}

async fn upload(connection: &mut SendRequest<Full<Bytes>>, user: &str) -> Reply {
    let body = json!({
        "apiKey": "sp_live_alice_demo_key",
        "userId": user,
        "projectId": "proj_1",
        "fileUrl": "https://downloads.example.com/build.zip",
    });
    let request = Request::post("/projects/upload-file")
        .header("host", "gateway")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("a request");
    connection.ready().await.expect("the connection stays open");
    let response = connection
        .send_request(request)
        .await
        .expect("an answer on the same connection");
    let (parts, body) = response.into_parts();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.expect("a body").to_bytes(),
    }
}

#[tokio::test]
async fn a_reloaded_policy_decides_the_next_request_on_a_kept_alive_connection() {
    let bench = Bench::start("streampixel").await;
    let mut connection = connect(&bench).await;
    assert_eq!(
        upload(&mut connection, "alice").await.status,
        StatusCode::OK
    );
    assert_eq!(
        upload(&mut connection, "alice").await.status,
        StatusCode::TOO_MANY_REQUESTS
    );

    bench.reload("streampixel", |text| {
        text.replacen(
            "name: upload-file\n        rate: 1 per 2m",
            "name: upload-file\n        rate: 3 per 2m",
            1,
        )
    });

    // The same connection: three uploads for a user new to the counter, the fourth refused.
    for _ in 0..3 {
        let admitted = upload(&mut connection, "bob").await;
        assert_eq!(admitted.status, StatusCode::OK, "{}", admitted.text());
        assert_eq!(
            admitted.header("ratelimit-policy"),
            Some(r#""upload-file";q=3;w=120"#)
        );
    }
    assert_eq!(
        upload(&mut connection, "bob").await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    // The counter carried over (it is the limit's, by name): alice's upload still holds the
    // two minutes of the bucket it took, which under the new rate is all of it.
    let alice = upload(&mut connection, "alice").await;
    assert_eq!(
        alice.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        alice.text()
    );
    bench.stop().await;
}
