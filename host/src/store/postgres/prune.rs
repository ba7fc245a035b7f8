//! Retention in PostgreSQL: what `store/sqlite/prune.rs` forgets, with the same rules,
//! a batch at a time through the writer. Each selection is a range of an index.

use super::conn::Conn;
use crate::store::{PruneKind, StoreError};

const EXPIRED_OUTCOMES: &str = "DELETE FROM invocations WHERE (service, space, key) IN
    (SELECT service, space, key FROM invocations WHERE expires_at <= $1 ORDER BY expires_at LIMIT $2)";
const FINISHED_SAGAS: &str = "DELETE FROM sagas WHERE id IN
    (SELECT id FROM sagas WHERE status IN ('completed', 'compensated') AND updated_at < $1
     ORDER BY updated_at LIMIT $2)";
// Events whose deliveries are all delivered (never one not yet dispatched), with them.
const DELIVERED_EVENTS: &str = "WITH gone AS (
        SELECT o.id FROM outbox o
        WHERE o.created_at < $1 AND o.id <= (SELECT through FROM dispatch WHERE id = 1)
          AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = o.id AND d.status != 'delivered')
        ORDER BY o.created_at LIMIT $2),
    forgotten AS (DELETE FROM deliveries WHERE event_id IN (SELECT id FROM gone))
    DELETE FROM outbox WHERE id IN (SELECT id FROM gone)";
// Forgetting a tombstone raises its service's version floor to its version.
const OLD_TOMBSTONES: &str = "WITH gone AS (
        DELETE FROM records WHERE value IS NULL AND (service, key) IN
            (SELECT service, key FROM records WHERE value IS NULL AND deleted_at < $1
             ORDER BY deleted_at LIMIT $2)
        RETURNING service, version),
    raised AS (
        INSERT INTO version_floors (service, floor) SELECT service, max(version) FROM gone GROUP BY service
        ON CONFLICT (service) DO UPDATE SET floor = GREATEST(version_floors.floor, excluded.floor))
    SELECT count(*) FROM gone";

pub(super) async fn prune(
    conn: &mut Conn,
    kind: PruneKind,
    before: i64,
    batch: usize,
) -> Result<usize, StoreError> {
    let batch = batch as i64;
    let forgotten = match kind {
        PruneKind::Outcomes => conn.execute(EXPIRED_OUTCOMES, &[&before, &batch]).await?,
        PruneKind::Sagas => conn.execute(FINISHED_SAGAS, &[&before, &batch]).await?,
        PruneKind::Events => conn.execute(DELIVERED_EVENTS, &[&before, &batch]).await?,
        PruneKind::Tombstones => {
            let rows = conn.query(OLD_TOMBSTONES, &[&before, &batch]).await?;
            rows.first().map_or(0, |row| row.get::<_, i64>(0) as u64)
        }
    };
    Ok(forgotten as usize)
}
