//! The single writer: one thread owns the write connection and commits what the
//! invocations send it, in batches (group commit).
//!
//! Each batch is one SQLite transaction, so one fsync, whatever its size; each commit
//! inside it runs in its own savepoint, so a conflict in one rolls back only that one.
//! Batches form by themselves: while one batch is being written and synced, new
//! commits queue, and the next batch takes all of them (up to `max_batch`). Replies
//! are sent only after the transaction is durable.

use std::sync::{Arc, mpsc};

use rusqlite::{Connection, TransactionBehavior};
use tokio::sync::oneshot;

use super::health;
use super::wal::WalPolicy;
use super::{outbox, plugins, records, sagas, unavailable};
use crate::store::health::{Health, PROBE_EVERY};
use crate::store::wakeups::{Hints, Wakeups};
use crate::store::{Commit, StoreError};

pub(super) enum Job {
    Commit(Box<Commit>, oneshot::Sender<Result<(), StoreError>>),
    /// Writes that are not a commit (retention's batches, hosts' heartbeats and saga
    /// claims), run among the commits and answered once the batch is durable.
    Task(Box<dyn Task>),
}

/// A write the writer runs for the store itself (see [`task`]).
pub(super) trait Task: Send {
    /// Runs in the batch's transaction (in a savepoint: an error rolls back its writes
    /// alone). The outer error means the batch must be abandoned.
    fn run(&mut self, conn: &Connection) -> Result<(), StoreError>;
    /// Answers the caller with the result, or with `failed` if the batch was not stored.
    fn answer(self: Box<Self>, stored: Result<(), StoreError>);
}

/// A task that runs `work` and answers its result through `reply`.
pub(super) fn task<T, F>(work: F, reply: oneshot::Sender<Result<T, StoreError>>) -> Job
where
    T: Send + 'static,
    F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
{
    struct Run<T, F> {
        work: Option<F>,
        result: Option<Result<T, StoreError>>,
        reply: oneshot::Sender<Result<T, StoreError>>,
    }
    impl<T: Send, F: FnOnce(&Connection) -> Result<T, StoreError> + Send> Task for Run<T, F> {
        fn run(&mut self, conn: &Connection) -> Result<(), StoreError> {
            let work = self.work.take().expect("a task runs once");
            let result = work(conn);
            let error = result.as_ref().err().cloned();
            self.result = Some(result);
            error.map_or(Ok(()), Err)
        }

        fn answer(self: Box<Self>, stored: Result<(), StoreError>) {
            let result = match (stored, self.result) {
                (Ok(()), Some(result)) => result,
                (Err(error), _) => Err(error),
                (Ok(()), None) => Err(StoreError::Unavailable("the task did not run".into())),
            };
            // A receiver that went away (the caller was cancelled) needs no answer.
            let _ = self.reply.send(result);
        }
    }
    Job::Task(Box::new(Run { work: Some(work), result: None, reply }))
}

/// Commits that may wait for the writer. More are refused ([`StoreError::Overloaded`]):
/// at the demo's peak (about 16,000 commits a second) this is a quarter of a second of
/// work, and waiting longer helps nobody.
pub(super) const QUEUE: usize = 4096;

/// Starts the writer thread; it ends when every sender is dropped.
pub(super) fn spawn(
    conn: Connection,
    max_batch: usize,
    wal: WalPolicy,
    health: Arc<Health>,
    wakeups: Arc<Wakeups>,
) -> mpsc::SyncSender<Job> {
    let (sender, receiver) = mpsc::sync_channel(QUEUE);
    std::thread::Builder::new()
        .name("wasaga-writer".into())
        .spawn(move || run(conn, receiver, max_batch.max(1), wal, health, wakeups))
        .expect("failed to start the writer thread");
    sender
}

