//! `GET`/`PUT`/`DELETE /v1/services/{service}/records/{key}`: versioned records over
//! HTTP, with the version as the `ETag` and conditional writes.

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::auth::{Operator, Reader};
use super::extract::{Path, Query};
use super::{ApiError, AppState, json_body};
use crate::store::{ChangeSet, Commit, NUL_IN_KEY, Slot, StoreError, Write};

/// One record: its value, and its version as the `ETag`.
#[utoipa::path(
    get,
    path = "/v1/services/{service}/records/{key}",
    operation_id = "getRecord",
    tag = "records",
    params(
        ("service" = String, Path, description = "A loaded service"),
        ("key" = String, Path, pattern = "^[^\\u0000]+$", description = "The record's key (it may hold `/`, not NUL)"),
        ("If-None-Match" = Option<String>, Header, pattern = "^(\\*|[ ,]*((W/)?\"[0-9]{1,19}\" *,[ ,]*)*((W/)?\"[0-9]{1,19}\" *)?)$", description = "Versions the client holds, as ETags (`\"3\"`), or `*`: a 304 if the record is still at one of them"),
    ),
    responses(
        (status = 200, description = "The value", content_type = "application/json", body = serde_json::Value,
            headers(("ETag" = String, description = "The record's version, quoted: send it in If-Match"))),
        (status = 304, description = "The record is still at a version named in If-None-Match",
            headers(("ETag" = String, description = "The record's version, quoted"))),
        (status = 400, description = "The key holds a NUL character, or If-None-Match is not a list of ETags"),
        (status = 404, description = "No such service, or no such record"),
        (status = 503, description = "The store could not answer"),
    ),
    security((), ("api_token" = []), ("admin_token" = [])),
)]
pub async fn get(
    _: Reader,
    State(state): State<AppState>,
    Path((service, key)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let held = held_versions(&headers)?;
    let slot = read(&state, &service, &key).await?;
    let Some(entry) = slot.entry() else {
        return Err(ApiError::not_found(format!("service `{service}` has no record `{key}`")));
    };
    // RFC 9110, 13.1.2: a GET whose If-None-Match matches the current version (weakly)
    // is answered 304, with the ETag and no body: the client's copy is current.
    if held.is_some_and(|held| held.is_none_or(|versions| versions.contains(&entry.version))) {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag(entry.version))]).into_response());
    }
    let headers = [
        (header::ETAG, etag(entry.version)),
        (header::CONTENT_TYPE, HeaderValue::from_static("application/json")),
    ];
    Ok((StatusCode::OK, headers, entry.value).into_response())
}

/// A read's `If-None-Match`: `None` when not sent; `Some(None)` for `*` (any version);
/// else the versions its entity tags name, weak ones too (a read compares weakly).
fn held_versions(headers: &HeaderMap) -> Result<Option<Option<Vec<u64>>>, ApiError> {
    let lines = headers.get_all(header::IF_NONE_MATCH).iter().map(|v| v.to_str().map(str::trim));
    let lines = lines
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| ApiError::bad_request("If-None-Match must be visible ASCII, e.g. \"3\""))?;
    if lines.is_empty() {
        return Ok(None);
    }
    let text = lines.join(",");
    if text == "*" {
        return Ok(Some(None));
    }
    Ok(Some(Some(entity_tags(&text, "If-None-Match", Comparison::Weak)?)))
}

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only keys that start with this.
    #[serde(default)]
    #[param(pattern = "^[^\\u0000]*$")]
    prefix: String,
    /// The last key of the previous page (its `next`).
    #[param(pattern = "^[^\\u0000]*$")]
    after: Option<String>,
    /// Records a page: 100 when absent.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
}

/// A page of records, and where the next one starts.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct RecordPage {
    pub records: Vec<RecordView>,
    /// Pass as `?after=` for the next page; absent on the last.
    pub next: Option<String>,
}

/// The most bytes of values one page of the records list holds (past its first
/// record): a page of 1,000 values of 1 MiB once took 7 GiB to answer.
const PAGE_BYTES: usize = 4 << 20;

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct RecordView {
    pub key: String,
    pub version: u64,
    /// The value as JSON (or as a string if it is not JSON).
    pub value: serde_json::Value,
}

