//! The storage contract's own tests, written once against `&dyn Store`: every backend
//! runs all of them through [`contract_tests!`], with a function that opens a fresh,
//! empty store of its kind (the SQLite backend's call is at the end of `sqlite/mod.rs`).
//! A test here may use only the [`Store`] trait: what it proves holds for any backend.

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

/// A second saga of the same definition and key is refused as a duplicate (the first
/// is the one); the same key under another definition is another saga.
pub(crate) async fn a_saga_is_created_once_per_name_and_key(store: &dyn Store) {
    create_saga(store, saga("s1", "place-order", "key-1", SagaStatus::Running, 1)).await.unwrap();
    let again = create_saga(store, saga("s2", "place-order", "key-1", SagaStatus::Running, 2)).await;
    assert_eq!(again, Err(StoreError::Duplicate("key-1".into())));
    assert_eq!(store.saga("s2").await.unwrap(), None, "nothing of the duplicate is stored");
    create_saga(store, saga("s3", "refund", "key-1", SagaStatus::Running, 3)).await.unwrap();
    assert_eq!(store.saga_by_key("place-order", "key-1").await.unwrap().unwrap().id, "s1");
    assert_eq!(store.saga_by_key("refund", "key-1").await.unwrap().unwrap().id, "s3");
    assert_eq!(
        store.saga("s1").await.unwrap(),
        Some(saga("s1", "place-order", "key-1", SagaStatus::Running, 1))
    );
}

/// A saga's next state is written only by whoever read its current version: a second
/// driver (or a stale one) gets a conflict, and its commit writes nothing else.
pub(crate) async fn a_saga_changes_only_at_the_version_read(store: &dyn Store) {
    create_saga(store, saga("s1", "place-order", "k", SagaStatus::Running, 1)).await.unwrap();
    let update = |version: u64, status: SagaStatus| SagaChange::Update {
        id: "s1".into(),
        version,
        status,
        state: format!("{{\"v\":{version}}}"),
        at: 10 + version as i64,
        by: None,
    };
    store
        .commit(Commit { saga: Some(update(1, SagaStatus::Compensating)), ..Commit::default() })
        .await
        .unwrap();
    let mut t = tx(store);
    t.set("effect", b"x".to_vec()).await.unwrap();
    let stale = Commit {
        service: SERVICE.into(),
        changes: t.into_changes(),
        saga: Some(update(1, SagaStatus::Completed)),
        ..Commit::default()
    };
    let err = store.commit(stale).await.unwrap_err();
    assert!(matches!(err, StoreError::Moved(Conflict { expected: Some(1), actual: Some(2), .. })), "{err:?}");
    assert_eq!(tx(store).get("effect").await.unwrap(), None, "the stale step's effect is not stored");
    let row = store.saga("s1").await.unwrap().unwrap();
    assert_eq!(
        (row.version, row.status.as_str(), row.state.as_str(), row.updated_at),
        (2, "compensating", "{\"v\":1}", 11)
    );
    let missing = SagaChange::Update {
        id: "nope".into(),
        version: 1,
        status: SagaStatus::Completed,
        state: "{}".into(),
        at: 20,
        by: None,
    };
    let err = store.commit(Commit { saga: Some(missing), ..Commit::default() }).await.unwrap_err();
    assert!(matches!(err, StoreError::Moved(Conflict { actual: None, .. })), "{err:?}");
}

