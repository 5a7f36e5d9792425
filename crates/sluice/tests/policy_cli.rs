//! `sluice check` and `sluice docs`, run as an API team runs them on the bundled examples and on
//! a broken file.

use std::path::PathBuf;
use std::process::{Command, Output};

fn sluice(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .args(args)
        .output()
        .expect("the binary runs")
}

#[test]
fn check_accepts_both_examples() {
    for example in [
        "examples/streampixel/policy.yaml",
        "examples/pixelpatrol/policy.yaml",
    ] {
        let output = sluice(&["check", example]);
        assert!(output.status.success(), "{example}: {output:?}");
        assert!(String::from_utf8_lossy(&output.stdout).contains(": ok ("));
    }
}

#[test]
fn check_rejects_a_broken_file_with_its_location() {
    let dir = std::env::temp_dir().join(format!("sluice-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path: PathBuf = dir.join("broken.yaml");
    std::fs::write(
        &path,
        "service:\n  name: Broken\nroutes:\n  - match: POST /upload\n    limits:\n      - rate: often\n        per: global\n",
    )
    .expect("written");
    let output = sluice(&["check", path.to_str().expect("utf-8 path")]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("broken.yaml:6:15: expected a rate like `1 per 2m`"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn docs_renders_the_streampixel_page() {
    let output = sluice(&["docs", "examples/streampixel/policy.yaml"]);
    assert!(output.status.success(), "{output:?}");
    let page = String::from_utf8_lossy(&output.stdout);
    assert!(page.contains("POST /projects/upload-file"));
    assert!(page.contains("1 request per 2 minutes"));
    assert!(page.contains("userId"));
}

#[test]
fn docs_renders_the_pixel_patrol_page() {
    let output = sluice(&["docs", "examples/pixelpatrol/policy.yaml"]);
    assert!(output.status.success(), "{output:?}");
    let page = String::from_utf8_lossy(&output.stdout);
    for expected in [
        "1,000 requests per minute",
        "2,000 requests per minute",
        "100 KB",
        "10 KB",
        "10 MB",
    ] {
        assert!(page.contains(expected), "missing {expected}:\n{page}");
    }
}
