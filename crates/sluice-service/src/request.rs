//! What the service reads from a request, and the checks on its shape: the content type, the JSON
//! body and its fields, the client's address. Pure functions over borrowed parts of the request,
//! so the gateway and the decision API share them exactly.

use std::net::{IpAddr, Ipv6Addr};

use http::HeaderMap;
use serde_json::{Map, Value};
use sluice_contract::{ErrorCode, Values};
use sluice_policy::{FieldRule, FieldType, Ordered, TrustedProxy, UrlRule};

use crate::{Ambiguous, Refusal, Refused};

/// One HTTP request, as far as the policy looks at it.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    /// The method, e.g. `POST`.
    pub method: &'a str,
    /// The path, without the query.
    pub path: &'a str,
    /// The query string, without the `?`.
    pub query: Option<&'a str>,
    /// The request's headers.
    pub headers: &'a HeaderMap,
    /// The address the connection came from.
    pub peer: Option<IpAddr>,
    /// The body, when the route needs it read (see [`crate::Service::matched`]).
    pub body: Option<&'a [u8]>,
    /// The request's id, for error bodies whose envelope has a place for it.
    pub request_id: Option<&'a str>,
}

/// Whether the `Content-Type` says JSON: `application/json` or a `+json` type, any parameters.
pub fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
    else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("application/json")
        || (essence.len() > 5
            && essence
                .get(essence.len() - 5..)
                .is_some_and(|suffix| suffix.eq_ignore_ascii_case("+json"))
            && essence
                .get(..12)
                .is_some_and(|prefix| prefix.eq_ignore_ascii_case("application/")))
}

/// The body as the JSON object every JSON route needs.
pub(crate) fn parse_object(body: &[u8]) -> Result<Map<String, Value>, Refused> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(object)) => Ok(object),
        _ => Err(Refusal::new(ErrorCode::MalformedBody, Values::default())),
    }
}

/// The value at dot path `path` (`user.id`) of `object`.
pub(crate) fn lookup<'v>(object: &'v Map<String, Value>, path: &str) -> Option<&'v Value> {
    let mut parts = path.split('.');
    let mut value = object.get(parts.next()?)?;
    for part in parts {
        value = value.as_object()?.get(part)?;
    }
    Some(value)
}

/// `number` in one spelling for every way JSON can write it: `42`, `42.0` and `4.2e1` are the
/// same number to an upstream (JavaScript has no other kind; Python finds `42` by `42.0`), so
/// they must be one identity, or a client could count as several by respelling itself.
pub(crate) fn canonical_number(number: &serde_json::Number) -> String {
    if let Some(integer) = number.as_i64() {
        return integer.to_string();
    }
    if let Some(integer) = number.as_u64() {
        return integer.to_string();
    }
    match number.as_f64() {
        // -0.0 is 0.
        Some(0.0) => "0".to_owned(),
        // Integral, and exact below 2^53: written as the integer it is.
        Some(float) if float.fract() == 0.0 && float.abs() < 9_007_199_254_740_992.0 => {
            format!("{float:.0}")
        }
        Some(float) => float.to_string(),
        None => number.to_string(),
    }
}

/// The value of query parameter `name`, percent-decoded; [`Ambiguous`] when it is given more
/// than once with different values.
pub(crate) fn query_param(query: Option<&str>, name: &str) -> Result<Option<String>, Ambiguous> {
    let Some(query) = query else {
        return Ok(None);
    };
    let mut values = url::form_urlencoded::parse(query.as_bytes())
        .filter(|(key, _)| key == name)
        .map(|(_, value)| value);
    let first = values.next();
    if values.any(|value| Some(&value) != first.as_ref()) {
        return Err(Ambiguous);
    }
    Ok(first.map(std::borrow::Cow::into_owned))
}

/// The client's address: the peer's, unless the peer is a trusted proxy; then the right-most
/// `X-Forwarded-For` address that is not itself a trusted proxy. IPv4 addresses written as IPv6
/// (`::ffff:192.0.2.7`, as a dual-stack listener sees IPv4 peers) are read as the IPv4 they are,
/// so that a proxy trusted by its IPv4 block is believed on either kind of listener.
pub(crate) fn client_ip(
    peer: Option<IpAddr>,
    headers: &HeaderMap,
    trusted: &[TrustedProxy],
) -> Option<IpAddr> {
    let peer = peer?.to_canonical();
    let is_trusted = |ip: IpAddr| trusted.iter().any(|block| block.contains(ip));
    if !is_trusted(peer) {
        return Some(peer);
    }
    let mut client = peer;
    for value in headers.get_all("x-forwarded-for").iter().rev() {
        let Ok(text) = value.to_str() else {
            return Some(client);
        };
        for hop in text.rsplit(',') {
            match hop.trim().parse::<IpAddr>().map(|ip| ip.to_canonical()) {
                Ok(ip) => {
                    client = ip;
                    if !is_trusted(ip) {
                        return Some(ip);
                    }
                }
                Err(_) => return Some(client),
            }
        }
    }
    Some(client)
}

