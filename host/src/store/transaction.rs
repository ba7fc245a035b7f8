//! One invocation's view of its service's records: snapshot reads, a read set, and
//! buffered writes that the backend validates at commit.

use std::collections::BTreeMap;

use super::{Conflict, Entry, Slot, Snapshot, StoreError};

/// Bounds on what one invocation may read and write, so that no call can make the
/// host hold more than a few tens of MiB for it (1,000 writes and 1,000 events of 1 MiB
/// each once made one call hold about 2 GiB).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxLimits {
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
    pub max_writes: usize,
    /// Records one scan returns at most.
    pub max_scan: usize,
    /// Bytes of values one scan returns at most: a scan stops early (the plugin goes on
    /// with `start-after`).
    pub max_scan_bytes: usize,
    pub max_events: usize,
    /// Bytes of written values and event payloads together.
    pub max_total_bytes: usize,
    /// Records one invocation may read (its read set, checked at commit).
    pub max_reads: usize,
}

impl Default for TxLimits {
    fn default() -> Self {
        TxLimits {
            max_key_bytes: 512,
            max_value_bytes: 1 << 20,
            max_writes: 1000,
            max_scan: 1000,
            max_scan_bytes: 4 << 20,
            max_events: 1000,
            max_total_bytes: 16 << 20,
            max_reads: 10_000,
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
    /// Who receives it, fixed when it is published (the invocation path sets it from
    /// the services serving then); `None` leaves it to the dispatcher's view when it
    /// fans the event out.
    pub subscribers: Option<Vec<super::Subscriber>>,
}

impl Event {
    pub fn new(topic: &str, payload: &[u8], correlation_id: Option<&str>) -> Event {
        Event {
            topic: topic.into(),
            payload: payload.to_vec(),
            correlation_id: correlation_id.map(str::to_owned),
            subscribers: None,
        }
    }
}

/// Keys and topics are text that every backend keeps as it is: PostgreSQL's text
/// cannot hold a NUL character, so none may.
pub const NUL_IN_KEY: &str = "a key may not contain a NUL character";

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
    /// Bytes of the buffered values and event payloads.
    bytes: usize,
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
        Transaction {
            snapshot,
            limits,
            reads: BTreeMap::new(),
            writes: BTreeMap::new(),
            events: Vec::new(),
            bytes: 0,
        }
    }

    /// The record at `key` as this transaction sees it (its own writes included).
    /// A key that cannot exist (empty, too long) reads as absent and is not tracked.
    pub async fn get(&mut self, key: &str) -> Result<Option<Entry>, StoreError> {
        if self.check_key(key).is_err() {
            return Ok(None);
        }
        Ok(self.slot(key).await?.entry())
    }

    /// Writes `value` at `key` on top of whatever this transaction sees there.
    pub async fn set(&mut self, key: &str, value: Vec<u8>) -> Result<u64, StoreError> {
        self.write(key, Some(value), None).await
    }

    /// Compare-and-set: `expected` `None` creates only if absent; `Some(v)` replaces
    /// only if the record is at `v`.
    pub async fn put(&mut self, key: &str, value: Vec<u8>, expected: Option<u64>) -> Result<u64, StoreError> {
        self.write(key, Some(value), Some(expected)).await
    }

