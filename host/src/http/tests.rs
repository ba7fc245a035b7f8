//! The API in process (`router(state).oneshot(..)`): the edge cases of HTTP that need
//! no server process, over a real app (SQLite in a temporary directory, the `echo`
//! and `inventory` plugins built with the crate).

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::Value;
use tower::ServiceExt;

use super::{Access, AppState, Secret, router};
use crate::app::{App, AppConfig};
use crate::runtime::Limits;

const ADMIN: &str = "in-process-admin-token";

/// An app with `echo` and `inventory`, its data in `dir`.
async fn state(dir: &std::path::Path) -> AppState {
    let app = App::start(AppConfig::new(dir)).await.unwrap();
    for service in ["echo", "inventory"] {
        let wasm = std::fs::read(crate::guests::path(service)).unwrap();
        app.registry().insert(app.registry().runtime().load(service, wasm, Limits::default()).await.unwrap());
    }
    app.state(Access {
        admin_token: Some(Secret::new(ADMIN)),
        api_token: None,
        loopback_only: true,
        allowed_hosts: Vec::new(),
    })
}

/// Sends one request; returns the status, the content type and the body as JSON (or
/// as a string when it is not JSON).
async fn send(state: &AppState, request: Request<Body>) -> (StatusCode, String, Value) {
    let response = router(state.clone()).oneshot(request).await.unwrap();
    let status = response.status();
    let content_type =
        response.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    (status, content_type, body)
}

/// A POST as an operator (like the e2e tests' client, which holds the admin token).
fn post(path: &str, key: Option<&str>, body: impl Into<Body>) -> Request<Body> {
    let mut request =
        Request::post(path).header("host", "localhost").header("authorization", format!("Bearer {ADMIN}"));
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    request.body(body.into()).unwrap()
}

