//! The writer: a thread of its own owns a connection and commits what the invocations
//! send it, in batches (group commit), like SQLite's writer thread.
//!
//! Each batch is one PostgreSQL transaction, so one WAL flush, whatever its size, and
//! three round trips, whatever its size: every statement of a phase goes out at once
//! (pipelined) and the answers are read after.
//!
//! 1. the locks of the records every commit reads or writes (shared for a record it
//!    only read, exclusive for one it writes), then the checks of what every commit
//!    depends on (one statement for the whole batch per kind, and one per
//!    redelivery): its idempotency key, the versions of the records it read, its
//!    saga's version. Read under the locks, the versions stay as checked until the
//!    batch commits, whatever other hosts do: that is what makes invocations
//!    serializable across hosts (checked without them, two hosts could each commit a
//!    write computed from a record the other changed: write skew). They read the
//!    database as it was before the batch; what the batch's earlier commits change is
//!    overlaid, so each commit is checked as if those before it were written. A
//!    commit whose checks fail is refused and writes nothing; the batch goes on
//!    without it.
//! 2. the writes of the commits that hold (the rows of outcomes, records and saga
//!    updates as one statement per table, the rest a statement each), each guarded as
//!    in SQLite (`… WHERE version = <read>`), so that a change the checks did not see
//!    is still caught. Only another host's writer could make one; then the batch is
//!    rolled back, that commit refused, and the others written again.
//! 3. `COMMIT`.
//!
//! No savepoints: PostgreSQL keeps a subtransaction per savepoint until the
//! transaction ends, and past 64 in one transaction every other session's snapshots
//! slow down (the subtransaction cache overflows). Checking before writing needs none.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Config, Statement};

use super::cache::RecordCache;
use super::conn::{Conn, unavailable};
use super::prune;
use crate::store::health::{Health, PROBE_EVERY};
use crate::store::wakeups::{Hints, Wakeups};
use crate::store::{
    Commit, Conflict, DeliveryChange, DeliveryStatus, IdempotencyKey, PruneKind, SagaChange, Slot,
    StoreError, Subscriber, UploadChange, attempt_refused, saga_moved,
};

pub(super) enum Job {
    Commit(Box<Commit>, oneshot::Sender<Result<(), StoreError>>),
    Prune(PruneKind, i64, usize, oneshot::Sender<Result<usize, StoreError>>),
}

/// Commits that may wait for the writer; more are refused ([`StoreError::Overloaded`]).
pub(super) const QUEUE: usize = 4096;

/// Opens the writer's connection. Its transactions never wait on this host between
/// their round trips, so one idle inside a transaction for this long belongs to a host
/// that is paused or cut off: the server ends it, and the row and advisory locks it
/// holds go to the other hosts instead of waiting for it to come back.
pub(super) async fn open(config: &Config) -> Result<Conn, StoreError> {
    let conn = Conn::open(config).await?;
    conn.client.batch_execute("SET idle_in_transaction_session_timeout = '2s'").await.map_err(unavailable)?;
    Ok(conn)
}

/// Taken by every batch that publishes events, before it inserts them, and held until
/// it commits (a transaction-scoped advisory lock; `schema.rs` takes the same class,
/// 0x7761 ("wa"), with another key): the hosts' batches that publish take turns, so
/// event ids (from the sequence, drawn under the lock) grow in commit order. A reader
/// of the outbox then sees every event below the highest id it sees, and the
/// dispatcher's cursor never passes an event that commits later.
const PUBLISHING: &str = "SELECT pg_advisory_xact_lock(x'7761'::int, hashtext(current_schema()) + 1)";

/// Locks every record a batch's commits read or write, before the checks read their
/// versions, and holds the locks until the batch ends: a transaction-scoped advisory
/// lock per record (on [`record_lock`] of its service and key, so that a key with no
/// row is locked too), exclusive where a commit writes the record, shared where the
/// commits only read it. Taken in the order of the locks' keys (sorted by the caller)
/// by every host, so that two batches never each hold a lock the other waits for.
const LOCK_RECORDS: &str = "SELECT CASE WHEN k.exclusive THEN pg_advisory_xact_lock(k.lock)
         ELSE pg_advisory_xact_lock_shared(k.lock) END
     FROM unnest($1::int8[], $2::bool[]) AS k (lock, exclusive)";

/// The advisory lock of one record: FNV-1a (64 bits) of its service and key, the same
/// on every host and every build (a collision only makes two records share a lock).
/// The single-key form of advisory locks, apart from the two-key form the schema's
/// and the event ids' locks use.
fn record_lock(service: &str, key: &str) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in service.bytes().chain([0]).chain(key.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash as i64
}

/// The record locks a batch takes: (lock, exclusive), sorted by lock, one per lock
/// (exclusive if any commit writes a record of it).
fn record_locks(commits: &[&Commit]) -> (Vec<i64>, Vec<bool>) {
    let mut locks: Vec<(i64, bool)> = commits
        .iter()
        .flat_map(|commit| {
            let reads =
                commit.changes.reads.iter().map(|(key, _)| (record_lock(&commit.service, key), false));
            let writes = commit.changes.writes.iter().map(|w| (record_lock(&commit.service, &w.key), true));
            reads.chain(writes)
        })
        .collect();
    // Exclusive first within a lock, so that dedup keeps it.
    locks.sort_unstable_by_key(|&(lock, exclusive)| (lock, !exclusive));
    locks.dedup_by_key(|(lock, _)| *lock);
    locks.into_iter().unzip()
}

/// Tell the other hosts' listeners (`listen.rs`) what a batch changed, at its commit
/// (`NOTIFY` is transactional); the payload names the schema, since channels are per
/// database and several deployments may share one.
const NOTIFY_EVENTS: &str = "SELECT pg_notify('wasaga_events', current_schema())";
const NOTIFY_PLUGINS: &str = "SELECT pg_notify('wasaga_plugins', current_schema())";

