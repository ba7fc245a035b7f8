//! The storage contract's own tests, written once against `&dyn Store`: every backend
//! runs all of them through [`contract_tests!`], with a function that opens a fresh,
//! empty store of its kind (the SQLite backend's call is at the end of `sqlite/mod.rs`).
//! A test here may use only the [`Store`] trait: what it proves holds for any backend.

mod outbox;
mod sagas;
mod upkeep;

use crate::service::PluginDigest;
use crate::store::{
    ChangeSet, Commit, Conflict, DefinitionRow, DeliveryChange, DeliveryRow, DeliveryStatus, Entry, Event,
    IdempotencyKey, KeySpace, PruneKind, SagaChange, SagaRow, SagaStatus, Store, StoreError, StoredOutcome,
    Transaction, TxLimits, UploadChange, UploadRow, Uploaded,
};

/// Runs every contract test against the stores `$open` makes (an async function
/// returning a fresh, empty backend).
macro_rules! contract_tests {
    ($open:path) => {
        $crate::store::contract_tests::contract_tests!(@each $open;
            versions_start_at_one_and_grow_by_one_per_write,
            a_concurrent_write_to_a_read_key_fails_the_later_commit,
            compare_and_set_checks_at_the_call,
            a_deleted_record_comes_back_with_a_higher_version,
            scan_merges_buffered_writes_and_honours_bounds,
            invalid_requests_are_refused_and_change_nothing,
            snapshots_do_not_see_later_commits,
            snapshots_are_stable_and_scans_skip_tombstones,
            racing_commits_in_one_batch_let_exactly_one_win,
            a_conflicting_commit_writes_nothing_of_itself,
            an_idempotency_key_is_stored_once_until_it_expires,
            key_spaces_keep_the_same_text_apart,
            a_forgotten_tombstone_keeps_its_version,
            a_create_read_below_a_raised_floor_conflicts,
            a_saga_is_created_once_per_name_and_key,
            a_saga_changes_only_at_the_version_read,
            sagas_of_hosts_that_stopped_are_claimed_and_their_owners_fenced,
            an_attempt_is_recorded_only_after_the_one_before,
            sagas_are_listed_by_id_and_status,
            pages_of_sagas_and_events_stop_at_their_byte_budget,
            sagas_are_found_by_id_key_or_input_value,
            definitions_are_kept_by_digest,
            events_are_published_in_commit_order_with_their_chain,
            deliveries_go_out_in_order_within_their_group,
            only_a_dead_delivery_can_be_redelivered,
            a_chain_page_is_one_moment_of_its_chain,
            retention_forgets_only_what_is_finished_and_old,
            an_event_published_after_retention_forgot_every_event_is_dispatched,
            events_passed_without_a_delivery_are_found,
            uploads_are_kept_replaced_and_discarded_per_service,
            commits_wake_the_tasks_that_look_for_them,
        );
    };
    (@each $open:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() {
                let store = $open().await;
                $crate::store::contract_tests::$name(&store).await;
            }
        )*
    };
}
pub(crate) use contract_tests;
// The tests by theme, named by the macro as items of this module.
pub(crate) use outbox::*;
pub(crate) use sagas::*;
pub(crate) use upkeep::*;

const SERVICE: &str = "svc";

fn tx(store: &dyn Store) -> Transaction {
    tx_of(store, SERVICE, TxLimits::default())
}

fn tx_of(store: &dyn Store, service: &str, limits: TxLimits) -> Transaction {
    Transaction::new(store.snapshot(service).unwrap(), limits)
}

async fn commit(store: &dyn Store, tx: Transaction) -> Result<(), StoreError> {
    store.commit(commit_of(tx.into_changes(), None)).await
}

pub(crate) fn commit_of(changes: ChangeSet, outcome: Option<StoredOutcome>) -> Commit {
    Commit { service: SERVICE.into(), changes, outcome, ..Commit::default() }
}

pub(crate) fn key(key: &str) -> IdempotencyKey {
    IdempotencyKey { service: SERVICE.into(), space: KeySpace::Client, key: key.into() }
}

