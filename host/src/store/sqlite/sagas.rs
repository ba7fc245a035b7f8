//! Sagas and saga definitions in SQLite: the queries, and the changes a commit carries.
//! A saga's row changes only at its version (`UPDATE … WHERE version = ?`): a driver
//! that read an older version cannot write over a newer one.

use rusqlite::{Connection, OptionalExtension, params};

use super::conn::unavailable;
use crate::store::{DefinitionRow, SagaChange, SagaPage, SagaRow, SagaStatus, StoreError, saga_moved};

use crate::store::{SEARCHED, SEARCHED_INPUT};

const SAGA_COLUMNS: &str =
    "id, name, status, input, state, version, key, fingerprint, created_at, updated_at, owner";

fn saga_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<SagaRow> {
    Ok(SagaRow {
        id: row.get(0)?,
        name: row.get(1)?,
        status: super::status(row, 2, SagaStatus::parse)?,
        input: row.get(3)?,
        state: row.get(4)?,
        version: row.get::<_, i64>(5)? as u64,
        key: row.get(6)?,
        fingerprint: row.get(7)?,
        created_at: row.get(8)?,
        updated_at: row.get(9)?,
        owner: row.get(10)?,
    })
}

fn read(conn: &Connection, filter: &str, params: &[&dyn rusqlite::ToSql]) -> rusqlite::Result<Vec<SagaRow>> {
    super::rows(conn, &format!("SELECT {SAGA_COLUMNS} FROM sagas {filter}"), params, saga_row)
}

pub(super) fn saga(conn: &Connection, id: &str) -> rusqlite::Result<Option<SagaRow>> {
    read(conn, "WHERE id = ?1", params![id]).map(|mut rows| rows.pop())
}

pub(super) fn saga_by_key(conn: &Connection, name: &str, key: &str) -> rusqlite::Result<Option<SagaRow>> {
    read(conn, "WHERE name = ?1 AND key = ?2", params![name, key]).map(|mut rows| rows.pop())
}

/// A page of sagas: their ids and sizes first, then as many whole rows as fit in
/// `max_bytes` (`store::fitting`), read in one transaction.
pub(super) fn sagas(
    conn: &mut Connection,
    status: Option<SagaStatus>,
    after: Option<&str>,
    limit: usize,
    newest_first: bool,
    max_bytes: usize,
) -> rusqlite::Result<SagaPage> {
    let (compare, order) = if newest_first { ("<", "DESC") } else { (">", "ASC") };
    let after = after.unwrap_or(if newest_first { "~" } else { "" });
    // One range of an index each: `sagas_by_status` with a status, the ids without.
    let (filter, status) = match status {
        Some(status) => {
            (format!("WHERE status = ?3 AND id {compare} ?1 ORDER BY id {order} LIMIT ?2"), status.as_str())
        }
        None => (format!("WHERE id {compare} ?1 AND ?3 = '' ORDER BY id {order} LIMIT ?2"), ""),
    };
    let tx = conn.transaction()?;
    let sizes: Vec<usize> = super::rows(
        &tx,
        &format!("SELECT length(input) + octet_length(state) FROM sagas {filter}"),
        params![after, limit as i64, status],
        |row| row.get::<_, i64>(0).map(|n| n as usize),
    )?;
    let (take, more) = crate::store::fitting(&sizes, limit, max_bytes);
    let sagas = read(&tx, &filter, params![after, take as i64, status])?;
    tx.commit()?;
    Ok(SagaPage { sagas, more })
}

pub(super) fn unfinished(conn: &Connection) -> rusqlite::Result<Vec<SagaRow>> {
    read(conn, "WHERE status IN ('running', 'compensating') ORDER BY id", params![])
}

/// See `Store::heartbeat`. Only one host opens a SQLite file (its lock file): every
/// other host remembered is gone, and this one leads.
pub(super) fn heartbeat(conn: &Connection, host: &str, now: i64, until: i64) -> Result<String, StoreError> {
    let run = |sql: &str, params: &[&dyn rusqlite::ToSql]| {
        conn.prepare_cached(sql).and_then(|mut statement| statement.execute(params)).map_err(unavailable)
    };
    run("DELETE FROM hosts WHERE id != ?1", params![host])?;
    run(
        "INSERT INTO hosts (id, started_at, alive_until) VALUES (?1, ?2, ?3)
         ON CONFLICT (id) DO UPDATE SET alive_until = excluded.alive_until",
        params![host, now, until],
    )?;
    Ok(host.to_owned())
}

