//! Certificates for tests of TLS: one for a name, signed by a CA made for it alone, so that a
//! test can trust exactly that CA (and a second certificate is trusted by none of the first's).

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