/// The name a client address counts under: an IPv4 address whole; an IPv6 address by its
/// `ipv6_prefix` leading bits (`2001:db8:1:2::/64`), since a host can take any address of the
/// network it is given; whole at 128.
pub(crate) fn client_name(ip: IpAddr, ipv6_prefix: u8) -> String {
    match ip.to_canonical() {
        IpAddr::V4(ip) => ip.to_string(),
        IpAddr::V6(ip) if ipv6_prefix >= 128 => ip.to_string(),
        IpAddr::V6(ip) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(ipv6_prefix))
                .unwrap_or(0);
            format!("{}/{ipv6_prefix}", Ipv6Addr::from(u128::from(ip) & mask))
        }
    }
}

/// Checks every field rule against `body`, in the order the policy lists them.
pub(crate) fn validate_fields(
    rules: &Ordered<FieldRule>,
    body: &Map<String, Value>,
) -> Result<(), Refused> {
    for (field, rule) in &rules.0 {
        let value = match lookup(body, field) {
            None | Some(Value::Null) => {
                if rule.required {
                    return Err(Refusal::new(
                        ErrorCode::MissingField,
                        Values {
                            field: Some(field.clone()),
                            ..Values::default()
                        },
                    ));
                }
                continue;
            }
            Some(value) => value,
        };
        let invalid = |reason: &str| {
            Refusal::new(
                ErrorCode::InvalidField,
                Values {
                    field: Some(field.clone()),
                    reason: Some(reason.to_owned()),
                    ..Values::default()
                },
            )
        };
        if let Some(kind) = rule.kind
            && !has_type(value, kind)
        {
            return Err(invalid(&format!("must be {}", article(kind))));
        }
        if rule.non_empty && value.as_str().is_some_and(|text| text.trim().is_empty()) {
            return Err(invalid("must not be empty"));
        }
        if let Some(max) = rule.max_size
            && size_of(value) > max.0
        {
            return Err(Refusal::new(
                ErrorCode::FieldTooLarge,
                Values {
                    field: Some(field.clone()),
                    max_size: Some(max.0),
                    ..Values::default()
                },
            ));
        }
        if let Some(url_rule) = &rule.url {
            let acceptable = value
                .as_str()
                .is_some_and(|text| acceptable_url(text, url_rule));
            if !acceptable {
                return Err(invalid(if url_rule.allow_private {
                    "must be an http or https URL"
                } else {
                    "must be a public https URL"
                }));
            }
        }
    }
    Ok(())
}

fn has_type(value: &Value, kind: FieldType) -> bool {
    match kind {
        FieldType::String => value.is_string(),
        FieldType::Number => value.is_number(),
        FieldType::Integer => value.is_i64() || value.is_u64(),
        FieldType::Boolean => value.is_boolean(),
        FieldType::Object => value.is_object(),
        FieldType::Array => value.is_array(),
    }
}

fn article(kind: FieldType) -> String {
    let name = kind.name();
    match name.chars().next() {
        Some('a' | 'e' | 'i' | 'o' | 'u') => format!("an {name}"),
        _ => format!("a {name}"),
    }
}

/// A field's size: a string's bytes, or any other value's length as compact JSON.
fn size_of(value: &Value) -> u64 {
    let bytes = match value {
        Value::String(text) => text.len(),
        other => serde_json::to_vec(other).map_or(usize::MAX, |json| json.len()),
    };
    u64::try_from(bytes).unwrap_or(u64::MAX)
}

