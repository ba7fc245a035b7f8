//! The contract's tests of what the store forgets (retention), keeps (uploads), and
//! whom its commits wake.

use super::*;

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