/// Starts the writer on a thread of its own, with its own connection, once that
/// connection is open. Not a task of the host's runtime: there, each of a batch's round
/// trips (the writer's task, its connection's task) waited in the run queues behind
/// plugin calls, and a batch of 32 commits took 7 ms, twice PostgreSQL's share of it.
/// Every invocation waits for a batch, so the writer's turn-around is the host's.
pub(super) async fn spawn(
    config: Config,
    max_batch: usize,
    health: Arc<Health>,
    wakeups: Arc<Wakeups>,
    cache: Arc<RecordCache>,
) -> Result<mpsc::Sender<Job>, StoreError> {
    let (sender, receiver) = mpsc::channel(QUEUE);
    let (opened, open_answer) = oneshot::channel();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| StoreError::Unavailable(format!("cannot start the writer's runtime: {e}")))?;
    std::thread::Builder::new()
        .name("wasaga-pg-writer".into())
        .spawn(move || {
            runtime.block_on(async move {
                let conn = match open(&config).await {
                    Ok(conn) => conn,
                    Err(error) => return drop(opened.send(Err(error))),
                };
                let _ = opened.send(Ok(()));
                run(conn, config, receiver, max_batch.max(1), health, wakeups, cache).await
            })
        })
        .map_err(|e| StoreError::Unavailable(format!("cannot start the writer's thread: {e}")))?;
    open_answer.await.map_err(|_| StoreError::Unavailable("the writer's thread stopped".into()))??;
    Ok(sender)
}

