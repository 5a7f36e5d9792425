//! What `sluice serve` warns of as it starts, for a policy that would not do there what it says,
//! and what stops it there.

mod support;

use std::ffi::OsStr;
use std::path::Path;

use support::Server;

const POLICY: &str = "\
service:
  name: Renders
identities:
  user:
    from: header
    name: x-user
routes:
  - match: POST /render
    limits:
      - name: renders-in-flight
        rate: 2 per 1m
        algorithm: concurrency
        per: user
";

const WARNING: &str = "concurrency limits hold a slot through the decision API only for checks";

/// The server's log once it serves `policy` with `extra` arguments.
async fn log_of(dir: &Path, policy: &Path, extra: &[&str], name: &str) -> String {
    let log = dir.join(name);
    let mut args = vec![
        OsStr::new("--policy"),
        policy.as_os_str(),
        OsStr::new("--store"),
        OsStr::new("memory"),
    ];
    args.extend(extra.iter().map(OsStr::new));
    let server = Server::start(args, Some(&log)).await;
    drop(server);
    std::fs::read_to_string(&log).expect("the log")
}

#[tokio::test]
async fn concurrency_limits_behind_the_decision_api_are_said_to_hold_only_through_the_proxy() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, POLICY).expect("written");

    let decision_api = log_of(dir.path(), &policy, &[], "decision.log").await;
    let warning = decision_api.lines().find(|line| line.contains(WARNING));
    assert!(
        warning.is_some_and(|line| line.contains("renders-in-flight")),
        "{decision_api}"
    );

    // A proxy without the decision API enforces them: nothing to say.
    let upstream = ["--upstream", "http://127.0.0.1:9"];
    let proxy = log_of(dir.path(), &policy, &upstream, "proxy.log").await;
    assert!(proxy.contains("sluice is serving"), "{proxy}");
    assert!(!proxy.contains(WARNING), "{proxy}");
}

#[test]
fn an_upstream_ca_that_cannot_be_used_stops_the_server_at_start_naming_why() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, POLICY).expect("written");
    let not_pem = dir.path().join("ca.pem");
    std::fs::write(&not_pem, "not a certificate").expect("written");
    let missing = dir.path().join("missing.pem");
    for (upstream, ca, why) in [
        ("https://localhost:9", &missing, "cannot read --upstream-ca"),
        (
            "https://localhost:9",
            &not_pem,
            "the CA file holds no PEM certificate",
        ),
        (
            "http://localhost:9",
            &not_pem,
            "applies only to an https:// upstream",
        ),
    ] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
            .arg("serve")
            .arg("--policy")
            .arg(&policy)
            .args(["--store", "memory", "--listen", "127.0.0.1:0"])
            .args(["--upstream", upstream, "--upstream-ca"])
            .arg(ca)
            .output()
            .expect("sluice runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{stderr}");
        assert!(stderr.contains(why), "{why}: {stderr}");
    }
}
