//! Round trip 1 of a batch: the record locks, then the checks of what every commit
//! depends on, read under them (see `writer.rs`).

use std::collections::{HashMap, HashSet};

use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement};

use crate::store::postgres::conn::Conn;
use crate::store::{
    Commit, Conflict, DeliveryChange, DeliveryStatus, IdempotencyKey, SagaChange, StoreError, saga_moved,
};

/// Locks every record a batch's commits read or write, before the checks read their
/// versions, and holds the locks until the batch ends: a transaction-scoped advisory
/// lock per record (on [`record_lock`] of its service and key, so that a key with no
/// row is locked too), exclusive where a commit writes the record, shared where the
/// commits only read it. Taken in the order of the locks' keys (sorted by the caller)
/// by every host, so that two batches never each hold a lock the other waits for.
pub(super) const LOCK_RECORDS: &str = "SELECT CASE WHEN k.exclusive THEN pg_advisory_xact_lock(k.lock)
         ELSE pg_advisory_xact_lock_shared(k.lock) END
     FROM unnest($1::int8[], $2::bool[]) AS k (lock, exclusive)";

/// The advisory lock of one record: FNV-1a (64 bits) of its service and key, the same
/// on every host and every build (a collision only makes two records share a lock).
/// The single-key form of advisory locks, apart from the two-key form the schema's
/// and the event ids' locks use.
pub(super) fn record_lock(service: &str, key: &str) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in service.bytes().chain([0]).chain(key.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash as i64
}

/// The record locks a batch takes: (lock, exclusive), sorted by lock, one per lock
/// (exclusive if any commit writes a record of it).
pub(super) fn record_locks(commits: &[&Commit]) -> (Vec<i64>, Vec<bool>) {
    let mut locks: Vec<(i64, bool)> = commits
        .iter()
        .flat_map(|commit| {
            let reads =
                commit.changes.reads.iter().map(|(key, _)| (record_lock(&commit.service, key), false));
            let writes = commit.changes.writes.iter().map(|w| (record_lock(&commit.service, &w.key), true));
            reads.chain(writes)
        })
        .collect();
    // Exclusive first within a lock, so that dedup keeps it.
    locks.sort_unstable_by_key(|&(lock, exclusive)| (lock, !exclusive));
    locks.dedup_by_key(|(lock, _)| *lock);
    locks.into_iter().unzip()
}

// What a batch's checks read, one statement each for the whole batch (over arrays of
// what its commits depend on), whatever its size: a statement per commit cost
// PostgreSQL more in handling the statements than in their lookups, as the writes did.
// Each looks its rows up by key, one lookup per element.

/// The ordinals (from 1) of the idempotency keys that have an unexpired outcome.
pub(super) const OUTCOMES_STORED: &str =
    "SELECT k.i FROM unnest($1::text[], $2::text[], $3::text[], $4::int8[])
         WITH ORDINALITY AS k (service, space, key, at, i)
     WHERE EXISTS (SELECT 1 FROM invocations v
         WHERE v.service = k.service AND v.space = k.space AND v.key = k.key AND v.expires_at > k.at)";
/// The records that have a row: version, and whether it is live (not a tombstone).
pub(super) const RECORD_VERSIONS: &str = "SELECT r.service, r.key, r.version, r.value IS NOT NULL
     FROM unnest($1::text[], $2::text[]) AS k (service, key)
     CROSS JOIN LATERAL (SELECT service, key, version, value FROM records r
         WHERE r.service = k.service AND r.key = k.key) AS r";
pub(super) const FLOORS: &str = "SELECT service, floor FROM version_floors WHERE service = ANY($1::text[])";
pub(super) const SAGA_VERSIONS: &str = "SELECT s.id, s.version FROM unnest($1::text[]) AS k (id)
     CROSS JOIN LATERAL (SELECT id, version FROM sagas s WHERE s.id = k.id) AS s";
pub(super) const SAGAS_BY_KEY: &str = "SELECT s.name, s.key, s.version FROM unnest($1::text[], $2::text[]) AS k (name, key)
     CROSS JOIN LATERAL (SELECT name, key, version FROM sagas s WHERE s.name = k.name AND s.key = k.key) AS s";
pub(super) const DELIVERY_STATUS: &str =
    "SELECT status FROM deliveries WHERE event_id = $1 AND subscriber = $2";

/// What the database says of what one commit depends on, before the batch.
pub(super) struct Facts {
    /// An unexpired outcome is stored for its idempotency key.
    pub(super) duplicate: bool,
    /// (version, exists) of the records it depends on that have a row.
    pub(super) records: HashMap<String, (u64, bool)>,
    /// Its service's version floor: what a key with no row is at.
    pub(super) floor: u64,
    /// The version of its saga: the one it updates, or one of the same name and key.
    pub(super) saga: Option<u64>,
    /// For each redelivery: is that delivery dead.
    pub(super) dead: Vec<bool>,
}

/// Every version the commit depends on: what it read, and for a write without a read,
/// the version just below it.
pub(super) fn expected(commit: &Commit) -> Vec<(&str, u64)> {
    let mut expected: Vec<(&str, u64)> = commit.changes.reads.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    for write in &commit.changes.writes {
        if !commit.changes.reads.iter().any(|(k, _)| *k == write.key) {
            expected.push((&write.key, write.version - 1));
        }
    }
    expected
}

