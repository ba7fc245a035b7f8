//! The writer: one task owns a connection and commits what the invocations send it, in
//! batches (group commit), like SQLite's writer thread.
//!
//! Each batch is one PostgreSQL transaction, so one WAL flush, whatever its size. A
//! commit inside it is checked first and written after, each phase's statements sent
//! together (pipelined: one round trip per phase, not per statement):
//!
//! 1. the checks read what the commit depends on: its idempotency key, the versions
//!    of the records it read, its saga's version. A check that fails refuses the
//!    commit, which wrote nothing: the batch goes on without it.
//! 2. the writes, each guarded as in SQLite (`… WHERE version = <read>`), so that a
//!    change the checks did not see is still caught. Only a writer of another process
//!    could make one (one wasaga host per database for now, see `mod.rs`); then the
//!    batch is rolled back, that commit refused, and the others written again.
//!
//! No savepoints: PostgreSQL keeps a subtransaction per savepoint until the
//! transaction ends, and past 64 in one transaction every other session's snapshots
//! slow down (the subtransaction cache overflows). Checking before writing needs none.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio_postgres::Config;
use tokio_postgres::types::ToSql;

use super::conn::{Conn, unavailable};
use super::prune;
use crate::store::health::{Health, PROBE_EVERY};
use crate::store::{Commit, Conflict, DeliveryChange, PruneKind, SagaChange, StoreError, UploadChange};

pub(super) enum Job {
    Commit(Box<Commit>, oneshot::Sender<Result<(), StoreError>>),
    Prune(PruneKind, i64, usize, oneshot::Sender<Result<usize, StoreError>>),
}

/// Commits that may wait for the writer; more are refused ([`StoreError::Overloaded`]).
pub(super) const QUEUE: usize = 4096;

pub(super) fn spawn(conn: Conn, config: Config, max_batch: usize, health: Arc<Health>) -> mpsc::Sender<Job> {
    let (sender, receiver) = mpsc::channel(QUEUE);
    tokio::spawn(run(conn, config, receiver, max_batch.max(1), health));
    sender
}

