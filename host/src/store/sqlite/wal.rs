//! Keeping the WAL bounded under sustained load.
//!
//! The checkpoint thread copies the WAL into the database every half second with
//! `PASSIVE` checkpoints, which never wait for anyone. But a WAL only starts again from
//! its beginning once a checkpoint has copied all of it *and* no reader still uses it;
//! with commits and reads never stopping, that moment never comes, and the file grows
//! for ever (2.5 GB after 14 s of sagas at 64 concurrent, measured here).
//!
//! So the writer thread, between two batches, looks at the WAL's size; past three
//! quarters of the limit (the batches written meanwhile fit in the rest) it runs a
//! `RESTART` checkpoint: it waits (a short while) for the readers still using the WAL,
//! copies what is left, and makes the next commit write from the beginning of the
//! file, which then stops growing; `journal_size_limit` cuts it back to the limit if
//! it went past. Commits wait meanwhile (the writer is busy): that stall is timed,
//! logged when long, and kept in `wasaga_wal_checkpoint_seconds`.
//!
//! One checkpoint runs at a time (`Checkpoints`): SQLite refuses a checkpoint at once,
//! without waiting, while another connection runs one, and a restart refused that way
//! at the limit backed off like one held up by a reader, a second in which the WAL
//! grew freely (to 80 times its limit in a test, on a busy machine). The writer waits
//! for the checkpoint thread's pass to end instead.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::Connection;

use super::conn::{BUSY_TIMEOUT, unavailable};
use crate::store::StoreError;

/// How long a restart waits for the readers still in the WAL: briefly while the WAL
/// is under its limit (the next batch tries again), longer once it reached it.
const READERS_WAIT: Duration = Duration::from_millis(10);
const READERS_WAIT_AT_LIMIT: Duration = Duration::from_millis(250);

/// After a restart at the limit that still found readers in the WAL, how long the
/// writer goes on before it waits for them again: a long reader (a big scan) must not
/// stall every batch by `READERS_WAIT_AT_LIMIT`. Likewise after a restart that failed
/// (a full disk): it is tried again a second later, not at every batch.
const AFTER_BUSY: Duration = Duration::from_secs(1);

/// Held by whoever checkpoints: the checkpoint thread, or the writer restarting the WAL.
pub(super) type Checkpoints = Arc<Mutex<()>>;

/// The WAL's limit and where it is.
#[derive(Debug)]
pub(super) struct WalPolicy {
    pub(super) path: PathBuf,
    pub(super) limit: u64,
    pub(super) checkpoints: Checkpoints,
    /// No restart before this: set after one at the limit that found readers, or one
    /// that failed.
    pub(super) not_before: Option<Instant>,
}

impl WalPolicy {
    /// Restarting at three quarters of the limit leaves room for the batches written
    /// until a restart gets through.
    fn restart_at(&self) -> u64 {
        self.limit / 4 * 3
    }

    /// Prepares the writer's connection: when the WAL restarts, the file is cut back to
    /// where a restart is due, so that its size says how much the WAL holds.
    pub(super) fn prepare(&self, conn: &Connection) -> rusqlite::Result<()> {
        conn.pragma_update(None, "journal_size_limit", self.restart_at() as i64)
    }

    /// Restarts the WAL (`RESTART` checkpoint) if it holds more than it should. Called
    /// by the writer between batches, so no commit of its own is in the way.
    pub(super) fn enforce(&mut self, conn: &Connection) {
        let size = std::fs::metadata(&self.path).map_or(0, |m| m.len());
        let metrics = crate::metrics::metrics();
        metrics.wal_bytes.set(size as i64);
        if size <= self.restart_at() {
            return;
        }
        if self.not_before.is_some_and(|at| Instant::now() < at) {
            return;
        }
        let at_limit = size >= self.limit;
        let began = Instant::now();
        let result = {
            let _alone = self.checkpoints.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let _ = conn.busy_timeout(if at_limit { READERS_WAIT_AT_LIMIT } else { READERS_WAIT });
            let result = conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |row| row.get::<_, i64>(0));
            let _ = conn.busy_timeout(super::BUSY_TIMEOUT);
            result
        };
        let took = began.elapsed();
        metrics.wal_checkpoint.observe(took.as_secs_f64());
        match result {
            Ok(0) => {
                self.not_before = None;
                if took > Duration::from_millis(100) {
                    tracing::info!(wal_bytes = size, ?took, "WAL checkpointed and restarted; commits waited");
                }
            }
            // Readers still in the WAL: the next batch tries again.
            Ok(_) if !at_limit => {}
            Ok(_) => {
                self.not_before = Some(Instant::now() + AFTER_BUSY);
                tracing::info!(wal_bytes = size, "the WAL is at its limit and readers hold on to it");
            }
            Err(e) => {
                self.not_before = Some(Instant::now() + AFTER_BUSY);
                tracing::warn!(wal_bytes = size, "WAL checkpoint failed: {e}");
            }
        }
    }
}

/// Starts the checkpoint thread: a `PASSIVE` checkpoint every `interval`, until `stop`.
pub(super) fn spawn_checkpointer(
    path: &Path,
    interval: Duration,
    checkpoints: Checkpoints,
    stop: Arc<AtomicBool>,
) -> Result<(), StoreError> {
    let conn = Connection::open(path).map_err(unavailable)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(unavailable)?;
    std::thread::Builder::new()
        .name("wasaga-checkpoint".into())
        .spawn(move || {
            let mut failing = false;
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(interval);
                // Dropped while this slept: a temporary store's files may be gone.
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                // PASSIVE never waits for the writer or readers: it copies what it can.
                // A failure (a full disk) is said once, not twenty times a second.
                let passive = {
                    let _alone = checkpoints.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                };
                match passive {
                    Err(e) if !failing => {
                        tracing::warn!("WAL checkpoint failed: {e}; the WAL grows until it can");
                        failing = true;
                    }
                    Ok(()) if failing => {
                        tracing::info!("WAL checkpoints work again");
                        failing = false;
                    }
                    _ => {}
                }
            }
        })
        .map_err(|e| StoreError::Unavailable(format!("starting the checkpoint thread: {e}")))?;
    Ok(())
}
