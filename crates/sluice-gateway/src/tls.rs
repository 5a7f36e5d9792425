//! TLS on the gateway's own listener, for a deployment where sluice is the edge: HTTP/2 or
//! HTTP/1.1, as the client asks (ALPN), over rustls (on ring, as the upstream side builds it),
//! with a certificate that can be replaced while serving ([`ServerTls::reload`]: certificates are
//! renewed every few weeks, and a renewal must not need a restart). A connection takes the
//! certificate in force when it says hello.

use std::sync::{Arc, RwLock};

use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;

/// The gateway's certificate and key, replaceable while serving.
pub struct ServerTls {
    current: Arc<Current>,
    /// Offers HTTP/2 and HTTP/1.1 by ALPN.
    acceptor: TlsAcceptor,
    /// Offers HTTP/1.1 only.
    http1_acceptor: TlsAcceptor,
}

/// The certificate in force, for each new connection.
#[derive(Debug)]
struct Current(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(
            &self.0.read().unwrap_or_else(|poison| poison.into_inner()),
        ))
    }
}

impl ServerTls {
    /// TLS with the certificate chain `chain_pem` (the server's own first) and its private key
    /// `key_pem` (PKCS#8, PKCS#1 or SEC1), both PEM.
    pub fn from_pem(chain_pem: &[u8], key_pem: &[u8]) -> Result<ServerTls, String> {
        let current = Arc::new(Current(RwLock::new(Arc::new(certified_key(
            chain_pem, key_pem,
        )?))));
        let provider = Arc::new(ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|error| error.to_string())?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(&current) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let http1_acceptor = TlsAcceptor::from(Arc::new(config.clone()));
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(ServerTls {
            current,
            acceptor: TlsAcceptor::from(Arc::new(config)),
            http1_acceptor,
        })
    }

    /// Puts a new certificate and key in force for the connections opened from now on; on an
    /// error, the one in force stays.
    pub fn reload(&self, chain_pem: &[u8], key_pem: &[u8]) -> Result<(), String> {
        let replacement = Arc::new(certified_key(chain_pem, key_pem)?);
        *self
            .current
            .0
            .write()
            .unwrap_or_else(|poison| poison.into_inner()) = replacement;
        Ok(())
    }

    /// What accepts connections: offering HTTP/2 (and HTTP/1.1 to a client that does not ask
    /// for it), or HTTP/1.1 only.
    pub(crate) fn acceptor(&self, http2: bool) -> TlsAcceptor {
        if http2 {
            self.acceptor.clone()
        } else {
            self.http1_acceptor.clone()
        }
    }
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls").finish_non_exhaustive()
    }
}

fn certified_key(chain_pem: &[u8], key_pem: &[u8]) -> Result<CertifiedKey, String> {
    let chain = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| format!("the certificate file is not PEM certificates: {error}"))?;
    if chain.is_empty() {
        return Err("the certificate file holds no PEM certificate".to_owned());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|error| format!("the key file holds no PEM private key: {error}"))?;
    // Checks that the key is the certificate's own.
    CertifiedKey::from_der(chain, key, &ring::default_provider())
        .map_err(|error| format!("the private key does not go with the certificate: {error}"))
}
