//! Sagas and saga definitions in PostgreSQL: the queries (SQLite's are in
//! `store/sqlite/sagas.rs`), the hosts' heartbeats and saga claims, and the writes a
//! commit carries, added to its batch's (`writer/writes.rs`). A saga's row changes
//! only at its version (`UPDATE … WHERE version = …`), and only by its owner.

use tokio_postgres::Row;

use super::conn::Conn;
use super::records::fingerprint;
use super::writer::plan::{guarded, step};
use super::writer::writes::{Batched, Writes};
use crate::store::{
    DefinitionRow, SEARCHED, SEARCHED_INPUT, SagaChange, SagaPage, SagaRow, SagaStatus, StoreError,
    saga_moved,
};

fn saga_row(row: &Row) -> Result<SagaRow, StoreError> {
    Ok(SagaRow {
        id: row.get(0),
        name: row.get(1),
        status: super::status(row.get(2), SagaStatus::parse)?,
        input: row.get(3),
        state: row.get(4),
        version: row.get::<_, i64>(5) as u64,
        key: row.get(6),
        fingerprint: fingerprint(row.get(7))?,
        created_at: row.get(8),
        updated_at: row.get(9),
        owner: row.get(10),
    })
}

fn sagas_of(rows: Vec<Row>) -> Result<Vec<SagaRow>, StoreError> {
    rows.iter().map(saga_row).collect()
}

macro_rules! saga_columns {
    () => {
        "id, name, status, input, state, version, key, fingerprint, created_at, updated_at, owner"
    };
}

macro_rules! sagas_where {
    ($filter:literal) => {
        concat!(concat!("SELECT ", saga_columns!(), " FROM sagas "), $filter)
    };
}

pub(super) async fn saga(conn: &mut Conn, id: &str) -> Result<Option<SagaRow>, StoreError> {
    sagas_of(conn.query(sagas_where!("WHERE id = $1"), &[&id]).await?).map(|mut rows| rows.pop())
}

pub(super) async fn saga_by_key(
    conn: &mut Conn,
    name: &str,
    key: &str,
) -> Result<Option<SagaRow>, StoreError> {
    let rows = conn.query(sagas_where!("WHERE name = $1 AND key = $2"), &[&name, &key]).await?;
    sagas_of(rows).map(|mut rows| rows.pop())
}

/// A page of sagas: their ids and sizes first, then as many whole rows as fit in
/// `max_bytes` (`store::fitting`), by their ids.
pub(super) async fn sagas(
    conn: &mut Conn,
    status: Option<SagaStatus>,
    after: Option<&str>,
    limit: usize,
    newest_first: bool,
    max_bytes: usize,
) -> Result<SagaPage, StoreError> {
    macro_rules! page {
        ($filter:literal) => {
            concat!("SELECT id, octet_length(input) + octet_length(state) FROM sagas ", $filter)
        };
    }
    let n = limit as i64;
    let sizes = match (status, newest_first) {
        (Some(status), false) => {
            let sql = page!("WHERE status = $1 AND id > $2 ORDER BY id LIMIT $3");
            conn.query(sql, &[&status.as_str(), &after.unwrap_or(""), &n]).await?
        }
        (Some(status), true) => {
            let sql = page!("WHERE status = $1 AND id < $2 ORDER BY id DESC LIMIT $3");
            conn.query(sql, &[&status.as_str(), &after.unwrap_or("~"), &n]).await?
        }
        (None, false) => {
            conn.query(page!("WHERE id > $1 ORDER BY id LIMIT $2"), &[&after.unwrap_or(""), &n]).await?
        }
        (None, true) => {
            conn.query(page!("WHERE id < $1 ORDER BY id DESC LIMIT $2"), &[&after.unwrap_or("~"), &n]).await?
        }
    };
    let lengths: Vec<usize> = sizes.iter().map(|row| row.get::<_, i32>(1) as usize).collect();
    let (take, more) = crate::store::fitting(&lengths, limit, max_bytes);
    let ids: Vec<String> = sizes.iter().take(take).map(|row| row.get(0)).collect();
    let mut sagas = sagas_of(conn.query(sagas_where!("WHERE id = ANY($1)"), &[&ids]).await?)?;
    sagas.sort_by(|a, b| if newest_first { b.id.cmp(&a.id) } else { a.id.cmp(&b.id) });
    Ok(SagaPage { sagas, more })
}