/// A host takes over the running and compensating sagas that no live host drives
/// (none, or an owner whose lease ran out), a page at a time; from then on an update
/// by the former owner is refused, while the new owner's goes through; a stuck saga is
/// taken by whoever changes it (an operator's action).
pub(crate) async fn sagas_of_hosts_that_stopped_are_claimed_and_their_owners_fenced(store: &dyn Store) {
    assert_eq!(store.heartbeat("h1", 100, 200).await.unwrap(), "h1", "the only live host leads");
    let owned = |id: &str, status: SagaStatus, owner: Option<&str>| SagaRow {
        owner: owner.map(Into::into),
        ..saga(id, "s", id, status, 1)
    };
    for row in [
        owned("a", SagaStatus::Running, None),
        owned("b", SagaStatus::Running, Some("h1")),
        owned("c", SagaStatus::Completed, None),
        owned("d", SagaStatus::Compensating, Some("gone")),
        owned("e", SagaStatus::Stuck, None),
        owned("f", SagaStatus::Running, Some("gone")),
    ] {
        create_saga(store, row).await.unwrap();
    }
    let ids = |rows: &[SagaRow]| rows.iter().map(|s| s.id.clone()).collect::<Vec<_>>();

    let first = store.claim_sagas("h1", 150, 2).await.unwrap();
    assert_eq!(ids(&first), ["a", "d"], "oldest first, at most the limit, not h1's own, not finished");
    assert!(first.iter().all(|s| s.owner.as_deref() == Some("h1")), "{first:?}");
    assert_eq!(ids(&store.claim_sagas("h1", 150, 10).await.unwrap()), ["f"], "the next page");
    assert!(store.claim_sagas("h1", 150, 10).await.unwrap().is_empty(), "all h1's while it lives");
    assert_eq!(store.saga("b").await.unwrap().unwrap().owner.as_deref(), Some("h1"));

    // h1's lease ran out at 200: another host takes every unfinished saga over.
    let taken = store.claim_sagas("h2", 250, 10).await.unwrap();
    assert_eq!(ids(&taken), ["a", "b", "d", "f"]);
    let update = |id: &str, by: &str| SagaChange::Update {
        id: id.into(),
        version: 1,
        status: SagaStatus::Running,
        state: "{\"next\":1}".into(),
        at: 300,
        by: Some(by.into()),
    };
    let fenced = store.commit(Commit { saga: Some(update("b", "h1")), ..Commit::default() }).await;
    assert!(matches!(fenced, Err(StoreError::Moved(_))), "the former owner is refused: {fenced:?}");
    assert_eq!(store.saga("b").await.unwrap().unwrap().version, 1, "nothing written");
    store.commit(Commit { saga: Some(update("b", "h2")), ..Commit::default() }).await.unwrap();
    assert_eq!(store.saga("b").await.unwrap().unwrap().version, 2);
    store.commit(Commit { saga: Some(update("e", "h1")), ..Commit::default() }).await.unwrap();
    assert_eq!(store.saga("e").await.unwrap().unwrap().owner.as_deref(), Some("h1"), "a stuck saga is taken");
}

pub(crate) async fn sagas_are_listed_by_id_and_status(store: &dyn Store) {
    for (id, status) in [
        ("a", SagaStatus::Completed),
        ("b", SagaStatus::Running),
        ("c", SagaStatus::Stuck),
        ("d", SagaStatus::Compensating),
        ("e", SagaStatus::Running),
    ] {
        create_saga(store, saga(id, "s", id, status, 1)).await.unwrap();
    }
    let ids = |rows: Vec<SagaRow>| rows.into_iter().map(|s| s.id).collect::<Vec<_>>();
    assert_eq!(
        ids(store.sagas(None, None, 10, false, usize::MAX).await.unwrap().sagas),
        ["a", "b", "c", "d", "e"]
    );
    assert_eq!(ids(store.sagas(None, Some("b"), 2, false, usize::MAX).await.unwrap().sagas), ["c", "d"]);
    assert_eq!(ids(store.sagas(None, None, 2, true, usize::MAX).await.unwrap().sagas), ["e", "d"]);
    assert_eq!(ids(store.sagas(None, Some("d"), 10, true, usize::MAX).await.unwrap().sagas), ["c", "b", "a"]);
    assert_eq!(
        ids(store.sagas(Some(SagaStatus::Running), None, 10, false, usize::MAX).await.unwrap().sagas),
        ["b", "e"]
    );
    assert_eq!(
        ids(store.sagas(Some(SagaStatus::Running), Some("e"), 10, true, usize::MAX).await.unwrap().sagas),
        ["b"]
    );
    assert_eq!(ids(store.unfinished_sagas().await.unwrap()), ["b", "d", "e"], "running and compensating");
    let counts = store.saga_counts().await.unwrap();
    let expected = [("compensating", 1), ("completed", 1), ("running", 2), ("stuck", 1)];
    assert_eq!(counts, expected.map(|(s, n)| (SagaStatus::parse(s).unwrap(), n)));
    let update = SagaChange::Update {
        id: "b".into(),
        version: 1,
        status: SagaStatus::Completed,
        state: "{}".into(),
        at: 2,
        by: None,
    };
    store.commit(Commit { saga: Some(update), ..Commit::default() }).await.unwrap();
    let counts = store.saga_counts().await.unwrap();
    let expected = [("compensating", 1), ("completed", 2), ("running", 1), ("stuck", 1)];
    assert_eq!(
        counts,
        expected.map(|(s, n)| (SagaStatus::parse(s).unwrap(), n)),
        "counts follow a change of status"
    );
}

