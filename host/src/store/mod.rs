//! The storage contract: everything the host persists, behind one trait.
//!
//! - [`Store`] is what a backend implements: consistent read snapshots per service, one
//!   atomic, validated [`Store::commit`] that carries records, the idempotency record,
//!   outbox events, a saga transition, delivery changes and definition versions
//!   together, and the queries of sagas (`sagas.rs`), events and deliveries
//!   (`outbox.rs`), uploaded plugins, retention and health. Its behaviour is pinned by one test suite
//!   (`contract_tests/`) that every backend runs.
//! - [`Transaction`] is one invocation's view: it reads from a snapshot, records every
//!   version it read (the read set), buffers writes, and produces the [`ChangeSet`]
//!   that the backend validates and applies at commit.
//! - The backends implement it, each in a module of its own: [`sqlite`] (embedded, one
//!   process per data directory) and [`postgres`] (shared by several hosts). This module
//!   names neither: code that imports from `store` alone depends on the contract; the
//!   wiring (`app.rs`, `cli/`) chooses a backend.
//!
//! Reads are asynchronous: a snapshot's `get` and `scan` may go to the database.
//!
//! Versions are per key and never go back: a record starts at version 1, every write
//! adds 1, and a delete leaves a tombstone, so a record created again continues from
//! the deleted version and an old version number can never match again.

#[cfg(test)]
mod contract_tests;
pub(crate) mod health;
mod outbox;
pub mod portable;
pub mod postgres;
mod sagas;
pub mod sqlite;
mod transaction;
mod wakeups;

use std::future::Future;

use crate::service::PluginDigest;
use std::pin::Pin;

pub use outbox::{ChainPage, DeliveryChange, DeliveryRow, DeliveryStatus, EventRow, Subscriber, Unfanned};
pub(crate) use outbox::{attempt_refused, saga_moved};
pub use sagas::{DefinitionRow, SagaChange, SagaRow, SagaStatus};
pub use transaction::{ChangeSet, Event, NUL_IN_KEY, Transaction, TxLimits, Write};
pub use wakeups::Wakeups;

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
    /// The saga or delivery a commit carries is not where the commit expects it: it
    /// moved on (another host took the saga over, an operator acted, another attempt
    /// was recorded). Running the call again cannot change that: the caller reads
    /// where it is now. Nothing was written.
    #[error("{0}; it moved on")]
    Moved(Conflict),
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

/// A consistent, read-only view of one service's records. Its reads are `async`: a
/// network database answers later, and plugin imports await them.
#[async_trait::async_trait]
pub trait Snapshot: Send {
    /// The slot at `key` (tombstones included; [`Slot::EMPTY`] if never written).
    async fn get(&mut self, key: &str) -> Result<Slot, StoreError>;

    /// Existing records whose key starts with `prefix` and sorts after `start_after`,
    /// in key order: at most `limit`, and no more than `max_bytes` of values past the
    /// first record (a scan of large values stops early; the caller pages on).
    async fn scan(
        &mut self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Scanned, StoreError>;

    /// Whether every read sees one moment. Only an invocation's reads may not
    /// ([`Store::invocation_reads`]): their commit checks them instead.
    fn one_moment(&self) -> bool {
        true
    }
}

/// What one page of a list reads whole: its rows' sizes (ids and lengths read first,
/// without the values), then as many rows as fit in `max_bytes`, at least the first
/// whatever its size; and whether more may follow (the page was cut short, or is
/// full). So a list of 1,000 sagas or events of a MiB each is answered a few MiB at a
/// time, not held whole.
pub(crate) fn fitting(sizes: &[usize], limit: usize, max_bytes: usize) -> (usize, bool) {
    let mut total = 0usize;
    let mut take = 0;
    for size in sizes {
        total = total.saturating_add(*size);
        if take > 0 && total > max_bytes {
            return (take, true);
        }
        take += 1;
    }
    (take, sizes.len() >= limit)
}

/// The most bytes of values one page of sagas or of a chain's events holds past its
/// first row (see [`fitting`]), as the records list holds.
pub const PAGE_BYTES: usize = 4 << 20;

/// How many of the latest sagas a search looks into by input value, and the largest
/// input it parses (`Store::search_sagas`): a search is an operator's look-up, bounded
/// so that a few of them at once cannot take the store (10,000 inputs of up to 1 MiB
/// each were parsed per search before).
pub const SEARCHED: usize = 1000;
pub const SEARCHED_INPUT: usize = 64 << 10;

/// A page of sagas, and whether more may follow.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SagaPage {
    pub sagas: Vec<SagaRow>,
    pub more: bool,
}

