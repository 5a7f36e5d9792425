//! Bad input: each gets a clear error in the API's shape (or, for a client too slow to send its
//! headers or one that stops reading its response, a closed connection), and the gateway keeps
//! serving everyone else.

use std::net::SocketAddr;
use std::time::Duration;

use http::StatusCode;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::support::Bench;

const ALICE: &str = "sp_live_alice_demo_key";

/// Writes `request` on a fresh connection and reads until the server closes it (or 5 s pass).
async fn raw(address: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(address).await.expect("connect");
    stream.write_all(request).await.expect("write");
    read_to_close(&mut stream).await
}

async fn read_to_close(stream: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

fn body_of(response: &str) -> &str {
    response.split_once("\r\n\r\n").map_or("", |(_, body)| body)
}

async fn still_serving(bench: &Bench) {
    let reply = bench
        .post(
            "/projects/list",
            &[],
            &json!({"apiKey": ALICE, "userId": "zoe"}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
}

#[tokio::test]
async fn bodies_that_are_not_a_json_object_are_400s() {
    let bench = Bench::start("streampixel").await;
    let json = [("content-type", "application/json")];
    for body in [
        &b"{\"apiKey\": "[..],
        b"[1, 2, 3]",
        b"\"text\"",
        b"\xff\xfe{}",
        b"",
    ] {
        let reply = bench
            .send("POST", "/projects/upload-file", &json, body.to_vec())
            .await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{body:?}");
        assert_eq!(
            reply.json(),
            json!({"message": "Request body must be a JSON object"})
        );
    }
    still_serving(&bench).await;
    bench.stop().await;
}

#[tokio::test]
async fn a_50_mb_body_is_refused_before_it_is_read() {
    let bench = Bench::start("streampixel").await;
    let head = "POST /projects/upload-file HTTP/1.1\r\nhost: api\r\ncontent-type: application/json\r\n\
                content-length: 52428800\r\n\r\n{\"apiKey\":";
    let answer = raw(bench.address, head.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert_eq!(
        body_of(&answer),
        r#"{"message":"Request body exceeds 64 KB"}"#
    );

    // Without a declared length, the read stops at the limit.
    let mut chunked =
        b"POST /projects/upload-file HTTP/1.1\r\nhost: api\r\ncontent-type: application/json\r\n\
                        transfer-encoding: chunked\r\n\r\n"
            .to_vec();
    let chunk = vec![b' '; 70_000];
    chunked.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
    chunked.extend_from_slice(&chunk);
    chunked.extend_from_slice(b"\r\n");
    let answer = raw(bench.address, &chunked).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    still_serving(&bench).await;
    bench.stop().await;
}

#[tokio::test]
async fn two_hundred_headers_are_a_431_in_the_envelope() {
    let bench = Bench::start("streampixel").await;
    let mut request =
        String::from("POST /projects/list HTTP/1.1\r\nhost: api\r\nconnection: close\r\n");
    for index in 0..200 {
        request.push_str(&format!("x-filler-{index}: {index}\r\n"));
    }
    request.push_str("content-length: 0\r\n\r\n");
    let answer = raw(bench.address, request.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    assert_eq!(
        body_of(&answer),
        r#"{"message":"Request headers too large"}"#
    );
    still_serving(&bench).await;
    bench.stop().await;
}

#[tokio::test]
async fn headers_over_64_kib_are_a_431_in_the_envelope_and_not_forwarded() {
    let bench = Bench::start("streampixel").await;
    let body = json!({"apiKey": ALICE, "userId": "yves"});
    let cookie = format!("session={}", "a".repeat(60_000));
    let reply = bench
        .post("/projects/list", &[("cookie", &cookie)], &body)
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let forwarded = bench.seen.lock().expect("seen").len();

    let cookie = format!("session={}", "a".repeat(70_000));
    let reply = bench
        .post("/projects/list", &[("cookie", &cookie)], &body)
        .await;
    assert_eq!(reply.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert_eq!(
        reply.json(),
        json!({"message": "Request headers too large"})
    );
    assert_eq!(bench.seen.lock().expect("seen").len(), forwarded);
    still_serving(&bench).await;
    bench.stop().await;
}

#[tokio::test]
async fn a_client_too_slow_with_its_headers_is_disconnected_and_others_are_served() {
    let bench = Bench::with("streampixel", |config| {
        config.header_read_timeout = Duration::from_millis(300);
    })
    .await;
    let mut slow = TcpStream::connect(bench.address).await.expect("connect");
    slow.write_all(b"P").await.expect("write");
    // Everyone else is served while the slow client dawdles.
    still_serving(&bench).await;
    // One byte a second never completes the headers in time: the connection is closed.
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buffer = [0u8; 256];
        for byte in b"OST /projects/list HTTP/1.1\r\n" {
            if slow.write_all(&[*byte]).await.is_err() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            if let Ok(Ok(0) | Err(_)) =
                tokio::time::timeout(Duration::from_millis(1), slow.read(&mut buffer)).await
            {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(closed, Ok(true), "the slow client's connection is closed");
    still_serving(&bench).await;
    bench.stop().await;
}

#[tokio::test]
async fn a_client_too_slow_with_its_body_gets_a_408_in_the_envelope() {
    let bench = Bench::with("streampixel", |config| {
        config.body_read_timeout = Duration::from_millis(300);
    })
    .await;
    let head = "POST /projects/upload-file HTTP/1.1\r\nhost: api\r\ncontent-type: application/json\r\n\
                content-length: 100\r\n\r\n{\"apiKey\":";
    let answer = raw(bench.address, head.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert_eq!(body_of(&answer), r#"{"message":"Request timed out"}"#);
    still_serving(&bench).await;
    bench.stop().await;
}

#[tokio::test]
async fn a_client_that_stops_reading_its_response_is_disconnected_and_others_are_served() {
    let (captured, _guard) = sluice_test_support::CapturedLogs::start();
    let bench = Bench::with("streampixel", |config| {
        config.send_timeout = Duration::from_millis(200);
    })
    .await;
    // 32 MiB asked for, through a small receive window, and none of it read: far more than the
    // sockets between can hold, so the gateway's writes wait.
    const SIZE: usize = 32 << 20;
    let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
    socket.set_recv_buffer_size(4096).expect("a small window");
    let mut reader = socket.connect(bench.address).await.expect("connect");
    let body = json!({"apiKey": ALICE, "userId": "alice"}).to_string();
    let request = format!(
        "POST /image/{SIZE} HTTP/1.1\r\nhost: api\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    );
    reader.write_all(request.as_bytes()).await.expect("sent");
    // Everyone else is served meanwhile.
    still_serving(&bench).await;
    // The gateway gives up on the client once it has taken nothing for the send timeout.
    for attempt in 0.. {
        if captured.text().contains("read nothing of its response") {
            break;
        }
        assert!(
            attempt < 2_000,
            "the gateway still waits on the client after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // What reached the client stops short of the whole, and the connection is closed.
    let mut received = Vec::new();
    let read =
        tokio::time::timeout(Duration::from_secs(10), reader.read_to_end(&mut received)).await;
    assert!(read.is_ok(), "the connection is closed");
    assert!(received.starts_with(b"HTTP/1.1 200 OK\r\n"));
    assert!(
        received.len() < SIZE,
        "{} bytes reached the client",
        received.len()
    );
    still_serving(&bench).await;
    bench.stop().await;
}