pub(crate) async fn sagas_are_found_by_id_key_or_input_value(store: &dyn Store) {
    let mut first = saga("id-1", "s", "key-1", SagaStatus::Completed, 1);
    first.input = br#"{"order":"o-7","customer":"ada"}"#.to_vec();
    let mut second = saga("id-2", "s", "key-2", SagaStatus::Running, 2);
    second.input = br#"{"order":"o-8","customer":"ada"}"#.to_vec();
    create_saga(store, first).await.unwrap();
    create_saga(store, second).await.unwrap();
    let found = async |text: &str| -> Vec<String> {
        store.search_sagas(text, 10).await.unwrap().into_iter().map(|s| s.id).collect()
    };
    assert_eq!(found("id-1").await, ["id-1"]);
    assert_eq!(found("key-2").await, ["id-2"]);
    assert_eq!(found("o-7").await, ["id-1"]);
    assert_eq!(found("ada").await, ["id-2", "id-1"], "newest first");
    assert_eq!(found("nobody").await, Vec::<String>::new());
    assert_eq!(store.search_sagas("ada", 1).await.unwrap().len(), 1, "at most the limit");

    // Valid JSON that PostgreSQL's jsonb cannot hold (a NUL escaped in a string): it
    // must not make every search fail, and its other values are still found.
    let mut odd = saga("id-3", "s", "key-3", SagaStatus::Running, 3);
    odd.input = br#"{"note":"a\u0000b","customer":"bob"}"#.to_vec();
    create_saga(store, odd).await.unwrap();
    assert_eq!(found("ada").await, ["id-2", "id-1"], "a saga with a NUL in its input breaks no search");
    assert_eq!(found("bob").await, ["id-3"]);
}

pub(crate) async fn definitions_are_kept_by_digest(store: &dyn Store) {
    let def = |digest: &str, text: &str, at: i64| DefinitionRow {
        digest: digest.into(),
        name: "place-order".into(),
        text: text.into(),
        saved_at: at,
    };
    let keep = |rows: Vec<DefinitionRow>| Commit { definitions: rows, ..Commit::default() };
    store.commit(keep(vec![def("sha256:a", "v1", 1), def("sha256:b", "v2", 2)])).await.unwrap();
    assert_eq!(store.definition("sha256:a").await.unwrap(), Some(def("sha256:a", "v1", 1)));
    store.commit(keep(vec![def("sha256:a", "v1 with a comment", 3)])).await.unwrap();
    assert_eq!(store.definition("sha256:a").await.unwrap(), Some(def("sha256:a", "v1 with a comment", 3)));
    assert_eq!(store.definition("sha256:b").await.unwrap(), Some(def("sha256:b", "v2", 2)));
    assert_eq!(store.definition("sha256:c").await.unwrap(), None);
}

