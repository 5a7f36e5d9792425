//! The policy file as its author meets it: both seed examples load and render their pages, and a
//! broken file is answered with file:line:column and what was expected there.

use std::path::{Path, PathBuf};

use expect_test::{expect, expect_file};
use sluice_policy::{Scope, load};

fn example(name: &str) -> (String, String) {
    let path: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .join(name)
        .join("policy.yaml");
    let text = std::fs::read_to_string(&path).expect("the example exists");
    (format!("examples/{name}/policy.yaml"), text)
}

fn docs_of(name: &str) -> String {
    let (file, text) = example(name);
    let policy = load(&file, &text).unwrap_or_else(|errors| panic!("{errors}"));
    sluice_policy::docs(&policy)
}

#[test]
fn the_streampixel_page_matches_its_seed() {
    let page = docs_of("streampixel");
    assert!(
        page.contains("`POST /projects/upload-file` | **1 request per 2 minutes** | Per `userId`")
    );
    assert!(page.contains("`POST /projects/distribute-file` | **1 request per 2 minutes**"));
    assert!(page.contains("Unlimited (subject to fair use)"));
    assert!(page.contains(r#""message": "Rate limit exceeded. Try again in 2 minutes.""#));
    expect_file!["snapshots/streampixel.md"].assert_eq(&page);
}

#[test]
fn the_pixel_patrol_page_matches_its_seed() {
    let page = docs_of("pixelpatrol");
    assert!(page.contains("**1,000 requests per minute** | Per site key"));
    assert!(page.contains("**2,000 requests per minute** | Per site key"));
    assert!(page.contains("| Text content (`body` field) | 100 KB |"));
    assert!(page.contains("| Metadata object | 10 KB |"));
    assert!(page.contains("| Image files (via URL) | 10 MB |"));
    assert!(page.contains("X-RateLimit-Reset: 1640995200"));
    assert!(page.contains(r#""retry_after": 60"#));
    expect_file!["snapshots/pixelpatrol.md"].assert_eq(&page);
}

#[test]
fn routes_resolve_to_the_most_specific_match() {
    let (file, text) = example("streampixel");
    let policy = load(&file, &text).unwrap_or_else(|errors| panic!("{errors}"));
    let (upload, _) = policy
        .route("POST", "/projects/upload-file")
        .expect("a route");
    assert_eq!(upload.limits.len(), 1);
    assert_eq!(upload.limits[0].per, Scope::Identity("user".into()));
    let (other, _) = policy.route("GET", "/projects").expect("the catch-all");
    assert!(other.unlimited);
    assert_eq!(other.limits[0].name, "fair-use");
}

#[test]
fn a_head_request_goes_by_the_get_route_of_its_path_unless_it_has_its_own() {
    let text = format!(
        "{HEAD}routes:\n  - match: GET /items\n    limits:\n      - rate: 1 per 1m\n        per: user\n  - match: \"* /*\"\n    unlimited: true\n"
    );
    let policy = load("policy.yaml", &text).unwrap_or_else(|errors| panic!("{errors}"));
    let pattern = |method: &str, path: &str| {
        policy
            .route(method, path)
            .map(|(route, _)| route.pattern.to_string())
    };
    assert_eq!(pattern("HEAD", "/items").as_deref(), Some("GET /items"));
    assert_eq!(pattern("POST", "/items").as_deref(), Some("* /*"));
    assert_eq!(pattern("HEAD", "/other").as_deref(), Some("* /*"));
    let own = text.replace(
        "  - match: \"* /*\"",
        "  - match: HEAD /items\n    unlimited: true\n  - match: \"* /*\"",
    );
    let policy = load("policy.yaml", &own).unwrap_or_else(|errors| panic!("{errors}"));
    let (route, _) = policy.route("HEAD", "/items").expect("a route");
    assert_eq!(route.pattern.to_string(), "HEAD /items");
}

/// Whether a POST to `path` goes by a limited route (the upload endpoint's), not the catch-all.
fn upload_route(policy: &sluice_policy::Policy, path: &str) -> bool {
    policy
        .route("POST", path)
        .is_some_and(|(route, _)| !route.unlimited)
}

#[test]
fn paths_match_without_regard_to_case_when_the_api_says_so() {
    let (file, text) = example("streampixel");
    let sensitive = load(&file, &text).unwrap_or_else(|errors| panic!("{errors}"));
    assert!(upload_route(&sensitive, "/projects/upload-file"));
    assert!(!upload_route(&sensitive, "/PROJECTS/Upload-File"));
    let text = text.replacen("service:\n", "service:\n  case_sensitive_paths: false\n", 1);
    let insensitive = load(&file, &text).unwrap_or_else(|errors| panic!("{errors}"));
    assert!(upload_route(&insensitive, "/projects/upload-file"));
    assert!(upload_route(&insensitive, "/PROJECTS/Upload-File"));
    assert!(upload_route(&insensitive, "/projects/%55pload-file"));
    // Two routes one path apart in case are then one route twice.
    let twice = "service:\n  name: Test\n  case_sensitive_paths: false\nroutes:\n  - match: GET /a\n    unlimited: true\n  - match: GET /A\n    unlimited: true\n";
    assert!(
        errors_of(twice).contains("route `GET /A` is defined twice"),
        "{}",
        errors_of(twice)
    );
}

#[test]
fn path_parameters_are_cut_before_matching_when_the_api_says_so() {
    let (file, text) = example("streampixel");
    let kept = load(&file, &text).unwrap_or_else(|errors| panic!("{errors}"));
    assert!(upload_route(&kept, "/projects/upload-file"));
    assert!(!upload_route(&kept, "/projects/upload-file;x=1"));
    let text = text.replacen("service:\n", "service:\n  path_parameters: strip\n", 1);
    let stripped = load(&file, &text).unwrap_or_else(|errors| panic!("{errors}"));
    for path in [
        "/projects/upload-file",
        "/projects/upload-file;x=1",
        "/projects;v=2/upload-file;jsessionid=abc",
        "/x/..;/projects/upload-file",
        "/projects/%75pload-file;x",
    ] {
        assert!(upload_route(&stripped, path), "{path}");
    }
    // A route no request could match is an error at its line and column.
    let never = "service:\n  name: Test\n  path_parameters: strip\nroutes:\n  - match: GET /items;v2\n    unlimited: true\n";
    let errors = errors_of(never);
    assert!(
        errors.contains("policy.yaml:5:12") && errors.contains("no request could match it"),
        "{errors}"
    );
    // Anything else is refused, naming what is allowed.
    let unknown = "service:\n  name: Test\n  path_parameters: drop\n";
    assert!(
        errors_of(unknown).contains("keep"),
        "{}",
        errors_of(unknown)
    );
}

#[test]
fn a_key_given_twice_is_named_at_its_second_place() {
    let errors = errors_of("service:\n  name: x\n  name: y\n");
    assert_eq!(errors, "policy.yaml:3:3: duplicate mapping key: name");
}

#[test]
fn cors_lists_origins_and_what_preflights_may_ask() {
    let text = "service:\n  name: Test\ncors:\n  allow_origins: [https://App.example.com, http://localhost:3000]\n  allow_credentials: true\n  allow_headers: [content-type, authorization]\n  max_age: 10m\nroutes:\n  - match: \"* /*\"\n    unlimited: true\n";
    let policy = load("policy.yaml", text).unwrap_or_else(|errors| panic!("{errors}"));
    let cors = policy.cors.expect("cors");
    assert!(cors.allows("https://app.example.com"));
    assert!(cors.allows("http://localhost:3000"));
    assert!(!cors.allows("https://evil.example.com"));
    assert!(!cors.allows("null"));
    assert!(cors.credentials);
    assert_eq!(cors.methods, "GET, HEAD, POST, PUT, PATCH, DELETE");
    assert_eq!(cors.headers.as_deref(), Some("content-type, authorization"));
    assert_eq!(cors.max_age, Some(600));

    let any = "service:\n  name: Test\ncors:\n  allow_origins: [\"*\"]\n  allow_headers: [\"*\"]\nroutes: []\n";
    let cors = load("policy.yaml", any).expect("loads").cors.expect("cors");
    assert!(cors.allows("https://anyone.example"));
    assert_eq!(cors.headers, None);

    for (text, location, message) in [
        (
            "service:\n  name: T\ncors:\n  allow_origins: [https://app.example.com/]\nroutes: []\n",
            "policy.yaml:4:19",
            "an origin is scheme://host[:port]",
        ),
        (
            "service:\n  name: T\ncors:\n  allow_origins: [\"*\"]\n  allow_credentials: true\nroutes: []\n",
            "policy.yaml:5:22",
            "browsers refuse credentials",
        ),
        (
            "service:\n  name: T\ncors:\n  allow_origins: []\nroutes: []\n",
            "policy.yaml:4:18",
            "list the origins allowed",
        ),
        (
            "service:\n  name: T\ncors:\n  allow_origins: [\"*\"]\n  allow_methods: [get]\nroutes: []\n",
            "policy.yaml:5:19",
            "expected an upper-case HTTP method",
        ),
    ] {
        let errors = errors_of(text);
        assert!(
            errors.contains(location) && errors.contains(message),
            "{text}\n{errors}"
        );
    }
}

fn errors_of(text: &str) -> String {
    match load("policy.yaml", text) {
        Ok(_) => "accepted".to_owned(),
        Err(errors) => errors.to_string(),
    }
}

const HEAD: &str = "service:\n  name: Test\nidentities:\n  user: { from: body, field: userId }\n";

#[test]
fn an_unknown_key_is_named_with_its_location() {
    let text = format!("{HEAD}routes:\n  - match: GET /a\n    limitz: []\n");
    expect!["policy.yaml:7:5: unknown field `limitz`, expected one of match, unlimited, limits, quotas, request, authenticate, on_store_failure, description"]
        .assert_eq(&errors_of(&text));
}

#[test]
fn a_bad_rate_says_what_was_expected() {
    let text = format!(
        "{HEAD}routes:\n  - match: GET /a\n    limits:\n      - rate: 1 per 2 fortnights\n        per: user\n"
    );
    expect![[r#"policy.yaml:8:15: expected a duration like `2m`, `90 seconds` or `1 hour`, found `2 fortnights` (in rate `1 per 2 fortnights`)"#]]
        .assert_eq(&errors_of(&text));
}

#[test]
fn ipv6_clients_count_by_their_network_unless_the_policy_says_otherwise() {
    let text = |client_ip: &str| {
        format!(
            "service:\n  name: Test\nidentities:\n  ip: {{ from: client_ip }}\n{client_ip}routes:\n  - match: GET /a\n    limits:\n      - rate: 1 per 1m\n        per: ip\n"
        )
    };
    let policy = |client_ip: &str| load("policy.yaml", &text(client_ip)).expect("valid");
    assert_eq!(policy("").ipv6_prefix, 64);
    assert_eq!(policy("client_ip:\n  ipv6_prefix: 128\n").ipv6_prefix, 128);
    expect!["policy.yaml:6:16: ipv6_prefix is a prefix length from 1 to 128, found 129"]
        .assert_eq(&errors_of(&text("client_ip:\n  ipv6_prefix: 129\n")));
}

#[test]
fn every_unknown_reference_is_reported_at_its_place() {
    let text = format!(
        "{HEAD}routes:\n  - match: GET /a\n    limits:\n      - rate: 1 per 1m\n        per: usr\n    quotas: [monthly]\n"
    );
    expect![[r#"
        policy.yaml:9:14: unknown identity `usr`; expected `global` or one of the identities defined under `identities:` (user)
        policy.yaml:10:14: no plan defines a quota named `monthly`; define it under a plan's `quotas:`"#]]
    .assert_eq(&errors_of(&text));
}

#[test]
fn bad_codes_templates_and_patterns_are_located() {
    let code = "service: { name: T }\nerrors:\n  messages:\n    rate_limitd: hi\nroutes: []\n";
    assert!(errors_of(code).starts_with("policy.yaml:4:5: unknown error code `rate_limitd`"));
    let template = "service: { name: T }\nerrors:\n  messages:\n    rate_limited: \"in {retry}\"\nroutes: []\n";
    let error = errors_of(template);
    assert!(
        error.starts_with("policy.yaml:4:19: unknown placeholder `{retry}`"),
        "{error}"
    );
    let pattern = "service: { name: T }\nroutes:\n  - match: get /a\n";
    let error = errors_of(pattern);
    assert!(
        error.starts_with("policy.yaml:3:12: expected an upper-case HTTP method"),
        "{error}"
    );
}

#[test]
fn a_placeholder_the_failure_cannot_fill_is_an_error() {
    let text = "service: { name: T }\nerrors:\n  messages:\n    missing_field: \"{field} in {retry_in}\"\nroutes: []\n";
    expect![[r#"policy.yaml:4:20: the `missing_field` message uses {retry_in}, which a `missing_field` failure does not supply"#]]
        .assert_eq(&errors_of(text));
}

#[test]
fn a_wrong_type_and_a_duplicate_route_are_errors() {
    let wrong = "service: { name: T }\nroutes:\n  - match: GET /a\n    unlimited: maybe\n";
    assert!(
        errors_of(wrong).starts_with("policy.yaml:4:16:"),
        "{}",
        errors_of(wrong)
    );
    let twice = "service: { name: T }\nroutes:\n  - match: GET /a\n  - match: GET /a\n";
    assert_eq!(
        errors_of(twice),
        "policy.yaml:4:12: route `GET /a` is defined twice"
    );
}

#[test]
fn a_keys_file_with_a_bad_hash_or_an_unknown_plan_is_answered_with_locations() {
    let (file, text) = example("pixelpatrol");
    let policy = load(&file, &text).unwrap_or_else(|errors| panic!("{errors}"));
    let hash = format!("sha256:{}", "ab".repeat(32));
    let keys = format!(
        "keys:\n  - id: k1\n    hash: sha256:123\n  - id: k2\n    hash: {hash}\n    plan: platinum\n"
    );
    let errors = sluice_policy::load_keys("keys.yaml", &keys, &policy)
        .expect_err("two mistakes")
        .to_string();
    let lines: Vec<&str> = errors.lines().collect();
    assert_eq!(lines.len(), 2, "{errors}");
    assert!(
        lines[0].starts_with("keys.yaml:3:11: expected `sha256:`"),
        "{errors}"
    );
    assert!(
        lines[1].starts_with("keys.yaml:6:11: unknown plan `platinum`"),
        "{errors}"
    );
    let typo = sluice_policy::load_keys("keys.yaml", "keys:\n  - id: k\n    hsh: x\n", &policy)
        .expect_err("unknown field")
        .to_string();
    assert!(typo.starts_with("keys.yaml:3:5:"), "{typo}");
    let good = format!("keys:\n  - id: k2\n    hash: {hash}\n    plan: pro\n    status: revoked\n");
    let records = sluice_policy::load_keys("keys.yaml", &good, &policy).expect("valid");
    assert_eq!(records[0].status, sluice_policy::KeyStatus::Revoked);
    assert!(
        !format!("{:?}", records[0]).contains("ab"),
        "the hash stays out of Debug"
    );
}

#[test]
fn a_limit_counted_in_blocks_is_read_and_a_block_it_cannot_take_is_located() {
    let hot = format!(
        "{HEAD}routes:\n  - match: GET /a\n    limits:\n      - rate: 10000 per 1s\n        per: global\n        block: 100\n"
    );
    let policy = load("policy.yaml", &hot).unwrap_or_else(|errors| panic!("{errors}"));
    let (route, _) = policy.route("GET", "/a").expect("a route");
    assert_eq!(route.limits[0].limit.block(), 100);

    let sliding = format!(
        "{HEAD}routes:\n  - match: GET /a\n    limits:\n      - rate: 10 per 1s\n        per: global\n        algorithm: sliding_window\n        block: 5\n"
    );
    expect!["policy.yaml:11:16: invalid limit `limit-0`: a block of 5 needs a fixed window or a token bucket that does not count rejected requests and is not in shadow mode, and a block between 2 and its capacity (and burst)"]
        .assert_eq(&errors_of(&sliding));
}

#[test]
fn a_limit_in_shadow_mode_is_read_kept_by_overrides_left_off_the_page_and_refused_where_it_cannot_be()
 {
    let trial = format!(
        "{HEAD}routes:\n  - match: GET /a\n    limits:\n      - name: per-user\n        rate: 10 per 1m\n        per: user\n        shadow: true\n  - match: GET /b\n    limits:\n      - rate: 5 per 1m\n        per: user\n      - rate: 1 per 1s\n        per: user\n        shadow: true\noverrides:\n  - identity: user\n    value: big\n    limits:\n      per-user: 1000 per 1m\n"
    );
    let policy = load("policy.yaml", &trial).unwrap_or_else(|errors| panic!("{errors}"));
    let (route, _) = policy.route("GET", "/a").expect("a route");
    assert!(route.limits[0].limit.is_shadow());
    let (route, _) = policy.route("GET", "/b").expect("a route");
    assert!(!route.limits[0].limit.is_shadow());
    assert!(route.limits[1].limit.is_shadow());
    assert!(policy.overrides[0].limits["per-user"].limit.is_shadow());
    let runtime = overridden_at_run_time(&policy, "per-user");
    assert!(runtime.limits["per-user"].limit.is_shadow());
    // The published page promises what is enforced: a limit on trial is not on it.
    let page = sluice_policy::docs(&policy);
    assert!(page.contains("| `GET /a` | No limit | — |"), "{page}");
    assert!(
        page.contains("| `GET /b` | **5 requests per minute** |"),
        "{page}"
    );
    assert!(!page.contains("1 request per second"), "{page}");

    let concurrency = format!(
        "{HEAD}routes:\n  - match: GET /a\n    limits:\n      - rate: 2 per 1m\n        per: user\n        algorithm: concurrency\n        shadow: true\n"
    );
    expect![
        "policy.yaml:11:17: invalid limit `limit-0`: a concurrency limit cannot run in shadow mode"
    ]
    .assert_eq(&errors_of(&concurrency));
    let blocks = format!(
        "{HEAD}routes:\n  - match: GET /a\n    limits:\n      - rate: 100 per 1s\n        per: global\n        block: 10\n        shadow: true\n"
    );
    expect!["policy.yaml:11:17: invalid limit `limit-0`: a block of 10 needs a fixed window or a token bucket that does not count rejected requests and is not in shadow mode, and a block between 2 and its capacity (and burst)"].assert_eq(&errors_of(&blocks));

    let envoy = format!("{ENVOY}    - match: [user]\n      rate: 10 per 1m\n      shadow: true\n");
    let policy = load("policy.yaml", &envoy).unwrap_or_else(|errors| panic!("{errors}"));
    let rules = policy.envoy.as_ref().expect("an envoy section");
    let rule = rules.rule([("user", "42")].into_iter()).expect("a rule");
    assert!(rule.limit.as_ref().expect("a limit").limit.is_shadow());
}

#[test]
fn an_override_keeps_a_limit_counting_the_requests_it_refuses() {
    let text = format!(
        "{HEAD}routes:\n  - match: GET /poll\n    limits:\n      - name: polls\n        rate: 10 per 1m\n        per: user\n        count_rejected: true\noverrides:\n  - identity: user\n    value: big\n    limits:\n      polls: 1000 per 1m\n"
    );
    let policy = load("policy.yaml", &text).unwrap_or_else(|errors| panic!("{errors}"));
    let replaced = &policy.overrides[0].limits["polls"];
    assert_eq!(replaced.rate.count, 1000);
    assert!(replaced.limit.counts_rejected());
    let runtime = overridden_at_run_time(&policy, "polls");
    assert!(runtime.limits["polls"].limit.counts_rejected());
}

/// User `bigger`'s override of `limit` to 5000 per minute, set at run time as the admin API
/// sets one.
fn overridden_at_run_time(
    policy: &sluice_policy::Policy,
    limit: &str,
) -> sluice_policy::OverrideRule {
    policy
        .runtime_override(
            "user",
            "bigger",
            None,
            &[(limit.to_owned(), "5000 per 1m".to_owned())].into(),
        )
        .expect("an override")
}

const ENVOY: &str = "service:\n  name: Edge\nroutes: []\nenvoy:\n  domain: edge\n  descriptors:\n";

#[test]
fn an_envoy_descriptor_counts_against_the_most_specific_rule_it_matches() {
    let text = format!(
        "{ENVOY}    - match: [generic_key=uploads, user]\n      rate: 1 per 2m\n      algorithm: fixed_window\n    - match: [generic_key=uploads, user=vip]\n      name: vip-uploads\n      rate: 100 per 2m\n    - match: [remote_address]\n      rate: 10 per 1s\n    - match: [remote_address=10.0.0.9]\n      unlimited: true\n"
    );
    let policy = load("policy.yaml", &text).unwrap_or_else(|errors| panic!("{errors}"));
    let envoy = policy.envoy.as_ref().expect("an envoy section");
    assert_eq!(envoy.domain, "edge");
    let rule = |entries: &[(&str, &str)]| {
        envoy.rule(entries.iter().copied()).map(|rule| {
            rule.limit
                .as_ref()
                .map_or("unlimited", |limit| &limit.name)
                .to_owned()
        })
    };
    // A fixed value wins over any value, wherever the rule is written.
    assert_eq!(
        rule(&[("generic_key", "uploads"), ("user", "vip")]).as_deref(),
        Some("vip-uploads")
    );
    assert_eq!(
        rule(&[("generic_key", "uploads"), ("user", "42")]).as_deref(),
        Some("generic_key=uploads, user")
    );
    assert_eq!(
        rule(&[("remote_address", "10.0.0.1")]).as_deref(),
        Some("remote_address")
    );
    // Keys in another order, another count of entries, or another fixed value: no rule.
    assert_eq!(rule(&[("user", "42"), ("generic_key", "uploads")]), None);
    assert_eq!(rule(&[("generic_key", "uploads")]), None);
    assert_eq!(rule(&[("generic_key", "downloads"), ("user", "42")]), None);
    let uploads = envoy
        .rule([("generic_key", "uploads"), ("user", "42")].into_iter())
        .expect("a rule");
    let limit = uploads.limit.as_ref().expect("a limit");
    assert_eq!(limit.counter, "envoy/generic_key=uploads, user");
    assert_eq!(limit.rate.count, 1);
    // An `unlimited` rule exempts the value it fixes from a less specific rule's limit.
    assert_eq!(
        rule(&[("remote_address", "10.0.0.9")]).as_deref(),
        Some("unlimited")
    );
}

#[test]
fn a_bad_envoy_section_is_located() {
    let twice = format!(
        "{ENVOY}    - match: [user]\n      rate: 1 per 1s\n    - match: [user]\n      rate: 2 per 1s\n"
    );
    expect!["policy.yaml:9:14: descriptor `user` is listed twice"].assert_eq(&errors_of(&twice));
    let concurrency =
        format!("{ENVOY}    - match: [user]\n      rate: 1 per 1s\n      algorithm: concurrency\n");
    expect!["policy.yaml:9:18: Envoy never says when a request ends, so its descriptors cannot hold concurrency slots; choose token_bucket, fixed_window or sliding_window"]
        .assert_eq(&errors_of(&concurrency));
    let empty = format!("{ENVOY}    - match: [\"=x\"]\n      rate: 1 per 1s\n");
    expect!["policy.yaml:7:15: `=x` is not an entry: write `key` for any value, or `key=value`"]
        .assert_eq(&errors_of(&empty));
    let typo = format!("{ENVOY}    - match: [user]\n      rat: 1 per 1s\n");
    expect!["policy.yaml:8:7: unknown field `rat`, expected one of match, name, rate, unlimited, algorithm, burst, count_rejected, shadow"]
        .assert_eq(&errors_of(&typo));
    let both = format!("{ENVOY}    - match: [user]\n      rate: 1 per 1s\n      unlimited: true\n");
    expect!["policy.yaml:9:18: descriptor `user` is `unlimited` but also has a rate; choose one"]
        .assert_eq(&errors_of(&both));
    let neither = format!("{ENVOY}    - match: [user]\n");
    expect!["policy.yaml:7:14: descriptor `user` needs a `rate` (like `100 per 1m`), or `unlimited: true`"]
        .assert_eq(&errors_of(&neither));
}
