//! `GET`/`PUT`/`DELETE /v1/services/{service}/records/{key}`: versioned records over
//! HTTP, with the version as the `ETag` and conditional writes.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::auth::{Operator, Reader};
use super::{ApiError, AppState, json_body};
use crate::store::{ChangeSet, Commit, NUL_IN_KEY, Slot, StoreError, Write};

pub async fn get(
    _: Reader,
    State(state): State<AppState>,
    Path((service, key)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let slot = read(&state, &service, &key).await?;
    let Some(entry) = slot.entry() else {
        return Err(ApiError::not_found(format!("service `{service}` has no record `{key}`")));
    };
    let headers = [
        (header::ETAG, etag(entry.version)),
        (header::CONTENT_TYPE, HeaderValue::from_static("application/json")),
    ];
    Ok((StatusCode::OK, headers, entry.value).into_response())
}

#[derive(Debug, serde::Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    prefix: String,
    after: Option<String>,
    limit: Option<usize>,
}

/// A page of records, and where the next one starts.
#[derive(Debug, serde::Serialize)]
pub struct RecordPage {
    pub records: Vec<RecordView>,
    /// Pass as `?after=` for the next page; absent on the last.
    pub next: Option<String>,
}

/// The most bytes of values one page of the records list holds (past its first
/// record): a page of 1,000 values of 1 MiB once took 7 GiB to answer.
const PAGE_BYTES: usize = 4 << 20;

#[derive(Debug, serde::Serialize)]
pub struct RecordView {
    pub key: String,
    pub version: u64,
    /// The value as JSON (or as a string if it is not JSON).
    pub value: serde_json::Value,
}

/// `GET /v1/services/{service}/records?prefix=&after=&limit=`: records in key order,
/// a page of at most `limit` (100 by default, 1,000 at most) and 4 MiB of values.
pub async fn list(
    _: Reader,
    State(state): State<AppState>,
    Path(service): Path<String>,
    axum::extract::Query(query): axum::extract::Query<ListQuery>,
) -> Result<axum::Json<RecordPage>, ApiError> {
    known_service(&state, &service)?;
    no_nul(&query.prefix)?;
    no_nul(query.after.as_deref().unwrap_or_default())?;
    let limit = query.limit.unwrap_or(100).clamp(1, 1000);
    let mut snapshot = state.store.snapshot(&service)?;
    let scanned = snapshot.scan(&query.prefix, query.after.as_deref(), limit, PAGE_BYTES).await?;
    let next = (!scanned.complete).then(|| scanned.rows.last().map(|(key, _)| key.clone())).flatten();
    let records = scanned
        .rows
        .into_iter()
        .map(|(key, entry)| RecordView {
            key,
            version: entry.version,
            value: serde_json::from_slice(&entry.value).unwrap_or_else(|_| {
                serde_json::Value::String(String::from_utf8_lossy(&entry.value).into_owned())
            }),
        })
        .collect();
    Ok(axum::Json(RecordPage { records, next }))
}

pub async fn put(
    _: Operator,
    State(state): State<AppState>,
    Path((service, key)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let value = json_body(body)?;
    let precondition = precondition(&headers, true)?;
    let (version, created) = write(&state, &service, &key, Some(value.to_vec()), precondition).await?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, [(header::ETAG, etag(version))]).into_response())
}

