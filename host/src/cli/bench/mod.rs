//! `wasaga bench`: the project's own benchmarks. They report figures; nothing fails
//! when a figure moves.

mod events;
mod invoke;
mod reload;
mod runtime;
mod sagas;
mod soak;

use std::time::Duration;

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    Runtime(runtime::Args),
    Invoke(invoke::Args),
    Sagas(sagas::Args),
    Reload(reload::Args),
    Events(events::Args),
    Soak(soak::Args),
}

pub async fn run(command: BenchCommand) -> anyhow::Result<std::process::ExitCode> {
    match command {
        BenchCommand::Runtime(args) => runtime::run(args).await,
        BenchCommand::Invoke(args) => invoke::run(args).await,
        BenchCommand::Sagas(args) => sagas::run(args).await,
        BenchCommand::Reload(args) => reload::run(args).await,
        BenchCommand::Events(args) => events::run(args).await,
        BenchCommand::Soak(args) => soak::run(args).await,
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

/// CPU time of this process so far (user + system), from /proc.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses): utime is the 12th and
    // stime the 13th of those, in clock ticks (100 per second on Linux).
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let ticks: u64 = [11, 12].iter().filter_map(|&i| fields.get(i)?.parse::<u64>().ok()).sum();
    Duration::from_millis(ticks * 10)
}
