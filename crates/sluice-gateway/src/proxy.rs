//! Forwarding to the upstream: the request rebuilt for the upstream (hop-by-hop headers dropped,
//! `X-Forwarded-For`/`Forwarded` appended, the id passed on), and the upstream's answer checked
//! against the contract on the way back.

use std::net::SocketAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Uri};
use http::{Request, request};

use crate::body::Body;
use crate::request_id::X_REQUEST_ID;

/// Headers that describe one connection, not the message: never forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes hop-by-hop headers, including any the `Connection` header names.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
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
    headers.remove("proxy-connection");
}

/// Where a request goes: the upstream's scheme and authority, its base path, then the request's
/// path and query.
#[derive(Clone, Debug)]
pub struct Upstream {
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
    base_path: String,
}

impl Upstream {
    /// The upstream at `uri` (`http://host:port` with an optional base path).
    pub fn new(uri: &Uri) -> Result<Upstream, String> {
        let scheme = uri
            .scheme()
            .cloned()
            .ok_or_else(|| format!("upstream `{uri}` needs a scheme, like http://host:port"))?;
        if scheme != http::uri::Scheme::HTTP {
            return Err(format!(
                "upstream `{uri}`: only http:// upstreams are supported; terminate TLS in front"
            ));
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| format!("upstream `{uri}` needs a host"))?;
        Ok(Upstream {
            scheme,
            authority,
            base_path: uri.path().trim_end_matches('/').to_owned(),
        })
    }

    fn uri(&self, path_and_query: Option<&PathAndQuery>) -> Result<Uri, http::Error> {
        let tail = path_and_query.map_or("/", PathAndQuery::as_str);
        let path = if self.base_path.is_empty() {
            tail.to_owned()
        } else {
            format!("{}{tail}", self.base_path)
        };
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(path)
            .build()
    }
}

/// The request to send upstream for a client's request `parts` and `body`.
pub(crate) fn upstream_request(
    upstream: &Upstream,
    mut parts: request::Parts,
    body: Body,
    peer: SocketAddr,
    request_id: &HeaderValue,
) -> Result<Request<Body>, http::Error> {
    let uri = upstream.uri(parts.uri.path_and_query())?;
    let headers = &mut parts.headers;
    strip_hop_by_hop(headers);
    let host = headers.remove(header::HOST);
    let client = peer.ip().to_string();
    let forwarded_for = match headers
        .get("x-forwarded-for")
        .and_then(|value| value.to_str().ok())
    {
        Some(earlier) => format!("{earlier}, {client}"),
        None => client.clone(),
    };
    if let Ok(value) = HeaderValue::from_str(&forwarded_for) {
        headers.insert("x-forwarded-for", value);
    }
    let node = if peer.is_ipv6() {
        format!("\"[{client}]\"")
    } else {
        client
    };
    let mut forwarded = format!("for={node};proto=http");
    if let Some(host) = host.as_ref().and_then(|host| host.to_str().ok()) {
        forwarded.push_str(&format!(";host=\"{}\"", host.replace(['"', '\\'], "")));
    }
    if let Ok(value) = HeaderValue::from_str(&forwarded) {
        headers.append(header::FORWARDED, value);
    }
    if let Some(host) = host {
        headers.insert("x-forwarded-host", host);
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
    fn the_upstream_uri_keeps_its_base_path_and_the_request_query() {
        let upstream = Upstream::new(&"http://127.0.0.1:9000/functions/v1/".parse().unwrap())
            .expect("valid upstream");
        let tail: PathAndQuery = "/submit-media?x=1".parse().unwrap();
        assert_eq!(
            upstream.uri(Some(&tail)).unwrap().to_string(),
            "http://127.0.0.1:9000/functions/v1/submit-media?x=1"
        );
        assert!(Upstream::new(&"https://example.com".parse().unwrap()).is_err());
    }
}