async fn run(
    mut conn: Conn,
    config: Config,
    mut receiver: mpsc::Receiver<Job>,
    max_batch: usize,
    health: Arc<Health>,
) {
    let mut batch = Vec::with_capacity(max_batch);
    loop {
        let job = if health.is_failing() {
            match tokio::time::timeout(PROBE_EVERY, receiver.recv()).await {
                Ok(Some(job)) => job,
                Ok(None) => return,
                Err(_) => {
                    probe(&mut conn, &config, &health).await;
                    continue;
                }
            }
        } else {
            match receiver.recv().await {
                Some(job) => job,
                None => return,
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
            match Conn::open(&config).await {
                Ok(fresh) => conn = fresh,
                Err(error) => {
                    fail_all(batch.drain(..), &error);
                    health.failed(&error.to_string());
                    continue;
                }
            }
        }
        match write_batch(&mut conn, std::mem::take(&mut batch)).await {
            Ok(()) => health.committed(),
            Err(error) => health.failed(&error.to_string()),
        }
    }
}

/// While the store fails, a commit of one row every second tells when it writes again.
async fn probe(conn: &mut Conn, config: &Config, health: &Health) {
    if conn.client.is_closed() {
        match Conn::open(config).await {
            Ok(fresh) => *conn = fresh,
            Err(error) => return health.failed(&error.to_string()),
        }
    }
    let sql = "INSERT INTO probes (id, at) VALUES (1, $1) ON CONFLICT (id) DO UPDATE SET at = excluded.at";
    match conn.execute(sql, &[&crate::clock::now_ms()]).await {
        Ok(_) => health.committed(),
        Err(error) => health.failed(&error.to_string()),
    }
}

/// Why a job could not go on.
enum Fail {
    /// The database failed (or the connection did): the batch is abandoned.
    Storage(StoreError),
    /// A write found a change its checks did not see: this commit is refused and the
    /// batch written again without it.
    Late(StoreError),
}

impl From<StoreError> for Fail {
    fn from(error: StoreError) -> Self {
        Fail::Storage(error)
    }
}

enum Answer {
    Commit(Result<(), StoreError>),
    Prune(Result<usize, StoreError>),
}

/// Writes a batch and answers each job. An error means the database failed: every job
/// told "stored" is committed, and none told otherwise is.
async fn write_batch(conn: &mut Conn, mut jobs: Vec<Job>) -> Result<(), StoreError> {
    let commits = jobs.iter().filter(|job| matches!(job, Job::Commit(..))).count();
    crate::metrics::metrics().commit_batch.observe(commits as f64);
    loop {
        if let Err(error) = conn.client.batch_execute("BEGIN").await.map_err(unavailable) {
            fail_all(jobs.into_iter(), &error);
            return Err(error);
        }
        let mut answers = Vec::with_capacity(jobs.len());
        let mut late = None;
        for (i, job) in jobs.iter().enumerate() {
            let answer = match job {
                Job::Commit(commit, _) => apply(conn, commit).await.map(Answer::Commit),
                Job::Prune(kind, before, size, _) => prune::prune(conn, *kind, *before, *size)
                    .await
                    .map(|n| Answer::Prune(Ok(n)))
                    .map_err(Fail::Storage),
            };
            match answer {
                Ok(answer) => answers.push(answer),
                Err(Fail::Late(error)) => {
                    late = Some((i, error));
                    break;
                }
                Err(Fail::Storage(error)) => {
                    let _ = conn.client.batch_execute("ROLLBACK").await;
                    fail_all(jobs.into_iter(), &error);
                    return Err(error);
                }
            }
        }
        if let Some((i, error)) = late {
            if let Err(rollback) = conn.client.batch_execute("ROLLBACK").await.map_err(unavailable) {
                fail_all(jobs.into_iter(), &rollback);
                return Err(rollback);
            }
            if let Job::Commit(_, reply) = jobs.remove(i) {
                let _ = reply.send(Err(error));
            }
            continue;
        }
        let durable = conn.client.batch_execute("COMMIT").await.map_err(unavailable);
        for (job, answer) in jobs.into_iter().zip(answers) {
            // A receiver that went away (the caller was cancelled) needs no answer.
            match (job, answer) {
                (Job::Commit(_, reply), Answer::Commit(result)) => {
                    let _ = reply.send(durable.clone().and(result));
                }
                (Job::Prune(.., reply), Answer::Prune(result)) => {
                    let _ = reply.send(durable.clone().and(result));
                }
                _ => unreachable!("answers follow their jobs"),
            }
        }
        return durable;
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

/// Checks one commit, then writes it: `Ok(Err(refusal))` when a check fails (nothing
/// written).
async fn apply(conn: &mut Conn, commit: &Commit) -> Result<Result<(), StoreError>, Fail> {
    if let Err(refusal) = check(conn, commit).await? {
        return Ok(Err(refusal));
    }
    pipeline(conn, writes(commit)).await?;
    Ok(Ok(()))
}

const OUTCOME_EXISTS: &str =
    "SELECT 1 FROM invocations WHERE service = $1 AND space = $2 AND key = $3 AND expires_at > $4";
const CURRENT_VERSIONS: &str =
    "SELECT key, version, value IS NOT NULL FROM records WHERE service = $1 AND key = ANY($2)";
const FLOOR: &str = "SELECT floor FROM version_floors WHERE service = $1";
const SAGA_BY_KEY: &str = "SELECT 1 FROM sagas WHERE name = $1 AND key = $2";
const SAGA_VERSION: &str = "SELECT version FROM sagas WHERE id = $1";
const DELIVERY_STATUS: &str = "SELECT status FROM deliveries WHERE event_id = $1 AND subscriber = $2";

/// The checks of one commit, in SQLite's order: its idempotency key (a duplicate of a
/// committed invocation learns `Duplicate`, and replays, rather than a conflict on the
/// records it changed), the records it read, its saga, its redeliveries.
async fn check(conn: &mut Conn, commit: &Commit) -> Result<Result<(), StoreError>, StoreError> {
    // Every version the commit depends on: what it read, and for a write without a
    // read, the version just below it.
    let mut expected: Vec<(&str, u64)> = commit.changes.reads.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    for write in &commit.changes.writes {
        if !commit.changes.reads.iter().any(|(k, _)| *k == write.key) {
            expected.push((&write.key, write.version - 1));
        }
    }
    let keys: Vec<&str> = expected.iter().map(|(k, _)| *k).collect();
    let [outcome_exists, versions, floor, saga_by_key, saga_version] = [
        conn.statement(OUTCOME_EXISTS).await?,
        conn.statement(CURRENT_VERSIONS).await?,
        conn.statement(FLOOR).await?,
        conn.statement(SAGA_BY_KEY).await?,
        conn.statement(SAGA_VERSION).await?,
    ];
    let client = &conn.client;
    let duplicate = async {
        match &commit.outcome {
            Some(o) => {
                let k = &o.key;
                let params: [&(dyn ToSql + Sync); 4] = [&k.service, &k.space.as_str(), &k.key, &o.created_at];
                client.query_opt(&outcome_exists, &params).await.map(|row| row.is_some())
            }
            None => Ok(false),
        }
    };
    let current = async {
        if keys.is_empty() {
            return Ok((Vec::new(), None));
        }
        let by_key: [&(dyn ToSql + Sync); 2] = [&commit.service, &keys];
        let of_service: [&(dyn ToSql + Sync); 1] = [&commit.service];
        let (rows, floor) =
            tokio::join!(client.query(&versions, &by_key), client.query_opt(&floor, &of_service));
        Ok((rows?, floor?))
    };
    let saga = async {
        match &commit.saga {
            Some(SagaChange::Create(row)) => {
                client.query_opt(&saga_by_key, &[&row.name, &row.key]).await.map(|r| r.map(|_| -1))
            }
            Some(SagaChange::Update { id, .. }) => {
                client.query_opt(&saga_version, &[id]).await.map(|r| r.map(|row| row.get::<_, i64>(0)))
            }
            None => Ok(None),
        }
    };
    let (duplicate, current, saga) = tokio::join!(duplicate, current, saga);
    let (duplicate, (rows, floor), saga) =
        (duplicate.map_err(unavailable)?, current.map_err(unavailable)?, saga.map_err(unavailable)?);
    if duplicate {
        let key = &commit.outcome.as_ref().expect("checked above").key.key;
        return Ok(Err(StoreError::Duplicate(key.clone())));
    }
    let floor = floor.map_or(0, |row| row.get::<_, i64>(0) as u64);
    for (key, read) in &expected {
        let (version, exists) = rows
            .iter()
            .find(|row| row.get::<_, &str>(0) == *key)
            .map_or((floor, false), |row| (row.get::<_, i64>(1) as u64, row.get::<_, bool>(2)));
        if version != *read {
            return Ok(Err(Conflict {
                key: (*key).to_owned(),
                expected: (*read > 0).then_some(*read),
                actual: exists.then_some(version),
            }
            .into()));
        }
    }
    match (&commit.saga, saga) {
        (Some(SagaChange::Create(row)), Some(_)) => return Ok(Err(StoreError::Duplicate(row.key.clone()))),
        (Some(SagaChange::Update { id, version, .. }), actual) if actual != Some(*version as i64) => {
            return Ok(Err(Conflict {
                key: format!("saga {id}"),
                expected: Some(*version),
                actual: actual.map(|v| v as u64),
            }
            .into()));
        }
        _ => {}
    }
    for change in &commit.deliveries {
        if let DeliveryChange::Redeliver { event_id, subscriber, .. } = change {
            let status = conn.query_opt(DELIVERY_STATUS, &[event_id, subscriber]).await?;
            if status.is_none_or(|row| row.get::<_, &str>(0) != "dead") {
                return Ok(Err(StoreError::Invalid(format!(
                    "no dead delivery of event {event_id} to `{subscriber}`"
                ))));
            }
        }
    }
    Ok(Ok(()))
}

type Param = Box<dyn ToSql + Sync + Send>;

/// One statement of a pipeline. `guard`: the statement must change exactly one row,
/// else the commit meets a change its checks did not see, and is refused with this.
struct Step {
    sql: &'static str,
    params: Vec<Param>,
    guard: Option<StoreError>,
}

fn step(sql: &'static str, params: Vec<Param>) -> Step {
    Step { sql, params, guard: None }
}

fn guarded(sql: &'static str, params: Vec<Param>, refusal: StoreError) -> Step {
    Step { sql, params, guard: Some(refusal) }
}

/// Sends every statement at once and reads the answers after (one round trip).
/// PostgreSQL runs them in order.
async fn pipeline(conn: &mut Conn, steps: Vec<Step>) -> Result<(), Fail> {
    let mut statements = Vec::with_capacity(steps.len());
    for step in &steps {
        statements.push(conn.statement(step.sql).await?);
    }
    let client = &conn.client;
    let results = futures_util::future::join_all(steps.iter().zip(&statements).map(|(step, statement)| {
        let params: Vec<&(dyn ToSql + Sync)> = step.params.iter().map(|p| p.as_ref() as _).collect();
        async move { client.execute(statement, &params).await }
    }))
    .await;
    for (step, result) in steps.into_iter().zip(results) {
        let changed = result.map_err(unavailable)?;
        if let Some(refusal) = step.guard
            && changed != 1
        {
            return Err(Fail::Late(refusal));
        }
    }
    Ok(())
}

const STORE_OUTCOME: &str =
    "INSERT INTO invocations (service, space, key, fingerprint, operation, ok, output,
         digest, correlation_id, created_at, expires_at)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
     ON CONFLICT (service, space, key) DO UPDATE SET
         fingerprint = excluded.fingerprint, operation = excluded.operation,
         ok = excluded.ok, output = excluded.output, digest = excluded.digest,
         correlation_id = excluded.correlation_id,
         created_at = excluded.created_at, expires_at = excluded.expires_at
     WHERE invocations.expires_at <= excluded.created_at";
const WRITE_RECORD: &str =
    "INSERT INTO records (service, key, value, version, deleted_at) VALUES ($1, $2, $3, $4, $5)
     ON CONFLICT (service, key) DO UPDATE SET
         value = excluded.value, version = excluded.version, deleted_at = excluded.deleted_at
     WHERE records.version = $6";
const CREATE_SAGA: &str = "INSERT INTO sagas
         (id, name, status, input, state, version, key, fingerprint, created_at, updated_at)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
     ON CONFLICT DO NOTHING";
const UPDATE_SAGA: &str = "UPDATE sagas SET status = $3, state = $4, version = $2 + 1, updated_at = $5
     WHERE id = $1 AND version = $2";
const CREATE_DELIVERY: &str =
    "INSERT INTO deliveries (event_id, subscriber, operation, topic, correlation_id,
         status, attempts, next_at, created_at)
     VALUES ($1, $2, $3, $4, $5, 'pending', 0, $6, $6)
     ON CONFLICT DO NOTHING";
const DISPATCHED: &str = "UPDATE dispatch SET through = GREATEST(through, $1) WHERE id = 1";
const UPDATE_DELIVERY: &str = "UPDATE deliveries SET status = $3, attempts = $4, next_at = $5, outcome = $6,
         last_error = $7, done_at = $8
     WHERE event_id = $1 AND subscriber = $2";
const REDELIVER: &str = "UPDATE deliveries SET status = 'pending', next_at = $3
     WHERE event_id = $1 AND subscriber = $2 AND status = 'dead'";
const SAVE_DEFINITION: &str = "INSERT INTO saga_definitions (digest, name, text, saved_at) VALUES ($1, $2, $3, $4)
     ON CONFLICT (digest) DO UPDATE SET name = excluded.name, text = excluded.text, saved_at = excluded.saved_at";
const KEEP_UPLOAD: &str = "INSERT INTO plugin_uploads (service, digest, base, wasm, uploaded_at)
     VALUES ($1, $2, $3, $4, $5)
     ON CONFLICT (service) DO UPDATE SET digest = excluded.digest, base = excluded.base,
         wasm = excluded.wasm, uploaded_at = excluded.uploaded_at";
const DISCARD_UPLOAD: &str = "DELETE FROM plugin_uploads WHERE service = $1";
const PUBLISH: &str = "INSERT INTO outbox (service, topic, payload, correlation_id, created_at)
     VALUES ($1, $2, $3, $4, $5)";

/// The statements that apply a checked commit, in SQLite's order.
fn writes(commit: &Commit) -> Vec<Step> {
    let mut steps = Vec::new();
    let service = &commit.service;
    if let Some(o) = &commit.outcome {
        let (ok, output) = match &o.result {
            Ok(output) => (true, output.clone()),
            Err(reason) => (false, reason.clone().into_bytes()),
        };
        let k = &o.key;
        steps.push(guarded(
            STORE_OUTCOME,
            vec![
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
            StoreError::Duplicate(k.key.clone()),
        ));
    }
    for write in &commit.changes.writes {
        let read = write.version - 1;
        let deleted_at = write.value.is_none().then(crate::clock::now_ms);
        steps.push(guarded(
            WRITE_RECORD,
            vec![
                Box::new(service.clone()),
                Box::new(write.key.clone()),
                Box::new(write.value.clone()),
                Box::new(write.version as i64),
                Box::new(deleted_at),
                Box::new(read as i64),
            ],
            Conflict { key: write.key.clone(), expected: (read > 0).then_some(read), actual: None }.into(),
        ));
    }
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
            ],
            StoreError::Duplicate(row.key.clone()),
        )),
        Some(SagaChange::Update { id, version, status, state, at }) => steps.push(guarded(
            UPDATE_SAGA,
            vec![
                Box::new(id.clone()),
                Box::new(*version as i64),
                Box::new(status.as_str()),
                Box::new(state.clone()),
                Box::new(*at),
            ],
            Conflict { key: format!("saga {id}"), expected: Some(*version), actual: None }.into(),
        )),
        None => {}
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
            } => steps.push(step(
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
            )),
            DeliveryChange::Redeliver { event_id, subscriber, at } => steps.push(guarded(
                REDELIVER,
                vec![Box::new(*event_id), Box::new(subscriber.clone()), Box::new(*at)],
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
                    Box::new(u.digest.to_string()),
                    Box::new(u.base.map(|b| b.to_string())),
                    Box::new(u.wasm.clone()),
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
                ],
            ));
        }
    }
    steps
}
