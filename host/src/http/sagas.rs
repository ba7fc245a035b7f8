//! The saga API: start (idempotent), show, list, retry.

use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::auth::{Operator, Reader};
use super::extract::{Path, Query};
use super::services::{REPLAYED, idempotency_key};
use super::{ApiError, AppState, body_bytes, json_value};
use crate::config::parse_duration;
use crate::saga::{HistoryEntry, OperatorNote, SagaRecord, StepStatus};
use crate::store::SagaStatus;

/// The longest `?wait=` honoured.
const MAX_WAIT: Duration = Duration::from_secs(60);

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WaitQuery {
    /// e.g. `10s`: answer when the saga is finished or stuck, or after this long (at
    /// most a minute).
    #[param(pattern = "^0*[1-9][0-9]{0,8}(ms|s|m|h|d)$")]
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

/// `POST /v1/sagas/{saga}` (a definition's name): 202 with `Location` while it runs;
/// 200 if it finished (or got stuck) within `?wait=`.
#[utoipa::path(
    post,
    path = "/v1/sagas/{saga}",
    operation_id = "startSaga",
    tag = "sagas",
    params(
        // One path with `GET`'s: the segment is a definition's name here, a saga's id there.
        ("saga" = String, Path, description = "The saga definition to start, e.g. `place-order`"),
        ("Idempotency-Key" = String, Header, min_length = 1, max_length = 255, pattern = "^[!-~]+$",
            description = "One unique key per saga, sent again unchanged with each retry: the same key starts one saga"),
        WaitQuery,
    ),
    request_body(content = Object, content_type = "application/json", description = "The saga's input: a JSON object"),
    responses(
        (status = 200, description = "The saga, finished or stuck", body = SagaView, headers(
            ("Location" = String, description = "The saga's URL"),
            ("Idempotent-Replayed" = String, description = "`true` when the key had started this saga before"))),
        (status = 202, description = "The saga, on its way", body = SagaView, headers(
            ("Location" = String, description = "The saga's URL"),
            ("Idempotent-Replayed" = String, description = "`true` when the key had started this saga before"))),
        (status = 400, description = "No or a malformed Idempotency-Key, a bad `wait`, the body not a JSON object"),
        (status = 404, description = "No such saga definition"),
        (status = 409, description = "The store refused the start"),
        (status = 413, description = "The body is over 1 MiB"),
        (status = 422, description = "The key started a saga with another definition or input"),
        (status = 503, description = "The store cannot write"),
    ),
    security((), ("api_token" = []), ("admin_token" = [])),
)]
pub async fn start(
    _: Reader,
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(query): Query<WaitQuery>,
    trace: Option<axum::Extension<crate::trace::TraceContext>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let key = idempotency_key(&headers)?;
    let wait = query.wait()?;
    let input = json_value(&body_bytes(body)?)?;
    let (record, created) = state.sagas.start_traced(&name, &key, input, trace.map(|t| t.0)).await?;
    let mut response = settled_answer(&state, record, wait).await?;
    let replayed = HeaderValue::from_static(if created { "false" } else { "true" });
    response.headers_mut().insert(REPLAYED, replayed);
    Ok(response)
}