pub(crate) fn outcome(key_text: &str, created_at: i64, expires_at: i64) -> StoredOutcome {
    StoredOutcome {
        key: key(key_text),
        fingerprint: [7; 32],
        operation: "op".into(),
        result: Ok(b"out".to_vec()),
        digest: PluginDigest::of(b"the plugin"),
        correlation_id: Some("chain".into()),
        created_at,
        expires_at,
    }
}

fn keys(rows: Vec<(String, Entry)>) -> Vec<String> {
    rows.into_iter().map(|(k, _)| k).collect()
}

pub(crate) fn saga(id: &str, name: &str, key: &str, status: SagaStatus, at: i64) -> SagaRow {
    SagaRow {
        id: id.into(),
        name: name.into(),
        status,
        input: br#"{"order":"o-1"}"#.to_vec(),
        state: "{}".into(),
        version: 1,
        key: key.into(),
        fingerprint: [0; 32],
        created_at: at,
        updated_at: at,
        owner: None,
    }
}

pub(crate) async fn create_saga(store: &dyn Store, row: SagaRow) -> Result<(), StoreError> {
    store.commit(Commit { saga: Some(SagaChange::Create(row)), ..Commit::default() }).await
}

fn delivery(event_id: i64, topic: &str, chain: &str) -> DeliveryRow {
    DeliveryRow {
        event_id,
        subscriber: "sub".into(),
        operation: "op".into(),
        topic: topic.into(),
        correlation_id: Some(chain.into()),
        status: DeliveryStatus::Pending,
        attempts: 0,
        next_at: 0,
        outcome: None,
        last_error: None,
        created_at: 0,
        done_at: None,
    }
}

fn delivery_update(event_id: i64, status: DeliveryStatus) -> DeliveryChange {
    DeliveryChange::Update {
        event_id,
        subscriber: "sub".into(),
        status,
        attempts: 1,
        next_at: 0,
        outcome: (status == DeliveryStatus::Delivered).then(|| "ok".into()),
        last_error: None,
        done_at: Some(1),
    }
}

async fn deliveries(store: &dyn Store, changes: Vec<DeliveryChange>) -> Result<(), StoreError> {
    store.commit(Commit { deliveries: changes, ..Commit::default() }).await
}

/// Publishes one event per payload, each in its own commit, in the chain `chain`.
async fn publish(store: &dyn Store, topic: &str, chain: &str, payloads: &[&str]) {
    for payload in payloads {
        let mut t = tx(store);
        t.publish(topic, payload.as_bytes().to_vec(), None).unwrap();
        let mut commit = commit_of(t.into_changes(), None);
        commit.correlation_id = Some(chain.into());
        store.commit(commit).await.unwrap();
    }
}

pub(crate) async fn versions_start_at_one_and_grow_by_one_per_write(store: &dyn Store) {
    let mut t = tx(store);
    assert_eq!(t.set("k", b"a".to_vec()).await, Ok(1));
    assert_eq!(t.set("k", b"b".to_vec()).await, Ok(1), "versions count commits, not calls");
    commit(store, t).await.unwrap();
    let mut t = tx(store);
    assert_eq!(t.get("k").await.unwrap(), Some(Entry { value: b"b".to_vec(), version: 1 }));
    assert_eq!(t.set("k", b"c".to_vec()).await, Ok(2));
}

pub(crate) async fn a_concurrent_write_to_a_read_key_fails_the_later_commit(store: &dyn Store) {
    let mut first = tx(store);
    let mut second = tx(store);
    first.get("k").await.unwrap();
    second.get("k").await.unwrap();
    first.set("k", b"1".to_vec()).await.unwrap();
    second.set("k", b"2".to_vec()).await.unwrap();
    commit(store, first).await.unwrap();
    let err = commit(store, second).await.unwrap_err();
    assert_eq!(err, StoreError::Conflict(Conflict { key: "k".into(), expected: None, actual: Some(1) }));
    assert_eq!(tx(store).get("k").await.unwrap().unwrap().value, b"1", "the first write stands");
}

