//! The `sluice` command: parses flags, wires the layers together and decides the exit code.
//! It is the only place that reads the environment or prints to the terminal.
#![allow(clippy::print_stdout)] // a command line prints; the libraries never do

mod demo;
mod policy_cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// sluice: rate limits, quotas and error contracts, declared once and enforced.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Replays the two seed APIs' documented limits through the decision engine and the memory
    /// store, on a simulated clock, and prints every decision.
    Demo(demo::DemoArgs),
    /// Validates a policy file: exits 0 when it is valid, and otherwise prints every problem as
    /// file:line:column and exits 1.
    Check(policy_cmd::PolicyArgs),
    /// Prints the API's rate-limit page, in Markdown, rendered from a policy file.
    Docs(policy_cmd::PolicyArgs),
}

fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Command::Demo(args) => demo::run(&args).map(|()| ExitCode::SUCCESS),
        Command::Check(args) => policy_cmd::check(&args),
        Command::Docs(args) => policy_cmd::docs(&args),
    }
}
