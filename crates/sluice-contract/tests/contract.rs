//! The wire contract as a client sees it: the reference document stays in step with the registry,
//! every code renders in every envelope, and headers read as each dialect promises.

use std::time::Duration;

use expect_test::{expect, expect_file};
use http::StatusCode;
use sluice_contract::{
    Envelope, ErrorCode, ErrorReply, HeaderDialect, LimitView, ResetUnit, Template, Values,
    decimal_value, rate_limit_headers, reference_markdown,
};

#[test]
fn the_reference_document_is_fresh() {
    expect_file!["../../../docs/error-codes.md"].assert_eq(&reference_markdown());
}

#[test]
fn code_names_are_unique_and_round_trip() {
    let mut names: Vec<&str> = ErrorCode::ALL.iter().map(|code| code.name()).collect();
    for code in ErrorCode::ALL {
        assert_eq!(ErrorCode::from_name(code.name()), Some(*code));
        let template = Template::parse(code.default_message());
        assert!(template.is_ok(), "{code}");
        for placeholder in template.iter().flat_map(Template::placeholders) {
            assert!(
                code.supplies(placeholder),
                "{code} does not supply {placeholder:?}"
            );
        }
    }
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), ErrorCode::ALL.len());
}

fn reply(code: ErrorCode) -> ErrorReply {
    let values = Values {
        retry: Some(Duration::from_secs(120)),
        limit: Some(1),
        window: Some(Duration::from_secs(120)),
        field: Some("fileUrl".into()),
        max_size: Some(100_000),
        reason: Some("must be a string".into()),
    };
    let message = Template::parse(code.default_message())
        .map(|template| template.render(&values))
        .unwrap_or_default();
    ErrorReply {
        code,
        status: code.status(),
        title: code.title().into(),
        message,
        kind: (code == ErrorCode::QuotaExceeded).then(|| "moderation_limit".into()),
        retry_after: code.retryable().then_some(120),
        request_id: Some("req-1".into()),
    }
}

fn render_all(envelope: &Envelope) -> String {
    ErrorCode::ALL
        .iter()
        .map(|code| {
            let rendered = envelope.render(&reply(*code));
            format!(
                "{} {} {}\n",
                rendered.status.as_u16(),
                rendered.content_type,
                String::from_utf8_lossy(&rendered.body)
            )
        })
        .collect()
}

#[test]
fn every_code_in_the_message_envelope() {
    expect_file!["snapshots/message.txt"].assert_eq(&render_all(&Envelope::Message {
        request_id_field: None,
    }));
}

#[test]
fn every_code_in_the_error_message_envelope() {
    expect_file!["snapshots/error_message.txt"].assert_eq(&render_all(&Envelope::ErrorMessage {
        request_id_field: None,
    }));
}

#[test]
fn every_code_in_problem_json() {
    expect_file!["snapshots/problem.txt"].assert_eq(&render_all(&Envelope::Problem {
        type_base: Some("https://errors.example.com/".into()),
    }));
}

