//! The shared backend: PostgreSQL, for hosts that outgrow one machine's SQLite.
//!
//! - One writer thread per host owns a connection and group-commits (`writer.rs`):
//!   a batch is one transaction in three round trips (every commit's checks, the
//!   writes of those that hold, `COMMIT`).
//! - Snapshots are read-only `REPEATABLE READ` transactions on pooled connections
//!   (`records.rs`); invocations read through a cache of records, checked at their
//!   commit (`cache.rs`); the other reads run on pooled connections, in each table's file (`sagas.rs`,
//!   `outbox.rs`, `plugins.rs`).
//! - Migrations run at start, one host at a time (`schema.rs`).
//! - Several hosts may share the database: heartbeats, saga claims and the
//!   leader come from `sagas.rs` (`heartbeat`, `claim`; see `cluster.rs`); every
//!   saga update is fenced by version and owner, and batches that publish take turns
//!   so that event ids follow commit order (`writer.rs`).
//!
//! The client is tokio-postgres (see docs/architecture.md for why).

mod cache;
mod conn;
mod health;
mod listen;
mod outbox;
mod plugins;
pub mod portable;
mod prune;
mod records;
mod sagas;
mod schema;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
mod writer;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_postgres::Config;

use self::cache::RecordCache;
use self::conn::{Conn, Pool};
use super::health::Health;
use super::{
    ChainPage, Commit, CommitFuture, DefinitionRow, DeliveryRow, DeliveryStatus, EventRow, Failing,
    IdempotencyKey, PruneKind, SagaPage, SagaRow, SagaStatus, Snapshot, Store, StoreError, StoredOutcome,
    Unfanned, UploadRow, UploadStamp, Wakeups,
};
use crate::service::PluginDigest;

/// How the store writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PgOptions {
    /// The most commits in one transaction; 1 turns group commit off.
    pub max_batch: usize,
    /// Connections for reads and snapshots (the writer has one more of its own).
    pub connections: usize,
    /// Bytes of records kept in memory for invocations' reads (`cache.rs`); 0: none.
    pub cache_bytes: usize,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions { max_batch: 256, connections: 16, cache_bytes: 64 << 20 }
    }
}

/// Everything the host persists, in a PostgreSQL database.
#[derive(Debug)]
pub struct PgStore {
    pool: Arc<Pool>,
    cache: Arc<RecordCache>,
    writer: mpsc::Sender<writer::Job>,
    health: Arc<Health>,
    wakeups: Arc<Wakeups>,
}

impl PgStore {
    /// Connects to `url` (a `postgres://` URL or a `key=value` connection string; several
    /// hosts with `target_session_attrs=read-write` follow a failover), brings the
    /// schema up to date and starts the writer.
    pub async fn connect(url: &str, options: PgOptions) -> Result<PgStore, StoreError> {
        let config = config(url)?;
        let mut migrating = Conn::open(&config).await?;
        schema::migrate(&mut migrating.client).await.map_err(StoreError::Unavailable)?;
        let health = Arc::new(Health::default());
        // Complete once the listener listens: until then other hosts' changes go unheard.
        let wakeups = Arc::new(Wakeups::new(false));
        let cache = Arc::new(RecordCache::new(options.cache_bytes));
        let writer =
            writer::spawn(config.clone(), options.max_batch, health.clone(), wakeups.clone(), cache.clone())
                .await?;
        listen::spawn(config.clone(), wakeups.clone());
        let pool = Arc::new(Pool::new(config, options.connections, health.clone()));
        Ok(PgStore { pool, cache, writer, health, wakeups })
    }

    /// Brings the schema at `url` up to date, and nothing more (for `wasaga export` and
    /// `import`, which then use connections of their own).
    pub(crate) async fn migrate(url: &str) -> Result<(), StoreError> {
        let mut conn = Conn::open(&config(url)?).await?;
        schema::migrate(&mut conn.client).await.map_err(StoreError::Unavailable)
    }

    fn send(&self, job: writer::Job) -> Result<(), StoreError> {
        self.writer.try_send(job).map_err(|error| match error {
            mpsc::error::TrySendError::Full(_) => StoreError::Overloaded(format!(
                "{} commits are waiting for the database; retry in a moment",
                writer::QUEUE
            )),
            mpsc::error::TrySendError::Closed(_) => writer_gone(),
        })
    }
}