/// Events get increasing ids in commit order; an event without a chain of its own is
/// in its commit's chain.
pub(crate) async fn events_are_published_in_commit_order_with_their_chain(store: &dyn Store) {
    let mut t = tx(store);
    t.publish("placed", b"1".to_vec(), None).unwrap();
    t.publish("noted", b"2".to_vec(), Some("elsewhere".into())).unwrap();
    let mut first = commit_of(t.into_changes(), None);
    first.correlation_id = Some("chain".into());
    store.commit(first).await.unwrap();
    publish(store, "placed", "chain", &["3"]).await;
    let events = store.events_after(0, 10).await.unwrap();
    let seen: Vec<(&str, &str, Option<&str>)> = events
        .iter()
        .map(|e| (e.topic.as_str(), std::str::from_utf8(&e.payload).unwrap(), e.correlation_id.as_deref()))
        .collect();
    assert_eq!(
        seen,
        [("placed", "1", Some("chain")), ("noted", "2", Some("elsewhere")), ("placed", "3", Some("chain"))]
    );
    assert!(events.windows(2).all(|w| w[0].id < w[1].id), "ids increase: {events:?}");
    assert!(events.iter().all(|e| e.service == SERVICE));
    assert_eq!(store.events_after(events[0].id, 1).await.unwrap(), [events[1].clone()]);
    assert_eq!(store.event(events[2].id).await.unwrap(), Some(events[2].clone()));
    assert_eq!(store.count_events_of("chain").await.unwrap(), 2);
    assert_eq!(store.dispatched_through().await.unwrap(), 0, "nothing dispatched yet");
}

/// Within a group (subscriber, topic, correlation id) a delivery is due only when no
/// earlier one is pending; other groups do not wait for it.
pub(crate) async fn deliveries_go_out_in_order_within_their_group(store: &dyn Store) {
    publish(store, "placed", "chain-a", &["1", "2"]).await;
    publish(store, "placed", "chain-b", &["3"]).await;
    let ids: Vec<i64> = store.events_after(0, 10).await.unwrap().iter().map(|e| e.id).collect();
    let made = DeliveryChange::Create {
        deliveries: vec![
            delivery(ids[0], "placed", "chain-a"),
            delivery(ids[1], "placed", "chain-a"),
            delivery(ids[2], "placed", "chain-b"),
        ],
        through: ids[2],
    };
    deliveries(store, vec![made.clone()]).await.unwrap();
    deliveries(store, vec![made]).await.unwrap();
    assert_eq!(store.dispatched_through().await.unwrap(), ids[2]);
    let due = |now| async move {
        store.due_deliveries(now, 10).await.unwrap().into_iter().map(|d| d.event_id).collect::<Vec<_>>()
    };
    assert_eq!(due(0).await, [ids[0], ids[2]], "the second of chain-a waits for the first");
    deliveries(store, vec![delivery_update(ids[0], DeliveryStatus::Delivered)]).await.unwrap();
    assert_eq!(due(0).await, [ids[1], ids[2]]);
    let later = DeliveryChange::Update {
        event_id: ids[1],
        subscriber: "sub".into(),
        status: DeliveryStatus::Pending,
        attempts: 1,
        next_at: 100,
        outcome: None,
        last_error: Some("busy".into()),
        done_at: None,
    };
    deliveries(store, vec![later]).await.unwrap();
    assert_eq!(due(99).await, [ids[2]], "not before its next attempt");
    assert_eq!(due(100).await, [ids[1], ids[2]]);
    let mut counts = store.delivery_counts().await.unwrap();
    counts.sort();
    assert_eq!(counts, [(DeliveryStatus::Pending, 2), (DeliveryStatus::Delivered, 1)]);
}

pub(crate) async fn only_a_dead_delivery_can_be_redelivered(store: &dyn Store) {
    publish(store, "placed", "chain", &["1"]).await;
    let id = store.events_after(0, 1).await.unwrap()[0].id;
    let made = DeliveryChange::Create { deliveries: vec![delivery(id, "placed", "chain")], through: id };
    deliveries(store, vec![made]).await.unwrap();
    let redeliver = DeliveryChange::Redeliver { event_id: id, subscriber: "sub".into(), at: 50 };
    let err = deliveries(store, vec![redeliver.clone()]).await.unwrap_err();
    assert!(matches!(err, StoreError::Invalid(ref m) if m.contains("no dead delivery")), "{err:?}");
    deliveries(store, vec![delivery_update(id, DeliveryStatus::Dead)]).await.unwrap();
    assert_eq!(store.dead_deliveries(10).await.unwrap().len(), 1);
    assert_eq!(store.due_deliveries(i64::MAX, 10).await.unwrap(), []);
    deliveries(store, vec![redeliver]).await.unwrap();
    assert_eq!(store.dead_deliveries(10).await.unwrap(), []);
    let due = store.due_deliveries(50, 10).await.unwrap();
    assert_eq!((due.len(), due[0].attempts, due[0].next_at), (1, 1, 50), "pending again; attempts go on");
}

