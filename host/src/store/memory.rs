//! An in-memory [`RecordStore`]: the same semantics as the durable backend, nothing
//! persisted. Snapshots are cheap `Arc` clones of an immutable map per service;
//! commits copy-on-write under one mutex.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use super::{
    ChangeSet, Commit, CommitFuture, Conflict, IdempotencyKey, RecordStore, Scanned, Slot, Snapshot,
    StoreError, StoredOutcome,
};

type Records = Arc<BTreeMap<String, Slot>>;

/// Versioned records in memory.
#[derive(Debug, Default, Clone)]
pub struct MemoryStore {
    // A std mutex: it is held only to clone an Arc or to apply one commit, never
    // across an await.
    state: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    records: HashMap<String, Records>,
    outcomes: HashMap<IdempotencyKey, StoredOutcome>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }
}

struct MemorySnapshot(Records);

impl Snapshot for MemorySnapshot {
    fn get(&mut self, key: &str) -> Result<Slot, StoreError> {
        Ok(self.0.get(key).cloned().unwrap_or(Slot::EMPTY))
    }

    fn scan(
        &mut self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Scanned, StoreError> {
        use std::ops::Bound;
        let start = match start_after {
            Some(after) if after >= prefix => Bound::Excluded(after.to_owned()),
            _ => Bound::Included(prefix.to_owned()),
        };
        let mut range = self
            .0
            .range((start, Bound::Unbounded))
            .take_while(|(key, _)| key.starts_with(prefix))
            .filter_map(|(key, slot)| slot.entry().map(|e| (key.clone(), e)))
            .peekable();
        let mut scanned = Scanned::default();
        let mut bytes = 0;
        while let Some((_, entry)) = range.peek() {
            bytes += entry.value.len();
            if scanned.rows.len() == limit || (!scanned.rows.is_empty() && bytes > max_bytes) {
                return Ok(scanned);
            }
            scanned.rows.extend(range.next());
        }
        scanned.complete = true;
        Ok(scanned)
    }
}

impl RecordStore for MemoryStore {
    fn snapshot(&self, service: &str) -> Result<Box<dyn Snapshot>, StoreError> {
        let state = self.state.lock().expect("store mutex poisoned");
        let records = state.records.get(service).cloned().unwrap_or_default();
        Ok(Box::new(MemorySnapshot(records)))
    }

    fn commit(&self, commit: Commit) -> CommitFuture {
        let result = self.apply(&commit);
        Box::pin(std::future::ready(result))
    }