/// `GET /v1/sagas/{saga}`: a saga by its id.
#[utoipa::path(
    get,
    path = "/v1/sagas/{saga}",
    operation_id = "getSaga",
    tag = "sagas",
    params(("saga" = String, Path, description = "The saga's id")),
    responses(
        (status = 200, description = "The saga", body = SagaView),
        (status = 404, description = "No such saga"),
        (status = 503, description = "The store could not answer"),
    ),
    security((), ("api_token" = []), ("admin_token" = [])),
)]
pub async fn get_saga(
    _: Reader,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<SagaView>, ApiError> {
    let record = state.sagas.get(&id).await?;
    Ok(Json(SagaView::from(&record)))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only sagas in this status.
    #[param(value_type = Option<SagaStatus>)]
    status: Option<String>,
    /// Sagas a page: 100 when absent.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
    /// The last saga id of the previous page (its `next`).
    after: Option<String>,
    /// `oldest` first (the default), or `newest` first (then `after` pages toward older
    /// sagas).
    #[param(value_type = Option<Order>)]
    order: Option<String>,
}

/// Which end of the list comes first. Described, not parsed: the handler reads the
/// text, to answer an unknown one with the choices.
#[allow(dead_code)]
#[derive(Debug, utoipa::ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum Order {
    Oldest,
    Newest,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SagaList {
    pub sagas: Vec<SagaView>,
    /// Pass as `?after=` for the next page; absent on the last page.
    pub next: Option<String>,
}

/// `GET /v1/sagas?status=&limit=&after=&order=`: oldest first (or `order=newest`), at
/// most 1000 a page.
#[utoipa::path(
    get,
    path = "/v1/sagas",
    operation_id = "listSagas",
    tag = "sagas",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of sagas", body = SagaList),
        (status = 400, description = "An unknown status or order, a bad limit"),
        (status = 503, description = "The store could not answer"),
    ),
    security((), ("api_token" = []), ("admin_token" = [])),
)]
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
    let limit = super::page_limit(query.limit)?;
    let newest_first = match query.order.as_deref() {
        None | Some("oldest") => false,
        Some("newest") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!("unknown order `{other}`: use oldest or newest")));
        }
    };
    let (records, more) = state.sagas.list(status, query.after.as_deref(), limit, newest_first).await?;
    let next = more.then(|| records.last().map(|r| r.row.id.clone())).flatten();
    Ok(Json(SagaList { sagas: records.iter().map(SagaView::from).collect(), next }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SearchQuery {
    /// A saga id, an idempotency key, an input field's value (an order id), or a
    /// correlation id.
    #[param(required = true, value_type = String, min_length = 1, pattern = "\\S")]
    q: Option<String>,
}

/// What a search found.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SearchResult {
    pub query: String,
    /// The sagas whose id, idempotency key or an input field is the query, newest
    /// first, at most 20.
    pub sagas: Vec<SagaView>,
    /// How many events the chain of that correlation id has.
    pub events: u64,
}

/// The dashboard's header.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Overview {
    /// Sagas by status.
    #[schema(value_type = std::collections::BTreeMap<String, u64>)]
    pub sagas: serde_json::Map<String, Value>,
    /// This process's last hour, minute by minute.
    pub rates: crate::rates::LastHour,
}

/// `GET /v1/search?q=`: what an operator may be looking for: the sagas whose id,
/// idempotency key or an input field is `q` (newest first, at most 20), and how many
/// events the chain `q` has.
#[utoipa::path(
    get,
    path = "/v1/search",
    operation_id = "search",
    tag = "sagas",
    params(SearchQuery),
    responses(
        (status = 200, description = "What was found", body = SearchResult),
        (status = 400, description = "No `q`, or only spaces"),
        (status = 503, description = "The store could not answer"),
    ),
    security((), ("api_token" = []), ("admin_token" = [])),
)]
pub async fn search(
    _: Reader,
    State(state): State<AppState>,
    Query(query): Query<SearchQuery>,
) -> Result<Json<SearchResult>, ApiError> {
    let q = query.q.as_deref().unwrap_or_default().trim();
    if q.is_empty() {
        return Err(ApiError::bad_request(
            "give what to look for: /v1/search?q=<saga id, order id, idempotency key, correlation id>",
        ));
    }
    // A search reads up to a thousand inputs: a few at a time, the rest wait a little
    // or are told to come back, rather than take the store from everyone else.
    static SEARCHES: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);
    let _turn = tokio::time::timeout(std::time::Duration::from_secs(5), SEARCHES.acquire())
        .await
        .map_err(|_| crate::store::StoreError::Overloaded("too many searches at once".into()))?
        .expect("never closed");
    let sagas = state.sagas.search(q, 20).await?;
    let events = state.store.count_events_of(q).await?;
    let sagas = sagas.iter().map(SagaView::from).collect();
    Ok(Json(SearchResult { query: q.to_owned(), sagas, events }))
}