pub(crate) async fn compare_and_set_checks_at_the_call(store: &dyn Store) {
    let mut t = tx(store);
    assert_eq!(t.put("k", b"a".to_vec(), None).await, Ok(1), "create if absent");
    let err = t.put("k", b"b".to_vec(), None).await.unwrap_err();
    assert_eq!(err, StoreError::Conflict(Conflict { key: "k".into(), expected: None, actual: Some(1) }));
    commit(store, t).await.unwrap();
    let mut t = tx(store);
    assert_eq!(t.put("k", b"b".to_vec(), Some(1)).await, Ok(2));
    let err = t.delete("k", Some(1)).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(Conflict { actual: Some(2), .. })), "{err:?}");
}

pub(crate) async fn a_deleted_record_comes_back_with_a_higher_version(store: &dyn Store) {
    let mut t = tx(store);
    t.set("k", b"a".to_vec()).await.unwrap();
    commit(store, t).await.unwrap();
    let mut t = tx(store);
    t.delete("k", Some(1)).await.unwrap();
    assert_eq!(t.get("k").await.unwrap(), None);
    commit(store, t).await.unwrap();
    let mut t = tx(store);
    assert_eq!(t.get("k").await.unwrap(), None);
    assert_eq!(t.put("k", b"again".to_vec(), None).await, Ok(3), "no version is ever reused");
}

pub(crate) async fn scan_merges_buffered_writes_and_honours_bounds(store: &dyn Store) {
    let mut t = tx(store);
    for key in ["a/1", "a/2", "a/3", "b/1"] {
        t.set(key, key.as_bytes().to_vec()).await.unwrap();
    }
    commit(store, t).await.unwrap();
    let mut t = tx(store);
    t.delete("a/1", None).await.unwrap();
    t.set("a/4", b"new".to_vec()).await.unwrap();
    assert_eq!(keys(t.scan("a/", None, 10).await.unwrap()), ["a/2", "a/3", "a/4"]);
    assert_eq!(keys(t.scan("a/", Some("a/2"), 1).await.unwrap()), ["a/3"]);
    assert_eq!(keys(t.scan("a/", None, 2).await.unwrap()), ["a/2", "a/3"]);
}

pub(crate) async fn invalid_requests_are_refused_and_change_nothing(store: &dyn Store) {
    let limits = TxLimits { max_value_bytes: 4, max_writes: 1, ..TxLimits::default() };
    let mut t = tx_of(store, SERVICE, limits);
    assert!(
        matches!(t.set("", b"x".to_vec()).await, Err(StoreError::Invalid(m)) if m.contains("key must be"))
    );
    assert!(
        matches!(t.set("k", b"12345".to_vec()).await, Err(StoreError::Invalid(m)) if m.contains("over the limit"))
    );
    t.set("k", b"1".to_vec()).await.unwrap();
    assert!(
        matches!(t.set("j", b"1".to_vec()).await, Err(StoreError::Invalid(m)) if m.contains("more than 1"))
    );
    assert_eq!(t.get("").await.unwrap(), None, "an impossible key reads as absent");
    // No backend keeps a NUL in a key or topic (PostgreSQL's text cannot).
    assert!(matches!(t.set("a\0b", b"1".to_vec()).await, Err(StoreError::Invalid(m)) if m.contains("NUL")));
    assert_eq!(t.get("a\0b").await.unwrap(), None, "a key with a NUL reads as absent");
    assert!(
        matches!(t.publish("to\0pic", b"{}".to_vec(), None), Err(StoreError::Invalid(m)) if m.contains("NUL"))
    );
    let changes = t.into_changes();
    assert_eq!(changes.writes.len(), 1);
}

pub(crate) async fn snapshots_do_not_see_later_commits(store: &dyn Store) {
    let mut reader = tx(store);
    reader.get("other").await.unwrap();
    let mut writer = tx(store);
    writer.set("k", b"1".to_vec()).await.unwrap();
    commit(store, writer).await.unwrap();
    assert_eq!(reader.get("k").await.unwrap(), None);
}

