//! Operators' plugin changes in SQLite: one row per service, the uploaded component's
//! bytes with its digest (both NULL for a removal) and the digest of the directory's
//! file it replaced.

use rusqlite::{Connection, params};

use super::conn::unavailable;
use crate::service::PluginDigest;
use crate::store::{StoreError, UploadChange, UploadRow, UploadStamp, Uploaded};

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
        let component = match (digest(row, 1)?, row.get::<_, Option<Vec<u8>>>(3)?) {
            (Some(digest), Some(wasm)) => Some(Uploaded { digest, wasm }),
            _ => None,
        };
        Ok(UploadRow { service: row.get(0)?, component, base: digest(row, 2)?, uploaded_at: row.get(4)? })
    })
}

pub(super) fn upload_stamps(conn: &Connection) -> rusqlite::Result<Vec<UploadStamp>> {
    let sql = "SELECT service, digest, uploaded_at FROM plugin_uploads ORDER BY service";
    super::rows(conn, sql, &[], |row| {
        Ok(UploadStamp { service: row.get(0)?, digest: digest(row, 1)?, uploaded_at: row.get(2)? })
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
                let component = upload.component.as_ref();
                insert.execute(params![
                    upload.service,
                    component.map(|c| c.digest.to_string()),
                    upload.base.map(|b| b.to_string()),
                    component.map(|c| &c.wasm),
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
