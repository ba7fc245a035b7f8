//! Whether the store can write. The writer marks it failing when a batch fails for the
//! storage's sake (the disk is full, an fsync or a write failed: SQLite ends the
//! batch's transaction, and nothing of it was acknowledged), and well again at the
//! next batch that commits. While it fails, the writer also tries a small commit of
//! its own every second (a probe), so that an idle server learns it recovered.
//! `/readyz` says why it fails, `wasaga_store_failing` is 1 meanwhile.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rusqlite::{Connection, TransactionBehavior};

use crate::store::Failing;

/// How often the writer probes a failing store.
pub(super) const PROBE_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
pub(super) struct Health {
    /// True while `failing` is set: the writer looks at it after every batch.
    failed: AtomicBool,
    failing: Mutex<Option<Failing>>,
}

impl Health {
    pub(super) fn failing(&self) -> Option<Failing> {
        if !self.failed.load(Ordering::Acquire) {
            return None;
        }
        self.failing.lock().expect("health mutex poisoned").clone()
    }

    pub(super) fn is_failing(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// A batch failed for the storage's sake.
    pub(super) fn failed(&self, reason: &str) {
        let mut failing = self.failing.lock().expect("health mutex poisoned");
        if failing.is_none() {
            tracing::error!("the store cannot write: {reason}; writes are refused until it can");
            crate::metrics::metrics().store_failing.set(1);
        }
        let since = failing.as_ref().map_or_else(crate::clock::now_ms, |f| f.since);
        *failing = Some(Failing { reason: reason.to_owned(), since });
        self.failed.store(true, Ordering::Release);
    }

    /// A batch (or a probe) committed.
    pub(super) fn committed(&self) {
        if !self.failed.load(Ordering::Acquire) {
            return;
        }
        let mut failing = self.failing.lock().expect("health mutex poisoned");
        if let Some(was) = failing.take() {
            let seconds = (crate::clock::now_ms() - was.since) as f64 / 1000.0;
            tracing::warn!("the store writes again, after {seconds:.1} s failing ({})", was.reason);
            crate::metrics::metrics().store_failing.set(0);
        }
        self.failed.store(false, Ordering::Release);
    }

    /// The writer's probe of a failing store: a commit of one row, synced like any.
    pub(super) fn probe(&self, conn: &mut Connection) {
        let probed = conn.transaction_with_behavior(TransactionBehavior::Immediate).and_then(|tx| {
            tx.execute(
                "INSERT INTO probes (id, at) VALUES (1, ?1) ON CONFLICT (id) DO UPDATE SET at = excluded.at",
                [crate::clock::now_ms()],
            )?;
            tx.commit()
        });
        match probed {
            Ok(()) => self.committed(),
            Err(error) => self.failed(&error.to_string()),
        }
    }
}
