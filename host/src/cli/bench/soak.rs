//! `wasaga bench soak`: the saga mix over HTTP against a `wasaga serve` of its own, for
//! as long as asked, with a row per period of what a long run does to the server:
//! throughput, latency, WAL and database size, memory, file descriptors.

use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args as ClapArgs;
use rand::Rng;
use serde_json::{Value, json};

use super::{millis, percentile};
use crate::config::parse_duration;

/// Soak: `place-order` sagas over HTTP, against a `wasaga serve` this command starts
/// (the demo's services, on SQLite in a fresh directory), for --duration. Every
/// --every it prints sagas finished per second, p50/p99 latency (start to end, the
/// request waiting for the saga), failures, the largest WAL seen, the database's
/// size, and the server's RSS and open file descriptors. Flags after `--` go to
/// `wasaga serve`, e.g. `-- --saga-retention 5m --idempotency-retention 5m`; with
/// `-- --database URL` and `--hosts N`, N hosts share one PostgreSQL, and the summary
/// gives CPU per saga of wasaga and of the local PostgreSQL, and the database's
/// commits per saga.
#[derive(Debug, ClapArgs)]
pub struct Args {
    /// How long to drive load (e.g. 30m).
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    duration: Duration,

    /// Concurrent HTTP clients, each starting a saga and waiting for it, again and again.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,

    /// Sagas started per second at most (default: as many as the clients manage).
    #[arg(long)]
    rate: Option<f64>,

    /// Share of orders from a customer who cannot pay (declined, then compensated).
    #[arg(long, default_value_t = 0.1)]
    declined_share: f64,

    /// One row per this period.
    #[arg(long, default_value = "1m", value_parser = parse_duration)]
    every: Duration,

    /// The server's data directory (default: a fresh temporary one, removed after).
    #[arg(long)]
    data: Option<PathBuf>,

    /// Hosts to start, each with the same flags (more than one needs `-- --database
    /// URL`: hosts share a PostgreSQL, not a SQLite file). Sagas go to each in turn.
    #[arg(long, default_value_t = 1)]
    hosts: usize,

    /// Flags for `wasaga serve`.
    #[arg(last = true)]
    serve: Vec<String>,
}

const SKUS: u64 = 1000;
const CUSTOMERS: u64 = 1000;
/// The customer with no money: orders of theirs are declined and compensated.
const POOR: &str = "poor";

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.concurrency > 0, "--concurrency must be at least 1");
    anyhow::ensure!(args.rate.is_none_or(|r| r > 0.0), "--rate must be more than zero");
    let database = database_url(&args.serve);
    anyhow::ensure!(args.hosts > 0, "--hosts must be at least 1");
    anyhow::ensure!(
        args.hosts == 1 || database.is_some(),
        "--hosts {} needs a shared database: add `-- --database URL` (or set WASAGA_DATABASE)",
        args.hosts
    );
    let temporary = tempfile::Builder::new().prefix("wasaga-soak-").tempdir()?;
    let data = args.data.clone().unwrap_or_else(|| temporary.path().join("data"));
    let (plugins, sagas) = install(temporary.path())?;
    let mut servers = Vec::with_capacity(args.hosts);
    let token = super::super::tokens::generate();
    for i in 0..args.hosts {
        let data = if i == 0 { data.clone() } else { temporary.path().join(format!("data-{i}")) };
        servers.push(Server::start(&plugins, &sagas, &data, &args.serve, &token).await?);
    }
    let server = &servers[0];
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .timeout(Duration::from_secs(120))
        .build()?;
    seed(&client, server).await?;

    let pids: Vec<u32> = servers.iter().map(|s| s.pid).collect();
    println!(
        "place-order sagas over HTTP, {} clients, {}, {:.0}% declined, {:?}; server pid(s) {pids:?}",
        args.concurrency,
        args.rate.map_or("as fast as they can".into(), |r| format!("at most {r} sagas/s")),
        args.declined_share * 100.0,
        args.duration,
    );
    println!("| at | sagas/s | p50 | p99 | failed | WAL (max) | database | RSS | open fds |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let load = Load {
        client,
        urls: servers.iter().map(|s| s.url.clone()).collect(),
        token: server.token.clone(),
        started: Instant::now(),
        rate: args.rate,
        declined: args.declined_share.clamp(0.0, 1.0),
        run: format!("{:08x}", rand::rng().random::<u32>()),
        next: AtomicU64::new(0),
        latencies: Mutex::new(Vec::new()),
        completed: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        first_failure: Mutex::new(None),
    };
    let load = Arc::new(load);
    let costs = Costs::now(&pids, database.as_deref()).await;
    let end = load.started + args.duration;
    let clients: Vec<_> = (0..args.concurrency).map(|_| tokio::spawn(Arc::clone(&load).drive(end))).collect();

    let files = Files::of(&data, &pids);
    let mut rows = Vec::new();
    let mut period_start = Instant::now();
    let mut wal_max = 0;
    let mut sample = tokio::time::interval(Duration::from_millis(100));
    while period_start < end {
        let period_end = (period_start + args.every).min(end);
        while Instant::now() < period_end {
            sample.tick().await;
            wal_max = wal_max.max(files.wal());
        }
        let mut latencies = std::mem::take(&mut *load.latencies.lock().unwrap());
        latencies.sort();
        let row = Row {
            at: load.started.elapsed(),
            per_second: latencies.len() as f64 / period_end.duration_since(period_start).as_secs_f64(),
            p50: percentile(&latencies, 0.50),
            p99: percentile(&latencies, 0.99),
            failed: load.failed.swap(0, Ordering::Relaxed),
            wal_max: std::mem::take(&mut wal_max),
            database: files.database(),
            rss: files.rss(),
            fds: files.fds(),
        };
        row.print();
        rows.push(row);
        period_start = period_end;
    }
    for client in clients {
        client.await?;
    }
    let costs = Costs::now(&pids, database.as_deref()).await.since(&costs);
    summarize(&rows, &server.metrics(&load.client).await.unwrap_or_default());
    costs.print(load.completed.load(Ordering::Relaxed));
    if let Some(failure) = load.first_failure.lock().unwrap().take() {
        println!("first failure: {failure}");
    }
    for server in servers {
        server.stop();
    }
    let failed: u64 = rows.iter().map(|r| r.failed).sum();
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// The demo's services and saga definitions in `scratch`: the directories to serve.
pub(super) fn install(scratch: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let (plugins, sagas) = (scratch.join("plugins"), scratch.join("sagas"));
    super::super::demo::install(&plugins, &sagas)?;
    Ok((plugins, sagas))
}

