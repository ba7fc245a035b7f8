//! Records and idempotency records in PostgreSQL: snapshots (read-only repeatable-read
//! transactions on pooled connections), an invocation's reads (through the cache, one
//! statement each when it misses), the stored outcomes, and a commit's outcome and
//! record writes, added to its batch's (`writer/writes.rs`). The checks of the
//! versions a commit read are the batch's, in `writer/checks.rs`.

use std::sync::Arc;

use tokio_postgres::Row;

use super::cache::RecordCache;
use super::conn::{Conn, Lent, Pool, unavailable};
use super::writer::writes::{Batched, Writes};
use crate::store::{
    ChangeSet, Conflict, Entry, IdempotencyKey, Scanned, Slot, Snapshot, StoreError, StoredOutcome,
};

// One row always: the record's value and version (NULL without a row) and the
// service's floor (NULL: 0), so that a key with no row costs no second query.
const GET: &str = "SELECT r.value, r.version, (SELECT floor FROM version_floors WHERE service = $1)
     FROM (SELECT 1) AS one LEFT JOIN records r ON r.service = $1 AND r.key = $2";
const SCAN_FROM: &str = "SELECT key, value, version FROM records
     WHERE service = $1 AND key >= $2 AND value IS NOT NULL ORDER BY key LIMIT $3";
const SCAN_AFTER: &str = "SELECT key, value, version FROM records
     WHERE service = $1 AND key > $2 AND value IS NOT NULL ORDER BY key LIMIT $3";

/// A read-only transaction on one service's records, at `REPEATABLE READ`: every read
/// sees the state of its first. It takes a connection and begins at the first read
/// (sent together with it), and ends when dropped.
pub(super) struct PgSnapshot {
    conn: Option<Lent>,
    pool: Arc<Pool>,
    service: String,
    begun: bool,
}

impl PgSnapshot {
    pub(super) fn new(pool: Arc<Pool>, service: &str) -> PgSnapshot {
        PgSnapshot { conn: None, pool, service: service.to_owned(), begun: false }
    }

    /// Runs `sql` in the snapshot, beginning it with this first query (one round trip).
    async fn query(
        &mut self,
        sql: &'static str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<Row>, StoreError> {
        if self.conn.is_none() {
            self.conn = Some(self.pool.take().await?);
        }
        let conn = self.conn.as_mut().expect("taken above");
        let statement = conn.statement(sql).await?;
        if self.begun {
            return conn.client.query(&statement, params).await.map_err(unavailable);
        }
        // Begun from here on, even if this future is dropped half-way: the BEGIN may be
        // out, and the connection must not go back to the pool inside it.
        self.begun = true;
        let begin = conn.client.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY");
        let (begun, rows) = tokio::join!(begin, conn.client.query(&statement, params));
        begun.map_err(unavailable)?;
        rows.map_err(unavailable)
    }
}

#[async_trait::async_trait]
impl Snapshot for PgSnapshot {
    async fn get(&mut self, key: &str) -> Result<Slot, StoreError> {
        let service = self.service.clone();
        let row = self.query(GET, &[&service, &key]).await?.pop().expect("GET answers one row");
        Ok(slot(&row))
    }

    async fn scan(
        &mut self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Scanned, StoreError> {
        let service = self.service.clone();
        // Keys sort in byte order (COLLATE "C").
        let (from, inclusive) = Scanned::start(prefix, start_after);
        let sql = if inclusive { SCAN_FROM } else { SCAN_AFTER };
        let rows = self.query(sql, &[&service, &from, &(limit as i64)]).await?;
        let rows = rows
            .iter()
            .map(|row| Ok((row.get(0), Entry { value: row.get(1), version: row.get::<_, i64>(2) as u64 })));
        Scanned::collect(rows, prefix, limit, max_bytes)
    }
}

impl Drop for PgSnapshot {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else { return };
        if !self.begun {
            self.pool.put(conn);
            return;
        }
        // Ending the transaction is a round trip: done on a task of its own, and the
        // connection goes back to the pool once it is out of the transaction.
        let pool = self.pool.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if conn.client.batch_execute("ROLLBACK").await.is_ok() {
                    pool.put(conn);
                }
            });
        }
    }
}

/// The slot a `GET` row describes: a record's, or the service's floor for a key with no
/// row (never written, or its tombstone forgotten).
fn slot(row: &Row) -> Slot {
    match row.get::<_, Option<i64>>(1) {
        Some(version) => Slot { value: row.get(0), version: version as u64 },
        None => Slot { value: None, version: row.get::<_, Option<i64>>(2).map_or(0, |floor| floor as u64) },
    }
}

/// An invocation's reads. Not a snapshot: each read that the cache cannot answer is a
/// statement of its own, with no transaction around them, so two reads may see two
/// moments. The invocation's commit checks every read again (its read set), and is
/// refused if any changed since: what it commits was computed from records that were
/// all current together, at its commit. What it saves: the round trips of the reads the
/// cache answers, and a read transaction (`BEGIN`, `ROLLBACK`) per invocation.
pub(super) struct CachedReads {
    pool: Arc<Pool>,
    cache: Arc<RecordCache>,
    service: String,
}

impl CachedReads {
    pub(super) fn new(pool: Arc<Pool>, cache: Arc<RecordCache>, service: &str) -> CachedReads {
        CachedReads { pool, cache, service: service.to_owned() }
    }

    async fn query(
        &self,
        sql: &'static str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<Row>, StoreError> {
        let mut conn = self.pool.take().await?;
        let rows = conn.query(sql, params).await;
        self.pool.put(conn);
        rows
    }
}