#[test]
fn the_seed_bodies_render_exactly() {
    let streampixel = Envelope::Message {
        request_id_field: None,
    };
    let rendered = streampixel.render(&ErrorReply {
        message: "Rate limit exceeded. Try again in 2 minutes.".into(),
        ..reply(ErrorCode::RateLimited)
    });
    expect![[r#"{"message":"Rate limit exceeded. Try again in 2 minutes."}"#]]
        .assert_eq(&String::from_utf8_lossy(&rendered.body));

    let pixelpatrol = Envelope::ErrorMessage {
        request_id_field: None,
    };
    let rate = Template::parse("Too many requests. Please try again in {retry_in_seconds}.")
        .map(|t| {
            t.render(&Values {
                retry: Some(Duration::from_millis(59_200)),
                ..Values::default()
            })
        })
        .unwrap_or_default();
    let rendered = pixelpatrol.render(&ErrorReply {
        title: "Rate limit exceeded".into(),
        message: rate,
        retry_after: Some(60),
        ..reply(ErrorCode::RateLimited)
    });
    expect![[r#"{"error":"Rate limit exceeded","message":"Too many requests. Please try again in 60 seconds.","retry_after":60}"#]]
        .assert_eq(&String::from_utf8_lossy(&rendered.body));
    let rendered = pixelpatrol.render(&ErrorReply {
        title: "Moderation limit exceeded".into(),
        message: "Your team has reached the monthly moderation limit. Please upgrade your plan."
            .into(),
        ..reply(ErrorCode::QuotaExceeded)
    });
    assert_eq!(rendered.status, StatusCode::FORBIDDEN);
    expect![[r#"{"error":"Moderation limit exceeded","type":"moderation_limit","message":"Your team has reached the monthly moderation limit. Please upgrade your plan."}"#]]
        .assert_eq(&String::from_utf8_lossy(&rendered.body));
}

fn show(headers: Vec<(http::HeaderName, http::HeaderValue)>) -> String {
    headers
        .into_iter()
        .map(|(name, value)| format!("{name}: {}\n", value.to_str().unwrap_or("<binary>")))
        .collect()
}

fn limits(denied: bool) -> Vec<LimitView<'static>> {
    vec![
        LimitView {
            name: "per-minute",
            limit: 1000,
            remaining: if denied { 0 } else { 999 },
            window: Duration::from_secs(60),
            reset_after: Duration::from_millis(59_200),
            retry: denied.then(|| Duration::from_millis(400)),
        },
        LimitView {
            name: "monthly",
            limit: 50_000,
            remaining: 40_000,
            window: Duration::from_secs(30 * 86_400),
            reset_after: Duration::from_secs(86_400),
            retry: None,
        },
    ]
}

const NOW: Duration = Duration::from_secs(1_640_995_140);

#[test]
fn x_ratelimit_headers_in_each_reset_unit() {
    let mut out = String::new();
    for unit in [
        ResetUnit::UnixSeconds,
        ResetUnit::Seconds,
        ResetUnit::Millis,
    ] {
        let dialect = HeaderDialect {
            x_ratelimit: Some(unit),
            ietf: false,
        };
        out.push_str(&format!("-- {unit:?}, admitted\n"));
        out.push_str(&show(rate_limit_headers(&dialect, &limits(false), NOW)));
        out.push_str(&format!("-- {unit:?}, denied\n"));
        out.push_str(&show(rate_limit_headers(&dialect, &limits(true), NOW)));
    }
    expect![[r#"
        -- UnixSeconds, admitted
        x-ratelimit-limit: 50000
        x-ratelimit-remaining: 40000
        x-ratelimit-reset: 1641081540
        -- UnixSeconds, denied
        x-ratelimit-limit: 1000
        x-ratelimit-remaining: 0
        x-ratelimit-reset: 1640995200
        retry-after: 1
        -- Seconds, admitted
        x-ratelimit-limit: 50000
        x-ratelimit-remaining: 40000
        x-ratelimit-reset: 86400
        -- Seconds, denied
        x-ratelimit-limit: 1000
        x-ratelimit-remaining: 0
        x-ratelimit-reset: 60
        retry-after: 1
        -- Millis, admitted
        x-ratelimit-limit: 50000
        x-ratelimit-remaining: 40000
        x-ratelimit-reset: 86400000
        -- Millis, denied
        x-ratelimit-limit: 1000
        x-ratelimit-remaining: 0
        x-ratelimit-reset: 59200
        retry-after: 1
    "#]]
    .assert_eq(&out);
}

#[test]
fn ietf_headers_cover_every_limit_and_retry_after_is_never_earlier_than_t() {
    let dialect = HeaderDialect {
        x_ratelimit: None,
        ietf: true,
    };
    let mut out = show(rate_limit_headers(&dialect, &limits(false), NOW));
    out.push_str("--\n");
    out.push_str(&show(rate_limit_headers(&dialect, &limits(true), NOW)));
    expect![[r#"
        ratelimit-policy: "per-minute";q=1000;w=60, "monthly";q=50000;w=2592000
        ratelimit: "per-minute";r=999;t=60, "monthly";r=40000;t=86400
        --
        ratelimit-policy: "per-minute";q=1000;w=60, "monthly";q=50000;w=2592000
        ratelimit: "per-minute";r=0;t=1, "monthly";r=40000;t=86400
        retry-after: 1
    "#]]
    .assert_eq(&out);
}

#[test]
fn the_closest_limit_is_the_one_with_the_smallest_share_left() {
    let mut views = limits(false);
    if let Some(monthly) = views.get_mut(1) {
        monthly.remaining = 10;
    }
    let dialect = HeaderDialect {
        x_ratelimit: Some(ResetUnit::Seconds),
        ietf: false,
    };
    expect![[r#"
        x-ratelimit-limit: 50000
        x-ratelimit-remaining: 10
        x-ratelimit-reset: 86400
    "#]]
    .assert_eq(&show(rate_limit_headers(&dialect, &views, NOW)));
}

#[test]
fn decimal_header_values_read_as_their_numbers() {
    for number in [0, 7, 10, 999, 1_000_000, 1_700_000_000, u64::MAX] {
        assert_eq!(decimal_value(number), number.to_string().as_str());
    }
}
