//! Whether the store can write, for every backend. The writer marks it failing when a
//! batch fails for the storage's sake (SQLite: the disk is full, an fsync or a write
//! failed; PostgreSQL: the server is gone or refuses; nothing of the batch was
//! acknowledged), and well again at the next batch that commits; either before it
//! answers the batch's callers, who may ask `/readyz` next. While it fails, the
//! writer also tries a small commit of its own every second (a probe), so that an idle
//! server learns it recovered. `/readyz` says why it fails, `wasaga_store_failing` is
//! 1 meanwhile.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::store::Failing;

/// How often the writer probes a failing store.
pub(crate) const PROBE_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
pub(crate) struct Health {
    /// True while `failing` is set: the writer looks at it after every batch.
    failed: AtomicBool,
    failing: Mutex<Option<Failing>>,
}

impl Health {
    pub(crate) fn failing(&self) -> Option<Failing> {
        if !self.failed.load(Ordering::Acquire) {
            return None;
        }
        self.failing.lock().expect("health mutex poisoned").clone()
    }

    pub(crate) fn is_failing(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// A batch failed for the storage's sake.
    pub(crate) fn failed(&self, reason: &str) {
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
    pub(crate) fn committed(&self) {
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
}