pub async fn delete(
    _: Operator,
    State(state): State<AppState>,
    Path((service, key)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let precondition = precondition(&headers, false)?;
    write(&state, &service, &key, None, precondition).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// What the client says it is writing over.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Precondition {
    /// `If-Match`: the record must exist and be at one of these versions (`*`: any).
    Versions(Option<Vec<u64>>),
    /// `If-None-Match: *`: the record must not exist.
    Absent,
}

impl Precondition {
    fn holds(&self, current: &Slot) -> bool {
        match (self, current.visible_version()) {
            (Precondition::Versions(None), actual) => actual.is_some(),
            (Precondition::Versions(Some(versions)), Some(actual)) => versions.contains(&actual),
            (Precondition::Versions(Some(_)), None) => false,
            (Precondition::Absent, actual) => actual.is_none(),
        }
    }
}

/// Reads `If-Match` (RFC 9110: `*` or a list of entity tags, compared strongly, so a
/// weak tag `W/"3"` never matches) or, where creating is allowed, `If-None-Match: *`.
fn precondition(headers: &HeaderMap, may_create: bool) -> Result<Precondition, ApiError> {
    if let Some(value) = headers.get(header::IF_MATCH) {
        let text = value
            .to_str()
            .map_err(|_| ApiError::bad_request("If-Match must be visible ASCII, e.g. \"3\""))?
            .trim();
        if text == "*" {
            return Ok(Precondition::Versions(None));
        }
        let mut versions = Vec::new();
        for tag in text.split(',').map(str::trim) {
            if tag.starts_with("W/") {
                continue;
            }
            let version =
                tag.strip_prefix('"').and_then(|t| t.strip_suffix('"')).and_then(|t| t.parse().ok());
            match version {
                Some(version) => versions.push(version),
                None => {
                    return Err(ApiError::bad_request(format!(
                        "If-Match takes versions as returned in ETag, e.g. \"3\" (got {tag})"
                    )));
                }
            }
        }
        return Ok(Precondition::Versions(Some(versions)));
    }
    if may_create && headers.get(header::IF_NONE_MATCH).is_some_and(|v| v.as_bytes() == b"*") {
        return Ok(Precondition::Absent);
    }
    let how = if may_create {
        "If-Match: \"<version>\" to replace, or If-None-Match: * to create"
    } else {
        "If-Match: \"<version>\""
    };
    Err(ApiError::new(
        StatusCode::PRECONDITION_REQUIRED,
        format!("a write must say what it replaces, so that no update is lost: send {how}"),
    ))
}

async fn read(state: &AppState, service: &str, key: &str) -> Result<Slot, ApiError> {
    known_service(state, service)?;
    no_nul(key)?;
    let mut snapshot = state.store.snapshot(service)?;
    Ok(snapshot.get(key).await?)
}

/// Writes (or deletes, with `None`) under the precondition; returns the new version and
/// whether the record was created.
async fn write(
    state: &AppState,
    service: &str,
    key: &str,
    value: Option<Vec<u8>>,
    precondition: Precondition,
) -> Result<(u64, bool), ApiError> {
    let limits = state.invoker.options().tx_limits;
    if key.len() > limits.max_key_bytes {
        return Err(ApiError::bad_request(format!("a key must be at most {} bytes", limits.max_key_bytes)));
    }
    if let Some(value) = &value
        && value.len() > limits.max_value_bytes
    {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("a value may be at most {} bytes", limits.max_value_bytes),
        ));
    }
    let current = read(state, service, key).await?;
    if !precondition.holds(&current) {
        return Err(precondition_failed(service, key, current.visible_version()));
    }
    if value.is_none() && current.value.is_none() {
        return Ok((current.version, false));
    }
    let version = current.version + 1;
    let changes = ChangeSet {
        reads: vec![(key.to_owned(), current.version)],
        writes: vec![Write { key: key.to_owned(), value, version }],
        events: vec![],
    };
    let commit = Commit { service: service.to_owned(), changes, ..Commit::default() };
    match state.invoker.commit(commit).await {
        Ok(()) => Ok((version, current.value.is_none())),
        // Changed between the check and the commit: the precondition no longer holds.
        Err(StoreError::Conflict(conflict)) => Err(precondition_failed(service, key, conflict.actual)),
        Err(error) => Err(error.into()),
    }
}

fn precondition_failed(service: &str, key: &str, actual: Option<u64>) -> ApiError {
    let (detail, tag) = match actual {
        Some(v) => (format!("record `{key}` of `{service}` is at version {v}"), Some(etag(v))),
        None => (format!("record `{key}` of `{service}` does not exist"), None),
    };
    let error = ApiError::new(StatusCode::PRECONDITION_FAILED, detail);
    match tag {
        Some(tag) => error.with_header(header::ETAG, tag.to_str().unwrap_or_default()),
        None => error,
    }
}

/// No key (nor prefix) holds a NUL character (see [`NUL_IN_KEY`]).
fn no_nul(key: &str) -> Result<(), ApiError> {
    if key.contains('\0') {
        return Err(ApiError::bad_request(NUL_IN_KEY));
    }
    Ok(())
}

fn known_service(state: &AppState, service: &str) -> Result<(), ApiError> {
    match state.invoker.registry().get(service) {
        Some(_) => Ok(()),
        None => Err(ApiError::not_found(format!("no service `{service}` is loaded"))),
    }
}

fn etag(version: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{version}\"")).expect("digits and quotes are a valid header")
}
