//! An `https://` upstream: the proxy speaks TLS to it over kept-alive connections, and checks its
//! certificate (a private CA's, given as PEM) for the upstream's name. A certificate it cannot
//! trust is a 502 in the API's envelope, as an unreachable upstream is.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use serde_json::json;
use sluice_gateway::{GatewayConfig, Upstream};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

use sluice_test_support::TestCert;

use super::support::Bench;

const ALICE: &str = "sp_live_alice_demo_key";

/// An HTTPS server on a loopback port whose certificate, for `name`, a test CA signed.
struct TlsUpstream {
    port: u16,
    /// The CA's certificate, PEM.
    ca_pem: String,
    /// TCP connections accepted so far.
    connections: Arc<AtomicUsize>,
    /// The `Host` of each request.
    hosts: Arc<Mutex<Vec<String>>>,
}

async fn tls_upstream(name: &str) -> TlsUpstream {
    let cert = TestCert::new(name);
    let chain = CertificateDer::pem_slice_iter(cert.chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("chain");
    let private = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).expect("key");
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .expect("server config");
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("address").port();
    let connections = Arc::new(AtomicUsize::new(0));
    let hosts = Arc::new(Mutex::new(Vec::new()));
    let (counted, seen) = (Arc::clone(&connections), Arc::clone(&hosts));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            let (acceptor, seen) = (acceptor.clone(), Arc::clone(&seen));
            tokio::spawn(async move {
                // A client that does not trust the certificate hangs up here.
                let Ok(secured) = acceptor.accept(stream).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let host = request
                        .headers()
                        .get(http::header::HOST)
                        .and_then(|value| value.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    seen.lock().expect("hosts").push(host);
                    let body = format!(r#"{{"secure":true,"path":"{}"}}"#, request.uri().path());
                    async move {
                        let mut response = Response::new(Full::new(Bytes::from(body)));
                        response.headers_mut().insert(
                            http::header::CONTENT_TYPE,
                            http::HeaderValue::from_static("application/json"),
                        );
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(secured), service)
                    .await;
            });
        }
    });
    TlsUpstream {
        port,
        ca_pem: cert.ca_pem,
        connections,
        hosts,
    }
}

async fn bench_in_front_of(upstream: Upstream) -> Bench {
    let config = GatewayConfig {
        upstream: Some(upstream),
        ..GatewayConfig::default()
    };
    Bench::serve("streampixel", config, Arc::new(Mutex::new(Vec::new()))).await
}

fn poll() -> serde_json::Value {
    json!({"apiKey": ALICE, "userId": "alice"})
}

#[tokio::test]
async fn an_https_upstream_is_proxied_over_tls_it_trusts() {
    let upstream = tls_upstream("localhost").await;
    let uri = format!("https://localhost:{}", upstream.port);
    let trusted = Upstream::trusting(&uri.parse().expect("uri"), Some(upstream.ca_pem.as_bytes()))
        .expect("upstream");
    let bench = bench_in_front_of(trusted).await;
    for _ in 0..3 {
        let reply = bench.post("/projects/list", &[], &poll()).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        assert_eq!(
            reply.json(),
            json!({"secure": true, "path": "/projects/list"})
        );
    }
    // One TLS connection, kept alive, carried all three.
    assert_eq!(upstream.connections.load(Ordering::SeqCst), 1);
    let host = format!("localhost:{}", upstream.port);
    assert_eq!(
        *upstream.hosts.lock().expect("hosts"),
        [host.clone(), host.clone(), host]
    );
    bench.stop().await;
}

#[tokio::test]
async fn an_https_upstream_it_cannot_trust_is_a_502() {
    // Signed by a CA the gateway was not given, or for another name than the upstream's.
    let unknown_ca = tls_upstream("localhost").await;
    let other_name = tls_upstream("api.example.com").await;
    for (upstream, ca) in [
        (&unknown_ca, None),
        (&other_name, Some(other_name.ca_pem.as_bytes())),
    ] {
        let uri = format!("https://localhost:{}", upstream.port);
        let bench = bench_in_front_of(
            Upstream::trusting(&uri.parse().expect("uri"), ca).expect("upstream"),
        )
        .await;
        let reply = bench.post("/projects/list", &[], &poll()).await;
        assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{}", reply.text());
        assert_eq!(reply.json(), json!({"message": "Upstream unavailable"}));
        assert!(upstream.hosts.lock().expect("hosts").is_empty());
        bench.stop().await;
    }
}