pub(crate) async fn snapshots_are_stable_and_scans_skip_tombstones(store: &dyn Store) {
    let mut t = tx(store);
    for key in ["p/1", "p/2", "p/3", "q/1"] {
        t.set(key, key.as_bytes().to_vec()).await.unwrap();
    }
    commit(store, t).await.unwrap();
    let mut reader = tx(store);
    assert_eq!(reader.scan("p/", None, 10).await.unwrap().len(), 3, "the snapshot starts here");
    let mut t = tx(store);
    t.delete("p/2", None).await.unwrap();
    t.set("p/4", b"x".to_vec()).await.unwrap();
    commit(store, t).await.unwrap();
    assert_eq!(
        keys(reader.scan("p/", None, 10).await.unwrap()),
        ["p/1", "p/2", "p/3"],
        "still the old snapshot"
    );
    assert_eq!(keys(tx(store).scan("p/", None, 10).await.unwrap()), ["p/1", "p/3", "p/4"]);
    assert_eq!(keys(tx(store).scan("p/", Some("p/1"), 1).await.unwrap()), ["p/3"]);
}

pub(crate) async fn racing_commits_in_one_batch_let_exactly_one_win(store: &dyn Store) {
    // Every racer reads before any commits: all of them start from "absent".
    let mut changes: Vec<ChangeSet> = Vec::new();
    for i in 0..20u8 {
        let mut t = tx(store);
        t.get("counter").await.unwrap();
        t.set("counter", vec![i]).await.unwrap();
        changes.push(t.into_changes());
    }
    let racers: Vec<_> = changes.into_iter().map(|c| store.commit(commit_of(c, None))).collect();
    let mut won = 0;
    for racer in racers {
        match racer.await {
            Ok(()) => won += 1,
            Err(StoreError::Conflict(c)) => assert_eq!((c.expected, c.actual), (None, Some(1))),
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(won, 1);
    assert_eq!(tx(store).get("counter").await.unwrap().unwrap().version, 1);
}

pub(crate) async fn a_conflicting_commit_writes_nothing_of_itself(store: &dyn Store) {
    let mut base = tx(store);
    base.set("a", b"1".to_vec()).await.unwrap();
    commit(store, base).await.unwrap();

    let mut stale = tx(store);
    stale.set("b", b"new".to_vec()).await.unwrap();
    stale.get("a").await.unwrap();
    let mut fresh = tx(store);
    fresh.set("a", b"2".to_vec()).await.unwrap();
    commit(store, fresh).await.unwrap();
    let mut changes = stale.into_changes();
    changes.events.push(Event::new("t", b"{}", None));
    let err = store.commit(commit_of(changes, Some(outcome("stale", 1, i64::MAX)))).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(Conflict { ref key, .. }) if key == "a"), "{err:?}");
    assert_eq!(tx(store).get("b").await.unwrap(), None, "the write to b was rolled back");
    assert!(store.outcome(&key("stale"), 2).await.unwrap().is_none(), "no outcome stored");
    assert_eq!(store.events_after(0, 10).await.unwrap(), [], "no event stored");
}

pub(crate) async fn an_idempotency_key_is_stored_once_until_it_expires(store: &dyn Store) {
    store.commit(commit_of(ChangeSet::default(), Some(outcome("k", 100, 200)))).await.unwrap();
    let again = store.commit(commit_of(ChangeSet::default(), Some(outcome("k", 150, 300)))).await;
    assert_eq!(again, Err(StoreError::Duplicate("k".into())));
    assert!(store.outcome(&key("k"), 199).await.unwrap().is_some());
    assert!(store.outcome(&key("k"), 200).await.unwrap().is_none(), "expired at 200");
    store.commit(commit_of(ChangeSet::default(), Some(outcome("k", 250, 400)))).await.unwrap();
    let stored = store.outcome(&key("k"), 260).await.unwrap().unwrap();
    assert_eq!(stored, outcome("k", 250, 400), "an expired key is reused; the outcome reads back whole");
    assert_eq!(store.prune(PruneKind::Outcomes, 399, 500).await.unwrap(), 0);
    assert_eq!(store.prune(PruneKind::Outcomes, 400, 500).await.unwrap(), 1);
}

