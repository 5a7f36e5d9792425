//! `sluice demo`, the README's first command, run as a newcomer runs it: it serves, shows a 200,
//! a 429 with its headers and body, a 401 and a 415, and stops cleanly on SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

#[test]
fn the_demo_shows_each_answer_and_stops_cleanly_on_sigterm() {
    let data = tempfile::tempdir().expect("a temporary directory");
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["demo", "--listen", "127.0.0.1:0", "--store"])
        .arg(data.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the binary runs");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut text = String::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("utf-8 output");
        text.push_str(&line);
        text.push('\n');
        if line.starts_with("Press Ctrl-C") {
            break;
        }
    }
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let exit = child.wait().expect("the demo exits");
    assert!(
        exit.success(),
        "the demo must exit 0 on SIGTERM: {exit:?}\n{text}"
    );

    for expected in [
        "HTTP/1.1 200 OK",
        "HTTP/1.1 429 Too Many Requests",
        "retry-after: 120",
        r#"{"message":"Rate limit exceeded. Try again in 2 minutes."}"#,
        "HTTP/1.1 401 Unauthorized",
        r#"{"message":"Unauthorized: Invalid API Key"}"#,
        "HTTP/1.1 415 Unsupported Media Type",
        r#"{"message":"Content-Type must be application/json"}"#,
        "$ curl -i http://127.0.0.1:",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
}
