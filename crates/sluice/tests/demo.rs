//! `sluice demo`, the README's first command, run as a newcomer runs it.

use std::process::Command;

#[test]
fn the_demo_shows_an_admission_a_429_with_its_exact_wait_and_a_reset() {
    let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("demo")
        .output()
        .expect("the binary runs");
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8(output.stdout).expect("utf-8");
    assert!(
        text.contains("t+ 30s user-a: 429, retry after 90.000s"),
        "{text}"
    );
    assert!(text.contains("t+ 30s user-b: admitted"), "{text}");
    assert!(text.contains("t+120s user-a: admitted"), "{text}");
    assert!(
        text.contains("request  1001: 429, retry after 30.000s"),
        "{text}"
    );
}
