//! `wasaga bench events`: events delivered end to end per second.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args as ClapArgs;

use crate::app::{App, AppConfig};
use crate::invoke::{Caller, Request};
use crate::runtime::Limits;
use crate::store::DeliveryStatus;

/// Measure choreography: `echo.publish` invocations publish `journal` events (spread
/// over 100 correlation ids) as fast as 16 clients can; the dispatcher delivers each to
/// `echo.append`, which records it. Reports events published/s and delivered/s end to
/// end (from the first publish to the last delivery), durable (FULL).
#[derive(Debug, ClapArgs)]
pub struct Args {
    /// Events to publish.
    #[arg(long, default_value_t = 10_000)]
    events: usize,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let dir = tempfile::tempdir()?;
    // The app's dispatcher delivers the events.
    let app = App::start(AppConfig::new(dir.path())).await?;
    let registry = app.registry();
    let echo = std::fs::read(crate::guests::path("echo"))?;
    registry.insert(registry.runtime().load("echo", echo, Limits::default()).await?);
    let (invoker, store) = (app.invoker.clone(), app.store.clone());

    let started = Instant::now();
    let publishers: Vec<_> = (0..16usize)
        .map(|worker| {
            let invoker = invoker.clone();
            let count = args.events;
            tokio::spawn(async move {
                for n in (worker..count).step_by(16) {
                    let input = format!(r#"{{"topic":"journal","payload":{{"n":{n}}}}}"#).into_bytes();
                    let mut request =
                        Request::new(Caller::Client, "echo", "publish", input, format!("publish-{n}"));
                    request.correlation_id = format!("c-{}", n % 100);
                    invoker.invoke(request).await?;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for publisher in publishers {
        publisher.await??;
    }
    let published = started.elapsed();
    loop {
        let counts = store.delivery_counts().await?;
        let done: u64 = counts.iter().filter(|(s, _)| *s != DeliveryStatus::Pending).map(|(_, n)| n).sum();
        if done as usize >= args.events {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "deliveries did not finish: {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let delivered = started.elapsed();
    app.stop();
    println!("{} journal events, 100 correlation ids, 16 publishers", args.events);
    println!("| published/s | delivered end to end/s | last delivery after |");
    println!("|---|---|---|");
    println!(
        "| {:.0} | {:.0} | {:.2} s |",
        args.events as f64 / published.as_secs_f64(),
        args.events as f64 / delivered.as_secs_f64(),
        delivered.as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}