/// The locks' and the checks' statements, prepared on the writer's connection.
pub(super) type Checks = [Statement; 7];

pub(super) async fn prepare_checks(conn: &mut Conn) -> Result<Checks, StoreError> {
    Ok([
        conn.statement(LOCK_RECORDS).await?,
        conn.statement(OUTCOMES_STORED).await?,
        conn.statement(RECORD_VERSIONS).await?,
        conn.statement(FLOORS).await?,
        conn.statement(SAGA_VERSIONS).await?,
        conn.statement(SAGAS_BY_KEY).await?,
        conn.statement(DELIVERY_STATUS).await?,
    ])
}

/// Takes the batch's record locks and reads the facts of every commit under them, in
/// one pipeline (which goes out with the batch's `BEGIN`, the locks first).
pub(super) async fn facts(
    client: &Client,
    checks: &Checks,
    commits: &[&Commit],
) -> Result<Vec<Facts>, tokio_postgres::Error> {
    let [lock_records, outcomes_stored, record_versions, floors, saga_versions, sagas_by_key, delivery] =
        checks;
    let locks = record_locks(commits);
    let outcomes: Vec<_> = commits.iter().filter_map(|c| c.outcome.as_ref()).collect();
    let keys: (Vec<&str>, Vec<&str>, Vec<&str>, Vec<i64>) = (
        outcomes.iter().map(|o| o.key.service.as_str()).collect(),
        outcomes.iter().map(|o| o.key.space.as_str()).collect(),
        outcomes.iter().map(|o| o.key.key.as_str()).collect(),
        outcomes.iter().map(|o| o.created_at).collect(),
    );
    let mut records: Vec<(&str, &str)> = commits
        .iter()
        .flat_map(|c| expected(c).into_iter().map(|(key, _)| (c.service.as_str(), key)))
        .collect();
    records.sort_unstable();
    records.dedup();
    let (record_services, record_keys): (Vec<&str>, Vec<&str>) = records.into_iter().unzip();
    let mut services: Vec<&str> = commits.iter().map(|c| c.service.as_str()).collect();
    services.sort_unstable();
    services.dedup();
    let (mut ids, mut names, mut saga_keys) = (Vec::new(), Vec::new(), Vec::new());
    for commit in commits {
        match &commit.saga {
            Some(SagaChange::Update { id, .. }) => ids.push(id.as_str()),
            Some(SagaChange::Create(row)) => {
                names.push(row.name.as_str());
                saga_keys.push(row.key.as_str());
            }
            None => {}
        }
    }
    let redeliveries: Vec<(i64, &str)> = commits
        .iter()
        .flat_map(|c| &c.deliveries)
        .filter_map(|change| match change {
            DeliveryChange::Redeliver { event_id, subscriber, .. } => Some((*event_id, subscriber.as_str())),
            _ => None,
        })
        .collect();
    let params: [&[&(dyn ToSql + Sync)]; 5] = [
        &[&keys.0, &keys.1, &keys.2, &keys.3],
        &[&record_services, &record_keys],
        &[&services],
        &[&ids],
        &[&names, &saga_keys],
    ];
    let (locked, stored, versions, floors, by_id, by_key, dead) = tokio::join!(
        async {
            match locks.0.is_empty() {
                true => Ok(0),
                false => client.execute(lock_records, &[&locks.0, &locks.1]).await,
            }
        },
        client.query(outcomes_stored, params[0]),
        client.query(record_versions, params[1]),
        client.query(floors, params[2]),
        client.query(saga_versions, params[3]),
        client.query(sagas_by_key, params[4]),
        futures_util::future::join_all(redeliveries.iter().map(|(event_id, subscriber)| async move {
            let row = client.query_opt(delivery, &[event_id, subscriber]).await?;
            Ok::<_, tokio_postgres::Error>(row.is_some_and(|row| row.get::<_, &str>(0) == "dead"))
        })),
    );
    locked?;
    let stored: HashSet<usize> = stored?.iter().map(|row| row.get::<_, i64>(0) as usize - 1).collect();
    let versions: HashMap<(String, String), (u64, bool)> = versions?
        .iter()
        .map(|row| ((row.get(0), row.get(1)), (row.get::<_, i64>(2) as u64, row.get(3))))
        .collect();
    let floors: HashMap<String, u64> =
        floors?.iter().map(|row| (row.get(0), row.get::<_, i64>(1) as u64)).collect();
    let by_id: HashMap<String, u64> =
        by_id?.iter().map(|row| (row.get(0), row.get::<_, i64>(1) as u64)).collect();
    let by_key: HashMap<(String, String), u64> =
        by_key?.iter().map(|row| ((row.get(0), row.get(1)), row.get::<_, i64>(2) as u64)).collect();
    let mut dead = dead.into_iter();
    // The outcomes were sent in the order of their commits.
    let mut ordinals = 0..;
    let mut facts = Vec::with_capacity(commits.len());
    for commit in commits {
        let duplicate = match commit.outcome {
            Some(_) => stored.contains(&ordinals.next().expect("unbounded")),
            None => false,
        };
        let records = expected(commit)
            .into_iter()
            .filter_map(|(key, _)| {
                Some((key.to_owned(), *versions.get(&(commit.service.clone(), key.to_owned()))?))
            })
            .collect();
        let saga = match &commit.saga {
            Some(SagaChange::Update { id, .. }) => by_id.get(id).copied(),
            Some(SagaChange::Create(row)) => by_key.get(&(row.name.clone(), row.key.clone())).copied(),
            None => None,
        };
        let redeliveries = commit
            .deliveries
            .iter()
            .filter(|change| matches!(change, DeliveryChange::Redeliver { .. }))
            .count();
        facts.push(Facts {
            duplicate,
            records,
            floor: floors.get(&commit.service).copied().unwrap_or(0),
            saga,
            dead: dead.by_ref().take(redeliveries).collect::<Result<_, _>>()?,
        });
    }
    Ok(facts)
}

