//! Choreography: delivering the outbox's events to the services that subscribe.
//!
//! An event exists only if the invocation that published it committed (the outbox is
//! written in the same transaction). The dispatcher then:
//! 1. makes one delivery per subscriber of each new event (the subscriptions the
//!    plugins' manifests declare when the event is first seen), and moves its cursor;
//! 2. delivers each due delivery as an idempotent invocation with the key
//!    `event/<id>/<subscriber>` and the event's correlation id, so an effect happens
//!    once even when a delivery is repeated after a crash;
//! 3. records the result: delivered (the plugin answered, `ok` or `rejected`), or an
//!    attempt failed (retried with backoff), or, after [`MAX_ATTEMPTS`], dead (an
//!    alert; an operator may redeliver it).
//!
//! Within one correlation id, a subscriber gets the events of a topic in publication
//! order: a delivery waits while an earlier one of its group is pending.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use tokio::sync::Semaphore;

use crate::alert::{Alert, Alerter};
use crate::clock::now_ms;
use crate::cluster::Membership;
use crate::invoke::{Attached, Caller, InvokeError, Invoker, Produced, Request};
use crate::metrics::{labels, metrics};
use crate::store::{
    Commit, DeliveryChange, DeliveryRow, DeliveryStatus, EventRow, Store, StoreError, Subscriber,
};
use crate::trace::{Kind, Span, TraceContext};

/// Attempts of one delivery before it is dead-lettered.
pub const MAX_ATTEMPTS: u32 = 5;
/// How often the dispatcher looks for new events and due deliveries while hints of
/// new ones may not arrive (`store/wakeups.rs`: PostgreSQL's listener not connected),
/// and while it does not lead.
const POLL: Duration = Duration::from_millis(20);
/// How often it looks while every new event and delivery change wakes it: only for
/// retries coming due.
const POLL_HINTED: Duration = Duration::from_millis(100);
/// The least time between two passes, so that a busy store's stream of hints makes a
/// pass per few batches, not one per batch.
const MIN_GAP: Duration = Duration::from_millis(5);
/// How long the dispatcher waits after a pass the store could not answer.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);
/// Deliveries in flight at once.
const CONCURRENCY: usize = 64;

/// Delivers events. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Dispatcher {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    invoker: Invoker,
    store: Arc<dyn Store>,
    alerter: Alerter,
    in_flight: Mutex<HashSet<(i64, String)>>,
    permits: Arc<Semaphore>,
    /// Only the leading host dispatches (see `cluster.rs`).
    membership: Membership,
}

impl Dispatcher {
    pub fn new(invoker: Invoker, store: Arc<dyn Store>, alerter: Alerter, membership: Membership) -> Self {
        Dispatcher {
            inner: Arc::new(Inner {
                invoker,
                store,
                alerter,
                in_flight: Mutex::default(),
                permits: Arc::new(Semaphore::new(CONCURRENCY)),
                membership,
            }),
        }
    }

    /// Runs the dispatcher until the process ends (or the task is aborted).
    pub fn spawn(&self) -> tokio::task::JoinHandle<()> {
        let dispatcher = self.clone();
        let wakeups = self.inner.store.wakeups();
        tokio::spawn(async move {
            // While the store cannot answer (a database restarting), say so once and
            // look again every second, not every poll.
            let mut failing = false;
            let mut looked_back = false;
            loop {
                if !dispatcher.inner.membership.leads() {
                    tokio::time::sleep(POLL).await;
                    continue;
                }
                if !looked_back {
                    looked_back = dispatcher.say_what_was_lost().await;
                }
                let pass = match dispatcher.fan_out().await {
                    Ok(()) => {
                        dispatcher.deliver_due().await.map_err(|e| format!("reading due deliveries: {e}"))
                    }
                    Err(e) => Err(format!("making event deliveries: {e}")),
                };
                match pass {
                    Err(error) => {
                        if !failing {
                            tracing::warn!("event dispatch failed ({error}); trying again every second");
                            failing = true;
                        }
                        tokio::time::sleep(RETRY_AFTER_FAILURE).await;
                        continue;
                    }
                    Ok(()) if failing => {
                        tracing::info!("event dispatch works again");
                        failing = false;
                    }
                    Ok(()) => {}
                }
                tokio::time::sleep(MIN_GAP).await;
                wakeups.events(POLL_HINTED, POLL).await;
            }
        })
    }