    fn outcome(&self, key: &IdempotencyKey, now: i64) -> Result<Option<StoredOutcome>, StoreError> {
        let state = self.state.lock().expect("store mutex poisoned");
        let stored = state.outcomes.get(key);
        Ok(stored.filter(|o| o.expires_at > now).cloned())
    }
}

impl MemoryStore {
    fn apply(&self, commit: &Commit) -> Result<(), StoreError> {
        if commit.saga.is_some() || !commit.deliveries.is_empty() || !commit.definitions.is_empty() {
            return Err(StoreError::Invalid(
                "sagas, saga definitions and event deliveries need the durable (SQLite) store".into(),
            ));
        }
        let mut state = self.state.lock().expect("store mutex poisoned");
        let State { records, outcomes } = &mut *state;
        if let Some(outcome) = &commit.outcome
            && outcomes.get(&outcome.key).is_some_and(|o| o.expires_at > outcome.created_at)
        {
            return Err(StoreError::Duplicate(outcome.key.key.clone()));
        }
        let records = records.entry(commit.service.clone()).or_default();
        validate(records, &commit.changes)?;
        let records = Arc::make_mut(records);
        for write in &commit.changes.writes {
            records.insert(write.key.clone(), Slot { value: write.value.clone(), version: write.version });
        }
        if let Some(outcome) = &commit.outcome {
            outcomes.insert(outcome.key.clone(), outcome.clone());
        }
        Ok(())
    }
}

fn validate(records: &BTreeMap<String, Slot>, changes: &ChangeSet) -> Result<(), StoreError> {
    for (key, read) in &changes.reads {
        let current = records.get(key).unwrap_or(&Slot::EMPTY);
        if current.version != *read {
            // `expected` is the version read, tombstones included: enough to say
            // what changed underneath.
            let expected = (*read > 0).then_some(*read);
            return Err(Conflict { key: key.clone(), expected, actual: current.visible_version() }.into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Entry, Transaction, TxLimits};

    fn tx(store: &MemoryStore) -> Transaction {
        Transaction::new(store.snapshot("svc").unwrap(), TxLimits::default())
    }

    fn commit(store: &MemoryStore, tx: Transaction) -> Result<(), StoreError> {
        store.apply(&Commit { service: "svc".into(), changes: tx.into_changes(), ..Commit::default() })
    }

    #[test]
    fn versions_start_at_one_and_grow_by_one_per_write() {
        let store = MemoryStore::new();
        let mut t = tx(&store);
        assert_eq!(t.set("k", b"a".to_vec()), Ok(1));
        assert_eq!(t.set("k", b"b".to_vec()), Ok(1), "versions count commits, not calls");
        commit(&store, t).unwrap();
        let mut t = tx(&store);
        assert_eq!(t.get("k").unwrap(), Some(Entry { value: b"b".to_vec(), version: 1 }));
        assert_eq!(t.set("k", b"c".to_vec()), Ok(2));
    }

    #[test]
    fn a_concurrent_write_to_a_read_key_fails_the_later_commit() {
        let store = MemoryStore::new();
        let mut first = tx(&store);
        let mut second = tx(&store);
        first.get("k").unwrap();
        second.get("k").unwrap();
        first.set("k", b"1".to_vec()).unwrap();
        second.set("k", b"2".to_vec()).unwrap();
        commit(&store, first).unwrap();
        let err = commit(&store, second).unwrap_err();
        assert_eq!(err, StoreError::Conflict(Conflict { key: "k".into(), expected: None, actual: Some(1) }));
        assert_eq!(tx(&store).get("k").unwrap().unwrap().value, b"1", "the first write stands");
    }

    #[test]
    fn compare_and_set_checks_at_the_call() {
        let store = MemoryStore::new();
        let mut t = tx(&store);
        assert_eq!(t.put("k", b"a".to_vec(), None), Ok(1), "create if absent");
        let err = t.put("k", b"b".to_vec(), None).unwrap_err();
        assert_eq!(err, StoreError::Conflict(Conflict { key: "k".into(), expected: None, actual: Some(1) }));
        commit(&store, t).unwrap();
        let mut t = tx(&store);
        assert_eq!(t.put("k", b"b".to_vec(), Some(1)), Ok(2));
        let err = t.delete("k", Some(1)).unwrap_err();
        assert!(matches!(err, StoreError::Conflict(Conflict { actual: Some(2), .. })), "{err:?}");
    }

    #[test]
    fn a_deleted_record_comes_back_with_a_higher_version() {
        let store = MemoryStore::new();
        let mut t = tx(&store);
        t.set("k", b"a".to_vec()).unwrap();
        commit(&store, t).unwrap();
        let mut t = tx(&store);
        t.delete("k", Some(1)).unwrap();
        assert_eq!(t.get("k").unwrap(), None);
        commit(&store, t).unwrap();
        let mut t = tx(&store);
        assert_eq!(t.get("k").unwrap(), None);
        assert_eq!(t.put("k", b"again".to_vec(), None), Ok(3), "no version is ever reused");
    }

    #[test]
    fn scan_merges_buffered_writes_and_honours_bounds() {
        let store = MemoryStore::new();
        let mut t = tx(&store);
        for key in ["a/1", "a/2", "a/3", "b/1"] {
            t.set(key, key.as_bytes().to_vec()).unwrap();
        }
        commit(&store, t).unwrap();
        let mut t = tx(&store);
        t.delete("a/1", None).unwrap();
        t.set("a/4", b"new".to_vec()).unwrap();
        let keys = |rows: Vec<(String, Entry)>| rows.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
        assert_eq!(keys(t.scan("a/", None, 10).unwrap()), ["a/2", "a/3", "a/4"]);
        assert_eq!(keys(t.scan("a/", Some("a/2"), 1).unwrap()), ["a/3"]);
        assert_eq!(keys(t.scan("a/", None, 2).unwrap()), ["a/2", "a/3"]);
    }

    #[test]
    fn invalid_requests_are_refused_and_change_nothing() {
        let store = MemoryStore::new();
        let limits = TxLimits { max_value_bytes: 4, max_writes: 1, ..TxLimits::default() };
        let mut t = Transaction::new(store.snapshot("svc").unwrap(), limits);
        assert!(matches!(t.set("", b"x".to_vec()), Err(StoreError::Invalid(m)) if m.contains("key must be")));
        assert!(
            matches!(t.set("k", b"12345".to_vec()), Err(StoreError::Invalid(m)) if m.contains("over the limit"))
        );
        t.set("k", b"1".to_vec()).unwrap();
        assert!(
            matches!(t.set("j", b"1".to_vec()), Err(StoreError::Invalid(m)) if m.contains("more than 1"))
        );
        assert_eq!(t.get("").unwrap(), None, "an impossible key reads as absent");
        let changes = t.into_changes();
        assert_eq!(changes.writes.len(), 1);
    }

    #[test]
    fn snapshots_do_not_see_later_commits() {
        let store = MemoryStore::new();
        let mut reader = tx(&store);
        let mut writer = tx(&store);
        writer.set("k", b"1".to_vec()).unwrap();
        commit(&store, writer).unwrap();
        assert_eq!(reader.get("k").unwrap(), None);
    }
}
