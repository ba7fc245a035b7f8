//! The event API: the chain of a correlation id, dead letters, redelivery.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::auth::{Operator, Reader};
use super::extract::{Path, Query};
use super::{ApiError, AppState};
use crate::store::{DeliveryRow, DeliveryStatus, EventRow, PAGE_BYTES, StoreError, Subscriber};

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ChainQuery {
    /// The chain's correlation id.
    #[param(required = true, value_type = String)]
    correlation: Option<String>,
    /// The last event id of the previous page (its `next`).
    after: Option<i64>,
    /// Events a page: 100 when absent.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
}

/// A page of a chain, and where the next one starts.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ChainView {
    pub events: Vec<EventView>,
    /// Pass as `?after=` for the next page; absent on the last.
    pub next: Option<i64>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
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
    /// Who receives it: the subscribers of its topic among the services serving when
    /// it was published (absent for events published by a wasaga from before they
    /// were kept, which go to the subscribers serving when they are dispatched).
    pub subscribers: Option<Vec<Subscriber>>,
    pub deliveries: Vec<DeliveryView>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
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
        subscribers: event.subscribers,
        deliveries: deliveries.into_iter().map(Into::into).collect(),
    }
}

/// `GET /v1/events?correlation=ID&after=&limit=`: the event chain, in publication
/// order, each event with its deliveries: a page of at most `limit` events (100 by
/// default, 1,000 at most), read in one snapshot.
#[utoipa::path(
    get,
    path = "/v1/events",
    operation_id = "getEventChain",
    tag = "events",
    params(ChainQuery),
    responses(
        (status = 200, description = "A page of the chain", body = ChainView),
        (status = 400, description = "No `correlation`, a bad `after` or `limit`"),
        (status = 503, description = "The store could not answer"),
    ),
    security((), ("api_token" = []), ("admin_token" = [])),
)]
pub async fn chain(
    _: Reader,
    State(state): State<AppState>,
    Query(query): Query<ChainQuery>,
) -> Result<Json<ChainView>, ApiError> {
    let correlation = query
        .correlation
        .ok_or_else(|| ApiError::bad_request("give the chain's correlation id: /v1/events?correlation=ID"))?;
    let limit = super::page_limit(query.limit)?;
    let page = state.store.chain(&correlation, query.after.unwrap_or(0), limit, PAGE_BYTES).await?;
    let next = page.more.then(|| page.events.last().map(|e| e.id)).flatten();
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
#[utoipa::path(
    get,
    path = "/v1/events/dead",
    operation_id = "listDeadDeliveries",
    tag = "events",
    responses(
        (status = 200, description = "Dead deliveries, at most 1,000", body = Vec<DeliveryView>),
        (status = 503, description = "The store could not answer"),
    ),
    security((), ("api_token" = []), ("admin_token" = [])),
)]
pub async fn dead(_: Reader, State(state): State<AppState>) -> Result<Json<Vec<DeliveryView>>, ApiError> {
    let dead = state.store.dead_deliveries(1000).await?;
    Ok(Json(dead.into_iter().map(Into::into).collect()))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RedeliverQuery {
    /// The service whose delivery went dead.
    #[param(required = true, value_type = String)]
    subscriber: Option<String>,
}

/// `POST /v1/events/{id}/redeliver?subscriber=S`: a dead delivery goes again (202).
#[utoipa::path(
    post,
    path = "/v1/events/{id}/redeliver",
    operation_id = "redeliver",
    tag = "events",
    params(("id" = i64, Path, description = "The event's id"), RedeliverQuery),
    responses(
        (status = 202, description = "The delivery goes again"),
        (status = 400, description = "No `subscriber`, or an id that is not a number"),
        (status = 409, description = "No dead delivery of this event to this subscriber"),
        (status = 503, description = "The store cannot write"),
    ),
    security(("admin_token" = [])),
)]
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