/// `GET /v1/services/{service}/records?prefix=&after=&limit=`: records in key order,
/// a page of at most `limit` (100 by default, 1,000 at most) and 4 MiB of values.
#[utoipa::path(
    get,
    path = "/v1/services/{service}/records",
    operation_id = "listRecords",
    tag = "records",
    params(("service" = String, Path, description = "A loaded service"), ListQuery),
    responses(
        (status = 200, description = "A page of records in key order", body = RecordPage),
        (status = 400, description = "A bad `limit`, or a NUL character in `prefix` or `after`"),
        (status = 404, description = "No such service"),
        (status = 503, description = "The store could not answer"),
    ),
    security((), ("api_token" = []), ("admin_token" = [])),
)]
pub async fn list(
    _: Reader,
    State(state): State<AppState>,
    Path(service): Path<String>,
    Query(query): Query<ListQuery>,
) -> Result<axum::Json<RecordPage>, ApiError> {
    known_service(&state, &service)?;
    no_nul(&query.prefix)?;
    no_nul(query.after.as_deref().unwrap_or_default())?;
    let limit = super::page_limit(query.limit)?;
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

/// Writes a record over HTTP: an operator's repair, around the plugin's own rules. It
/// must say what it replaces (`If-Match`) or that it creates (`If-None-Match: *`).
#[utoipa::path(
    put,
    path = "/v1/services/{service}/records/{key}",
    operation_id = "putRecord",
    tag = "records",
    params(
        ("service" = String, Path, description = "A loaded service"),
        ("key" = String, Path, pattern = "^[^\\u0000]+$", description = "The record's key (it may hold `/`, not NUL)"),
        ("If-Match" = Option<String>, Header, pattern = "^(\\*|[ ,]*((W/)?\"[0-9]{1,19}\" *,[ ,]*)*((W/)?\"[0-9]{1,19}\" *)?)$", description = "The version replaced, as its ETag (`\"3\"`), or `*`: any existing version"),
        ("If-None-Match" = Option<String>, Header, pattern = "^(\\*)?$", description = "`*`: create, the record must not exist"),
    ),
    request_body(content = serde_json::Value, content_type = "application/json", description = "The value: any JSON value"),
    responses(
        (status = 200, description = "Replaced", headers(("ETag" = String, description = "The new version"))),
        (status = 201, description = "Created", headers(("ETag" = String, description = "The new version"))),
        (status = 400, description = "The body is not JSON, a malformed If-Match, the key too long or holding NUL"),
        (status = 404, description = "No such service"),
        (status = 409, description = "The store refused the write"),
        (status = 412, description = "The record is not at the version named (its ETag is the current one)"),
        (status = 413, description = "The value is over its size limit"),
        (status = 428, description = "Neither If-Match nor If-None-Match: * was sent"),
        (status = 503, description = "The store cannot write"),
    ),
    security(("admin_token" = [])),
)]
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

/// Deletes a record: an operator's repair; `If-Match` says which version goes.
#[utoipa::path(
    delete,
    path = "/v1/services/{service}/records/{key}",
    operation_id = "deleteRecord",
    tag = "records",
    params(
        ("service" = String, Path, description = "A loaded service"),
        ("key" = String, Path, pattern = "^[^\\u0000]+$", description = "The record's key (it may hold `/`, not NUL)"),
        ("If-Match" = String, Header, pattern = "^(\\*|[ ,]*((W/)?\"[0-9]{1,19}\" *,[ ,]*)*((W/)?\"[0-9]{1,19}\" *)?)$", description = "The version deleted, as its ETag (`\"3\"`), or `*`"),
    ),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "A malformed If-Match, the key too long or holding NUL"),
        (status = 404, description = "No such service"),
        (status = 409, description = "The store refused the write"),
        (status = 412, description = "The record is not at the version named"),
        (status = 428, description = "If-Match was not sent"),
        (status = 503, description = "The store cannot write"),
    ),
    security(("admin_token" = [])),
)]
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

