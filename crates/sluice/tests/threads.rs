//! Where `sluice serve`'s serving threads run, as `ps -L`/`taskset` would show a user: with one
//! thread per CPU the process may use, each pinned to a CPU of its own; with `--pin-threads off`,
//! or any other thread count, all of them free to run anywhere the process may.
#![cfg(target_os = "linux")]

mod support;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use support::{Running, free_port};

const POLICY: &str = r#"
service:
  name: Threads test
identities:
  user:
    from: header
    name: x-user
routes:
  - match: GET /items
    limits:
      - name: per-user
        rate: 1000 per 1s
        per: user
"#;

/// `sluice serve --store memory ARGS…` on a free port, once it has answered 32 `/healthz`
/// requests, each on a new connection (which the kernel spreads over the threads' listeners by
/// their ports), so that the serving threads have had every chance to pin themselves.
fn serve(policy: &std::path::Path, args: &[&str]) -> Running {
    let listen = free_port();
    let mut server = Running(
        Command::new(env!("CARGO_BIN_EXE_sluice"))
            .arg("serve")
            .arg("--policy")
            .arg(policy)
            .args(["--store", "memory", "--listen", &listen.to_string()])
            .args(args)
            .env("RUST_LOG", "warn")
            .env_remove("SLUICE_THREADS")
            .env_remove("SLUICE_PIN_THREADS")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the binary runs"),
    );
    let mut answered = 0;
    for _ in 0..1_000 {
        if health(listen) {
            answered += 1;
            if answered == 32 {
                return server;
            }
        } else if let Ok(Some(status)) = server.0.try_wait() {
            panic!("the server exited: {status}");
        } else {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    panic!("the server did not answer on {listen}");
}

/// Whether `/healthz` answers 200 on a new connection.
fn health(address: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect(address) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut answer = String::new();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: sluice\r\nconnection: close\r\n\r\n")
        .and_then(|()| stream.read_to_string(&mut answer))
        .is_ok()
        && answer.starts_with("HTTP/1.1 200")
}

/// A `Cpus_allowed_list` line's CPUs ("0-3,6").
fn cpu_list(text: &str) -> BTreeSet<usize> {
    let number = |text: &str| text.trim().parse::<usize>().expect("a CPU number");
    text.split(',')
        .flat_map(|part| match part.split_once('-') {
            Some((first, last)) => (number(first)..=number(last)).collect::<Vec<_>>(),
            None => vec![number(part)],
        })
        .collect()
}

/// The CPUs a thread (or process) may run on, from its `/proc/…/status`.
fn allowed(status_path: &str) -> BTreeSet<usize> {
    let status = std::fs::read_to_string(status_path).expect("a status file");
    let line = status
        .lines()
        .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))
        .expect("a Cpus_allowed_list line");
    cpu_list(line)
}

/// Each serving thread (`sluice-N`) of the process, by name, with the CPUs it may run on.
fn serving_threads(server: &Running) -> Vec<(String, BTreeSet<usize>)> {
    let tasks = format!("/proc/{}/task", server.0.id());
    let mut threads: Vec<_> = std::fs::read_dir(&tasks)
        .expect("the process's tasks")
        .filter_map(|task| {
            let task = task.ok()?.file_name().into_string().ok()?;
            let name = std::fs::read_to_string(format!("{tasks}/{task}/comm")).ok()?;
            let name = name.trim().to_owned();
            let serving = name
                .strip_prefix("sluice-")
                .is_some_and(|index| index.parse::<usize>().is_ok());
            serving.then(|| (name, allowed(&format!("{tasks}/{task}/status"))))
        })
        .collect();
    threads.sort();
    threads
}

#[test]
fn serving_threads_are_pinned_one_per_cpu_only_when_there_is_one_per_cpu() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, POLICY).expect("write the policy");
    // The server inherits this process's CPUs.
    let cpus = allowed("/proc/self/status");

    // One thread per CPU (the default, unless a CPU quota is below the CPUs: named here so that
    // the test does not depend on one), each on its own. A thread pins itself as it starts;
    // wait (boundedly) for the last to.
    let one_per_cpu = cpus.len().to_string();
    let server = serve(&policy, &["--threads", one_per_cpu.as_str()]);
    let mut threads = serving_threads(&server);
    for _ in 0..250 {
        if threads.len() == cpus.len() && threads.iter().all(|(_, allowed)| allowed.len() == 1) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
        threads = serving_threads(&server);
    }
    assert_eq!(threads.len(), cpus.len(), "one serving thread per CPU");
    let pinned: BTreeSet<usize> = threads
        .iter()
        .map(|(name, allowed)| {
            assert_eq!(allowed.len(), 1, "{name} is pinned to one CPU: {allowed:?}");
            *allowed.first().expect("one CPU")
        })
        .collect();
    assert_eq!(
        pinned, cpus,
        "each thread on a CPU of its own, all CPUs used"
    );
    drop(server);

    // Asked not to, or with a thread count other than the CPUs': the kernel places them.
    let more = (cpus.len() + 1).to_string();
    for args in [
        &["--threads", one_per_cpu.as_str(), "--pin-threads", "off"][..],
        &["--threads", more.as_str()][..],
    ] {
        let server = serve(&policy, args);
        let threads = serving_threads(&server);
        assert!(!threads.is_empty(), "{args:?}: no serving thread found");
        for (name, allowed) in threads {
            assert_eq!(allowed, cpus, "{args:?}: {name} may run on every CPU");
        }
    }
}
