//! Connections: each with its own prepared statements, and the pool that lends them
//! for reads and snapshots.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Config, NoTls, Row, Statement};

use crate::store::StoreError;
use crate::store::health::Health;

/// One connection to the database, with the statements it prepared: a statement is
/// parsed once per connection, and each later use is one round trip.
pub(super) struct Conn {
    pub(super) client: Client,
    statements: HashMap<&'static str, Statement>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").field("closed", &self.client.is_closed()).finish_non_exhaustive()
    }
}

impl Conn {
    /// Connects; the connection's I/O runs on a task of its own until it closes.
    pub(super) async fn open(config: &Config) -> Result<Conn, StoreError> {
        let (client, connection) = config.connect(NoTls).await.map_err(unavailable)?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!("a PostgreSQL connection ended: {error}");
            }
        });
        // Every statement here is a few index lookups, planned once per connection: a
        // custom plan per execution (PostgreSQL's default for the first ones, and for
        // good whenever the generic plan looks dearer) cost more than the lookups.
        // A plan made once is kept until its tables are next analyzed, so one made
        // while a table was small may scan it whole, and went on doing so as the table
        // grew: on a fresh database the writer's lock of a batch's records read every
        // record, and a host fell from 450 to 280 sagas/s within a minute. None of
        // these statements should scan a table: scans are the plan of last resort.
        // That makes a plan that must scan (a one-row table) look dear, and past
        // `jit_above_cost` PostgreSQL compiles each execution of it with LLVM: 17 % of
        // its CPU went to that in the saga benchmark. These statements are lookups;
        // none gains from JIT.
        let settings = "SET plan_cache_mode = force_generic_plan; SET enable_seqscan = off; SET jit = off";
        client.batch_execute(settings).await.map_err(unavailable)?;
        Ok(Conn { client, statements: HashMap::new() })
    }

    /// The prepared statement for `sql`, prepared on first use.
    pub(super) async fn statement(&mut self, sql: &'static str) -> Result<Statement, StoreError> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.client.prepare(sql).await.map_err(unavailable)?;
        self.statements.insert(sql, statement.clone());
        Ok(statement)
    }

    pub(super) async fn query(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, StoreError> {
        let statement = self.statement(sql).await?;
        self.client.query(&statement, params).await.map_err(unavailable)
    }

    pub(super) async fn query_opt(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, StoreError> {
        let statement = self.statement(sql).await?;
        self.client.query_opt(&statement, params).await.map_err(unavailable)
    }

    pub(super) async fn execute(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, StoreError> {
        let statement = self.statement(sql).await?;
        self.client.execute(&statement, params).await.map_err(unavailable)
    }
}

/// The connections for reads and snapshots: at most `size` lent at once (a borrower
/// waits for one beyond that), the others kept open when given back, so that no
/// request pays for a new connection (a new server process) once the pool is warm. A
/// connection that closed (the server restarted) is dropped when next taken, and a new
/// one opened.
#[derive(Debug)]
pub(super) struct Pool {
    config: Config,
    idle: Mutex<Vec<Conn>>,
    lends: Arc<Semaphore>,
    /// Marked failing when no connection can be made (the writer's probe clears it).
    health: Arc<Health>,
}

/// How long a read waits for a pooled connection.
const TAKE_WITHIN: std::time::Duration = std::time::Duration::from_secs(10);

/// A connection lent by the pool; give it back with [`Pool::put`] (dropped, it is
/// closed and its place freed).
pub(super) struct Lent {
    conn: Conn,
    _place: OwnedSemaphorePermit,
}

impl std::ops::Deref for Lent {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        &self.conn
    }
}

impl std::ops::DerefMut for Lent {
    fn deref_mut(&mut self) -> &mut Conn {
        &mut self.conn
    }
}

impl Pool {
    pub(super) fn new(config: Config, size: usize, health: Arc<Health>) -> Pool {
        Pool { config, idle: Mutex::default(), lends: Arc::new(Semaphore::new(size.max(1))), health }
    }

    /// A connection, waiting for one at most [`TAKE_WITHIN`]: past that the store is
    /// overloaded (503 with `Retry-After`), rather than a request waiting without end.
    pub(super) async fn take(&self) -> Result<Lent, StoreError> {
        let place = tokio::time::timeout(TAKE_WITHIN, self.lends.clone().acquire_owned())
            .await
            .map_err(|_| {
                StoreError::Overloaded(format!("no database connection came free within {TAKE_WITHIN:?}"))
            })?
            .expect("the pool's semaphore is never closed");
        loop {
            let idle = self.idle.lock().expect("pool mutex poisoned").pop();
            match idle {
                Some(conn) if conn.client.is_closed() => continue,
                Some(conn) => return Ok(Lent { conn, _place: place }),
                None => {
                    let conn =
                        Conn::open(&self.config).await.inspect_err(|e| self.health.failed(&e.to_string()))?;
                    return Ok(Lent { conn, _place: place });
                }
            }
        }
    }

    pub(super) fn put(&self, lent: Lent) {
        if !lent.conn.client.is_closed() {
            self.idle.lock().expect("pool mutex poisoned").push(lent.conn);
        }
    }
}

pub(super) fn unavailable(error: tokio_postgres::Error) -> StoreError {
    // The server's message (with its detail), not just "db error".
    match error.as_db_error() {
        Some(db) => StoreError::Unavailable(format!("PostgreSQL: {}", db.message())),
        None => {
            // "error connecting to server" says little without its causes.
            let mut message = format!("PostgreSQL: {error}");
            let mut cause = std::error::Error::source(&error);
            while let Some(inner) = cause {
                message.push_str(&format!(": {inner}"));
                cause = inner.source();
            }
            StoreError::Unavailable(message)
        }
    }
}
