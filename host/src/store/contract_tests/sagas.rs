//! The contract's tests of sagas and saga definitions.

use super::*;

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
