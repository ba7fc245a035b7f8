//! The contract's tests of the outbox, deliveries and chains.

use super::*;

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
