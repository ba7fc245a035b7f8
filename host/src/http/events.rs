//! The event API: the chain of a correlation id, dead letters, redelivery.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::auth::{Operator, Reader};
use super::{ApiError, AppState};
use crate::store::{DeliveryRow, DeliveryStatus, EventRow, StoreError};

#[derive(Debug, Deserialize)]
pub struct ChainQuery {
    correlation: Option<String>,
    /// The last event id of the previous page.
    after: Option<i64>,
    limit: Option<usize>,
}

/// A page of a chain, and where the next one starts.
#[derive(Debug, Serialize)]
pub struct ChainView {
    pub events: Vec<EventView>,
    /// Pass as `?after=` for the next page; absent on the last.
    pub next: Option<i64>,
}

#[derive(Debug, Serialize)]
pub struct EventView {
    pub id: i64,
    pub topic: String,
    /// The service that published it.
    pub publisher: String,
    pub correlation_id: Option<String>,
    pub payload: Value,
    pub created_at: i64,
    /// Whether its deliveries have been made (an event with no subscriber has none).
    pub dispatched: bool,
    pub deliveries: Vec<DeliveryView>,
}

#[derive(Debug, Serialize)]
pub struct DeliveryView {
    pub event_id: i64,
    /// The chain of the event.
    pub correlation_id: Option<String>,
    pub subscriber: String,
    pub operation: String,
    /// `pending`, `delivered` or `dead`.
    pub status: DeliveryStatus,
    /// `ok` or `rejected` once delivered.
    pub outcome: Option<String>,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub created_at: i64,
    pub done_at: Option<i64>,
}

impl From<DeliveryRow> for DeliveryView {
    fn from(d: DeliveryRow) -> Self {
        DeliveryView {
            event_id: d.event_id,
            correlation_id: d.correlation_id,
            subscriber: d.subscriber,
            operation: d.operation,
            status: d.status,
            outcome: d.outcome,
            attempts: d.attempts,
            last_error: d.last_error,
            created_at: d.created_at,
            done_at: d.done_at,
        }
    }
}

fn view(event: EventRow, deliveries: Vec<DeliveryRow>, dispatched_through: i64) -> EventView {
    EventView {
        dispatched: event.id <= dispatched_through,
        id: event.id,
        topic: event.topic,
        publisher: event.service,
        correlation_id: event.correlation_id,
        payload: serde_json::from_slice(&event.payload)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&event.payload).into_owned())),
        created_at: event.created_at,
        deliveries: deliveries.into_iter().map(Into::into).collect(),
    }
}

/// `GET /v1/events?correlation=ID&after=&limit=`: the event chain, in publication
/// order, each event with its deliveries: a page of at most `limit` events (100 by
/// default, 1,000 at most), read in one snapshot.
pub async fn chain(
    _: Reader,
    State(state): State<AppState>,
    Query(query): Query<ChainQuery>,
) -> Result<Json<ChainView>, ApiError> {
    let correlation = query
        .correlation
        .ok_or_else(|| ApiError::bad_request("give the chain's correlation id: /v1/events?correlation=ID"))?;
    let limit = query.limit.unwrap_or(100).clamp(1, 1000);
    let page = state.store.chain(&correlation, query.after.unwrap_or(0), limit).await?;
    let next = (page.events.len() == limit).then(|| page.events.last().map(|e| e.id)).flatten();
    let mut deliveries = page.deliveries.into_iter().peekable();
    let events = page
        .events
        .into_iter()
        .map(|event| {
            let mut own = Vec::new();
            while let Some(d) = deliveries.next_if(|d| d.event_id == event.id) {
                own.push(d);
            }
            view(event, own, page.dispatched_through)
        })
        .collect();
    Ok(Json(ChainView { events, next }))
}

/// `GET /v1/events/dead`: deliveries that failed every attempt, oldest first.
pub async fn dead(_: Reader, State(state): State<AppState>) -> Result<Json<Vec<DeliveryView>>, ApiError> {
    let dead = state.store.dead_deliveries(1000).await?;
    Ok(Json(dead.into_iter().map(Into::into).collect()))
}

#[derive(Debug, Deserialize)]
pub struct RedeliverQuery {
    subscriber: Option<String>,
}

/// `POST /v1/events/{id}/redeliver?subscriber=S`: a dead delivery goes again (202).
pub async fn redeliver(
    _: Operator,
    State(state): State<AppState>,
    Path(id): Path<i64>,
    Query(query): Query<RedeliverQuery>,
) -> Result<StatusCode, ApiError> {
    let subscriber =
        query.subscriber.ok_or_else(|| ApiError::bad_request("name the ?subscriber= to redeliver to"))?;
    match state.events.redeliver(id, &subscriber).await {
        Ok(()) => Ok(StatusCode::ACCEPTED),
        Err(StoreError::Invalid(message)) => Err(ApiError::new(StatusCode::CONFLICT, message)),
        Err(error) => Err(error.into()),
    }
}
