//! `wasaga bench sagas`: completed `place-order` sagas per second, durable, through the
//! saga engine (no HTTP).

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Args as ClapArgs;
use rand::Rng;
use serde_json::json;

use super::{cpu_time, millis, percentile};
use crate::app::{App, AppConfig, Storage};
use crate::cli::choices::Synchronous;
use crate::invoke::{Caller, Invoker, Request};
use crate::runtime::Limits;
use crate::saga::{SagaDef, SagaEngine};
use crate::store::SagaStatus;
use crate::store::sqlite::SqliteOptions;

/// The demo's saga definition, built in.
const PLACE_ORDER: &str = include_str!("../../../../plugins/sagas/place-order.toml");

/// Measure sagas: `place-order` (5 steps: order, stock, payment, order, notification),
/// started and awaited by 1, 16 and 64 concurrent clients, on a fresh SQLite database
/// (`synchronous=FULL`). Reports completed sagas/s, p50/p99 saga latency and CPU time
/// per saga.
#[derive(Debug, ClapArgs)]
pub struct Args {
    /// Concurrent sagas, one run each.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    concurrency: Vec<usize>,

    /// Seconds measured per run (after a warm-up of a fifth of that).
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,

    #[arg(long, value_enum, default_value_t = Synchronous::Full)]
    synchronous: Synchronous,

    /// Charge through a card processor (`wasaga provider`, a process of its own on
    /// loopback, answering over HTTP) instead of the payment service's own records:
    /// one outbound request per saga. Its CPU is reported apart.
    #[arg(long)]
    provider: bool,
}

const SKUS: u64 = 1000;
const CUSTOMERS: u64 = 1000;

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let payments = if args.provider { "through a card processor" } else { "in the payment service" };
    println!(
        "place-order sagas, synchronous={:?}, {}s per run, payments {payments}",
        args.synchronous, args.seconds
    );
    println!(
        "| concurrent sagas | completed sagas/s | p50 | p99 | CPU per saga | processor's CPU per saga |"
    );
    println!("|---|---|---|---|---|---|");
    for &concurrency in &args.concurrency {
        let dir = tempfile::tempdir()?;
        let processor = args.provider.then(|| super::super::provider::Processor::start(None)).transpose()?;
        let outbound = processor.as_ref().map(|p| p.grants()).transpose()?.unwrap_or_default();
        let app = App::start(AppConfig {
            storage: Storage::Sqlite {
                data: dir.path().into(),
                options: SqliteOptions { synchronous: args.synchronous.into(), ..SqliteOptions::default() },
            },
            max_running_sagas: concurrency.max(1) * 2,
            outbound,
            ..AppConfig::new(dir.path())
        })
        .await?;
        let registry = app.registry();
        for service in ["order", "inventory", "payment", "notification"] {
            let wasm = std::fs::read(crate::guests::path(service))?;
            registry.insert(registry.runtime().load(service, wasm, Limits::default()).await?);
        }
        let (invoker, engine) = (&app.invoker, &app.sagas);
        let plugins = registry.plugins();
        let manifest = |service: &str| plugins.iter().find(|p| p.service() == service).map(|p| p.manifest());
        let def = SagaDef::parse("place-order.toml".as_ref(), PLACE_ORDER, manifest)?;
        engine.add_definition(def).await?;
        if let Some(processor) = &processor {
            let input = json!({"provider": processor.url}).to_string().into_bytes();
            let configure = Request::new(Caller::Operator, "payment", "configure", input, "configure".into());
            anyhow::ensure!(invoker.invoke(configure).await?.result.is_ok(), "payment refused its processor");
        }
        seed(invoker).await?;

        let length = Duration::from_secs_f64(args.seconds);
        measure(engine, concurrency, length / 5).await?;
        let cpu = cpu_time();
        let processor_cpu = processor.as_ref().map(|p| p.cpu_time());
        let (mut latencies, elapsed) = measure(engine, concurrency, length).await?;
        let cpu = cpu_time().saturating_sub(cpu);
        let processor_cpu = processor.as_ref().zip(processor_cpu).map(|(p, before)| p.cpu_time() - before);
        latencies.sort();
        let count = latencies.len() as f64;
        let processor_cpu = match processor_cpu {
            Some(cpu) => format!("{:.2} ms", cpu.as_secs_f64() * 1e3 / count),
            None => "-".into(),
        };
        println!(
            "| {concurrency} | {:.0} | {} | {} | {:.2} ms | {processor_cpu} |",
            count / elapsed.as_secs_f64(),
            millis(percentile(&latencies, 0.50)),
            millis(percentile(&latencies, 0.99)),
            cpu.as_secs_f64() * 1e3 / count,
        );
        app.stop();
    }
    Ok(ExitCode::SUCCESS)
}

async fn seed(invoker: &Invoker) -> anyhow::Result<()> {
    for i in 0..SKUS.max(CUSTOMERS) {
        if i < SKUS {
            let input = json!({"sku": format!("sku-{i}"), "qty": 1_000_000_000u64}).to_string().into_bytes();
            invoker
                .invoke(Request::new(Caller::Operator, "inventory", "restock", input, format!("restock-{i}")))
                .await?;
        }
        if i < CUSTOMERS {
            let input = json!({"customer": format!("c-{i}"), "balance": 1_000_000_000_000i64})
                .to_string()
                .into_bytes();
            invoker
                .invoke(Request::new(Caller::Operator, "payment", "open-account", input, format!("open-{i}")))
                .await?;
        }
    }
    Ok(())
}

static ORDER: AtomicU64 = AtomicU64::new(0);

/// `concurrency` clients start a saga and wait for it, again and again, for `length`.
async fn measure(
    engine: &SagaEngine,
    concurrency: usize,
    length: Duration,
) -> anyhow::Result<(Vec<Duration>, Duration)> {
    let started = Instant::now();
    let end = started + length;
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let engine = engine.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while Instant::now() < end {
                    let n = ORDER.fetch_add(1, Ordering::Relaxed);
                    let (sku, customer) = {
                        let mut rng = rand::rng();
                        (rng.random_range(0..SKUS), rng.random_range(0..CUSTOMERS))
                    };
                    let input = json!({
                        "order": format!("o-{n}"), "customer": format!("c-{customer}"),
                        "sku": format!("sku-{sku}"), "qty": 1, "amount": 100,
                    });
                    let begun = Instant::now();
                    let (record, _) = engine.start("place-order", &format!("order-{n}"), input).await?;
                    let done = engine.wait(&record.row.id, Duration::from_secs(60)).await?;
                    latencies.push(begun.elapsed());
                    anyhow::ensure!(
                        done.state.status == SagaStatus::Completed,
                        "saga {} ended {:?}",
                        done.row.id,
                        done.state.status
                    );
                }
                anyhow::Ok(latencies)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    Ok((latencies, started.elapsed()))
}