/// What the client says it is writing over: both headers, when both are sent, must
/// hold (RFC 9110, 13.2.2), and at least one must be sent.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Precondition {
    /// `If-Match`: the record must exist and be at one of these versions (`None`, from
    /// `*`: at any).
    versions: Option<Option<Vec<u64>>>,
    /// `If-None-Match: *`: the record must not exist.
    absent: bool,
}

impl Precondition {
    fn holds(&self, current: &Slot) -> bool {
        let actual = current.visible_version();
        let matches = match (&self.versions, actual) {
            (None, _) => true,
            (Some(None), actual) => actual.is_some(),
            (Some(Some(versions)), Some(actual)) => versions.contains(&actual),
            (Some(Some(_)), None) => false,
        };
        matches && !(self.absent && actual.is_some())
    }
}

/// Reads `If-Match` (RFC 9110: `*` or a list of entity tags, compared strongly, so a
/// weak tag `W/"3"` never matches; several header lines are one list) and
/// `If-None-Match: *`. A PUT must send one of them (`creates`: it may create); a DELETE
/// must send `If-Match`.
fn precondition(headers: &HeaderMap, creates: bool) -> Result<Precondition, ApiError> {
    let mut precondition = Precondition::default();
    let lines = headers.get_all(header::IF_MATCH).iter().map(|v| v.to_str().map(str::trim));
    let lines = lines
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| ApiError::bad_request("If-Match must be visible ASCII, e.g. \"3\""))?;
    if !lines.is_empty() {
        let text = lines.join(",");
        precondition.versions =
            Some(if text == "*" { None } else { Some(entity_tags(&text, "If-Match", Comparison::Strong)?) });
    }
    if let Some(value) = headers.get(header::IF_NONE_MATCH) {
        // An empty list (RFC 9110, 5.6.1) asks nothing, as if the header were absent.
        match value.as_bytes().trim_ascii() {
            b"*" => precondition.absent = true,
            b"" => {}
            _ => {
                return Err(ApiError::bad_request(
                    "If-None-Match takes only `*` here (the record must not exist); to name a \
                     version, send If-Match",
                ));
            }
        }
    }
    let said =
        if creates { precondition != Precondition::default() } else { precondition.versions.is_some() };
    if !said {
        let how = if creates {
            "If-Match: \"<version>\" to replace, or If-None-Match: * to create"
        } else {
            "If-Match: \"<version>\""
        };
        return Err(ApiError::new(
            StatusCode::PRECONDITION_REQUIRED,
            format!("a write must say what it replaces, so that no update is lost: send {how}"),
        ));
    }
    Ok(precondition)
}

/// How an entity-tag list is compared with a version (RFC 9110, 8.8.3.2): a write's
/// `If-Match` strongly (a weak tag `W/"3"` never matches), a read's `If-None-Match`
/// weakly (`W/"3"` matches 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Comparison {
    Strong,
    Weak,
}

/// The versions an entity-tag list of `header` names, as `comparison` reads them.
fn entity_tags(text: &str, header: &str, comparison: Comparison) -> Result<Vec<u64>, ApiError> {
    let mut versions = Vec::new();
    // A list may have empty elements (RFC 9110, 5.6.1), and may be empty: then no
    // version matches.
    for tag in text.split(',').map(str::trim).filter(|tag| !tag.is_empty()) {
        let strong = match tag.strip_prefix("W/") {
            Some(_) if comparison == Comparison::Strong => continue,
            Some(weak) => weak,
            None => tag,
        };
        let digits = strong.strip_prefix('"').and_then(|t| t.strip_suffix('"'));
        // Digits only: `u64`'s parser would also take `"+1"`.
        let digits = digits.filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()));
        let version = digits.and_then(|t| t.parse().ok());
        match version {
            Some(version) => versions.push(version),
            None => {
                return Err(ApiError::bad_request(format!(
                    "{header} takes versions as returned in ETag, e.g. \"3\" (got {tag})"
                )));
            }
        }
    }
    Ok(versions)
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
    // (A delete's precondition needs the record to exist: nothing is ever deleted twice.)
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