/// The records a scan found, in key order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scanned {
    pub rows: Vec<(String, Entry)>,
    /// True when the range has no record after these: the scan was not cut short by
    /// its limit or its byte budget.
    pub complete: bool,
}

impl Scanned {
    /// Where a scan of `prefix` after `start_after` starts reading, and whether that key
    /// itself is in: keys sort in byte order in every backend, so the keys with a
    /// prefix are one contiguous range, read on from its start until the first key
    /// without the prefix ([`Scanned::collect`]).
    pub(crate) fn start<'a>(prefix: &'a str, start_after: Option<&'a str>) -> (&'a str, bool) {
        match start_after {
            Some(after) if after >= prefix => (after, false),
            _ => (prefix, true),
        }
    }

    /// What a backend's scan returns of `rows`, read in key order from the start of
    /// the range (at most `limit` of them): the rows up to the first key without
    /// `prefix`, and no more than `max_bytes` of values past the first row.
    pub(crate) fn collect(
        rows: impl IntoIterator<Item = Result<(String, Entry), StoreError>>,
        prefix: &str,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Scanned, StoreError> {
        let mut found = Vec::new();
        let mut bytes = 0;
        for row in rows {
            let (key, entry) = row?;
            if !key.starts_with(prefix) {
                return Ok(Scanned { rows: found, complete: true });
            }
            bytes += entry.value.len();
            if !found.is_empty() && bytes > max_bytes {
                return Ok(Scanned { rows: found, complete: false });
            }
            found.push((key, entry));
        }
        let complete = found.len() < limit;
        Ok(Scanned { rows: found, complete })
    }
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
    /// The plugin version that produced it.
    pub digest: PluginDigest,
    /// The chain the invocation belonged to, answered again on a replay (`None` for
    /// outcomes stored before every call had one).
    pub correlation_id: Option<String>,
    /// Unix milliseconds.
    pub created_at: i64,
    /// Unix milliseconds; from then on the key may be used again.
    pub expires_at: i64,
}

/// The latest change operators made to a service through the admin API: an uploaded
/// version, or its removal. Kept so that a restart, and every other host on a shared
/// store, serves the same.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadRow {
    pub service: String,
    /// The version to serve, or `None`: the service was removed.
    pub component: Option<Uploaded>,
    /// The digest of the plugins directory's file for the service when it was
    /// uploaded or removed (`None`: there was none). If that file changes later, the
    /// file wins.
    pub base: Option<PluginDigest>,
    /// Unix ms.
    pub uploaded_at: i64,
}

/// An uploaded component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uploaded {
    pub digest: PluginDigest,
    pub wasm: Vec<u8>,
}

impl UploadRow {
    pub fn stamp(&self) -> UploadStamp {
        UploadStamp {
            service: self.service.clone(),
            digest: self.component.as_ref().map(|c| c.digest),
            uploaded_at: self.uploaded_at,
        }
    }
}

/// What tells one kept change from another without its bytes: hosts compare these
/// every few seconds to follow changes made through other hosts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadStamp {
    pub service: String,
    /// `None`: removed.
    pub digest: Option<PluginDigest>,
    pub uploaded_at: i64,
}

/// A change to the kept uploads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UploadChange {
    /// Keep this change for its service (replacing the one kept).
    Keep(UploadRow),
    /// Forget the change kept for this service, if there is one.
    Discard { service: String },
}

/// One atomic unit for the commit pipeline.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Commit {
    pub service: String,
    pub changes: ChangeSet,
    /// The correlation id stored with the events.
    pub correlation_id: Option<String>,
    /// The W3C `traceparent` stored with the events: the span of the invocation that
    /// published them, the parent of their deliveries' spans (`trace.rs`).
    pub traceparent: Option<String>,
    /// The idempotency record to store with the changes, if this is an invocation.
    pub outcome: Option<StoredOutcome>,
    /// The saga transition this commit carries, if any.
    pub saga: Option<SagaChange>,
    /// Changes to event deliveries.
    pub deliveries: Vec<DeliveryChange>,
    /// Saga definition versions to keep (replacing the text kept for the same digest).
    pub definitions: Vec<DefinitionRow>,
    /// Operators' plugin changes to keep or forget.
    pub uploads: Vec<UploadChange>,
}