pub(super) async fn unfinished(conn: &mut Conn) -> Result<Vec<SagaRow>, StoreError> {
    sagas_of(conn.query(sagas_where!("WHERE status IN ('running', 'compensating') ORDER BY id"), &[]).await?)
}

/// See `Store::heartbeat`: the beat, and who leads after it, in one statement. Hosts
/// gone for a day are forgotten.
pub(super) async fn heartbeat(
    conn: &mut Conn,
    host: &str,
    now: i64,
    until: i64,
) -> Result<String, StoreError> {
    let sql = "WITH beat AS (
             INSERT INTO hosts (id, started_at, alive_until) VALUES ($1, $2, $3)
             ON CONFLICT (id) DO UPDATE SET alive_until = excluded.alive_until
             RETURNING id, started_at
         ), forgotten AS (
             DELETE FROM hosts WHERE alive_until < $2 - 86400000 AND id != $1
         )
         SELECT id FROM (
             SELECT id, started_at FROM hosts WHERE alive_until > $2 AND id != $1
             UNION ALL SELECT id, started_at FROM beat
         ) AS live ORDER BY started_at, id LIMIT 1";
    let leader = conn.query_opt(sql, &[&host, &now, &until]).await?;
    Ok(leader.map_or_else(|| host.to_owned(), |row| row.get(0)))
}