/// A client's key and the host's key with the same text are different keys: one can
/// neither pre-empt nor replay the other.
pub(crate) async fn key_spaces_keep_the_same_text_apart(store: &dyn Store) {
    let text = "saga/01a2/charge/do";
    let mut planted = outcome(text, 100, i64::MAX);
    planted.result = Err("planted by a client".into());
    store.commit(commit_of(ChangeSet::default(), Some(planted))).await.unwrap();
    let saga_key = IdempotencyKey { space: KeySpace::Saga, ..key(text) };
    assert_eq!(store.outcome(&saga_key, 101).await.unwrap(), None, "the saga's key is still free");
    let step = StoredOutcome { key: saga_key.clone(), ..outcome(text, 100, i64::MAX) };
    store.commit(commit_of(ChangeSet::default(), Some(step))).await.unwrap();
    assert_eq!(store.outcome(&saga_key, 101).await.unwrap().unwrap().result, Ok(b"out".to_vec()));
    assert_eq!(
        store.outcome(&key(text), 101).await.unwrap().unwrap().result,
        Err("planted by a client".into()),
        "the client's outcome is its own"
    );
}

/// A forgotten tombstone leaves its version behind: the key reads (absent) at its
/// service's floor, and created again it goes on above every version it had, so an
/// old version number can never match it again. Other services are not moved.
pub(crate) async fn a_forgotten_tombstone_keeps_its_version(store: &dyn Store) {
    for _ in 0..3 {
        let mut t = tx(store);
        let current = t.get("k").await.unwrap();
        t.set("k", format!("{current:?}").into_bytes()).await.unwrap();
        commit(store, t).await.unwrap();
    }
    let mut t = tx(store);
    t.delete("k", Some(3)).await.unwrap();
    commit(store, t).await.unwrap();
    assert_eq!(store.prune(PruneKind::Tombstones, 0, 100).await.unwrap(), 0, "not old enough");
    let later = crate::clock::now_ms() + 1;
    assert_eq!(store.prune(PruneKind::Tombstones, later, 100).await.unwrap(), 1);
    assert_eq!(store.prune(PruneKind::Tombstones, later, 100).await.unwrap(), 0, "the tombstone is gone");

    let mut t = tx(store);
    assert_eq!(t.get("k").await.unwrap(), None);
    assert_eq!(t.put("k", b"again".to_vec(), None).await, Ok(5), "above the forgotten version 4");
    commit(store, t).await.unwrap();
    let mut stale = tx(store);
    let err = stale.put("k", b"stale".to_vec(), Some(1)).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");

    let mut other = tx_of(store, "other", TxLimits::default());
    assert_eq!(other.put("k", b"x".to_vec(), None).await, Ok(1), "another service starts at 1");
}

/// A key read as absent at the floor, then the floor raised under it, conflicts at
/// commit instead of going back below a forgotten version: whether the commit only
/// read it, or creates it (it would be created at a version it already had, and an old
/// `If-Match` would match again).
pub(crate) async fn a_create_read_below_a_raised_floor_conflicts(store: &dyn Store) {
    let mut reader = tx(store);
    reader.get("gone").await.unwrap();
    let mut creator = tx(store);
    creator.get("gone").await.unwrap();
    creator.set("gone", b"again".to_vec()).await.unwrap();
    for value in [Some(b"v".to_vec()), None] {
        let mut t = tx(store);
        t.get("gone").await.unwrap();
        match value {
            Some(value) => t.set("gone", value).await.map(|_| ()).unwrap(),
            None => t.delete("gone", None).await.unwrap(),
        };
        commit(store, t).await.unwrap();
    }
    store.prune(PruneKind::Tombstones, crate::clock::now_ms() + 1, 100).await.unwrap();
    for early in [reader, creator] {
        let err = commit(store, early).await.unwrap_err();
        assert!(matches!(err, StoreError::Conflict(ref c) if c.key == "gone"), "{err:?}");
    }
    assert_eq!(tx(store).get("gone").await.unwrap(), None, "not created below its forgotten version");
}
