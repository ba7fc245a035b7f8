//! The embedded backend: SQLite in WAL mode, in one data directory.
//!
//! - One writer thread owns the write connection and group-commits (`writer.rs`);
//!   each table's reads and writes are in its own file (`records.rs`, `sagas.rs`,
//!   `outbox.rs`, `plugins.rs`), as in the PostgreSQL backend.
//! - Snapshots are read transactions on pooled read connections (`conn.rs`,
//!   `records.rs`): WAL lets them see one consistent state while the writer goes on.
//! - Checkpoints run on a thread of their own (`wal.rs`). SQLite's automatic
//!   checkpoint would run inside a committing transaction and stall it (14–46 ms
//!   measured here), so it is switched off on the writer.
//! - Migrations run at open (`schema.rs`).
//! - A lock file keeps a second wasaga process off the same data directory.

mod conn;
mod health;
mod outbox;
mod plugins;
pub mod portable;
mod prune;
mod records;
mod sagas;
mod schema;
mod wal;
mod writer;

use self::conn::{BUSY_TIMEOUT, ReadPool, unavailable};
use super::health::Health;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use rusqlite::Connection;
use tokio::sync::oneshot;

use super::{
    ChainPage, Commit, CommitFuture, DefinitionRow, DeliveryRow, DeliveryStatus, EventRow, Failing,
    IdempotencyKey, PruneKind, SagaPage, SagaRow, SagaStatus, Snapshot, Store, StoreError, StoredOutcome,
    Unfanned, UploadRow, UploadStamp, Wakeups,
};

/// SQLite's `synchronous` setting for commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
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
    /// Every change is this process's commit: the hints are complete.
    wakeups: Arc<Wakeups>,
    stop: Arc<AtomicBool>,
    _lock: File,
    /// The directory of a [`SqliteStore::temporary`] store, removed with it.
    _temporary: Option<tempfile::TempDir>,
}

impl SqliteStore {
    /// Opens (creating if needed) the store in `dir`, brings its schema up to date and
    /// starts the writer and checkpoint threads.
    pub fn open(dir: &Path, options: SqliteOptions) -> Result<SqliteStore, StoreError> {
        // A data directory made here is its user's alone: the database holds every
        // record and outcome (one that exists keeps the permissions it was given).
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(dir).map_err(|e| io_error(dir, e))?;
        let lock_path = dir.join("wasaga.lock");
        let lock = File::create(&lock_path).map_err(|e| io_error(&lock_path, e))?;
        if !take_lock(&lock) {
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

        let checkpoints = wal::Checkpoints::default();
        let wal = wal::WalPolicy {
            path: dir.join("wasaga.db-wal"),
            limit: options.wal_limit,
            checkpoints: checkpoints.clone(),
            not_before: None,
        };
        wal.prepare(&conn).map_err(unavailable)?;
        let stop = Arc::new(AtomicBool::new(false));
        wal::spawn_checkpointer(&path, options.checkpoint_interval, checkpoints, stop.clone())?;
        let health = Arc::new(Health::default());
        let wakeups = Arc::new(Wakeups::new(true));
        let writer = writer::spawn(conn, options.max_batch, wal, health.clone(), wakeups.clone());
        Ok(SqliteStore {
            health,
            wakeups,
            readers: Arc::new(ReadPool::new(path.clone())),
            path,
            writer: Mutex::new(writer),
            stop,
            _lock: lock,
            _temporary: None,
        })
    }

    /// A store in a fresh temporary directory, removed when the store is dropped: for
    /// tests, benchmarks and checks that need a real store and no data directory.
    /// Commits are not synced (`synchronous = NORMAL`): nothing in it outlives it.
    pub fn temporary() -> Result<SqliteStore, StoreError> {
        let dir = tempfile::Builder::new()
            .prefix("wasaga-scratch-")
            .tempdir()
            .map_err(|e| StoreError::Unavailable(format!("creating a temporary directory: {e}")))?;
        let options = SqliteOptions { synchronous: Synchronous::Normal, ..SqliteOptions::default() };
        let mut store = SqliteStore::open(dir.path(), options)?;
        store._temporary = Some(dir);
        Ok(store)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `read` on a pooled read connection: the one place that borrows a reader
    /// for a query and gives it back.
    fn read<T>(&self, read: impl FnOnce(&mut Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        let mut conn = self.readers.take()?;
        let result = read(&mut conn).map_err(unavailable);
        self.readers.put(conn);
        result
    }

    /// [`SqliteStore::read`] on a thread for blocking work: for the reads that take
    /// long (a search).
    async fn read_blocking<T: Send + 'static>(
        &self,
        read: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let readers = self.readers.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = readers.take()?;
            let result = read(&mut conn).map_err(unavailable);
            readers.put(conn);
            result
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("a read's thread failed: {e}")))?
    }

