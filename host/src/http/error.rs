//! The one error type of the API, rendered as RFC 9457 problem+json, and how each
//! domain error becomes one: by what the client can do about it (fix the request, retry
//! later, pick another key, ask an operator). Handlers use `?`; the mapping lives here.

use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::invoke::InvokeError;
use crate::lifecycle::ChangeError;
use crate::runtime::{CallError, LoadError};
use crate::saga::SagaError;
use crate::store::StoreError;

/// An error answer: a status, a short title, and a detail written for the client.
/// Internal causes are logged, never sent.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub detail: String,
    /// Extra response headers (`Retry-After`, `ETag`, ...). A Vec, not a HeaderMap,
    /// to keep the error small on the happy path's `Result`s.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// RFC 9457 problem details: what every error answers.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct Problem<'a> {
    /// Always `about:blank`: the status says what kind of problem it is.
    #[serde(rename = "type")]
    kind: &'a str,
    /// The status's reason phrase.
    title: &'a str,
    status: u16,
    /// What went wrong, written for the client.
    detail: &'a str,
}

impl ApiError {
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        ApiError { status, detail: detail.into(), headers: Vec::new() }
    }

    /// Adds a response header.
    pub fn with_header(mut self, name: HeaderName, value: impl ToString) -> Self {
        if let Ok(value) = HeaderValue::from_str(&value.to_string()) {
            self.headers.push((name, value));
        }
        self
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, detail)
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, detail)
    }

    /// Worth trying again in a second (a 409 of a race, a 503).
    fn retry_soon(self) -> Self {
        self.with_header(header::RETRY_AFTER, 1)
    }

    /// A failure on our side the client can only retry: `what` is said, the cause is
    /// logged under an id the answer names, so that an operator finds it.
    fn internal(status: StatusCode, what: &str, cause: &dyn std::fmt::Display) -> Self {
        let id = uuid::Uuid::now_v7().simple().to_string();
        tracing::warn!(error_id = %id, status = status.as_u16(), "{what}: {cause}");
        ApiError::new(status, format!("{what}; retry in a moment (logged as error {id})")).retry_soon()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let problem = Problem {
            kind: "about:blank",
            title: self.status.canonical_reason().unwrap_or("Error"),
            status: self.status.as_u16(),
            detail: &self.detail,
        };
        let body = serde_json::to_vec(&problem).expect("a problem always serialises");
        let mut response = (self.status, body).into_response();
        let headers = response.headers_mut();
        headers.extend(self.headers);
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Conflict(_) | StoreError::Moved(_) | StoreError::Duplicate(_) => {
                ApiError::new(StatusCode::CONFLICT, error.to_string()).retry_soon()
            }
            StoreError::Invalid(detail) => ApiError::bad_request(detail),
            // Says how many commits wait, nothing of the store's inside; counted, not
            // logged per request (it is the expected answer to too much load).
            StoreError::Overloaded(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, error.to_string()).retry_soon()
            }
            StoreError::Unavailable(cause) => {
                ApiError::internal(StatusCode::SERVICE_UNAVAILABLE, "the store could not answer", &cause)
            }
        }
    }
}

