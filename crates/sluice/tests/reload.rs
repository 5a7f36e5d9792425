//! `sluice serve` reloads its policy on SIGHUP: the new one decides from the next request on,
//! over the same counters; one that does not load is reported with its file, line and column,
//! and the one in force stays.

mod support;

use std::path::Path;
use std::time::Duration;

use support::Server;

/// A policy whose one route allows `uploads` per day per user.
fn policy(uploads: u64) -> String {
    format!(
        "\
service:
  name: Uploads
identities:
  user:
    from: header
    name: x-user
routes:
  - match: POST /upload
    limits:
      - name: uploads
        rate: {uploads} per 1d
        algorithm: fixed_window
        per: user
"
    )
}

/// The day (the window of a 1-day fixed window) the machine's clock is in.
fn day() -> u64 {
    use sluice_core::{Clock, SystemClock};
    SystemClock::new().now().as_nanos() / 86_400_000_000_000
}

/// Whether the decision API admits an upload by `user`.
async fn admitted(client: &reqwest::Client, server: &Server, user: &str) -> bool {
    admitted_to(client, server, "/upload", user).await
}

/// Whether the decision API admits `POST path` by `user`.
async fn admitted_to(client: &reqwest::Client, server: &Server, path: &str, user: &str) -> bool {
    let response = client
        .post(format!("http://{}/v1/check", server.listen))
        .header("content-type", "application/json")
        .body(
            serde_json::json!({"method": "POST", "path": path, "headers": {"x-user": user}})
                .to_string(),
        )
        .send()
        .await
        .expect("the server answers");
    let answer: serde_json::Value =
        serde_json::from_slice(&response.bytes().await.expect("a body")).expect("JSON");
    answer["allowed"] == true
}

/// `sluice serve` of `text` on the memory store with `extra` flags, logging into `server.log`
/// beside its policy file.
async fn serve(text: String, extra: &[&str]) -> (tempfile::TempDir, Server) {
    support::serve_policy(&text, extra, true).await
}

/// The admin API's token in these tests.
const TOKEN: &str = "reload-test-token";

/// What the admin API's `/metrics` says.
async fn metrics(client: &reqwest::Client, server: &Server) -> String {
    let response = client
        .get(format!("http://{}/metrics", server.admin))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("the admin API answers");
    response.text().await.expect("a body")
}

/// Waits until the log has `count` lines containing `text`, and returns the last.
async fn logged(log: &Path, text: &str, count: usize) -> String {
    for _ in 0..500 {
        let contents = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = contents
            .lines()
            .filter(|line| line.contains(text))
            .collect();
        if lines.len() >= count
            && let Some(line) = lines.last()
        {
            return (*line).to_owned();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "no {count} lines with `{text}` in the log:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

#[tokio::test]
async fn sighup_reloads_the_policy_and_keeps_the_one_in_force_when_the_new_one_is_broken() {
    let (dir, server) = serve(policy(1), &["--admin-token", TOKEN]).await;
    let (file, log) = (
        dir.path().join("policy.yaml"),
        dir.path().join("server.log"),
    );
    let client = support::client(Duration::from_secs(5));

    // A day's window: a run that straddles midnight tries again with other users.
    let mut within_one_day = false;
    let mut reloads = 0;
    for attempt in 0..3 {
        let started = day();
        let (first, second) = (format!("a{attempt}"), format!("b{attempt}"));
        std::fs::write(&file, policy(1)).expect("written");
        server.signal("HUP");
        reloads += 1;
        logged(&log, "policy reloaded", reloads).await;
        assert!(admitted(&client, &server, &first).await);
        let over_one = admitted(&client, &server, &first).await;

        std::fs::write(&file, policy(3)).expect("written");
        server.signal("HUP");
        reloads += 1;
        let line = logged(&log, "policy reloaded", reloads).await;
        assert!(line.contains("routes=1"), "{line}");
        // The first user's upload still counts: two more, then refused.
        let after = [
            admitted(&client, &server, &first).await,
            admitted(&client, &server, &first).await,
            admitted(&client, &server, &first).await,
        ];
        let fresh = [
            admitted(&client, &server, &second).await,
            admitted(&client, &server, &second).await,
            admitted(&client, &server, &second).await,
            admitted(&client, &server, &second).await,
        ];
        if day() == started {
            assert!(!over_one, "1 per day before the reload");
            assert_eq!(after, [true, true, false], "3 per day, 1 counted before");
            assert_eq!(fresh, [true, true, true, false], "3 per day");
            within_one_day = true;
            break;
        }
    }
    assert!(within_one_day, "three runs straddled midnight");

    // A policy with a mistake on line 11: said where, and the one in force stays.
    std::fs::write(&file, policy(3).replace("per 1d", "per fortnight")).expect("written");
    server.signal("HUP");
    let refused = logged(&log, "policy not reloaded", 1).await;
    assert!(refused.contains("policy.yaml:11:15: "), "{refused}");
    let third = "c";
    for expected in [true, true, true, false] {
        assert_eq!(admitted(&client, &server, third).await, expected);
    }
    let failed = metrics(&client, &server).await;
    assert!(
        failed.contains("sluice_policy_last_reload_successful 0"),
        "{failed}"
    );
    assert!(
        failed.contains(r#"sluice_policy_reloads_total{result="failed"} 1"#),
        "{failed}"
    );
    // And the server keeps serving, and reloading.
    std::fs::write(&file, policy(1)).expect("written");
    server.signal("HUP");
    logged(&log, "policy reloaded", reloads + 1).await;
    assert!(!admitted(&client, &server, third).await);
    let loaded = metrics(&client, &server).await;
    assert!(
        loaded.contains("sluice_policy_last_reload_successful 1"),
        "{loaded}"
    );
    assert!(
        loaded.contains(&format!(
            r#"sluice_policy_reloads_total{{result="loaded"}} {}"#,
            reloads + 1
        )),
        "{loaded}"
    );
}

#[tokio::test]
async fn a_watched_policy_reloads_when_its_file_changes() {
    let (dir, server) = serve(policy(1), &["--watch-policy"]).await;
    let (file, log) = (
        dir.path().join("policy.yaml"),
        dir.path().join("server.log"),
    );
    let client = support::client(Duration::from_secs(5));
    assert!(!admitted_to(&client, &server, "/renamed", "w").await);

    std::fs::write(&file, policy(1).replace("POST /upload", "POST /renamed")).expect("written");
    let line = logged(&log, "policy reloaded", 1).await;
    assert!(line.contains("a file changed"), "{line}");
    assert!(admitted_to(&client, &server, "/renamed", "w").await);

    // Caught half written: said, and the one in force stays until the file is whole.
    std::fs::write(&file, "service:\n  name: [").expect("written");
    logged(&log, "policy not reloaded", 1).await;
    assert!(!admitted_to(&client, &server, "/upload", "w").await);
    std::fs::write(&file, policy(1)).expect("written");
    logged(&log, "policy reloaded", 2).await;
    assert!(admitted_to(&client, &server, "/upload", "w").await);
}