async fn run(
    mut conn: Conn,
    config: Config,
    mut receiver: mpsc::Receiver<Job>,
    max_batch: usize,
    health: Arc<Health>,
    wakeups: Arc<Wakeups>,
    cache: Arc<RecordCache>,
) {
    let mut batch = Vec::with_capacity(max_batch);
    loop {
        // The store may be marked failing by a read that could not connect as well as
        // by a batch: an idle writer looks every second, and probes while it fails.
        let job = match tokio::time::timeout(PROBE_EVERY, receiver.recv()).await {
            Ok(Some(job)) => job,
            Ok(None) => return,
            Err(_) => {
                if health.is_failing() {
                    probe(&mut conn, &config, &health, &cache).await;
                }
                continue;
            }
        };
        batch.push(job);
        while batch.len() < max_batch {
            match receiver.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        if conn.client.is_closed() {
            match open(&config).await {
                Ok(fresh) => {
                    cache.clear();
                    conn = fresh;
                }
                Err(error) => {
                    health.failed(&error.to_string());
                    fail_all(batch.drain(..), &error);
                    continue;
                }
            }
        }
        let hints = Hints::of(batch.iter().filter_map(|job| match job {
            Job::Commit(commit, _) => Some(&**commit),
            Job::Prune(..) => None,
        }));
        // A failed batch marks the store failing itself (before it answers anyone).
        let _ = write_batch(&mut conn, &config, std::mem::take(&mut batch), hints, &health, &cache).await;
        // Also after a failed batch, as in SQLite's writer: one whose COMMIT's answer was
        // lost may be durable, and a hint that finds nothing new costs one look.
        wakeups.wake(hints);
    }
}

/// While the store fails, a commit of one row every second tells when it writes again.
async fn probe(conn: &mut Conn, config: &Config, health: &Health, cache: &RecordCache) {
    if conn.client.is_closed() {
        match open(config).await {
            Ok(fresh) => {
                cache.clear();
                *conn = fresh;
            }
            Err(error) => return health.failed(&error.to_string()),
        }
    }
    let sql = "INSERT INTO probes (id, at) VALUES (1, $1) ON CONFLICT (id) DO UPDATE SET at = excluded.at";
    match conn.execute(sql, &[&crate::clock::now_ms()]).await {
        Ok(_) => health.committed(),
        Err(error) => health.failed(&error.to_string()),
    }
}

enum Answer {
    Commit(Result<(), StoreError>),
    Prune(Result<usize, StoreError>),
}

/// Writes a batch and answers each job. An error means the database failed: every job
/// told "stored" is committed, and none told otherwise is.
async fn write_batch(
    conn: &mut Conn,
    config: &Config,
    mut jobs: Vec<Job>,
    hints: Hints,
    health: &Health,
    cache: &RecordCache,
) -> Result<(), StoreError> {
    let commits = jobs.iter().filter(|job| matches!(job, Job::Commit(..))).count();
    crate::metrics::metrics().commit_batch.observe(commits as f64);
    loop {
        match try_batch(conn, config, &jobs, hints, cache).await {
            Ok(Tried::Again) => continue,
            Ok(Tried::Late(i, refusal)) => {
                // Rolled back: that commit is refused, the others go again.
                if let Job::Commit(commit, reply) = jobs.remove(i) {
                    forget(cache, &commit);
                    let _ = reply.send(Err(refusal));
                }
            }
            Ok(Tried::Done(answers)) => {
                // Well again before anyone hears of it: a client told "stored" may ask
                // /readyz next.
                health.committed();
                for (job, answer) in jobs.into_iter().zip(answers) {
                    // A receiver that went away (the caller was cancelled) needs no answer.
                    match (job, answer) {
                        (Job::Commit(_, reply), Answer::Commit(result)) => {
                            let _ = reply.send(result);
                        }
                        (Job::Prune(.., reply), Answer::Prune(result)) => {
                            let _ = reply.send(result);
                        }
                        _ => unreachable!("answers follow their jobs"),
                    }
                }
                return Ok(());
            }
            Err(error) => {
                let _ = conn.client.batch_execute("ROLLBACK").await;
                // Failing before anyone hears of it: a refused client may ask /readyz next.
                health.failed(&error.to_string());
                fail_all(jobs.into_iter(), &error);
                return Err(error);
            }
        }
    }
}

enum Tried {
    /// Committed; the answers of the jobs, in order.
    Done(Vec<Answer>),
    /// Rolled back: job `i`'s write met a change its checks did not see.
    Late(usize, StoreError),
    /// Rolled back: another host's batch and this one each waited for the other's rows;
    /// PostgreSQL broke the cycle by failing this one. Everything goes again.
    Again,
}

/// One attempt at a batch, in three round trips whatever its size: the checks of every
/// commit, the writes of those that hold, the commit. The checks read the database as
/// it was before the batch; what the batch's own earlier commits changed is overlaid
/// (`Overlay`), so a commit is checked as if each before it were already written.
/// Retention's jobs run after the commits, one by one.
/// `hints`: what the batch changes that other hosts' tasks look for (told by `NOTIFY`).
async fn try_batch(
    conn: &mut Conn,
    config: &Config,
    jobs: &[Job],
    hints: Hints,
    cache: &RecordCache,
) -> Result<Tried, StoreError> {
    let checks = prepare_checks(conn).await?;
    let client = &conn.client;
    let commits: Vec<&Commit> = jobs
        .iter()
        .filter_map(|job| match job {
            Job::Commit(commit, _) => Some(&**commit),
            Job::Prune(..) => None,
        })
        .collect();
    let (begun, facts) = tokio::join!(client.batch_execute("BEGIN"), facts(client, &checks, &commits));
    begun.map_err(unavailable)?;
    let facts = match facts {
        Ok(facts) => facts,
        // Its locks wait on a batch that waits on this one (only batches of hosts that
        // lock otherwise can: an older wasaga's, retention's): everything goes again.
        Err(error) if error.code() == Some(&SqlState::T_R_DEADLOCK_DETECTED) => {
            client.batch_execute("ROLLBACK").await.map_err(unavailable)?;
            return Ok(Tried::Again);
        }
        Err(error) => return Err(unavailable(error)),
    };
    let mut overlay = Overlay::default();
    let mut batch = Writes::default();
    let mut answers = Vec::with_capacity(jobs.len());
    let mut facts = facts.into_iter();
    for (i, job) in jobs.iter().enumerate() {
        let Job::Commit(commit, _) = job else {
            answers.push(None);
            continue;
        };
        let facts = facts.next().expect("one set of facts per commit");
        let verdict = overlay.check(commit, &facts);
        if let Err(StoreError::Conflict(_)) = verdict {
            forget(cache, commit);
        }
        if verdict.is_ok() {
            overlay.apply(commit);
            batch.add(i, commit);
        }
        answers.push(Some(Answer::Commit(verdict)));
    }
    // The records' rows need no locks of their own: the batch holds every record it
    // writes exclusively since its checks, so no other host's batch writes them.
    let mut steps = Vec::new();
    if commits.iter().any(|commit| !commit.changes.events.is_empty()) {
        steps.push(step(PUBLISHING, Vec::new()));
    }
    steps.extend(batch.steps());
    for (wanted, notify) in [(hints.events, NOTIFY_EVENTS), (hints.plugins, NOTIFY_PLUGINS)] {
        if wanted {
            steps.push(step(notify, Vec::new()));
        }
    }
    let xact = match pipeline(conn, &steps).await? {
        Pipelined::Done(xact) => xact,
        Pipelined::Late(owner, refusal) => {
            conn.client.batch_execute("ROLLBACK").await.map_err(unavailable)?;
            return Ok(Tried::Late(owner, refusal));
        }
        Pipelined::Deadlock => {
            conn.client.batch_execute("ROLLBACK").await.map_err(unavailable)?;
            return Ok(Tried::Again);
        }
    };
    for (job, answer) in jobs.iter().zip(answers.iter_mut()) {
        if let Job::Prune(kind, before, size, _) = job {
            *answer = Some(Answer::Prune(Ok(prune::prune(conn, *kind, *before, *size).await?)));
        }
    }
    if let Err(error) = conn.client.batch_execute("COMMIT").await {
        // The connection broke with the COMMIT sent: the server may have committed
        // (its answer lost on the way, say in a failover or a network cut). Asking a
        // new connection tells the callers the truth either way, where it can.
        cache.clear();
        if !committed(conn, config, &xact).await.map_err(|why| {
            StoreError::Unavailable(format!(
                "PostgreSQL: the connection broke at COMMIT ({error}); whether the batch committed is unknown ({why}): \
                 retry with the same idempotency key"
            ))
        })? {
            return Err(unavailable(error));
        }
        tracing::warn!(xact, "the COMMIT's answer was lost ({error}), but the batch committed");
    }
    // Before anyone is answered: a caller's next invocation reads what it just wrote.
    for (job, answer) in jobs.iter().zip(&answers) {
        if let (Job::Commit(commit, _), Some(Answer::Commit(Ok(())))) = (job, answer) {
            for write in &commit.changes.writes {
                let slot = Slot { value: write.value.clone(), version: write.version };
                cache.offer(&commit.service, &write.key, slot);
            }
        }
    }
    Ok(Tried::Done(answers.into_iter().map(|a| a.expect("every job answered")).collect()))
}

/// Whether transaction `xact` committed, asked on a new connection (which then
/// replaces the broken one). Waits while the server still finishes it.
async fn committed(conn: &mut Conn, config: &Config, xact: &str) -> Result<bool, String> {
    *conn = open(config).await.map_err(|e| e.to_string())?;
    let sql = "SELECT pg_xact_status($1::text::xid8)";
    for _ in 0..50 {
        let status: Option<String> =
            conn.client.query_one(sql, &[&xact]).await.map_err(|e| e.to_string())?.get(0);
        match status.as_deref() {
            Some("committed") => return Ok(true),
            Some("aborted") => return Ok(false),
            Some("in progress") => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            other => return Err(format!("the server says {other:?} of transaction {xact}")),
        }
    }
    Err(format!("transaction {xact} was still in progress after a second"))
}

/// Forgets every record a refused commit read or wrote: one of them at least is
/// another version in the database, and its re-run must read them there.
fn forget(cache: &RecordCache, commit: &Commit) {
    for (key, _) in expected(commit) {
        cache.forget(&commit.service, key);
    }
}

fn fail_all(jobs: impl Iterator<Item = Job>, error: &StoreError) {
    for job in jobs {
        match job {
            Job::Commit(_, reply) => {
                let _ = reply.send(Err(error.clone()));
            }
            Job::Prune(.., reply) => {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }
}

// What a batch's checks read, one statement each for the whole batch (over arrays of
// what its commits depend on), whatever its size: a statement per commit cost
// PostgreSQL more in handling the statements than in their lookups, as the writes did.
// Each looks its rows up by key, one lookup per element.

/// The ordinals (from 1) of the idempotency keys that have an unexpired outcome.
const OUTCOMES_STORED: &str = "SELECT k.i FROM unnest($1::text[], $2::text[], $3::text[], $4::int8[])
         WITH ORDINALITY AS k (service, space, key, at, i)
     WHERE EXISTS (SELECT 1 FROM invocations v
         WHERE v.service = k.service AND v.space = k.space AND v.key = k.key AND v.expires_at > k.at)";
/// The records that have a row: version, and whether it is live (not a tombstone).
const RECORD_VERSIONS: &str = "SELECT r.service, r.key, r.version, r.value IS NOT NULL
     FROM unnest($1::text[], $2::text[]) AS k (service, key)
     CROSS JOIN LATERAL (SELECT service, key, version, value FROM records r
         WHERE r.service = k.service AND r.key = k.key) AS r";
const FLOORS: &str = "SELECT service, floor FROM version_floors WHERE service = ANY($1::text[])";
const SAGA_VERSIONS: &str = "SELECT s.id, s.version FROM unnest($1::text[]) AS k (id)
     CROSS JOIN LATERAL (SELECT id, version FROM sagas s WHERE s.id = k.id) AS s";
const SAGAS_BY_KEY: &str = "SELECT s.name, s.key, s.version FROM unnest($1::text[], $2::text[]) AS k (name, key)
     CROSS JOIN LATERAL (SELECT name, key, version FROM sagas s WHERE s.name = k.name AND s.key = k.key) AS s";
const DELIVERY_STATUS: &str = "SELECT status FROM deliveries WHERE event_id = $1 AND subscriber = $2";

/// What the database says of what one commit depends on, before the batch.
struct Facts {
    /// An unexpired outcome is stored for its idempotency key.
    duplicate: bool,
    /// (version, exists) of the records it depends on that have a row.
    records: HashMap<String, (u64, bool)>,
    /// Its service's version floor: what a key with no row is at.
    floor: u64,
    /// The version of its saga: the one it updates, or one of the same name and key.
    saga: Option<u64>,
    /// For each redelivery: is that delivery dead.
    dead: Vec<bool>,
}

/// Every version the commit depends on: what it read, and for a write without a read,
/// the version just below it.
fn expected(commit: &Commit) -> Vec<(&str, u64)> {
    let mut expected: Vec<(&str, u64)> = commit.changes.reads.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    for write in &commit.changes.writes {
        if !commit.changes.reads.iter().any(|(k, _)| *k == write.key) {
            expected.push((&write.key, write.version - 1));
        }
    }
    expected
}

/// The locks' and the checks' statements, prepared on the writer's connection.
type Checks = [Statement; 7];

async fn prepare_checks(conn: &mut Conn) -> Result<Checks, StoreError> {
    Ok([
        conn.statement(LOCK_RECORDS).await?,
        conn.statement(OUTCOMES_STORED).await?,
        conn.statement(RECORD_VERSIONS).await?,
        conn.statement(FLOORS).await?,
        conn.statement(SAGA_VERSIONS).await?,
        conn.statement(SAGAS_BY_KEY).await?,
        conn.statement(DELIVERY_STATUS).await?,
    ])
}

/// Takes the batch's record locks and reads the facts of every commit under them, in
/// one pipeline (which goes out with the batch's `BEGIN`, the locks first).
async fn facts(
    client: &Client,
    checks: &Checks,
    commits: &[&Commit],
) -> Result<Vec<Facts>, tokio_postgres::Error> {
    let [lock_records, outcomes_stored, record_versions, floors, saga_versions, sagas_by_key, delivery] =
        checks;
    let locks = record_locks(commits);
    let outcomes: Vec<_> = commits.iter().filter_map(|c| c.outcome.as_ref()).collect();
    let keys: (Vec<&str>, Vec<&str>, Vec<&str>, Vec<i64>) = (
        outcomes.iter().map(|o| o.key.service.as_str()).collect(),
        outcomes.iter().map(|o| o.key.space.as_str()).collect(),
        outcomes.iter().map(|o| o.key.key.as_str()).collect(),
        outcomes.iter().map(|o| o.created_at).collect(),
    );
    let mut records: Vec<(&str, &str)> = commits
        .iter()
        .flat_map(|c| expected(c).into_iter().map(|(key, _)| (c.service.as_str(), key)))
        .collect();
    records.sort_unstable();
    records.dedup();
    let (record_services, record_keys): (Vec<&str>, Vec<&str>) = records.into_iter().unzip();
    let mut services: Vec<&str> = commits.iter().map(|c| c.service.as_str()).collect();
    services.sort_unstable();
    services.dedup();
    let (mut ids, mut names, mut saga_keys) = (Vec::new(), Vec::new(), Vec::new());
    for commit in commits {
        match &commit.saga {
            Some(SagaChange::Update { id, .. }) => ids.push(id.as_str()),
            Some(SagaChange::Create(row)) => {
                names.push(row.name.as_str());
                saga_keys.push(row.key.as_str());
            }
            None => {}
        }
    }
    let redeliveries: Vec<(i64, &str)> = commits
        .iter()
        .flat_map(|c| &c.deliveries)
        .filter_map(|change| match change {
            DeliveryChange::Redeliver { event_id, subscriber, .. } => Some((*event_id, subscriber.as_str())),
            _ => None,
        })
        .collect();
    let params: [&[&(dyn ToSql + Sync)]; 5] = [
        &[&keys.0, &keys.1, &keys.2, &keys.3],
        &[&record_services, &record_keys],
        &[&services],
        &[&ids],
        &[&names, &saga_keys],
    ];
    let (locked, stored, versions, floors, by_id, by_key, dead) = tokio::join!(
        async {
            match locks.0.is_empty() {
                true => Ok(0),
                false => client.execute(lock_records, &[&locks.0, &locks.1]).await,
            }
        },
        client.query(outcomes_stored, params[0]),
        client.query(record_versions, params[1]),
        client.query(floors, params[2]),
        client.query(saga_versions, params[3]),
        client.query(sagas_by_key, params[4]),
        futures_util::future::join_all(redeliveries.iter().map(|(event_id, subscriber)| async move {
            let row = client.query_opt(delivery, &[event_id, subscriber]).await?;
            Ok::<_, tokio_postgres::Error>(row.is_some_and(|row| row.get::<_, &str>(0) == "dead"))
        })),
    );
    locked?;
    let stored: HashSet<usize> = stored?.iter().map(|row| row.get::<_, i64>(0) as usize - 1).collect();
    let versions: HashMap<(String, String), (u64, bool)> = versions?
        .iter()
        .map(|row| ((row.get(0), row.get(1)), (row.get::<_, i64>(2) as u64, row.get(3))))
        .collect();
    let floors: HashMap<String, u64> =
        floors?.iter().map(|row| (row.get(0), row.get::<_, i64>(1) as u64)).collect();
    let by_id: HashMap<String, u64> =
        by_id?.iter().map(|row| (row.get(0), row.get::<_, i64>(1) as u64)).collect();
    let by_key: HashMap<(String, String), u64> =
        by_key?.iter().map(|row| ((row.get(0), row.get(1)), row.get::<_, i64>(2) as u64)).collect();
    let mut dead = dead.into_iter();
    // The outcomes were sent in the order of their commits.
    let mut ordinals = 0..;
    let mut facts = Vec::with_capacity(commits.len());
    for commit in commits {
        let duplicate = match commit.outcome {
            Some(_) => stored.contains(&ordinals.next().expect("unbounded")),
            None => false,
        };
        let records = expected(commit)
            .into_iter()
            .filter_map(|(key, _)| {
                Some((key.to_owned(), *versions.get(&(commit.service.clone(), key.to_owned()))?))
            })
            .collect();
        let saga = match &commit.saga {
            Some(SagaChange::Update { id, .. }) => by_id.get(id).copied(),
            Some(SagaChange::Create(row)) => by_key.get(&(row.name.clone(), row.key.clone())).copied(),
            None => None,
        };
        let redeliveries = commit
            .deliveries
            .iter()
            .filter(|change| matches!(change, DeliveryChange::Redeliver { .. }))
            .count();
        facts.push(Facts {
            duplicate,
            records,
            floor: floors.get(&commit.service).copied().unwrap_or(0),
            saga,
            dead: dead.by_ref().take(redeliveries).collect::<Result<_, _>>()?,
        });
    }
    Ok(facts)
}

/// What the batch's commits accepted so far changed, keyed like the facts: a later
/// commit of the batch is checked against it first.
#[derive(Default)]
struct Overlay {
    /// (version, exists) of the records written, by service and key.
    records: HashMap<String, HashMap<String, (u64, bool)>>,
    /// Outcomes stored by the batch, with when they expire.
    outcomes: HashMap<IdempotencyKey, i64>,
    sagas_by_key: HashSet<(String, String)>,
    saga_versions: HashMap<String, u64>,
    dead: HashMap<(i64, String), bool>,
}

impl Overlay {
    /// The checks of one commit, in SQLite's order: its idempotency key (a duplicate
    /// of a committed invocation learns `Duplicate`, and replays, rather than a
    /// conflict on the records it changed), the records it depends on, its saga, its
    /// redeliveries.
    fn check(&self, commit: &Commit, facts: &Facts) -> Result<(), StoreError> {
        if let Some(o) = &commit.outcome
            && (facts.duplicate || self.outcomes.get(&o.key).is_some_and(|expires| *expires > o.created_at))
        {
            return Err(StoreError::Duplicate(o.key.key.clone()));
        }
        for (key, read) in expected(commit) {
            let (version, exists) = self
                .records
                .get(&commit.service)
                .and_then(|written| written.get(key))
                .or_else(|| facts.records.get(key))
                .copied()
                .unwrap_or((facts.floor, false));
            if version != read {
                let conflict = Conflict {
                    key: key.to_owned(),
                    expected: (read > 0).then_some(read),
                    actual: exists.then_some(version),
                };
                return Err(conflict.into());
            }
        }
        match &commit.saga {
            Some(SagaChange::Create(row))
                if facts.saga.is_some()
                    || self.sagas_by_key.contains(&(row.name.clone(), row.key.clone())) =>
            {
                return Err(StoreError::Duplicate(row.key.clone()));
            }
            Some(SagaChange::Update { id, version, .. }) => {
                let actual = self.saga_versions.get(id).copied().or(facts.saga);
                if actual != Some(*version) {
                    return Err(saga_moved(id, *version, actual));
                }
            }
            _ => {}
        }
        let redeliveries = commit.deliveries.iter().filter_map(|change| match change {
            DeliveryChange::Redeliver { event_id, subscriber, .. } => Some((*event_id, subscriber)),
            _ => None,
        });
        for ((event_id, subscriber), dead) in redeliveries.zip(&facts.dead) {
            if !self.dead.get(&(event_id, subscriber.clone())).copied().unwrap_or(*dead) {
                return Err(StoreError::Invalid(format!(
                    "no dead delivery of event {event_id} to `{subscriber}`"
                )));
            }
        }
        Ok(())
    }

    /// Records what an accepted commit changes.
    fn apply(&mut self, commit: &Commit) {
        if let Some(o) = &commit.outcome {
            self.outcomes.insert(o.key.clone(), o.expires_at);
        }
        if !commit.changes.writes.is_empty() {
            let written = self.records.entry(commit.service.clone()).or_default();
            for write in &commit.changes.writes {
                written.insert(write.key.clone(), (write.version, write.value.is_some()));
            }
        }
        match &commit.saga {
            Some(SagaChange::Create(row)) => {
                self.sagas_by_key.insert((row.name.clone(), row.key.clone()));
                self.saga_versions.insert(row.id.clone(), row.version);
            }
            Some(SagaChange::Update { id, version, .. }) => {
                self.saga_versions.insert(id.clone(), version + 1);
            }
            None => {}
        }
        for change in &commit.deliveries {
            match change {
                DeliveryChange::Update { event_id, subscriber, status, .. } => {
                    self.dead.insert((*event_id, subscriber.clone()), *status == DeliveryStatus::Dead);
                }
                DeliveryChange::Redeliver { event_id, subscriber, .. } => {
                    self.dead.insert((*event_id, subscriber.clone()), false);
                }
                DeliveryChange::Create { .. } => {}
            }
        }
    }
}

type Param = Box<dyn ToSql + Sync + Send>;

/// One statement of a pipeline, and how its answer is checked.
struct Step {
    sql: &'static str,
    params: Vec<Param>,
    guard: Guard,
}

/// What a statement must have changed, else the commit it writes for meets a change
/// its checks did not see, and is refused.
enum Guard {
    None,
    /// Exactly one row, else job `.0` is refused with `.1`.
    One(usize, StoreError),
    /// A statement that writes rows of many commits and returns the key of each row it
    /// changed: each (key, job, refusal) whose key it did not return refuses its job.
    Rows(Vec<(String, usize, StoreError)>),
}

fn step(sql: &'static str, params: Vec<Param>) -> Step {
    Step { sql, params, guard: Guard::None }
}

fn guarded(sql: &'static str, params: Vec<Param>, job: usize, refusal: StoreError) -> Step {
    Step { sql, params, guard: Guard::One(job, refusal) }
}

enum Pipelined {
    /// Every step ran; the transaction's id (to ask about it if its COMMIT's answer is
    /// lost).
    Done(String),
    /// A guarded step did not change what it had to (the first such): this job is
    /// refused with this.
    Late(usize, StoreError),
    /// PostgreSQL found a deadlock with another host's batch and failed this one.
    Deadlock,
}

/// Sends every statement at once and reads the answers after (one round trip);
/// PostgreSQL runs them in order.
async fn pipeline(conn: &mut Conn, steps: &[Step]) -> Result<Pipelined, StoreError> {
    let mut statements = Vec::with_capacity(steps.len());
    for step in steps {
        statements.push(conn.statement(step.sql).await?);
    }
    let xact_id = conn.statement(XACT_ID).await?;
    let client = &conn.client;
    // The transaction's id is asked in the same round trip, after the steps.
    let (results, xact) = tokio::join!(
        futures_util::future::join_all(steps.iter().zip(&statements).map(|(step, statement)| {
            let params: Vec<&(dyn ToSql + Sync)> = step.params.iter().map(|p| p.as_ref() as _).collect();
            async move {
                match step.guard {
                    Guard::Rows(_) => client.query(statement, &params).await.map(Changed::Rows),
                    _ => client.execute(statement, &params).await.map(Changed::Count),
                }
            }
        })),
        client.query_one(&xact_id, &[])
    );
    let mut late = None;
    for (step, result) in steps.iter().zip(results) {
        let changed = match result {
            Ok(changed) => changed,
            Err(error) if error.code() == Some(&SqlState::T_R_DEADLOCK_DETECTED) => {
                return Ok(Pipelined::Deadlock);
            }
            Err(error) => return Err(unavailable(error)),
        };
        if late.is_none() {
            late = step.guard.missed(changed);
        }
    }
    match late {
        Some((job, refusal)) => Ok(Pipelined::Late(job, refusal)),
        None => Ok(Pipelined::Done(xact.map_err(unavailable)?.get(0))),
    }
}

/// What a statement changed: a count of rows, or the rows it returned.
enum Changed {
    Count(u64),
    Rows(Vec<tokio_postgres::Row>),
}

impl Guard {
    /// The first job refused by what its statement changed.
    fn missed(&self, changed: Changed) -> Option<(usize, StoreError)> {
        match (self, changed) {
            (Guard::One(job, refusal), Changed::Count(n)) if n != 1 => Some((*job, refusal.clone())),
            (Guard::Rows(expected), Changed::Rows(rows)) => {
                let returned: HashSet<String> = rows.iter().map(row_key).collect();
                let (_, job, refusal) = expected.iter().find(|(key, ..)| !returned.contains(key))?;
                Some((*job, refusal.clone()))
            }
            _ => None,
        }
    }
}

/// The key of a row a multi-row write returned: its key columns, joined by NUL
/// (which no key holds).
fn row_key(row: &tokio_postgres::Row) -> String {
    (0..row.len()).map(|i| row.get::<_, &str>(i)).collect::<Vec<_>>().join("\0")
}

/// The batch's transaction id (assigned by this call if no step has yet).
const XACT_ID: &str = "SELECT pg_current_xact_id()::text";

// The writes most commits make are each one statement for the whole batch, over
// arrays of the batch's rows (`unnest`): a statement per row cost PostgreSQL more in
// the statement's handling than in the row's (~150 statements a batch), and a
// batch's writes took 3.4 ms, the longest of its round trips. Each returns the keys
// of the rows it changed, which are the rows whose guard held.
const STORE_OUTCOMES: &str =
    "INSERT INTO invocations (service, space, key, fingerprint, operation, ok, output,
         digest, correlation_id, created_at, expires_at)
     SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[], $5::text[], $6::bool[],
         $7::bytea[], $8::text[], $9::text[], $10::int8[], $11::int8[])
     ON CONFLICT (service, space, key) DO UPDATE SET
         fingerprint = excluded.fingerprint, operation = excluded.operation,
         ok = excluded.ok, output = excluded.output, digest = excluded.digest,
         correlation_id = excluded.correlation_id,
         created_at = excluded.created_at, expires_at = excluded.expires_at
     WHERE invocations.expires_at <= excluded.created_at
     RETURNING service, space, key";
/// A write's version is the one it read plus one.
const WRITE_RECORDS: &str = "INSERT INTO records (service, key, value, version, deleted_at)
     SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[], $4::int8[], $5::int8[])
     ON CONFLICT (service, key) DO UPDATE SET
         value = excluded.value, version = excluded.version, deleted_at = excluded.deleted_at
     WHERE records.version = excluded.version - 1
     RETURNING service, key";
