//! `wasaga bench runtime`: one plugin call through the runtime alone.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args as ClapArgs;

use crate::cli::choices;
use crate::runtime::{Allocator, Limits, Plugin, Runtime, RuntimeOptions};
use crate::service::Invocation;
use crate::store::sqlite::SqliteStore;
use crate::store::{Store, Transaction, TxLimits};

use super::{micros, percentile};

/// Measure one plugin invocation through the runtime, with a fresh store per call.
///
/// Loads the `echo` plugin and calls its `echo` operation (instantiate, one call,
/// drop) again and again, over a snapshot of a scratch store (`echo` reads nothing, so
/// the store costs a pooled connection and no I/O); prints median, p99 and mean
/// latency and calls per second for each allocator.
#[derive(Debug, ClapArgs)]
pub struct Args {
    /// The plugin to call (default: the `echo` plugin built with this binary).
    #[arg(long)]
    plugin: Option<PathBuf>,

    /// Operation to call, with `--input` as its input.
    #[arg(long, default_value = "echo")]
    operation: String,

    #[arg(long, default_value = r#"{"hello":"world"}"#)]
    input: String,

    /// Measured calls per allocator.
    #[arg(long, default_value_t = 20_000)]
    calls: usize,

    /// Calls made first and not measured.
    #[arg(long, default_value_t = 2_000)]
    warmup: usize,

    /// Calls in flight at once.
    #[arg(long, default_value_t = 1)]
    concurrency: usize,

    /// Allocator to measure (default: both).
    #[arg(long, value_enum)]
    allocator: Option<choices::Allocator>,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let file = args.plugin.clone().unwrap_or_else(|| crate::guests::path("echo"));
    let wasm = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
    let allocators = match args.allocator {
        Some(choice) => vec![choice.into()],
        None => vec![Allocator::OnDemand, Allocator::Pooling],
    };
    println!(
        "invoke `{}` of {} ({} calls, concurrency {}), fresh store per call",
        args.operation,
        file.display(),
        args.calls,
        args.concurrency
    );
    println!("| allocator | median | p99 | mean | calls/s |");
    println!("|---|---|---|---|---|");
    for allocator in allocators {
        let options = RuntimeOptions { allocator, ..RuntimeOptions::default() };
        let runtime = Runtime::new(options)?;
        let plugin = Arc::new(runtime.load("bench", wasm.clone(), Limits::default()).await?);
        let store = Arc::new(SqliteStore::temporary()?);
        measure(&plugin, &store, &args, args.warmup).await?;
        let started = Instant::now();
        let mut latencies = measure(&plugin, &store, &args, args.calls).await?;
        let elapsed = started.elapsed();
        latencies.sort();
        let mean = latencies.iter().sum::<Duration>() / latencies.len().max(1) as u32;
        println!(
            "| {allocator:?} | {} | {} | {} | {:.0} |",
            micros(percentile(&latencies, 0.50)),
            micros(percentile(&latencies, 0.99)),
            micros(mean),
            latencies.len() as f64 / elapsed.as_secs_f64()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `calls` invocations over `args.concurrency` tasks; returns each latency.
async fn measure(
    plugin: &Arc<Plugin>,
    store: &Arc<SqliteStore>,
    args: &Args,
    calls: usize,
) -> anyhow::Result<Vec<Duration>> {
    let workers = args.concurrency.max(1);
    let mut tasks = Vec::new();
    for worker in 0..workers {
        let (plugin, store) = (plugin.clone(), store.clone());
        let (operation, input) = (args.operation.clone(), args.input.clone().into_bytes());
        let share = calls / workers + usize::from(worker < calls % workers);
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(share);
            for i in 0..share {
                let call = Invocation {
                    operation: operation.clone(),
                    input: input.clone(),
                    idempotency_key: format!("bench-{worker}-{i}"),
                    correlation_id: format!("bench-{worker}"),
                    attempt: 1,
                };
                let started = Instant::now();
                let tx = Transaction::new(store.snapshot(plugin.service())?, TxLimits::default());
                let outcome = plugin.invoke(call, tx, None).await?;
                latencies.push(started.elapsed());
                anyhow::ensure!(outcome.result.is_ok(), "the call failed: {:?}", outcome.result);
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut all = Vec::with_capacity(calls);
    for task in tasks {
        all.extend(task.await??);
    }
    Ok(all)
}
