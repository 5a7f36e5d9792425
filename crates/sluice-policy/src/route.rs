//! Route patterns (`POST /projects/{id}/builds`, `GET /static/*`, `* /*`) and which of several
//! matching patterns wins: the most specific one.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::fmt;

use iri_string::format::ToDedicatedString;
use iri_string::types::UriStr;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
}

/// A method (or `*` for any) and a path pattern: literal segments, `{param}` segments and an
/// optional trailing `*` that matches any rest of the path, including nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoutePattern {
    /// `None` matches any method.
    method: Option<String>,
    segments: Vec<Segment>,
    wildcard: bool,
}

impl RoutePattern {
    /// Parses `METHOD /path`.
    pub fn parse(text: &str) -> Result<RoutePattern, String> {
        let expected = || {
            format!(
                "expected a route like `POST /projects/upload-file`, `GET /items/{{id}}` or \
                 `* /*`, found `{}`",
                text.trim()
            )
        };
        let (method, path) = text.trim().split_once(' ').ok_or_else(expected)?;
        let method = match method {
            "*" => None,
            name if !name.is_empty() && name.chars().all(|c| c.is_ascii_uppercase()) => {
                Some(name.to_owned())
            }
            _ => {
                return Err(format!(
                    "expected an upper-case HTTP method or `*` before the path, found `{method}`"
                ));
            }
        };
        let path = path.trim();
        let rest = path.strip_prefix('/').ok_or_else(expected)?;
        let mut segments = Vec::new();
        let mut wildcard = false;
        let parts: Vec<&str> = if rest.is_empty() {
            Vec::new()
        } else {
            rest.split('/').collect()
        };
        for (index, part) in parts.iter().enumerate() {
            if *part == "*" || *part == "**" {
                if index + 1 != parts.len() {
                    return Err(format!(
                        "a `*` may only end a route's path, found one in the middle of `{path}`"
                    ));
                }
                wildcard = true;
            } else if let Some(name) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                if name.is_empty() || name.contains(['{', '}', '/']) {
                    return Err(format!("bad parameter segment `{part}` in `{path}`"));
                }
                segments.push(Segment::Param(name.to_owned()));
            } else if part.is_empty() || part.contains(['{', '}', '*']) {
                return Err(format!("bad path segment `{part}` in `{path}`"));
            } else {
                segments.push(Segment::Literal((*part).to_owned()));
            }
        }
        Ok(RoutePattern {
            method,
            segments,
            wildcard,
        })
    }

    /// The parameters if `method` and `path` (no query string) match, literal segments compared
    /// as they are, or without regard to ASCII case unless `case_sensitive`.
    pub fn matches(
        &self,
        method: &str,
        path: &str,
        case_sensitive: bool,
    ) -> Option<Vec<(String, String)>> {
        if self.method.as_deref().is_some_and(|own| own != method) {
            return None;
        }
        let rest = path.strip_prefix('/').unwrap_or(path);
        let mut parts = rest.split('/').filter(|part| !part.is_empty());
        let mut params = Vec::new();
        for segment in &self.segments {
            let part = parts.next()?;
            match segment {
                Segment::Literal(literal)
                    if literal == part
                        || (!case_sensitive && literal.eq_ignore_ascii_case(part)) => {}
                Segment::Literal(_) => return None,
                Segment::Param(name) => params.push((name.clone(), part.to_owned())),
            }
        }
        if parts.next().is_some() && !self.wildcard {
            return None;
        }
        Some(params)
    }

    /// Orders patterns by specificity: segment by segment a literal beats a parameter, then
    /// more segments beat fewer, no wildcard beats a wildcard, and a named method beats `*`.
    pub fn specificity_cmp(&self, other: &RoutePattern) -> Ordering {
        for (mine, theirs) in self.segments.iter().zip(&other.segments) {
            let rank = |segment: &Segment| match segment {
                Segment::Literal(_) => 1,
                Segment::Param(_) => 0,
            };
            match rank(mine).cmp(&rank(theirs)) {
                Ordering::Equal => {}
                unequal => return unequal,
            }
        }
        self.segments
            .len()
            .cmp(&other.segments.len())
            .then((!self.wildcard).cmp(&!other.wildcard))
            .then(self.method.is_some().cmp(&other.method.is_some()))
    }

    /// Whether a literal segment has `c` in it.
    pub(crate) fn has_literal_with(&self, c: char) -> bool {
        self.segments
            .iter()
            .any(|segment| matches!(segment, Segment::Literal(literal) if literal.contains(c)))
    }

    /// The method, or `None` for any.
    pub fn method(&self) -> Option<&str> {
        self.method.as_deref()
    }

    /// Whether the pattern matches every path below its literal prefix.
    pub fn is_wildcard(&self) -> bool {
        self.wildcard
    }
}

