//! The single writer: one thread owns the write connection and commits what the
//! invocations send it, in batches (group commit).
//!
//! Each batch is one SQLite transaction, so one fsync, whatever its size; each commit
//! inside it runs in its own savepoint, so a conflict in one rolls back only that one.
//! Batches form by themselves: while one batch is being written and synced, new
//! commits queue, and the next batch takes all of them (up to `max_batch`). Replies
//! are sent only after the transaction is durable.

use std::collections::HashMap;
use std::sync::{Arc, mpsc};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use tokio::sync::oneshot;

use super::health::{Health, PROBE_EVERY};
use super::prune::{self, PruneKind};
use super::unavailable;
use super::wal::WalPolicy;
use crate::store::{Commit, Conflict, DeliveryChange, SagaChange, StoreError, Write};

pub(super) enum Job {
    Commit(Box<Commit>, oneshot::Sender<Result<(), StoreError>>),
    /// Forget a batch of what retention removes (see `prune.rs`): kind, before (unix
    /// ms), batch size.
    Prune(PruneKind, i64, usize, oneshot::Sender<Result<usize, StoreError>>),
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
) -> mpsc::SyncSender<Job> {
    let (sender, receiver) = mpsc::sync_channel(QUEUE);
    std::thread::Builder::new()
        .name("wasaga-writer".into())
        .spawn(move || run(conn, receiver, max_batch.max(1), wal, health))
        .expect("failed to start the writer thread");
    sender
}

