//! The HTTP API (axum). [`router`] builds it over an [`AppState`], so tests can drive
//! it in-process as well as over a real socket. Every error is RFC 9457
//! problem+json ([`ApiError`]).

mod auth;
mod dashboard;
mod error;
mod events;
mod extract;
mod openapi;
mod plugins;
mod records;
mod sagas;
mod server;
mod services;
#[cfg(test)]
mod tests;

use axum::Router;
use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::routing::{get, post};

pub use auth::{Access, Secret};
pub use error::ApiError;
pub use sagas::{SagaList, SagaView, StepView};
pub use server::{ServerLimits, serve};
pub use services::{CORRELATION, DIGEST, REPLAYED, RETENTION};

use std::sync::Arc;

use crate::invoke::Invoker;
use crate::lifecycle::PluginManager;
use crate::saga::SagaEngine;
use crate::store::Store;

/// What every handler shares. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AppState {
    /// Everything persisted: records for the records API, sagas' and events' queries.
    pub store: Arc<dyn Store>,
    pub invoker: Invoker,
    pub sagas: SagaEngine,
    pub plugins: PluginManager,
    pub events: crate::dispatch::Dispatcher,
    /// Who may do what: the admin and API tokens.
    pub access: Access,
}

/// The largest request body accepted (an input or a record value, plus room).
pub const MAX_BODY_BYTES: usize = (1 << 20) + 1024;

/// All routes of the API.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(dashboard::page))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi::openapi_json))
        .route("/v1/plugins", get(plugins::list))
        .route(
            "/v1/plugins/{service}",
            axum::routing::put(plugins::upload)
                .delete(plugins::remove)
                .layer(DefaultBodyLimit::max(plugins::MAX_UPLOAD_BYTES)),
        )
        .route("/v1/services/{service}/{operation}", post(services::invoke))
        .route("/v1/services/{service}/records", get(records::list))
        .route(
            "/v1/services/{service}/records/{*key}",
            get(records::get).put(records::put).delete(records::delete),
        )
        .route("/v1/overview", get(sagas::overview))
        .route("/v1/search", get(sagas::search))
        .route("/v1/events", get(events::chain))
        .route("/v1/events/dead", get(events::dead))
        .route("/v1/events/{id}/redeliver", post(events::redeliver))
        .route("/v1/sagas", get(sagas::list))
        .route("/v1/sagas/{saga}", post(sagas::start).get(sagas::get_saga))
        .route("/v1/sagas/{saga}/{action}", post(sagas::act))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(timed))
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth::loopback_host))
        .layer(axum::middleware::from_fn(traced))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(panicked))
        .with_state(state)
}

/// How long one request may take, its body's arrival included: more than the longest
/// wait a request may ask for (`?wait=`, 60 s).
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(75);

/// Ends a request that takes longer than [`REQUEST_TIMEOUT`] (a body that trickles in)
/// with 408. An invocation it started runs to its end anyway (`invoke.rs`); a retry
/// with its key gets its outcome.
async fn timed(request: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    use axum::response::IntoResponse;
    let mut response = match tokio::time::timeout(REQUEST_TIMEOUT, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            format!("the request did not complete within {REQUEST_TIMEOUT:?}; retry it (with the same idempotency key)"),
        )
        .into_response(),
    };
    // No answer is to be read as anything but the type it says it is.
    response
        .headers_mut()
        .insert(axum::http::header::X_CONTENT_TYPE_OPTIONS, axum::http::HeaderValue::from_static("nosniff"));
    response
}

/// The last line of defence: a handler that panicked answers 500 (as problem+json,
/// without the panic's text) instead of dropping the connection, and the panic is
/// logged. No input should get here: the HTTP property test fails on any 500.
fn panicked(panic: Box<dyn std::any::Any + Send + 'static>) -> axum::response::Response {
    use axum::response::IntoResponse;
    let message = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("a panic without a message");
    tracing::error!("a request handler panicked: {message}");
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "the server failed on this request; it is logged")
        .into_response()
}

/// A span per request when traces are on (`trace.rs`), a child of the client's
/// `traceparent`; its context goes to the handler in the request's extensions, so that
/// a call's invocation, or a saga's steps, are its children.
async fn traced(
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use crate::trace::{Kind, Span, TraceContext};
    if !crate::trace::enabled() {
        return next.run(request).await;
    }
    let parent =
        request.headers().get("traceparent").and_then(|v| v.to_str().ok()).and_then(TraceContext::parse);
    // The route's template, not its path: span names must not be one per record key.
    let route = request.extensions().get::<axum::extract::MatchedPath>().map(|p| p.as_str().to_owned());
    let method = request.method().clone();
    let route = route.unwrap_or_else(|| "unmatched".into());
    let mut span = Span::start(|| format!("{method} {route}"), parent.as_ref(), Kind::Server);
    span.set("http.request.method", method.as_str());
    span.set("http.route", route);
    span.set("url.path", request.uri().path());
    if let Some(context) = span.context() {
        request.extensions_mut().insert(context);
    }
    let response = next.run(request).await;
    span.set("http.response.status_code", response.status().as_u16());
    if response.status().is_server_error() {
        span.fail(response.status());
    }
    response
}