/// The connection settings of `url`, with wasaga's defaults where it says nothing.
pub(in crate::store) fn config(url: &str) -> Result<Config, StoreError> {
    let mut config: Config =
        url.parse().map_err(|e| StoreError::Invalid(format!("not a PostgreSQL connection string: {e}")))?;
    if config.get_application_name().is_none() {
        config.application_name("wasaga");
    }
    // A server that went away without closing the connection (a failover, a cut
    // network) must not hold a commit or a read for ever: unanswered data fails the
    // connection after a while, and the store is marked failing until it reconnects.
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(10));
    }
    if config.get_tcp_user_timeout().is_none() {
        config.tcp_user_timeout(Duration::from_secs(30));
    }
    Ok(config)
}

/// Runs a read on a pooled connection, then gives the connection back: the one place
/// that borrows one for a query.
macro_rules! read {
    ($store:expr, $conn:ident => $read:expr) => {{
        let mut taken = $store.pool.take().await?;
        let $conn = &mut taken;
        let result = $read.await;
        $store.pool.put(taken);
        result
    }};
}

fn writer_gone() -> StoreError {
    StoreError::Unavailable("the writer has stopped".into())
}

#[async_trait::async_trait]
impl Store for PgStore {
    fn snapshot(&self, service: &str) -> Result<Box<dyn Snapshot>, StoreError> {
        Ok(Box::new(records::PgSnapshot::new(self.pool.clone(), service)))
    }

    fn invocation_reads(&self, service: &str) -> Result<Box<dyn Snapshot>, StoreError> {
        Ok(Box::new(records::CachedReads::new(self.pool.clone(), self.cache.clone(), service)))
    }

    fn commit(&self, commit: Commit) -> CommitFuture {
        let (reply, answer) = oneshot::channel();
        let sent = self.send(writer::Job::Commit(Box::new(commit), reply));
        Box::pin(async move {
            sent?;
            answer.await.map_err(|_| writer_gone())?
        })
    }

    async fn outcome(&self, key: &IdempotencyKey, now: i64) -> Result<Option<StoredOutcome>, StoreError> {
        read!(self, conn => records::outcome(conn, key, now))
    }

    async fn saga(&self, id: &str) -> Result<Option<SagaRow>, StoreError> {
        read!(self, conn => sagas::saga(conn, id))
    }

    async fn saga_by_key(&self, name: &str, key: &str) -> Result<Option<SagaRow>, StoreError> {
        read!(self, conn => sagas::saga_by_key(conn, name, key))
    }

    async fn sagas(
        &self,
        status: Option<SagaStatus>,
        after: Option<&str>,
        limit: usize,
        newest_first: bool,
        max_bytes: usize,
    ) -> Result<SagaPage, StoreError> {
        read!(self, conn => sagas::sagas(conn, status, after, limit, newest_first, max_bytes))
    }

    async fn unfinished_sagas(&self) -> Result<Vec<SagaRow>, StoreError> {
        read!(self, conn => sagas::unfinished(conn))
    }

    async fn heartbeat(&self, host: &str, now: i64, until: i64) -> Result<String, StoreError> {
        read!(self, conn => sagas::heartbeat(conn, host, now, until))
    }

    async fn claim_sagas(&self, host: &str, now: i64, limit: usize) -> Result<Vec<SagaRow>, StoreError> {
        read!(self, conn => sagas::claim(conn, host, now, limit))
    }

    async fn saga_counts(&self) -> Result<Vec<(SagaStatus, u64)>, StoreError> {
        read!(self, conn => sagas::counts(conn))
    }

    async fn search_sagas(&self, text: &str, limit: usize) -> Result<Vec<SagaRow>, StoreError> {
        read!(self, conn => sagas::search(conn, text, limit))
    }

    async fn definition(&self, digest: &str) -> Result<Option<DefinitionRow>, StoreError> {
        read!(self, conn => sagas::definition(conn, digest))
    }

    async fn unfanned_events(&self, topics: &[String]) -> Result<Option<Unfanned>, StoreError> {
        read!(self, conn => outbox::unfanned(conn, topics))
    }