/// The owner's check is here only (the batch's checks read the version alone): a saga
/// taken over by another host is rare, and refusing it late costs a batch's redo.
const UPDATE_SAGAS: &str = "UPDATE sagas SET status = u.status, state = u.state, version = u.version + 1,
         updated_at = u.at, owner = coalesce(u.by, sagas.owner)
     FROM unnest($1::text[], $2::int8[], $3::text[], $4::text[], $5::int8[], $6::text[])
         AS u (id, version, status, state, at, by)
     WHERE sagas.id = u.id AND sagas.version = u.version
       AND (u.by IS NULL OR sagas.owner IS NULL OR sagas.owner = u.by OR sagas.status = 'stuck')
     RETURNING sagas.id";
const CREATE_SAGA: &str = "INSERT INTO sagas
         (id, name, status, input, state, version, key, fingerprint, created_at, updated_at, owner)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
     ON CONFLICT DO NOTHING";
const CREATE_DELIVERY: &str =
    "INSERT INTO deliveries (event_id, subscriber, operation, topic, correlation_id,
         status, attempts, next_at, created_at)
     VALUES ($1, $2, $3, $4, $5, 'pending', 0, $6, $6)
     ON CONFLICT DO NOTHING";
const DISPATCHED: &str = "UPDATE dispatch SET through = GREATEST(through, $1) WHERE id = 1";
const UPDATE_DELIVERY: &str = "UPDATE deliveries SET status = $3, attempts = $4, next_at = $5, outcome = $6,
         last_error = $7, done_at = $8
     WHERE event_id = $1 AND subscriber = $2 AND status = 'pending' AND attempts = $4 - 1";
