//! The saga API: start (idempotent), show, list, retry.

use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::auth::{Operator, Reader};
use super::services::{REPLAYED, idempotency_key};
use super::{ApiError, AppState, body_bytes, json_value};
use crate::config::parse_duration;
use crate::saga::{HistoryEntry, OperatorNote, SagaRecord, SagaStatus, StepStatus};

/// The longest `?wait=` honoured.
const MAX_WAIT: Duration = Duration::from_secs(60);

#[derive(Debug, Deserialize)]
pub struct WaitQuery {
    /// e.g. `10s`: answer when the saga is finished or stuck, or after this long.
    wait: Option<String>,
}

impl WaitQuery {
    fn wait(&self) -> Result<Duration, ApiError> {
        match &self.wait {
            Some(text) => Ok(parse_duration(text)
                .map_err(|e| ApiError::bad_request(format!("?wait=: {e}")))?
                .min(MAX_WAIT)),
            None => Ok(Duration::ZERO),
        }
    }
}

/// The saga, once it settled or `wait` passed: 200 if it is finished or stuck, 202 if
/// it is still on its way.
async fn settled_answer(state: &AppState, record: SagaRecord, wait: Duration) -> Result<Response, ApiError> {
    let record = if wait.is_zero() { record } else { state.sagas.wait(&record.row.id, wait).await? };
    let status = if settled(&record) { StatusCode::OK } else { StatusCode::ACCEPTED };
    let mut response = (status, Json(SagaView::from(&record))).into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/sagas/{}", record.row.id)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// `POST /v1/sagas/{name}`: 202 with `Location` while it runs; 200 if it finished (or
/// got stuck) within `?wait=`.
pub async fn start(
    _: Reader,
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(query): Query<WaitQuery>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let key = idempotency_key(&headers)?;
    let wait = query.wait()?;
    let input = json_value(&body_bytes(body)?)?;
    let (record, created) = state.sagas.start(&name, &key, input).await?;
    let mut response = settled_answer(&state, record, wait).await?;
    let replayed = HeaderValue::from_static(if created { "false" } else { "true" });
    response.headers_mut().insert(REPLAYED, replayed);
    Ok(response)
}

/// `GET /v1/sagas/{id}`.
pub async fn show(
    _: Reader,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<SagaView>, ApiError> {
    let record = state.sagas.get(&id).await?;
    Ok(Json(SagaView::from(&record)))
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    status: Option<String>,
    limit: Option<usize>,
    after: Option<String>,
    /// `newest` for newest first (then `after` pages toward older sagas).
    order: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct SagaList {
    pub sagas: Vec<SagaView>,
    /// Pass as `?after=` for the next page; absent on the last page.
    pub next: Option<String>,
}

/// `GET /v1/sagas?status=&limit=&after=&order=`: oldest first (or `order=newest`), at
/// most 1000 a page.
pub async fn list(
    _: Reader,
    State(state): State<AppState>,
    Query(query): Query<ListQuery>,
) -> Result<Json<SagaList>, ApiError> {
    let status = match query.status.as_deref() {
        None => None,
        Some(text) => Some(SagaStatus::parse(text).ok_or_else(|| {
            ApiError::bad_request(format!(
                "unknown status `{text}`: use running, compensating, completed, compensated or stuck"
            ))
        })?),
    };
    let limit = query.limit.unwrap_or(100).clamp(1, 1000);
    let newest_first = match query.order.as_deref() {
        None | Some("oldest") => false,
        Some("newest") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!("unknown order `{other}`: use oldest or newest")));
        }
    };
    let records = state.sagas.list(status, query.after.as_deref(), limit, newest_first).await?;
    let next = (records.len() == limit).then(|| records.last().map(|r| r.row.id.clone())).flatten();
    Ok(Json(SagaList { sagas: records.iter().map(SagaView::from).collect(), next }))
}

#[derive(Debug, Deserialize)]
pub struct SearchQuery {
    q: Option<String>,
}

/// `GET /v1/search?q=`: what an operator may be looking for: the sagas whose id,
/// idempotency key or an input field is `q` (newest first, at most 20), and how many
/// events the chain `q` has.
pub async fn search(
    _: Reader,
    State(state): State<AppState>,
    Query(query): Query<SearchQuery>,
) -> Result<Json<Value>, ApiError> {
    let q = query.q.filter(|q| !q.trim().is_empty()).ok_or_else(|| {
        ApiError::bad_request(
            "give what to look for: /v1/search?q=<saga id, order id, idempotency key, correlation id>",
        )
    })?;
    let q = q.trim();
    let sagas = state.sagas.search(q, 20).await?;
    let events = state.store.count_events_of(q).await?;
    let sagas: Vec<SagaView> = sagas.iter().map(SagaView::from).collect();
    Ok(Json(serde_json::json!({ "query": q, "sagas": sagas, "events": events })))
}

/// `GET /v1/overview`: sagas by status, and this process's last hour minute by minute
/// (sagas completed, compensated, stuck; step failures): the dashboard's header.
pub async fn overview(_: Reader, State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let counts = state.sagas.counts().await?;
    let mut sagas = serde_json::Map::new();
    for status in SagaStatus::ALL {
        let n = counts.iter().find(|(s, _)| *s == status).map_or(0, |(_, n)| *n);
        sagas.insert(status.as_str().into(), n.into());
    }
    let rates = crate::rates::rates().last_hour(crate::clock::now_ms());
    Ok(Json(serde_json::json!({ "sagas": sagas, "rates": rates })))
}

/// Who does an operator action, and why (an optional JSON body): kept in the saga's
/// history.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionBody {
    by: Option<String>,
    note: Option<String>,
    /// `resolve` only: the stuck step, named to make sure it is the one meant.
    step: Option<String>,
    /// `resolve` only: the step's output, as if it had run.
    output: Option<Value>,
}

