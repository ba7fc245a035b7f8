//! Retention: what the store forgets, a small batch at a time, through the writer (so
//! never beside a commit, and never for long: each batch is one job among the commits).
//!
//! Nothing forgotten is needed for a guarantee:
//! - idempotency records once they expire (they are replayed until then);
//! - finished sagas (completed, compensated) after their retention: running,
//!   compensating and stuck ones stay, and the retention is at least the idempotency
//!   retention, so a saga outlives its start's key;
//! - events after their retention once every delivery of theirs is delivered (pending
//!   ones may still be tried, dead ones still redelivered: they stay), with their
//!   deliveries; never an event not yet dispatched;
//! - tombstones after their retention. A tombstone keeps a deleted record's version so
//!   that the key, created again, goes on from it. Forgetting one raises its service's
//!   *version floor* to its version: a key with no row reads at the floor, so a record
//!   created again still starts above every version it ever had.

use rusqlite::{Connection, params};

use super::conn::unavailable;
use crate::store::{PruneKind, StoreError};

// What each kind forgets, oldest first, `?2` at a time: each a range of an index
// (`invocations_by_expiry`, `sagas_finished`, `outbox_by_age`, `records_tombstones`),
// so that a pass costs what it forgets, not what is kept.
const EXPIRED_OUTCOMES: &str = "DELETE FROM invocations WHERE (service, space, key) IN
    (SELECT service, space, key FROM invocations WHERE expires_at <= ?1 ORDER BY expires_at LIMIT ?2)";
const FINISHED_SAGAS: &str = "DELETE FROM sagas WHERE id IN
    (SELECT id FROM sagas INDEXED BY sagas_finished
     WHERE status IN ('completed', 'compensated') AND updated_at < ?1
     ORDER BY updated_at LIMIT ?2)";
const DELIVERED_EVENTS: &str = "INSERT INTO temp.pruned_events (id)
    SELECT o.id FROM outbox o INDEXED BY outbox_by_age
    WHERE o.created_at < ?1 AND o.id <= (SELECT through FROM dispatch WHERE id = 1)
      AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = o.id AND d.status != 'delivered')
    ORDER BY o.created_at LIMIT ?2";
const OLD_TOMBSTONES: &str = "SELECT service, key, version FROM records
    WHERE value IS NULL AND deleted_at < ?1 ORDER BY deleted_at LIMIT ?2";

/// Forgets at most `batch` things of `kind` older than `before` (unix ms); returns how
/// many.
pub(super) fn prune(
    conn: &Connection,
    kind: PruneKind,
    before: i64,
    batch: usize,
) -> Result<usize, StoreError> {
    let batch = batch as i64;
    match kind {
        PruneKind::Outcomes => delete(conn, EXPIRED_OUTCOMES, before, batch),
        PruneKind::Sagas => delete(conn, FINISHED_SAGAS, before, batch),
        PruneKind::Events => prune_events(conn, before, batch),
        PruneKind::Tombstones => prune_tombstones(conn, before, batch),
    }
    .map_err(unavailable)
}

fn delete(conn: &Connection, sql: &str, before: i64, batch: i64) -> rusqlite::Result<usize> {
    conn.prepare_cached(sql)?.execute(params![before, batch])
}

fn prune_events(conn: &Connection, before: i64, batch: i64) -> rusqlite::Result<usize> {
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS pruned_events (id INTEGER PRIMARY KEY)", [])?;
    conn.execute("DELETE FROM temp.pruned_events", [])?;
    conn.prepare_cached(DELIVERED_EVENTS)?.execute(params![before, batch])?;
    conn.execute("DELETE FROM deliveries WHERE event_id IN (SELECT id FROM temp.pruned_events)", [])?;
    conn.execute("DELETE FROM outbox WHERE id IN (SELECT id FROM temp.pruned_events)", [])
}