/// An absolute https URL to a public host; with `allow_private`, http and any host too.
pub(crate) fn acceptable_url(text: &str, rule: &UrlRule) -> bool {
    let Ok(url) = url::Url::parse(text) else {
        return false;
    };
    if rule.allow_private {
        return matches!(url.scheme(), "http" | "https") && url.host().is_some();
    }
    if url.scheme() != "https" {
        return false;
    }
    match url.host() {
        Some(url::Host::Domain(domain)) => {
            let domain = domain.trim_end_matches('.').to_ascii_lowercase();
            domain.contains('.')
                && !domain.ends_with(".localhost")
                && !domain.ends_with(".local")
                && !domain.ends_with(".internal")
        }
        Some(url::Host::Ipv4(ip)) => is_public(IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => is_public(IpAddr::V6(ip)),
        None => false,
    }
}

/// Whether `ip` is routable on the public internet: not private, loopback, link-local,
/// unspecified, shared, documentation, multicast or broadcast space.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => {
            let [a, b, ..] = ip.octets();
            !(ip.is_private()
                || ip.is_loopback()
                || ip.is_link_local()
                || ip.is_unspecified()
                || ip.is_broadcast()
                || ip.is_documentation()
                || ip.is_multicast()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || (a == 198 && (b == 18 || b == 19))
                || a >= 240)
        }
        IpAddr::V6(ip) => {
            if let Some(v4) = ip.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let first = ip.segments()[0];
            !(ip.is_loopback()
                || ip.is_unspecified()
                || ip.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || first == 0x2001 && ip.segments()[1] == 0x0db8)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, value.parse().expect("header value"));
        }
        map
    }

    #[test]
    fn json_content_types_are_recognised_with_parameters_and_suffixes() {
        let json = |value: &str| is_json(&headers(&[("content-type", value)]));
        assert!(json("application/json"));
        assert!(json("Application/JSON; charset=utf-8"));
        assert!(json("application/vnd.api+json"));
        assert!(!json("text/plain"));
        assert!(!json("text/x+json"));
        assert!(!is_json(&HeaderMap::new()));
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted = [TrustedProxy {
            address: "10.0.0.0".parse().expect("ip"),
            prefix: 8,
        }];
        let forwarded = headers(&[("x-forwarded-for", "203.0.113.9, 10.0.0.2")]);
        let peer = |text: &str| Some(text.parse::<IpAddr>().expect("ip"));
        assert_eq!(
            client_ip(peer("10.0.0.1"), &forwarded, &trusted),
            peer("203.0.113.9")
        );
        assert_eq!(
            client_ip(peer("198.51.100.4"), &forwarded, &trusted),
            peer("198.51.100.4")
        );
        let spoofed = headers(&[("x-forwarded-for", "1.2.3.4, 203.0.113.9")]);
        assert_eq!(
            client_ip(peer("10.0.0.1"), &spoofed, &trusted),
            peer("203.0.113.9")
        );
    }

    #[test]
    fn ipv4_peers_seen_as_ipv6_are_read_as_ipv4() {
        let trusted = [TrustedProxy {
            address: "10.0.0.0".parse().expect("ip"),
            prefix: 8,
        }];
        let forwarded = headers(&[("x-forwarded-for", "::ffff:203.0.113.9")]);
        let peer = |text: &str| Some(text.parse::<IpAddr>().expect("ip"));
        assert_eq!(
            client_ip(peer("::ffff:10.0.0.1"), &forwarded, &trusted),
            peer("203.0.113.9")
        );
        assert_eq!(
            client_ip(peer("::ffff:198.51.100.4"), &forwarded, &trusted),
            peer("198.51.100.4")
        );
    }

    #[test]
    fn a_number_has_one_spelling() {
        let canonical = |text: &str| {
            let number: serde_json::Number = serde_json::from_str(text).expect("a number");
            canonical_number(&number)
        };
        for (text, spelled) in [
            ("42", "42"),
            ("42.0", "42"),
            ("4.2e1", "42"),
            ("420e-1", "42"),
            ("-7", "-7"),
            ("-7.0", "-7"),
            ("-0.0", "0"),
            ("0.5", "0.5"),
            ("5e-1", "0.5"),
            ("18446744073709551615", "18446744073709551615"),
        ] {
            assert_eq!(canonical(text), spelled, "{text}");
        }
    }

    #[test]
    fn ipv6_clients_are_named_by_their_network() {
        let name = |text: &str, prefix: u8| client_name(text.parse().expect("ip"), prefix);
        assert_eq!(name("2001:db8:1:2:aaaa::1", 64), "2001:db8:1:2::/64");
        assert_eq!(
            name("2001:db8:1:2:ffff:ffff:ffff:ffff", 64),
            "2001:db8:1:2::/64"
        );
        assert_eq!(name("2001:db8:1:3::1", 64), "2001:db8:1:3::/64");
        assert_eq!(name("2001:db8:1:2ff::1", 56), "2001:db8:1:200::/56");
        assert_eq!(name("2001:db8::7", 128), "2001:db8::7");
        assert_eq!(name("2001:db8::7", 1), "::/1");
        assert_eq!(name("198.51.100.4", 64), "198.51.100.4");
        assert_eq!(name("::ffff:198.51.100.4", 64), "198.51.100.4");
    }

    #[test]
    fn only_public_https_urls_pass_unless_private_hosts_are_allowed() {
        let public = UrlRule::default();
        assert!(acceptable_url("https://cdn.example.com/a.png", &public));
        assert!(!acceptable_url("http://cdn.example.com/a.png", &public));
        assert!(!acceptable_url("https://127.0.0.1/a.png", &public));
        assert!(!acceptable_url("https://[::1]/a.png", &public));
        assert!(!acceptable_url("https://169.254.169.254/latest", &public));
        assert!(!acceptable_url("https://10.1.2.3/a.png", &public));
        assert!(!acceptable_url("https://localhost/a.png", &public));
        assert!(!acceptable_url("not a url", &public));
        let private = UrlRule {
            allow_private: true,
            ..UrlRule::default()
        };
        assert!(acceptable_url("http://127.0.0.1:8080/a.png", &private));
        assert!(!acceptable_url("ftp://127.0.0.1/a.png", &private));
    }
}