impl fmt::Display for RoutePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ", self.method.as_deref().unwrap_or("*"))?;
        if self.segments.is_empty() && !self.wildcard {
            return f.write_str("/");
        }
        for segment in &self.segments {
            match segment {
                Segment::Literal(literal) => write!(f, "/{literal}")?,
                Segment::Param(name) => write!(f, "/{{{name}}}")?,
            }
        }
        if self.wildcard {
            f.write_str("/*")?;
        }
        Ok(())
    }
}

/// `path` as routes see it: in RFC 3986's normal form, its percent-encoded unreserved characters
/// decoded and its `.` and `..` segments resolved (section 6.2.2), so that
/// `/projects/%75pload-file` and `/projects/x/../upload-file` go by the route of
/// `/projects/upload-file`, as an upstream that decodes or resolves them serves them: a client
/// cannot step around a route's limits by spelling its path another way. Nearly every path is
/// normal already and is borrowed as it is; one that is not a URI's path is left as it is.
pub fn normal_path(path: &str) -> Cow<'_, str> {
    let dotted = |segment: &str| matches!(segment, "." | "..");
    if !path.starts_with('/') || (!has_escape_to_normalize(path) && !path.split('/').any(dotted)) {
        return Cow::Borrowed(path);
    }
    let uri = format!("http://host{path}");
    match UriStr::new(&uri) {
        Ok(uri) => Cow::Owned(uri.normalize().to_dedicated_string().path_str().to_owned()),
        Err(_) => Cow::Borrowed(path),
    }
}

/// `path` without its segments' parameters: each segment cut at its first `;`, as a Java
/// servlet container reads a path before it routes it (so `/x/..;/items` is `/x/../items`,
/// and normalizes to `/items`). An escaped `%3B` is part of its segment there too, and stays.
pub(crate) fn without_path_parameters(path: &str) -> Cow<'_, str> {
    if !path.contains(';') {
        return Cow::Borrowed(path);
    }
    let mut stripped = String::with_capacity(path.len());
    for (index, segment) in path.split('/').enumerate() {
        if index > 0 {
            stripped.push('/');
        }
        stripped.push_str(segment.split_once(';').map_or(segment, |(name, _)| name));
    }
    Cow::Owned(stripped)
}

