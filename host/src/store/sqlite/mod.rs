//! The durable backend: SQLite in WAL mode.
//!
//! - One writer thread owns the write connection and group-commits (`writer.rs`).
//! - Snapshots are read transactions on pooled read connections: WAL lets them see
//!   one consistent state while the writer goes on.
//! - Checkpoints run on a thread of their own. SQLite's automatic checkpoint would run
//!   inside a committing transaction and stall it (14–46 ms measured here), so it is
//!   switched off on the writer.
//! - A lock file keeps a second wasaga process off the same data directory.

mod health;
mod prune;
mod schema;
mod wal;
mod writer;

pub use health::Failing;
pub use prune::PruneKind;

use health::Health;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use tokio::sync::oneshot;

use super::{
    ChainPage, Commit, CommitFuture, DefinitionRow, DeliveryRow, Entry, EventRow, IdempotencyKey,
    RecordStore, SagaRow, Scanned, Slot, Snapshot, StoreError, StoredOutcome,
};

/// SQLite's `synchronous` setting for commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Synchronous {
    /// Every commit is on disk before it is acknowledged (fsync of the WAL).
    #[default]
    Full,
    /// Faster; a power loss may lose the last commits (never corrupts).
    Normal,
}

/// How the store writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SqliteOptions {
    pub synchronous: Synchronous,
    /// The most commits in one SQLite transaction; 1 turns group commit off.
    pub max_batch: usize,
    /// How often the checkpoint thread copies the WAL into the database.
    pub checkpoint_interval: Duration,
    /// The WAL's size past which the writer checkpoints and restarts it (see `wal.rs`).
    pub wal_limit: u64,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            synchronous: Synchronous::Full,
            max_batch: 256,
            checkpoint_interval: Duration::from_millis(50),
            wal_limit: 64 << 20,
        }
    }
}

/// Versioned records and idempotency records in `<data dir>/wasaga.db`.
#[derive(Debug)]
pub struct SqliteStore {
    path: PathBuf,
    readers: Arc<ReadPool>,
    writer: Mutex<mpsc::SyncSender<writer::Job>>,
    health: Arc<Health>,
    stop: Arc<AtomicBool>,
    _lock: File,
}

