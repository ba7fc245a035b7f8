//! What the store keeps of choreography: the outbox's events, their deliveries to
//! subscribers, and the dispatcher's cursor.

use serde::Serialize;

use super::{Conflict, StoreError};

/// Where one delivery is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Not made yet: due at its `next_at`, or waiting for an earlier one of its group.
    Pending,
    /// The subscriber answered (`ok`, or a refusal: a business answer).
    Delivered,
    /// Out of attempts: an operator may redeliver it.
    Dead,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Dead => "dead",
        }
    }

    pub fn parse(text: &str) -> Option<DeliveryStatus> {
        [Self::Pending, Self::Delivered, Self::Dead].into_iter().find(|s| s.as_str() == text)
    }
}

/// One receiver of an event: a service and the operation its subscription names.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize, utoipa::ToSchema,
)]
pub struct Subscriber {
    pub service: String,
    pub operation: String,
}

impl Subscriber {
    /// How a list of them is kept with an event (a column of text): JSON.
    pub(crate) fn encode(subscribers: &[Subscriber]) -> String {
        serde_json::to_string(subscribers).expect("subscribers serialise")
    }

    /// The list kept with an event; `None` for an event that has none kept (published
    /// by an older wasaga) or whose list does not read (never written so).
    pub(crate) fn decode(text: Option<&str>) -> Option<Vec<Subscriber>> {
        serde_json::from_str(text?).ok()
    }
}

/// Events kept that the dispatcher passed without a delivery ([`super::Store::unfanned_events`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unfanned {
    pub count: u64,
    /// The lowest and highest of their ids.
    pub ids: (i64, i64),
    /// When the first and the last of them were published (unix ms).
    pub published: (i64, i64),
}

/// An event of the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRow {
    /// Increasing in commit order.
    pub id: i64,
    /// The service that published it.
    pub service: String,
    pub topic: String,
    pub payload: Vec<u8>,
    pub correlation_id: Option<String>,
    /// Unix ms.
    pub created_at: i64,
    /// The publishing invocation's span (W3C `traceparent`), when traces were on.
    pub traceparent: Option<String>,
    /// Who receives it: the subscribers of its topic among the services serving when
    /// it was published (`None`: published by a wasaga from before they were kept; the
    /// dispatcher then takes the subscribers serving when it fans the event out).
    pub subscribers: Option<Vec<Subscriber>>,
}

/// One event's delivery to one subscriber.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryRow {
    pub event_id: i64,
    pub subscriber: String,
    pub operation: String,
    pub topic: String,
    pub correlation_id: Option<String>,
    pub status: DeliveryStatus,
    pub attempts: u32,
    /// Unix ms: not before then.
    pub next_at: i64,
    /// `ok` or `rejected` once delivered.
    pub outcome: Option<String>,
    pub last_error: Option<String>,
    pub created_at: i64,
    pub done_at: Option<i64>,
}

/// One page of an event chain, read in one snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChainPage {
    /// Oldest first.
    pub events: Vec<EventRow>,
    /// The deliveries of those events, by event and subscriber.
    pub deliveries: Vec<DeliveryRow>,
    /// The last event the dispatcher has made the deliveries of.
    pub dispatched_through: i64,
    /// Whether more events of the chain may follow (the page is full, or was cut
    /// short by its byte budget).
    pub more: bool,
}

/// A change to the deliveries, committed through the writer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryChange {
    /// New deliveries, for the events up to `through` (the dispatch cursor moves there).
    Create { deliveries: Vec<DeliveryRow>, through: i64 },
    /// The result of attempt `attempts`: refused (a conflict) unless the delivery is
    /// pending after `attempts - 1` of them, so that an attempt another host (a former
    /// leader) made meanwhile is never overwritten.
    Update {
        event_id: i64,
        subscriber: String,
        status: DeliveryStatus,
        attempts: u32,
        next_at: i64,
        outcome: Option<String>,
        last_error: Option<String>,
        done_at: Option<i64>,
    },
    /// A dead delivery back to pending (an operator's redelivery).
    Redeliver { event_id: i64, subscriber: String, at: i64 },
}

/// Why a [`DeliveryChange::Update`] was refused: the delivery is no longer pending
/// after `attempts - 1` attempts (another host recorded one meanwhile).
pub(crate) fn attempt_refused(event_id: i64, subscriber: &str, attempts: u32) -> StoreError {
    StoreError::Moved(Conflict {
        key: format!("delivery of event {event_id} to `{subscriber}`"),
        expected: Some(u64::from(attempts.saturating_sub(1))),
        actual: None,
    })
}

/// Why a saga's update was refused: it is no longer at `expected` (or not this
/// host's any more, or gone).
pub(crate) fn saga_moved(id: &str, expected: u64, actual: Option<u64>) -> StoreError {
    StoreError::Moved(Conflict { key: format!("saga {id}"), expected: Some(expected), actual })
}
