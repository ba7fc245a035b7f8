//! Versioned records: the storage contract behind the plugins' `store` imports.
//!
//! - [`RecordStore`] is what a storage backend implements: consistent read snapshots
//!   per service, and an atomic, validated [`RecordStore::commit`].
//! - [`Transaction`] is one invocation's view: it reads from a snapshot, records every
//!   version it read (the read set), buffers writes, and produces the [`ChangeSet`]
//!   that the backend validates and applies at commit.
//! - [`SqliteStore`] is the durable backend: WAL, one writer thread that group-commits
//!   (`sqlite/writer.rs`), pooled read snapshots, migrations (`sqlite/schema.rs`).
//! - [`MemoryStore`] is an in-memory backend with the same semantics, for tests and
//!   benchmarks of the runtime alone.
//!
//! Versions are per key and never go back: a record starts at version 1, every write
//! adds 1, and a delete leaves a tombstone, so a record created again continues from
//! the deleted version and an old version number can never match again.

mod memory;
mod sqlite;
mod transaction;

use std::future::Future;
use std::pin::Pin;

pub use memory::MemoryStore;
pub use sqlite::{Failing, PruneKind, SqliteOptions, SqliteStore, Synchronous};
pub use transaction::{ChangeSet, Event, Transaction, TxLimits, Write};

/// A stored record as plugins and clients see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub value: Vec<u8>,
    /// 1 when created, +1 per write.
    pub version: u64,
}

/// A record's state at some moment, tombstones included: the unit of the read set.
///
/// `version` 0 means the key never existed; a deleted record keeps its last version
/// with `value: None`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub value: Option<Vec<u8>>,
    pub version: u64,
}

impl Slot {
    /// A key that was never written.
    pub const EMPTY: Slot = Slot { value: None, version: 0 };

    /// The record, if it exists.
    pub fn entry(&self) -> Option<Entry> {
        self.value.as_ref().map(|value| Entry { value: value.clone(), version: self.version })
    }

    /// The version a plugin or client sees: `None` when the record does not exist.
    pub fn visible_version(&self) -> Option<u64> {
        self.value.as_ref().map(|_| self.version)
    }
}

/// A version check that did not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("version conflict on `{key}`: expected {}, found {}", show(.expected), show(.actual))]
pub struct Conflict {
    pub key: String,
    /// `None`: expected absent.
    pub expected: Option<u64>,
    /// `None`: absent.
    pub actual: Option<u64>,
}

fn show(version: &Option<u64>) -> String {
    version.map_or_else(|| "absent".to_owned(), |v| format!("version {v}"))
}

/// Why a store operation or a commit did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// An expected version did not match. Retryable by re-reading.
    #[error(transparent)]
    Conflict(#[from] Conflict),
    /// The request is wrong (bad key, value too large, too many writes). Final.
    #[error("{0}")]
    Invalid(String),
    /// The backend failed (I/O, corruption). Nothing was written.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// An unexpired outcome is already stored for this idempotency key.
    #[error("an outcome is already stored for idempotency key `{0}`")]
    Duplicate(String),
    /// Too many commits are waiting: nothing was written. Retryable shortly; the server
    /// answers 503 with `Retry-After` rather than queueing without bound.
    #[error("the store is overloaded: {0}")]
    Overloaded(String),
}

/// A consistent, read-only view of one service's records.
pub trait Snapshot: Send {
    /// The slot at `key` (tombstones included; [`Slot::EMPTY`] if never written).
    fn get(&mut self, key: &str) -> Result<Slot, StoreError>;

    /// Existing records whose key starts with `prefix` and sorts after `start_after`,
    /// in key order: at most `limit`, and no more than `max_bytes` of values past the
    /// first record (a scan of large values stops early; the caller pages on).
    fn scan(
        &mut self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Scanned, StoreError>;
}

/// The records a scan found, in key order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scanned {
    pub rows: Vec<(String, Entry)>,
    /// True when the range has no record after these: the scan was not cut short by
    /// its limit or its byte budget.
    pub complete: bool,
}

/// Whose idempotency key it is. A client chooses its keys freely; the host's own calls
/// keep theirs in spaces of their own, so that no key a client sends can ever meet
/// (and pre-empt) a saga step's or a delivery's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeySpace {
    /// Keys sent in `Idempotency-Key` (by clients and operators alike).
    Client,
    /// Saga steps: `saga/<id>/<step>/do|undo[/retry-<n>]`.
    Saga,
    /// Event deliveries: `event/<id>/<subscriber>`.
    Event,
}

impl KeySpace {
    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            KeySpace::Client => "client",
            KeySpace::Saga => "saga",
            KeySpace::Event => "event",
        }
    }
}

/// What identifies one idempotent invocation: the service, whose key it is, the key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey {
    pub service: String,
    pub space: KeySpace,
    pub key: String,
}

impl std::fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.key)
    }
}

