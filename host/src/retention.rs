//! How long the store keeps what accumulates, and the task that forgets the rest: a
//! small batch at a time through the writer (so never for long, and never beside a
//! commit), every `every`. What each kind may forget, and why that is never needed for
//! a guarantee, is in `store/sqlite/prune.rs`.

use std::sync::Arc;
use std::time::Duration;

use crate::cluster::Membership;
use crate::metrics::{labels, metrics};
use crate::store::{PruneKind, Store};

/// Retention periods. Idempotency records keep their own (`--idempotency-retention`,
/// written into each record as it is stored).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Finished sagas (completed or compensated), from their last change.
    pub sagas: Duration,
    /// Events whose deliveries are all made, from their publication.
    pub events: Duration,
    /// Tombstones of deleted records, from the delete.
    pub tombstones: Duration,
    /// How often the pruning task looks.
    pub every: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        let week = Duration::from_secs(7 * 24 * 3600);
        Retention { sagas: week, events: week, tombstones: week, every: Duration::from_secs(10) }
    }
}

/// Things forgotten per writer job: small enough that a commit queued behind one waits
/// a millisecond or two. With 500, sagas at 1,370/s over HTTP had a p99 of 28–36 ms
/// once retention acted, against 17 ms before; with 100 it stays at 17 ms.
const BATCH: usize = 100;

impl Retention {
    /// A saga must outlive the key that started it: otherwise a client retrying its
    /// start after the saga was forgotten would start it again.
    pub fn check(&self, idempotency: Duration) -> Result<(), String> {
        if self.sagas < idempotency {
            return Err(format!(
                "the saga retention ({:?}) must be at least the idempotency retention ({idempotency:?}): \
                 a saga outlives the key that started it",
                self.sagas
            ));
        }
        Ok(())
    }

    /// Prunes every `every`, while this host leads, until the process ends.
    pub async fn run(self, store: Arc<dyn Store>, membership: Membership) {
        let mut ticks = tokio::time::interval(self.every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut pace = Pace::default();
        loop {
            ticks.tick().await;
            if !membership.leads() {
                continue;
            }
            let batches = self.prune_paced(&*store, crate::clock::now_ms(), &pace).await;
            pace = Pace { last_batches: batches, spread: self.every / 2 };
        }
    }

    /// One pass: everything of each kind past its retention, in batches, back to back
    /// (a pass by hand, and the tests).
    pub async fn prune(&self, store: &dyn Store, now: i64) {
        self.prune_paced(store, now, &Pace::default()).await;
    }

    /// One pass, its batches `pace` apart; returns how many batches it took.
    async fn prune_paced(&self, store: &dyn Store, now: i64, pace: &Pace) -> usize {
        // A retention of centuries means "keep", not an overflow.
        let ago = |d: Duration| now.saturating_sub(i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let gap = pace.gap();
        let mut batches = 0;
        for kind in PruneKind::ALL {
            let before = match kind {
                // Each record carries its own expiry.
                PruneKind::Outcomes => now,
                PruneKind::Sagas => ago(self.sagas),
                PruneKind::Events => ago(self.events),
                PruneKind::Tombstones => ago(self.tombstones),
            };
            let mut forgotten = 0;
            loop {
                match store.prune(kind, before, BATCH).await {
                    Ok(n) => {
                        forgotten += n;
                        batches += 1;
                        if n < BATCH {
                            break;
                        }
                        // Let the commits queued meanwhile go first; past as many
                        // batches as the last pass took, the rest goes back to back.
                        if gap.is_zero() || batches >= pace.last_batches {
                            tokio::task::yield_now().await;
                        } else {
                            tokio::time::sleep(gap).await;
                        }
                    }
                    Err(error) => {
                        tracing::warn!(kind = kind.as_str(), "pruning failed: {error}; tried again later");
                        break;
                    }
                }
            }
            if forgotten > 0 {
                metrics().pruned.get_or_create(&labels(&[("kind", kind.as_str())])).inc_by(forgotten as u64);
                tracing::debug!(kind = kind.as_str(), forgotten, "retention");
            }
        }
        batches
    }
}

/// How far apart a pass's batches go. A pass run back to back under steady load puts
/// a prune job beside every commit batch for a second or two, every period: those are
/// the slowest commits of the period, and the p99 of a saga's latency rose with them
/// (16.6 to ~19.7 ms at 1,370 sagas/s). Spread over half the period instead, as many
/// batches as the last pass needed, a commit batch meets one now and then. Batches
/// beyond that many (a backlog larger than the last pass's) go back to back, so that
/// a pass never falls behind what accumulates.
#[derive(Debug, Default)]
struct Pace {
    last_batches: usize,
    spread: Duration,
}

/// Never so far apart that a single kind's backlog outlasts the period by much.
const MAX_GAP: Duration = Duration::from_millis(50);

impl Pace {
    fn gap(&self) -> Duration {
        if self.last_batches == 0 {
            return Duration::ZERO;
        }
        (self.spread / self.last_batches as u32).min(MAX_GAP)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first pass goes back to back; later ones spread as many batches as the last
    /// needed over half the period, never further apart than `MAX_GAP`.
    #[test]
    fn a_pass_spreads_its_batches_over_half_the_period() {
        assert_eq!(Pace::default().gap(), Duration::ZERO);
        let pace = |last_batches| Pace { last_batches, spread: Duration::from_secs(5) };
        assert_eq!(pace(1_000).gap(), Duration::from_millis(5));
        assert_eq!(pace(100_000).gap(), Duration::from_micros(50));
        assert_eq!(pace(4).gap(), MAX_GAP);
    }

    #[test]
    fn a_saga_retention_below_the_key_retention_is_refused() {
        let day = Duration::from_secs(86_400);
        let retention = Retention { sagas: day, ..Retention::default() };
        assert!(retention.check(day).is_ok());
        let error = retention.check(2 * day).unwrap_err();
        assert!(error.contains("must be at least the idempotency retention"), "{error}");
    }
}