    /// Says, once, which events kept from an older wasaga the cursor passed with no
    /// delivery although their topic is subscribed to here: an older wasaga could give
    /// an event an id at or below the cursor (SQLite, after retention forgot the events
    /// before it; PostgreSQL, after an import), and such an event was never delivered.
    /// False while the store cannot answer, to look again.
    async fn say_what_was_lost(&self) -> bool {
        let mut topics: Vec<String> = self
            .inner
            .invoker
            .registry()
            .plugins()
            .iter()
            .flat_map(|plugin| plugin.manifest().subscriptions.iter().map(|(topic, _)| topic.clone()))
            .collect();
        topics.sort_unstable();
        topics.dedup();
        match self.inner.store.unfanned_events(&topics).await {
            Ok(None) => true,
            Ok(Some(lost)) => {
                tracing::warn!(
                    "{} events (ids {} to {}, published {} to {}) on topics subscribed to here were passed by \
                     the dispatcher without a delivery: an older wasaga gave them ids below its cursor (after \
                     retention forgot the events before them, or after an import) and never delivered them \
                     (an event published before its topic had a subscriber shows here too); they are in the \
                     store, `GET /v1/events?correlation=` shows each chain",
                    lost.count,
                    lost.ids.0,
                    lost.ids.1,
                    crate::clock::utc(lost.published.0),
                    crate::clock::utc(lost.published.1),
                );
                true
            }
            Err(_) => false,
        }
    }

    /// Makes the deliveries of the events not yet seen.
    async fn fan_out(&self) -> Result<(), StoreError> {
        let store = &self.inner.store;
        loop {
            let through = store.dispatched_through().await?;
            let events = store.events_after(through, 500).await?;
            let Some(last) = events.last().map(|e| e.id) else { return Ok(()) };
            let registry = self.inner.invoker.registry();
            let deliveries = deliveries_of(&events, now_ms(), |topic| registry.subscribers(topic));
            let change = DeliveryChange::Create { deliveries, through: last };
            self.inner.invoker.commit(Commit { deliveries: vec![change], ..Commit::default() }).await?;
        }
    }

    /// Starts the due deliveries that are not in flight.
    async fn deliver_due(&self) -> Result<(), StoreError> {
        let due = self.inner.store.due_deliveries(now_ms(), CONCURRENCY * 2).await?;
        for delivery in due {
            let id = (delivery.event_id, delivery.subscriber.clone());
            if !self.inner.in_flight.lock().expect("in-flight mutex poisoned").insert(id.clone()) {
                continue;
            }
            let dispatcher = self.clone();
            tokio::spawn(async move {
                let _permit =
                    dispatcher.inner.permits.acquire().await.expect("the semaphore is never closed");
                if let Err(error) = dispatcher.deliver(delivery).await {
                    tracing::warn!("recording a delivery failed: {error}; it is tried again");
                }
                dispatcher.inner.in_flight.lock().expect("in-flight mutex poisoned").remove(&id);
            });
        }
        Ok(())
    }

