//! Certificates for tests of TLS: one for a name, signed by a CA made for it alone, so that a
//! test can trust exactly that CA (and a second certificate is trusted by none of the first's);
//! and a client that trusts such a CA alone.

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

/// A certificate and its key, and the CA that signed it, all PEM.
#[derive(Clone, Debug)]
pub struct TestCert {
    /// The CA's certificate: what a client trusts.
    pub ca_pem: String,
    /// The certificate, for the name it was made for.
    pub chain_pem: String,
    /// The certificate's private key (PKCS#8).
    pub key_pem: String,
}

impl TestCert {
    /// A certificate for `name` (a DNS name such as `localhost`), signed by a fresh CA.
    pub fn new(name: &str) -> TestCert {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("CA key"))
            .expect("CA certificate");
        let key = KeyPair::generate().expect("key");
        let certificate = CertificateParams::new(vec![name.to_owned()])
            .expect("params")
            .signed_by(&key, &ca)
            .expect("certificate");
        TestCert {
            ca_pem: ca.pem(),
            chain_pem: certificate.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

/// A TLS client that trusts only the CA `ca_pem` (what [`TestCert::ca_pem`] holds) and offers
/// `protocols` by ALPN (none: the server's default).
pub fn tls_client(ca_pem: &str, protocols: &[&[u8]]) -> tokio_rustls::TlsConnector {
    use std::sync::Arc;
    use tokio_rustls::rustls::pki_types::CertificateDer;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::{ClientConfig, RootCertStore};
    let mut roots = RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(certificate.expect("PEM")).expect("a root");
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = protocols.iter().map(|protocol| protocol.to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}