/// Bad requests get a precise problem+json and change nothing.
#[tokio::test]
async fn bad_requests_get_precise_errors() {
    let dir = tempfile::tempdir().unwrap();
    let state = state(dir.path()).await;
    let cases = [
        (post("/v1/services/echo/echo", None, "{}"), 400, "Idempotency-Key header is required"),
        (post("/v1/services/echo/echo", Some(&"k".repeat(256)), "{}"), 400, "1 to 255 visible ASCII"),
        (post("/v1/services/echo/echo", Some("a b"), "{}"), 400, "1 to 255 visible ASCII"),
        (
            post("/v1/services/echo/echo", Some("k1"), "{\"a\": }"),
            400,
            "not valid JSON: expected value at line 1 column 7",
        ),
        (post("/v1/services/nobody/echo", Some("k2"), "{}"), 404, "no service `nobody` is loaded"),
        (post("/v1/services/echo/fly", Some("k3"), "{}"), 404, "service `echo` has no operation `fly`"),
        (post("/v1/services/echo/echo", Some("k4"), vec![b' '; 2 << 20]), 413, "larger than the limit"),
        (post("/v1/services/inventory/reserve", Some("k5"), "{\"sku\": 1}"), 422, "invalid input"),
        (
            Request::get("/v1/services/echo/records/a%00b")
                .header("host", "localhost")
                .body(Body::empty())
                .unwrap(),
            400,
            "a key may not contain a NUL character",
        ),
        (
            Request::get("/v1/services/echo/records?prefix=a%00")
                .header("host", "localhost")
                .body(Body::empty())
                .unwrap(),
            400,
            "a key may not contain a NUL character",
        ),
    ];
    for (request, status, detail) in cases {
        let (got, content_type, problem) = send(&state, request).await;
        assert_eq!(got, status, "{problem}");
        assert_eq!(content_type, "application/problem+json");
        assert!(problem["detail"].as_str().unwrap().contains(detail), "expected {detail:?} in {problem}");
        assert_eq!(problem["status"], status);
    }
    let missing = Request::get("/v1/services/echo/records/none").header("host", "localhost");
    let (status, _, _) = send(&state, missing.body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// Routes that do not exist, methods a route does not have, and writes without a
/// precondition answer problem+json that says what to do.
#[tokio::test]
async fn unknown_routes_methods_and_missing_preconditions_say_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let state = state(dir.path()).await;
    let request = |method: &str, path: &str| {
        Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost")
            .header("authorization", format!("Bearer {ADMIN}"))
            .body(Body::from("{}"))
            .unwrap()
    };
    let cases = [
        (request("GET", "/v1/nothing"), 404, "no route for /v1/nothing"),
        (request("DELETE", "/v1/sagas"), 405, "DELETE is not allowed on /v1/sagas"),
        (request("PUT", "/v1/services/echo/records/k"), 428, "If-Match: \"<version>\" to replace"),
        (request("DELETE", "/v1/services/echo/records/k"), 428, "If-Match"),
    ];
    for (request, status, detail) in cases {
        let (got, content_type, problem) = send(&state, request).await;
        assert_eq!((got.as_u16(), content_type.as_str()), (status, "application/problem+json"), "{problem}");
        assert!(problem["detail"].as_str().unwrap().contains(detail), "expected {detail:?} in {problem}");
    }
}

/// `method` on echo's record `k` as an operator, with `headers`, and a JSON body.
fn record(method: &str, headers: &[(&str, &str)]) -> Request<Body> {
    let mut request = Request::builder()
        .method(method)
        .uri("/v1/services/echo/records/k")
        .header("host", "localhost")
        .header("authorization", format!("Bearer {ADMIN}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.body(Body::from("{\"n\": 1}")).unwrap()
}

/// RFC 9110's preconditions as the records API reads them: both headers, when sent,
/// must hold; an empty `If-Match` list matches nothing; `If-None-Match` takes only `*`;
/// several `If-Match` lines are one list.
#[tokio::test]
async fn record_writes_evaluate_every_precondition_sent() {
    let dir = tempfile::tempdir().unwrap();
    let state = state(dir.path()).await;
    let status = async |request| send(&state, request).await.0.as_u16();
    assert_eq!(status(record("PUT", &[("if-none-match", "*")])).await, 201, "created at version 1");
    type Headers = &'static [(&'static str, &'static str)];
    let cases: &[(&str, Headers, u16)] = &[
        ("PUT", &[("if-match", "")], 412),
        ("PUT", &[("if-match", "W/\"1\"")], 412),
        ("PUT", &[("if-match", "\"1\""), ("if-none-match", "*")], 412),
        ("PUT", &[("if-match", "*"), ("if-none-match", "*")], 412),
        ("PUT", &[("if-none-match", "\"1\"")], 400),
        ("PUT", &[("if-none-match", "")], 428),
        ("PUT", &[("if-match", "3x")], 400),
        ("DELETE", &[("if-none-match", "*")], 428),
        ("DELETE", &[("if-match", "\"1\""), ("if-none-match", "*")], 412),
        ("DELETE", &[("if-match", "\"7\"")], 412),
    ];
    for (method, headers, expected) in cases {
        assert_eq!(status(record(method, headers)).await, *expected, "{method} {headers:?}");
    }
    // Two If-Match lines are one list: "7" or "1".
    assert_eq!(status(record("PUT", &[("if-match", "\"7\""), ("if-match", "\"1\"")])).await, 200);
    assert_eq!(status(record("DELETE", &[("if-match", "\"2\"")])).await, 204);
    assert_eq!(status(record("DELETE", &[("if-match", "*")])).await, 412, "nothing left to delete");
}

/// A read with `If-None-Match` naming the record's current version (weakly, or `*`) is
/// answered 304 with its ETag and no body; another version, or none, gets the record.
#[tokio::test]
async fn a_record_read_with_its_current_etag_is_not_modified() {
    let dir = tempfile::tempdir().unwrap();
    let state = state(dir.path()).await;
    let read = async |held: &[&str]| {
        let headers: Vec<(&str, &str)> = held.iter().map(|tag| ("if-none-match", *tag)).collect();
        let response = router(state.clone()).oneshot(record("GET", &headers)).await.unwrap();
        let status = response.status().as_u16();
        let etag = response.headers().get("etag").map(|v| v.to_str().unwrap().to_owned());
        let body = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
        (status, etag, body.len())
    };
    assert_eq!(read(&["*"]).await.0, 404, "nothing to hold yet");
    assert_eq!(send(&state, record("PUT", &[("if-none-match", "*")])).await.0.as_u16(), 201);
    let current = (304, Some("\"1\"".to_owned()), 0);
    assert_eq!(read(&["\"1\""]).await, current);
    assert_eq!(read(&["W/\"1\""]).await, current, "a read compares weakly");
    assert_eq!(read(&["*"]).await, current);
    assert_eq!(read(&["\"7\", \"1\""]).await, current);
    assert_eq!(read(&["\"7\"", "\"1\""]).await, current, "two lines are one list");
    assert_eq!(read(&["\"7\""]).await.0, 200);
    assert_eq!(read(&[]).await.0, 200);
    assert_eq!(read(&["1"]).await.0, 400, "an ETag is quoted");
    assert_eq!(read(&["\"+1\""]).await.0, 400, "a version is digits");
    assert_eq!(send(&state, record("PUT", &[("if-match", "\"1\"")])).await.0.as_u16(), 200);
    assert_eq!(read(&["\"1\""]).await.0, 200, "changed since");
}

/// A page's `limit` is 1 to 1,000 on every list; outside, a 400 that says so.
#[tokio::test]
async fn list_limits_outside_their_range_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let state = state(dir.path()).await;
    for path in ["/v1/sagas", "/v1/events?correlation=c&", "/v1/services/echo/records"] {
        let join = if path.ends_with('&') { "" } else { "?" };
        for (limit, expected) in [("0", 400), ("1001", 400), ("-1", 400), ("1", 200), ("1000", 200)] {
            let uri = format!("{path}{join}limit={limit}");
            let request = Request::get(&uri).header("host", "localhost").body(Body::empty()).unwrap();
            let (got, _, body) = send(&state, request).await;
            assert_eq!(got.as_u16(), expected, "{uri}: {body}");
            if expected == 400 {
                assert!(body["detail"].as_str().unwrap().contains("limit"), "{uri}: {body}");
            }
        }
    }
}
