//! Records this host read or wrote lately, in memory, so that an invocation's reads
//! seldom go to the database.
//!
//! An invocation commits every record it read at the version it read (its read set,
//! checked by the writer against the database), so a read may come from anywhere, even
//! from an entry another host has since made stale: the commit is then refused as a
//! conflict, the writer forgets the stale entries, and the re-run reads the database.
//! It saves the reads of records this host read or wrote before (on one host, every
//! read but those of keys never seen, such as a new order's). Only invocations read
//! through it (`Store::invocation_reads`); snapshots and the HTTP API read the database.
//!
//! Entries only move forward: an entry is replaced by a read or a write of a higher
//! version only, so a read that left the database before a commit cannot put back
//! what the commit replaced. The writer's refusals are the one way back.
//!
//! Bounded in bytes: two generations, each at most half the budget; a hit in the old
//! one moves to the new one, and when the new one is full the old one is dropped.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::store::Slot;

/// Bytes a cached entry costs besides its key and value: the map's slot, and the
/// allocator's share of the three allocations (service, key, value).
const OVERHEAD: usize = 160;

/// Records by (service, key).
#[derive(Debug)]
pub(super) struct RecordCache {
    /// Bytes of one generation at most; 0 turns the cache off.
    generation_bytes: usize,
    inner: Mutex<Generations>,
}

#[derive(Debug, Default)]
struct Generations {
    young: HashMap<(String, String), Slot>,
    young_bytes: usize,
    old: HashMap<(String, String), Slot>,
}

fn cost(key: &(String, String), slot: &Slot) -> usize {
    key.0.len() + key.1.len() + slot.value.as_ref().map_or(0, Vec::len) + OVERHEAD
}

impl RecordCache {
    /// A cache of at most `bytes` of keys and values.
    pub(super) fn new(bytes: usize) -> RecordCache {
        RecordCache { generation_bytes: bytes / 2, inner: Mutex::default() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Generations> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The cached slot of `key` in `service`.
    pub(super) fn get(&self, service: &str, key: &str) -> Option<Slot> {
        if self.generation_bytes == 0 {
            return None;
        }
        let id = (service.to_owned(), key.to_owned());
        let mut inner = self.lock();
        if let Some(slot) = inner.young.get(&id) {
            return Some(slot.clone());
        }
        let slot = inner.old.remove(&id)?;
        inner.keep(id, slot.clone(), self.generation_bytes);
        Some(slot)
    }

    /// Keeps `slot` for `key`, unless a slot of the same or a higher version is kept.
    pub(super) fn offer(&self, service: &str, key: &str, slot: Slot) {
        if self.generation_bytes == 0 {
            return;
        }
        let id = (service.to_owned(), key.to_owned());
        if cost(&id, &slot) > self.generation_bytes {
            return;
        }
        let mut inner = self.lock();
        let kept = inner.young.get(&id).or_else(|| inner.old.get(&id)).map(|kept| kept.version);
        if kept.is_some_and(|version| version >= slot.version) {
            return;
        }
        inner.old.remove(&id);
        inner.keep(id, slot, self.generation_bytes);
    }

    /// Forgets `key` (the database holds another version than the one kept).
    pub(super) fn forget(&self, service: &str, key: &str) {
        let id = (service.to_owned(), key.to_owned());
        let mut inner = self.lock();
        if let Some(slot) = inner.young.remove(&id) {
            inner.young_bytes -= cost(&id, &slot);
        }
        inner.old.remove(&id);
    }

    /// Forgets everything: the writer connected again, maybe to a standby promoted
    /// after a failover, which may lack commits whose versions are kept here (and another
    /// host may commit other values at those versions).
    pub(super) fn clear(&self) {
        *self.lock() = Generations::default();
    }

    /// Entries kept (for tests).
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        let inner = self.lock();
        inner.young.len() + inner.old.len()
    }
}

impl Generations {
    /// Puts `slot` in the young generation, which becomes the old one when full.
    fn keep(&mut self, id: (String, String), slot: Slot, limit: usize) {
        if let Some(replaced) = self.young.remove(&id) {
            self.young_bytes -= cost(&id, &replaced);
        }
        let bytes = cost(&id, &slot);
        if self.young_bytes + bytes > limit {
            self.old = std::mem::take(&mut self.young);
            self.young_bytes = 0;
        }
        self.young_bytes += bytes;
        self.young.insert(id, slot);
    }
}

#[cfg(test)]
mod tests {
    use super::{OVERHEAD, RecordCache};
    use crate::store::Slot;

    fn slot(value: &str, version: u64) -> Slot {
        Slot { value: Some(value.as_bytes().to_vec()), version }
    }

    #[test]
    fn entries_only_move_to_higher_versions_unless_forgotten() {
        let cache = RecordCache::new(1 << 20);
        cache.offer("s", "k", slot("two", 2));
        cache.offer("s", "k", slot("one", 1)); // a read that left before the commit of 2
        assert_eq!(cache.get("s", "k"), Some(slot("two", 2)));
        cache.offer("s", "k", Slot { value: None, version: 3 }); // deleted
        assert_eq!(cache.get("s", "k"), Some(Slot { value: None, version: 3 }));
        assert_eq!(cache.get("other", "k"), None, "services apart");
        cache.forget("s", "k");
        assert_eq!(cache.get("s", "k"), None);
        cache.offer("s", "k", slot("one", 1)); // the database's, after a failover say
        assert_eq!(cache.get("s", "k"), Some(slot("one", 1)));
    }

    #[test]
    fn the_cache_holds_its_budget_and_keeps_what_is_read() {
        let entry = 1 + 4 + 100 + OVERHEAD; // service, key, value
        let cache = RecordCache::new(100 * entry);
        cache.offer("s", "hot!", slot(&"h".repeat(100), 1));
        for i in 0..10_000 {
            cache.offer("s", &format!("{i:04}"), slot(&"v".repeat(100), 1));
            assert!(cache.get("s", "hot!").is_some(), "a record read all along stays");
        }
        assert!(cache.len() <= 100, "{} entries of a budget of 100", cache.len());
        assert!(cache.len() >= 50, "the last half budget's are kept: {}", cache.len());
        assert_eq!(cache.get("s", "9999"), Some(slot(&"v".repeat(100), 1)));
        assert_eq!(cache.get("s", "0000"), None);

        cache.offer("s", "big", slot(&"b".repeat(60 * entry), 1));
        assert_eq!(cache.get("s", "big"), None, "larger than a generation: not kept");
        let off = RecordCache::new(0);
        off.offer("s", "k", slot("v", 1));
        assert_eq!(off.get("s", "k"), None, "0 bytes: off");
    }
}
