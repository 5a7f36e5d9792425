//! Real `redis-server` processes for tests: one server, or a 3-primary Redis Cluster, on free
//! loopback ports, each in its own temporary directory, stopped when dropped.
//!
//! A machine without `redis-server` fails the test that asks for one, with a message saying how
//! to install it; nothing is skipped.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::Duration;

/// How long waits poll between looks, and how many looks a server gets to start (20 s).
const POLL: Duration = Duration::from_millis(20);
const START_POLLS: u32 = 1_000;

fn missing(binary: &str, error: std::io::Error) -> ! {
    panic!(
        "cannot run `{binary}` ({error}): the Redis tests need a real Redis server; install it \
         with `apt-get install -y redis-server` (scripts/test.sh does this on Debian)"
    )
}

/// A free loopback port whose cluster-bus port (port + 10000) is free too.
fn free_port() -> u16 {
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a free loopback port");
        let port = listener.local_addr().expect("a bound address").port();
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

/// One `redis-server` process on a loopback port.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    dir: tempfile::TempDir,
    extra: Vec<String>,
    child: Option<Child>,
}

impl RedisServer {
    /// A server with no persistence.
    pub fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    /// A server started with extra `redis-server` arguments (e.g. `--appendonly yes`).
    pub fn start_with(extra: &[&str]) -> RedisServer {
        let mut server = RedisServer {
            port: free_port(),
            dir: tempfile::tempdir().expect("a temporary directory"),
            extra: extra.iter().map(|arg| (*arg).to_owned()).collect(),
            child: None,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let mut command = Command::new("redis-server");
        command
            .arg("--port")
            .arg(self.port.to_string())
            .args([
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--protected-mode",
                "no",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(self.dir.path().join("redis.log"))
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = command
            .spawn()
            .unwrap_or_else(|error| missing("redis-server", error));
        self.child = Some(child);
        wait_for_ping(self.port, &self.log());
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The server's data directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    /// Stops the server the way an operator would (SIGTERM), and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            for _ in 0..START_POLLS / 2 {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                thread::sleep(POLL);
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server at once (SIGKILL): a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and directory.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Kills the server at once (SIGKILL) and starts it again on the same port and directory:
    /// a process crash, then recovery from whatever it had written.
    pub fn crash_and_restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Sends one command (inline form) and returns the raw reply: for tests to look behind the
    /// store's back.
    pub fn command(&self, args: &[&str]) -> String {
        command(self.port, args)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A Redis Cluster of three primaries (no replicas), created with `redis-cli --cluster create`.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Three cluster-enabled servers, joined, every slot covered.
    pub fn start() -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| {
                RedisServer::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                ])
            })
            .collect();
        let addresses: Vec<String> = nodes
            .iter()
            .map(|node| format!("127.0.0.1:{}", node.port()))
            .collect();
        let output = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|error| missing("redis-cli", error));
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        for node in &nodes {
            let ready = (0..START_POLLS).any(|_| {
                let ok = node
                    .command(&["CLUSTER", "INFO"])
                    .contains("cluster_state:ok");
                if !ok {
                    thread::sleep(POLL);
                }
                ok
            });
            assert!(ready, "the cluster did not reach cluster_state:ok");
        }
        RedisCluster { nodes }
    }

    /// `redis+cluster://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3`.
    pub fn url(&self) -> String {
        let nodes: Vec<String> = self
            .nodes
            .iter()
            .map(|node| format!("127.0.0.1:{}", node.port()))
            .collect();
        format!("redis+cluster://{}", nodes.join(","))
    }

    /// The cluster's nodes.
    pub fn nodes(&mut self) -> &mut [RedisServer] {
        &mut self.nodes
    }
}

fn wait_for_ping(port: u16, log: &Path) {
    for _ in 0..START_POLLS {
        if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
            let mut reply = [0u8; 16];
            if stream.write_all(b"PING\r\n").is_ok()
                && let Ok(read) = stream.read(&mut reply)
                && reply.get(..read).is_some_and(|r| r.starts_with(b"+PONG"))
            {
                return;
            }
        }
        thread::sleep(POLL);
    }
    let log = std::fs::read_to_string(log).unwrap_or_default();
    panic!("redis-server on port {port} did not start; its log:\n{log}");
}

fn command(port: u16, args: &[&str]) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("the server accepts");
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut request = format!("*{}\r\n", args.len());
    for arg in args {
        request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    stream
        .write_all(request.as_bytes())
        .expect("the server reads");
    // A simple reply ends at its first line; a bulk string's first line gives its length.
    let mut reply = Vec::new();
    let mut buffer = [0u8; 65_536];
    loop {
        if let Some(line) = reply.windows(2).position(|pair| pair == b"\r\n") {
            let complete = match reply.first() {
                Some(b'$') => std::str::from_utf8(reply.get(1..line).unwrap_or_default())
                    .ok()
                    .and_then(|length| length.parse::<i64>().ok())
                    .is_none_or(|length| length < 0 || reply.len() >= line + 4 + length as usize),
                _ => true,
            };
            if complete {
                break;
            }
        }
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(read) => reply.extend_from_slice(buffer.get(..read).unwrap_or_default()),
        }
    }
    String::from_utf8_lossy(&reply).into_owned()
}
