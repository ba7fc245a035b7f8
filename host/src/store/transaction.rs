//! One invocation's view of its service's records: snapshot reads, a read set, and
//! buffered writes that the backend validates at commit.

use std::collections::BTreeMap;

use super::{Conflict, Entry, Slot, Snapshot, StoreError};

/// Bounds on what one invocation may read and write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxLimits {
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
    pub max_writes: usize,
    pub max_scan: usize,
    pub max_events: usize,
}

impl Default for TxLimits {
    fn default() -> Self {
        TxLimits {
            max_key_bytes: 512,
            max_value_bytes: 1 << 20,
            max_writes: 1000,
            max_scan: 1000,
            max_events: 1000,
        }
    }
}

/// A buffered write: the new value (`None` deletes) and the version it will have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    pub key: String,
    pub value: Option<Vec<u8>>,
    /// The version the record has after this write (a delete also takes a version,
    /// as a tombstone).
    pub version: u64,
}

/// An event to publish with the commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub topic: String,
    pub payload: Vec<u8>,
    /// The chain the plugin put it in; `None`: the invocation's own.
    pub correlation_id: Option<String>,
}

/// What one invocation wants committed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChangeSet {
    /// Every key read or written, with the version (tombstones included, 0 for never
    /// written) it had in the snapshot. The commit requires each one unchanged.
    pub reads: Vec<(String, u64)>,
    pub writes: Vec<Write>,
    /// Published events, in order.
    pub events: Vec<Event>,
}

/// One invocation's transaction over one service's records.
pub struct Transaction {
    snapshot: Box<dyn Snapshot>,
    limits: TxLimits,
    /// Snapshot version of every key this transaction depends on.
    reads: BTreeMap<String, u64>,
    /// The latest buffered state of every written key.
    writes: BTreeMap<String, Slot>,
    events: Vec<Event>,
}

impl std::fmt::Debug for Transaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transaction")
            .field("reads", &self.reads)
            .field("writes", &self.writes.keys().collect::<Vec<_>>())
            .field("events", &self.events.len())
            .finish()
    }
}

impl Transaction {
    pub fn new(snapshot: Box<dyn Snapshot>, limits: TxLimits) -> Self {
        Transaction { snapshot, limits, reads: BTreeMap::new(), writes: BTreeMap::new(), events: Vec::new() }
    }

    /// The record at `key` as this transaction sees it (its own writes included).
    /// A key that cannot exist (empty, too long) reads as absent and is not tracked.
    pub fn get(&mut self, key: &str) -> Result<Option<Entry>, StoreError> {
        if self.check_key(key).is_err() {
            return Ok(None);
        }
        Ok(self.slot(key)?.entry())
    }

    /// Writes `value` at `key` on top of whatever this transaction sees there.
    pub fn set(&mut self, key: &str, value: Vec<u8>) -> Result<u64, StoreError> {
        self.write(key, Some(value), None)
    }

    /// Compare-and-set: `expected` `None` creates only if absent; `Some(v)` replaces
    /// only if the record is at `v`.
    pub fn put(&mut self, key: &str, value: Vec<u8>, expected: Option<u64>) -> Result<u64, StoreError> {
        self.write(key, Some(value), Some(expected))
    }

    /// Deletes the record; with `Some(v)`, only if it is at `v`. Deleting an absent
    /// record succeeds and changes nothing.
    pub fn delete(&mut self, key: &str, expected: Option<u64>) -> Result<(), StoreError> {
        self.check_key(key)?;
        let current = self.slot(key)?;
        if let Some(v) = expected {
            Self::expect(key, &current, Some(v))?;
        }
        if current.value.is_some() {
            let version = self.next_version(key);
            self.buffer(key, Slot { value: None, version })?;
        }
        Ok(())
    }

    /// Records with `prefix`, after `start_after`, in key order, at most `limit`
    /// (capped by [`TxLimits::max_scan`]); buffered writes included. Returned records
    /// join the read set.
    pub fn scan(
        &mut self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Entry)>, StoreError> {
        let limit = limit.min(self.limits.max_scan);
        let in_range = |key: &str| key.starts_with(prefix) && start_after.is_none_or(|after| key > after);
        let buffered: Vec<(&String, &Slot)> = self.writes.iter().filter(|(k, _)| in_range(k)).collect();
        // Buffered deletes can hide at most `buffered.len()` stored rows.
        let stored = self.snapshot.scan(prefix, start_after, limit + buffered.len())?;
        let mut merged: BTreeMap<String, Entry> = stored.into_iter().collect();
        for (key, slot) in buffered {
            match slot.entry() {
                Some(entry) => merged.insert(key.clone(), entry),
                None => merged.remove(key),
            };
        }
        let rows: Vec<(String, Entry)> = merged.into_iter().take(limit).collect();
        // Only what is returned joins the read set (a buffered key is there already).
        for (key, entry) in &rows {
            if !self.writes.contains_key(key) {
                self.reads.entry(key.clone()).or_insert(entry.version);
            }
        }
        Ok(rows)
    }

