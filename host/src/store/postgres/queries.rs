//! The reads of sagas, definitions, events, deliveries and uploads in PostgreSQL: the
//! same queries as SQLite's (`store/sqlite/sagas.rs`, `events.rs`, `plugins.rs`).

use tokio_postgres::Row;

use super::conn::{Conn, unavailable};
use super::records::fingerprint;
use crate::store::{
    ChainPage, DefinitionRow, DeliveryRow, DeliveryStatus, EventRow, SEARCHED, SEARCHED_INPUT, SagaPage,
    SagaRow, SagaStatus, StoreError, Subscriber, Unfanned, UploadRow, UploadStamp, Uploaded,
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

fn event_row(row: &Row) -> EventRow {
    EventRow {
        id: row.get(0),
        service: row.get(1),
        topic: row.get(2),
        payload: row.get(3),
        correlation_id: row.get(4),
        created_at: row.get(5),
        traceparent: row.get(6),
        subscribers: Subscriber::decode(row.get(7)),
    }
}

fn delivery_row(row: &Row) -> Result<DeliveryRow, StoreError> {
    Ok(DeliveryRow {
        event_id: row.get(0),
        subscriber: row.get(1),
        operation: row.get(2),
        topic: row.get(3),
        correlation_id: row.get(4),
        status: super::status(row.get(5), DeliveryStatus::parse)?,
        attempts: row.get::<_, i32>(6) as u32,
        next_at: row.get(7),
        outcome: row.get(8),
        last_error: row.get(9),
        created_at: row.get(10),
        done_at: row.get(11),
    })
}

macro_rules! events_where {
    ($filter:literal) => {
        concat!(
            "SELECT id, service, topic, payload, correlation_id, created_at, traceparent, subscribers FROM outbox ",
            $filter
        )
    };
}

macro_rules! deliveries_where {
    ($filter:literal) => {
        concat!(
            "SELECT d.event_id, d.subscriber, d.operation, d.topic, d.correlation_id, d.status,
                    d.attempts, d.next_at, d.outcome, d.last_error, d.created_at, d.done_at
             FROM deliveries d ",
            $filter
        )
    };
}

pub(super) const DISPATCHED_THROUGH: &str = "SELECT through FROM dispatch WHERE id = 1";

pub(super) async fn dispatched_through(conn: &mut Conn) -> Result<i64, StoreError> {
    Ok(conn.query(DISPATCHED_THROUGH, &[]).await?.first().map_or(0, |row| row.get(0)))
}

pub(super) async fn events_after(
    conn: &mut Conn,
    after: i64,
    limit: usize,
) -> Result<Vec<EventRow>, StoreError> {
    let rows =
        conn.query(events_where!("WHERE id > $1 ORDER BY id LIMIT $2"), &[&after, &(limit as i64)]).await?;
    Ok(rows.iter().map(event_row).collect())
}

pub(super) async fn unfanned(conn: &mut Conn, topics: &[String]) -> Result<Option<Unfanned>, StoreError> {
    let sql = "SELECT count(*), min(o.id), max(o.id), min(o.created_at), max(o.created_at) FROM outbox o
         WHERE o.subscribers IS NULL AND o.id <= (SELECT through FROM dispatch WHERE id = 1)
           AND o.topic = ANY($1::text[])
           AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = o.id)";
    let Some(row) = conn.query_opt(sql, &[&topics]).await? else { return Ok(None) };
    let count: i64 = row.get(0);
    Ok((count > 0).then(|| Unfanned {
        count: count as u64,
        ids: (row.get(1), row.get(2)),
        published: (row.get(3), row.get(4)),
    }))
}

pub(super) async fn event(conn: &mut Conn, id: i64) -> Result<Option<EventRow>, StoreError> {
    Ok(conn.query_opt(events_where!("WHERE id = $1"), &[&id]).await?.as_ref().map(event_row))
}

pub(super) async fn due_deliveries(
    conn: &mut Conn,
    now: i64,
    limit: usize,
) -> Result<Vec<DeliveryRow>, StoreError> {
    let sql = deliveries_where!(
        "WHERE d.status = 'pending' AND d.next_at <= $1 AND NOT EXISTS (
             SELECT 1 FROM deliveries e
             WHERE e.subscriber = d.subscriber AND e.topic = d.topic
               AND e.correlation_id = d.correlation_id AND e.status = 'pending'
               AND e.event_id < d.event_id)
         ORDER BY d.event_id LIMIT $2"
    );
    conn.query(sql, &[&now, &(limit as i64)]).await?.iter().map(delivery_row).collect()
}

pub(super) async fn delivery_counts(conn: &mut Conn) -> Result<Vec<(DeliveryStatus, u64)>, StoreError> {
    let sql = "SELECT status, count(*) FROM deliveries GROUP BY status ORDER BY status";
    let rows = conn.query(sql, &[]).await?;
    rows.iter()
        .map(|row| Ok((super::status(row.get(0), DeliveryStatus::parse)?, row.get::<_, i64>(1) as u64)))
        .collect()
}

pub(super) async fn dead_deliveries(conn: &mut Conn, limit: usize) -> Result<Vec<DeliveryRow>, StoreError> {
    let sql = deliveries_where!("WHERE d.status = 'dead' ORDER BY d.event_id LIMIT $1");
    conn.query(sql, &[&(limit as i64)]).await?.iter().map(delivery_row).collect()
}

pub(super) async fn count_of(conn: &mut Conn, correlation_id: &str) -> Result<u64, StoreError> {
    let rows =
        conn.query("SELECT count(*) FROM outbox WHERE correlation_id = $1", &[&correlation_id]).await?;
    Ok(rows.first().map_or(0, |row| row.get::<_, i64>(0) as u64))
}

/// One page of a chain, in one repeatable-read transaction.
pub(super) async fn chain(
    conn: &mut Conn,
    correlation_id: &str,
    after: i64,
    limit: usize,
    max_bytes: usize,
) -> Result<ChainPage, StoreError> {
    conn.client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await
        .map_err(unavailable)?;
    let page = async {
        let dispatched_through = dispatched_through(conn).await?;
        // The page's sizes first, then as many whole events as fit (`store::fitting`).
        let sql = "SELECT octet_length(payload) FROM outbox WHERE correlation_id = $1 AND id > $2 ORDER BY id LIMIT $3";
        let sizes: Vec<usize> = conn
            .query(sql, &[&correlation_id, &after, &(limit as i64)])
            .await?
            .iter()
            .map(|row| row.get::<_, i32>(0) as usize)
            .collect();
        let (take, more) = crate::store::fitting(&sizes, limit, max_bytes);
        let sql = events_where!("WHERE correlation_id = $1 AND id > $2 ORDER BY id LIMIT $3");
        let events: Vec<EventRow> = conn
            .query(sql, &[&correlation_id, &after, &(take as i64)])
            .await?
            .iter()
            .map(event_row)
            .collect();
        let deliveries = match (events.first(), events.last()) {
            (Some(first), Some(last)) => {
                let sql = deliveries_where!(
                    "WHERE d.correlation_id = $1 AND d.event_id BETWEEN $2 AND $3
                     ORDER BY d.event_id, d.subscriber"
                );
                conn.query(sql, &[&correlation_id, &first.id, &last.id])
                    .await?
                    .iter()
                    .map(delivery_row)
                    .collect::<Result<_, _>>()?
            }
            _ => Vec::new(),
        };
        Ok(ChainPage { events, deliveries, dispatched_through, more })
    }
    .await;
    conn.client.batch_execute("COMMIT").await.map_err(unavailable)?;
    page
}

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
