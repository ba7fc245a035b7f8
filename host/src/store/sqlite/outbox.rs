//! The outbox and deliveries in SQLite: events written in their invocation's commit,
//! the dispatcher's cursor (`dispatch`), one delivery row per (event, subscriber).

use rusqlite::{Connection, params};

use super::conn::unavailable;
use crate::store::{
    ChainPage, DeliveryChange, DeliveryRow, DeliveryStatus, Event, EventRow, StoreError, Subscriber,
    Unfanned, attempt_refused,
};

const EVENT_COLUMNS: &str =
    "id, service, topic, payload, correlation_id, created_at, traceparent, subscribers";
const DELIVERY_COLUMNS: &str = "d.event_id, d.subscriber, d.operation, d.topic, d.correlation_id, d.status, \
     d.attempts, d.next_at, d.outcome, d.last_error, d.created_at, d.done_at";

fn event_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<EventRow> {
    Ok(EventRow {
        id: row.get(0)?,
        service: row.get(1)?,
        topic: row.get(2)?,
        payload: row.get(3)?,
        correlation_id: row.get(4)?,
        created_at: row.get(5)?,
        traceparent: row.get(6)?,
        subscribers: Subscriber::decode(row.get::<_, Option<String>>(7)?.as_deref()),
    })
}

fn delivery_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<DeliveryRow> {
    Ok(DeliveryRow {
        event_id: row.get(0)?,
        subscriber: row.get(1)?,
        operation: row.get(2)?,
        topic: row.get(3)?,
        correlation_id: row.get(4)?,
        status: super::status(row, 5, DeliveryStatus::parse)?,
        attempts: row.get(6)?,
        next_at: row.get(7)?,
        outcome: row.get(8)?,
        last_error: row.get(9)?,
        created_at: row.get(10)?,
        done_at: row.get(11)?,
    })
}

fn read_events(
    conn: &Connection,
    filter: &str,
    params: &[&dyn rusqlite::ToSql],
) -> rusqlite::Result<Vec<EventRow>> {
    super::rows(conn, &format!("SELECT {EVENT_COLUMNS} FROM outbox {filter}"), params, event_row)
}

fn read_deliveries(
    conn: &Connection,
    filter: &str,
    params: &[&dyn rusqlite::ToSql],
) -> rusqlite::Result<Vec<DeliveryRow>> {
    super::rows(conn, &format!("SELECT {DELIVERY_COLUMNS} FROM deliveries d {filter}"), params, delivery_row)
}

pub(super) fn dispatched_through(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("SELECT through FROM dispatch WHERE id = 1", [], |r| r.get(0))
}

pub(super) fn events_after(conn: &Connection, after: i64, limit: usize) -> rusqlite::Result<Vec<EventRow>> {
    read_events(conn, "WHERE id > ?1 ORDER BY id LIMIT ?2", params![after, limit as i64])
}

/// Events without their subscribers at or below the cursor, on one of `topics` (a JSON
/// array), with no delivery: through the partial index of events kept without
/// subscribers, which only events from before migration 13 are.
pub(super) fn unfanned(conn: &Connection, topics: &str) -> rusqlite::Result<Option<Unfanned>> {
    let sql = "SELECT count(*), min(o.id), max(o.id), min(o.created_at), max(o.created_at) FROM outbox o
         WHERE o.subscribers IS NULL AND o.id <= (SELECT through FROM dispatch WHERE id = 1)
           AND o.topic IN (SELECT value FROM json_each(?1))
           AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = o.id)";
    conn.query_row(sql, [topics], |row| {
        let count: i64 = row.get(0)?;
        Ok((count > 0).then(|| -> rusqlite::Result<Unfanned> {
            Ok(Unfanned {
                count: count as u64,
                ids: (row.get(1)?, row.get(2)?),
                published: (row.get(3)?, row.get(4)?),
            })
        }))
    })?
    .transpose()
}

pub(super) fn event(conn: &Connection, id: i64) -> rusqlite::Result<Option<EventRow>> {
    read_events(conn, "WHERE id = ?1", params![id]).map(|mut rows| rows.pop())
}

pub(super) fn due_deliveries(
    conn: &Connection,
    now: i64,
    limit: usize,
) -> rusqlite::Result<Vec<DeliveryRow>> {
    read_deliveries(
        conn,
        "WHERE d.status = 'pending' AND d.next_at <= ?1 AND NOT EXISTS (
             SELECT 1 FROM deliveries e
             WHERE e.subscriber = d.subscriber AND e.topic = d.topic
               AND e.correlation_id = d.correlation_id AND e.status = 'pending'
               AND e.event_id < d.event_id)
         ORDER BY d.event_id LIMIT ?2",
        params![now, limit as i64],
    )
}

pub(super) fn delivery_counts(conn: &Connection) -> rusqlite::Result<Vec<(DeliveryStatus, u64)>> {
    super::rows(conn, "SELECT status, count(*) FROM deliveries GROUP BY status ORDER BY status", &[], |row| {
        Ok((super::status(row, 0, DeliveryStatus::parse)?, row.get::<_, i64>(1)? as u64))
    })
}

pub(super) fn dead_deliveries(conn: &Connection, limit: usize) -> rusqlite::Result<Vec<DeliveryRow>> {
    read_deliveries(conn, "WHERE d.status = 'dead' ORDER BY d.event_id LIMIT ?1", params![limit as i64])
}

