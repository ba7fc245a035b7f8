//! Operators' plugin changes in PostgreSQL: one row per service, as in SQLite
//! (`store/sqlite/plugins.rs`), read at start and on a hint, written in a commit's
//! batch (`writer/writes.rs`).

use super::conn::Conn;
use super::writer::plan::step;
use super::writer::writes::Writes;
use crate::store::{StoreError, UploadChange, UploadRow, UploadStamp, Uploaded};

pub(super) async fn uploads(conn: &mut Conn) -> Result<Vec<UploadRow>, StoreError> {
    let sql = "SELECT service, digest, base, wasm, uploaded_at FROM plugin_uploads ORDER BY service";
    let rows = conn.query(sql, &[]).await?;
    rows.iter()
        .map(|row| {
            let component = match (row.get::<_, Option<&str>>(1), row.get::<_, Option<Vec<u8>>>(3)) {
                (Some(digest), Some(wasm)) => Some(Uploaded { digest: super::digest(digest)?, wasm }),
                _ => None,
            };
            Ok(UploadRow {
                service: row.get(0),
                component,
                base: row.get::<_, Option<&str>>(2).map(super::digest).transpose()?,
                uploaded_at: row.get(4),
            })
        })
        .collect()
}

pub(super) async fn upload_stamps(conn: &mut Conn) -> Result<Vec<UploadStamp>, StoreError> {
    let sql = "SELECT service, digest, uploaded_at FROM plugin_uploads ORDER BY service";
    let rows = conn.query(sql, &[]).await?;
    rows.iter()
        .map(|row| {
            Ok(UploadStamp {
                service: row.get(0),
                digest: row.get::<_, Option<&str>>(1).map(super::digest).transpose()?,
                uploaded_at: row.get(2),
            })
        })
        .collect()
}

const KEEP_UPLOAD: &str = "INSERT INTO plugin_uploads (service, digest, base, wasm, uploaded_at)
     VALUES ($1, $2, $3, $4, $5)
     ON CONFLICT (service) DO UPDATE SET digest = excluded.digest, base = excluded.base,
         wasm = excluded.wasm, uploaded_at = excluded.uploaded_at";
const DISCARD_UPLOAD: &str = "DELETE FROM plugin_uploads WHERE service = $1";

pub(super) fn apply(change: &UploadChange, writes: &mut Writes) {
    writes.others.push(match change {
        UploadChange::Keep(u) => step(
            KEEP_UPLOAD,
            vec![
                Box::new(u.service.clone()),
                Box::new(u.component.as_ref().map(|c| c.digest.to_string())),
                Box::new(u.base.map(|b| b.to_string())),
                Box::new(u.component.as_ref().map(|c| c.wasm.clone())),
                Box::new(u.uploaded_at),
            ],
        ),
        UploadChange::Discard { service } => step(DISCARD_UPLOAD, vec![Box::new(service.clone())]),
    });
}
