//! Forwarding to the upstream: the request rebuilt for the upstream (hop-by-hop headers dropped,
//! `X-Forwarded-For`/`Forwarded` appended, the id passed on), and the upstream's answer checked
//! against the contract on the way back.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Uri};
use http::{Request, request};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

use crate::body::Outgoing;
use crate::request_id::X_REQUEST_ID;

/// Headers that describe one connection, not the message: never forwarded (RFC 9110 §7.6.1,
/// and the non-standard `Proxy-Connection`).
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("proxy-connection"),
];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Removes hop-by-hop headers, including any the `Connection` header names; and, from a message
/// framed by `Transfer-Encoding`, its `Content-Length`, which that framing overrode and which
/// would misframe the message forwarded (RFC 9112 §6.3: an intermediary MUST remove it).
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none (a header `Connection` names comes only with `Connection`): one
    // pass over the names, hashing nothing, says so, where removing each would hash and look up.
    if !headers.keys().any(|name| HOP_BY_HOP.contains(name)) {
        return;
    }
    if headers.contains_key(header::TRANSFER_ENCODING) {
        headers.remove(header::CONTENT_LENGTH);
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
}

/// The client at the other end of one connection, and what the forwarding headers say of it,
/// worked out on the connection's first proxied request and kept for the others.
#[derive(Debug)]
pub(crate) struct Peer {
    address: SocketAddr,
    https: bool,
    forwarding: OnceLock<Forwarding>,
}

#[derive(Debug)]
struct Forwarding {
    /// The address as `X-Forwarded-For` lists it.
    client: HeaderValue,
    /// `Forwarded` for a request without a `Host`, and the start of it for one with.
    forwarded: HeaderValue,
}

impl Peer {
    /// The client at `address`, which reached the gateway over TLS when `https`.
    pub(crate) fn new(address: SocketAddr, https: bool) -> Peer {
        Peer {
            address,
            https,
            forwarding: OnceLock::new(),
        }
    }

    pub(crate) fn address(&self) -> SocketAddr {
        self.address
    }

    fn forwarding(&self) -> &Forwarding {
        self.forwarding.get_or_init(|| {
            let client = self.address.ip().to_string();
            // RFC 7239 §6: an IPv6 node is bracketed and quoted.
            let proto = if self.https { "https" } else { "http" };
            let forwarded = if self.address.is_ipv6() {
                format!("for=\"[{client}]\";proto={proto}")
            } else {
                format!("for={client};proto={proto}")
            };
            Forwarding {
                // An IP address's text is always a valid header value.
                client: HeaderValue::from_str(&client).unwrap_or(HeaderValue::from_static("")),
                forwarded: HeaderValue::from_str(&forwarded)
                    .unwrap_or(HeaderValue::from_static("")),
            }
        })
    }
}

/// Where a request goes: the upstream's address and its base path, then the request's path and
/// query.
#[derive(Clone, Debug)]
pub struct Upstream {
    /// `host:port`, to connect to.
    address: String,
    /// The `Host` the upstream is sent: its host, and its port unless the scheme's default.
    host: HeaderValue,
    base_path: String,
    /// For an `https://` upstream, how its connections speak TLS.
    tls: Option<UpstreamTls>,
}

/// TLS to an `https://` upstream: rustls, the certificate checked against Mozilla's roots (and
/// any the deployment adds, a private CA's) for the upstream's own name, which is also sent as
/// SNI; ALPN offers HTTP/1.1 only, the one protocol the pool speaks.
#[derive(Clone)]
pub(crate) struct UpstreamTls {
    pub(crate) connector: TlsConnector,
    pub(crate) name: ServerName<'static>,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Upstream {
    /// The upstream at `uri` (`http://host:port` or `https://host:port`, with an optional base
    /// path); an `https://` one's certificate is checked against Mozilla's roots.
    pub fn new(uri: &Uri) -> Result<Upstream, String> {
        Upstream::trusting(uri, None)
    }