/// A `wasaga serve` under load: this binary, on a free loopback port.
pub(super) struct Server {
    child: std::process::Child,
    pub(super) pid: u32,
    pub(super) url: String,
    pub(super) token: String,
}

impl Server {
    /// Starts a host with `token` as its admin token (one for all the hosts of a run).
    pub(super) async fn start(
        plugins: &Path,
        sagas: &Path,
        data: &Path,
        extra: &[String],
        token: &str,
    ) -> anyhow::Result<Server> {
        let mut child = std::process::Command::new(std::env::current_exe()?)
            .args(["serve", "--listen", "127.0.0.1:0", "--log", "warn", "--plugins"])
            .arg(plugins)
            .arg("--sagas")
            .arg(sagas)
            .arg("--data")
            .arg(data)
            .args(extra)
            .env("WASAGA_ADMIN_TOKEN", token)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting wasaga serve")?;
        let pid = child.id();
        let stdout = child.stdout.take().expect("piped");
        let line = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).map(|_| line)
        })
        .await??;
        let Some(url) = line.trim().strip_prefix("listening on ") else {
            let _ = child.kill();
            anyhow::bail!("wasaga serve did not start (its first line: {line:?})");
        };
        Ok(Server { url: url.to_owned(), child, pid, token: token.to_owned() })
    }

    async fn metrics(&self, client: &reqwest::Client) -> anyhow::Result<String> {
        let request = client.get(format!("{}/metrics", self.url)).bearer_auth(&self.token);
        Ok(request.send().await?.error_for_status()?.text().await?)
    }

    /// SIGKILL (a crash: nothing is flushed or said goodbye to), then waits for it.
    pub(super) fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM (a clean stop, like an operator's), then waits for the server to finish.
    pub(super) fn stop(mut self) {
        let term = std::process::Command::new("kill").args(["-TERM", &self.pid.to_string()]).status();
        if !term.is_ok_and(|s| s.success()) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Stock for every SKU and money for every customer but [`POOR`].
pub(super) async fn seed(client: &reqwest::Client, server: &Server) -> anyhow::Result<()> {
    let call = async |path: &str, key: String, body: Value| -> anyhow::Result<()> {
        let response = client
            .post(format!("{}/v1/services/{path}", server.url))
            .bearer_auth(&server.token)
            .header("Idempotency-Key", key)
            .json(&body)
            .send()
            .await?;
        let status = response.status();
        anyhow::ensure!(status.is_success(), "seeding {path}: {status} {}", response.text().await?);
        Ok(())
    };
    for i in 0..SKUS {
        let body = json!({"sku": format!("sku-{i}"), "qty": 1_000_000_000u64});
        call("inventory/restock", format!("restock-{i}"), body).await?;
    }
    for i in 0..CUSTOMERS {
        let body = json!({"customer": format!("c-{i}"), "balance": 1_000_000_000_000i64});
        call("payment/open-account", format!("open-{i}"), body).await?;
    }
    call("payment/open-account", "open-poor".into(), json!({"customer": POOR, "balance": 0})).await
}

/// The `--database` among the flags for `wasaga serve`, or `WASAGA_DATABASE`.
pub(super) fn database_url(serve: &[String]) -> Option<String> {
    let given = serve.iter().enumerate().find_map(|(i, flag)| match flag.strip_prefix("--database") {
        Some("") => serve.get(i + 1).cloned(),
        Some(rest) => rest.strip_prefix('=').map(str::to_owned),
        None => None,
    });
    given.or_else(|| std::env::var("WASAGA_DATABASE").ok().filter(|url| !url.is_empty()))
}

/// A connection to the database the hosts use, for the benchmark's own questions.
pub(super) async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = url.parse::<tokio_postgres::Config>()?.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// What a run cost: the hosts' CPU, the local PostgreSQL's CPU (every process named
/// `postgres` on this machine), and the database's commits.
struct Costs {
    hosts: Duration,
    postgres: Duration,
    commits: Option<i64>,
}

impl Costs {
    async fn now(pids: &[u32], database: Option<&str>) -> Costs {
        let hosts = pids.iter().map(|pid| super::cpu_time_of(&pid.to_string())).sum();
        let commits = match database {
            Some(url) => Self::commits(url).await.inspect_err(|e| eprintln!("reading commits: {e:#}")).ok(),
            None => None,
        };
        // PostgreSQL's processes count only when the hosts use it.
        let postgres = if database.is_some() { super::cpu_time_named("postgres") } else { Duration::ZERO };
        Costs { hosts, postgres, commits }
    }

    async fn commits(url: &str) -> anyhow::Result<i64> {
        let client = connect(url).await?;
        let sql = "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()";
        Ok(client.query_one(sql, &[]).await?.get(0))
    }

    fn since(&self, before: &Costs) -> Costs {
        Costs {
            hosts: self.hosts.saturating_sub(before.hosts),
            postgres: self.postgres.saturating_sub(before.postgres),
            commits: self.commits.zip(before.commits).map(|(a, b)| a - b),
        }
    }

    fn print(&self, sagas: u64) {
        if sagas == 0 {
            return;
        }
        let per = |d: Duration| format!("{:.2} ms", d.as_secs_f64() * 1e3 / sagas as f64);
        let mut line = format!("CPU per saga: wasaga {}", per(self.hosts));
        if self.postgres > Duration::ZERO {
            line += &format!(", PostgreSQL {}", per(self.postgres));
        }
        if let Some(commits) = self.commits {
            // The statistics collector lags by up to half a second: near enough here.
            line += &format!("; database commits per saga {:.2}", commits as f64 / sagas as f64);
        }
        println!("{line} ({sagas} sagas)");
    }
}

/// What the clients share.
struct Load {
    client: reqwest::Client,
    /// The hosts' URLs: saga n goes to host n mod their number.
    urls: Vec<String>,
    token: String,
    started: Instant,
    rate: Option<f64>,
    declined: f64,
    /// This run's mark in order ids and keys: a run on the `--data` of an earlier one
    /// starts new orders, not replays of its keys.
    run: String,
    /// The number of the next saga.
    next: AtomicU64,
    /// Latencies of the sagas finished in this period.
    latencies: Mutex<Vec<Duration>>,
    completed: AtomicU64,
    failed: AtomicU64,
    first_failure: Mutex<Option<String>>,
}

impl Load {
    /// One client: starts a saga, waits for its end, and again, until `end`.
    async fn drive(self: Arc<Self>, end: Instant) {
        loop {
            let n = self.next.fetch_add(1, Ordering::Relaxed);
            if let Some(rate) = self.rate {
                // Saga n starts at n / rate seconds, whichever client takes it.
                let slot = self.started + Duration::from_secs_f64(n as f64 / rate);
                tokio::time::sleep_until(slot.into()).await;
            }
            if Instant::now() >= end {
                return;
            }
            let begun = Instant::now();
            match self.saga(n).await {
                Ok(()) => {
                    self.latencies.lock().unwrap().push(begun.elapsed());
                    self.completed.fetch_add(1, Ordering::Relaxed);
                }
                Err(error) => {
                    self.failed.fetch_add(1, Ordering::Relaxed);
                    self.first_failure.lock().unwrap().get_or_insert(format!("{error:#}"));
                }
            }
        }
    }

    async fn saga(&self, n: u64) -> anyhow::Result<()> {
        let input = {
            let mut rng = rand::rng();
            let customer = if rng.random_bool(self.declined) {
                POOR.into()
            } else {
                format!("c-{}", rng.random_range(0..CUSTOMERS))
            };
            json!({
                "order": format!("o-{}-{n}", self.run), "customer": customer,
                "sku": format!("sku-{}", rng.random_range(0..SKUS)), "qty": 1, "amount": 100,
            })
        };
        let response = self
            .client
            .post(format!("{}/v1/sagas/place-order?wait=60s", self.urls[n as usize % self.urls.len()]))
            .bearer_auth(&self.token)
            .header("Idempotency-Key", format!("order-{}-{n}", self.run))
            .json(&input)
            .send()
            .await?;
        let status = response.status();
        let body = response.bytes().await?;
        // Only the saga's status is read: the client's CPU is the server's too here.
        #[derive(serde::Deserialize)]
        struct Settled {
            status: String,
        }
        let settled = serde_json::from_slice::<Settled>(&body).map(|s| s.status).unwrap_or_default();
        let expected = if input["customer"] == POOR { "compensated" } else { "completed" };
        anyhow::ensure!(
            status.is_success() && settled == expected,
            "saga {n}: {status}, expected {expected}: {}",
            String::from_utf8_lossy(&body)
        );
        Ok(())
    }
}

/// Where the servers' sizes are read: the first host's SQLite files, and every
/// host's memory and descriptors (summed).
struct Files {
    wal: PathBuf,
    database: PathBuf,
    procs: Vec<PathBuf>,
}

impl Files {
    fn of(data: &Path, pids: &[u32]) -> Files {
        Files {
            wal: data.join("wasaga.db-wal"),
            database: data.join("wasaga.db"),
            procs: pids.iter().map(|pid| PathBuf::from(format!("/proc/{pid}"))).collect(),
        }
    }

    fn wal(&self) -> u64 {
        std::fs::metadata(&self.wal).map_or(0, |m| m.len())
    }

    fn database(&self) -> u64 {
        std::fs::metadata(&self.database).map_or(0, |m| m.len())
    }

    /// Resident memory, from /proc/<pid>/status (`VmRSS: 12345 kB`).
    fn rss(&self) -> u64 {
        let rss = |proc: &PathBuf| {
            let status = std::fs::read_to_string(proc.join("status")).unwrap_or_default();
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .map_or(0, |kb| kb * 1024)
        };
        self.procs.iter().map(rss).sum()
    }

    fn fds(&self) -> usize {
        self.procs.iter().map(|proc| std::fs::read_dir(proc.join("fd")).map_or(0, |dir| dir.count())).sum()
    }
}

struct Row {
    at: Duration,
    per_second: f64,
    p50: Duration,
    p99: Duration,
    failed: u64,
    wal_max: u64,
    database: u64,
    rss: u64,
    fds: usize,
}

impl Row {
    fn print(&self) {
        println!(
            "| {} | {:.0} | {} | {} | {} | {} | {} | {} | {} |",
            clock(self.at),
            self.per_second,
            millis(self.p50),
            millis(self.p99),
            self.failed,
            mib(self.wal_max),
            mib(self.database),
            mib(self.rss),
            self.fds,
        );
    }
}

/// The first and last periods compared, and what the server says of its WAL
/// checkpoints and retention.
fn summarize(rows: &[Row], metrics: &str) {
    let (Some(first), Some(last)) = (rows.first(), rows.last()) else { return };
    let drift = |a: f64, b: f64| if a > 0.0 { (b - a) / a * 100.0 } else { 0.0 };
    println!(
        "first → last period: sagas/s {:+.1}%, p99 {:+.1}%, RSS {} → {}, database {} → {}; largest WAL {}",
        drift(first.per_second, last.per_second),
        drift(first.p99.as_secs_f64(), last.p99.as_secs_f64()),
        mib(first.rss),
        mib(last.rss),
        mib(first.database),
        mib(last.database),
        mib(rows.iter().map(|r| r.wal_max).max().unwrap_or(0)),
    );
    let value = |name: &str| -> f64 {
        metrics.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok()).unwrap_or(0.0)
    };
    let (count, sum) =
        (value("wasaga_wal_checkpoint_seconds_count"), value("wasaga_wal_checkpoint_seconds_sum"));
    if count > 0.0 {
        println!("WAL restarts: {count:.0}, commits waited {:.1} ms each on average", sum / count * 1e3);
    }
    let pruned: Vec<String> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("wasaga_pruned_total{kind=\""))
        .filter_map(|l| l.split_once("\"} "))
        .map(|(kind, n)| format!("{kind} {n}"))
        .collect();
    if !pruned.is_empty() {
        println!("retention forgot: {}", pruned.join(", "));
    }
}

fn clock(d: Duration) -> String {
    let s = d.as_secs();
    format!("{}:{:02}", s / 60, s % 60)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}