/// A delivery's attempt `n` is recorded only over a pending delivery after `n - 1`
/// attempts: a former leader waking up late cannot overwrite an attempt (or the
/// delivered mark) recorded since.
pub(crate) async fn an_attempt_is_recorded_only_after_the_one_before(store: &dyn Store) {
    publish(store, "placed", "chain", &["1"]).await;
    let id = store.events_after(0, 1).await.unwrap()[0].id;
    let made = DeliveryChange::Create { deliveries: vec![delivery(id, "placed", "chain")], through: id };
    deliveries(store, vec![made]).await.unwrap();
    let attempt = |attempts: u32, status: DeliveryStatus| DeliveryChange::Update {
        event_id: id,
        subscriber: "sub".into(),
        status,
        attempts,
        next_at: 0,
        outcome: (status == DeliveryStatus::Delivered).then(|| "ok".into()),
        last_error: None,
        done_at: (status != DeliveryStatus::Pending).then_some(1),
    };
    let skipped = deliveries(store, vec![attempt(2, DeliveryStatus::Pending)]).await;
    assert!(matches!(skipped, Err(StoreError::Moved(_))), "attempt 2 before attempt 1: {skipped:?}");
    deliveries(store, vec![attempt(1, DeliveryStatus::Delivered)]).await.unwrap();
    let late = deliveries(store, vec![attempt(1, DeliveryStatus::Pending)]).await;
    assert!(matches!(late, Err(StoreError::Moved(_))), "a late attempt 1 over the delivered one: {late:?}");
    let page = store.chain("chain", 0, 10, usize::MAX).await.unwrap();
    assert_eq!(
        page.deliveries.iter().map(|d| (d.status, d.attempts)).collect::<Vec<_>>(),
        [(DeliveryStatus::Delivered, 1)],
        "the delivered mark stands"
    );
}

pub(crate) async fn a_chain_page_is_one_moment_of_its_chain(store: &dyn Store) {
    publish(store, "placed", "chain", &["1", "2", "3"]).await;
    publish(store, "placed", "other", &["4"]).await;
    let ids: Vec<i64> = store.events_after(0, 10).await.unwrap().iter().map(|e| e.id).collect();
    let made = DeliveryChange::Create {
        deliveries: vec![delivery(ids[0], "placed", "chain"), delivery(ids[1], "placed", "chain")],
        through: ids[1],
    };
    deliveries(store, vec![made]).await.unwrap();
    let page = store.chain("chain", 0, 2, usize::MAX).await.unwrap();
    assert_eq!(page.events.iter().map(|e| e.id).collect::<Vec<_>>(), [ids[0], ids[1]]);
    assert_eq!(page.deliveries.iter().map(|d| d.event_id).collect::<Vec<_>>(), [ids[0], ids[1]]);
    assert_eq!(page.dispatched_through, ids[1]);
    let next = store.chain("chain", ids[1], 2, usize::MAX).await.unwrap();
    assert_eq!(next.events.iter().map(|e| e.id).collect::<Vec<_>>(), [ids[2]]);
    assert_eq!(next.deliveries, [], "not dispatched yet");
    assert_eq!(store.chain("nobody", 0, 10, usize::MAX).await.unwrap().events, []);
}