/// `GET /v1/overview`: sagas by status, and this process's last hour minute by minute
/// (sagas completed, compensated, stuck; step failures): the dashboard's header.
#[utoipa::path(
    get,
    path = "/v1/overview",
    operation_id = "overview",
    tag = "sagas",
    responses(
        (status = 200, description = "Sagas by status, and the last hour", body = Overview),
        (status = 503, description = "The store could not answer"),
    ),
    security((), ("api_token" = []), ("admin_token" = [])),
)]
pub async fn overview(_: Reader, State(state): State<AppState>) -> Result<Json<Overview>, ApiError> {
    let counts = state.sagas.counts().await?;
    let mut sagas = serde_json::Map::new();
    for status in SagaStatus::ALL {
        let n = counts.iter().find(|(s, _)| *s == status).map_or(0, |(_, n)| *n);
        sagas.insert(status.as_str().into(), n.into());
    }
    let rates = crate::rates::rates().last_hour(crate::clock::now_ms());
    Ok(Json(Overview { sagas, rates }))
}

/// Who does an operator action, and why (an optional JSON body): kept in the saga's
/// history.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ActionBody {
    /// Who acts (`operator` when absent).
    #[schema(max_length = 100)]
    by: Option<String>,
    /// Why.
    #[schema(max_length = 1000)]
    note: Option<String>,
    /// `resolve` only: the stuck step, named to make sure it is the one meant.
    step: Option<String>,
    /// `resolve` only: the step's output, as if it had run.
    output: Option<Value>,
}

/// What an operator does to a stuck saga (the path's last part). Described, not parsed,
/// as [`Order`].
#[allow(dead_code)]
#[derive(Debug, utoipa::ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum Action {
    Retry,
    Compensate,
    Resolve,
}

impl ActionBody {
    fn parse(body: &Bytes) -> Result<ActionBody, ApiError> {
        if body.iter().all(u8::is_ascii_whitespace) || body.trim_ascii() == b"null" {
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

/// `POST /v1/sagas/{saga}/{action}?wait=`: an operator's decision about a stuck saga:
/// - `retry`: its stuck call again;
/// - `compensate`: undo what it did (409 once its pivot committed);
/// - `resolve`: the stuck step was done by hand, with `output` (a stuck compensation:
///   compensated); the saga goes on.
///
/// 202 while it goes on, 200 if it settled within `?wait=`; 409 if it is not stuck.
#[utoipa::path(
    post,
    path = "/v1/sagas/{saga}/{action}",
    operation_id = "actOnSaga",
    tag = "sagas",
    params(
        ("saga" = String, Path, description = "The saga's id"),
        ("action" = Action, Path, description = "What to do"),
        WaitQuery,
    ),
    request_body(content = Option<ActionBody>, content_type = "application/json",
        description = "Who acts and why (optional), and for `resolve` the step and its output"),
    responses(
        (status = 200, description = "The saga, settled", body = SagaView, headers(("Location" = String, description = "The saga's URL"))),
        (status = 202, description = "The saga, on its way", body = SagaView, headers(("Location" = String, description = "The saga's URL"))),
        (status = 400, description = "A bad body or `wait`"),
        (status = 404, description = "No such saga or action"),
        (status = 409, description = "The saga is not stuck, is past its pivot (compensate), is driven elsewhere, or the step named is not the stuck one"),
        (status = 413, description = "The body is over 1 MiB"),
        (status = 503, description = "The store cannot write"),
    ),
    security(("admin_token" = [])),
)]
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
#[derive(Debug, Serialize, utoipa::ToSchema)]
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

#[derive(Debug, Serialize, utoipa::ToSchema)]
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
