//! The gateway as the edge: its listener speaks TLS with a certificate that can be replaced
//! while it serves, tells the upstream the client came over https, and drops a client that does
//! not finish its handshake in time.

use std::sync::Arc;
use std::time::Duration;

use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::json;
use sluice_gateway::ServerTls;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

use sluice_test_support::TestCert;

use super::support::Bench;

/// A POST of `body` to `path` over a TLS connection to `bench` that trusts only `ca_pem`:
/// the status, or the error that stopped it.
async fn post_over_tls(
    bench: &Bench,
    ca_pem: &str,
    path: &str,
    body: &serde_json::Value,
) -> Result<StatusCode, String> {
    let mut roots = RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(certificate.expect("PEM")).expect("a root");
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect(bench.address).await.expect("connect");
    let name = ServerName::try_from("localhost").expect("a name");
    let secured = TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|error| error.to_string())?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(secured))
        .await
        .map_err(|error| error.to_string())?;
    tokio::spawn(connection);
    let request = Request::post(path)
        .header("host", "localhost")
        .header("x-forwarded-proto", "http")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(
            serde_json::to_vec(body).expect("json"),
        )))
        .expect("request");
    let response = sender
        .send_request(request)
        .await
        .map_err(|error| error.to_string())?;
    let status = response.status();
    response.into_body().collect().await.expect("the body");
    Ok(status)
}

fn poll() -> serde_json::Value {
    json!({"apiKey": "sp_live_alice_demo_key", "userId": "alice"})
}

#[tokio::test]
async fn the_gateway_serves_https_with_a_certificate_it_can_replace() {
    let first = TestCert::new("localhost");
    let tls = Arc::new(
        ServerTls::from_pem(first.chain_pem.as_bytes(), first.key_pem.as_bytes())
            .expect("a certificate"),
    );
    let bench = Bench::with("streampixel", |config| config.tls = Some(Arc::clone(&tls))).await;
    let status = post_over_tls(&bench, &first.ca_pem, "/projects/list", &poll()).await;
    assert_eq!(status, Ok(StatusCode::OK));
    let seen = bench.last_seen().headers;
    let forwarded = seen["forwarded"].to_str().expect("ASCII");
    assert!(forwarded.contains(";proto=https"), "{forwarded}");
    // Apps that redirect plain HTTP to HTTPS read this one; a client's own claim is replaced.
    assert_eq!(seen["x-forwarded-proto"], "https");

    // Renewed: new connections get the new certificate; a client that trusts only the old
    // CA no longer connects.
    let renewed = TestCert::new("localhost");
    tls.reload(renewed.chain_pem.as_bytes(), renewed.key_pem.as_bytes())
        .expect("reloaded");
    let status = post_over_tls(&bench, &renewed.ca_pem, "/projects/list", &poll()).await;
    assert_eq!(status, Ok(StatusCode::OK));
    let refused = post_over_tls(&bench, &first.ca_pem, "/projects/list", &poll()).await;
    assert!(refused.is_err(), "{refused:?}");

    // A key that is not the certificate's is refused, and the one in force stays.
    let error = tls
        .reload(renewed.chain_pem.as_bytes(), first.key_pem.as_bytes())
        .unwrap_err();
    assert!(
        error.contains("does not go with the certificate"),
        "{error}"
    );
    let status = post_over_tls(&bench, &renewed.ca_pem, "/projects/list", &poll()).await;
    assert_eq!(status, Ok(StatusCode::OK));
    bench.stop().await;
}

// Paused time: the header-read timeout (10 s by default) passes as soon as nothing else is left
// to do, and the guard after it fails the test if the gateway left the connection open.
#[tokio::test(start_paused = true)]
async fn a_client_that_does_not_finish_its_handshake_is_disconnected() {
    let cert = TestCert::new("localhost");
    let tls = Arc::new(
        ServerTls::from_pem(cert.chain_pem.as_bytes(), cert.key_pem.as_bytes()).expect("TLS"),
    );
    let bench = Bench::with("streampixel", |config| config.tls = Some(tls)).await;
    let mut silent = TcpStream::connect(bench.address).await.expect("connect");
    let mut buffer = [0_u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(60), silent.read(&mut buffer))
        .await
        .expect("closed by the gateway, not left open");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    bench.stop().await;
}
