//! `wasaga bench check`: a workload of transactions, events and sagas against hosts
//! this command starts, SIGKILLed and restarted as it runs, then the whole history
//! judged by the checker (`crate::check`).

mod cluster;

use std::collections::{BTreeSet, HashMap};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use clap::Args as ClapArgs;
use rand::Rng;
use serde_json::{Value, json};

use super::soak::database_url;
use crate::check::append::{self, MicroOp, Txn};
use crate::check::{Anomaly, Kind, Outcome, deliveries, sagas};
use crate::config::parse_duration;

use cluster::{Answer, Cluster, Host, nemesis};

const HISTORY: &[u8] = include_bytes!(concat!(env!("WASAGA_GUEST_DIR"), "/services/history.wasm"));
const MARKS: &str = include_str!("../../../../plugins/history/marks.toml");

/// Check: run a workload against hosts this command starts (the `history` service, on
/// SQLite in a fresh directory, or with `-- --database URL` on PostgreSQL), SIGKILL a
/// host every --kill-every and start it again, then check the whole history:
///
/// - transactions that read and append to a few lists (Jepsen's list-append), for
///   serializability (G0, G1a, G1b, G1c, G-single, G2 in Adya's terms), lost
///   acknowledged writes and effects applied twice;
///
/// - events published in a few chains, with idle periods longer than the event
///   retention between bursts: each delivered once, in order, none of a refused call;
///
/// - sagas (`marks`: two compensable steps, a pivot, a step after it), some refused
///   midway: each ends, each step and compensation done once, in order.
///
/// Exits 0 when the history is clean, 1 with anomalies, 2 when the run could not be
/// made. With --json, one JSON object on stdout.
#[derive(Debug, ClapArgs)]
pub struct Args {
    /// How long to run the workload (e.g. 10m).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    duration: Duration,

    /// Hosts to start (more than one needs `-- --database URL`); each client sends
    /// each request to any host alive.
    #[arg(long, default_value_t = 1)]
    hosts: usize,

    /// Concurrent clients sending transactions.
    #[arg(long, default_value_t = 8)]
    clients: usize,

    /// Keys in use at once: fewer make more conflicts.
    #[arg(long, default_value_t = 6)]
    keys: usize,

    /// Appends after which a key is retired for a fresh one (keeps lists short).
    #[arg(long, default_value_t = 64)]
    writes_per_key: usize,

    /// SIGKILL a host this often (0s: never).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    kill_every: Duration,

    /// How long a killed host stays down before it starts again.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    down: Duration,

    /// Event chains, each with a client publishing one event after another.
    #[arg(long, default_value_t = 2)]
    chains: usize,

    /// The hosts' --event-retention; publishers go idle for longer than this between
    /// bursts, so that retention forgets every event in between.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    event_retention: Duration,

    /// Concurrent clients starting sagas.
    #[arg(long, default_value_t = 2)]
    saga_clients: usize,

    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,

    /// Flags for `wasaga serve` (each host), e.g. `-- --database URL`.
    #[arg(last = true)]
    serve: Vec<String>,
}

/// How long a client retries one operation whose answer did not say what happened,
/// with the same idempotency key, before it counts it as unknown.
const PATIENCE: Duration = Duration::from_secs(30);
/// How long the run waits for sagas and deliveries to finish after the workload.
const SETTLE: Duration = Duration::from_secs(120);
/// A publisher's burst of events between idle periods.
const BURST: Duration = Duration::from_secs(3);

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    match check(args).await {
        Ok(report) => Ok(if report.anomalies.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) }),
        Err(error) => {
            eprintln!("wasaga bench check: the run could not be made: {error:#}");
            Ok(ExitCode::from(2))
        }
    }
}

