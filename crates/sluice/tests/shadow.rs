//! A limit in shadow mode through the real server: requests it would refuse are admitted, its
//! clients are not told of it, and the operator sees what it would have done in `/metrics` and
//! in `/v1/usage`.

mod support;

use std::time::Duration;

use serde_json::{Value, json};

const POLICY: &str = "\
service:
  name: Uploads
identities:
  user:
    from: header
    name: x-user
headers:
  x_ratelimit: unix_seconds
routes:
  - match: POST /upload
    limits:
      - name: uploads
        rate: 100 per 1d
        per: user
      - name: uploads-trial
        rate: 2 per 1h
        per: user
        shadow: true
";

const TOKEN: &str = "shadow-test-token";

#[test]
fn check_counts_the_limits_on_trial() {
    let said = support::check(POLICY);
    assert!(
        said.ends_with(": ok (1 routes, 0 plans, 1 limit in shadow mode)\n"),
        "{said}"
    );
}

#[tokio::test]
async fn a_limit_on_trial_refuses_nothing_and_shows_the_operator_what_it_would_have_refused() {
    let (_dir, server) = support::serve_policy(POLICY, &["--admin-token", TOKEN], false).await;
    let client = support::client(Duration::from_secs(5));

    for check in 1..=3 {
        let response = client
            .post(format!("http://{}/v1/check", server.listen))
            .header("content-type", "application/json")
            .body(
                json!({"method": "POST", "path": "/upload", "headers": {"x-user": "ada"}})
                    .to_string(),
            )
            .send()
            .await
            .expect("the server answers");
        let answer: Value =
            serde_json::from_slice(&response.bytes().await.expect("a body")).expect("JSON");
        assert_eq!(answer["allowed"], true, "{answer}");
        // Clients see the enforced limit only.
        let limit = answer["headers"]["x-ratelimit-limit"].clone();
        assert_eq!(limit, "100", "{answer}");
        // The caller learns which limits on trial would have refused it.
        let shadow = if check == 3 {
            json!(["uploads-trial"])
        } else {
            Value::Null
        };
        assert_eq!(answer["shadow"], shadow, "{answer}");
    }

    let admin = |path: &str| {
        client
            .get(format!("http://{}{path}", server.admin))
            .bearer_auth(TOKEN)
            .send()
    };
    let metrics = admin("/metrics")
        .await
        .expect("the admin API answers")
        .text()
        .await
        .expect("a body");
    assert!(
        metrics.contains(r#"sluice_limit_shadow_denials_total{limit="uploads-trial"} 1"#),
        "{metrics}"
    );
    assert!(!metrics.contains("sluice_limit_denials_total"), "{metrics}");

    let usage = admin("/v1/usage?identity=user&value=ada")
        .await
        .expect("the admin API answers")
        .bytes()
        .await
        .expect("a body");
    let usage: Value = serde_json::from_slice(&usage).expect("JSON");
    let entry = |name: &str| {
        usage["usage"]
            .as_array()
            .expect("a list")
            .iter()
            .find(|entry| entry["name"] == name)
            .unwrap_or_else(|| panic!("no {name} in {usage}"))
    };
    let trial = entry("uploads-trial");
    assert_eq!(
        (&trial["shadow"], &trial["used"], &trial["remaining"]),
        (&json!(true), &json!(2), &json!(0)),
        "{usage}"
    );
    let enforced = entry("uploads");
    assert_eq!(
        (&enforced["shadow"], &enforced["used"]),
        (&json!(false), &json!(3)),
        "{usage}"
    );
}
