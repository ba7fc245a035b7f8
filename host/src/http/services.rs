//! `POST /v1/services/{service}/{operation}`: one idempotent invocation.

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::auth::Reader;
use super::extract::Path;
use super::{ApiError, AppState, json_body};
use crate::invoke::{Caller, Invoked, Request};

/// `true` on a response that is the stored outcome of an earlier request.
pub const REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");
/// How long (seconds) an outcome is kept and replayed for its key.
pub const RETENTION: HeaderName = HeaderName::from_static("idempotency-retention");
/// The plugin version that produced the outcome.
pub const DIGEST: HeaderName = HeaderName::from_static("wasaga-plugin-digest");
/// The chain a call belongs to: sent by the client, or made up by the host; answered
/// either way.
pub const CORRELATION: HeaderName = HeaderName::from_static("correlation-id");
const KEY: &str = "idempotency-key";

/// Calls one operation of a service. The outcome is kept for the key: the same key
/// with the same request answers it again (`Idempotent-Replayed: true`) without running
/// the operation; the same key with another request is refused (422).
#[utoipa::path(
    post,
    path = "/v1/services/{service}/{operation}",
    operation_id = "invoke",
    tag = "services",
    params(
        ("service" = String, Path, description = "A loaded service"),
        ("operation" = String, Path, description = "One of its operations (internal ones only with the admin token)"),
        ("Idempotency-Key" = String, Header, min_length = 1, max_length = 255, pattern = "^[!-~]+$",
            description = "One unique key per request, sent again unchanged with each retry"),
        ("Correlation-Id" = Option<String>, Header, min_length = 1, max_length = 255, pattern = "^[!-~]+$",
            description = "The chain the call belongs to; made up by the host when absent"),
    ),
    request_body(content = serde_json::Value, content_type = "application/json",
        description = "The operation's input: any JSON value"),
    responses(
        (status = 200, description = "The operation's output", content_type = "application/json",
            body = serde_json::Value, headers(
                ("Idempotent-Replayed" = String, description = "`true` when this is the stored outcome of an earlier request"),
                ("Idempotency-Retention" = u64, description = "Seconds the outcome is kept and replayed for its key"),
                ("Wasaga-Plugin-Digest" = String, description = "The plugin version that produced the outcome"),
                ("Correlation-Id" = String, description = "The call's chain"))),
        (status = 400, description = "No or a malformed Idempotency-Key or Correlation-Id; the body is not JSON"),
        (status = 403, description = "The operation is internal: only sagas, deliveries and operators call it"),
        (status = 404, description = "No such service or operation"),
        (status = 409, description = "A request with this key is still running, or its writes kept conflicting"),
        (status = 413, description = "The body is over 1 MiB"),
        (status = 422, description = "The operation refused the request (its reason), or the key was used for another request"),
        (status = 500, description = "The plugin trapped or went past a limit"),
        (status = 503, description = "The store cannot write, the instances are busy, or the call failed transiently"),
        (status = 504, description = "The call ran past its deadline"),
    ),
    security((), ("api_token" = []), ("admin_token" = [])),
)]
pub async fn invoke(
    reader: Reader,
    State(state): State<AppState>,
    Path((service, operation)): Path<(String, String)>,
    trace: Option<axum::Extension<crate::trace::TraceContext>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let key = idempotency_key(&headers)?;
    let input = json_body(body)?;
    // An operator may call internal operations too; a client only public ones.
    let caller = if reader.operator { Caller::Operator } else { Caller::Client };
    let mut request = Request::new(caller, &service, &operation, input.to_vec(), key);
    request.trace = trace.map(|t| t.0);
    if let Some(chain) = correlation_id(&headers)? {
        request.correlation_id = chain;
    }
    let correlation = request.correlation_id.clone();
    let retention = state.invoker.options().retention.as_secs();
    let invoked = state.invoker.invoke(request).await.map_err(|e| {
        ApiError::from(e).with_header(RETENTION, retention).with_header(CORRELATION, &correlation)
    })?;
    Ok(answer(invoked, retention))
}

/// The `Correlation-Id` header, if sent: 1 to 255 visible ASCII characters.
fn correlation_id(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(CORRELATION) else { return Ok(None) };
    let text = value.to_str().unwrap_or_default();
    crate::service::validate_correlation_id(text)
        .map_err(|e| ApiError::bad_request(format!("the Correlation-Id header: {e}")))?;
    Ok(Some(text.to_owned()))
}

fn answer(invoked: Invoked, retention: u64) -> Response {
    let mut headers = HeaderMap::new();
    if let Ok(value) = HeaderValue::from_str(&invoked.correlation_id) {
        headers.insert(CORRELATION, value);
    }
    headers.insert(REPLAYED, HeaderValue::from_static(if invoked.replayed { "true" } else { "false" }));
    headers.insert(RETENTION, HeaderValue::from(retention));
    if let Ok(digest) = HeaderValue::from_str(&invoked.digest.to_string()) {
        headers.insert(DIGEST, digest);
    }
    match invoked.result {
        Ok(output) => {
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            (StatusCode::OK, headers, output).into_response()
        }
        Err(reason) => {
            let mut error = ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, reason);
            error.headers = headers.into_iter().filter_map(|(name, value)| Some((name?, value))).collect();
            error.into_response()
        }
    }
}

/// The `Idempotency-Key` header: required, 1 to 255 visible ASCII characters.
pub(super) fn idempotency_key(headers: &HeaderMap) -> Result<String, ApiError> {
    let value = headers.get(KEY).ok_or_else(|| {
        ApiError::bad_request(
            "the Idempotency-Key header is required: one unique key per request, retried unchanged",
        )
    })?;
    let key = value.to_str().unwrap_or_default();
    let visible = !key.is_empty() && key.bytes().all(|b| b.is_ascii_graphic());
    if !visible || key.len() > 255 {
        return Err(ApiError::bad_request(format!(
            "the Idempotency-Key header must be 1 to 255 visible ASCII characters (got {} bytes)",
            value.len()
        )));
    }
    Ok(key.to_owned())
}
