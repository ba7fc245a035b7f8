//! Records and idempotency records in SQLite: snapshots (read transactions on pooled
//! connections), the version checks of a commit, the stored outcomes.
//!
//! A record is one row of `records` per (service, key), tombstones included; a key with
//! no row (never written, or its tombstone forgotten) is at its service's version floor
//! (see `prune.rs`).

use std::collections::HashMap;
use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension, params};

use super::conn::{ReadPool, unavailable};
use super::prune;
use crate::service::PluginDigest;
use crate::store::{
    ChangeSet, Conflict, Entry, IdempotencyKey, Scanned, Slot, Snapshot, StoreError, StoredOutcome, Write,
};

/// A read transaction on one service's records. It begins at the first read, so the
/// snapshot is as fresh as possible, and ends when dropped.
pub(super) struct SqliteSnapshot {
    pub(super) conn: Option<Connection>,
    pub(super) pool: Arc<ReadPool>,
    pub(super) service: String,
    pub(super) begun: bool,
    /// The service's version floor, read once (see `prune.rs`).
    pub(super) floor: Option<u64>,
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

#[async_trait::async_trait]
impl Snapshot for SqliteSnapshot {
    async fn get(&mut self, key: &str) -> Result<Slot, StoreError> {
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

    async fn scan(
        &mut self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Scanned, StoreError> {
        let service = self.service.clone();
        // SQLite's BINARY collation is byte order.
        let (from, inclusive) = Scanned::start(prefix, start_after);
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
        Scanned::collect(rows.map(|row| row.map_err(unavailable)), prefix, limit, max_bytes)
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

/// The unexpired stored outcome of `key`.
pub(super) fn outcome(
    conn: &Connection,
    key: &IdempotencyKey,
    now: i64,
) -> rusqlite::Result<Option<StoredOutcome>> {
    conn.prepare_cached(
        "SELECT fingerprint, operation, ok, output, digest, correlation_id, created_at, expires_at
         FROM invocations WHERE service = ?1 AND space = ?2 AND key = ?3 AND expires_at > ?4",
    )?
    .query_row(params![key.service, key.space.as_str(), key.key, now], |row| {
        let ok: bool = row.get(2)?;
        let output: Vec<u8> = row.get(3)?;
        Ok(StoredOutcome {
            key: key.clone(),
            fingerprint: row.get(0)?,
            operation: row.get(1)?,
            result: if ok { Ok(output) } else { Err(String::from_utf8_lossy(&output).into_owned()) },
            digest: {
                let text: String = row.get(4)?;
                PluginDigest::parse(&text).ok_or_else(|| {
                    let bad = format!("not a plugin digest: `{text}`");
                    rusqlite::Error::FromSqlConversionFailure(4, rusqlite::types::Type::Text, bad.into())
                })?
            },
            correlation_id: row.get(5)?,
            created_at: row.get(6)?,
            expires_at: row.get(7)?,
        })
    })
    .optional()
}

/// Stores an idempotency record, refused with `Duplicate` while an unexpired one of the
/// same key exists (an expired one is replaced).
pub(super) fn store_outcome(conn: &Connection, outcome: &StoredOutcome) -> Result<(), StoreError> {
    let (ok, output) = match &outcome.result {
        Ok(output) => (true, output.as_slice()),
        Err(reason) => (false, reason.as_bytes()),
    };
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
            outcome.digest.to_string(),
            outcome.correlation_id,
            outcome.created_at,
            outcome.expires_at
        ])
        .map_err(unavailable)?;
    if stored == 0 { Err(StoreError::Duplicate(key.key.clone())) } else { Ok(()) }
}

/// Checks every version `changes` read and applies its writes, or returns the first
/// conflict (the caller's savepoint rolls back what was written before it).
pub(super) fn apply_changes(conn: &Connection, service: &str, changes: &ChangeSet) -> Result<(), StoreError> {
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
    Ok(())
}

/// Writes `write` only if the record is still at version `read`: the row's version,
/// or, for a key with no row (never written, or its tombstone forgotten), its
/// service's floor, which is what the transaction read it at unless retention raised
/// the floor since (creating it then would go back below a forgotten version). A
/// concurrent change moves the row's version or the floor, and the write finds
/// nothing to insert or update: a conflict. A delete stamps the tombstone with the
/// time, for retention.
/// This and [`check_version`] are the only places where versions are compared.
fn write_versioned(conn: &Connection, service: &str, write: &Write, read: u64) -> Result<(), StoreError> {
    let deleted_at = write.value.is_none().then(crate::clock::now_ms);
    let changed = conn
        .prepare_cached(
            "INSERT INTO records (service, key, value, version, deleted_at)
             SELECT ?1, ?2, ?3, ?4, ?5
             WHERE ?6 = coalesce((SELECT floor FROM version_floors WHERE service = ?1), 0)
                OR EXISTS (SELECT 1 FROM records WHERE service = ?1 AND key = ?2)
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