async fn check(args: Args) -> anyhow::Result<Report> {
    anyhow::ensure!(
        args.hosts > 0 && args.clients > 0 && args.keys > 0 && args.writes_per_key > 0,
        "--hosts, --clients, --keys and --writes-per-key must be at least 1"
    );
    anyhow::ensure!(
        args.hosts == 1 || database_url(&args.serve).is_some(),
        "--hosts {} needs a shared database: add `-- --database URL`",
        args.hosts
    );
    let scratch = tempfile::Builder::new().prefix("wasaga-check-").tempdir()?;
    let (plugins, sagas_dir) = (scratch.path().join("plugins"), scratch.path().join("sagas"));
    std::fs::create_dir_all(&plugins)?;
    std::fs::create_dir_all(&sagas_dir)?;
    std::fs::write(plugins.join("history.wasm"), HISTORY)?;
    std::fs::write(sagas_dir.join("marks.toml"), MARKS)?;
    let prune = (args.event_retention / 4).max(Duration::from_millis(100));
    let mut serve = vec![
        "--event-retention".to_owned(),
        format!("{}ms", args.event_retention.as_millis()),
        "--prune-interval".to_owned(),
        format!("{}ms", prune.as_millis()),
    ];
    serve.extend(args.serve.iter().cloned());
    let token = super::super::tokens::generate();
    let mut hosts = Vec::with_capacity(args.hosts);
    for i in 0..args.hosts {
        let host = Host {
            plugins: plugins.clone(),
            sagas: sagas_dir.clone(),
            data: scratch.path().join(format!("data-{i}")),
            serve: serve.clone(),
            token: token.clone(),
        };
        hosts.push((host.start().await?, host));
    }
    let cluster = Arc::new(Cluster {
        client: reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?,
        urls: RwLock::new(hosts.iter().map(|(server, _)| Some(server.url.clone())).collect()),
        token,
        notes: Mutex::default(),
    });
    let started = Instant::now();
    let end = started + args.duration;
    if !args.json {
        println!(
            "checking {} host(s){} for {:?}: {} transaction clients over {} keys, {} event chains, {} saga clients, a SIGKILL every {:?}",
            args.hosts,
            if database_url(&args.serve).is_some() { " on PostgreSQL" } else { " on SQLite" },
            args.duration,
            args.clients,
            args.keys,
            args.chains,
            args.saga_clients,
            args.kill_every,
        );
    }

    let keys = Arc::new(Mutex::new(Keys::new(args.keys, args.writes_per_key)));
    let values = Arc::new(AtomicU64::new(1));
    let txns: Vec<_> = (0..args.clients)
        .map(|_| {
            tokio::spawn(transactions(Arc::clone(&cluster), Arc::clone(&keys), Arc::clone(&values), end))
        })
        .collect();
    let idle = args.event_retention + prune * 2 + Duration::from_secs(1);
    let publishers: Vec<_> = (0..args.chains)
        .map(|c| {
            tokio::spawn(publish(Arc::clone(&cluster), format!("chain-{c}"), Arc::clone(&values), idle, end))
        })
        .collect();
    let starters: Vec<_> =
        (0..args.saga_clients).map(|_| tokio::spawn(start_sagas(Arc::clone(&cluster), end))).collect();
    let nemesis = tokio::spawn(nemesis(Arc::clone(&cluster), hosts, args.kill_every, args.down, end));

    let mut history: Vec<Txn> = Vec::new();
    for client in txns {
        history.extend(client.await?);
    }
    let mut published = Vec::new();
    for publisher in publishers {
        published.extend(publisher.await?);
    }
    let mut started_sagas = Vec::new();
    for starter in starters {
        started_sagas.extend(starter.await?);
    }
    let (hosts, kills) = nemesis.await??;

    // Everything ends before the final reads: sagas, then deliveries.
    let settle_by = Instant::now() + SETTLE;
    let runs = settle_sagas(&cluster, &started_sagas, settle_by).await?;
    settle_events(&cluster, args.chains, settle_by).await?;
    let used = keys.lock().unwrap().used.clone();
    for chunk in used.iter().copied().collect::<Vec<_>>().chunks(32) {
        let ops = chunk.iter().map(|&key| MicroOp::Read { key, list: None }).collect();
        let txn = transact(&cluster, ops, &format!("final-{}", uuid::Uuid::now_v7())).await;
        anyhow::ensure!(txn.outcome == Outcome::Ok, "a final read was not answered: {txn:?}");
        history.push(txn);
    }
    let delivered: HashMap<String, Vec<u64>> = records(&cluster, "delivered/")
        .await?
        .into_iter()
        .map(|(key, value)| {
            let chain = key.trim_start_matches("delivered/").to_owned();
            (chain, value.as_array().into_iter().flatten().filter_map(Value::as_u64).collect())
        })
        .collect();
    let marks = records(&cluster, "marks/").await?;
    let runs: Vec<sagas::Run> = runs
        .into_iter()
        .map(|(id, refused, status)| {
            let effects = marks
                .get(&format!("marks/{id}"))
                .and_then(Value::as_array)
                .map_or_else(Vec::new, |a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect());
            sagas::Run { id, refused, status, effects }
        })
        .collect();
    for (server, _) in hosts {
        server.stop();
    }

    let report = Report {
        seconds: args.duration.as_secs_f64(),
        hosts: args.hosts,
        kills,
        transactions: append::check(&history),
        events: deliveries::check(&published, &delivered),
        sagas: sagas::check(&marks_steps(), &runs),
        anomalies: Vec::new(),
        notes: std::mem::take(&mut *cluster.notes.lock().unwrap()),
    }
    .gathered();
    report.print(args.json);
    Ok(report)
}