pub(super) fn count_of(conn: &Connection, correlation_id: &str) -> rusqlite::Result<u64> {
    let sql = "SELECT count(*) FROM outbox WHERE correlation_id = ?1";
    conn.query_row(sql, params![correlation_id], |row| row.get::<_, i64>(0)).map(|n| n as u64)
}

/// One page of a chain, in one read transaction (a chain shown while deliveries happen
/// is still one moment of it).
pub(super) fn chain(
    conn: &mut Connection,
    correlation_id: &str,
    after: i64,
    limit: usize,
    max_bytes: usize,
) -> rusqlite::Result<ChainPage> {
    let tx = conn.transaction()?;
    let dispatched_through = dispatched_through(&tx)?;
    // The page's sizes first, then as many whole events as fit (`store::fitting`).
    let sizes: Vec<usize> = tx
        .prepare_cached(
            "SELECT length(payload) FROM outbox WHERE correlation_id = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
        )?
        .query_map(params![correlation_id, after, limit as i64], |row| {
            row.get::<_, i64>(0).map(|n| n as usize)
        })?
        .collect::<rusqlite::Result<_>>()?;
    let (take, more) = crate::store::fitting(&sizes, limit, max_bytes);
    let limit = take;
    let events = tx
        .prepare_cached(&format!(
            "SELECT {EVENT_COLUMNS} FROM outbox WHERE correlation_id = ?1 AND id > ?2 ORDER BY id LIMIT ?3"
        ))?
        .query_map(params![correlation_id, after, limit as i64], event_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let deliveries = match (events.first(), events.last()) {
        (Some(first), Some(last)) => tx
            .prepare_cached(&format!(
                "SELECT {DELIVERY_COLUMNS} FROM deliveries d WHERE d.correlation_id = ?1
                   AND d.event_id BETWEEN ?2 AND ?3 ORDER BY d.event_id, d.subscriber"
            ))?
            .query_map(params![correlation_id, first.id, last.id], delivery_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?,
        _ => Vec::new(),
    };
    tx.commit()?;
    Ok(ChainPage { events, deliveries, dispatched_through, more })
}

/// Writes the events a commit publishes into the outbox, in order; an event without a
/// chain of its own takes the commit's.
///
/// Each id is above every id the outbox ever gave and above the dispatcher's cursor.
/// SQLite's own choice for a rowid, one above the highest row left, would give again
/// the ids of events retention forgot (the newest among them, once an idle spell
/// outlasts the event retention): such an event is at or below the cursor, so it was
/// never fanned out, and retention later forgot it as delivered. An event id reused
/// would also meet its predecessor's deliveries' idempotency keys.
pub(super) fn publish(
    conn: &Connection,
    service: &str,
    events: &[Event],
    chain: Option<&String>,
    traceparent: Option<&String>,
    created_at: i64,
) -> Result<(), StoreError> {
    let mut insert = conn
        .prepare_cached(
            "INSERT INTO outbox (id, service, topic, payload, correlation_id, created_at, traceparent, subscribers)
             VALUES (max((SELECT coalesce(max(id), 0) FROM outbox), (SELECT through FROM dispatch WHERE id = 1)) + 1,
                     ?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )
        .map_err(unavailable)?;
    for event in events {
        let chain = event.correlation_id.as_ref().or(chain);
        insert
            .execute(params![
                service,
                event.topic,
                event.payload,
                chain,
                created_at,
                traceparent,
                event.subscribers.as_deref().map(Subscriber::encode)
            ])
            .map_err(unavailable)?;
    }
    Ok(())
}

pub(super) fn apply(conn: &Connection, change: &DeliveryChange) -> Result<(), StoreError> {
    match change {
        DeliveryChange::Create { deliveries, through } => {
            let mut insert = conn
                .prepare_cached(
                    "INSERT INTO deliveries (event_id, subscriber, operation, topic, correlation_id,
                         status, attempts, next_at, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, 'pending', 0, ?6, ?6)
                     ON CONFLICT DO NOTHING",
                )
                .map_err(unavailable)?;
            for d in deliveries {
                insert
                    .execute(params![
                        d.event_id,
                        d.subscriber,
                        d.operation,
                        d.topic,
                        d.correlation_id,
                        d.created_at
                    ])
                    .map_err(unavailable)?;
            }
            conn.execute("UPDATE dispatch SET through = max(through, ?1) WHERE id = 1", [through])
                .map_err(unavailable)?;
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
        } => {
            let changed = conn
                .prepare_cached(
                    "UPDATE deliveries SET status = ?3, attempts = ?4, next_at = ?5, outcome = ?6,
                     last_error = ?7, done_at = ?8
                 WHERE event_id = ?1 AND subscriber = ?2 AND status = 'pending' AND attempts = ?4 - 1",
                )
                .map_err(unavailable)?
                .execute(params![
                    event_id,
                    subscriber,
                    status.as_str(),
                    attempts,
                    next_at,
                    outcome,
                    last_error,
                    done_at
                ])
                .map_err(unavailable)?;
            if changed == 0 {
                return Err(attempt_refused(*event_id, subscriber, *attempts));
            }
        }
        DeliveryChange::Redeliver { event_id, subscriber, at } => {
            let changed = conn
                .execute(
                    "UPDATE deliveries SET status = 'pending', next_at = ?3
                     WHERE event_id = ?1 AND subscriber = ?2 AND status = 'dead'",
                    params![event_id, subscriber, at],
                )
                .map_err(unavailable)?;
            if changed == 0 {
                return Err(StoreError::Invalid(format!(
                    "no dead delivery of event {event_id} to `{subscriber}`"
                )));
            }
        }
    }
    Ok(())
}