/// See `Store::claim_sagas`: `SKIP LOCKED`, so that hosts claiming at once take
/// different sagas rather than wait for each other. Each status is selected on its
/// own, a range of `sagas_by_status` in id order, and the oldest of both are taken:
/// with both statuses in one selection the planner walked the primary key through
/// every saga kept, finished ones included (19 ms a pass after 20,000 sagas, and
/// growing with the table). The few rows one selection locks beyond the limit are
/// free again when the statement ends.
pub(super) async fn claim(
    conn: &mut Conn,
    host: &str,
    now: i64,
    limit: usize,
) -> Result<Vec<SagaRow>, StoreError> {
    macro_rules! unclaimed {
        ($status:literal) => {
            concat!(
                "SELECT id FROM sagas WHERE status = '",
                $status,
                "'
                    AND (owner IS NULL OR owner NOT IN (SELECT id FROM hosts WHERE alive_until > $2))
                 ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED"
            )
        };
    }
    let sql = concat!(
        "WITH running AS (",
        unclaimed!("running"),
        "),
              compensating AS (",
        unclaimed!("compensating"),
        ")
         UPDATE sagas SET owner = $1
         WHERE id IN (SELECT id FROM running UNION ALL SELECT id FROM compensating ORDER BY id LIMIT $3)
         RETURNING ",
        saga_columns!()
    );
    let mut claimed = sagas_of(conn.query(sql, &[&host, &now, &(limit as i64)]).await?)?;
    claimed.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(claimed)
}

pub(super) async fn counts(conn: &mut Conn) -> Result<Vec<(SagaStatus, u64)>, StoreError> {
    let sql =
        "SELECT status, sum(n)::bigint FROM saga_counts GROUP BY status HAVING sum(n) > 0 ORDER BY status";
    let rows = conn.query(sql, &[]).await?;
    rows.iter()
        .map(|row| Ok((super::status(row.get(0), SagaStatus::parse)?, row.get::<_, i64>(1) as u64)))
        .collect()
}

/// By id or key (any saga), or by a top-level input value among the latest
/// [`SEARCHED`] sagas whose input is at most [`SEARCHED_INPUT`] bytes.
pub(super) async fn search(conn: &mut Conn, text: &str, limit: usize) -> Result<Vec<SagaRow>, StoreError> {
    // The literals of the statement (a `&'static str`) are these.
    const _: () = assert!(SEARCHED == 1000 && SEARCHED_INPUT == 65536);
    let sql = sagas_where!(
        "WHERE id = $1 OR key = $1
         OR id IN (SELECT latest.id FROM (
                       -- jsonb cannot hold a NUL: an escaped one is read as U+FFFD
                       SELECT id, replace(convert_from(input, 'UTF8'), '\\u0000', '\\ufffd')::jsonb AS doc
                       FROM (SELECT id, input FROM sagas ORDER BY id DESC LIMIT 1000) AS newest
                       WHERE octet_length(input) <= 65536) AS latest
                   WHERE EXISTS (SELECT 1 FROM jsonb_each_text(
                       CASE WHEN jsonb_typeof(latest.doc) = 'object' THEN latest.doc ELSE '{}'::jsonb END) AS f
                       WHERE f.value = $1))
         ORDER BY id DESC LIMIT $2"
    );
    sagas_of(conn.query(sql, &[&text, &(limit as i64)]).await?)
}

pub(super) async fn definition(conn: &mut Conn, digest: &str) -> Result<Option<DefinitionRow>, StoreError> {
    let sql = "SELECT digest, name, text, saved_at FROM saga_definitions WHERE digest = $1";
    Ok(conn.query_opt(sql, &[&digest]).await?.map(|row| DefinitionRow {
        digest: row.get(0),
        name: row.get(1),
        text: row.get(2),
        saved_at: row.get(3),
    }))
}

/// The owner's check is here only (the batch's checks read the version alone): a saga
/// taken over by another host is rare, and refusing it late costs a batch's redo.
pub(super) const UPDATE_SAGAS: &str =
    "UPDATE sagas SET status = u.status, state = u.state, version = u.version + 1,
         updated_at = u.at, owner = coalesce(u.by, sagas.owner)
     FROM unnest($1::text[], $2::int8[], $3::text[], $4::text[], $5::int8[], $6::text[])
         AS u (id, version, status, state, at, by)
     WHERE sagas.id = u.id AND sagas.version = u.version
       AND (u.by IS NULL OR sagas.owner IS NULL OR sagas.owner = u.by OR sagas.status = 'stuck')
     RETURNING sagas.id";
const CREATE_SAGA: &str = "INSERT INTO sagas
         (id, name, status, input, state, version, key, fingerprint, created_at, updated_at, owner)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
     ON CONFLICT DO NOTHING";
const SAVE_DEFINITION: &str = "INSERT INTO saga_definitions (digest, name, text, saved_at) VALUES ($1, $2, $3, $4)
     ON CONFLICT (digest) DO UPDATE SET name = excluded.name, text = excluded.text, saved_at = excluded.saved_at";

/// Adds a commit's saga change to its batch's writes: an update as a row of the
/// batch's one `UPDATE_SAGAS`, a new saga as a statement of its own.
pub(super) fn apply(job: usize, change: &SagaChange, writes: &mut Writes) {
    match change {
        SagaChange::Update { id, version, status, state, at, by } => writes.sagas.push(Batched {
            job,
            key: id.clone(),
            values: [
                Box::new(id.clone()),
                Box::new(*version as i64),
                Box::new(status.as_str()),
                Box::new(state.clone()),
                Box::new(*at),
                Box::new(by.clone()),
            ],
            refusal: saga_moved(id, *version, None),
        }),
        SagaChange::Create(row) => writes.others.push(guarded(
            CREATE_SAGA,
            vec![
                Box::new(row.id.clone()),
                Box::new(row.name.clone()),
                Box::new(row.status.as_str()),
                Box::new(row.input.clone()),
                Box::new(row.state.clone()),
                Box::new(row.version as i64),
                Box::new(row.key.clone()),
                Box::new(row.fingerprint.to_vec()),
                Box::new(row.created_at),
                Box::new(row.updated_at),
                Box::new(row.owner.clone()),
            ],
            job,
            StoreError::Duplicate(row.key.clone()),
        )),
    }
}

pub(super) fn save_definition(def: &DefinitionRow, writes: &mut Writes) {
    writes.others.push(step(
        SAVE_DEFINITION,
        vec![
            Box::new(def.digest.clone()),
            Box::new(def.name.clone()),
            Box::new(def.text.clone()),
            Box::new(def.saved_at),
        ],
    ));
}