/// Liveness: the process answers.
#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "healthz",
    tag = "operations",
    responses((status = 200, description = "`ok`", content_type = "text/plain", body = String)),
)]
async fn healthz() -> &'static str {
    "ok\n"
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, format!("{method} is not allowed on {}", uri.path()))
}

/// Readiness: the store answers and at least one plugin serves.
#[utoipa::path(
    get,
    path = "/readyz",
    operation_id = "readyz",
    tag = "operations",
    responses(
        (status = 200, description = "`ready`", content_type = "text/plain", body = String),
        (status = 503, description = "Not ready: the store cannot write (since when, and why), or no plugin is loaded"),
    ),
)]
async fn readyz(
    axum::extract::State(state): axum::extract::State<AppState>,
    headers: axum::http::HeaderMap,
) -> Result<&'static str, ApiError> {
    // Open to anyone, it says since when; why (the store's own words: a path, a
    // database's message) only to an operator, and in the log.
    if let Some(failing) = state.store.failing() {
        let since = crate::clock::utc(failing.since);
        let why = match state.access.is_operator(&headers) {
            true => failing.reason,
            false => "the cause is in the log, and said to an operator".into(),
        };
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the store cannot write since {since}: {why}; writes are refused until it can"),
        ));
    }
    state.sagas.counts().await?;
    if state.invoker.registry().plugins().is_empty() {
        return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no plugin is loaded"));
    }
    Ok("ready\n")
}

/// Prometheus metrics (text format); the saga gauges are read from the store now.
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "operations",
    responses((status = 200, description = "The metrics: OpenMetrics when the Accept header asks for it, the Prometheus text format otherwise",
        content((String = "text/plain"), (String = "application/openmetrics-text")))),
    security((), ("api_token" = []), ("admin_token" = [])),
)]
async fn metrics(
    _: auth::Reader,
    axum::extract::State(state): axum::extract::State<AppState>,
    headers: axum::http::HeaderMap,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let m = crate::metrics::metrics();
    if let Ok(counts) = state.sagas.counts().await {
        for status in crate::store::SagaStatus::ALL {
            let n = counts.iter().find(|(s, _)| *s == status).map_or(0, |(_, n)| *n);
            m.sagas.get_or_create(&crate::metrics::labels(&[("status", status.as_str())])).set(n as i64);
            if status == crate::store::SagaStatus::Stuck {
                m.stuck.set(n as i64);
            }
        }
    }
    if accepts_openmetrics(&headers) {
        let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
        ([(axum::http::header::CONTENT_TYPE, content_type)], m.encode()).into_response()
    } else {
        let content_type = "text/plain; version=0.0.4; charset=utf-8";
        ([(axum::http::header::CONTENT_TYPE, content_type)], m.encode_text()).into_response()
    }
}

/// A page's `?limit=`: 100 when absent, 1 to 1,000.
fn page_limit(limit: Option<usize>) -> Result<usize, ApiError> {
    match limit {
        None => Ok(100),
        Some(n @ 1..=1000) => Ok(n),
        Some(n) => Err(ApiError::bad_request(format!("?limit= must be 1 to 1000 (got {n})"))),
    }
}

/// Whether `Accept` names OpenMetrics (and does not refuse it with `q=0`).
fn accepts_openmetrics(headers: &axum::http::HeaderMap) -> bool {
    let accept = headers.get_all(axum::http::header::ACCEPT).iter().filter_map(|v| v.to_str().ok());
    accept.flat_map(|v| v.split(',')).any(|range| {
        let mut parts = range.split(';').map(str::trim);
        let named = parts.next().is_some_and(|t| t.eq_ignore_ascii_case("application/openmetrics-text"));
        let refused = parts.any(|p| p.strip_prefix("q=").and_then(|q| q.parse::<f32>().ok()) == Some(0.0));
        named && !refused
    })
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("no route for {}", uri.path()))
}

/// A request body that must be one JSON value (inputs and record values are JSON by
/// convention, and plugins parse them; refusing bad JSON here gives the client the
/// position of the mistake instead of a plugin's confusion). It is read as a
/// `serde_json::Value`, not merely skimmed, so that what the host accepts is what it
/// can read back: numbers in range, nesting at most 128 deep.
fn json_body(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    let body = body_bytes(body)?;
    json_value(&body)?;
    Ok(body)
}

/// The body, or why it could not be read (over the size limit: 413).
fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        let status = rejection.status();
        let detail = if status == StatusCode::PAYLOAD_TOO_LARGE {
            format!("the body is larger than the limit of {MAX_BODY_BYTES} bytes")
        } else {
            rejection.body_text()
        };
        ApiError::new(status, detail)
    })
}

/// `bytes` as JSON, or a 400 that says where it goes wrong.
fn json_value(bytes: &[u8]) -> Result<serde_json::Value, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))
}