const REDELIVER: &str = "UPDATE deliveries SET status = 'pending', next_at = $3
     WHERE event_id = $1 AND subscriber = $2 AND status = 'dead'";
const SAVE_DEFINITION: &str = "INSERT INTO saga_definitions (digest, name, text, saved_at) VALUES ($1, $2, $3, $4)
     ON CONFLICT (digest) DO UPDATE SET name = excluded.name, text = excluded.text, saved_at = excluded.saved_at";
const KEEP_UPLOAD: &str = "INSERT INTO plugin_uploads (service, digest, base, wasm, uploaded_at)
     VALUES ($1, $2, $3, $4, $5)
     ON CONFLICT (service) DO UPDATE SET digest = excluded.digest, base = excluded.base,
         wasm = excluded.wasm, uploaded_at = excluded.uploaded_at";
const DISCARD_UPLOAD: &str = "DELETE FROM plugin_uploads WHERE service = $1";
const PUBLISH: &str =
    "INSERT INTO outbox (service, topic, payload, correlation_id, created_at, traceparent, subscribers)
     VALUES ($1, $2, $3, $4, $5, $6, $7)";

/// A batch's writes: the rows most commits write, gathered per table into one
/// statement each, and the rest, one statement per change in commit order.
#[derive(Default)]
struct Writes {
    outcomes: Vec<Row<11>>,
    records: Vec<Row<5>>,
    sagas: Vec<Row<6>>,
    others: Vec<Step>,
}