    /// One attempt of one delivery, and its record. A delivered event is marked in the
    /// subscriber's invocation's own commit: no crash can separate the effect from the
    /// mark, so no restart delivers it again, however long after (the idempotency record
    /// that would have caught it may have expired by then).
    async fn deliver(&self, delivery: DeliveryRow) -> Result<(), StoreError> {
        let Some(event) = self.inner.store.event(delivery.event_id).await? else { return Ok(()) };
        let attempt = delivery.attempts + 1;
        let key = format!("event/{}/{}", event.id, delivery.subscriber);
        let mut request = Request::new(
            Caller::Delivery,
            &delivery.subscriber,
            &delivery.operation,
            event.payload.clone(),
            key,
        );
        // Events stored before every invocation had a chain have none: the delivery
        // then starts a chain of its own.
        if let Some(chain) = &event.correlation_id {
            request.correlation_id = chain.clone();
        }
        request.attempt = attempt;
        // A child of the invocation that published the event: a choreographed flow is
        // one trace.
        let parent = event.traceparent.as_deref().and_then(TraceContext::parse);
        let mut trace = Span::start(
            || format!("deliver {} to {}/{}", event.topic, delivery.subscriber, delivery.operation),
            parent.as_ref(),
            Kind::Consumer,
        );
        trace.set("wasaga.event.id", event.id);
        trace.set("wasaga.event.topic", event.topic.as_str());
        trace.set("wasaga.subscriber", delivery.subscriber.as_str());
        trace.set("wasaga.attempt", attempt);
        request.trace = trace.context();
        let (event_id, subscriber) = (event.id, delivery.subscriber.clone());
        let attach = Arc::new(move |produced: &Produced<'_>| Attached {
            deliveries: vec![delivered(event_id, &subscriber, attempt, produced.result)],
            ..Attached::default()
        });
        let now = now_ms();
        let error = match self.inner.invoker.invoke_with(request, attach).await {
            Ok(invoked) => {
                count(&delivery.subscriber, "delivered");
                if invoked.replayed {
                    // Stored by an earlier attempt without its mark (only a host older
                    // than the combined commit could leave that): mark it now.
                    let change = delivered(event.id, &delivery.subscriber, attempt, &invoked.result);
                    return self.commit(change).await;
                }
                return Ok(());
            }
            // Another attempt of this delivery was recorded meanwhile (a former
            // leader's): the delivery is where that attempt left it.
            Err(InvokeError::Store(StoreError::Moved(_))) => return Ok(()),
            Err(InvokeError::Store(error)) => {
                trace.fail(&error);
                return Err(error);
            }
            // Every instance is busy: this says nothing about the delivery. It stays
            // pending, its attempts unspent, and the next round takes it again.
            Err(error) if error.is_busy() => {
                trace.fail(&error);
                return Ok(());
            }
            Err(error) => error.to_string(),
        };
        trace.fail(&error);
        let status = if attempt >= MAX_ATTEMPTS { DeliveryStatus::Dead } else { DeliveryStatus::Pending };
        count(&delivery.subscriber, status.as_str());
        if status == DeliveryStatus::Dead {
            self.inner.alerter.raise(Alert {
                kind: "delivery_dead_lettered",
                saga_id: event.correlation_id.clone().unwrap_or_default(),
                saga: format!("event {} ({})", event.id, event.topic),
                step: Some(delivery.subscriber.clone()),
                reason: format!(
                    "{attempt} attempts failed: {error}; redeliver with POST /v1/events/{}/redeliver?subscriber={}",
                    event.id, delivery.subscriber
                ),
                at: now_ms(),
            });
        }
        let next_at =
            if status == DeliveryStatus::Pending { now + backoff(attempt).as_millis() as i64 } else { now };
        let change = DeliveryChange::Update {
            event_id: event.id,
            subscriber: delivery.subscriber.clone(),
            status,
            attempts: attempt,
            next_at,
            outcome: None,
            last_error: Some(storable(&error)),
            done_at: (status == DeliveryStatus::Dead).then_some(now_ms()),
        };
        self.commit(change).await
    }

    async fn commit(&self, change: DeliveryChange) -> Result<(), StoreError> {
        match self.inner.invoker.commit(Commit { deliveries: vec![change], ..Commit::default() }).await {
            // Another attempt was recorded meanwhile (a former leader's): it stands.
            Err(StoreError::Moved(_)) => Ok(()),
            other => other,
        }
    }

    /// Puts a dead delivery back in the queue (its attempts go on counting).
    pub async fn redeliver(&self, event_id: i64, subscriber: &str) -> Result<(), StoreError> {
        let change = DeliveryChange::Redeliver { event_id, subscriber: subscriber.into(), at: now_ms() };
        self.inner.invoker.commit(Commit { deliveries: vec![change], ..Commit::default() }).await
    }
}