impl SqliteStore {
    /// Opens (creating if needed) the store in `dir`, brings its schema up to date and
    /// starts the writer and checkpoint threads.
    pub fn open(dir: &Path, options: SqliteOptions) -> Result<SqliteStore, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
        let lock_path = dir.join("wasaga.lock");
        let lock = File::create(&lock_path).map_err(|e| io_error(&lock_path, e))?;
        if lock.try_lock().is_err() {
            return Err(StoreError::Unavailable(format!(
                "{} is in use by another wasaga process",
                dir.display()
            )));
        }
        let path = dir.join("wasaga.db");
        let mut conn = Connection::open(&path).map_err(unavailable)?;
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |_| Ok(())).map_err(unavailable)?;
        let synchronous = match options.synchronous {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
        };
        conn.pragma_update(None, "synchronous", synchronous).map_err(unavailable)?;
        conn.pragma_update(None, "wal_autocheckpoint", 0).map_err(unavailable)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(unavailable)?;
        schema::migrate(&mut conn).map_err(unavailable)?.map_err(StoreError::Unavailable)?;

        let wal =
            wal::WalPolicy { path: dir.join("wasaga.db-wal"), limit: options.wal_limit, not_before: None };
        wal.prepare(&conn).map_err(unavailable)?;
        let stop = Arc::new(AtomicBool::new(false));
        spawn_checkpointer(&path, options.checkpoint_interval, stop.clone())?;
        let health = Arc::new(Health::default());
        let writer = writer::spawn(conn, options.max_batch, wal, health.clone());
        Ok(SqliteStore {
            health,
            readers: Arc::new(ReadPool { path: path.clone(), idle: Mutex::default() }),
            path,
            writer: Mutex::new(writer),
            stop,
            _lock: lock,
        })
    }

    /// Why the store cannot write, while it cannot (see `health.rs`).
    pub fn failing(&self) -> Option<Failing> {
        self.health.failing()
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Forgets at most `batch` things of `kind` from before `before` (unix ms), through
    /// the writer; returns how many (see `prune.rs` for what each kind may forget).
    pub async fn prune(&self, kind: PruneKind, before: i64, batch: usize) -> Result<usize, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.send(writer::Job::Prune(kind, before, batch, reply))?;
        answer.await.map_err(|_| writer_gone())?
    }

    /// The saga with this id.
    pub fn saga(&self, id: &str) -> Result<Option<SagaRow>, StoreError> {
        self.read_sagas("WHERE id = ?1", params![id]).map(|mut rows| rows.pop())
    }

    /// The saga started with this idempotency key.
    pub fn saga_by_key(&self, name: &str, key: &str) -> Result<Option<SagaRow>, StoreError> {
        self.read_sagas("WHERE name = ?1 AND key = ?2", params![name, key]).map(|mut rows| rows.pop())
    }

    /// Sagas in id order (ids sort by creation time), optionally of one status, after
    /// the id `after` (before it, newest first), at most `limit`.
    pub fn sagas(
        &self,
        status: Option<&str>,
        after: Option<&str>,
        limit: usize,
        newest_first: bool,
    ) -> Result<Vec<SagaRow>, StoreError> {
        let (compare, order) = if newest_first { ("<", "DESC") } else { (">", "ASC") };
        let after = after.unwrap_or(if newest_first { "~" } else { "" });
        match status {
            Some(status) => self.read_sagas(
                &format!("WHERE status = ?1 AND id {compare} ?2 ORDER BY id {order} LIMIT ?3"),
                params![status, after, limit as i64],
            ),
            None => self.read_sagas(
                &format!("WHERE id {compare} ?1 ORDER BY id {order} LIMIT ?2"),
                params![after, limit as i64],
            ),
        }
    }

    /// The saga definition kept under `digest`.
    pub fn definition(&self, digest: &str) -> Result<Option<DefinitionRow>, StoreError> {
        let sql = "SELECT digest, name, text, saved_at FROM saga_definitions WHERE digest = ?1";
        self.rows(sql, params![digest], |row| {
            Ok(DefinitionRow {
                digest: row.get(0)?,
                name: row.get(1)?,
                text: row.get(2)?,
                saved_at: row.get(3)?,
            })
        })
        .map(|mut rows| rows.pop())
    }

    /// Sagas that are neither finished nor stuck: the ones to resume after a restart.
    pub fn unfinished_sagas(&self) -> Result<Vec<SagaRow>, StoreError> {
        self.read_sagas("WHERE status IN ('running', 'compensating') ORDER BY id", params![])
    }

    /// How many sagas are in each status.
    pub fn saga_counts(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.rows("SELECT status, n FROM saga_counts WHERE n > 0 ORDER BY status", &[], |row| {
            Ok((row.get(0)?, row.get::<_, i64>(1)? as u64))
        })
    }

    /// Where the dispatcher is: the last event it made deliveries for.
    pub fn dispatched_through(&self) -> Result<i64, StoreError> {
        let conn = self.readers.take()?;
        let through = conn
            .query_row("SELECT through FROM dispatch WHERE id = 1", [], |r| r.get(0))
            .map_err(unavailable);
        self.readers.put(conn);
        through
    }

    /// Events after `after`, oldest first, at most `limit`.
    pub fn events_after(&self, after: i64, limit: usize) -> Result<Vec<EventRow>, StoreError> {
        self.read_events("WHERE id > ?1 ORDER BY id LIMIT ?2", params![after, limit as i64])
    }

    pub fn event(&self, id: i64) -> Result<Option<EventRow>, StoreError> {
        self.read_events("WHERE id = ?1", params![id]).map(|mut rows| rows.pop())
    }

    /// Pending deliveries due by `now` whose group (subscriber, topic, correlation id)
    /// has no earlier pending delivery: within a correlation, events go out in order.
    pub fn due_deliveries(&self, now: i64, limit: usize) -> Result<Vec<DeliveryRow>, StoreError> {
        self.read_deliveries(
            "WHERE d.status = 'pending' AND d.next_at <= ?1 AND NOT EXISTS (
                 SELECT 1 FROM deliveries e
                 WHERE e.subscriber = d.subscriber AND e.topic = d.topic
                   AND e.correlation_id = d.correlation_id AND e.status = 'pending'
                   AND e.event_id < d.event_id)
             ORDER BY d.event_id LIMIT ?2",
            params![now, limit as i64],
        )
    }

    /// How many deliveries are in each status.
    pub fn delivery_counts(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.rows("SELECT status, count(*) FROM deliveries GROUP BY status", &[], |row| {
            Ok((row.get(0)?, row.get::<_, i64>(1)? as u64))
        })
    }

    /// Dead deliveries, oldest first.
    pub fn dead_deliveries(&self, limit: usize) -> Result<Vec<DeliveryRow>, StoreError> {
        self.read_deliveries("WHERE d.status = 'dead' ORDER BY d.event_id LIMIT ?1", params![limit as i64])
    }

    fn read_events(
        &self,
        filter: &str,
        params: &[&dyn rusqlite::ToSql],
    ) -> Result<Vec<EventRow>, StoreError> {
        self.rows(&format!("SELECT {EVENT_COLUMNS} FROM outbox {filter}"), params, event_row)
    }

    fn read_deliveries(
        &self,
        filter: &str,
        params: &[&dyn rusqlite::ToSql],
    ) -> Result<Vec<DeliveryRow>, StoreError> {
        self.rows(&format!("SELECT {DELIVERY_COLUMNS} FROM deliveries d {filter}"), params, delivery_row)
    }

    /// A page of one chain: its events after event `after`, oldest first, at most
    /// `limit`, with their deliveries and the dispatcher's cursor, read in one snapshot
    /// (a chain shown while deliveries happen is still one moment of it).
    pub fn chain(&self, correlation_id: &str, after: i64, limit: usize) -> Result<ChainPage, StoreError> {
        let mut conn = self.readers.take()?;
        let page = read_chain(&mut conn, correlation_id, after, limit).map_err(unavailable);
        self.readers.put(conn);
        page
    }

    fn read_sagas(&self, filter: &str, params: &[&dyn rusqlite::ToSql]) -> Result<Vec<SagaRow>, StoreError> {
        self.rows(&format!("SELECT {SAGA_COLUMNS} FROM sagas {filter}"), params, saga_row)
    }

    /// Sagas an operator may be looking for by `text`, newest first, at most `limit`:
    /// its id or idempotency key (any saga), or a value of its input's top-level fields
    /// (an order id, a customer; among the latest 10,000 sagas, as that is a scan).
    pub fn search_sagas(&self, text: &str, limit: usize) -> Result<Vec<SagaRow>, StoreError> {
        let sql = format!(
            "SELECT {SAGA_COLUMNS} FROM sagas WHERE id = ?1 OR key = ?1
             UNION
             SELECT {SAGA_COLUMNS} FROM (SELECT * FROM sagas ORDER BY id DESC LIMIT 10000) AS latest
             WHERE EXISTS (SELECT 1 FROM json_each(CAST(latest.input AS TEXT)) WHERE json_each.value = ?1)
             ORDER BY id DESC LIMIT ?2"
        );
        self.rows(&sql, params![text, limit as i64], saga_row)
    }

    /// How many events the chain `correlation_id` has.
    pub fn count_events_of(&self, correlation_id: &str) -> Result<u64, StoreError> {
        let sql = "SELECT count(*) FROM outbox WHERE correlation_id = ?1";
        let counts = self.rows(sql, params![correlation_id], |row| row.get::<_, i64>(0))?;
        Ok(counts.first().copied().unwrap_or(0) as u64)
    }

    /// Runs one query on a pooled read connection and maps every row: the one place
    /// that borrows and returns a reader for a list.
    fn rows<T>(
        &self,
        sql: &str,
        params: &[&dyn rusqlite::ToSql],
        map: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>, StoreError> {
        let conn = self.readers.take()?;
        let rows = conn
            .prepare_cached(sql)
            .and_then(|mut query| query.query_map(params, map)?.collect())
            .map_err(unavailable);
        self.readers.put(conn);
        rows
    }

    fn send(&self, job: writer::Job) -> Result<(), StoreError> {
        match self.writer.lock().expect("writer mutex poisoned").try_send(job) {
            Ok(()) => Ok(()),
            Err(mpsc::TrySendError::Full(_)) => Err(StoreError::Overloaded(format!(
                "{} commits are waiting for the disk; retry in a moment",
                writer::QUEUE
            ))),
            Err(mpsc::TrySendError::Disconnected(_)) => Err(writer_gone()),
        }
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl RecordStore for SqliteStore {
    fn snapshot(&self, service: &str) -> Result<Box<dyn Snapshot>, StoreError> {
        let conn = self.readers.take()?;
        Ok(Box::new(SqliteSnapshot {
            conn: Some(conn),
            pool: self.readers.clone(),
            service: service.to_owned(),
            begun: false,
            floor: None,
        }))
    }

    fn commit(&self, commit: Commit) -> CommitFuture {
        let (reply, answer) = oneshot::channel();
        let sent = self.send(writer::Job::Commit(Box::new(commit), reply));
        Box::pin(async move {
            sent?;
            answer.await.map_err(|_| writer_gone())?
        })
    }

    fn outcome(&self, key: &IdempotencyKey, now: i64) -> Result<Option<StoredOutcome>, StoreError> {
        let conn = self.readers.take()?;
        let found = conn
            .prepare_cached(
                "SELECT fingerprint, operation, ok, output, digest, correlation_id, created_at, expires_at
                 FROM invocations WHERE service = ?1 AND space = ?2 AND key = ?3 AND expires_at > ?4",
            )
            .and_then(|mut query| {
                query
                    .query_row(params![key.service, key.space.as_str(), key.key, now], |row| {
                        let ok: bool = row.get(2)?;
                        let output: Vec<u8> = row.get(3)?;
                        Ok(StoredOutcome {
                            key: key.clone(),
                            fingerprint: row.get(0)?,
                            operation: row.get(1)?,
                            result: if ok {
                                Ok(output)
                            } else {
                                Err(String::from_utf8_lossy(&output).into_owned())
                            },
                            digest: row.get(4)?,
                            correlation_id: row.get(5)?,
                            created_at: row.get(6)?,
                            expires_at: row.get(7)?,
                        })
                    })
                    .optional()
            })
            .map_err(unavailable);
        self.readers.put(conn);
        found
    }
}

const EVENT_COLUMNS: &str = "id, service, topic, payload, correlation_id, created_at";
const DELIVERY_COLUMNS: &str = "d.event_id, d.subscriber, d.operation, d.topic, d.correlation_id, d.status, \
     d.attempts, d.next_at, d.outcome, d.last_error, d.created_at, d.done_at";

fn event_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<EventRow> {
    Ok(EventRow {
        id: row.get(0)?,
        service: row.get(1)?,
        topic: row.get(2)?,
        payload: row.get(3)?,
        correlation_id: row.get(4)?,
        created_at: row.get(5)?,
    })
}

fn delivery_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<DeliveryRow> {
    Ok(DeliveryRow {
        event_id: row.get(0)?,
        subscriber: row.get(1)?,
        operation: row.get(2)?,
        topic: row.get(3)?,
        correlation_id: row.get(4)?,
        status: row.get(5)?,
        attempts: row.get(6)?,
        next_at: row.get(7)?,
        outcome: row.get(8)?,
        last_error: row.get(9)?,
        created_at: row.get(10)?,
        done_at: row.get(11)?,
    })
}

fn read_chain(
    conn: &mut Connection,
    correlation_id: &str,
    after: i64,
    limit: usize,
) -> rusqlite::Result<ChainPage> {
    let tx = conn.transaction()?;
    let dispatched_through = tx.query_row("SELECT through FROM dispatch WHERE id = 1", [], |r| r.get(0))?;
    let events = tx
        .prepare_cached(&format!(
            "SELECT {EVENT_COLUMNS} FROM outbox WHERE correlation_id = ?1 AND id > ?2 ORDER BY id LIMIT ?3"
        ))?
        .query_map(params![correlation_id, after, limit as i64], event_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let deliveries = match (events.first(), events.last()) {
        (Some(first), Some(last)) => tx
            .prepare_cached(&format!(
                "SELECT {DELIVERY_COLUMNS} FROM deliveries d WHERE d.correlation_id = ?1
                   AND d.event_id BETWEEN ?2 AND ?3 ORDER BY d.event_id, d.subscriber"
            ))?
            .query_map(params![correlation_id, first.id, last.id], delivery_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?,
        _ => Vec::new(),
    };
    tx.commit()?;
    Ok(ChainPage { events, deliveries, dispatched_through })
}

const SAGA_COLUMNS: &str =
    "id, name, status, input, state, version, key, fingerprint, created_at, updated_at";

fn saga_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<SagaRow> {
    Ok(SagaRow {
        id: row.get(0)?,
        name: row.get(1)?,
        status: row.get(2)?,
        input: row.get(3)?,
        state: row.get(4)?,
        version: row.get::<_, i64>(5)? as u64,
        key: row.get(6)?,
        fingerprint: row.get(7)?,
        created_at: row.get(8)?,
        updated_at: row.get(9)?,
    })
}

/// Idle read connections, reused across snapshots.
#[derive(Debug)]
struct ReadPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

/// Idle connections kept beyond this are closed.
const MAX_IDLE_READERS: usize = 128;

impl ReadPool {
    fn take(&self) -> Result<Connection, StoreError> {
        if let Some(conn) = self.idle.lock().expect("pool mutex poisoned").pop() {
            return Ok(conn);
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(&self.path, flags).map_err(unavailable)?;
        conn.pragma_update(None, "query_only", true).map_err(unavailable)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(unavailable)?;
        Ok(conn)
    }

    fn put(&self, conn: Connection) {
        let mut idle = self.idle.lock().expect("pool mutex poisoned");
        if idle.len() < MAX_IDLE_READERS {
            idle.push(conn);
        }
    }
}

/// A read transaction on one service's records. It begins at the first read, so the
/// snapshot is as fresh as possible, and ends when dropped.
struct SqliteSnapshot {
    conn: Option<Connection>,
    pool: Arc<ReadPool>,
    service: String,
    begun: bool,
    /// The service's version floor, read once (see `prune.rs`).
    floor: Option<u64>,
}

impl SqliteSnapshot {
    fn conn(&mut self) -> Result<&Connection, StoreError> {
        let conn = self.conn.as_ref().expect("the connection is held until drop");
        if !self.begun {
            conn.execute_batch("BEGIN").map_err(unavailable)?;
            self.begun = true;
        }
        Ok(conn)
    }
}

impl Snapshot for SqliteSnapshot {
    fn get(&mut self, key: &str) -> Result<Slot, StoreError> {
        let service = self.service.clone();
        let found = self
            .conn()?
            .prepare_cached("SELECT value, version FROM records WHERE service = ?1 AND key = ?2")
            .and_then(|mut q| {
                q.query_row(params![service, key], |row| {
                    Ok(Slot { value: row.get(0)?, version: row.get::<_, i64>(1)? as u64 })
                })
                .optional()
            })
            .map_err(unavailable)?;
        if let Some(slot) = found {
            return Ok(slot);
        }
        // No row: never written, or its tombstone forgotten; it reads at the floor.
        let floor = match self.floor {
            Some(floor) => floor,
            None => {
                let floor = prune::floor(self.conn()?, &service).map_err(unavailable)?;
                *self.floor.insert(floor)
            }
        };
        Ok(Slot { value: None, version: floor })
    }

    fn scan(
        &mut self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Scanned, StoreError> {
        let service = self.service.clone();
        // Keys with a prefix are one contiguous range in byte order (SQLite's BINARY
        // collation), so reading on from its start and stopping at the first key
        // without the prefix is exact.
        let (from, inclusive) = match start_after {
            Some(after) if after >= prefix => (after, false),
            _ => (prefix, true),
        };
        let sql = if inclusive {
            "SELECT key, value, version FROM records
             WHERE service = ?1 AND key >= ?2 AND value IS NOT NULL ORDER BY key LIMIT ?3"
        } else {
            "SELECT key, value, version FROM records
             WHERE service = ?1 AND key > ?2 AND value IS NOT NULL ORDER BY key LIMIT ?3"
        };
        let conn = self.conn()?;
        let mut query = conn.prepare_cached(sql).map_err(unavailable)?;
        let rows = query
            .query_map(params![service, from, limit as i64], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    Entry { value: row.get(1)?, version: row.get::<_, i64>(2)? as u64 },
                ))
            })
            .map_err(unavailable)?;
        let mut found = Vec::new();
        let mut bytes = 0;
        for row in rows {
            let (key, entry) = row.map_err(unavailable)?;
            if !key.starts_with(prefix) {
                return Ok(Scanned { rows: found, complete: true });
            }
            bytes += entry.value.len();
            if !found.is_empty() && bytes > max_bytes {
                return Ok(Scanned { rows: found, complete: false });
            }
            found.push((key, entry));
        }
        let complete = found.len() < limit;
        Ok(Scanned { rows: found, complete })
    }
}

impl Drop for SqliteSnapshot {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            // A connection whose read transaction cannot be ended is not reused.
            if !self.begun || conn.execute_batch("ROLLBACK").is_ok() {
                self.pool.put(conn);
            }
        }
    }
}

fn spawn_checkpointer(path: &Path, interval: Duration, stop: Arc<AtomicBool>) -> Result<(), StoreError> {
    let conn = Connection::open(path).map_err(unavailable)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(unavailable)?;
    std::thread::Builder::new()
        .name("wasaga-checkpoint".into())
        .spawn(move || {
            let mut failing = false;
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(interval);
                // PASSIVE never waits for the writer or readers: it copies what it can.
                // A failure (a full disk) is said once, not twenty times a second.
                match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                    Err(e) if !failing => {
                        tracing::warn!("WAL checkpoint failed: {e}; the WAL grows until it can");
                        failing = true;
                    }
                    Ok(()) if failing => {
                        tracing::info!("WAL checkpoints work again");
                        failing = false;
                    }
                    _ => {}
                }
            }
        })
        .map_err(|e| StoreError::Unavailable(format!("starting the checkpoint thread: {e}")))?;
    Ok(())
}