/// One row of a multi-row write: the job it is for, its key, its columns' values, and
/// what the job is refused with if the row's guard does not hold.
struct Row<const N: usize> {
    job: usize,
    key: String,
    values: [Param; N],
    refusal: StoreError,
}
impl Writes {
    /// Adds the writes of checked commit `job`.
    fn add(&mut self, job: usize, commit: &Commit) {
        let service = &commit.service;
        if let Some(o) = &commit.outcome {
            let (ok, output) = match &o.result {
                Ok(output) => (true, output.clone()),
                Err(reason) => (false, reason.clone().into_bytes()),
            };
            let k = &o.key;
            self.outcomes.push(Row {
                job,
                key: format!("{}\0{}\0{}", k.service, k.space.as_str(), k.key),
                values: [
                    Box::new(k.service.clone()),
                    Box::new(k.space.as_str()),
                    Box::new(k.key.clone()),
                    Box::new(o.fingerprint.to_vec()),
                    Box::new(o.operation.clone()),
                    Box::new(ok),
                    Box::new(output),
                    Box::new(o.digest.to_string()),
                    Box::new(o.correlation_id.clone()),
                    Box::new(o.created_at),
                    Box::new(o.expires_at),
                ],
                refusal: StoreError::Duplicate(k.key.clone()),
            });
        }
        for write in &commit.changes.writes {
            let read = write.version - 1;
            let deleted_at = write.value.is_none().then(crate::clock::now_ms);
            self.records.push(Row {
                job,
                key: format!("{service}\0{}", write.key),
                values: [
                    Box::new(service.clone()),
                    Box::new(write.key.clone()),
                    Box::new(write.value.clone()),
                    Box::new(write.version as i64),
                    Box::new(deleted_at),
                ],
                refusal: Conflict {
                    key: write.key.clone(),
                    expected: (read > 0).then_some(read),
                    actual: None,
                }
                .into(),
            });
        }
        if let Some(SagaChange::Update { id, version, status, state, at, by }) = &commit.saga {
            self.sagas.push(Row {
                job,
                key: id.clone(),
                values: [
                    Box::new(id.clone()),
                    Box::new(*version as i64),
                    Box::new(status.as_str()),
                    Box::new(state.clone()),
                    Box::new(*at),
                    Box::new(by.clone()),
                ],
                refusal: saga_moved(id, *version, None),
            });
        }
        self.others.extend(others(job, commit));
    }