/// Retention forgets only what is past it and finished: a running or stuck saga, an
/// event with a pending or dead delivery, an outcome not yet expired stay; in batches.
pub(crate) async fn retention_forgets_only_what_is_finished_and_old(store: &dyn Store) {
    for n in 0..5 {
        store.commit(commit_of(ChangeSet::default(), Some(outcome(&format!("k{n}"), 1, 10)))).await.unwrap();
    }
    store.commit(commit_of(ChangeSet::default(), Some(outcome("fresh", 1, 1_000)))).await.unwrap();
    assert_eq!(store.prune(PruneKind::Outcomes, 100, 3).await.unwrap(), 3, "a batch");
    assert_eq!(store.prune(PruneKind::Outcomes, 100, 3).await.unwrap(), 2);
    assert!(store.outcome(&key("fresh"), 100).await.unwrap().is_some());

    for (id, status, at) in [
        ("a", SagaStatus::Completed, 5),
        ("b", SagaStatus::Compensated, 5),
        ("c", SagaStatus::Stuck, 5),
        ("d", SagaStatus::Running, 5),
        ("e", SagaStatus::Completed, 500),
    ] {
        create_saga(store, saga(id, "s", id, status, at)).await.unwrap();
    }
    assert_eq!(store.prune(PruneKind::Sagas, 100, 500).await.unwrap(), 2);
    let left: Vec<String> = store
        .sagas(None, None, 10, false, usize::MAX)
        .await
        .unwrap()
        .sagas
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(left, ["c", "d", "e"]);

    publish(store, "topic", "chain", &["0", "1", "2"]).await;
    let ids: Vec<i64> = store.events_after(0, 10).await.unwrap().iter().map(|e| e.id).collect();
    let made = DeliveryChange::Create {
        deliveries: vec![delivery(ids[0], "topic", "chain"), delivery(ids[1], "topic", "chain")],
        through: ids[1],
    };
    deliveries(store, vec![made]).await.unwrap();
    deliveries(store, vec![delivery_update(ids[0], DeliveryStatus::Delivered)]).await.unwrap();
    let later = crate::clock::now_ms() + 1;
    assert_eq!(store.prune(PruneKind::Events, later, 500).await.unwrap(), 1, "only the delivered event");
    let page = store.chain("chain", 0, 10, usize::MAX).await.unwrap();
    let left: Vec<i64> = page.events.iter().map(|e| e.id).collect();
    assert_eq!(left, [ids[1], ids[2]], "the second has a pending delivery; the third is not dispatched yet");
    assert_eq!(page.deliveries.len(), 1);
}

/// A page of sagas or of a chain's events holds no more than its byte budget of
/// inputs and states (payloads) past its first row, at least that row, and says that
/// more follow when it was cut short or is full.
pub(crate) async fn pages_of_sagas_and_events_stop_at_their_byte_budget(store: &dyn Store) {
    for id in ["a", "b", "c"] {
        let row = SagaRow {
            input: vec![b' '; 100],
            state: "{}".into(),
            ..saga(id, "s", id, SagaStatus::Running, 1)
        };
        create_saga(store, row).await.unwrap();
    }
    let page = |after: Option<&'static str>, limit, budget| async move {
        let page = store.sagas(None, after, limit, false, budget).await.unwrap();
        (page.sagas.into_iter().map(|s| s.id).collect::<Vec<_>>(), page.more)
    };
    assert_eq!(
        page(None, 10, 250).await,
        (vec!["a".to_owned(), "b".to_owned()], true),
        "two of 102 bytes fit in 250"
    );
    assert_eq!(page(Some("b"), 10, 250).await, (vec!["c".to_owned()], false), "the last");
    assert_eq!(page(None, 10, 1).await, (vec!["a".to_owned()], true), "the first, whatever its size");
    assert!(page(None, 3, usize::MAX).await.1, "a full page may have more");
    let newest = store.sagas(Some(SagaStatus::Running), None, 10, true, 250).await.unwrap();
    assert_eq!(newest.sagas.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(), ["c", "b"]);

    let payload = "x".repeat(100);
    publish(store, "t", "chain", &[&payload, &payload, &payload]).await;
    let first = store.chain("chain", 0, 10, 250).await.unwrap();
    assert_eq!((first.events.len(), first.more), (2, true));
    let rest = store.chain("chain", first.events[1].id, 10, 250).await.unwrap();
    assert_eq!((rest.events.len(), rest.more), (1, false));
}

