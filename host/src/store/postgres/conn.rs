//! Connections: each with its own prepared statements, and a pool of idle ones for the
//! reads and snapshots.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Config, NoTls, Row, Statement};

use crate::store::StoreError;

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

/// Idle connections for reads; a connection that closed (the server restarted) is
/// dropped when next taken, and a new one opened.
#[derive(Debug)]
pub(super) struct Pool {
    pub(super) config: Config,
    idle: Mutex<Vec<Conn>>,
}

/// Idle connections kept beyond this are closed.
const MAX_IDLE: usize = 32;

impl Pool {
    pub(super) fn new(config: Config) -> Pool {
        Pool { config, idle: Mutex::default() }
    }

    pub(super) async fn take(&self) -> Result<Conn, StoreError> {
        loop {
            let idle = self.idle.lock().expect("pool mutex poisoned").pop();
            match idle {
                Some(conn) if conn.client.is_closed() => continue,
                Some(conn) => return Ok(conn),
                None => return Conn::open(&self.config).await,
            }
        }
    }

    pub(super) fn put(&self, conn: Conn) {
        let mut idle = self.idle.lock().expect("pool mutex poisoned");
        if idle.len() < MAX_IDLE && !conn.client.is_closed() {
            idle.push(conn);
        }
    }
}

pub(super) fn unavailable(error: tokio_postgres::Error) -> StoreError {
    // The server's message (with its detail), not just "db error".
    match error.as_db_error() {
        Some(db) => StoreError::Unavailable(format!("PostgreSQL: {}", db.message())),
        None => StoreError::Unavailable(format!("PostgreSQL: {error}")),
    }
}