    /// The statements, in an order that keeps each commit's dependencies: outcomes,
    /// records, the other changes (sagas created among them), sagas updated.
    fn steps(self) -> Vec<Step> {
        let Writes { outcomes, records, sagas, others } = self;
        let mut steps = multi_row(STORE_OUTCOMES, outcomes);
        steps.extend(multi_row(WRITE_RECORDS, records));
        steps.extend(others);
        steps.extend(multi_row(UPDATE_SAGAS, sagas));
        steps
    }
}

/// The statements of one multi-row write: its rows as one array per column, in
/// rounds in which no key appears twice (PostgreSQL changes a row once per statement;
/// two commits of a batch may write one record), a key's rows in commit order.
fn multi_row<const N: usize>(sql: &'static str, rows: Vec<Row<N>>) -> Vec<Step> {
    let mut rounds: Vec<Vec<Row<N>>> = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for row in rows {
        let round = seen.entry(row.key.clone()).or_insert(0);
        if rounds.len() == *round {
            rounds.push(Vec::new());
        }
        rounds[*round].push(row);
        *round += 1;
    }
    rounds
        .into_iter()
        .map(|mut round| {
            // In key order, as the records' locks are taken: two hosts' batches that
            // insert the same new keys then wait for each other in one order.
            round.sort_by(|a, b| a.key.cmp(&b.key));
            let mut columns: Vec<Vec<Param>> = (0..N).map(|_| Vec::with_capacity(round.len())).collect();
            let mut expected = Vec::with_capacity(round.len());
            for Row { job, key, values, refusal } in round {
                for (column, value) in columns.iter_mut().zip(values) {
                    column.push(value);
                }
                expected.push((key, job, refusal));
            }
            let params = columns.into_iter().map(|column| Box::new(Column(column)) as Param).collect();
            Step { sql, params, guard: Guard::Rows(expected) }
        })
        .collect()
}