    async fn dispatched_through(&self) -> Result<i64, StoreError> {
        read!(self, conn => outbox::dispatched_through(conn))
    }

    async fn events_after(&self, after: i64, limit: usize) -> Result<Vec<EventRow>, StoreError> {
        read!(self, conn => outbox::events_after(conn, after, limit))
    }

    async fn event(&self, id: i64) -> Result<Option<EventRow>, StoreError> {
        read!(self, conn => outbox::event(conn, id))
    }

    async fn due_deliveries(&self, now: i64, limit: usize) -> Result<Vec<DeliveryRow>, StoreError> {
        read!(self, conn => outbox::due_deliveries(conn, now, limit))
    }

    async fn delivery_counts(&self) -> Result<Vec<(DeliveryStatus, u64)>, StoreError> {
        read!(self, conn => outbox::delivery_counts(conn))
    }

    async fn dead_deliveries(&self, limit: usize) -> Result<Vec<DeliveryRow>, StoreError> {
        read!(self, conn => outbox::dead_deliveries(conn, limit))
    }

    async fn chain(
        &self,
        correlation_id: &str,
        after: i64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<ChainPage, StoreError> {
        read!(self, conn => outbox::chain(conn, correlation_id, after, limit, max_bytes))
    }

    async fn count_events_of(&self, correlation_id: &str) -> Result<u64, StoreError> {
        read!(self, conn => outbox::count_of(conn, correlation_id))
    }

    async fn uploads(&self) -> Result<Vec<UploadRow>, StoreError> {
        read!(self, conn => plugins::uploads(conn))
    }

    async fn upload_stamps(&self) -> Result<Vec<UploadStamp>, StoreError> {
        read!(self, conn => plugins::upload_stamps(conn))
    }

    /// Through the writer, as one job among the commits.
    async fn prune(&self, kind: PruneKind, before: i64, batch: usize) -> Result<usize, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.send(writer::Job::Prune(kind, before, batch, reply))?;
        answer.await.map_err(|_| writer_gone())?
    }

    fn failing(&self) -> Option<Failing> {
        self.health.failing()
    }

    fn wakeups(&self) -> Arc<Wakeups> {
        self.wakeups.clone()
    }
}

/// A status column read back into its enum; a status this version does not know is a
/// row it cannot read.
fn status<T>(text: &str, parse: fn(&str) -> Option<T>) -> Result<T, StoreError> {
    parse(text)
        .ok_or_else(|| StoreError::Unavailable(format!("a stored row with the unknown status `{text}`")))
}

/// A digest column read back.
fn digest(text: &str) -> Result<PluginDigest, StoreError> {
    PluginDigest::parse(text).ok_or_else(|| StoreError::Unavailable(format!("not a plugin digest: `{text}`")))
}