#[async_trait::async_trait]
impl Snapshot for CachedReads {
    async fn get(&mut self, key: &str) -> Result<Slot, StoreError> {
        let metrics = crate::metrics::metrics();
        if let Some(slot) = self.cache.get(&self.service, key) {
            metrics.cache_hits.inc();
            return Ok(slot);
        }
        metrics.cache_misses.inc();
        let row = self.query(GET, &[&self.service, &key]).await?.pop().expect("GET answers one row");
        let slot = slot(&row);
        self.cache.offer(&self.service, key, slot.clone());
        Ok(slot)
    }

    async fn scan(
        &mut self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Scanned, StoreError> {
        let (from, inclusive) = Scanned::start(prefix, start_after);
        let sql = if inclusive { SCAN_FROM } else { SCAN_AFTER };
        let rows = self.query(sql, &[&self.service, &from, &(limit as i64)]).await?;
        let rows = rows
            .iter()
            .map(|row| Ok((row.get(0), Entry { value: row.get(1), version: row.get::<_, i64>(2) as u64 })));
        // Not kept: a scan's records are read again by key rather seldom, and keeping
        // them would copy up to a few MiB a scan.
        Scanned::collect(rows, prefix, limit, max_bytes)
    }

    fn one_moment(&self) -> bool {
        false
    }
}

pub(super) const OUTCOME: &str =
    "SELECT fingerprint, operation, ok, output, digest, correlation_id, created_at, expires_at
     FROM invocations WHERE service = $1 AND space = $2 AND key = $3 AND expires_at > $4";

/// The unexpired stored outcome of `key`.
pub(super) async fn outcome(
    conn: &mut Conn,
    key: &IdempotencyKey,
    now: i64,
) -> Result<Option<StoredOutcome>, StoreError> {
    let Some(row) = conn.query_opt(OUTCOME, &[&key.service, &key.space.as_str(), &key.key, &now]).await?
    else {
        return Ok(None);
    };
    let ok: bool = row.get(2);
    let output: Vec<u8> = row.get(3);
    let digest: String = row.get(4);
    Ok(Some(StoredOutcome {
        key: key.clone(),
        fingerprint: fingerprint(row.get(0))?,
        operation: row.get(1),
        result: if ok { Ok(output) } else { Err(String::from_utf8_lossy(&output).into_owned()) },
        digest: super::digest(&digest)?,
        correlation_id: row.get(5),
        created_at: row.get(6),
        expires_at: row.get(7),
    }))
}

/// A stored sha256, which must be 32 bytes.
pub(super) fn fingerprint(bytes: Vec<u8>) -> Result<[u8; 32], StoreError> {
    bytes.try_into().map_err(|bytes: Vec<u8>| {
        StoreError::Unavailable(format!("a stored fingerprint of {} bytes, not 32", bytes.len()))
    })
}

// The writes most commits make are each one statement for the whole batch, over
// arrays of the batch's rows (`unnest`): a statement per row cost PostgreSQL more in
// the statement's handling than in the row's (~150 statements a batch), and a
// batch's writes took 3.4 ms, the longest of its round trips. Each returns the keys
// of the rows it changed, which are the rows whose guard held.
pub(super) const STORE_OUTCOMES: &str =
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
pub(super) const WRITE_RECORDS: &str = "INSERT INTO records (service, key, value, version, deleted_at)
     SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[], $4::int8[], $5::int8[])
     ON CONFLICT (service, key) DO UPDATE SET
         value = excluded.value, version = excluded.version, deleted_at = excluded.deleted_at
     WHERE records.version = excluded.version - 1
     RETURNING service, key";

/// Adds a commit's outcome to its batch's writes, as a row of the batch's one
/// `STORE_OUTCOMES`: it replaces only an expired outcome of its key.
pub(super) fn store_outcome(job: usize, outcome: &StoredOutcome, writes: &mut Writes) {
    let (ok, output) = match &outcome.result {
        Ok(output) => (true, output.clone()),
        Err(reason) => (false, reason.clone().into_bytes()),
    };
    let k = &outcome.key;
    writes.outcomes.push(Batched {
        job,
        key: format!("{}\0{}\0{}", k.service, k.space.as_str(), k.key),
        values: [
            Box::new(k.service.clone()),
            Box::new(k.space.as_str()),
            Box::new(k.key.clone()),
            Box::new(outcome.fingerprint.to_vec()),
            Box::new(outcome.operation.clone()),
            Box::new(ok),
            Box::new(output),
            Box::new(outcome.digest.to_string()),
            Box::new(outcome.correlation_id.clone()),
            Box::new(outcome.created_at),
            Box::new(outcome.expires_at),
        ],
        refusal: StoreError::Duplicate(k.key.clone()),
    });
}

/// Adds a commit's record writes to its batch's, as rows of the batch's one
/// `WRITE_RECORDS`, each at the version it read.
pub(super) fn apply_changes(job: usize, service: &str, changes: &ChangeSet, writes: &mut Writes) {
    for write in &changes.writes {
        let read = write.version - 1;
        let deleted_at = write.value.is_none().then(crate::clock::now_ms);
        writes.records.push(Batched {
            job,
            key: format!("{service}\0{}", write.key),
            values: [
                Box::new(service.to_owned()),
                Box::new(write.key.clone()),
                Box::new(write.value.clone()),
                Box::new(write.version as i64),
                Box::new(deleted_at),
            ],
            refusal: Conflict { key: write.key.clone(), expected: (read > 0).then_some(read), actual: None }
                .into(),
        });
    }
}