/// The stored outcome of one idempotent invocation: replayed to every retry of its key
/// until it expires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredOutcome {
    pub key: IdempotencyKey,
    /// sha256 of the operation and the input: a retry must carry the same request.
    pub fingerprint: [u8; 32],
    pub operation: String,
    /// `Ok(output)` or `Err(rejection reason)`.
    pub result: Result<Vec<u8>, String>,
    /// The digest of the plugin version that produced it.
    pub digest: String,
    /// The chain the invocation belonged to, answered again on a replay (`None` for
    /// outcomes stored before every call had one).
    pub correlation_id: Option<String>,
    /// Unix milliseconds.
    pub created_at: i64,
    /// Unix milliseconds; from then on the key may be used again.
    pub expires_at: i64,
}

/// A saga as stored: its definition's name, its input, and its state machine's state
/// (JSON), versioned so that only the driver that read a version may write the next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SagaRow {
    pub id: String,
    pub name: String,
    /// `running`, `compensating`, `completed`, `compensated` or `stuck`.
    pub status: String,
    pub input: Vec<u8>,
    pub state: String,
    pub version: u64,
    /// The `Idempotency-Key` that started it, and the sha256 of its input.
    pub key: String,
    pub fingerprint: [u8; 32],
    /// Unix ms.
    pub created_at: i64,
    pub updated_at: i64,
}

/// A saga definition as kept for the sagas that started with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefinitionRow {
    /// The digest of its steps (what a saga records).
    pub digest: String,
    pub name: String,
    /// The TOML.
    pub text: String,
    /// Unix ms.
    pub saved_at: i64,
}

/// A change to a saga, committed together with the step invocation that caused it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SagaChange {
    /// A new saga; refused with [`StoreError::Duplicate`] if its (name, key) exists.
    Create(SagaRow),
    /// The next state of a saga at `version` (it becomes `version + 1`).
    Update { id: String, version: u64, status: String, state: String, at: i64 },
}

/// An event of the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRow {
    /// Increasing in commit order.
    pub id: i64,
    /// The service that published it.
    pub service: String,
    pub topic: String,
    pub payload: Vec<u8>,
    pub correlation_id: Option<String>,
    /// Unix ms.
    pub created_at: i64,
}

/// One event's delivery to one subscriber.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryRow {
    pub event_id: i64,
    pub subscriber: String,
    pub operation: String,
    pub topic: String,
    pub correlation_id: Option<String>,
    /// `pending`, `delivered` or `dead`.
    pub status: String,
    pub attempts: u32,
    /// Unix ms: not before then.
    pub next_at: i64,
    /// `ok` or `rejected` once delivered.
    pub outcome: Option<String>,
    pub last_error: Option<String>,
    pub created_at: i64,
    pub done_at: Option<i64>,
}

/// One page of an event chain, read in one snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChainPage {
    /// Oldest first.
    pub events: Vec<EventRow>,
    /// The deliveries of those events, by event and subscriber.
    pub deliveries: Vec<DeliveryRow>,
    /// The last event the dispatcher has made the deliveries of.
    pub dispatched_through: i64,
}

/// A change to the deliveries, committed through the writer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryChange {
    /// New deliveries, for the events up to `through` (the dispatch cursor moves there).
    Create { deliveries: Vec<DeliveryRow>, through: i64 },
    /// The result of one attempt.
    Update {
        event_id: i64,
        subscriber: String,
        status: String,
        attempts: u32,
        next_at: i64,
        outcome: Option<String>,
        last_error: Option<String>,
        done_at: Option<i64>,
    },
    /// A dead delivery back to pending (an operator's redelivery).
    Redeliver { event_id: i64, subscriber: String, at: i64 },
}

/// One atomic unit for the commit pipeline.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Commit {
    pub service: String,
    pub changes: ChangeSet,
    /// The correlation id stored with the events.
    pub correlation_id: Option<String>,
    /// The idempotency record to store with the changes, if this is an invocation.
    pub outcome: Option<StoredOutcome>,
    /// The saga transition this commit carries, if any.
    pub saga: Option<SagaChange>,
    /// Changes to event deliveries.
    pub deliveries: Vec<DeliveryChange>,
    /// Saga definition versions to keep (replacing the text kept for the same digest).
    pub definitions: Vec<DefinitionRow>,
}

/// Resolves when a commit is durable (or refused).
pub type CommitFuture = Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send>>;

/// A storage backend for versioned records and idempotency records.
pub trait RecordStore: Send + Sync + 'static {
    /// A snapshot of `service`'s records as of now.
    fn snapshot(&self, service: &str) -> Result<Box<dyn Snapshot>, StoreError>;

    /// Atomically validate and apply `commit`: every read must still be at the version
    /// read, every write's version check must hold, and the idempotency record (if any)
    /// must not exist unexpired. On any mismatch nothing is written: the first conflict
    /// is returned, or [`StoreError::Duplicate`].
    fn commit(&self, commit: Commit) -> CommitFuture;

    /// The unexpired stored outcome of `key`, if any.
    fn outcome(&self, key: &IdempotencyKey, now: i64) -> Result<Option<StoredOutcome>, StoreError>;
}
