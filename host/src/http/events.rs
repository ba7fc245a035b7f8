//! The event API: the chain of a correlation id, dead letters, redelivery.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::auth::{Operator, Reader};
use super::{ApiError, AppState};
use crate::store::{DeliveryRow, EventRow, StoreError};

#[derive(Debug, Deserialize)]
pub struct ChainQuery {
    correlation: Option<String>,
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
    pub status: String,
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

/// `GET /v1/events?correlation=ID`: the event chain, in publication order, each event
/// with its deliveries.
pub async fn chain(
    _: Reader,
    State(state): State<AppState>,
    Query(query): Query<ChainQuery>,
) -> Result<Json<Vec<EventView>>, ApiError> {
    let correlation = query
        .correlation
        .ok_or_else(|| ApiError::bad_request("give the chain's correlation id: /v1/events?correlation=ID"))?;
    let store = state.sagas.store();
    let through = store.dispatched_through().map_err(store_error)?;
    let events = store.events_of(&correlation).map_err(store_error)?;
    let mut chain = Vec::with_capacity(events.len());
    for event in events {
        let deliveries = store.deliveries_of(event.id).map_err(store_error)?;
        chain.push(view(event, deliveries, through));
    }
    Ok(Json(chain))
}

/// `GET /v1/events/dead`: deliveries that failed every attempt, oldest first.
pub async fn dead(_: Reader, State(state): State<AppState>) -> Result<Json<Vec<DeliveryView>>, ApiError> {
    let dead = state.sagas.store().dead_deliveries(1000).map_err(store_error)?;
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
        Err(error) => Err(store_error(error)),
    }
}

fn store_error(error: StoreError) -> ApiError {
    tracing::error!("event request failed in the store: {error}");
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, error.to_string())
}