/// The keys in use, each retired for a fresh one after its share of appends.
struct Keys {
    active: Vec<(u64, usize)>,
    next: u64,
    per_key: usize,
    used: BTreeSet<u64>,
}

impl Keys {
    fn new(count: usize, per_key: usize) -> Keys {
        let active: Vec<(u64, usize)> = (0..count as u64).map(|k| (k, 0)).collect();
        let used = active.iter().map(|(k, _)| *k).collect();
        Keys { active, next: count as u64, per_key, used }
    }

    /// A key to read or append to (an append counts towards its retirement).
    fn pick(&mut self, append: bool) -> u64 {
        let slot = rand::rng().random_range(0..self.active.len());
        let (key, writes) = self.active[slot];
        if append {
            if writes + 1 >= self.per_key {
                self.active[slot] = (self.next, 0);
                self.used.insert(self.next);
                self.next += 1;
            } else {
                self.active[slot].1 += 1;
            }
        }
        key
    }
}

/// One client's transactions until `end`: 1–4 reads and appends each.
async fn transactions(
    cluster: Arc<Cluster>,
    keys: Arc<Mutex<Keys>>,
    values: Arc<AtomicU64>,
    end: Instant,
) -> Vec<Txn> {
    let mut history = Vec::new();
    while Instant::now() < end {
        let ops = {
            let mut keys = keys.lock().unwrap();
            let mut rng = rand::rng();
            (0..rng.random_range(1..=4))
                .map(|_| {
                    if rng.random_bool(0.5) {
                        MicroOp::Read { key: keys.pick(false), list: None }
                    } else {
                        MicroOp::Append {
                            key: keys.pick(true),
                            value: values.fetch_add(1, Ordering::Relaxed),
                        }
                    }
                })
                .collect()
        };
        history.push(transact(&cluster, ops, &uuid::Uuid::now_v7().to_string()).await);
    }
    history
}

/// One transaction through `history.txn`, and what became of it.
async fn transact(cluster: &Cluster, ops: Vec<MicroOp>, key: &str) -> Txn {
    let sent: Vec<Value> = ops
        .iter()
        .map(|op| match op {
            MicroOp::Read { key, .. } => json!(["r", key.to_string(), null]),
            MicroOp::Append { key, value } => json!(["append", key.to_string(), value]),
        })
        .collect();
    match cluster.post("/v1/services/history/txn", key, &json!({"ops": sent})).await {
        Answer::Ok(answer) => {
            let done = answer["ops"].as_array().cloned().unwrap_or_default();
            let ops = ops
                .into_iter()
                .zip(done.iter().chain(std::iter::repeat(&Value::Null)))
                .map(|(op, done)| match op {
                    MicroOp::Read { key, .. } => MicroOp::Read {
                        key,
                        list: Some(
                            done[2].as_array().into_iter().flatten().filter_map(Value::as_u64).collect(),
                        ),
                    },
                    append => append,
                })
                .collect();
            Txn { ops, outcome: Outcome::Ok }
        }
        Answer::Failed(_) => Txn { ops, outcome: Outcome::Failed },
        Answer::Unknown(_) => Txn { ops, outcome: Outcome::Unknown },
    }
}

