//! `sluice call` against `sluice demo`: each attempt printed with its rate-limit headers and
//! the wait chosen; a 429 then a 200 after the server's `Retry-After`; a wait past the deadline
//! ends the call at once. The demo runs on the real clock, so the retry here really waits the
//! few seconds the server asks for (the SDK's own tests run in virtual time).

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};

use support::Running;

const POLICY: &str = r#"
service:
  name: Call test
headers:
  ietf: true
identities:
  user:
    from: header
    name: x-user
routes:
  - match: GET /paced
    limits:
      - name: paced
        rate: 1 per 3s
        per: user
"#;

/// `sluice demo --policy` on a free port; its base URL.
fn demo(policy: &std::path::Path) -> (Running, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--store",
            "memory",
            "--policy",
        ])
        .arg(policy)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the binary runs");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let first = lines
        .next()
        .expect("the demo says where it listens")
        .expect("utf-8");
    let base = first
        .split_once(" at ")
        .map(|(_, url)| url.trim().to_owned())
        .unwrap_or_else(|| panic!("no address in {first:?}"));
    // Keep draining stdout so the demo never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (Running(child), base)
}

fn call(args: &[&str]) -> (Output, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("call")
        .args(args)
        .env("RUST_LOG", "off")
        .output()
        .expect("the binary runs");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    (output, text)
}

#[test]
fn sluice_call_shows_a_429_then_a_200_and_gives_up_on_a_wait_past_its_deadline() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, POLICY).expect("write the policy");
    let (_demo, base) = demo(&policy);
    let url = format!("{base}/paced");
    let args = [
        "GET",
        url.as_str(),
        "--header",
        "x-user: ann",
        "--jitter",
        "none",
    ];

    let (output, first) = call(&args);
    assert!(output.status.success(), "{first}");
    assert!(first.contains("attempt 1: 200 OK"), "{first}");
    assert!(first.contains(r#"ratelimit: "paced";r=0;t=3"#), "{first}");

    // The window is spent for three seconds: the next call draws a 429, waits what the server
    // asked, and is admitted.
    let (output, second) = call(&args);
    assert!(output.status.success(), "{second}");
    for expected in [
        "GET http://127.0.0.1:",
        "attempt 1: 429 Too Many Requests  [request id ",
        r#"ratelimit-policy: "paced";q=1;w=3"#,
        "retry-after: ",
        "message: Rate limit exceeded. Try again in ",
        "→ retrying in ",
        "the server asked for ",
        "(Retry-After)",
        "attempt 2: 200 OK",
        r#""echo":true"#,
    ] {
        assert!(
            second.contains(expected),
            "missing {expected:?} in:\n{second}"
        );
    }
    assert!(!second.contains("attempt 3"), "{second}");
    // The wait is what is left of the three seconds when the call arrived: three, or less on a
    // machine slow enough to spend a second between two runs of the binary.
    assert!(
        ["in 3 seconds.", "in 2 seconds.", "in 1 second."]
            .iter()
            .any(|wait| second.contains(wait)),
        "the message names a wait of at most three seconds:\n{second}"
    );

    // Spent again: a deadline shorter than the wait ends the call at once.
    let mut deadline = args.to_vec();
    deadline.extend(["--deadline", "500ms"]);
    let (output, third) = call(&deadline);
    assert_eq!(output.status.code(), Some(1), "{third}");
    for expected in [
        "attempt 1: 429 Too Many Requests",
        "→ giving up: the next attempt would have to wait",
        "past the call's deadline",
        "request id: ",
    ] {
        assert!(
            third.contains(expected),
            "missing {expected:?} in:\n{third}"
        );
    }
    assert!(!third.contains("attempt 2"), "{third}");
}

#[test]
fn sluice_call_refuses_bad_flags_clearly() {
    let (output, _) = call(&["GET", "http://127.0.0.1:9/", "--json", "{not json"]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--json is not valid JSON"), "{stderr}");

    let (output, _) = call(&["GET", "http://127.0.0.1:9/", "--deadline", "soon"]);
    assert_eq!(output.status.code(), Some(2), "clap's usage error");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("is not a duration"), "{stderr}");
}