/// See `Store::claim_sagas`.
pub(super) fn claim(
    conn: &Connection,
    host: &str,
    now: i64,
    limit: usize,
) -> Result<Vec<SagaRow>, StoreError> {
    let sql = format!(
        "UPDATE sagas SET owner = ?1 WHERE id IN (
             SELECT id FROM sagas WHERE status IN ('running', 'compensating')
                AND (owner IS NULL OR owner NOT IN (SELECT id FROM hosts WHERE alive_until > ?2))
             ORDER BY id LIMIT ?3)
         RETURNING {SAGA_COLUMNS}"
    );
    let mut claimed =
        super::rows(conn, &sql, params![host, now, limit as i64], saga_row).map_err(unavailable)?;
    claimed.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(claimed)
}

/// From `saga_counts`, which triggers keep (counting the table would read every saga).
pub(super) fn counts(conn: &Connection) -> rusqlite::Result<Vec<(SagaStatus, u64)>> {
    super::rows(conn, "SELECT status, n FROM saga_counts WHERE n > 0 ORDER BY status", &[], |row| {
        Ok((super::status(row, 0, SagaStatus::parse)?, row.get::<_, i64>(1)? as u64))
    })
}

/// By id or key (any saga, through their indexes), or by a top-level input value
/// among the latest [`SEARCHED`] sagas whose input is at most [`SEARCHED_INPUT`]
/// bytes (a scan, so bounded).
pub(super) fn search(conn: &Connection, text: &str, limit: usize) -> rusqlite::Result<Vec<SagaRow>> {
    let sql = format!(
        "SELECT {SAGA_COLUMNS} FROM sagas WHERE id = ?1 OR key = ?1
         UNION
         SELECT {SAGA_COLUMNS} FROM sagas WHERE id IN (
             SELECT latest.id FROM (SELECT id, input FROM sagas ORDER BY id DESC LIMIT {SEARCHED}) AS latest
             WHERE length(latest.input) <= {SEARCHED_INPUT}
               AND EXISTS (SELECT 1 FROM json_each(CAST(latest.input AS TEXT)) WHERE json_each.value = ?1))
         ORDER BY id DESC LIMIT ?2"
    );
    super::rows(conn, &sql, params![text, limit as i64], saga_row)
}

pub(super) fn definition(conn: &Connection, digest: &str) -> rusqlite::Result<Option<DefinitionRow>> {
    let sql = "SELECT digest, name, text, saved_at FROM saga_definitions WHERE digest = ?1";
    super::rows(conn, sql, params![digest], |row| {
        Ok(DefinitionRow { digest: row.get(0)?, name: row.get(1)?, text: row.get(2)?, saved_at: row.get(3)? })
    })
    .map(|mut rows| rows.pop())
}

/// Keeps a definition version (replacing the text kept for the same digest).
pub(super) fn save_definition(conn: &Connection, def: &DefinitionRow) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO saga_definitions (digest, name, text, saved_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (digest) DO UPDATE SET name = excluded.name, text = excluded.text,
             saved_at = excluded.saved_at",
    )
    .map_err(unavailable)?
    .execute(params![def.digest, def.name, def.text, def.saved_at])
    .map_err(unavailable)?;
    Ok(())
}

pub(super) fn apply(conn: &Connection, change: &SagaChange) -> Result<(), StoreError> {
    match change {
        SagaChange::Create(row) => {
            let created = conn
                .prepare_cached(
                    "INSERT INTO sagas
                         (id, name, status, input, state, version, key, fingerprint, created_at, updated_at, owner)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
                     ON CONFLICT DO NOTHING",
                )
                .map_err(unavailable)?
                .execute(params![
                    row.id,
                    row.name,
                    row.status.as_str(),
                    row.input,
                    row.state,
                    row.version as i64,
                    row.key,
                    row.fingerprint,
                    row.created_at,
                    row.updated_at,
                    row.owner
                ])
                .map_err(unavailable)?;
            if created == 0 {
                return Err(StoreError::Duplicate(row.key.clone()));
            }
        }
        SagaChange::Update { id, version, status, state, at, by } => {
            let updated = conn
                .prepare_cached(
                    "UPDATE sagas SET status = ?3, state = ?4, version = ?2 + 1, updated_at = ?5,
                         owner = coalesce(?6, owner)
                     WHERE id = ?1 AND version = ?2
                       AND (?6 IS NULL OR owner IS NULL OR owner = ?6 OR status = 'stuck')",
                )
                .map_err(unavailable)?
                .execute(params![id, *version as i64, status.as_str(), state, at, by])
                .map_err(unavailable)?;
            if updated == 0 {
                let actual: Option<i64> = conn
                    .query_row("SELECT version FROM sagas WHERE id = ?1", [id], |row| row.get(0))
                    .optional()
                    .map_err(unavailable)?;
                return Err(saga_moved(id, *version, actual.map(|v| v as u64)));
            }
        }
    }
    Ok(())
}
