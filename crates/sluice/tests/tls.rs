//! `sluice serve --tls-cert --tls-key`: the gateway serves HTTPS, HTTP/2 to clients that ask
//! for it unless `--http2 off`, and SIGHUP puts a renewed certificate in force without a
//! restart.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sluice_test_support::{TestCert, tls_client};
use support::free_port;

/// Writes a certificate for `localhost`, signed by a CA of its own, to `cert` and `key`;
/// returns the CA's certificate (PEM).
fn write_cert(cert: &Path, key: &Path) -> String {
    let made = TestCert::new("localhost");
    std::fs::write(cert, made.chain_pem).expect("written");
    std::fs::write(key, made.key_pem).expect("written");
    made.ca_pem
}

/// A client that trusts the CA `ca_pem`.
fn trusting(ca_pem: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10))
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).expect("a CA"))
        .build()
        .expect("a client")
}

/// Whether `url` answers `client` within about ten seconds: the server is up, or has taken a
/// new certificate.
async fn answers(client: &reqwest::Client, url: &str) -> bool {
    for _ in 0..500 {
        if client.get(url).send().await.is_ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// The protocol a client offering `offers` settles on (ALPN) with the server on `port`, which
/// must present a certificate of the CA `ca_pem`.
async fn negotiated(ca_pem: &str, port: u16, offers: &[&[u8]]) -> Option<Vec<u8>> {
    use tokio_rustls::rustls::pki_types::ServerName;
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let secured = tls_client(ca_pem, offers)
        .connect(ServerName::try_from("localhost").expect("a name"), tcp)
        .await
        .expect("a TLS connection");
    secured.get_ref().1.alpn_protocol().map(<[u8]>::to_vec)
}

/// `sluice serve` over HTTPS with `cert` and `key` and `flags`, once it answers clients that
/// trust `ca_pem`; and its listener.
async fn serve_https(
    dir: &Path,
    (cert, key): (&Path, &Path),
    ca_pem: &str,
    flags: &[&str],
) -> (Child, SocketAddr) {
    let policy = dir.join("policy.yaml");
    std::fs::write(
        &policy,
        "service:\n  name: Test\nroutes:\n  - match: \"* /*\"\n    unlimited: true\n",
    )
    .expect("written");
    let (listen, admin) = (free_port(), free_port());
    let child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("serve")
        .arg("--policy")
        .arg(&policy)
        .arg("--tls-cert")
        .arg(cert)
        .arg("--tls-key")
        .arg(key)
        .args(["--store", "memory", "--threads", "1"])
        .args(["--listen", &listen.to_string()])
        .args(["--admin-listen", &admin.to_string()])
        .args(flags)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the binary runs");
    let url = format!("https://localhost:{}/healthz", listen.port());
    assert!(
        answers(&trusting(ca_pem), &url).await,
        "the server did not come up over HTTPS on {listen}"
    );
    (child, listen)
}

#[tokio::test]
async fn the_gateway_serves_https_and_takes_a_renewed_certificate_on_sighup() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let first_ca = write_cert(&cert, &key);
    let (mut child, listen) = serve_https(dir.path(), (&cert, &key), &first_ca, &[]).await;
    let url = format!("https://localhost:{}/healthz", listen.port());
    // HTTP/2 for a client that asks for it; HTTP/1.1 for one that asks for nothing else.
    let port = listen.port();
    let offers: [&[u8]; 2] = [b"h2", b"http/1.1"];
    assert_eq!(
        negotiated(&first_ca, port, &offers).await.as_deref(),
        Some(&b"h2"[..])
    );
    assert_eq!(
        negotiated(&first_ca, port, &[b"http/1.1"]).await.as_deref(),
        Some(&b"http/1.1"[..])
    );
    // Plain HTTP is not served on the TLS listener.
    let plain = trusting(&first_ca)
        .get(format!("http://localhost:{}/healthz", listen.port()))
        .send()
        .await;
    assert!(plain.is_err(), "{plain:?}");

    let renewed_ca = write_cert(&cert, &key);
    let status = Command::new("kill")
        .args(["-s", "HUP", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    assert!(
        answers(&trusting(&renewed_ca), &url).await,
        "the renewed certificate was not put in force"
    );
    assert!(trusting(&first_ca).get(&url).send().await.is_err());
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test]
async fn with_http2_off_a_client_that_asks_for_it_gets_http1() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let ca = write_cert(&cert, &key);
    let (mut child, listen) =
        serve_https(dir.path(), (&cert, &key), &ca, &["--http2", "off"]).await;
    let offers: [&[u8]; 2] = [b"h2", b"http/1.1"];
    assert_eq!(
        negotiated(&ca, listen.port(), &offers).await.as_deref(),
        Some(&b"http/1.1"[..])
    );
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn a_certificate_that_cannot_be_used_stops_the_server_at_start_naming_why() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    write_cert(&cert, &key);
    let (other_cert, other_key) = (dir.path().join("other.pem"), dir.path().join("other.key"));
    write_cert(&other_cert, &other_key);
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, "service:\n  name: Test\nroutes: []\n").expect("written");
    let missing = dir.path().join("missing.pem");
    for (cert, key, why) in [
        (&missing, &key, "cannot read --tls-cert"),
        (&key, &key, "holds no PEM certificate"),
        (&cert, &other_key, "does not go with the certificate"),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .arg("serve")
            .arg("--policy")
            .arg(&policy)
            .args(["--store", "memory", "--listen", "127.0.0.1:0"])
            .arg("--tls-cert")
            .arg(cert)
            .arg("--tls-key")
            .arg(key)
            .output()
            .expect("sluice runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{stderr}");
        assert!(stderr.contains(why), "{why}: {stderr}");
    }
}
