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
//! Here: the batch loop and its round trips. The locks and checks of round trip 1 are
//! in `writer/checks.rs`, the writes of round trip 2 in `writer/writes.rs`, and how a
//! round trip's statements are pipelined and their answers checked in `writer/plan.rs`.
//!
//! No savepoints: PostgreSQL keeps a subtransaction per savepoint until the
//! transaction ends, and past 64 in one transaction every other session's snapshots
//! slow down (the subtransaction cache overflows). Checking before writing needs none.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio_postgres::Config;
use tokio_postgres::error::SqlState;

use super::cache::RecordCache;
use super::conn::{Conn, unavailable};
use super::prune;
use crate::store::health::{Health, PROBE_EVERY};
use crate::store::wakeups::{Hints, Wakeups};
use crate::store::{Commit, PruneKind, Slot, StoreError};

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
                    super::health::probe(&mut conn, &config, &health, &cache).await;
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

mod checks;
pub(super) mod plan;
#[cfg(test)]
mod tests;
pub(super) mod writes;

use checks::{Overlay, expected, facts, prepare_checks};
use plan::{Pipelined, pipeline, step};
use writes::{Writes, XACT_ID};