/// Resolves when a commit is durable (or refused).
pub type CommitFuture = Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send>>;

/// Why the store cannot write, since when (unix ms): a full disk, a failing fsync.
/// Writes are refused meanwhile; the backend recovers by itself once it can write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failing {
    pub reason: String,
    pub since: i64,
}

/// What retention forgets (see [`Store::prune`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PruneKind {
    /// Idempotency records that expired before `before`.
    Outcomes,
    /// Completed and compensated sagas last changed before `before`.
    Sagas,
    /// Events published before `before` whose deliveries are all delivered, with their
    /// deliveries.
    Events,
    /// Tombstones of records deleted before `before`.
    Tombstones,
}

impl PruneKind {
    pub const ALL: [PruneKind; 4] =
        [PruneKind::Outcomes, PruneKind::Sagas, PruneKind::Events, PruneKind::Tombstones];

    pub fn as_str(self) -> &'static str {
        match self {
            PruneKind::Outcomes => "idempotency_records",
            PruneKind::Sagas => "sagas",
            PruneKind::Events => "events",
            PruneKind::Tombstones => "tombstones",
        }
    }
}

/// Everything the host persists. Reads are consistent per call (a [`ChainPage`] is one
/// moment of its chain); writes happen only through [`Store::commit`] (and
/// [`Store::prune`]), atomically. `Unavailable` means the backend failed and nothing
/// was written; `Overloaded` that it refused to queue more (retry shortly).
#[async_trait::async_trait]
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    // Records and idempotency.

    /// A snapshot of `service`'s records as of its first read. Plugin imports read
    /// through it synchronously, inside a call.
    fn snapshot(&self, service: &str) -> Result<Box<dyn Snapshot>, StoreError>;

    /// What an invocation reads `service`'s records through. Every record it reads is
    /// checked again at its commit (its read set), so a backend may answer from what it
    /// keeps in memory and read the rest without a snapshot (PostgreSQL does: a read
    /// there is a network round trip); the commit is refused if any read was stale.
    /// A snapshot unless the backend says otherwise.
    fn invocation_reads(&self, service: &str) -> Result<Box<dyn Snapshot>, StoreError> {
        self.snapshot(service)
    }

    /// Atomically validate and apply `commit`: every read must still be at the version
    /// read, every write's version check must hold, the idempotency record (if any)
    /// must not exist unexpired, a saga created must be new for its (name, key), a saga
    /// updated must still be at its version. On any mismatch nothing is written: the
    /// first conflict is returned, or [`StoreError::Duplicate`]. The commit is queued
    /// when this is called (before the future is polled): commits made one after the
    /// other by one task are applied in that order.
    fn commit(&self, commit: Commit) -> CommitFuture;

    /// The unexpired stored outcome of `key`, if any.
    async fn outcome(&self, key: &IdempotencyKey, now: i64) -> Result<Option<StoredOutcome>, StoreError>;

    // Sagas.

    /// The saga with this id.
    async fn saga(&self, id: &str) -> Result<Option<SagaRow>, StoreError>;

    /// The saga of definition `name` started with idempotency key `key`.
    async fn saga_by_key(&self, name: &str, key: &str) -> Result<Option<SagaRow>, StoreError>;

    /// Sagas in id order (ids sort by creation time), optionally of one status, after
    /// the id `after` (before it, newest first), at most `limit` and no more than
    /// `max_bytes` of inputs and states past the first ([`fitting`]).
    async fn sagas(
        &self,
        status: Option<SagaStatus>,
        after: Option<&str>,
        limit: usize,
        newest_first: bool,
        max_bytes: usize,
    ) -> Result<SagaPage, StoreError>;

    /// Sagas that are running or compensating, in id order: the ones to resume after a
    /// restart.
    async fn unfinished_sagas(&self) -> Result<Vec<SagaRow>, StoreError>;

    // Hosts: several hosts on one store (see `cluster.rs`).

    /// Says host `host` is alive until `until` (unix ms), and returns the host that
    /// leads now: of the hosts alive at `now`, the one alive the longest (then by id). A
    /// backend that only one host can open at a time (SQLite) knows that every other
    /// host it remembers is gone.
    async fn heartbeat(&self, host: &str, now: i64, until: i64) -> Result<String, StoreError>;

    /// Takes over, for `host`, at most `limit` running or compensating sagas (oldest
    /// first) whose owner is no live host at `now` (or that have none), and returns
    /// them: `host` drives them from then on, and the old owner's updates are refused.
    /// Two hosts claiming at once never take the same saga.
    async fn claim_sagas(&self, host: &str, now: i64, limit: usize) -> Result<Vec<SagaRow>, StoreError>;

    /// How many sagas are in each status (statuses with none left out), by status.
    async fn saga_counts(&self) -> Result<Vec<(SagaStatus, u64)>, StoreError>;

    /// Sagas an operator may be looking for by `text`, newest first, at most `limit`:
    /// its id or idempotency key (any saga), or a value of its input's top-level fields
    /// (among the latest [`SEARCHED`] sagas, inputs of at most [`SEARCHED_INPUT`]).
    async fn search_sagas(&self, text: &str, limit: usize) -> Result<Vec<SagaRow>, StoreError>;

    /// The saga definition kept under `digest`.
    async fn definition(&self, digest: &str) -> Result<Option<DefinitionRow>, StoreError>;

    // Events and deliveries.

    /// The last event the dispatcher has made the deliveries of (0: none).
    async fn dispatched_through(&self) -> Result<i64, StoreError>;

    /// Events after `after`, oldest first, at most `limit`.
    async fn events_after(&self, after: i64, limit: usize) -> Result<Vec<EventRow>, StoreError>;

    /// The event with this id.
    async fn event(&self, id: i64) -> Result<Option<EventRow>, StoreError>;

    /// Events the dispatcher passed without making a delivery although their topic is
    /// one of `topics` (subscribed to now), among those kept without their subscribers
    /// (published by a wasaga from before they were kept): what an older wasaga lost
    /// when it gave an event an id at or below the cursor (or events published before
    /// their topic's subscriber came).
    async fn unfanned_events(&self, topics: &[String]) -> Result<Option<Unfanned>, StoreError>;

    /// Pending deliveries due by `now`, oldest event first, at most `limit`, leaving out
    /// each one whose group (subscriber, topic, correlation id) has an earlier pending
    /// delivery: within a correlation, a subscriber gets a topic's events in order.
    async fn due_deliveries(&self, now: i64, limit: usize) -> Result<Vec<DeliveryRow>, StoreError>;

    /// How many deliveries are in each status.
    async fn delivery_counts(&self) -> Result<Vec<(DeliveryStatus, u64)>, StoreError>;

    /// Dead deliveries, oldest event first, at most `limit`.
    async fn dead_deliveries(&self, limit: usize) -> Result<Vec<DeliveryRow>, StoreError>;

    /// A page of one chain: its events after event `after`, oldest first, at most
    /// `limit` and no more than `max_bytes` of payloads past the first ([`fitting`]),
    /// with their deliveries and the dispatcher's cursor, read in one snapshot.
    async fn chain(
        &self,
        correlation_id: &str,
        after: i64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<ChainPage, StoreError>;

    /// How many events the chain `correlation_id` has.
    async fn count_events_of(&self, correlation_id: &str) -> Result<u64, StoreError>;

    // Plugins.

    /// The changes kept (uploads and removals), by service.
    async fn uploads(&self) -> Result<Vec<UploadRow>, StoreError>;

    /// The same without the components' bytes: cheap enough to poll.
    async fn upload_stamps(&self) -> Result<Vec<UploadStamp>, StoreError>;

    // Retention and health.

    /// Forgets at most `batch` things of `kind` from before `before` (unix ms), off the
    /// commits' way; returns how many. Nothing it forgets is needed for a guarantee:
    /// only expired idempotency records; completed and compensated sagas; events whose
    /// deliveries are all delivered (never one not yet dispatched); tombstones, whose
    /// versions still count (a key created again goes on above them).
    async fn prune(&self, kind: PruneKind, before: i64, batch: usize) -> Result<usize, StoreError>;

    /// Why the store cannot write, while it cannot.
    fn failing(&self) -> Option<Failing>;

    /// The hints that wake the tasks looking for changes (`wakeups.rs`).
    fn wakeups(&self) -> std::sync::Arc<Wakeups>;
}