impl From<InvokeError> for ApiError {
    fn from(error: InvokeError) -> Self {
        let error = match error {
            InvokeError::Store(store) => return store.into(),
            // The store's own words (PostgreSQL's, SQLite's) stay in the log.
            InvokeError::Call(CallError::StoreUnavailable { service, message }) => {
                let what = format!("the store could not answer while `{service}` ran");
                return ApiError::internal(StatusCode::SERVICE_UNAVAILABLE, &what, &message);
            }
            other => other,
        };
        let status = match &error {
            InvokeError::Store(_) => unreachable!("answered above"),
            InvokeError::UnknownService(_) | InvokeError::UnknownOperation { .. } => StatusCode::NOT_FOUND,
            InvokeError::Internal { .. } => StatusCode::FORBIDDEN,
            InvokeError::KeyReused { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            InvokeError::InFlight { .. } | InvokeError::Conflict { .. } => StatusCode::CONFLICT,
            InvokeError::Transient { .. } => StatusCode::SERVICE_UNAVAILABLE,
            InvokeError::Call(CallError::UnknownOperation { .. }) => StatusCode::NOT_FOUND,
            InvokeError::Call(CallError::Deadline { .. }) => StatusCode::GATEWAY_TIMEOUT,
            InvokeError::Call(CallError::Busy { .. }) => StatusCode::SERVICE_UNAVAILABLE,
            InvokeError::Call(CallError::StoreUnavailable { .. }) => unreachable!("answered above"),
            // The plugin's own failure (a trap, a limit it went past): its message is
            // the plugin author's, not the host's inside, and is what they need.
            InvokeError::Call(
                CallError::Trap { .. } | CallError::MemoryLimit { .. } | CallError::OverLimit { .. },
            ) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let api = ApiError::new(status, error.to_string());
        match status {
            StatusCode::CONFLICT | StatusCode::SERVICE_UNAVAILABLE => api.retry_soon(),
            _ => api,
        }
    }
}

impl From<SagaError> for ApiError {
    fn from(error: SagaError) -> Self {
        let status = match error {
            SagaError::Store(store) => return store.into(),
            SagaError::UnknownDefinition(_) | SagaError::NotFound(_) => StatusCode::NOT_FOUND,
            SagaError::InputNotObject => StatusCode::BAD_REQUEST,
            SagaError::KeyReused { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            SagaError::NotStuck { .. }
            | SagaError::PastThePivot { .. }
            | SagaError::NotTheStuckStep { .. }
            | SagaError::DefinitionGone { .. }
            | SagaError::Busy(_) => StatusCode::CONFLICT,
        };
        ApiError::new(status, error.to_string())
    }
}

impl From<ChangeError> for ApiError {
    fn from(error: ChangeError) -> Self {
        let error = match error {
            ChangeError::Store(store) => return store.into(),
            other => other,
        };
        let status = match &error {
            ChangeError::Store(_) => unreachable!("answered above"),
            ChangeError::Load(LoadError::NotWasm | LoadError::CoreModule | LoadError::Invalid(_)) => {
                StatusCode::BAD_REQUEST
            }
            ChangeError::Load(_) | ChangeError::WrongService { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ChangeError::BreaksSaga(_) | ChangeError::InUse { .. } => StatusCode::CONFLICT,
            ChangeError::Unknown(_) => StatusCode::NOT_FOUND,
            ChangeError::Io(cause) => {
                let what = "keeping the plugin change failed";
                return ApiError::internal(StatusCode::INTERNAL_SERVER_ERROR, what, cause);
            }
        };
        ApiError::new(status, error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retry_after(error: &ApiError) -> Option<&str> {
        error.headers.iter().find(|(name, _)| name == header::RETRY_AFTER).and_then(|(_, v)| v.to_str().ok())
    }

    /// What SQLite said stays in the log: the client learns that the store failed,
    /// when to retry, and the id an operator finds the cause under.
    #[test]
    fn a_store_failure_is_answered_without_its_cause() {
        let cause = "disk I/O error in /var/lib/wasaga/wasaga.db-wal";
        let error = ApiError::from(StoreError::Unavailable(cause.into()));
        assert_eq!(error.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(!error.detail.contains("disk I/O") && !error.detail.contains("/var/lib"), "{}", error.detail);
        assert!(error.detail.contains("logged as error "), "{}", error.detail);
        assert_eq!(retry_after(&error), Some("1"));
        let in_a_call = CallError::StoreUnavailable { service: "svc".into(), message: cause.into() };
        for wrapped in [
            ApiError::from(InvokeError::Call(in_a_call)),
            ApiError::from(InvokeError::Store(StoreError::Unavailable(cause.into()))),
            ApiError::from(SagaError::Store(StoreError::Unavailable(cause.into()))),
            ApiError::from(ChangeError::Io(cause.into())),
        ] {
            assert!(!wrapped.detail.contains("disk I/O"), "{}", wrapped.detail);
        }
    }

    /// Each error says by its status what the client can do.
    #[test]
    fn errors_map_by_what_the_client_can_do() {
        let cases = [
            (ApiError::from(StoreError::Invalid("bad key".into())), StatusCode::BAD_REQUEST, None),
            (
                ApiError::from(StoreError::Overloaded("4096 commits".into())),
                StatusCode::SERVICE_UNAVAILABLE,
                Some("1"),
            ),
            (ApiError::from(InvokeError::UnknownService("nope".into())), StatusCode::NOT_FOUND, None),
            (ApiError::from(InvokeError::InFlight { key: "k".into() }), StatusCode::CONFLICT, Some("1")),
            (ApiError::from(SagaError::InputNotObject), StatusCode::BAD_REQUEST, None),
            (ApiError::from(SagaError::Busy("s".into())), StatusCode::CONFLICT, None),
            (ApiError::from(ChangeError::Unknown("nope".into())), StatusCode::NOT_FOUND, None),
        ];
        for (error, status, retry) in cases {
            assert_eq!((error.status, retry_after(&error)), (status, retry), "{}", error.detail);
        }
        let detail = ApiError::from(InvokeError::UnknownService("nope".into())).detail;
        assert_eq!(detail, "no service `nope` is loaded", "a client's mistake is said as it is");
    }
}
