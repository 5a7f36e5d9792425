//! The project's rules, checked by plain tests so that `cargo test` is the whole gate: every
//! source file says why it exists, the decision core stays free of runtimes, serde and HTTP, the
//! wall clock is read in one place only, and no test is skipped or expects a panic.

use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("the crate sits in crates/")
        .to_path_buf()
}

/// Every `.rs` file under `crates/`, as (path relative to the root, contents).
fn rust_sources() -> Vec<(String, String)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("readable directory") {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                out.push(path);
            }
        }
    }
    let root = workspace_root();
    let mut paths = Vec::new();
    walk(&root.join("crates"), &mut paths);
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).expect("readable source");
            let relative = path.strip_prefix(&root).expect("under the root");
            (relative.to_string_lossy().replace('\\', "/"), text)
        })
        .collect()
}

#[test]
fn every_source_file_starts_by_saying_why_it_exists() {
    let missing: Vec<String> = rust_sources()
        .into_iter()
        .filter(|(_, text)| !text.starts_with("//!"))
        .map(|(path, _)| path)
        .collect();
    assert!(
        missing.is_empty(),
        "these files must start with a `//!` comment saying why they exist: {missing:#?}"
    );
}

/// The packages `package` depends on when built normally (no dev- or build-dependencies).
fn normal_dependencies(package: &str) -> Vec<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let output = Command::new(cargo)
        .current_dir(workspace_root())
        .args([
            "tree", "-p", package, "-e", "normal", "--prefix", "none", "--format", "{p}",
        ])
        .output()
        .expect("cargo tree runs");
    assert!(
        output.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let tree = String::from_utf8(output.stdout).expect("utf-8");
    tree.lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_client_sdk_knows_the_wire_contract_and_not_the_server() {
    let names = normal_dependencies("sluice-client");
    assert!(
        names.iter().any(|name| name == "sluice-contract"),
        "cargo tree output looks wrong: {names:?}"
    );
    let server: Vec<&String> = names
        .iter()
        .filter(|name| {
            name.starts_with("sluice-") && *name != "sluice-contract" && *name != "sluice-client"
        })
        .collect();
    assert!(
        server.is_empty(),
        "sluice-client must not depend on {server:?}"
    );
}

#[test]
fn the_decision_core_depends_on_no_runtime_serde_or_http_crate() {
    let names = normal_dependencies("sluice-core");
    assert!(
        names.iter().any(|name| name == "jiff"),
        "cargo tree output looks wrong: {names:?}"
    );
    let forbidden = [
        "tokio",
        "async-std",
        "smol",
        "futures",
        "futures-util",
        "serde",
        "serde_core",
        "serde_json",
        "http",
        "hyper",
        "axum",
        "tower",
        "reqwest",
        "tonic",
        "h2",
    ];
    let found: Vec<&&str> = forbidden
        .iter()
        .filter(|name| names.iter().any(|found| found == *name))
        .collect();
    assert!(found.is_empty(), "sluice-core must not depend on {found:?}");
}

#[test]
fn the_wall_clock_is_read_only_in_the_clock_module() {
    // Built from pieces so this file does not match itself.
    let reads = [
        ["SystemTime", "::now"].concat(),
        ["Instant", "::now"].concat(),
        ["Timestamp", "::now"].concat(),
        ["Zoned", "::now"].concat(),
        ["Utc", "::now"].concat(),
        ["Local", "::now"].concat(),
    ];
    let allowed = |path: &str| {
        path == "crates/sluice-core/src/clock.rs"
            // The client SDK knows only the wire contract, so it has its own door for time.
            || path == "crates/sluice-client/src/clock.rs"
            // Benchmarks and load generators measure elapsed time; they decide nothing with it.
            || path.contains("/benches/")
            || path.contains("/examples/")
            // The gateway's connection and upstream timeouts read tokio's monotonic clock when a
            // timer is armed and once a tick, as tokio's own timers would; no decision depends
            // on it.
            || path == "crates/sluice-gateway/src/deadline.rs"
    };
    let offenders: Vec<String> = rust_sources()
        .into_iter()
        .filter(|(path, _)| !allowed(path))
        .filter(|(_, text)| reads.iter().any(|read| text.contains(read.as_str())))
        .map(|(path, _)| path)
        .collect();
    assert!(
        offenders.is_empty(),
        "time must come from a sluice_core::Clock; these files read the wall clock: {offenders:#?}"
    );
}

#[test]
fn no_test_is_skipped_or_expects_a_panic() {
    let markers = [["#[", "ignore"].concat(), ["#[", "should_panic"].concat()];
    let offenders: Vec<String> = rust_sources()
        .into_iter()
        .filter(|(_, text)| markers.iter().any(|marker| text.contains(marker.as_str())))
        .map(|(path, _)| path)
        .collect();
    assert!(
        offenders.is_empty(),
        "tests must run and assert outcomes, not skip or expect panics: {offenders:#?}"
    );
}
