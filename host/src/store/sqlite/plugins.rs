//! Uploaded plugin versions in SQLite: one row per service, the component's bytes with
//! its digest and the digest of the directory's file it replaced.

use rusqlite::{Connection, params};

use super::unavailable;
use crate::service::PluginDigest;
use crate::store::{StoreError, UploadChange, UploadRow};

fn digest(row: &rusqlite::Row<'_>, column: usize) -> rusqlite::Result<Option<PluginDigest>> {
    let Some(text) = row.get::<_, Option<String>>(column)? else { return Ok(None) };
    match PluginDigest::parse(&text) {
        Some(digest) => Ok(Some(digest)),
        None => {
            let bad = format!("not a plugin digest: `{text}`");
            Err(rusqlite::Error::FromSqlConversionFailure(column, rusqlite::types::Type::Text, bad.into()))
        }
    }
}

pub(super) fn uploads(conn: &Connection) -> rusqlite::Result<Vec<UploadRow>> {
    let sql = "SELECT service, digest, base, wasm, uploaded_at FROM plugin_uploads ORDER BY service";
    super::rows(conn, sql, &[], |row| {
        Ok(UploadRow {
            service: row.get(0)?,
            digest: digest(row, 1)?.ok_or(rusqlite::Error::InvalidColumnType(
                1,
                "digest".into(),
                rusqlite::types::Type::Null,
            ))?,
            base: digest(row, 2)?,
            wasm: row.get(3)?,
            uploaded_at: row.get(4)?,
        })
    })
}

pub(super) fn apply(conn: &Connection, change: &UploadChange) -> Result<(), StoreError> {
    match change {
        UploadChange::Keep(upload) => conn
            .prepare_cached(
                "INSERT INTO plugin_uploads (service, digest, base, wasm, uploaded_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (service) DO UPDATE SET digest = excluded.digest, base = excluded.base,
                     wasm = excluded.wasm, uploaded_at = excluded.uploaded_at",
            )
            .and_then(|mut insert| {
                insert.execute(params![
                    upload.service,
                    upload.digest.to_string(),
                    upload.base.map(|b| b.to_string()),
                    upload.wasm,
                    upload.uploaded_at
                ])
            }),
        UploadChange::Discard { service } => {
            conn.execute("DELETE FROM plugin_uploads WHERE service = ?1", [service])
        }
    }
    .map(|_| ())
    .map_err(unavailable)
}