/// What the batch's commits accepted so far changed, keyed like the facts: a later
/// commit of the batch is checked against it first.
#[derive(Default)]
pub(super) struct Overlay {
    /// (version, exists) of the records written, by service and key.
    pub(super) records: HashMap<String, HashMap<String, (u64, bool)>>,
    /// Outcomes stored by the batch, with when they expire.
    pub(super) outcomes: HashMap<IdempotencyKey, i64>,
    pub(super) sagas_by_key: HashSet<(String, String)>,
    pub(super) saga_versions: HashMap<String, u64>,
    pub(super) dead: HashMap<(i64, String), bool>,
}

impl Overlay {
    /// The checks of one commit, in SQLite's order: its idempotency key (a duplicate
    /// of a committed invocation learns `Duplicate`, and replays, rather than a
    /// conflict on the records it changed), the records it depends on, its saga, its
    /// redeliveries.
    pub(super) fn check(&self, commit: &Commit, facts: &Facts) -> Result<(), StoreError> {
        if let Some(o) = &commit.outcome
            && (facts.duplicate || self.outcomes.get(&o.key).is_some_and(|expires| *expires > o.created_at))
        {
            return Err(StoreError::Duplicate(o.key.key.clone()));
        }
        for (key, read) in expected(commit) {
            let (version, exists) = self
                .records
                .get(&commit.service)
                .and_then(|written| written.get(key))
                .or_else(|| facts.records.get(key))
                .copied()
                .unwrap_or((facts.floor, false));
            if version != read {
                let conflict = Conflict {
                    key: key.to_owned(),
                    expected: (read > 0).then_some(read),
                    actual: exists.then_some(version),
                };
                return Err(conflict.into());
            }
        }
        match &commit.saga {
            Some(SagaChange::Create(row))
                if facts.saga.is_some()
                    || self.sagas_by_key.contains(&(row.name.clone(), row.key.clone())) =>
            {
                return Err(StoreError::Duplicate(row.key.clone()));
            }
            Some(SagaChange::Update { id, version, .. }) => {
                let actual = self.saga_versions.get(id).copied().or(facts.saga);
                if actual != Some(*version) {
                    return Err(saga_moved(id, *version, actual));
                }
            }
            _ => {}
        }
        let redeliveries = commit.deliveries.iter().filter_map(|change| match change {
            DeliveryChange::Redeliver { event_id, subscriber, .. } => Some((*event_id, subscriber)),
            _ => None,
        });
        for ((event_id, subscriber), dead) in redeliveries.zip(&facts.dead) {
            if !self.dead.get(&(event_id, subscriber.clone())).copied().unwrap_or(*dead) {
                return Err(StoreError::Invalid(format!(
                    "no dead delivery of event {event_id} to `{subscriber}`"
                )));
            }
        }
        Ok(())
    }

    /// Records what an accepted commit changes.
    pub(super) fn apply(&mut self, commit: &Commit) {
        if let Some(o) = &commit.outcome {
            self.outcomes.insert(o.key.clone(), o.expires_at);
        }
        if !commit.changes.writes.is_empty() {
            let written = self.records.entry(commit.service.clone()).or_default();
            for write in &commit.changes.writes {
                written.insert(write.key.clone(), (write.version, write.value.is_some()));
            }
        }
        match &commit.saga {
            Some(SagaChange::Create(row)) => {
                self.sagas_by_key.insert((row.name.clone(), row.key.clone()));
                self.saga_versions.insert(row.id.clone(), row.version);
            }
            Some(SagaChange::Update { id, version, .. }) => {
                self.saga_versions.insert(id.clone(), version + 1);
            }
            None => {}
        }
        for change in &commit.deliveries {
            match change {
                DeliveryChange::Update { event_id, subscriber, status, .. } => {
                    self.dead.insert((*event_id, subscriber.clone()), *status == DeliveryStatus::Dead);
                }
                DeliveryChange::Redeliver { event_id, subscriber, .. } => {
                    self.dead.insert((*event_id, subscriber.clone()), false);
                }
                DeliveryChange::Create { .. } => {}
            }
        }
    }
}
