//! `wasaga bench`: the project's own benchmarks. They report figures; nothing fails
//! when a figure moves.

mod check;
mod events;
mod invoke;
mod reload;
mod runtime;
mod sagas;
mod soak;
mod takeover;

use std::time::Duration;

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    Runtime(runtime::Args),
    Check(check::Args),
    Invoke(invoke::Args),
    Sagas(sagas::Args),
    Reload(reload::Args),
    Events(events::Args),
    Soak(soak::Args),
    Takeover(takeover::Args),
}

pub async fn run(command: BenchCommand) -> anyhow::Result<std::process::ExitCode> {
    match command {
        BenchCommand::Runtime(args) => runtime::run(args).await,
        BenchCommand::Check(args) => check::run(args).await,
        BenchCommand::Invoke(args) => invoke::run(args).await,
        BenchCommand::Sagas(args) => sagas::run(args).await,
        BenchCommand::Reload(args) => reload::run(args).await,
        BenchCommand::Events(args) => events::run(args).await,
        BenchCommand::Soak(args) => soak::run(args).await,
        BenchCommand::Takeover(args) => takeover::run(args).await,
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
    cpu_time_of("self")
}

/// CPU time of process `pid` so far (another process of this one: the card processor).
pub(super) fn process_cpu_time(pid: u32) -> Duration {
    cpu_time_of(&pid.to_string())
}

/// CPU time of process `pid` (a number, or `self`) so far, from /proc; zero once it is gone.
fn cpu_time_of(pid: &str) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses): utime is the 12th and
    // stime the 13th of those, in clock ticks (100 per second on Linux).
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let ticks: u64 = [11, 12].iter().filter_map(|&i| fields.get(i)?.parse::<u64>().ok()).sum();
    Duration::from_millis(ticks * 10)
}

/// CPU time so far of every process of this machine named `name` (e.g. `postgres`).
fn cpu_time_named(name: &str) -> Duration {
    let Ok(procs) = std::fs::read_dir("/proc") else { return Duration::ZERO };
    procs
        .filter_map(|entry| entry.ok())
        .filter(|entry| {
            std::fs::read_to_string(entry.path().join("comm")).is_ok_and(|comm| comm.trim() == name)
        })
        .map(|entry| cpu_time_of(&entry.file_name().to_string_lossy()))
        .sum()
}
