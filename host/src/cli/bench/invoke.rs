//! `wasaga bench invoke`: durable invocations of `inventory.reserve` through the whole
//! invocation path (idempotency, plugin, version checks, SQLite commit), without HTTP.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args as ClapArgs;
use rand::Rng;

use super::{cpu_time, millis, percentile};
use crate::app::{App, AppConfig, Storage};
use crate::cli::choices::Synchronous;
use crate::invoke::{Caller, Invoker, Request};
use crate::runtime::Limits;
use crate::store::sqlite::SqliteOptions;

/// Measure durable invocations: `inventory.reserve` (reads a SKU's stock and the
/// order's reservation, writes both) with 1, 8 and 64 concurrent clients, group commit
/// on and off. Each run uses a fresh database in a temporary directory.
#[derive(Debug, ClapArgs)]
pub struct Args {
    /// Concurrent clients, one run each.
    #[arg(long, value_delimiter = ',', default_value = "1,8,64")]
    clients: Vec<usize>,

    /// Seconds measured per run (after a warm-up of a fifth of that).
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,

    /// SKUs the reservations spread over (fewer means more version conflicts).
    #[arg(long, default_value_t = 10_000)]
    skus: u64,

    /// Group commit batch sizes to compare; 1 is group commit off.
    #[arg(long, value_delimiter = ',', default_value = "256,1")]
    max_batch: Vec<usize>,

    #[arg(long, value_enum, default_value_t = Synchronous::Full)]
    synchronous: Synchronous,

    /// The inventory plugin (default: the one built with this binary).
    #[arg(long)]
    plugin: Option<PathBuf>,

    /// Where the temporary databases go (default: the system's temp directory). Put it
    /// on the disk you want measured.
    #[arg(long)]
    dir: Option<PathBuf>,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let file = args.plugin.clone().unwrap_or_else(|| crate::guests::path("inventory"));
    let wasm = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
    println!(
        "inventory.reserve over {} SKUs, synchronous={:?}, {}s per run",
        args.skus, args.synchronous, args.seconds
    );
    println!("| group commit | clients | invocations/s | p50 | p99 | re-runs | CPU per invocation |");
    println!("|---|---|---|---|---|---|---|");
    for &max_batch in &args.max_batch {
        for &clients in &args.clients {
            let dir = match &args.dir {
                Some(dir) => tempfile::tempdir_in(dir)?,
                None => tempfile::tempdir()?,
            };
            let options =
                SqliteOptions { synchronous: args.synchronous.into(), max_batch, ..SqliteOptions::default() };
            let storage = Storage::Sqlite { data: dir.path().into(), options };
            let app = App::start(AppConfig { storage, ..AppConfig::new(dir.path()) }).await?;
            let registry = app.registry();
            registry.insert(registry.runtime().load("inventory", wasm.clone(), Limits::default()).await?);
            let invoker = app.invoker.clone();
            restock(&invoker, args.skus).await?;
            let seconds = Duration::from_secs_f64(args.seconds);
            measure(&invoker, clients, args.skus, seconds / 5).await?;
            let cpu = cpu_time();
            let result = measure(&invoker, clients, args.skus, seconds).await?;
            let cpu = cpu_time().saturating_sub(cpu);
            let mut latencies = result.latencies;
            latencies.sort();
            let count = latencies.len() as f64;
            println!(
                "| {} | {clients} | {:.0} | {} | {} | {:.1}% | {:.0} µs |",
                if max_batch > 1 { format!("on (≤{max_batch})") } else { "off".into() },
                count / result.elapsed.as_secs_f64(),
                millis(percentile(&latencies, 0.50)),
                millis(percentile(&latencies, 0.99)),
                100.0 * result.reruns as f64 / count,
                cpu.as_secs_f64() * 1e6 / count,
            );
            app.stop();
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn restock(invoker: &Invoker, skus: u64) -> anyhow::Result<()> {
    let tasks: Vec<_> = (0..16u64)
        .map(|worker| {
            let invoker = invoker.clone();
            tokio::spawn(async move {
                for sku in (worker..skus).step_by(16) {
                    let input = format!(r#"{{"sku":"sku-{sku}","qty":1000000000}}"#);
                    invoker.invoke(request("restock", input, format!("restock-{sku}"))).await?;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    Ok(())
}

struct Measured {
    latencies: Vec<Duration>,
    reruns: u64,
    elapsed: Duration,
}

static ORDER: AtomicU64 = AtomicU64::new(0);

async fn measure(invoker: &Invoker, clients: usize, skus: u64, length: Duration) -> anyhow::Result<Measured> {
    let started = Instant::now();
    let end = started + length;
    let reruns = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (invoker, reruns) = (invoker.clone(), reruns.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while Instant::now() < end {
                    let order = ORDER.fetch_add(1, Ordering::Relaxed);
                    let sku = rand::rng().random_range(0..skus);
                    let input = format!(r#"{{"sku":"sku-{sku}","qty":1,"order":"o-{order}"}}"#);
                    let begun = Instant::now();
                    let invoked =
                        invoker.invoke(request("reserve", input, format!("reserve-{order}"))).await?;
                    latencies.push(begun.elapsed());
                    anyhow::ensure!(invoked.result.is_ok(), "reserve failed: {:?}", invoked.result);
                    reruns.fetch_add(u64::from(invoked.runs.saturating_sub(1)), Ordering::Relaxed);
                }
                anyhow::Ok(latencies)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    Ok(Measured { latencies, reruns: reruns.load(Ordering::Relaxed), elapsed: started.elapsed() })
}

fn request(operation: &str, input: String, key: String) -> Request {
    Request::new(Caller::Operator, "inventory", operation, input.into_bytes(), key)
}