fn prune_tombstones(conn: &Connection, before: i64, batch: i64) -> rusqlite::Result<usize> {
    let forgotten: Vec<(String, String, i64)> = conn
        .prepare_cached(OLD_TOMBSTONES)?
        .query_map(params![before, batch], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut raise = conn.prepare_cached(
        "INSERT INTO version_floors (service, floor) VALUES (?1, ?2)
         ON CONFLICT (service) DO UPDATE SET floor = max(floor, excluded.floor)",
    )?;
    let mut delete = conn.prepare_cached(
        "DELETE FROM records WHERE service = ?1 AND key = ?2 AND value IS NULL AND version = ?3",
    )?;
    for (service, key, version) in &forgotten {
        raise.execute(params![service, version])?;
        delete.execute(params![service, key, version])?;
    }
    Ok(forgotten.len())
}

/// The version a key of `service` with no row reads at: 0, or the highest version of
/// the service's forgotten tombstones.
pub(super) fn floor(conn: &Connection, service: &str) -> rusqlite::Result<u64> {
    use rusqlite::OptionalExtension;
    conn.prepare_cached("SELECT floor FROM version_floors WHERE service = ?1")?
        .query_row([service], |row| row.get::<_, i64>(0))
        .optional()
        .map(|floor| floor.unwrap_or(0) as u64)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::retention::Retention;
    use crate::store::sqlite::{SqliteOptions, SqliteStore};
    use crate::store::{Commit, Store, Transaction, TxLimits};

    /// Every selection of what to forget is a range of its index, oldest first: a
    /// pass over a week of sagas must not read them all (a search by status alone
    /// would read every finished saga).
    #[test]
    fn pruning_reads_ranges_of_indexes() {
        let mut conn = Connection::open_in_memory().unwrap();
        super::super::schema::migrate(&mut conn).unwrap().unwrap();
        conn.execute("CREATE TEMP TABLE pruned_events (id INTEGER PRIMARY KEY)", []).unwrap();
        for (sql, range) in [
            (EXPIRED_OUTCOMES, "INDEX invocations_by_expiry (expires_at<?)"),
            (FINISHED_SAGAS, "INDEX sagas_finished (updated_at<?)"),
            (DELIVERED_EVENTS, "INDEX outbox_by_age (created_at<?)"),
            (OLD_TOMBSTONES, "INDEX records_tombstones (deleted_at<?)"),
        ] {
            let plan: Vec<String> = conn
                .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                .unwrap()
                .query_map(params![0, 10], |row| row.get::<_, String>(3))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            assert!(plan.iter().any(|step| step.contains(range)), "{sql}\nplan: {plan:#?}");
            let scans: Vec<&String> = plan.iter().filter(|step| step.starts_with("SCAN")).collect();
            assert!(scans.is_empty(), "{sql}\nscans: {scans:?}");
        }
    }

    async fn delete_a_record(store: &SqliteStore) {
        for delete in [false, true] {
            let mut tx = Transaction::new(store.snapshot("svc").unwrap(), TxLimits::default());
            if delete {
                tx.delete("k", None).await.unwrap();
            } else {
                tx.set("k", b"v".to_vec()).await.unwrap();
            }
            let commit = Commit { service: "svc".into(), changes: tx.into_changes(), ..Commit::default() };
            store.commit(commit).await.unwrap();
        }
    }

    fn tombstones(store: &SqliteStore) -> i64 {
        let conn = rusqlite::Connection::open(store.path()).unwrap();
        conn.query_row("SELECT count(*) FROM records WHERE value IS NULL", [], |r| r.get(0)).unwrap()
    }

    /// A pass forgets what is past its retention, and a retention of centuries keeps
    /// everything (it once overflowed into "forget everything").
    #[tokio::test]
    async fn a_pass_forgets_what_is_past_its_retention_and_centuries_keep() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), SqliteOptions::default()).unwrap();
        delete_a_record(&store).await;
        let later = crate::clock::now_ms() + 60_000;
        let centuries = Duration::from_secs(u64::MAX / 2);
        let keep = Retention { tombstones: centuries, ..Retention::default() };
        keep.prune(&store, later).await;
        assert_eq!(tombstones(&store), 1);
        let minute = Retention { tombstones: Duration::from_secs(30), ..Retention::default() };
        minute.prune(&store, later).await;
        assert_eq!(tombstones(&store), 0);
    }
}
