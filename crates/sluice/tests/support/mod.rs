//! What the binary's test files share: `sluice` run as a real process, killed when dropped;
//! `sluice serve` on free loopback ports; and an HTTP client for it.

use std::ffi::{OsStr, OsString};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running process, killed at once (SIGKILL, as a crash would) and reaped when dropped, a
/// failed assertion included.
pub(crate) struct Running(pub(crate) Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A running `sluice serve`.
#[allow(dead_code, reason = "not every test binary runs the server through it")]
pub(crate) struct Server {
    child: Running,
    /// The gateway's address.
    pub(crate) listen: SocketAddr,
    /// The admin API's address.
    #[allow(dead_code, reason = "not every test binary talks to it")]
    pub(crate) admin: SocketAddr,
}

#[allow(dead_code, reason = "not every test binary runs the server through it")]
impl Server {
    /// `sluice serve ARGS… --listen … --admin-listen … --threads 1` (unless ARGS name a thread
    /// count), both on free loopback ports, once it answers `/healthz`. With `log`, the server logs at debug level into that
    /// file; otherwise it logs warnings, to nowhere. A port taken by another process between
    /// its pick and the server's bind (tests run in parallel) is picked again.
    pub(crate) async fn start<I, A>(args: I, log: Option<&Path>) -> Server
    where
        I: IntoIterator<Item = A>,
        A: AsRef<OsStr>,
    {
        let args: Vec<OsString> = args
            .into_iter()
            .map(|arg| arg.as_ref().to_owned())
            .collect();
        let mut exits = Vec::new();
        for _ in 0..3 {
            match Server::try_start(&args, log).await {
                Ok(server) => return server,
                Err(exit) => exits.push(exit),
            }
        }
        panic!("the server did not come up: {exits:?}");
    }

    async fn try_start(args: &[OsString], log: Option<&Path>) -> Result<Server, String> {
        let (listen, admin) = (free_port(), free_port());
        let stderr = match log {
            Some(path) => Stdio::from(std::fs::File::create(path).expect("a log file")),
            None => Stdio::null(),
        };
        let threads = if args.iter().any(|arg| arg == "--threads") {
            &[][..]
        } else {
            &["--threads", "1"][..]
        };
        let child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .arg("serve")
            .args(args)
            .args(["--listen", &listen.to_string()])
            .args(["--admin-listen", &admin.to_string()])
            .args(threads)
            .env("RUST_LOG", if log.is_some() { "debug" } else { "warn" })
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("the binary runs");
        let mut server = Server {
            child: Running(child),
            listen,
            admin,
        };
        let probe = client(Duration::from_secs(10));
        for _ in 0..500 {
            let answered = probe
                .get(format!("http://{listen}/healthz"))
                .send()
                .await
                .is_ok();
            // Exited (its port was taken, say): whatever answered, it was not this server.
            if let Ok(Some(status)) = server.child.0.try_wait() {
                return Err(format!("exited on {listen}: {status}"));
            }
            if answered {
                return Ok(server);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(format!("did not answer on {listen} within 10 s"))
    }
}

#[allow(dead_code, reason = "not every test binary signals the server")]
impl Server {
    /// Sends the server the signal `name` (e.g. `HUP`), as an operator's `kill -s` does.
    pub(crate) fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args(["-s", name, &self.child.0.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -s {name} failed");
    }

    /// The server's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.0.id()
    }

    /// The server's exit status once it exits, as it should after SIGTERM; fails the test if it
    /// has not within 10 s.
    pub(crate) async fn exited(&mut self) -> std::process::ExitStatus {
        for _ in 0..500 {
            if let Ok(Some(status)) = self.child.0.try_wait() {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the server did not exit within 10 s");
    }
}

/// `sluice serve` of `text`, written to `policy.yaml` in a new directory, on the memory store
/// with `extra` flags; with `log`, logging into `server.log` beside it. The directory lives as
/// long as the value returned.
#[allow(dead_code, reason = "not every test binary serves a policy of its own")]
pub(crate) async fn serve_policy(
    text: &str,
    extra: &[&str],
    log: bool,
) -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().expect("a temp dir");
    let file = dir.path().join("policy.yaml");
    std::fs::write(&file, text).expect("written");
    let mut args = vec![
        "--policy",
        file.to_str().expect("UTF-8"),
        "--store",
        "memory",
    ];
    args.extend_from_slice(extra);
    let log = log.then(|| dir.path().join("server.log"));
    let server = Server::start(args, log.as_deref()).await;
    (dir, server)
}

/// What `sluice check` prints for `text`, once it has exited 0.
#[allow(dead_code, reason = "not every test binary checks a policy")]
pub(crate) fn check(text: &str) -> String {
    let dir = tempfile::tempdir().expect("a temp dir");
    let file = dir.path().join("policy.yaml");
    std::fs::write(&file, text).expect("written");
    let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("check")
        .arg(&file)
        .output()
        .expect("the binary runs");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).expect("UTF-8")
}

/// A free loopback port.
pub(crate) fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .expect("a free port")
        .local_addr()
        .expect("an address")
}

/// The minute (the window of a 1-minute fixed window) the machine's clock, which the server
/// processes and Redis share, is in. A test that counts in a fixed window checks it did not
/// straddle two.
#[allow(dead_code, reason = "not every test binary counts in fixed windows")]
pub(crate) fn minute() -> u64 {
    use sluice_core::{Clock, SystemClock};
    SystemClock::new().now().as_nanos() / 60_000_000_000
}

/// A client that fails a request taking longer than `timeout`.
#[allow(
    dead_code,
    reason = "not every test binary makes HTTP requests through it"
)]
pub(crate) fn client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(1)
        .timeout(timeout)
        .build()
        .expect("a client")
}
