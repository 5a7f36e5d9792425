//! Secrets out of logs: the values of sensitive names (`apiKey`, `Authorization`, tokens,
//! passwords) replaced wherever they appear — JSON body members at any depth, form fields,
//! query parameters and headers. Bodies that are neither JSON nor a form are logged by size only,
//! since nothing can tell where a secret would sit in them.

use http::HeaderMap;
use serde_json::Value;
use url::Url;

/// What a redacted value is replaced with.
pub const REDACTED: &str = "[redacted]";

/// Names whose values never reach a log. Matching ignores case, `-` and `_`, so `apiKey`
/// covers `api_key`, `API-KEY` and `x-api-key` covers `X_Api_Key`.
#[derive(Clone, Debug)]
pub struct Redactor {
    names: Vec<String>,
}

impl Default for Redactor {
    fn default() -> Redactor {
        let mut redactor = Redactor { names: Vec::new() };
        for name in [
            "apiKey",
            "x-api-key",
            "authorization",
            "proxy-authorization",
            "cookie",
            "set-cookie",
            "token",
            "access_token",
            "refresh_token",
            "client_secret",
            "secret",
            "password",
        ] {
            redactor.add(name);
        }
        redactor
    }
}

fn normal(name: &str) -> String {
    name.chars()
        .filter(|c| *c != '-' && *c != '_')
        .flat_map(char::to_lowercase)
        .collect()
}

impl Redactor {
    /// Adds `name` to the sensitive names.
    pub fn add(&mut self, name: &str) {
        let name = normal(name);
        if !self.names.contains(&name) {
            self.names.push(name);
        }
    }

    /// Whether `name`'s value is a secret.
    pub fn is_sensitive(&self, name: &str) -> bool {
        self.names.contains(&normal(name))
    }

    /// `url` with the values of sensitive query parameters (and any password) replaced.
    pub fn url(&self, url: &Url) -> String {
        let mut url = url.clone();
        if url.password().is_some() {
            let _ = url.set_password(Some(REDACTED));
        }
        if url.query().is_some() {
            let pairs: Vec<(String, String)> = url
                .query_pairs()
                .map(|(name, value)| {
                    let value = if self.is_sensitive(&name) {
                        REDACTED.to_owned()
                    } else {
                        value.into_owned()
                    };
                    (name.into_owned(), value)
                })
                .collect();
            url.query_pairs_mut().clear().extend_pairs(pairs);
        }
        url.to_string()
    }

    /// `headers` as `name: value` lines, sensitive values replaced.
    pub fn headers(&self, headers: &HeaderMap) -> String {
        headers
            .iter()
            .map(|(name, value)| {
                let value = if self.is_sensitive(name.as_str()) {
                    REDACTED
                } else {
                    value.to_str().unwrap_or("<not text>")
                };
                format!("{name}: {value}")
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// A body for a log line: JSON with sensitive members replaced, a form with sensitive
    /// fields replaced, and anything else as its size.
    pub fn body(&self, body: &[u8], content_type: Option<&str>) -> String {
        if body.is_empty() {
            return String::new();
        }
        if let Ok(mut value) = serde_json::from_slice::<Value>(body) {
            self.json(&mut value);
            return value.to_string();
        }
        let form =
            content_type.is_some_and(|kind| kind.starts_with("application/x-www-form-urlencoded"));
        if form && let Ok(text) = std::str::from_utf8(body) {
            return url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs(
                    url::form_urlencoded::parse(text.as_bytes()).map(|(name, value)| {
                        let value = if self.is_sensitive(&name) {
                            REDACTED.into()
                        } else {
                            value
                        };
                        (name, value)
                    }),
                )
                .finish();
        }
        format!(
            "<{} bytes of {}>",
            body.len(),
            content_type.unwrap_or("unknown type")
        )
    }

    fn json(&self, value: &mut Value) {
        match value {
            Value::Object(members) => {
                for (name, member) in members.iter_mut() {
                    if self.is_sensitive(name) {
                        *member = Value::String(REDACTED.to_owned());
                    } else {
                        self.json(member);
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|item| self.json(item)),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "sp_live_alice_demo_key";

    #[test]
    fn api_keys_are_redacted_in_json_bodies_at_any_depth() {
        let body = format!(
            r#"{{"apiKey":"{KEY}","userId":"alice","nested":[{{"api_key":"{KEY}"}}],"n":1}}"#
        );
        let logged = Redactor::default().body(body.as_bytes(), Some("application/json"));
        assert!(!logged.contains(KEY), "{logged}");
        assert_eq!(
            logged,
            r#"{"apiKey":"[redacted]","userId":"alice","nested":[{"api_key":"[redacted]"}],"n":1}"#
        );
    }

    #[test]
    fn api_keys_are_redacted_in_queries_headers_and_forms() {
        let redactor = Redactor::default();
        let url = Url::parse(&format!(
            "https://u:pw@api.example.com/x?apiKey={KEY}&page=2"
        ))
        .expect("url");
        let logged = redactor.url(&url);
        assert_eq!(
            logged,
            "https://u:%5Bredacted%5D@api.example.com/x?apiKey=%5Bredacted%5D&page=2"
        );

        let mut headers = HeaderMap::new();
        headers.insert(
            "authorization",
            format!("Bearer {KEY}").parse().expect("value"),
        );
        headers.insert("x-api-key", KEY.parse().expect("value"));
        headers.insert("accept", "application/json".parse().expect("value"));
        let logged = redactor.headers(&headers);
        assert!(!logged.contains(KEY), "{logged}");
        assert!(logged.contains("accept: application/json"), "{logged}");

        let form = format!("apiKey={KEY}&userId=alice");
        let logged = redactor.body(form.as_bytes(), Some("application/x-www-form-urlencoded"));
        assert_eq!(logged, "apiKey=%5Bredacted%5D&userId=alice");
    }

    #[test]
    fn opaque_bodies_are_logged_by_size_and_names_can_be_added() {
        let mut redactor = Redactor::default();
        let logged = redactor.body(format!("key={KEY}").as_bytes(), Some("text/plain"));
        assert_eq!(logged, "<26 bytes of text/plain>");
        assert!(!redactor.is_sensitive("siteKey"));
        redactor.add("site-key");
        assert!(redactor.is_sensitive("siteKey"));
    }
}
