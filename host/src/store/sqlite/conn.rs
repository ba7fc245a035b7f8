//! Connections: the pool of read connections that snapshots and the other reads
//! borrow (the writer's connection is its thread's own, `writer.rs`), and how a
//! connection's failure is reported.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::store::StoreError;

/// How long a connection waits for a lock another holds before it reports the store
/// busy.
pub(super) const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

pub(super) fn unavailable(error: rusqlite::Error) -> StoreError {
    StoreError::Unavailable(error.to_string())
}

/// Idle read connections, reused across snapshots.
#[derive(Debug)]
pub(super) struct ReadPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

/// Idle connections kept beyond this are closed.
const MAX_IDLE_READERS: usize = 128;

impl ReadPool {
    pub(super) fn new(path: PathBuf) -> ReadPool {
        ReadPool { path, idle: Mutex::default() }
    }

    pub(super) fn take(&self) -> Result<Connection, StoreError> {
        if let Some(conn) = self.idle.lock().expect("pool mutex poisoned").pop() {
            return Ok(conn);
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(&self.path, flags).map_err(unavailable)?;
        conn.pragma_update(None, "query_only", true).map_err(unavailable)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(unavailable)?;
        Ok(conn)
    }

    pub(super) fn put(&self, conn: Connection) {
        let mut idle = self.idle.lock().expect("pool mutex poisoned");
        if idle.len() < MAX_IDLE_READERS {
            idle.push(conn);
        }
    }
}
