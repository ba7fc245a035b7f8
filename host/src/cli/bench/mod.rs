//! `wasaga bench`: the project's own benchmarks. They report figures; nothing fails
//! when a figure moves.

mod invoke;
mod runtime;

use std::time::Duration;

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    Runtime(runtime::Args),
    Invoke(invoke::Args),
}

pub async fn run(command: BenchCommand) -> anyhow::Result<std::process::ExitCode> {
    match command {
        BenchCommand::Runtime(args) => runtime::run(args).await,
        BenchCommand::Invoke(args) => invoke::run(args).await,
    }
}

/// The `q` quantile of sorted latencies.
fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn micros(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

fn millis(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}