    /// As [`Upstream::new`]; an `https://` upstream's certificate may also be signed by one of
    /// the certificates in `ca_pem` (PEM), a private CA's.
    pub fn trusting(uri: &Uri, ca_pem: Option<&[u8]>) -> Result<Upstream, String> {
        let scheme = uri
            .scheme()
            .cloned()
            .ok_or_else(|| format!("upstream `{uri}` needs a scheme, like http://host:port"))?;
        let https = if scheme == http::uri::Scheme::HTTP {
            false
        } else if scheme == http::uri::Scheme::HTTPS {
            true
        } else {
            return Err(format!(
                "upstream `{uri}`: only http:// and https:// upstreams are supported"
            ));
        };
        if ca_pem.is_some() && !https {
            return Err(format!(
                "upstream `{uri}`: a CA to trust applies only to an https:// upstream"
            ));
        }
        let authority = uri
            .authority()
            .ok_or_else(|| format!("upstream `{uri}` needs a host"))?;
        let default_port = if https { 443 } else { 80 };
        let port = authority.port_u16().unwrap_or(default_port);
        let host = if port == default_port {
            authority.host().to_owned()
        } else {
            format!("{}:{port}", authority.host())
        };
        let host = HeaderValue::from_str(&host)
            .map_err(|_| format!("upstream `{uri}`: its host is not a valid Host header"))?;
        let tls = match https {
            true => Some(
                upstream_tls(authority.host(), ca_pem)
                    .map_err(|why| format!("upstream `{uri}`: {why}"))?,
            ),
            false => None,
        };
        Ok(Upstream {
            address: format!("{}:{port}", authority.host()),
            host,
            base_path: uri.path().trim_end_matches('/').to_owned(),
            tls,
        })
    }

    /// Where to connect: `host:port`.
    pub(crate) fn address(&self) -> &str {
        &self.address
    }

    /// How to speak TLS to it, for an `https://` upstream.
    pub(crate) fn tls(&self) -> Option<&UpstreamTls> {
        self.tls.as_ref()
    }

    /// The request target sent upstream (origin form): the base path, then the request's path
    /// and query.
    fn target(&self, path_and_query: Option<&PathAndQuery>) -> Result<Uri, http::Error> {
        if self.base_path.is_empty()
            && let Some(path_and_query) = path_and_query
        {
            // The request's own target, shared rather than copied.
            return Ok(Uri::from(path_and_query.clone()));
        }
        let tail = path_and_query.map_or("/", PathAndQuery::as_str);
        Ok(Uri::try_from(format!("{}{tail}", self.base_path))?)
    }
}

/// TLS to the upstream named `host` (a name, or an IP address, bracketed if IPv6), trusting
/// Mozilla's roots and the certificates of `ca_pem`.
fn upstream_tls(host: &str, ca_pem: Option<&[u8]>) -> Result<UpstreamTls, String> {
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(pem) = ca_pem {
        let certificates = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| format!("the CA file is not PEM certificates: {error}"))?;
        if certificates.is_empty() {
            return Err("the CA file holds no PEM certificate".to_owned());
        }
        for certificate in certificates {
            roots
                .add(certificate)
                .map_err(|error| format!("a certificate of the CA file is unusable: {error}"))?;
        }
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| error.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let name = ServerName::try_from(bare.to_owned())
        .map_err(|_| format!("`{host}` is not a name TLS can check a certificate for"))?;
    Ok(UpstreamTls {
        connector: TlsConnector::from(Arc::new(config)),
        name,
    })
}

