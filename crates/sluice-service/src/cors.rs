//! What the API tells browsers calling it from pages of other origins (CORS, as the Fetch
//! standard defines it), when the policy lets them: a preflight is answered here, neither
//! counted nor forwarded; every other answer to an allowed origin, sluice's own refusals
//! among them, carries the headers that let the page read it, the rate-limit headers and
//! `Retry-After` too. Without them a page sees a 429 as a network error and cannot wait as told.

use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE,
    ACCESS_CONTROL_REQUEST_HEADERS, ACCESS_CONTROL_REQUEST_METHOD, ORIGIN, VARY,
};
use http::{HeaderMap, HeaderValue};
use sluice_policy::Cors;

use crate::HeaderList;

/// The response headers a page may read besides the CORS-safelisted ones: every rate-limit
/// header of every dialect, `Retry-After` and the request's id.
const EXPOSED: &str = "RateLimit, RateLimit-Policy, X-RateLimit-Limit, X-RateLimit-Remaining, \
                       X-RateLimit-Reset, Retry-After, X-Request-Id";

/// What CORS asks of one request.
#[derive(Debug, PartialEq, Eq)]
pub enum CorsAnswer {
    /// A preflight from an allowed origin: answer it with 204 and these headers, and nothing
    /// else.
    Preflight(HeaderList),
    /// Add these to the request's answer, whatever the answer is: for an allowed origin, what
    /// lets its page read it; for a request from no origin the policy allows (or from none),
    /// only `Vary: Origin`, so that a shared cache keeps the two apart; none at all when the
    /// policy allows no other origin.
    Headers(HeaderList),
}

/// The answer `cors` gives a request with `method` and `headers`.
pub(crate) fn answer(cors: Option<&Cors>, method: &str, headers: &HeaderMap) -> CorsAnswer {
    let Some(cors) = cors else {
        return CorsAnswer::Headers(HeaderList::new());
    };
    let Some(origin) = headers
        .get(ORIGIN)
        .filter(|origin| origin.to_str().is_ok_and(|origin| cors.allows(origin)))
    else {
        return CorsAnswer::Headers(vec![(VARY, HeaderValue::from_static("Origin"))]);
    };
    let mut list: HeaderList = Vec::with_capacity(6);
    // The origin itself rather than `*`, so that credentials work and caches keep answers
    // apart by `Vary: Origin`.
    list.push((ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone()));
    list.push((VARY, HeaderValue::from_static("Origin")));
    if cors.credentials {
        list.push((
            ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        ));
    }
    let preflight = method == "OPTIONS" && headers.contains_key(ACCESS_CONTROL_REQUEST_METHOD);
    if !preflight {
        list.push((
            ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(EXPOSED),
        ));
        return CorsAnswer::Headers(list);
    }
    if let Ok(methods) = HeaderValue::from_str(&cors.methods) {
        list.push((ACCESS_CONTROL_ALLOW_METHODS, methods));
    }
    let allowed_headers = match &cors.headers {
        Some(listed) => HeaderValue::from_str(listed).ok(),
        // Whichever the preflight asks for.
        None => headers.get(ACCESS_CONTROL_REQUEST_HEADERS).cloned(),
    };
    if let Some(allowed) = allowed_headers {
        list.push((ACCESS_CONTROL_ALLOW_HEADERS, allowed));
    }
    if let Some(age) = cors.max_age {
        list.push((ACCESS_CONTROL_MAX_AGE, HeaderValue::from(age)));
    }
    CorsAnswer::Preflight(list)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cors(credentials: bool, headers: Option<&str>) -> Cors {
        Cors {
            origins: vec!["https://app.example.com".to_owned()],
            any_origin: false,
            credentials,
            methods: "GET, POST".to_owned(),
            headers: headers.map(str::to_owned),
            max_age: Some(600),
        }
    }

    fn request(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(*name, HeaderValue::from_static(value));
        }
        headers
    }

    fn names(list: &HeaderList) -> Vec<(&str, &str)> {
        list.iter()
            .map(|(name, value)| (name.as_str(), value.to_str().expect("ASCII")))
            .collect()
    }

    #[test]
    fn a_preflight_from_an_allowed_origin_is_answered_with_what_it_may_ask() {
        let headers = request(&[
            ("origin", "https://app.example.com"),
            ("access-control-request-method", "POST"),
            ("access-control-request-headers", "content-type, x-api-key"),
        ]);
        let CorsAnswer::Preflight(list) = answer(Some(&cors(true, None)), "OPTIONS", &headers)
        else {
            panic!("a preflight");
        };
        assert_eq!(
            names(&list),
            [
                ("access-control-allow-origin", "https://app.example.com"),
                ("vary", "Origin"),
                ("access-control-allow-credentials", "true"),
                ("access-control-allow-methods", "GET, POST"),
                ("access-control-allow-headers", "content-type, x-api-key"),
                ("access-control-max-age", "600"),
            ]
        );
        let CorsAnswer::Preflight(listed) = answer(
            Some(&cors(false, Some("content-type"))),
            "OPTIONS",
            &headers,
        ) else {
            panic!("a preflight");
        };
        assert!(names(&listed).contains(&("access-control-allow-headers", "content-type")));
        assert!(
            !names(&listed)
                .iter()
                .any(|(name, _)| name.contains("credentials"))
        );
    }

    #[test]
    fn an_allowed_origin_may_read_the_rate_limit_headers() {
        let headers = request(&[("origin", "https://app.example.com")]);
        for method in ["POST", "OPTIONS"] {
            let CorsAnswer::Headers(list) = answer(Some(&cors(false, None)), method, &headers)
            else {
                panic!("an actual request");
            };
            let exposed = names(&list)
                .into_iter()
                .find(|(name, _)| *name == "access-control-expose-headers")
                .map(|(_, value)| value.to_owned())
                .expect("exposed headers");
            assert!(exposed.contains("Retry-After"), "{exposed}");
            assert!(exposed.contains("X-RateLimit-Remaining"), "{exposed}");
        }
    }

    #[test]
    fn other_origins_and_policies_without_cors_get_nothing() {
        let other = request(&[
            ("origin", "https://evil.example.com"),
            ("access-control-request-method", "POST"),
        ]);
        let only_vary = CorsAnswer::Headers(vec![(VARY, HeaderValue::from_static("Origin"))]);
        assert_eq!(
            answer(Some(&cors(false, None)), "OPTIONS", &other),
            only_vary
        );
        let same_site = request(&[]);
        assert_eq!(
            answer(Some(&cors(false, None)), "GET", &same_site),
            only_vary
        );
        let allowed = request(&[("origin", "https://app.example.com")]);
        assert_eq!(
            answer(None, "GET", &allowed),
            CorsAnswer::Headers(HeaderList::new())
        );
    }
}
