//! The `sluice` command: parses flags, wires the layers together and decides the exit code.
//! It is the only place that reads the environment, files or signals, or prints to the terminal.
#![allow(clippy::print_stdout)] // a command line prints; the libraries never do

mod admin_client;
mod alloc;
mod call_cmd;
mod demo;
mod keys_cmd;
mod log_line;
mod metrics;
mod policy_cmd;
mod serve;

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use sluice_core::SystemClock;

// A request through the gateway allocates and frees a few dozen small blocks, often on different
// threads; mimalloc's per-thread free lists make that markedly cheaper than glibc's malloc.
#[global_allocator]
static ALLOCATOR: alloc::Mimalloc = alloc::Mimalloc;

/// sluice: rate limits, quotas and error contracts, declared once and enforced.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Log lines as JSON objects instead of text (the level comes from RUST_LOG, default info).
    #[arg(long, global = true, env = "SLUICE_LOG_JSON")]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The gateway enforcing Streampixel's example policy in front of a built-in echo upstream,
    /// with a few sample requests (200, 429, 401, 415) shown as curl lines and their answers.
    Demo(demo::DemoArgs),
    /// Runs the gateway: a reverse proxy with --upstream, the decision API without. SIGHUP
    /// reloads the policy; SIGTERM drains and stops.
    Serve(serve::ServeArgs),
    /// Validates a policy file: exits 0 when it is valid, and otherwise prints every problem as
    /// file:line:column and exits 1.
    Check(policy_cmd::PolicyArgs),
    /// Prints the API's rate-limit page, in Markdown, rendered from a policy file.
    Docs(policy_cmd::PolicyArgs),
    /// The demo's echo upstream on its own: answers every request with 200 and a JSON
    /// description of it. For load tests and trying the proxy by hand.
    Echo(EchoArgs),
    /// API key helpers.
    #[command(subcommand)]
    Keys(keys_cmd::KeysCommand),
    /// One call through the client SDK, each attempt shown: the status, the rate-limit
    /// headers, and the wait chosen before the next and why. Exits 1 when the call fails.
    Call(call_cmd::CallArgs),
}

fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Command::Demo(args) => serve_with_runtime(cli.log_json, demo::run(args)),
        Command::Serve(args) => serve_with_runtime(cli.log_json, serve::run(args)),
        Command::Check(args) => policy_cmd::check(&args),
        Command::Docs(args) => policy_cmd::docs(&args),
        Command::Keys(command) => keys_cmd::run(command),
        Command::Echo(args) => serve_with_runtime(cli.log_json, echo(args)),
        Command::Call(args) => call(cli.log_json, args),
    }
}

/// Flags of `sluice echo`.
#[derive(Debug, clap::Args)]
struct EchoArgs {
    /// Address to listen on.
    #[arg(long, env = "SLUICE_ECHO_LISTEN", default_value = "127.0.0.1:9000")]
    listen: std::net::SocketAddr,
}

async fn echo(args: EchoArgs) -> anyhow::Result<()> {
    // The gateway's own backlog (1,024): a proxy under load opens hundreds of connections to
    // it at once, and a SYN the accept queue drops waits a second to be sent again.
    let listener = sluice_gateway::bind_listeners(args.listen, 1)?
        .pop()
        .ok_or_else(|| anyhow::anyhow!("no listener"))?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    tracing::info!(listen = %listener.local_addr()?, "echo upstream is serving");
    sluice_gateway::serve_echo(listener, serve::stop_signal()).await;
    Ok(())
}

/// Runs a server command on a runtime for the main thread, with logging to stderr.
fn serve_with_runtime(
    log_json: bool,
    command: impl std::future::Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<ExitCode> {
    init_logging(log_json, "info");
    // Signals, timers and the demo's echo upstream need little; the gateway runs its own
    // thread per core (`Gateway::serve_threads`).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(command)?;
    Ok(ExitCode::SUCCESS)
}

/// `sluice call`: it prints its own account of each attempt, so only warnings (a failed call
/// logged whole, secrets redacted) reach stderr unless RUST_LOG asks for more.
fn call(log_json: bool, args: call_cmd::CallArgs) -> anyhow::Result<ExitCode> {
    init_logging(log_json, "warn");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(call_cmd::run(args))
}

/// Logs to stderr at RUST_LOG's level, or `default`: in colour for a person at a terminal;
/// otherwise (a file, a pipe, journald) as the same plain text, without escape codes, written by
/// `log_line`'s cheaper formatter; or as JSON objects.
fn init_logging(log_json: bool, default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if log_json {
        builder.json().init();
    } else if std::io::stderr().is_terminal() {
        builder.init();
    } else {
        let clock = Arc::new(SystemClock::new());
        builder.event_format(log_line::TextLine::new(clock)).init();
    }
}