/// The request to send upstream for a client's request `parts` and `body`.
pub(crate) fn upstream_request(
    upstream: &Upstream,
    mut parts: request::Parts,
    body: Outgoing,
    peer: &Peer,
    request_id: &HeaderValue,
) -> Result<Request<Outgoing>, http::Error> {
    let uri = upstream.target(parts.uri.path_and_query())?;
    let headers = &mut parts.headers;
    strip_hop_by_hop(headers);
    let forwarding = peer.forwarding();
    let forwarded_for = match headers
        .get(&X_FORWARDED_FOR)
        .and_then(|value| value.to_str().ok())
    {
        Some(earlier) => {
            let client = forwarding.client.to_str().unwrap_or_default();
            HeaderValue::from_str(&format!("{earlier}, {client}")).ok()
        }
        None => Some(forwarding.client.clone()),
    };
    if let Some(value) = forwarded_for {
        headers.insert(X_FORWARDED_FOR, value);
    }
    // The client's `Host` travels in `Forwarded` and `X-Forwarded-Host`; the upstream is sent
    // its own, as an HTTP client would.
    let host = headers.insert(header::HOST, upstream.host.clone());
    let forwarded = match host.as_ref().and_then(|host| host.to_str().ok()) {
        Some(host) => {
            let start = forwarding.forwarded.as_bytes();
            let mut value = Vec::with_capacity(start.len() + host.len() + 8);
            value.extend_from_slice(start);
            value.extend_from_slice(b";host=\"");
            value.extend(host.bytes().filter(|byte| !matches!(byte, b'"' | b'\\')));
            value.push(b'"');
            HeaderValue::from_maybe_shared(Bytes::from(value)).ok()
        }
        None => Some(forwarding.forwarded.clone()),
    };
    if let Some(value) = forwarded {
        headers.append(header::FORWARDED, value);
    }
    if let Some(host) = host {
        headers.insert(X_FORWARDED_HOST, host);
    }
    if peer.https {
        // The gateway is the edge and knows: whatever the client claimed is replaced. (On a
        // plain listener, behind a balancer that ended TLS, the balancer's value passes on.)
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
    }
    headers.insert(X_REQUEST_ID.clone(), request_id.clone());
    parts.uri = uri;
    parts.version = http::Version::HTTP_11;
    Ok(Request::from_parts(parts, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_dropped() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-secret"),
        );
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1, "{headers:?}");
        assert!(headers.contains_key(header::CONTENT_TYPE));
    }

    #[test]
    fn a_length_goes_with_a_transfer_encoding_and_stays_without_one() {
        let mut both = HeaderMap::new();
        both.insert(header::CONTENT_LENGTH, HeaderValue::from_static("50"));
        both.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        strip_hop_by_hop(&mut both);
        assert!(both.is_empty(), "{both:?}");

        let mut length = HeaderMap::new();
        length.insert(header::CONTENT_LENGTH, HeaderValue::from_static("50"));
        length.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        strip_hop_by_hop(&mut length);
        assert_eq!(length.len(), 1, "{length:?}");
        assert!(length.contains_key(header::CONTENT_LENGTH));
    }

    #[test]
    fn a_lone_proxy_connection_goes_and_headers_without_hop_by_hop_names_stay() {
        let mut headers = HeaderMap::new();
        headers.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        headers.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1, "{headers:?}");
        assert!(headers.contains_key("x-kept"));

        let mut plain = HeaderMap::new();
        plain.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        plain.append("x-many", HeaderValue::from_static("a"));
        plain.append("x-many", HeaderValue::from_static("b"));
        let before = plain.clone();
        strip_hop_by_hop(&mut plain);
        assert_eq!(plain, before);
    }

    #[test]
    fn the_upstream_host_names_its_port_unless_it_is_80() {
        let host = |url: &str| Upstream::new(&url.parse().unwrap()).expect("valid").host;
        assert_eq!(host("http://127.0.0.1:9000/"), "127.0.0.1:9000");
        assert_eq!(host("http://api.example.com/v1"), "api.example.com");
        assert_eq!(host("http://api.example.com:80/"), "api.example.com");
    }

    #[test]
    fn the_upstream_target_keeps_its_base_path_and_the_request_query() {
        let upstream = Upstream::new(&"http://127.0.0.1:9000/functions/v1/".parse().unwrap())
            .expect("valid upstream");
        let tail: PathAndQuery = "/submit-media?x=1".parse().unwrap();
        assert_eq!(
            upstream.target(Some(&tail)).unwrap().to_string(),
            "/functions/v1/submit-media?x=1"
        );
        assert_eq!(upstream.target(None).unwrap().to_string(), "/functions/v1/");
        assert_eq!(upstream.address(), "127.0.0.1:9000");

        let bare = Upstream::new(&"http://api.example.com".parse().unwrap()).expect("valid");
        assert_eq!(
            bare.target(Some(&tail)).unwrap().to_string(),
            "/submit-media?x=1"
        );
        assert_eq!(bare.target(None).unwrap().to_string(), "/");
        assert_eq!(bare.address(), "api.example.com:80");
        assert!(Upstream::new(&"ftp://example.com".parse().unwrap()).is_err());
    }

    #[test]
    fn an_https_upstream_is_reached_on_443_by_its_name() {
        let secure = Upstream::new(&"https://api.example.com/v1".parse().unwrap()).expect("valid");
        assert_eq!(secure.address(), "api.example.com:443");
        assert_eq!(secure.host, "api.example.com");
        assert_eq!(
            secure.tls().map(|tls| format!("{:?}", tls.name)),
            Some(r#"DnsName("api.example.com")"#.to_owned())
        );
        let other_port = Upstream::new(&"https://[::1]:8443".parse().unwrap()).expect("valid");
        assert_eq!(other_port.host, "[::1]:8443");
        assert!(other_port.tls().is_some());
        assert!(
            Upstream::new(&"http://api.example.com".parse().unwrap())
                .expect("valid")
                .tls()
                .is_none()
        );
        // A CA file that is not one is named, as is a CA for an upstream without TLS.
        let uri: Uri = "https://api.example.com".parse().unwrap();
        let error = Upstream::trusting(&uri, Some(b"not a certificate")).unwrap_err();
        assert!(error.contains("no PEM certificate"), "{error}");
        let plain: Uri = "http://api.example.com".parse().unwrap();
        let error = Upstream::trusting(&plain, Some(b"")).unwrap_err();
        assert!(error.contains("only to an https:// upstream"), "{error}");
    }
}