/// Once retention forgot every event (an idle spell longer than the event retention),
/// the next event still gets an id above the dispatcher's cursor, so that it is fanned
/// out, and above every id given before. (SQLite once gave the forgotten ids again:
/// the event sat at the cursor, never delivered, and was forgotten in its turn.)
pub(crate) async fn an_event_published_after_retention_forgot_every_event_is_dispatched(store: &dyn Store) {
    publish(store, "topic", "chain", &["before"]).await;
    let first = store.events_after(0, 10).await.unwrap()[0].id;
    let made = DeliveryChange::Create { deliveries: vec![delivery(first, "topic", "chain")], through: first };
    deliveries(store, vec![made]).await.unwrap();
    deliveries(store, vec![delivery_update(first, DeliveryStatus::Delivered)]).await.unwrap();
    let later = crate::clock::now_ms() + 1;
    assert_eq!(store.prune(PruneKind::Events, later, 500).await.unwrap(), 1);
    assert_eq!(store.events_after(0, 10).await.unwrap(), [], "the outbox is empty");

    publish(store, "topic", "chain", &["after"]).await;
    let through = store.dispatched_through().await.unwrap();
    let new = store.events_after(through, 10).await.unwrap();
    assert_eq!(new.len(), 1, "the new event is after the cursor ({through}), to be fanned out");
    assert!(new[0].id > first, "a new id: {} after {first}", new[0].id);
    assert_eq!(new[0].payload, b"after");
}

/// Events kept without their subscribers (from before they were kept) that the cursor
/// passed with no delivery, on a topic subscribed to now, are found: what an older
/// wasaga lost. Not those with a delivery, nor with subscribers kept, nor on other
/// topics, nor past the cursor.
pub(crate) async fn events_passed_without_a_delivery_are_found(store: &dyn Store) {
    assert_eq!(store.unfanned_events(&["t".into()]).await.unwrap(), None);
    publish(store, "t", "chain", &["lost", "delivered", "lost too"]).await;
    publish(store, "u", "chain", &["no subscriber"]).await;
    let mut t = tx(store);
    t.publish("t", b"fixed".to_vec(), None).unwrap();
    let mut changes = t.into_changes();
    changes.events[0].subscribers = Some(Vec::new());
    store.commit(commit_of(changes, None)).await.unwrap();
    let events = store.events_after(0, 10).await.unwrap();
    let made = DeliveryChange::Create {
        deliveries: vec![delivery(events[1].id, "t", "chain")],
        through: events[4].id,
    };
    deliveries(store, vec![made]).await.unwrap();
    publish(store, "t", "chain", &["not yet dispatched"]).await;
    let found = store.unfanned_events(&["t".into(), "v".into()]).await.unwrap().expect("two lost");
    assert_eq!((found.count, found.ids), (2, (events[0].id, events[2].id)));
    assert!(found.published.0 <= found.published.1);
    assert_eq!(store.unfanned_events(&["v".into()]).await.unwrap(), None);
}