/// Opens a store on a fresh schema of the test server (see `testing.rs`).
#[cfg(test)]
pub(crate) async fn scratch() -> PgStore {
    PgStore::connect(&testing::scratch().await, PgOptions::default()).await.unwrap()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{PgOptions, PgStore, testing};
    use crate::store::contract_tests::{commit_of, create_saga, saga, woken};
    use crate::store::{
        ChangeSet, Commit, Event, SagaChange, SagaStatus, Slot, Store, StoreError, Transaction, TxLimits,
        UploadChange, UploadRow,
    };

    crate::store::contract_tests::contract_tests!(super::scratch);

    /// Another host's commit that publishes an event, or keeps a plugin change, wakes
    /// this host's waiting task through `LISTEN` (and a host of another schema on the
    /// same database stays asleep).
    #[tokio::test]
    async fn another_hosts_commits_wake_this_one() {
        let url = testing::scratch().await;
        let connect = || PgStore::connect(&url, PgOptions::default());
        let (writer, listener, elsewhere) =
            (connect().await.unwrap(), connect().await.unwrap(), super::scratch().await);
        let hour = Duration::from_secs(3600);
        for store in [&listener, &elsewhere] {
            let wakeups = store.wakeups();
            for _ in 0..100 {
                if wakeups.complete() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert!(wakeups.complete(), "the listener listens");
            // The hints every listener gives when it starts.
            let _ = (woken(wakeups.events(hour, hour)).await, woken(wakeups.plugins(hour, hour)).await);
        }
        let (here, there) = (listener.wakeups(), elsewhere.wakeups());

        let mut changes = ChangeSet::default();
        changes.events.push(Event::new("t", b"{}", None));
        writer.commit(commit_of(changes, None)).await.unwrap();
        assert!(woken(here.events(hour, hour)).await, "the other host's event wakes this dispatcher");
        assert!(!woken(there.events(hour, hour)).await, "not one of another schema");

        let removal = UploadRow { service: "x".into(), component: None, base: None, uploaded_at: 1 };
        writer
            .commit(Commit { uploads: vec![UploadChange::Keep(removal)], ..Commit::default() })
            .await
            .unwrap();
        assert!(woken(here.plugins(hour, hour)).await, "the other host's plugin change wakes this follower");
        assert!(!woken(here.events(hour, hour)).await, "and not the dispatcher");
    }

    /// Two hosts' writers keep their saga counts apart (a row each, so that their
    /// batches never wait for one another on a count) and a read sums them.
    #[tokio::test]
    async fn saga_counts_of_several_hosts_add_up() {
        let url = testing::scratch().await;
        let connect = || PgStore::connect(&url, PgOptions::default());
        let (a, b) = (connect().await.unwrap(), connect().await.unwrap());
        create_saga(&a, saga("s1", "s", "k1", SagaStatus::Running, 1)).await.unwrap();
        create_saga(&b, saga("s2", "s", "k2", SagaStatus::Running, 1)).await.unwrap();
        let done = SagaChange::Update {
            id: "s1".into(),
            version: 1,
            status: SagaStatus::Completed,
            state: "{}".into(),
            at: 2,
            by: None,
        };
        b.commit(Commit { saga: Some(done), ..Commit::default() }).await.unwrap();
        let expected = vec![(SagaStatus::Completed, 1), (SagaStatus::Running, 1)];
        assert_eq!(a.saga_counts().await.unwrap(), expected, "a saga of one host finished by the other");
        assert_eq!(b.saga_counts().await.unwrap(), expected);
    }

    /// Two hosts on one fresh schema.
    async fn two_hosts() -> (PgStore, PgStore) {
        let url = testing::scratch().await;
        let connect = || PgStore::connect(&url, PgOptions::default());
        (connect().await.unwrap(), connect().await.unwrap())
    }

    /// An invocation's reads of `svc` on `store`.
    fn reads(store: &PgStore) -> Transaction {
        Transaction::new(store.invocation_reads("svc").unwrap(), TxLimits::default())
    }

    /// The commit of `tx` once it has set `k` to `value`.
    async fn write(mut tx: Transaction, value: &str) -> Commit {
        tx.set("k", value.as_bytes().to_vec()).await.unwrap();
        commit_of(tx.into_changes(), None)
    }

    /// An invocation reads through this host's cache, which another host's commit
    /// makes stale: the commit that read the stale version is refused, the entry is
    /// forgotten, and the next invocation reads the database's version.
    #[tokio::test]
    async fn a_read_another_host_made_stale_is_refused_at_commit_then_read_anew() {
        let (here, there) = two_hosts().await;

        here.commit(write(reads(&here), "1").await).await.unwrap();
        let kept = Slot { value: Some(b"1".to_vec()), version: 1 };
        assert_eq!(here.cache.get("svc", "k"), Some(kept), "kept at the commit, before it is answered");
        there.commit(write(reads(&there), "2").await).await.unwrap();

        let mut stale = reads(&here);
        assert_eq!(stale.get("k").await.unwrap().map(|e| e.version), Some(1), "from the cache");
        match here.commit(write(stale, "3").await).await {
            Err(StoreError::Conflict(c)) => {
                assert_eq!((c.key, c.expected, c.actual), ("k".into(), Some(1), Some(2)))
            }
            other => panic!("a commit on a stale read: {other:?}"),
        }
        assert_eq!(here.cache.get("svc", "k"), None, "forgotten");
        let mut fresh = reads(&here);
        assert_eq!(fresh.get("k").await.unwrap().map(|e| (e.value, e.version)), Some((b"2".to_vec(), 2)));
        here.commit(write(fresh, "3").await).await.unwrap();
        assert_eq!(there.snapshot("svc").unwrap().get("k").await.unwrap().version, 3);
    }

    /// A scan reads the database and a get the cache, so one call may see a key at two
    /// versions, the cached one stale: its commit is refused (the older version is the
    /// one its read set keeps), not written as if the value it used were the newer one.
    #[tokio::test]
    async fn a_key_read_at_two_versions_in_one_call_is_refused_at_commit() {
        let (here, there) = two_hosts().await;
        here.commit(write(reads(&here), "1").await).await.unwrap(); // kept by `here`
        there.commit(write(reads(&there), "2").await).await.unwrap();

        let mut call = reads(&here);
        let scanned = call.scan("k", None, 10).await.unwrap();
        assert_eq!(scanned[0].1.version, 2, "a scan reads the database");
        assert_eq!(call.get("k").await.unwrap().map(|e| e.version), Some(1), "a get, the cache");
        match here.commit(write(call, "3").await).await {
            Err(StoreError::Conflict(c)) => assert_eq!((c.expected, c.actual), (Some(1), Some(2))),
            other => panic!("a commit computed from the stale version: {other:?}"),
        }
        let mut again = reads(&here);
        assert_eq!(again.get("k").await.unwrap().map(|e| e.version), Some(2), "read anew");
        here.commit(write(again, "3").await).await.unwrap();
    }

    /// Write skew across hosts: `here` reads `x` and writes `y`, `there` reads `y` and
    /// writes `x`, both from version 1. Serializable invocations let one of them
    /// commit, never both (on one host the writer's single transaction sees to it).
    /// The two batches are made to overlap: a third session holds both rows until
    /// each host's writer waits for a lock, so that neither commits before the other
    /// has checked what it read. (Before the records a commit only read were locked
    /// and checked under the lock, both committed.)
    #[tokio::test]
    async fn two_hosts_never_both_commit_a_write_skew() {
        let url = testing::scratch().await;
        let connect = || PgStore::connect(&url, PgOptions::default());
        let (here, there) = (connect().await.unwrap(), connect().await.unwrap());
        let mut setup = reads(&here);
        setup.set("x", b"1".to_vec()).await.unwrap();
        setup.set("y", b"1".to_vec()).await.unwrap();
        here.commit(commit_of(setup.into_changes(), None)).await.unwrap();
        let skewed = async |store: &PgStore, read: &str, written: &str| {
            let mut tx = reads(store);
            assert_eq!(tx.get(read).await.unwrap().map(|e| e.version), Some(1));
            tx.set(written, b"2".to_vec()).await.unwrap();
            commit_of(tx.into_changes(), None)
        };
        let (a, b) = (skewed(&here, "x", "y").await, skewed(&there, "y", "x").await);

        let (holder, connection) = super::config(&url).unwrap().connect(tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(connection);
        holder.batch_execute("BEGIN; SELECT 1 FROM records WHERE service = 'svc' FOR UPDATE").await.unwrap();
        let holder_pid: i32 = holder.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0);
        let (a, b) = (here.commit(a), there.commit(b));
        let both = tokio::spawn(async move { (a.await, b.await) });
        // Both writers wait, on the holder or on each other.
        let mut waiting = 0;
        for _ in 0..200 {
            let rows = holder
                .query(
                    "SELECT pid, pg_blocking_pids(pid) FROM pg_stat_activity WHERE wait_event_type = 'Lock'",
                    &[],
                )
                .await
                .unwrap();
            let mut behind = vec![holder_pid];
            for _ in 0..rows.len() {
                for row in &rows {
                    let (pid, blockers): (i32, Vec<i32>) = (row.get(0), row.get(1));
                    if !behind.contains(&pid) && blockers.iter().any(|b| behind.contains(b)) {
                        behind.push(pid);
                    }
                }
            }
            waiting = behind.len() - 1;
            if waiting >= 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert_eq!(waiting, 2, "both writers wait for a lock");
        holder.batch_execute("ROLLBACK").await.unwrap();
        let (a, b) = both.await.unwrap();
        let refused = [&a, &b].iter().filter(|r| matches!(r, Err(StoreError::Conflict(_)))).count();
        assert!(
            a.is_ok() != b.is_ok() && refused == 1,
            "exactly one commits, the other conflicts: {a:?}, {b:?}"
        );
    }
}
