//! The SQLite writer's probe of a failing store (see `store/health.rs`).

use rusqlite::{Connection, TransactionBehavior};

use crate::store::health::Health;

/// The writer's probe of a failing store: a commit of one row, synced like any.
pub(super) fn probe(health: &Health, conn: &mut Connection) {
    let probed = conn.transaction_with_behavior(TransactionBehavior::Immediate).and_then(|tx| {
        tx.execute(
            "INSERT INTO probes (id, at) VALUES (1, ?1) ON CONFLICT (id) DO UPDATE SET at = excluded.at",
            [crate::clock::now_ms()],
        )?;
        tx.commit()
    });
    match probed {
        Ok(()) => health.committed(),
        Err(error) => health.failed(&error.to_string()),
    }
}