    /// Runs `work` in the writer, among the commits, once it is durable.
    async fn write<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.send(writer::task(work, reply))?;
        answer.await.map_err(|_| writer_gone())?
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

/// Takes the data directory's lock, waiting up to a second for it. The lock belongs to
/// the open file, and a process that starts a program while its store is open lends the
/// file to the child until the child's `exec` closes it: a store just dropped in a
/// process that also starts programs (a test suite) can look busy for those milliseconds. A server still running keeps it for good.
fn take_lock(lock: &File) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    loop {
        if lock.try_lock().is_ok() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    fn snapshot(&self, service: &str) -> Result<Box<dyn Snapshot>, StoreError> {
        let conn = self.readers.take()?;
        Ok(Box::new(records::SqliteSnapshot {
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

    // The reads below run on the caller's thread: they take microseconds (indexed,
    // bounded), and a pooled connection never waits for the writer (WAL).

    async fn outcome(&self, key: &IdempotencyKey, now: i64) -> Result<Option<StoredOutcome>, StoreError> {
        self.read(|conn| records::outcome(conn, key, now))
    }

    async fn saga(&self, id: &str) -> Result<Option<SagaRow>, StoreError> {
        self.read(|conn| sagas::saga(conn, id))
    }

    async fn saga_by_key(&self, name: &str, key: &str) -> Result<Option<SagaRow>, StoreError> {
        self.read(|conn| sagas::saga_by_key(conn, name, key))
    }

    async fn sagas(
        &self,
        status: Option<SagaStatus>,
        after: Option<&str>,
        limit: usize,
        newest_first: bool,
        max_bytes: usize,
    ) -> Result<SagaPage, StoreError> {
        self.read(|conn| sagas::sagas(conn, status, after, limit, newest_first, max_bytes))
    }

    async fn unfinished_sagas(&self) -> Result<Vec<SagaRow>, StoreError> {
        self.read(|conn| sagas::unfinished(conn))
    }

    async fn saga_counts(&self) -> Result<Vec<(SagaStatus, u64)>, StoreError> {
        self.read(|conn| sagas::counts(conn))
    }

    async fn search_sagas(&self, text: &str, limit: usize) -> Result<Vec<SagaRow>, StoreError> {
        // Not microseconds, unlike the other reads: on a thread for blocking work, not
        // on the runtime's, whose every task it would hold up meanwhile.
        let text = text.to_owned();
        self.read_blocking(move |conn| sagas::search(conn, &text, limit)).await
    }

    async fn definition(&self, digest: &str) -> Result<Option<DefinitionRow>, StoreError> {
        self.read(|conn| sagas::definition(conn, digest))
    }

    async fn unfanned_events(&self, topics: &[String]) -> Result<Option<Unfanned>, StoreError> {
        let topics = serde_json::to_string(topics).expect("text serialises");
        self.read(|conn| outbox::unfanned(conn, &topics))
    }

    async fn dispatched_through(&self) -> Result<i64, StoreError> {
        self.read(|conn| outbox::dispatched_through(conn))
    }

    async fn events_after(&self, after: i64, limit: usize) -> Result<Vec<EventRow>, StoreError> {
        self.read(|conn| outbox::events_after(conn, after, limit))
    }

    async fn event(&self, id: i64) -> Result<Option<EventRow>, StoreError> {
        self.read(|conn| outbox::event(conn, id))
    }

    async fn due_deliveries(&self, now: i64, limit: usize) -> Result<Vec<DeliveryRow>, StoreError> {
        self.read(|conn| outbox::due_deliveries(conn, now, limit))
    }

    async fn delivery_counts(&self) -> Result<Vec<(DeliveryStatus, u64)>, StoreError> {
        self.read(|conn| outbox::delivery_counts(conn))
    }

    async fn dead_deliveries(&self, limit: usize) -> Result<Vec<DeliveryRow>, StoreError> {
        self.read(|conn| outbox::dead_deliveries(conn, limit))
    }

    async fn chain(
        &self,
        correlation_id: &str,
        after: i64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<ChainPage, StoreError> {
        self.read(|conn| outbox::chain(conn, correlation_id, after, limit, max_bytes))
    }

    async fn count_events_of(&self, correlation_id: &str) -> Result<u64, StoreError> {
        self.read(|conn| outbox::count_of(conn, correlation_id))
    }

    async fn uploads(&self) -> Result<Vec<UploadRow>, StoreError> {
        self.read(|conn| plugins::uploads(conn))
    }

    async fn upload_stamps(&self) -> Result<Vec<UploadStamp>, StoreError> {
        self.read(|conn| plugins::upload_stamps(conn))
    }

    /// Through the writer, as one job among the commits (see `prune.rs`).
    async fn prune(&self, kind: PruneKind, before: i64, batch: usize) -> Result<usize, StoreError> {
        self.write(move |conn| prune::prune(conn, kind, before, batch)).await
    }

    async fn heartbeat(&self, host: &str, now: i64, until: i64) -> Result<String, StoreError> {
        let host = host.to_owned();
        self.write(move |conn| sagas::heartbeat(conn, &host, now, until)).await
    }

    async fn claim_sagas(&self, host: &str, now: i64, limit: usize) -> Result<Vec<SagaRow>, StoreError> {
        let host = host.to_owned();
        self.write(move |conn| sagas::claim(conn, &host, now, limit)).await
    }

    /// See `health.rs`.
    fn failing(&self) -> Option<Failing> {
        self.health.failing()
    }

    fn wakeups(&self) -> Arc<Wakeups> {
        self.wakeups.clone()
    }
}

/// A status column read back into its enum; a status it does not know is a row this
/// version cannot read.
fn status<T>(row: &rusqlite::Row<'_>, column: usize, parse: fn(&str) -> Option<T>) -> rusqlite::Result<T> {
    let text: String = row.get(column)?;
    parse(&text).ok_or_else(|| {
        let unknown = format!("unknown status `{text}`");
        rusqlite::Error::FromSqlConversionFailure(column, rusqlite::types::Type::Text, unknown.into())
    })
}

/// Runs one query and maps every row.
fn rows<T>(
    conn: &Connection,
    sql: &str,
    params: &[&dyn rusqlite::ToSql],
    map: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<Vec<T>> {
    conn.prepare_cached(sql)?.query_map(params, map)?.collect()
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
    use crate::store::contract_tests::{commit_of, key, outcome};
    use crate::store::{Entry, Transaction, TxLimits};

    async fn scratch() -> SqliteStore {
        SqliteStore::temporary().unwrap()
    }

    crate::store::contract_tests::contract_tests!(scratch);

    fn open(dir: &Path) -> SqliteStore {
        SqliteStore::open(dir, SqliteOptions::default()).unwrap()
    }

    /// A data directory made by the store is its user's alone.
    #[cfg(unix)]
    #[test]
    fn a_data_directory_made_here_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("data");
        drop(open(&dir));
        assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
    }

    fn tx(store: &SqliteStore) -> Transaction {
        Transaction::new(store.snapshot("svc").unwrap(), TxLimits::default())
    }

    #[tokio::test]
    async fn commits_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = open(dir.path());
            let mut t = tx(&store);
            t.set("k", b"v".to_vec()).await.unwrap();
            t.publish("topic", b"{}".to_vec(), None).unwrap();
            store.commit(commit_of(t.into_changes(), Some(outcome("key-1", 1, i64::MAX)))).await.unwrap();
        }
        let store = open(dir.path());
        assert_eq!(tx(&store).get("k").await.unwrap(), Some(Entry { value: b"v".to_vec(), version: 1 }));
        let stored = store.outcome(&key("key-1"), 2).await.unwrap().unwrap();
        assert_eq!(stored.result, Ok(b"out".to_vec()));
        assert_eq!(store.events_after(0, 10).await.unwrap().len(), 1);
    }

    /// Past (three quarters of) its limit the WAL starts again from its beginning,
    /// though commits never pause and readers keep coming: without that, nothing
    /// restarts it and it grows by every commit. On a busy machine the reader may hold
    /// the WAL through every restart the last quarter allows; then the batch before the
    /// restart that waits for it lands past the limit: the WAL may exceed its limit by
    /// one batch (here a commit of a few pages), not more.
    #[tokio::test]
    async fn the_wal_stays_under_its_limit_under_sustained_commits() {
        let dir = tempfile::tempdir().unwrap();
        let limit = 256 << 10;
        let options = SqliteOptions { wal_limit: limit, ..SqliteOptions::default() };
        let store = Arc::new(SqliteStore::open(dir.path(), options).unwrap());
        let reading = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let reader = {
            let (store, reading) = (store.clone(), reading.clone());
            // A thread of its own, reading without pause (as the test's thread commits).
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
                while reading.load(std::sync::atomic::Ordering::Relaxed) {
                    runtime.block_on(store.snapshot("svc").unwrap().get("k1")).unwrap();
                }
            })
        };
        let wal = dir.path().join("wasaga.db-wal");
        let mut largest = 0;
        for n in 0..2_000 {
            let mut t = tx(&store);
            t.set(&format!("k{n}"), vec![b'x'; 1024]).await.unwrap();
            store.commit(commit_of(t.into_changes(), None)).await.unwrap();
            largest = largest.max(std::fs::metadata(&wal).unwrap().len());
        }
        reading.store(false, std::sync::atomic::Ordering::Relaxed);
        reader.join().unwrap();
        // 2,000 KiB of values alone: the WAL restarted several times.
        let one_batch = 32 << 10;
        assert!(largest <= limit + one_batch, "the WAL reached {largest} bytes, over its limit of {limit}");
    }

    /// Programs started while a store is open inherit its lock file until they `exec`;
    /// the store, dropped and opened again meanwhile, still opens.
    #[test]
    fn a_store_reopens_while_the_process_starts_programs() {
        let dir = tempfile::tempdir().unwrap();
        let starting = Arc::new(AtomicBool::new(true));
        let starter = {
            let starting = starting.clone();
            std::thread::spawn(move || {
                while starting.load(Ordering::Relaxed) {
                    std::process::Command::new("true").status().unwrap();
                }
            })
        };
        for _ in 0..200 {
            drop(open(dir.path()));
        }
        starting.store(false, Ordering::Relaxed);
        starter.join().unwrap();
    }

    #[test]
    fn a_second_process_cannot_open_the_same_data_directory() {
        let dir = tempfile::tempdir().unwrap();
        let _first = open(dir.path());
        let err = SqliteStore::open(dir.path(), SqliteOptions::default()).unwrap_err();
        assert!(err.to_string().contains("in use by another wasaga process"), "{err}");
    }
}