/// Whether `path` has an escape that normalization changes: one of an unreserved character
/// (`%75` is `u`), or one written in lower case (`%2f` is `%2F`). Other escapes (`%20`) stay
/// as they are, so a path with only those is normal already.
fn has_escape_to_normalize(path: &str) -> bool {
    let bytes = path.as_bytes();
    let digit = |at: usize| {
        bytes
            .get(at)
            .and_then(|byte| (*byte as char).to_digit(16).map(|value| (*byte, value)))
    };
    bytes.iter().enumerate().any(|(at, byte)| {
        let (b'%', Some((high, high_value)), Some((low, low_value))) =
            (*byte, digit(at + 1), digit(at + 2))
        else {
            return false;
        };
        let decoded = char::from_u32(high_value * 16 + low_value).unwrap_or('%');
        high.is_ascii_lowercase()
            || low.is_ascii_lowercase()
            || decoded.is_ascii_alphanumeric()
            || matches!(decoded, '-' | '.' | '_' | '~')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_matched_in_their_normal_form() {
        for (path, normal) in [
            ("/projects/upload-file", "/projects/upload-file"),
            ("/projects/%75pload-file", "/projects/upload-file"),
            ("/projects/%75%70load%2Dfile", "/projects/upload-file"),
            ("/projects/./upload-file", "/projects/upload-file"),
            ("/projects/x/../upload-file", "/projects/upload-file"),
            (
                "/projects/%2e%2E/projects/upload-file",
                "/projects/upload-file",
            ),
            ("/../../projects/upload-file", "/projects/upload-file"),
            // Reserved characters keep their escapes: `%2F` is not a segment's end.
            ("/projects/upload-file%2fx", "/projects/upload-file%2Fx"),
            ("/items/caf%C3%A9", "/items/caf%C3%A9"),
            // Not a URI's path: left as it is.
            ("/a b/%zz", "/a b/%zz"),
            ("projects/../x", "projects/../x"),
        ] {
            assert_eq!(normal_path(path), normal, "{path}");
        }
        assert!(matches!(
            normal_path("/projects/upload-file"),
            Cow::Borrowed(_)
        ));
        // Escapes that normalization keeps as they are cost nothing.
        assert!(matches!(
            normal_path("/files/my%20doc%2Fv2.pdf"),
            Cow::Borrowed(_)
        ));
        assert_eq!(
            normal_path("/files/my%20doc%2fv2.pdf"),
            "/files/my%20doc%2Fv2.pdf"
        );
    }

    #[test]
    fn path_parameters_are_cut_from_every_segment() {
        for (path, stripped) in [
            ("/projects/upload-file", "/projects/upload-file"),
            ("/projects/upload-file;x=1", "/projects/upload-file"),
            ("/projects;a/upload-file;b;c/", "/projects/upload-file/"),
            ("/x/..;/projects/upload-file", "/x/../projects/upload-file"),
            ("/;/projects", "//projects"),
            ("/items%3Bv2", "/items%3Bv2"),
        ] {
            assert_eq!(without_path_parameters(path), stripped, "{path}");
        }
        assert_eq!(
            normal_path(&without_path_parameters("/x/..;/projects/upload-file")),
            "/projects/upload-file"
        );
        assert!(matches!(
            without_path_parameters("/projects/upload-file"),
            Cow::Borrowed(_)
        ));
    }

    fn pattern(text: &str) -> RoutePattern {
        RoutePattern::parse(text).unwrap_or_else(|error| panic!("{error}"))
    }

    #[test]
    fn patterns_match_literals_params_and_wildcards() {
        let upload = pattern("POST /projects/upload-file");
        assert_eq!(
            upload.matches("POST", "/projects/upload-file", true),
            Some(vec![])
        );
        assert_eq!(upload.matches("GET", "/projects/upload-file", true), None);
        assert_eq!(
            upload.matches("POST", "/projects/upload-file/x", true),
            None
        );
        let item = pattern("GET /items/{id}");
        assert_eq!(
            item.matches("GET", "/items/42", true),
            Some(vec![("id".into(), "42".into())])
        );
        let any = pattern("* /*");
        assert!(any.matches("DELETE", "/", true).is_some());
        assert!(any.matches("GET", "/a/b/c", true).is_some());
        assert_eq!(any.to_string(), "* /*");
    }

    #[test]
    fn the_most_specific_pattern_wins() {
        let mut patterns = [
            pattern("* /*"),
            pattern("GET /items/{id}"),
            pattern("GET /items/special"),
            pattern("GET /items/*"),
        ];
        patterns.sort_by(|a, b| b.specificity_cmp(a));
        let order: Vec<String> = patterns.iter().map(ToString::to_string).collect();
        assert_eq!(
            order,
            [
                "GET /items/special",
                "GET /items/{id}",
                "GET /items/*",
                "* /*"
            ]
        );
    }

    #[test]
    fn bad_patterns_say_why() {
        assert!(
            RoutePattern::parse("post /x")
                .unwrap_err()
                .contains("method")
        );
        assert!(
            RoutePattern::parse("GET /a/*/b")
                .unwrap_err()
                .contains("only end")
        );
        assert!(
            RoutePattern::parse("GET x")
                .unwrap_err()
                .contains("expected a route")
        );
    }
}