/// How long a connection waits for a lock another holds before it reports the store
/// busy.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

pub(super) fn unavailable(error: rusqlite::Error) -> StoreError {
    StoreError::Unavailable(error.to_string())
}

fn io_error(path: &Path, error: std::io::Error) -> StoreError {
    StoreError::Unavailable(format!("{}: {error}", path.display()))
}

fn writer_gone() -> StoreError {
    StoreError::Unavailable("the writer thread has stopped".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{ChangeSet, Conflict, Event, KeySpace, Transaction, TxLimits};

    fn open(dir: &Path) -> SqliteStore {
        SqliteStore::open(dir, SqliteOptions::default()).unwrap()
    }

    fn tx(store: &SqliteStore) -> Transaction {
        Transaction::new(store.snapshot("svc").unwrap(), TxLimits::default())
    }

    fn commit_of(changes: ChangeSet, outcome: Option<StoredOutcome>) -> Commit {
        Commit { service: "svc".into(), changes, outcome, ..Commit::default() }
    }

    fn key(key: &str) -> IdempotencyKey {
        IdempotencyKey { service: "svc".into(), space: KeySpace::Client, key: key.into() }
    }

    fn outcome(key_text: &str, created_at: i64, expires_at: i64) -> StoredOutcome {
        StoredOutcome {
            key: key(key_text),
            fingerprint: [7; 32],
            operation: "op".into(),
            result: Ok(b"out".to_vec()),
            digest: "sha256:00".into(),
            correlation_id: Some("chain".into()),
            created_at,
            expires_at,
        }
    }

    #[tokio::test]
    async fn commits_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = open(dir.path());
            let mut t = tx(&store);
            t.set("k", b"v".to_vec()).unwrap();
            t.publish("topic", b"{}".to_vec(), None).unwrap();
            store.commit(commit_of(t.into_changes(), Some(outcome("key-1", 1, i64::MAX)))).await.unwrap();
        }
        let store = open(dir.path());
        assert_eq!(tx(&store).get("k").unwrap(), Some(Entry { value: b"v".to_vec(), version: 1 }));
        let stored = store.outcome(&key("key-1"), 2).unwrap().unwrap();
        assert_eq!(stored.result, Ok(b"out".to_vec()));
        let conn = Connection::open(store.path()).unwrap();
        let events: i64 = conn.query_row("SELECT count(*) FROM outbox", [], |r| r.get(0)).unwrap();
        assert_eq!(events, 1);
    }

    #[tokio::test]
    async fn racing_commits_in_one_batch_let_exactly_one_win() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        // Every racer reads before any commits: all of them start from "absent".
        let changes: Vec<ChangeSet> = (0..20u8)
            .map(|i| {
                let mut t = tx(&store);
                t.get("counter").unwrap();
                t.set("counter", vec![i]).unwrap();
                t.into_changes()
            })
            .collect();
        let racers: Vec<_> = changes.into_iter().map(|c| store.commit(commit_of(c, None))).collect();
        let mut won = 0;
        for racer in racers {
            match racer.await {
                Ok(()) => won += 1,
                Err(StoreError::Conflict(c)) => assert_eq!((c.expected, c.actual), (None, Some(1))),
                Err(other) => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(won, 1);
        assert_eq!(tx(&store).get("counter").unwrap().unwrap().version, 1);
    }

    #[tokio::test]
    async fn an_idempotency_key_is_stored_once_until_it_expires() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        store.commit(commit_of(ChangeSet::default(), Some(outcome("k", 100, 200)))).await.unwrap();
        let again = store.commit(commit_of(ChangeSet::default(), Some(outcome("k", 150, 300)))).await;
        assert_eq!(again, Err(StoreError::Duplicate("k".into())));
        assert!(store.outcome(&key("k"), 199).unwrap().is_some());
        assert!(store.outcome(&key("k"), 200).unwrap().is_none(), "expired at 200");
        store.commit(commit_of(ChangeSet::default(), Some(outcome("k", 250, 400)))).await.unwrap();
        assert_eq!(
            store.outcome(&key("k"), 260).unwrap().unwrap().created_at,
            250,
            "an expired key is reused"
        );
        assert_eq!(store.prune(PruneKind::Outcomes, 399, 500).await.unwrap(), 0);
        assert_eq!(store.prune(PruneKind::Outcomes, 400, 500).await.unwrap(), 1);
    }

    /// A client's key and the host's key with the same text are different keys: one
    /// can neither pre-empt nor replay the other.
    #[tokio::test]
    async fn key_spaces_keep_the_same_text_apart() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let text = "saga/01a2/charge/do";
        let mut planted = outcome(text, 100, i64::MAX);
        planted.result = Err("planted by a client".into());
        store.commit(commit_of(ChangeSet::default(), Some(planted))).await.unwrap();
        let saga_key = IdempotencyKey { space: KeySpace::Saga, ..key(text) };
        assert_eq!(store.outcome(&saga_key, 101).unwrap(), None, "the saga's key is still free");
        let step = StoredOutcome { key: saga_key.clone(), ..outcome(text, 100, i64::MAX) };
        store.commit(commit_of(ChangeSet::default(), Some(step))).await.unwrap();
        assert_eq!(store.outcome(&saga_key, 101).unwrap().unwrap().result, Ok(b"out".to_vec()));
        assert_eq!(
            store.outcome(&key(text), 101).unwrap().unwrap().result,
            Err("planted by a client".into()),
            "the client's outcome is its own"
        );
    }

    #[tokio::test]
    async fn a_conflicting_commit_writes_nothing_of_itself() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let mut base = tx(&store);
        base.set("a", b"1".to_vec()).unwrap();
        store.commit(commit_of(base.into_changes(), None)).await.unwrap();

        let mut stale = tx(&store);
        stale.set("b", b"new".to_vec()).unwrap();
        stale.get("a").unwrap();
        let mut fresh = tx(&store);
        fresh.set("a", b"2".to_vec()).unwrap();
        store.commit(commit_of(fresh.into_changes(), None)).await.unwrap();
        let mut changes = stale.into_changes();
        changes.events.push(Event { topic: "t".into(), payload: b"{}".to_vec(), correlation_id: None });
        let err = store.commit(commit_of(changes, Some(outcome("stale", 1, i64::MAX)))).await.unwrap_err();
        assert!(matches!(err, StoreError::Conflict(Conflict { ref key, .. }) if key == "a"), "{err:?}");
        assert_eq!(tx(&store).get("b").unwrap(), None, "the write to b was rolled back");
        assert!(store.outcome(&key("stale"), 2).unwrap().is_none(), "no outcome stored");
        let conn = Connection::open(store.path()).unwrap();
        let events: i64 = conn.query_row("SELECT count(*) FROM outbox", [], |r| r.get(0)).unwrap();
        assert_eq!(events, 0, "no event stored");
    }

    #[tokio::test]
    async fn snapshots_are_stable_and_scans_skip_tombstones() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let mut t = tx(&store);
        for key in ["p/1", "p/2", "p/3", "q/1"] {
            t.set(key, key.as_bytes().to_vec()).unwrap();
        }
        store.commit(commit_of(t.into_changes(), None)).await.unwrap();
        let mut reader = tx(&store);
        assert_eq!(reader.scan("p/", None, 10).unwrap().len(), 3, "the snapshot starts here");
        let mut t = tx(&store);
        t.delete("p/2", None).unwrap();
        t.set("p/4", b"x".to_vec()).unwrap();
        store.commit(commit_of(t.into_changes(), None)).await.unwrap();
        let keys = |rows: Vec<(String, Entry)>| rows.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
        assert_eq!(
            keys(reader.scan("p/", None, 10).unwrap()),
            ["p/1", "p/2", "p/3"],
            "still the old snapshot"
        );
        assert_eq!(keys(tx(&store).scan("p/", None, 10).unwrap()), ["p/1", "p/3", "p/4"]);
        assert_eq!(keys(tx(&store).scan("p/", Some("p/1"), 1).unwrap()), ["p/3"]);
    }

    /// A forgotten tombstone leaves its version behind: the key reads (absent) at its
    /// service's floor, and created again it goes on above every version it had, so an
    /// old version number can never match it again. Other services are not moved.
    #[tokio::test]
    async fn a_forgotten_tombstone_keeps_its_version() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        for _ in 0..3 {
            let mut t = tx(&store);
            let current = t.get("k").unwrap();
            t.set("k", format!("{current:?}").into_bytes()).unwrap();
            store.commit(commit_of(t.into_changes(), None)).await.unwrap();
        }
        let mut t = tx(&store);
        t.delete("k", Some(3)).unwrap();
        store.commit(commit_of(t.into_changes(), None)).await.unwrap();
        assert_eq!(store.prune(PruneKind::Tombstones, 0, 100).await.unwrap(), 0, "not old enough");
        let later = crate::clock::now_ms() + 1;
        assert_eq!(store.prune(PruneKind::Tombstones, later, 100).await.unwrap(), 1);
        let conn = Connection::open(store.path()).unwrap();
        let rows: i64 = conn.query_row("SELECT count(*) FROM records", [], |r| r.get(0)).unwrap();
        assert_eq!(rows, 0, "the tombstone is gone");

        let mut t = tx(&store);
        assert_eq!(t.get("k").unwrap(), None);
        assert_eq!(t.put("k", b"again".to_vec(), None), Ok(5), "above the forgotten version 4");
        store.commit(commit_of(t.into_changes(), None)).await.unwrap();
        let mut stale = tx(&store);
        let err = stale.put("k", b"stale".to_vec(), Some(1)).unwrap_err();
        assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");

        let mut other = Transaction::new(store.snapshot("other").unwrap(), TxLimits::default());
        assert_eq!(other.put("k", b"x".to_vec(), None), Ok(1), "another service starts at 1");
    }

    /// Past (three quarters of) its limit the WAL starts again from its beginning,
    /// though commits never pause and readers keep coming: without that, nothing
    /// restarts it and it grows by every commit.
    #[tokio::test]
    async fn the_wal_stays_under_its_limit_under_sustained_commits() {
        let dir = tempfile::tempdir().unwrap();
        let limit = 256 << 10;
        let options = SqliteOptions { wal_limit: limit, ..SqliteOptions::default() };
        let store = Arc::new(SqliteStore::open(dir.path(), options).unwrap());
        let reading = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let reader = {
            let (store, reading) = (store.clone(), reading.clone());
            std::thread::spawn(move || {
                while reading.load(std::sync::atomic::Ordering::Relaxed) {
                    store.snapshot("svc").unwrap().get("k1").unwrap();
                }
            })
        };
        let wal = dir.path().join("wasaga.db-wal");
        let mut largest = 0;
        for n in 0..2_000 {
            let mut t = tx(&store);
            t.set(&format!("k{n}"), vec![b'x'; 1024]).unwrap();
            store.commit(commit_of(t.into_changes(), None)).await.unwrap();
            largest = largest.max(std::fs::metadata(&wal).unwrap().len());
        }
        reading.store(false, std::sync::atomic::Ordering::Relaxed);
        reader.join().unwrap();
        // 2,000 KiB of values alone: the WAL restarted several times.
        assert!(largest <= limit, "the WAL reached {largest} bytes, over its limit of {limit}");
    }

    /// A key read as absent at the floor, then the floor raised under it, conflicts at
    /// commit instead of going back below a forgotten version.
    #[tokio::test]
    async fn a_create_read_below_a_raised_floor_conflicts() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let mut early = tx(&store);
        early.get("fresh").unwrap();
        early.get("gone").unwrap();
        early.set("fresh", b"1".to_vec()).unwrap();
        for value in [Some(b"v".to_vec()), None] {
            let mut t = tx(&store);
            t.get("gone").unwrap();
            match value {
                Some(value) => t.set("gone", value).unwrap(),
                None => {
                    t.delete("gone", None).unwrap();
                    0
                }
            };
            store.commit(commit_of(t.into_changes(), None)).await.unwrap();
        }
        store.prune(PruneKind::Tombstones, crate::clock::now_ms() + 1, 100).await.unwrap();
        let err = store.commit(commit_of(early.into_changes(), None)).await.unwrap_err();
        assert!(matches!(err, StoreError::Conflict(ref c) if c.key == "gone"), "{err:?}");
    }

    /// Retention forgets only what is past it and finished: a running or stuck saga, an
    /// event with a pending or dead delivery, an outcome not yet expired stay; in batches.
    #[tokio::test]
    async fn retention_forgets_only_what_is_finished_and_old() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        for n in 0..5 {
            store
                .commit(commit_of(ChangeSet::default(), Some(outcome(&format!("k{n}"), 1, 10))))
                .await
                .unwrap();
        }
        store.commit(commit_of(ChangeSet::default(), Some(outcome("fresh", 1, 1_000)))).await.unwrap();
        assert_eq!(store.prune(PruneKind::Outcomes, 100, 3).await.unwrap(), 3, "a batch");
        assert_eq!(store.prune(PruneKind::Outcomes, 100, 3).await.unwrap(), 2);
        assert!(store.outcome(&key("fresh"), 100).unwrap().is_some());

        for (id, status, at) in [
            ("a", "completed", 5),
            ("b", "compensated", 5),
            ("c", "stuck", 5),
            ("d", "running", 5),
            ("e", "completed", 500),
        ] {
            let row = SagaRow {
                id: id.into(),
                name: "s".into(),
                status: status.into(),
                input: b"{}".to_vec(),
                state: "{}".into(),
                version: 1,
                key: id.into(),
                fingerprint: [0; 32],
                created_at: at,
                updated_at: at,
            };
            store
                .commit(Commit { saga: Some(crate::store::SagaChange::Create(row)), ..Commit::default() })
                .await
                .unwrap();
        }
        assert_eq!(store.prune(PruneKind::Sagas, 100, 500).await.unwrap(), 2);
        let left: Vec<String> =
            store.sagas(None, None, 10, false).unwrap().into_iter().map(|s| s.id).collect();
        assert_eq!(left, ["c", "d", "e"]);

        for n in 0..3 {
            let mut t = tx(&store);
            t.publish("topic", format!("{n}").into_bytes(), None).unwrap();
            let mut commit = commit_of(t.into_changes(), None);
            commit.correlation_id = Some("chain".into());
            store.commit(commit).await.unwrap();
        }
        let delivery = |event_id: i64, status: &str| DeliveryRow {
            event_id,
            subscriber: "sub".into(),
            operation: "op".into(),
            topic: "topic".into(),
            correlation_id: Some("chain".into()),
            status: status.into(),
            attempts: 1,
            next_at: 0,
            outcome: None,
            last_error: None,
            created_at: 0,
            done_at: None,
        };
        let made = crate::store::DeliveryChange::Create {
            deliveries: vec![delivery(1, "pending"), delivery(2, "pending")],
            through: 2,
        };
        store.commit(Commit { deliveries: vec![made], ..Commit::default() }).await.unwrap();
        let delivered = crate::store::DeliveryChange::Update {
            event_id: 1,
            subscriber: "sub".into(),
            status: "delivered".into(),
            attempts: 1,
            next_at: 0,
            outcome: Some("ok".into()),
            last_error: None,
            done_at: Some(1),
        };
        store.commit(Commit { deliveries: vec![delivered], ..Commit::default() }).await.unwrap();
        let later = crate::clock::now_ms() + 1;
        assert_eq!(store.prune(PruneKind::Events, later, 500).await.unwrap(), 1, "only the delivered event");
        let page = store.chain("chain", 0, 10).unwrap();
        let ids: Vec<i64> = page.events.iter().map(|e| e.id).collect();
        assert_eq!(ids, [2, 3], "2 has a pending delivery; 3 is not dispatched yet");
        assert_eq!(page.deliveries.len(), 1);
    }

    #[test]
    fn a_second_process_cannot_open_the_same_data_directory() {
        let dir = tempfile::tempdir().unwrap();
        let _first = open(dir.path());
        let err = SqliteStore::open(dir.path(), SqliteOptions::default()).unwrap_err();
        assert!(err.to_string().contains("in use by another wasaga process"), "{err}");
    }
}