    /// Deletes the record; with `Some(v)`, only if it is at `v`. Deleting an absent
    /// record succeeds and changes nothing.
    pub async fn delete(&mut self, key: &str, expected: Option<u64>) -> Result<(), StoreError> {
        self.check_key(key)?;
        let current = self.slot(key).await?;
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
    pub async fn scan(
        &mut self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Entry)>, StoreError> {
        let limit = limit.min(self.limits.max_scan);
        let in_range = |key: &str| key.starts_with(prefix) && start_after.is_none_or(|after| key > after);
        let buffered: Vec<(&String, &Slot)> = self.writes.iter().filter(|(k, _)| in_range(k)).collect();
        // Buffered deletes can hide at most `buffered.len()` stored rows.
        let stored = self
            .snapshot
            .scan(prefix, start_after, limit + buffered.len(), self.limits.max_scan_bytes)
            .await?;
        // A scan cut short may have stored records past its last one, unseen: buffered
        // records past it wait for the next page, so that no record is skipped.
        let cut = (!stored.complete).then(|| stored.rows.last().map(|(k, _)| k.clone())).flatten();
        let mut merged: BTreeMap<String, Entry> = stored.rows.into_iter().collect();
        for (key, slot) in buffered {
            if cut.as_ref().is_some_and(|cut| key > cut) {
                continue;
            }
            match slot.entry() {
                Some(entry) => merged.insert(key.clone(), entry),
                None => merged.remove(key),
            };
        }
        // At most `max_scan_bytes` of values (always at least one record, so that a
        // plugin paging with `start-after` moves on).
        let mut budget = self.limits.max_scan_bytes;
        let rows: Vec<(String, Entry)> = merged
            .into_iter()
            .take(limit)
            .enumerate()
            .take_while(|(i, (_, entry))| {
                let fits = *i == 0 || entry.value.len() <= budget;
                budget = budget.saturating_sub(entry.value.len());
                fits
            })
            .map(|(_, row)| row)
            .collect();
        let new_reads =
            rows.iter().filter(|(k, _)| !self.writes.contains_key(k) && !self.reads.contains_key(k)).count();
        self.check_reads(new_reads)?;
        // Only what is returned joins the read set (a buffered key is there already).
        for (key, entry) in &rows {
            if !self.writes.contains_key(key) {
                self.read(key, entry.version);
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
        if topic.contains('\0') {
            return Err(StoreError::Invalid("an event topic may not contain a NUL character".into()));
        }
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
        self.add_bytes(payload.len())?;
        if let Some(id) = &correlation_id {
            crate::service::validate_correlation_id(id)
                .map_err(|e| StoreError::Invalid(format!("an event's correlation id: {e}")))?;
        }
        self.events.push(Event { topic: topic.to_owned(), payload, correlation_id, subscribers: None });
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

    async fn write(
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
        let current = self.slot(key).await?;
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
        let replaced = self.writes.get(key).and_then(|s| s.value.as_ref()).map_or(0, Vec::len);
        self.add_bytes(slot.value.as_ref().map_or(0, Vec::len))?;
        self.bytes -= replaced;
        self.writes.insert(key.to_owned(), slot);
        Ok(())
    }

    /// Counts `len` more bytes of values and payloads, within `max_total_bytes`.
    fn add_bytes(&mut self, len: usize) -> Result<(), StoreError> {
        if self.bytes + len > self.limits.max_total_bytes {
            return Err(StoreError::Invalid(format!(
                "more than {} bytes of values and events in one invocation",
                self.limits.max_total_bytes
            )));
        }
        self.bytes += len;
        Ok(())
    }

    /// Puts `key` at `version` in the read set. Reads that are not one snapshot (see
    /// `Store::invocation_reads`) may see one key at two versions: the lower one is
    /// kept, which is not the database's, so the commit is refused and the call runs
    /// again, rather than commit a value computed from the older version as if it had
    /// read the newer one.
    fn read(&mut self, key: &str, version: u64) {
        self.reads.entry(key.to_owned()).and_modify(|kept| *kept = (*kept).min(version)).or_insert(version);
    }

    /// Refuses reading `more` records past `max_reads` (the read set is checked at
    /// commit, one lookup each).
    fn check_reads(&self, more: usize) -> Result<(), StoreError> {
        if self.reads.len() + more > self.limits.max_reads {
            return Err(StoreError::Invalid(format!(
                "more than {} records read in one invocation",
                self.limits.max_reads
            )));
        }
        Ok(())
    }

    /// The current slot: the buffered write, else the snapshot (recorded in the read set).
    async fn slot(&mut self, key: &str) -> Result<Slot, StoreError> {
        if let Some(slot) = self.writes.get(key) {
            return Ok(slot.clone());
        }
        if !self.reads.contains_key(key) {
            self.check_reads(1)?;
        }
        let slot = self.snapshot.get(key).await?;
        self.read(key, slot.version);
        Ok(slot)
    }

    fn check_key(&self, key: &str) -> Result<(), StoreError> {
        if key.contains('\0') {
            return Err(StoreError::Invalid(NUL_IN_KEY.into()));
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use crate::store::{Commit, Store};

    fn tx(store: &Arc<dyn Store>, limits: TxLimits) -> Transaction {
        Transaction::new(store.snapshot("svc").unwrap(), limits)
    }

    fn refused(error: StoreError, expected: &str) {
        match error {
            StoreError::Invalid(message) => assert!(message.contains(expected), "{message}"),
            other => panic!("{other:?}"),
        }
    }

    /// Values and event payloads together stay within `max_total_bytes`; writing a key
    /// again counts its latest value only.
    #[tokio::test]
    async fn one_invocation_writes_a_bounded_number_of_bytes() {
        let store = crate::app::scratch_store().unwrap();
        let limits = TxLimits { max_total_bytes: 10, ..TxLimits::default() };
        let mut t = tx(&store, limits);
        t.set("a", vec![0; 4]).await.unwrap();
        t.set("a", vec![0; 6]).await.unwrap();
        t.publish("topic", vec![0; 4], None).unwrap();
        refused(t.set("b", vec![0; 1]).await.unwrap_err(), "more than 10 bytes of values and events");
        refused(t.publish("topic", vec![0; 1], None).unwrap_err(), "more than 10 bytes");
        t.delete("a", None).await.unwrap();
        t.set("b", vec![0; 6]).await.unwrap();
    }

    /// The read set is bounded: each record read counts once, scans included.
    #[tokio::test]
    async fn one_invocation_reads_a_bounded_number_of_records() {
        let store = crate::app::scratch_store().unwrap();
        let mut seed = tx(&store, TxLimits::default());
        for key in ["p/1", "p/2", "p/3"] {
            seed.set(key, b"x".to_vec()).await.unwrap();
        }
        let commit = Commit { service: "svc".into(), changes: seed.into_changes(), ..Commit::default() };
        store.commit(commit).await.unwrap();
        let mut t = tx(&store, TxLimits { max_reads: 3, ..TxLimits::default() });
        t.get("a").await.unwrap();
        t.get("a").await.unwrap();
        t.get("p/1").await.unwrap();
        assert_eq!(t.scan("p/", Some("p/1"), 1).await.unwrap().len(), 1, "p/2: the third read");
        refused(t.scan("p/", Some("p/2"), 10).await.unwrap_err(), "more than 3 records read");
        refused(t.get("z").await.unwrap_err(), "more than 3 records read");
    }

    /// A scan returns at most `max_scan_bytes` of values, and always one record.
    #[tokio::test]
    async fn a_scan_stops_at_its_byte_budget() {
        let store = crate::app::scratch_store().unwrap();
        let mut seed = tx(&store, TxLimits::default());
        for (key, size) in [("k/1", 6), ("k/2", 6), ("k/3", 1)] {
            seed.set(key, vec![b'x'; size]).await.unwrap();
        }
        let commit = Commit { service: "svc".into(), changes: seed.into_changes(), ..Commit::default() };
        store.commit(commit).await.unwrap();
        let mut t = tx(&store, TxLimits { max_scan_bytes: 10, ..TxLimits::default() });
        let keys = |rows: Vec<(String, Entry)>| rows.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
        assert_eq!(keys(t.scan("k/", None, 10).await.unwrap()), ["k/1"], "k/2 would pass 10 bytes");
        assert_eq!(keys(t.scan("k/", Some("k/1"), 10).await.unwrap()), ["k/2", "k/3"]);
        let mut tight = tx(&store, TxLimits { max_scan_bytes: 1, ..TxLimits::default() });
        assert_eq!(keys(tight.scan("k/", None, 10).await.unwrap()), ["k/1"], "one record at least");
    }
}