/// One chain's publisher: events one after the other in bursts, idle for longer than
/// the event retention between them.
async fn publish(
    cluster: Arc<Cluster>,
    chain: String,
    values: Arc<AtomicU64>,
    idle: Duration,
    end: Instant,
) -> Vec<deliveries::Publication> {
    let mut published = Vec::new();
    let mut burst_ends = Instant::now() + BURST;
    while Instant::now() < end {
        if Instant::now() >= burst_ends {
            tokio::time::sleep(idle.min(end.saturating_duration_since(Instant::now()))).await;
            burst_ends = Instant::now() + BURST;
            continue;
        }
        let n = values.fetch_add(1, Ordering::Relaxed);
        let key = format!("publish-{chain}-{n}");
        let outcome = match cluster
            .post("/v1/services/history/publish", &key, &json!({"chain": chain, "n": n}))
            .await
        {
            Answer::Ok(_) => Outcome::Ok,
            Answer::Failed(_) => Outcome::Failed,
            Answer::Unknown(_) => Outcome::Unknown,
        };
        published.push(deliveries::Publication { chain: chain.clone(), n, outcome });
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    published
}

/// The steps of `marks.toml`, as the checker expects them.
fn marks_steps() -> Vec<sagas::Step> {
    ["a", "b", "c", "d"]
        .iter()
        .map(|s| sagas::Step {
            action: format!("mark-{s}"),
            compensation: ["a", "b"].contains(s).then(|| format!("unmark-{s}")),
        })
        .collect()
}

/// One client's sagas until `end`: (id, the step refused), for each started. Half
/// complete; the rest are refused at one of the steps up to the pivot; some steps fail
/// once first (and are retried).
async fn start_sagas(cluster: Arc<Cluster>, end: Instant) -> Vec<(String, Option<usize>)> {
    let mut started = Vec::new();
    let steps = marks_steps();
    while Instant::now() < end {
        let (refused, flaky) = {
            let mut rng = rand::rng();
            let refused = rng.random_bool(0.5).then(|| rng.random_range(0..3));
            let flaky: serde_json::Map<String, Value> = steps
                .iter()
                .flat_map(|s| std::iter::once(&s.action).chain(&s.compensation))
                .filter(|_| rng.random_bool(0.2))
                .map(|operation| (operation.clone(), json!(1)))
                .collect();
            (refused, flaky)
        };
        let mut input = json!({"flaky": flaky});
        if let Some(at) = refused {
            input["refuse"] = json!(steps[at].action);
        }
        let key = uuid::Uuid::now_v7().to_string();
        if let Answer::Ok(saga) = cluster.post("/v1/sagas/marks", &key, &input).await
            && let Some(id) = saga["id"].as_str()
        {
            started.push((id.to_owned(), refused));
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    started
}

/// Waits until every saga started has ended (or the time is up): (id, refused,
/// status at the end).
async fn settle_sagas(
    cluster: &Cluster,
    started: &[(String, Option<usize>)],
    by: Instant,
) -> anyhow::Result<Vec<(String, Option<usize>, Option<String>)>> {
    let mut runs = Vec::with_capacity(started.len());
    for (id, refused) in started {
        let status = loop {
            let saga = cluster.get(&format!("/v1/sagas/{id}")).await?;
            let status = saga["status"].as_str().map(str::to_owned);
            let ended = matches!(status.as_deref(), Some("completed" | "compensated" | "stuck"));
            if ended || Instant::now() >= by {
                break status;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        runs.push((id.clone(), *refused, status));
    }
    Ok(runs)
}

/// Waits until every event of the run's chains is dispatched and none of its
/// deliveries is pending (or the time is up).
async fn settle_events(cluster: &Cluster, chains: usize, by: Instant) -> anyhow::Result<()> {
    for c in 0..chains {
        loop {
            let mut after = 0;
            let mut settled = true;
            loop {
                let page = cluster
                    .get(&format!("/v1/events?correlation=chain-{c}&after={after}&limit=1000"))
                    .await?;
                for event in page["events"].as_array().into_iter().flatten() {
                    let pending = event["deliveries"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|d| d["status"] == "pending");
                    settled &= event["dispatched"] == true && !pending;
                }
                match page["next"].as_i64() {
                    Some(next) => after = next,
                    None => break,
                }
            }
            if settled || Instant::now() >= by {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

/// Every record of `history` under `prefix`, by key.
async fn records(cluster: &Cluster, prefix: &str) -> anyhow::Result<HashMap<String, Value>> {
    let mut found = HashMap::new();
    let mut after = String::new();
    loop {
        let path =
            format!("/v1/services/history/records?prefix={prefix}&limit=1000&after={}", urlencode(&after));
        let page = cluster.get(&path).await?;
        for record in page["records"].as_array().into_iter().flatten() {
            if let Some(key) = record["key"].as_str() {
                found.insert(key.to_owned(), record["value"].clone());
            }
        }
        match page["next"].as_str() {
            Some(next) => after = next.to_owned(),
            None => return Ok(found),
        }
    }
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// What a run checked and found.
#[derive(Debug, serde::Serialize)]
struct Report {
    seconds: f64,
    hosts: usize,
    kills: usize,
    transactions: append::Checked,
    events: deliveries::Checked,
    sagas: sagas::Checked,
    /// Every anomaly found, of all three parts.
    anomalies: Vec<Anomaly>,
    /// The first answers that refused an operation or did not say what became of it.
    notes: Vec<String>,
}

impl Report {
    fn gathered(mut self) -> Report {
        self.anomalies = [&self.transactions.anomalies, &self.events.anomalies, &self.sagas.anomalies]
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        self
    }

    fn print(&self, json: bool) {
        if json {
            println!("{}", serde_json::to_string(self).expect("a report serialises"));
            return;
        }
        let t = &self.transactions;
        println!(
            "transactions: {} ({} acknowledged, {} unknown, {} failed), {} reads and {} appends over {} keys, {} dependencies",
            t.transactions, t.acknowledged, t.unknown, t.failed, t.reads, t.appends, t.keys, t.edges
        );
        let e = &self.events;
        println!(
            "events: {} published ({} acknowledged, {} unknown, {} failed) in {} chains, {} delivered",
            e.published, e.acknowledged, e.unknown, e.failed, e.chains, e.delivered
        );
        let s = &self.sagas;
        println!(
            "sagas: {} ({} completed, {} compensated), {} step effects; {} SIGKILLs",
            s.sagas, s.completed, s.compensated, s.steps, self.kills
        );
        for note in &self.notes {
            println!("an answer that refused or did not say: {note}");
        }
        if self.anomalies.is_empty() {
            println!("anomalies: none");
            return;
        }
        let mut by_kind: Vec<(Kind, Vec<&Anomaly>)> = Vec::new();
        for anomaly in &self.anomalies {
            match by_kind.iter_mut().find(|(kind, _)| *kind == anomaly.kind) {
                Some((_, list)) => list.push(anomaly),
                None => by_kind.push((anomaly.kind, vec![anomaly])),
            }
        }
        by_kind.sort_by_key(|(kind, _)| *kind);
        println!("anomalies: {}", self.anomalies.len());
        for (kind, list) in by_kind {
            println!("  {kind}: {}", list.len());
            for anomaly in list.iter().take(3) {
                println!("    {}", anomaly.detail);
            }
        }
    }
}