/// The deliveries of `events`: one to each subscriber fixed when the event was
/// published, whatever serves now (a subscriber being reloaded, or one that failed to
/// load on this host, is not left out); for an event published by a wasaga from
/// before they were kept, one to each subscriber `serving` gives for its topic now.
fn deliveries_of(
    events: &[EventRow],
    now: i64,
    serving: impl Fn(&str) -> Vec<Subscriber>,
) -> Vec<DeliveryRow> {
    let mut deliveries = Vec::new();
    for event in events {
        let subscribers = event.subscribers.clone().unwrap_or_else(|| serving(&event.topic));
        for Subscriber { service, operation } in subscribers {
            deliveries.push(DeliveryRow {
                event_id: event.id,
                subscriber: service,
                operation,
                topic: event.topic.clone(),
                correlation_id: event.correlation_id.clone(),
                status: DeliveryStatus::Pending,
                attempts: 0,
                next_at: now,
                outcome: None,
                last_error: None,
                created_at: now,
                done_at: None,
            });
        }
    }
    deliveries
}

/// The record of a delivery the subscriber answered (`ok`, or a refusal: a business
/// answer, not a failure).
fn delivered(
    event_id: i64,
    subscriber: &str,
    attempt: u32,
    result: &Result<Vec<u8>, String>,
) -> DeliveryChange {
    let now = now_ms();
    DeliveryChange::Update {
        event_id,
        subscriber: subscriber.to_owned(),
        status: DeliveryStatus::Delivered,
        attempts: attempt,
        next_at: now,
        outcome: Some(if result.is_ok() { "ok" } else { "rejected" }.into()),
        last_error: result.as_ref().err().map(|e| storable(e)),
        done_at: Some(now),
    }
}

fn count(subscriber: &str, status: &str) {
    metrics().deliveries.get_or_create(&labels(&[("subscriber", subscriber), ("status", status)])).inc();
}

/// Up to 100 ms × 2^(attempt-1), at most 10 s, full jitter.
fn backoff(attempt: u32) -> Duration {
    let ceiling = Duration::from_millis(100).saturating_mul(1 << attempt.saturating_sub(1).min(10));
    ceiling.min(Duration::from_secs(10)).mul_f64(rand::rng().random::<f64>())
}

/// A plugin's message as kept in the store: text without NUL characters (PostgreSQL's
/// text cannot hold them).
fn storable(message: &str) -> String {
    message.replace('\0', "\u{fffd}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: i64, topic: &str, subscribers: Option<&[(&str, &str)]>) -> EventRow {
        EventRow {
            id,
            service: "publisher".into(),
            topic: topic.into(),
            payload: b"{}".to_vec(),
            correlation_id: Some("chain".into()),
            created_at: 1,
            traceparent: None,
            subscribers: subscribers.map(|list| {
                list.iter()
                    .map(|(s, o)| Subscriber { service: (*s).into(), operation: (*o).into() })
                    .collect()
            }),
        }
    }

    /// An event goes to the subscribers fixed when it was published, not to those
    /// serving when it is fanned out (one of them reloaded, or gone, meanwhile); an
    /// event from before they were kept goes to those serving; none to an event
    /// published with no subscriber, even if one subscribes since.
    #[test]
    fn an_event_goes_to_the_subscribers_of_its_publication() {
        let events = [
            event(1, "placed", Some(&[("stock", "reserve"), ("mail", "note")])),
            event(2, "placed", None),
            event(3, "placed", Some(&[])),
        ];
        let serving = |topic: &str| {
            assert_eq!(topic, "placed");
            vec![Subscriber { service: "audit".into(), operation: "log".into() }]
        };
        let made: Vec<(i64, String, String)> = deliveries_of(&events, 9, serving)
            .into_iter()
            .map(|d| {
                assert_eq!(
                    (d.status, d.attempts, d.next_at, d.topic.as_str()),
                    (DeliveryStatus::Pending, 0, 9, "placed")
                );
                (d.event_id, d.subscriber, d.operation)
            })
            .collect();
        let expected = [(1, "stock", "reserve"), (1, "mail", "note"), (2, "audit", "log")];
        assert_eq!(made, expected.map(|(id, s, o)| (id, s.to_owned(), o.to_owned())));
    }
}
