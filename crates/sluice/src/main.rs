//! The `sluice` command: parses flags, wires the layers together and decides the exit code.
//! It is the only place that reads the environment or prints to the terminal.
#![allow(clippy::print_stdout)] // a command line prints; the libraries never do

mod demo;

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
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Demo(args) => demo::run(&args),
    }
}
