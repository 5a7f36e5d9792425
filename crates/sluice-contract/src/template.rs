//! Message templates: the words of an error message, with `{placeholders}` filled from the
//! failure. Parsed once when the policy loads, so a typo in a placeholder is a policy error, not
//! a broken message at run time.

use std::fmt;
use std::time::Duration;

use crate::words::{ceil_seconds, duration_words, seconds_words, size_words, window_words};

/// A value a template can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placeholder {
    /// `{retry_in}`: the wait in words, largest unit first ("2 minutes").
    RetryIn,
    /// `{retry_in_seconds}`: the wait in whole seconds, in words ("60 seconds").
    RetryInSeconds,
    /// `{retry_after}`: the wait in whole seconds, as a number ("60").
    RetryAfter,
    /// `{limit}`: the limit's capacity ("1000").
    Limit,
    /// `{window}`: the limit's window in words ("minute", "2 minutes").
    Window,
    /// `{field}`: the name of the field at fault ("fileUrl").
    Field,
    /// `{max_size}`: the size allowed ("100 KB").
    MaxSize,
    /// `{reason}`: why a field is invalid ("must be a string").
    Reason,
}

impl Placeholder {
    const ALL: [(Placeholder, &'static str); 8] = [
        (Placeholder::RetryIn, "retry_in"),
        (Placeholder::RetryInSeconds, "retry_in_seconds"),
        (Placeholder::RetryAfter, "retry_after"),
        (Placeholder::Limit, "limit"),
        (Placeholder::Window, "window"),
        (Placeholder::Field, "field"),
        (Placeholder::MaxSize, "max_size"),
        (Placeholder::Reason, "reason"),
    ];

    /// The name written between braces.
    pub fn name(self) -> &'static str {
        Placeholder::ALL
            .iter()
            .find(|(placeholder, _)| *placeholder == self)
            .map_or("", |(_, name)| name)
    }

    fn from_name(name: &str) -> Option<Placeholder> {
        Placeholder::ALL
            .iter()
            .find(|(_, candidate)| *candidate == name)
            .map(|(placeholder, _)| *placeholder)
    }
}

/// Why a template does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TemplateError {
    /// `{name}` with a name no failure supplies.
    #[error("unknown placeholder `{{{name}}}`; expected one of {expected}")]
    UnknownPlaceholder {
        /// The name written.
        name: String,
        /// The names that exist.
        expected: String,
    },
    /// A `{` without its `}`.
    #[error("unclosed `{{` in message template (write `{{{{` for a literal brace)")]
    Unclosed,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece {
    Text(String),
    Value(Placeholder),
}

/// A parsed message template. `{{` and `}}` stand for literal braces. The default is empty.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Template {
    pieces: Vec<Piece>,
}

/// The values of one failure that a template may name; `None` renders as nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Values {
    /// How long until the request would be admitted.
    pub retry: Option<Duration>,
    /// The limit's capacity.
    pub limit: Option<u64>,
    /// The limit's window.
    pub window: Option<Duration>,
    /// The field at fault.
    pub field: Option<String>,
    /// The size allowed, in bytes.
    pub max_size: Option<u64>,
    /// Why the field is invalid.
    pub reason: Option<String>,
}

impl Template {
    /// Parses `text`.
    pub fn parse(text: &str) -> Result<Template, TemplateError> {
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(at) = rest.find(['{', '}']) {
            let (before, from) = rest.split_at(at);
            literal.push_str(before);
            if let Some(after) = from.strip_prefix("{{") {
                literal.push('{');
                rest = after;
            } else if let Some(after) = from.strip_prefix("}}") {
                literal.push('}');
                rest = after;
            } else if let Some(after) = from.strip_prefix('{') {
                let end = after.find('}').ok_or(TemplateError::Unclosed)?;
                let (name, after) = after.split_at(end);
                let placeholder = Placeholder::from_name(name.trim()).ok_or_else(|| {
                    TemplateError::UnknownPlaceholder {
                        name: name.to_owned(),
                        expected: Placeholder::ALL
                            .iter()
                            .map(|(_, name)| format!("{{{name}}}"))
                            .collect::<Vec<_>>()
                            .join(", "),
                    }
                })?;
                if !literal.is_empty() {
                    pieces.push(Piece::Text(std::mem::take(&mut literal)));
                }
                pieces.push(Piece::Value(placeholder));
                rest = after.get(1..).unwrap_or_default();
            } else {
                // A lone `}` is taken literally.
                literal.push('}');
                rest = from.get(1..).unwrap_or_default();
            }
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            pieces.push(Piece::Text(literal));
        }
        Ok(Template { pieces })
    }

    /// The placeholders the template names.
    pub fn placeholders(&self) -> impl Iterator<Item = Placeholder> + '_ {
        self.pieces.iter().filter_map(|piece| match piece {
            Piece::Value(placeholder) => Some(*placeholder),
            Piece::Text(_) => None,
        })
    }

    /// The message for `values`.
    pub fn render(&self, values: &Values) -> String {
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Text(text) => out.push_str(text),
                Piece::Value(placeholder) => {
                    if let Some(value) = value_of(*placeholder, values) {
                        out.push_str(&value);
                    }
                }
            }
        }
        out
    }
}

fn value_of(placeholder: Placeholder, values: &Values) -> Option<String> {
    match placeholder {
        Placeholder::RetryIn => values.retry.map(duration_words),
        Placeholder::RetryInSeconds => values.retry.map(seconds_words),
        Placeholder::RetryAfter => values.retry.map(|wait| ceil_seconds(wait).to_string()),
        Placeholder::Limit => values.limit.map(|limit| limit.to_string()),
        Placeholder::Window => values.window.map(window_words),
        Placeholder::Field => values.field.clone(),
        Placeholder::MaxSize => values.max_size.map(size_words),
        Placeholder::Reason => values.reason.clone(),
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for piece in &self.pieces {
            match piece {
                Piece::Text(text) => f.write_str(&text.replace('{', "{{").replace('}', "}}"))?,
                Piece::Value(placeholder) => write!(f, "{{{}}}", placeholder.name())?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(template: &str, values: &Values) -> String {
        Template::parse(template)
            .unwrap_or_else(|error| panic!("{template}: {error}"))
            .render(values)
    }

    #[test]
    fn placeholders_are_filled_from_the_failure() {
        let values = Values {
            retry: Some(Duration::from_secs(120)),
            field: Some("fileUrl".into()),
            ..Values::default()
        };
        assert_eq!(
            render("Rate limit exceeded. Try again in {retry_in}.", &values),
            "Rate limit exceeded. Try again in 2 minutes."
        );
        assert_eq!(
            render("Missing required field: {field}", &values),
            "Missing required field: fileUrl"
        );
        assert_eq!(
            render("{{literal}} {retry_after}", &values),
            "{literal} 120"
        );
    }

    #[test]
    fn a_typo_in_a_placeholder_is_an_error_naming_it() {
        let error = Template::parse("Try again in {retry_inn}.").unwrap_err();
        assert!(error.to_string().contains("`{retry_inn}`"), "{error}");
        assert!(error.to_string().contains("{retry_in}"), "{error}");
        assert_eq!(
            Template::parse("oops {field").unwrap_err(),
            TemplateError::Unclosed
        );
    }

    #[test]
    fn a_template_prints_back_as_written() {
        let text = "{{x}} Try again in {retry_in}.";
        assert_eq!(
            Template::parse(text).map(|t| t.to_string()),
            Ok(text.into())
        );
    }
}