    /// Adds an event to the outbox of this transaction, in the chain `correlation_id`
    /// if given (else the invocation's).
    pub fn publish(
        &mut self,
        topic: &str,
        payload: Vec<u8>,
        correlation_id: Option<String>,
    ) -> Result<(), StoreError> {
        if topic.is_empty() || topic.len() > self.limits.max_key_bytes {
            return Err(StoreError::Invalid(format!(
                "an event topic must be 1 to {} bytes",
                self.limits.max_key_bytes
            )));
        }
        if payload.len() > self.limits.max_value_bytes {
            return Err(self.too_large("an event payload", payload.len()));
        }
        if self.events.len() >= self.limits.max_events {
            return Err(StoreError::Invalid(format!(
                "more than {} events in one invocation",
                self.limits.max_events
            )));
        }
        if let Some(id) = &correlation_id {
            crate::service::validate_correlation_id(id)
                .map_err(|e| StoreError::Invalid(format!("an event's correlation id: {e}")))?;
        }
        self.events.push(Event { topic: topic.to_owned(), payload, correlation_id });
        Ok(())
    }

    /// The reads, writes and events to commit.
    pub fn into_changes(self) -> ChangeSet {
        ChangeSet {
            reads: self.reads.into_iter().collect(),
            writes: self
                .writes
                .into_iter()
                .map(|(key, slot)| Write { key, value: slot.value, version: slot.version })
                .collect(),
            events: self.events,
        }
    }

    fn write(
        &mut self,
        key: &str,
        value: Option<Vec<u8>>,
        expected: Option<Option<u64>>,
    ) -> Result<u64, StoreError> {
        self.check_key(key)?;
        if let Some(value) = &value
            && value.len() > self.limits.max_value_bytes
        {
            return Err(self.too_large("a value", value.len()));
        }
        let current = self.slot(key)?;
        if let Some(expected) = expected {
            Self::expect(key, &current, expected)?;
        }
        let version = self.next_version(key);
        self.buffer(key, Slot { value, version })?;
        Ok(version)
    }

    /// A commit moves a record up by exactly one version, however many times the
    /// invocation wrote it: the version counts committed changes.
    fn next_version(&self, key: &str) -> u64 {
        self.reads.get(key).copied().unwrap_or(0) + 1
    }

    fn expect(key: &str, current: &Slot, expected: Option<u64>) -> Result<(), StoreError> {
        let actual = current.visible_version();
        if actual == expected {
            Ok(())
        } else {
            Err(Conflict { key: key.to_owned(), expected, actual }.into())
        }
    }

    fn buffer(&mut self, key: &str, slot: Slot) -> Result<(), StoreError> {
        if !self.writes.contains_key(key) && self.writes.len() >= self.limits.max_writes {
            return Err(StoreError::Invalid(format!(
                "more than {} records written in one invocation",
                self.limits.max_writes
            )));
        }
        self.writes.insert(key.to_owned(), slot);
        Ok(())
    }

    /// The current slot: the buffered write, else the snapshot (recorded in the read set).
    fn slot(&mut self, key: &str) -> Result<Slot, StoreError> {
        if let Some(slot) = self.writes.get(key) {
            return Ok(slot.clone());
        }
        let slot = self.snapshot.get(key)?;
        self.reads.entry(key.to_owned()).or_insert(slot.version);
        Ok(slot)
    }

    fn check_key(&self, key: &str) -> Result<(), StoreError> {
        if key.is_empty() || key.len() > self.limits.max_key_bytes {
            return Err(StoreError::Invalid(format!(
                "a key must be 1 to {} bytes, `{}` is {}",
                self.limits.max_key_bytes,
                key.chars().take(40).collect::<String>(),
                key.len()
            )));
        }
        Ok(())
    }

    fn too_large(&self, what: &str, len: usize) -> StoreError {
        StoreError::Invalid(format!(
            "{what} of {len} bytes is over the limit of {} bytes",
            self.limits.max_value_bytes
        ))
    }
}
