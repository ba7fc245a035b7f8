//! `wasaga bench reload`: how long a changed plugin file takes to serve, and what
//! reloading costs the calls running meanwhile.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Args as ClapArgs;

use super::{millis, percentile};
use crate::app::{App, AppConfig};
use crate::invoke::{Caller, Request};

/// Measure hot reload: the `hello` fixture's file is replaced again and again by its
/// other version while clients call it; reports the time from the file's rename to the
/// first answer from the new version, and calls/s with and without reloads.
#[derive(Debug, ClapArgs)]
pub struct Args {
    /// Replacements.
    #[arg(long, default_value_t = 20)]
    swaps: usize,

    /// Clients calling the service meanwhile.
    #[arg(long, default_value_t = 8)]
    clients: usize,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let data = tempfile::tempdir()?;
    let plugins = tempfile::tempdir()?;
    let versions =
        [std::fs::read(crate::guests::path("hello-v1"))?, std::fs::read(crate::guests::path("hello-v2"))?];
    let file = plugins.path().join("hello.wasm");
    std::fs::write(&file, &versions[0])?;

    let app = App::start(AppConfig {
        plugins: Some(plugins.path().to_owned()),
        watch: true,
        ..AppConfig::new(data.path())
    })
    .await?;
    let invoker = app.invoker.clone();

    let stop = Arc::new(AtomicBool::new(false));
    let (calls, failures) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let clients: Vec<_> = (0..args.clients)
        .map(|worker| {
            let (invoker, stop, calls, failures) =
                (invoker.clone(), stop.clone(), calls.clone(), failures.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let request = Request::new(
                        Caller::Client,
                        "hello",
                        "greet",
                        b"{}".to_vec(),
                        format!("c-{worker}-{n}"),
                    );
                    match invoker.invoke(request).await {
                        Ok(_) => calls.fetch_add(1, Ordering::Relaxed),
                        Err(_) => failures.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();

    let rate = |since: Instant, from: u64| {
        (calls.load(Ordering::Relaxed) - from) as f64 / since.elapsed().as_secs_f64()
    };
    let (start, from) = (Instant::now(), calls.load(Ordering::Relaxed));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let steady = rate(start, from);

    let (start, from) = (Instant::now(), calls.load(Ordering::Relaxed));
    let mut latencies = Vec::new();
    let mut probe = 0u64;
    for swap in 0..args.swaps {
        let next = (swap + 1) % 2;
        let expected = format!("{{\"version\":{}}}", next + 1);
        let part = plugins.path().join(".hello.wasm.part");
        std::fs::write(&part, &versions[next])?;
        let renamed = Instant::now();
        std::fs::rename(&part, &file)?;
        loop {
            probe += 1;
            let request =
                Request::new(Caller::Client, "hello", "greet", b"{}".to_vec(), format!("probe-{probe}"));
            let answer = invoker.invoke(request).await?;
            if answer.result.as_deref() == Ok(expected.as_bytes()) {
                break;
            }
            anyhow::ensure!(renamed.elapsed() < Duration::from_secs(10), "version {} never served", next + 1);
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        latencies.push(renamed.elapsed());
    }
    let reloading = rate(start, from);
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await?;
    }
    latencies.sort();
    println!("hello replaced {} times under {} clients", args.swaps, args.clients);
    println!(
        "| file renamed → new version answers: median | max | calls/s steady | calls/s while reloading | failed calls |"
    );
    println!("|---|---|---|---|---|");
    println!(
        "| {} | {} | {steady:.0} | {reloading:.0} | {} |",
        millis(percentile(&latencies, 0.5)),
        millis(*latencies.last().unwrap_or(&Duration::ZERO)),
        failures.load(Ordering::Relaxed)
    );
    Ok(ExitCode::SUCCESS)
}