/// One column of a multi-row write's rows: an array parameter, whatever its values'
/// type (each value encodes itself as an element of the array).
#[derive(Debug)]
struct Column(Vec<Param>);

impl ToSql for Column {
    fn to_sql(
        &self,
        ty: &tokio_postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        let tokio_postgres::types::Kind::Array(member) = ty.kind() else {
            return Err(format!("a column of rows is an array, not {ty}").into());
        };
        postgres_protocol::types::array_to_sql(
            Some(postgres_protocol::types::ArrayDimension {
                len: i32::try_from(self.0.len())?,
                lower_bound: 1,
            }),
            member.oid(),
            self.0.iter(),
            |value, out| match value.to_sql_checked(member, out)? {
                tokio_postgres::types::IsNull::No => Ok(postgres_protocol::IsNull::No),
                tokio_postgres::types::IsNull::Yes => Ok(postgres_protocol::IsNull::Yes),
            },
            out,
        )?;
        Ok(tokio_postgres::types::IsNull::No)
    }

    fn accepts(ty: &tokio_postgres::types::Type) -> bool {
        matches!(ty.kind(), tokio_postgres::types::Kind::Array(_))
    }

    tokio_postgres::types::to_sql_checked!();
}

/// The statements of a checked commit's changes that are not multi-row writes, in
/// SQLite's order.
fn others(job: usize, commit: &Commit) -> Vec<Step> {
    let mut steps = Vec::new();
    let service = &commit.service;
    match &commit.saga {
        Some(SagaChange::Create(row)) => steps.push(guarded(
            CREATE_SAGA,
            vec![
                Box::new(row.id.clone()),
                Box::new(row.name.clone()),
                Box::new(row.status.as_str()),
                Box::new(row.input.clone()),
                Box::new(row.state.clone()),
                Box::new(row.version as i64),
                Box::new(row.key.clone()),
                Box::new(row.fingerprint.to_vec()),
                Box::new(row.created_at),
                Box::new(row.updated_at),
                Box::new(row.owner.clone()),
            ],
            job,
            StoreError::Duplicate(row.key.clone()),
        )),
        Some(SagaChange::Update { .. }) | None => {}
    }
    for change in &commit.deliveries {
        match change {
            DeliveryChange::Create { deliveries, through } => {
                for d in deliveries {
                    steps.push(step(
                        CREATE_DELIVERY,
                        vec![
                            Box::new(d.event_id),
                            Box::new(d.subscriber.clone()),
                            Box::new(d.operation.clone()),
                            Box::new(d.topic.clone()),
                            Box::new(d.correlation_id.clone()),
                            Box::new(d.created_at),
                        ],
                    ));
                }
                steps.push(step(DISPATCHED, vec![Box::new(*through)]));
            }
            DeliveryChange::Update {
                event_id,
                subscriber,
                status,
                attempts,
                next_at,
                outcome,
                last_error,
                done_at,
            } => steps.push(guarded(
                UPDATE_DELIVERY,
                vec![
                    Box::new(*event_id),
                    Box::new(subscriber.clone()),
                    Box::new(status.as_str()),
                    Box::new(*attempts as i32),
                    Box::new(*next_at),
                    Box::new(outcome.clone()),
                    Box::new(last_error.clone()),
                    Box::new(*done_at),
                ],
                job,
                attempt_refused(*event_id, subscriber, *attempts),
            )),
            DeliveryChange::Redeliver { event_id, subscriber, at } => steps.push(guarded(
                REDELIVER,
                vec![Box::new(*event_id), Box::new(subscriber.clone()), Box::new(*at)],
                job,
                StoreError::Invalid(format!("no dead delivery of event {event_id} to `{subscriber}`")),
            )),
        }
    }
    for def in &commit.definitions {
        steps.push(step(
            SAVE_DEFINITION,
            vec![
                Box::new(def.digest.clone()),
                Box::new(def.name.clone()),
                Box::new(def.text.clone()),
                Box::new(def.saved_at),
            ],
        ));
    }
    for change in &commit.uploads {
        match change {
            UploadChange::Keep(u) => steps.push(step(
                KEEP_UPLOAD,
                vec![
                    Box::new(u.service.clone()),
                    Box::new(u.component.as_ref().map(|c| c.digest.to_string())),
                    Box::new(u.base.map(|b| b.to_string())),
                    Box::new(u.component.as_ref().map(|c| c.wasm.clone())),
                    Box::new(u.uploaded_at),
                ],
            )),
            UploadChange::Discard { service } => {
                steps.push(step(DISCARD_UPLOAD, vec![Box::new(service.clone())]))
            }
        }
    }
    if !commit.changes.events.is_empty() {
        let created_at = commit.outcome.as_ref().map_or_else(crate::clock::now_ms, |o| o.created_at);
        for event in &commit.changes.events {
            let chain = event.correlation_id.as_ref().or(commit.correlation_id.as_ref()).cloned();
            steps.push(step(
                PUBLISH,
                vec![
                    Box::new(service.clone()),
                    Box::new(event.topic.clone()),
                    Box::new(event.payload.clone()),
                    Box::new(chain),
                    Box::new(created_at),
                    Box::new(commit.traceparent.clone()),
                    Box::new(event.subscribers.as_deref().map(Subscriber::encode)),
                ],
            ));
        }
    }
    steps
}

#[cfg(test)]
mod tests;