fn run(
    mut conn: Connection,
    receiver: mpsc::Receiver<Job>,
    max_batch: usize,
    mut wal: WalPolicy,
    health: Arc<Health>,
) {
    let mut batch = Vec::with_capacity(max_batch);
    loop {
        let job = if health.is_failing() {
            match receiver.recv_timeout(PROBE_EVERY) {
                Ok(job) => job,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    health.probe(&mut conn);
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
        match write_batch(&mut conn, &mut batch) {
            Ok(()) => health.committed(),
            Err(error) => health.failed(&error.to_string()),
        }
        wal.enforce(&conn);
    }
}

enum Reply {
    Commit(oneshot::Sender<Result<(), StoreError>>, Result<(), StoreError>),
    Prune(oneshot::Sender<Result<usize, StoreError>>, Result<usize, StoreError>),
}

/// Writes a batch and answers each job. An error means the storage failed (SQLite could
/// not begin, write or sync the batch, or a statement failed on it): every job that was
/// told "stored" is on disk, and none that was told otherwise is.
fn write_batch(conn: &mut Connection, batch: &mut Vec<Job>) -> Result<(), StoreError> {
    let commits = batch.iter().filter(|job| matches!(job, Job::Commit(..))).count();
    crate::metrics::metrics().commit_batch.observe(commits as f64);
    let tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => {
            let error = unavailable(e);
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
            Job::Prune(kind, before, size, reply) => {
                match in_savepoint(&tx, |conn| prune::prune(conn, kind, before, size)) {
                    Ok(result) => {
                        replies.push(Reply::Prune(reply, result));
                        None
                    }
                    Err(fatal) => Some((Job::Prune(kind, before, size, reply), fatal)),
                }
            }
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
            for reply in replies {
                match reply {
                    Reply::Commit(reply, _) => {
                        let _ = reply.send(Err(error.clone()));
                    }
                    Reply::Prune(reply, _) => {
                        let _ = reply.send(Err(error.clone()));
                    }
                }
            }
            fail_all(job.into_iter().chain(jobs), &error);
            return Err(error);
        }
    }
    let durable = tx.commit().map_err(unavailable);
    for reply in replies {
        // A receiver that went away (the caller was cancelled) needs no answer.
        match reply {
            Reply::Commit(reply, result) => {
                let _ = reply.send(durable.clone().and(result));
            }
            Reply::Prune(reply, result) => {
                let _ = reply.send(durable.clone().and(result));
            }
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
            Job::Prune(_, _, _, reply) => {
                let _ = reply.send(Err(error.clone()));
            }
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

/// Validates and applies one commit.
fn apply(conn: &Connection, commit: &Commit) -> Result<(), StoreError> {
    let service = &commit.service;
    let changes = &commit.changes;
    // The idempotency record first: a duplicate of a committed invocation is told
    // `Duplicate` (and replays) rather than a conflict on the records it changed.
    if let Some(outcome) = &commit.outcome {
        let (ok, output) = match &outcome.result {
            Ok(output) => (true, output.as_slice()),
            Err(reason) => (false, reason.as_bytes()),
        };
        // An expired record of the same key may be replaced; an unexpired one may not.
        let key = &outcome.key;
        let stored = conn
            .prepare_cached(
                "INSERT INTO invocations (service, space, key, fingerprint, operation, ok, output,
                     digest, correlation_id, created_at, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
                 ON CONFLICT (service, space, key) DO UPDATE SET
                     fingerprint = excluded.fingerprint, operation = excluded.operation,
                     ok = excluded.ok, output = excluded.output, digest = excluded.digest,
                     correlation_id = excluded.correlation_id,
                     created_at = excluded.created_at, expires_at = excluded.expires_at
                 WHERE invocations.expires_at <= excluded.created_at",
            )
            .map_err(unavailable)?
            .execute(params![
                key.service,
                key.space.as_str(),
                key.key,
                outcome.fingerprint,
                outcome.operation,
                ok,
                output,
                outcome.digest,
                outcome.correlation_id,
                outcome.created_at,
                outcome.expires_at
            ])
            .map_err(unavailable)?;
        if stored == 0 {
            return Err(StoreError::Duplicate(key.key.clone()));
        }
    }
    let mut writes: HashMap<&str, &Write> = changes.writes.iter().map(|w| (w.key.as_str(), w)).collect();
    for (key, read) in &changes.reads {
        match writes.remove(key.as_str()) {
            Some(write) => write_versioned(conn, service, write, *read)?,
            None => check_version(conn, service, key, *read)?,
        }
    }
    // A transaction always reads what it writes; a write without a read is based on
    // the version just below it.
    for write in writes.into_values() {
        write_versioned(conn, service, write, write.version - 1)?;
    }
    if let Some(saga) = &commit.saga {
        apply_saga(conn, saga)?;
    }
    for change in &commit.deliveries {
        apply_delivery(conn, change)?;
    }
    for def in &commit.definitions {
        conn.prepare_cached(
            "INSERT INTO saga_definitions (digest, name, text, saved_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (digest) DO UPDATE SET name = excluded.name, text = excluded.text,
                 saved_at = excluded.saved_at",
        )
        .map_err(unavailable)?
        .execute(params![def.digest, def.name, def.text, def.saved_at])
        .map_err(unavailable)?;
    }
    if !changes.events.is_empty() {
        let created_at = commit.outcome.as_ref().map_or_else(crate::clock::now_ms, |o| o.created_at);
        let mut insert = conn
            .prepare_cached(
                "INSERT INTO outbox (service, topic, payload, correlation_id, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .map_err(unavailable)?;
        for event in &changes.events {
            let chain = event.correlation_id.as_ref().or(commit.correlation_id.as_ref());
            insert
                .execute(params![service, event.topic, event.payload, chain, created_at])
                .map_err(unavailable)?;
        }
    }
    Ok(())
}

fn apply_delivery(conn: &Connection, change: &DeliveryChange) -> Result<(), StoreError> {
    match change {
        DeliveryChange::Create { deliveries, through } => {
            let mut insert = conn
                .prepare_cached(
                    "INSERT INTO deliveries (event_id, subscriber, operation, topic, correlation_id,
                         status, attempts, next_at, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, 'pending', 0, ?6, ?6)
                     ON CONFLICT DO NOTHING",
                )
                .map_err(unavailable)?;
            for d in deliveries {
                insert
                    .execute(params![
                        d.event_id,
                        d.subscriber,
                        d.operation,
                        d.topic,
                        d.correlation_id,
                        d.created_at
                    ])
                    .map_err(unavailable)?;
            }
            conn.execute("UPDATE dispatch SET through = max(through, ?1) WHERE id = 1", [through])
                .map_err(unavailable)?;
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
        } => {
            conn.prepare_cached(
                "UPDATE deliveries SET status = ?3, attempts = ?4, next_at = ?5, outcome = ?6,
                     last_error = ?7, done_at = ?8
                 WHERE event_id = ?1 AND subscriber = ?2",
            )
            .map_err(unavailable)?
            .execute(params![event_id, subscriber, status, attempts, next_at, outcome, last_error, done_at])
            .map_err(unavailable)?;
        }
        DeliveryChange::Redeliver { event_id, subscriber, at } => {
            let changed = conn
                .execute(
                    "UPDATE deliveries SET status = 'pending', next_at = ?3
                     WHERE event_id = ?1 AND subscriber = ?2 AND status = 'dead'",
                    params![event_id, subscriber, at],
                )
                .map_err(unavailable)?;
            if changed == 0 {
                return Err(StoreError::Invalid(format!(
                    "no dead delivery of event {event_id} to `{subscriber}`"
                )));
            }
        }
    }
    Ok(())
}

fn apply_saga(conn: &Connection, change: &SagaChange) -> Result<(), StoreError> {
    match change {
        SagaChange::Create(row) => {
            let created = conn
                .prepare_cached(
                    "INSERT INTO sagas
                         (id, name, status, input, state, version, key, fingerprint, created_at, updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
                     ON CONFLICT DO NOTHING",
                )
                .map_err(unavailable)?
                .execute(params![
                    row.id,
                    row.name,
                    row.status,
                    row.input,
                    row.state,
                    row.version as i64,
                    row.key,
                    row.fingerprint,
                    row.created_at,
                    row.updated_at
                ])
                .map_err(unavailable)?;
            if created == 0 {
                return Err(StoreError::Duplicate(row.key.clone()));
            }
        }
        SagaChange::Update { id, version, status, state, at } => {
            let updated = conn
                .prepare_cached(
                    "UPDATE sagas SET status = ?3, state = ?4, version = ?2 + 1, updated_at = ?5
                     WHERE id = ?1 AND version = ?2",
                )
                .map_err(unavailable)?
                .execute(params![id, *version as i64, status, state, at])
                .map_err(unavailable)?;
            if updated == 0 {
                let actual: Option<i64> = conn
                    .query_row("SELECT version FROM sagas WHERE id = ?1", [id], |row| row.get(0))
                    .optional()
                    .map_err(unavailable)?;
                return Err(Conflict {
                    key: format!("saga {id}"),
                    expected: Some(*version),
                    actual: actual.map(|v| v as u64),
                }
                .into());
            }
        }
    }
    Ok(())
}

/// Writes `write` only if the record is still at version `read`: the row's version,
/// or, for a key with no row (never written, or its tombstone forgotten), the version
/// the transaction read it at, its service's floor. A concurrent change moves the
/// row's version, and the write finds nothing to update: a conflict. A delete stamps
/// the tombstone with the time, for retention.
/// This and [`check_version`] are the only places where versions are compared.
fn write_versioned(conn: &Connection, service: &str, write: &Write, read: u64) -> Result<(), StoreError> {
    let deleted_at = write.value.is_none().then(crate::clock::now_ms);
    let changed = conn
        .prepare_cached(
            "INSERT INTO records (service, key, value, version, deleted_at) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (service, key) DO UPDATE SET
                 value = excluded.value, version = excluded.version, deleted_at = excluded.deleted_at
             WHERE records.version = ?6",
        )
        .map_err(unavailable)?
        .execute(params![service, write.key, write.value, write.version as i64, deleted_at, read as i64])
        .map_err(unavailable)?;
    if changed == 1 { Ok(()) } else { Err(conflict(conn, service, &write.key, read)) }
}

/// Checks that a record read but not written is still at version `read`.
fn check_version(conn: &Connection, service: &str, key: &str, read: u64) -> Result<(), StoreError> {
    let current = current_version(conn, service, key)?;
    if current.0 == read { Ok(()) } else { Err(conflict(conn, service, key, read)) }
}

/// (version, exists) of a record now; (its service's floor, false) if it has no row.
fn current_version(conn: &Connection, service: &str, key: &str) -> Result<(u64, bool), StoreError> {
    let found = conn
        .prepare_cached("SELECT version, value IS NOT NULL FROM records WHERE service = ?1 AND key = ?2")
        .map_err(unavailable)?
        .query_row(params![service, key], |row| Ok((row.get::<_, i64>(0)? as u64, row.get(1)?)))
        .optional()
        .map_err(unavailable)?;
    match found {
        Some(found) => Ok(found),
        None => Ok((prune::floor(conn, service).map_err(unavailable)?, false)),
    }
}

fn conflict(conn: &Connection, service: &str, key: &str, read: u64) -> StoreError {
    match current_version(conn, service, key) {
        Ok((version, exists)) => Conflict {
            key: key.to_owned(),
            expected: (read > 0).then_some(read),
            actual: exists.then_some(version),
        }
        .into(),
        Err(error) => error,
    }
}
