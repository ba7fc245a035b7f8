//! The outbox and deliveries in PostgreSQL: the queries (SQLite's are in
//! `store/sqlite/outbox.rs`), and the events and delivery changes a commit carries,
//! added to its batch's writes (`writer/writes.rs`).

use tokio_postgres::Row;

use super::conn::{Conn, unavailable};
use super::writer::plan::{guarded, step};
use super::writer::writes::Writes;
use crate::store::{
    ChainPage, DeliveryChange, DeliveryRow, DeliveryStatus, Event, EventRow, StoreError, Subscriber,
    Unfanned, attempt_refused,
};

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

const DISPATCHED_THROUGH: &str = "SELECT through FROM dispatch WHERE id = 1";

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

const CREATE_DELIVERY: &str =
    "INSERT INTO deliveries (event_id, subscriber, operation, topic, correlation_id,
         status, attempts, next_at, created_at)
     VALUES ($1, $2, $3, $4, $5, 'pending', 0, $6, $6)
     ON CONFLICT DO NOTHING";
const DISPATCHED: &str = "UPDATE dispatch SET through = GREATEST(through, $1) WHERE id = 1";
const UPDATE_DELIVERY: &str = "UPDATE deliveries SET status = $3, attempts = $4, next_at = $5, outcome = $6,
         last_error = $7, done_at = $8
     WHERE event_id = $1 AND subscriber = $2 AND status = 'pending' AND attempts = $4 - 1";
const REDELIVER: &str = "UPDATE deliveries SET status = 'pending', next_at = $3
     WHERE event_id = $1 AND subscriber = $2 AND status = 'dead'";
const PUBLISH: &str =
    "INSERT INTO outbox (service, topic, payload, correlation_id, created_at, traceparent, subscribers)
     VALUES ($1, $2, $3, $4, $5, $6, $7)";

/// Adds a commit's delivery change to its batch's writes; an update and a redelivery
/// are guarded by the delivery's state they were decided on.
pub(super) fn apply(job: usize, change: &DeliveryChange, writes: &mut Writes) {
    match change {
        DeliveryChange::Create { deliveries, through } => {
            for d in deliveries {
                writes.others.push(step(
                    CREATE_DELIVERY,
                    vec![
                        Box::new(d.event_id),
                        Box::new(d.subscriber.clone()),
                        Box::new(d.operation.clone()),
                        Box::new(d.topic.clone()),
                        Box::new(d.correlation_id.clone()),
                        Box::new(d.created_at),
                    ],
                ));
            }
            writes.others.push(step(DISPATCHED, vec![Box::new(*through)]));
        }
        DeliveryChange::Update {
            event_id,
            subscriber,
            status,
            attempts,
            next_at,
            outcome,
            last_error,
            done_at,
        } => writes.others.push(guarded(
            UPDATE_DELIVERY,
            vec![
                Box::new(*event_id),
                Box::new(subscriber.clone()),
                Box::new(status.as_str()),
                Box::new(*attempts as i32),
                Box::new(*next_at),
                Box::new(outcome.clone()),
                Box::new(last_error.clone()),
                Box::new(*done_at),
            ],
            job,
            attempt_refused(*event_id, subscriber, *attempts),
        )),
        DeliveryChange::Redeliver { event_id, subscriber, at } => writes.others.push(guarded(
            REDELIVER,
            vec![Box::new(*event_id), Box::new(subscriber.clone()), Box::new(*at)],
            job,
            StoreError::Invalid(format!("no dead delivery of event {event_id} to `{subscriber}`")),
        )),
    }
}

/// Adds the events a commit publishes to its batch's writes; their ids come from the
/// outbox's sequence, drawn under the batch's turn to publish (`writer.rs`).
pub(super) fn publish(
    service: &str,
    events: &[Event],
    chain: Option<&String>,
    traceparent: Option<&String>,
    created_at: i64,
    writes: &mut Writes,
) {
    for event in events {
        let chain = event.correlation_id.as_ref().or(chain).cloned();
        writes.others.push(step(
            PUBLISH,
            vec![
                Box::new(service.to_owned()),
                Box::new(event.topic.clone()),
                Box::new(event.payload.clone()),
                Box::new(chain),
                Box::new(created_at),
                Box::new(traceparent.cloned()),
                Box::new(event.subscribers.as_deref().map(Subscriber::encode)),
            ],
        ));
    }
}