impl ActionBody {
    fn parse(body: &Bytes) -> Result<ActionBody, ApiError> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(ActionBody::default());
        }
        let parsed: ActionBody = serde_json::from_slice(body).map_err(|e| {
            ApiError::bad_request(format!(
                "the body must be a JSON object like {{\"by\": \"alice\", \"note\": \"why\"}}: {e}"
            ))
        })?;
        let too_long =
            |text: &Option<String>, max: usize| text.as_ref().is_some_and(|t| t.chars().count() > max);
        if too_long(&parsed.by, 100) || too_long(&parsed.note, 1000) {
            return Err(ApiError::bad_request("`by` may have 100 characters and `note` 1000"));
        }
        Ok(parsed)
    }

    fn note(&mut self) -> OperatorNote {
        OperatorNote { by: self.by.take().unwrap_or_else(|| "operator".into()), note: self.note.take() }
    }
}

/// `POST /v1/sagas/{id}/{action}?wait=`: an operator's decision about a stuck saga:
/// - `retry`: its stuck call again;
/// - `compensate`: undo what it did (409 once its pivot committed);
/// - `resolve`: the stuck step was done by hand, with `output` (a stuck compensation:
///   compensated); the saga goes on.
///
/// 202 while it goes on, 200 if it settled within `?wait=`; 409 if it is not stuck.
pub async fn act(
    _: Operator,
    State(state): State<AppState>,
    Path((id, action)): Path<(String, String)>,
    Query(query): Query<WaitQuery>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let wait = query.wait()?;
    let mut body = ActionBody::parse(&body_bytes(body)?)?;
    let note = body.note();
    let sagas = &state.sagas;
    let record = match action.as_str() {
        "retry" => sagas.retry(&id, note).await,
        "compensate" => sagas.compensate(&id, note).await,
        "resolve" => {
            let output = body.output.take().unwrap_or(Value::Null);
            sagas.resolve(&id, body.step.as_deref(), output, note).await
        }
        other => {
            return Err(ApiError::not_found(format!(
                "no saga action `{other}`: use retry, compensate or resolve"
            )));
        }
    }?;
    settled_answer(&state, record, wait).await
}

fn settled(record: &SagaRecord) -> bool {
    record.state.status.is_terminal() || record.state.status == SagaStatus::Stuck
}

/// A saga as the API shows it.
#[derive(Debug, Serialize)]
pub struct SagaView {
    pub id: String,
    pub name: String,
    pub status: SagaStatus,
    /// Why it compensates: the business reason, kept after it gets stuck or is retried.
    pub reason: Option<String>,
    /// Why it waits for an operator, while it does.
    pub stuck_reason: Option<String>,
    pub input: Value,
    pub created_at: i64,
    pub updated_at: i64,
    /// The id of the host that drives it (or drove it last): with several hosts, whose
    /// log to read.
    pub host: Option<String>,
    pub steps: Vec<StepView>,
    /// What happened on the way: failed attempts, getting stuck, operator actions
    /// (who, why).
    pub history: Vec<HistoryEntry>,
}

#[derive(Debug, Serialize)]
pub struct StepView {
    pub name: String,
    pub service: String,
    pub action: String,
    pub compensation: Option<String>,
    pub status: StepStatus,
    pub attempts: u32,
    pub compensation_attempts: u32,
    pub last_error: Option<String>,
    pub output: Option<Value>,
    /// The plugin version that ran the step's last successful call.
    pub digest: Option<String>,
    /// The keys of the records its calls wrote, in its service.
    pub touched: Vec<String>,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub compensation_started_at: Option<i64>,
    pub compensated_at: Option<i64>,
    /// The forward call's time, from its first attempt to its end.
    pub duration_ms: Option<i64>,
    /// The compensation's time, from its first attempt to its end.
    pub compensation_ms: Option<i64>,
}

impl From<&SagaRecord> for SagaView {
    fn from(record: &SagaRecord) -> Self {
        let steps = record
            .state
            .steps
            .iter()
            .enumerate()
            .map(|(i, step)| {
                let def = record.def.as_ref().and_then(|d| d.steps.get(i));
                StepView {
                    name: def.map(|d| d.name.clone()).unwrap_or_else(|| format!("step {i}")),
                    service: def.map(|d| d.service.clone()).unwrap_or_default(),
                    action: def.map(|d| d.action.clone()).unwrap_or_default(),
                    compensation: def.and_then(|d| d.compensation.clone()),
                    status: step.status,
                    attempts: step.attempts,
                    compensation_attempts: step.compensation_attempts,
                    last_error: step.last_error.clone(),
                    output: step.output.clone(),
                    digest: step.digest.clone(),
                    touched: step.touched.clone(),
                    started_at: step.started_at,
                    finished_at: step.finished_at,
                    compensation_started_at: step.compensation_started_at,
                    compensated_at: step.compensated_at,
                    duration_ms: step.started_at.zip(step.finished_at).map(|(a, b)| b - a),
                    compensation_ms: step
                        .compensation_started_at
                        .zip(step.compensated_at)
                        .map(|(a, b)| b - a),
                }
            })
            .collect();
        SagaView {
            id: record.row.id.clone(),
            name: record.row.name.clone(),
            status: record.state.status,
            reason: record.state.reason.clone(),
            stuck_reason: record.state.stuck.clone(),
            input: serde_json::from_slice(&record.row.input).unwrap_or(Value::Null),
            created_at: record.row.created_at,
            updated_at: record.row.updated_at,
            host: record.row.owner.clone(),
            steps,
            history: record.state.history.clone(),
        }
    }
}