fn run(
    mut conn: Connection,
    receiver: mpsc::Receiver<Job>,
    max_batch: usize,
    mut wal: WalPolicy,
    health: Arc<Health>,
    wakeups: Arc<Wakeups>,
) {
    let mut batch = Vec::with_capacity(max_batch);
    loop {
        let job = if health.is_failing() {
            match receiver.recv_timeout(PROBE_EVERY) {
                Ok(job) => job,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    health::probe(&health, &mut conn);
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
        } else {
            match receiver.recv() {
                Ok(job) => job,
                Err(_) => return,
            }
        };
        batch.push(job);
        while batch.len() < max_batch {
            match receiver.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let hints = Hints::of(batch.iter().filter_map(|job| match job {
            Job::Commit(commit, _) => Some(&**commit),
            Job::Task(_) => None,
        }));
        // A failed batch marks the store failing itself (before it answers anyone).
        let _ = write_batch(&mut conn, &mut batch, &health);
        // Also after a failed batch: some of its commits may be durable, and a hint
        // that finds nothing new costs one look.
        wakeups.wake(hints);
        wal.enforce(&conn);
    }
}

enum Reply {
    Commit(oneshot::Sender<Result<(), StoreError>>, Result<(), StoreError>),
    Task(Box<dyn Task>),
}

/// Writes a batch and answers each job. An error means the storage failed (SQLite could
/// not begin, write or sync the batch, or a statement failed on it): every job that was
/// told "stored" is on disk, and none that was told otherwise is.
fn write_batch(conn: &mut Connection, batch: &mut Vec<Job>, health: &Health) -> Result<(), StoreError> {
    let commits = batch.iter().filter(|job| matches!(job, Job::Commit(..))).count();
    crate::metrics::metrics().commit_batch.observe(commits as f64);
    let tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => {
            let error = unavailable(e);
            health.failed(&error.to_string());
            fail_all(batch.drain(..), &error);
            return Err(error);
        }
    };
    // A statement that failed on the storage (not a version check): the batch goes on
    // without that commit, but the store is not well.
    let mut storage_error = None;
    let mut replies = Vec::with_capacity(batch.len());
    let mut jobs = batch.drain(..);
    for job in jobs.by_ref() {
        let fatal = match job {
            Job::Commit(commit, reply) => match in_savepoint(&tx, |conn| apply(conn, &commit)) {
                Ok(result) => {
                    if let Err(error @ StoreError::Unavailable(_)) = &result {
                        storage_error.get_or_insert_with(|| error.clone());
                    }
                    replies.push(Reply::Commit(reply, result));
                    None
                }
                Err(fatal) => Some((Job::Commit(commit, reply), fatal)),
            },
            Job::Task(mut task) => match in_savepoint(&tx, |conn| task.run(conn)) {
                Ok(_) => {
                    replies.push(Reply::Task(task));
                    None
                }
                Err(fatal) => Some((Job::Task(task), fatal)),
            },
        };
        // A savepoint that could not be rolled back, or a transaction SQLite ended by
        // itself (disk full, I/O error): nothing of this batch can be trusted. Roll it
        // all back and fail every job, so that no caller is told "not stored" about a
        // commit that is on disk, or the reverse.
        let fatal = match fatal {
            Some((job, error)) => Some((Some(job), error)),
            None if tx.is_autocommit() => Some((None, lost_transaction())),
            None => None,
        };
        if let Some((job, error)) = fatal {
            drop(tx);
            health.failed(&error.to_string());
            for reply in replies {
                match reply {
                    Reply::Commit(reply, _) => {
                        let _ = reply.send(Err(error.clone()));
                    }
                    Reply::Task(task) => task.answer(Err(error.clone())),
                }
            }
            fail_all(job.into_iter().chain(jobs), &error);
            return Err(error);
        }
    }
    let durable = tx.commit().map_err(unavailable);
    // Well again, or failing, before anyone hears of it: a client told "stored" (or
    // refused) may ask /readyz next. (Marked failing after the replies, a refused
    // client once found /readyz still ready.)
    match (&durable, &storage_error) {
        (Ok(()), None) => health.committed(),
        (Err(error), _) | (Ok(()), Some(error)) => health.failed(&error.to_string()),
    }
    for reply in replies {
        // A receiver that went away (the caller was cancelled) needs no answer.
        match reply {
            Reply::Commit(reply, result) => {
                let _ = reply.send(durable.clone().and(result));
            }
            Reply::Task(task) => task.answer(durable.clone()),
        }
    }
    durable.and(storage_error.map_or(Ok(()), Err))
}

fn lost_transaction() -> StoreError {
    StoreError::Unavailable("SQLite ended the batch's transaction (disk full or I/O error)".into())
}

fn fail_all(jobs: impl Iterator<Item = Job>, error: &StoreError) {
    for job in jobs {
        match job {
            Job::Commit(_, reply) => {
                let _ = reply.send(Err(error.clone()));
            }
            Job::Task(task) => task.answer(Err(error.clone())),
        }
    }
}

/// Runs `f` in a savepoint: kept if it succeeds, rolled back if not. The outer error
/// means the savepoint itself failed, and the whole batch must be abandoned.
fn in_savepoint<T>(
    tx: &rusqlite::Transaction<'_>,
    f: impl FnOnce(&Connection) -> Result<T, StoreError>,
) -> Result<Result<T, StoreError>, StoreError> {
    let run = |sql: &str| tx.prepare_cached(sql).and_then(|mut statement| statement.execute([]));
    run("SAVEPOINT one_commit").map_err(unavailable)?;
    match f(tx) {
        Ok(value) => run("RELEASE one_commit").map_err(unavailable).map(|_| Ok(value)),
        Err(error) => {
            tx.execute_batch("ROLLBACK TO one_commit; RELEASE one_commit").map_err(unavailable)?;
            Ok(Err(error))
        }
    }
}

/// Validates and applies one commit: the idempotency record first (a duplicate of a
/// committed invocation is told `Duplicate`, and replays, rather than a conflict on the
/// records it changed), then the records' version checks and writes, the saga
/// transition, the deliveries, the definitions, the events.
fn apply(conn: &Connection, commit: &Commit) -> Result<(), StoreError> {
    if let Some(outcome) = &commit.outcome {
        records::store_outcome(conn, outcome)?;
    }
    records::apply_changes(conn, &commit.service, &commit.changes)?;
    if let Some(saga) = &commit.saga {
        sagas::apply(conn, saga)?;
    }
    for change in &commit.deliveries {
        outbox::apply(conn, change)?;
    }
    for def in &commit.definitions {
        sagas::save_definition(conn, def)?;
    }
    for change in &commit.uploads {
        plugins::apply(conn, change)?;
    }
    if !commit.changes.events.is_empty() {
        let created_at = commit.outcome.as_ref().map_or_else(crate::clock::now_ms, |o| o.created_at);
        let chain = commit.correlation_id.as_ref();
        let trace = commit.traceparent.as_ref();
        outbox::publish(conn, &commit.service, &commit.changes.events, chain, trace, created_at)?;
    }
    Ok(())
}
