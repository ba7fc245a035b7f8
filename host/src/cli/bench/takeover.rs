//! `wasaga bench takeover`: how long the hosts that survive take to claim the unfinished
//! sagas of a host that died, and to finish them.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args as ClapArgs;
use rand::Rng;
use serde_json::json;

use super::soak::{Server, connect, database_url, install, seed};
use crate::config::parse_duration;

/// Takeover: host A, on the PostgreSQL of `-- --database URL`, starts --sagas
/// `place-order` sagas whose confirmation mail fails once and would be retried only
/// after a random wait of up to a year, so that they all stay unfinished; host B joins; A is killed with
/// SIGKILL. Reports the time from the kill until B owns every one (the lease A had
/// left, then B's claims), and until B has finished them all.
#[derive(Debug, ClapArgs)]
pub struct Args {
    /// Unfinished sagas the dying host leaves.
    #[arg(long, default_value_t = 10_000)]
    sagas: usize,

    /// The hosts' `--host-lease`: how long a silent host keeps its sagas.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    lease: Duration,

    /// Concurrent clients starting the sagas.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,

    /// Flags for both `wasaga serve`s; `--database URL` is needed (or WASAGA_DATABASE).
    #[arg(last = true)]
    serve: Vec<String>,
}

/// How often the database is asked where the sagas are.
const LOOK_EVERY: Duration = Duration::from_millis(20);

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let Some(url) = database_url(&args.serve) else {
        anyhow::bail!("a takeover needs hosts on a shared database: add `-- --database URL`");
    };
    anyhow::ensure!(args.sagas > 0 && args.concurrency > 0, "--sagas and --concurrency must be at least 1");
    let temporary = tempfile::Builder::new().prefix("wasaga-takeover-").tempdir()?;
    let (plugins, sagas) = install(temporary.path())?;
    // The last step (the confirmation mail) waits up to a year before its retry (a
    // random wait up to the backoff: full jitter).
    let definition = sagas.join("place-order.toml");
    let mut text = std::fs::read_to_string(&definition)?;
    text += "retry = { max_attempts = 5, initial_backoff = \"365d\", max_backoff = \"365d\" }\n";
    std::fs::write(&definition, text)?;
    let mut serve = args.serve.clone();
    serve.extend(["--host-lease".to_owned(), format!("{}ms", args.lease.as_millis())]);

    let token = super::super::tokens::generate();
    let a = Server::start(&plugins, &sagas, &temporary.path().join("data-a"), &serve, &token).await?;
    let client = reqwest::Client::builder().pool_max_idle_per_host(args.concurrency).build()?;
    seed(&client, &a).await?;
    let started = Instant::now();
    start_sagas(&client, &a, args.sagas, args.concurrency).await?;
    println!(
        "{} sagas started on host A in {:.1} s; waiting until each waits for its retry",
        args.sagas,
        started.elapsed().as_secs_f64()
    );
    let db = connect(&url).await.context("connecting to the database")?;
    let parked = quiet(&db, args.sagas).await?;
    println!("all {} waiting after {:.1} s", args.sagas, parked.as_secs_f64());

    let b = Server::start(&plugins, &sagas, &temporary.path().join("data-b"), &serve, &token).await?;
    let owner: String =
        db.query_one("SELECT owner FROM sagas WHERE status = 'running' LIMIT 1", &[]).await?.get(0);
    let killed = Instant::now();
    let killed_ms = crate::clock::now_ms();
    let sigkill = std::process::Command::new("kill").args(["-KILL", &a.pid.to_string()]).status()?;
    anyhow::ensure!(sigkill.success(), "kill -KILL {} failed", a.pid);
    let alive_until: i64 =
        db.query_one("SELECT alive_until FROM hosts WHERE id = $1", &[&owner]).await?.get(0);

    let unfinished_of =
        "SELECT count(*) FROM sagas WHERE status IN ('running', 'compensating') AND owner = $1";
    while db.query_one(unfinished_of, &[&owner]).await?.get::<_, i64>(0) > 0 {
        tokio::time::sleep(LOOK_EVERY).await;
    }
    let claimed = killed.elapsed();
    let lease_left = Duration::from_millis((alive_until - killed_ms).max(0) as u64);
    println!(
        "host A killed; host B owned all {} sagas {:.2} s later: A's lease ran {:.2} s more, then B claimed them in {:.2} s",
        args.sagas,
        claimed.as_secs_f64(),
        lease_left.as_secs_f64(),
        claimed.saturating_sub(lease_left).as_secs_f64()
    );
    let unfinished = "SELECT count(*) FROM sagas WHERE status IN ('running', 'compensating')";
    let deadline = killed + Duration::from_secs(120);
    loop {
        let left: i64 = db.query_one(unfinished, &[]).await?.get(0);
        if left == 0 {
            println!("and finished them all {:.2} s after the kill", killed.elapsed().as_secs_f64());
            break;
        }
        if Instant::now() > deadline {
            println!("{left} sagas still unfinished 2 minutes after the kill");
            break;
        }
        tokio::time::sleep(LOOK_EVERY).await;
    }
    b.stop();
    Ok(ExitCode::SUCCESS)
}

/// Starts `n` sagas on `server` (without waiting for them), `concurrency` at a time.
async fn start_sagas(
    client: &reqwest::Client,
    server: &Server,
    n: usize,
    concurrency: usize,
) -> anyhow::Result<()> {
    let next = Arc::new(AtomicUsize::new(0));
    let run = format!("{:08x}", rand::rng().random::<u32>());
    let workers = (0..concurrency).map(|_| {
        let (client, next, run) = (client.clone(), next.clone(), run.clone());
        let (url, token) = (server.url.clone(), server.token.clone());
        tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok::<_, anyhow::Error>(());
                }
                let input = json!({
                    "order": format!("t-{run}-{i}"), "customer": format!("c-{}", i % 1000),
                    "sku": format!("sku-{}", i % 1000), "qty": 1, "amount": 100,
                    "notification_transient_failures": 1,
                });
                let response = client
                    .post(format!("{url}/v1/sagas/place-order"))
                    .bearer_auth(&token)
                    .header("Idempotency-Key", format!("takeover-{run}-{i}"))
                    .json(&input)
                    .send()
                    .await?;
                let status = response.status();
                anyhow::ensure!(
                    status.is_success(),
                    "starting saga {i}: {status} {}",
                    response.text().await?
                );
            }
        })
    });
    for worker in futures_util::future::join_all(workers).await {
        worker??;
    }
    Ok(())
}

/// Waits until `n` sagas run and none has moved for a second (each waits for its
/// retry); returns how long that took.
async fn quiet(db: &tokio_postgres::Client, n: usize) -> anyhow::Result<Duration> {
    let begun = Instant::now();
    let sql = "SELECT count(*), coalesce(sum(version), 0)::bigint FROM sagas WHERE status = 'running'";
    let mut last = (0i64, 0i64, Instant::now());
    loop {
        let row = db.query_one(sql, &[]).await?;
        let now = (row.get::<_, i64>(0), row.get::<_, i64>(1));
        if (now.0, now.1) != (last.0, last.1) {
            last = (now.0, now.1, Instant::now());
        } else if now.0 as usize == n && last.2.elapsed() >= Duration::from_secs(1) {
            return Ok(begun.elapsed());
        }
        anyhow::ensure!(begun.elapsed() < Duration::from_secs(600), "the sagas did not settle in 10 minutes");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