/// An upload is kept per service with its bytes and the digest of the file it replaced;
/// a second replaces the first; a removal replaces an upload too; a discard forgets it;
/// a commit that fails keeps none; the stamps tell each change from the others.
pub(crate) async fn uploads_are_kept_replaced_and_discarded_per_service(store: &dyn Store) {
    let upload = |service: &str, wasm: &[u8], base: Option<&[u8]>| UploadRow {
        service: service.into(),
        component: Some(Uploaded { digest: PluginDigest::of(wasm), wasm: wasm.to_vec() }),
        base: base.map(PluginDigest::of),
        uploaded_at: 7,
    };
    let removal = |service: &str, base: Option<&[u8]>, at: i64| UploadRow {
        service: service.into(),
        component: None,
        base: base.map(PluginDigest::of),
        uploaded_at: at,
    };
    let keep = |rows: Vec<UploadRow>| Commit {
        uploads: rows.into_iter().map(UploadChange::Keep).collect(),
        ..Commit::default()
    };
    store.commit(keep(vec![upload("hello", b"v2", Some(b"v1")), upload("echo", b"e2", None)])).await.unwrap();
    assert_eq!(
        store.uploads().await.unwrap(),
        [upload("echo", b"e2", None), upload("hello", b"v2", Some(b"v1"))]
    );
    store.commit(keep(vec![upload("hello", b"v3", None)])).await.unwrap();
    let discard =
        Commit { uploads: vec![UploadChange::Discard { service: "echo".into() }], ..Commit::default() };
    store.commit(discard).await.unwrap();
    assert_eq!(store.uploads().await.unwrap(), [upload("hello", b"v3", None)]);

    store.commit(keep(vec![removal("echo", Some(b"e1"), 8)])).await.unwrap();
    let both = [removal("echo", Some(b"e1"), 8), upload("hello", b"v3", None)];
    assert_eq!(store.uploads().await.unwrap(), both, "a removal is kept, with its base");
    assert_eq!(
        store.upload_stamps().await.unwrap(),
        both.iter().map(UploadRow::stamp).collect::<Vec<_>>(),
        "the stamps say the same without the bytes"
    );
    assert_eq!(store.upload_stamps().await.unwrap()[0].digest, None);
    store.commit(keep(vec![upload("echo", b"e3", None)])).await.unwrap();
    assert_eq!(store.uploads().await.unwrap()[0], upload("echo", b"e3", None), "an upload after a removal");
    let discard =
        Commit { uploads: vec![UploadChange::Discard { service: "echo".into() }], ..Commit::default() };
    store.commit(discard).await.unwrap();

    let mut failing = keep(vec![upload("hello", b"v4", None)]);
    failing.outcome = Some(outcome("k", 1, i64::MAX));
    store.commit(commit_of(ChangeSet::default(), Some(outcome("k", 1, i64::MAX)))).await.unwrap();
    assert!(matches!(store.commit(failing).await, Err(StoreError::Duplicate(_))));
    assert_eq!(
        store.uploads().await.unwrap(),
        [upload("hello", b"v3", None)],
        "a failed commit keeps no upload"
    );
}

/// A commit that publishes an event wakes the dispatcher's hint, one that keeps a
/// plugin change the follower's, and a commit of records alone neither: each waiting
/// task looks at once instead of at its next poll.
pub(crate) async fn commits_wake_the_tasks_that_look_for_them(store: &dyn Store) {
    let wakeups = store.wakeups();
    let hour = std::time::Duration::from_secs(3600);
    let events = || woken(wakeups.events(hour, hour));
    let plugins = || woken(wakeups.plugins(hour, hour));
    // A hint left from opening (PostgreSQL's listener wakes everyone when it starts).
    let _ = (events().await, plugins().await);

    commit(store, {
        let mut records = tx(store);
        records.set("a", b"1".to_vec()).await.unwrap();
        records
    })
    .await
    .unwrap();
    assert!(!events().await && !plugins().await, "records alone wake nobody");

    let mut changes = ChangeSet::default();
    changes.events.push(Event::new("t", b"{}", None));
    store.commit(commit_of(changes, None)).await.unwrap();
    assert!(events().await, "an event wakes the dispatcher");
    assert!(!plugins().await, "and not the plugin follower");

    let removal = UploadRow { service: "x".into(), component: None, base: None, uploaded_at: 1 };
    store.commit(Commit { uploads: vec![UploadChange::Keep(removal)], ..Commit::default() }).await.unwrap();
    assert!(plugins().await, "a plugin change wakes the follower");
}

/// Whether `wait` (a hint's wait with polls far away) ends within 300 ms: only a hint
/// can end it.
pub(crate) async fn woken(wait: impl std::future::Future<Output = ()>) -> bool {
    tokio::time::timeout(std::time::Duration::from_millis(300), wait).await.is_ok()
}
