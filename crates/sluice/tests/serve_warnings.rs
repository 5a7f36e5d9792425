//! What `sluice serve` warns of as it starts, for a policy that would not do there what it says.

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
