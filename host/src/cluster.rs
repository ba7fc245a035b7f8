//! Several hosts on one store, with no leader configured by hand.
//!
//! Each host has an id of its own (a UUID v7 per process) and says it is alive every
//! third of its lease ([`Store::heartbeat`]). From each beat it learns:
//! - who leads: the live host alive the longest. Only the leader runs the event
//!   dispatcher and retention, so that each runs once per store, not once per host.
//!   A host whose beats fail stops leading once its lease may have run out;
//! - which sagas no live host drives: it takes them over ([`Store::claim_sagas`]) and
//!   drives them. A host that died (or paused past its lease) loses its sagas this way;
//!   every update it still tries is fenced by the saga's version and owner, so it cannot
//!   advance a saga that another host drives, nor apply a step twice.
//!
//! On SQLite (one host per file) this host always leads and, at start, takes over every
//! unfinished saga of the process before it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::saga::SagaEngine;
use crate::store::{Store, StoreError};

/// How long a host counts as alive after a beat, unless `--host-lease` says otherwise.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(5);

/// This host in the cluster. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Membership {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    id: String,
    lease: Duration,
    leading: AtomicBool,
}

impl Membership {
    /// A host with a fresh id and `lease`.
    pub fn new(lease: Duration) -> Self {
        Membership {
            inner: Arc::new(Inner {
                id: uuid::Uuid::now_v7().to_string(),
                lease,
                leading: AtomicBool::new(false),
            }),
        }
    }

    /// This host's id, as sagas record their owner.
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// Whether this host leads (runs the dispatcher and retention) now.
    pub fn leads(&self) -> bool {
        self.inner.leading.load(Ordering::Relaxed)
    }

    /// One beat: says this host is alive for a lease from `now`, and learns who leads.
    pub async fn beat(&self, store: &dyn Store, now: i64) -> Result<(), StoreError> {
        let until = now + self.inner.lease.as_millis() as i64;
        let leader = store.heartbeat(&self.inner.id, now, until).await?;
        let leads = leader == self.inner.id;
        if self.inner.leading.swap(leads, Ordering::Relaxed) != leads {
            tracing::info!(host = %self.inner.id, leads, "this host {} the dispatcher and retention", if leads { "now runs" } else { "no longer runs" });
        }
        Ok(())
    }

    /// Beats every third of the lease and takes over the sagas no live host drives,
    /// until the process ends. Beats that fail for a whole lease stop this host
    /// leading: another may have taken over meanwhile.
    pub async fn run(self, store: Arc<dyn Store>, sagas: SagaEngine) {
        let every = self.inner.lease / 3;
        let mut last_beat = tokio::time::Instant::now();
        let mut failing = false;
        loop {
            tokio::time::sleep(every).await;
            match self.beat(&*store, crate::clock::now_ms()).await {
                Ok(()) => {
                    last_beat = tokio::time::Instant::now();
                    failing = false;
                }
                Err(error) => {
                    if !failing {
                        tracing::warn!("this host's heartbeat failed ({error}); trying again");
                        failing = true;
                    }
                    if last_beat.elapsed() >= self.inner.lease
                        && self.inner.leading.swap(false, Ordering::Relaxed)
                    {
                        tracing::warn!("no heartbeat for a whole lease: this host stops leading");
                    }
                    continue;
                }
            }
            if let Err(error) = sagas.take_over().await {
                tracing::warn!("taking over the sagas of hosts that stopped failed: {error}");
            }
        }
    }
}
