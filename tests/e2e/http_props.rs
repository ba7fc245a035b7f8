//! The HTTP API against generated requests, in process (`router(state).oneshot(..)`):
//! real plugins (the demo's services), a real SQLite store, the real access rules.
//! Paths, methods, query strings, headers and bodies are generated, known-good pieces
//! mixed with hostile ones (numbers out of range, JSON nested 300 deep, durations of
//! 10^20 seconds, invalid UTF-8, keys over the limits, foreign hosts, wrong tokens).
//! No request may panic the server or get a 5xx other than a deliberate 503.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::json;
use tower::ServiceExt;
use wasaga::invoke::{Caller, InvokeOptions, Request};
use wasaga::runtime::Limits;
use wasaga::saga::SagaDef;

use crate::support::{ADMIN_TOKEN, app_state, load, runtime};

/// One generated request.
#[derive(Debug, Clone)]
struct Generated {
    method: &'static str,
    path: String,
    query: Vec<(&'static str, String)>,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

const SERVICES: &[&str] = &["inventory", "payment", "order", "notification", "nobody", "records"];
const OPERATIONS: &[&str] = &[
    "restock",
    "reserve",
    "release",
    "reserve-placed",
    "open-account",
    "charge",
    "refund",
    "create",
    "complete",
    "cancel",
    "place",
    "send-confirmation",
    "records",
    "fly",
];

/// Every operation of the demo's services.
const CALLS: &[&str] = &[
    "inventory/restock",
    "inventory/reserve",
    "inventory/release",
    "inventory/reserve-placed",
    "inventory/release-placed",
    "payment/open-account",
    "payment/charge",
    "payment/refund",
    "payment/charge-placed",
    "order/create",
    "order/complete",
    "order/cancel",
    "order/place",
    "order/complete-placed",
    "order/cancel-placed",
    "notification/send-confirmation",
];

fn one_of(items: &'static [&'static str]) -> impl Strategy<Value = String> + Clone {
    prop::sample::select(items).prop_map(String::from)
}

/// A path segment: a known word, or anything a URI may carry (percent signs included).
fn segment() -> impl Strategy<Value = String> + Clone {
    prop_oneof![
        one_of(&[
            "place-order",
            "1",
            "-1",
            "99999999999999999999",
            "%2F",
            "%00",
            "..",
            "a%20b",
            "%E2%82%AC",
            "stock/lamp",
            "account/ada",
            "order/o-1",
            "01a2",
        ]),
        "[A-Za-z0-9%._~!$&'()*+,;=:@-]{0,24}",
    ]
}

/// A path, with the method its route takes.
fn route() -> impl Strategy<Value = (&'static str, String)> {
    let service = prop_oneof![3 => one_of(SERVICES), 1 => segment()];
    let operation = prop_oneof![3 => one_of(OPERATIONS), 1 => segment()];
    let read = one_of(&[
        "/",
        "/healthz",
        "/readyz",
        "/metrics",
        "/v1/plugins",
        "/v1/overview",
        "/v1/events",
        "/v1/events/dead",
        "/v1/sagas",
    ]);
    let write = prop::sample::select(&["PUT", "DELETE"][..]);
    let action = one_of(&["retry", "compensate", "resolve"]);
    prop_oneof![
        2 => read.prop_map(|p| ("GET", p)),
        1 => (write.clone(), segment()).prop_map(|(m, s)| (m, format!("/v1/plugins/{s}"))),
        8 => one_of(CALLS).prop_map(|call| ("POST", format!("/v1/services/{call}"))),
        2 => (service.clone(), operation).prop_map(|(s, o)| ("POST", format!("/v1/services/{s}/{o}"))),
        1 => service.clone().prop_map(|s| ("GET", format!("/v1/services/{s}/records"))),
        1 => (service.clone(), segment()).prop_map(|(s, k)| ("GET", format!("/v1/services/{s}/records/{k}"))),
        2 => (write, service, segment()).prop_map(|(m, s, k)| (m, format!("/v1/services/{s}/records/{k}"))),
        1 => segment().prop_map(|s| ("POST", format!("/v1/events/{s}/redeliver"))),
        4 => one_of(&["place-order", "nothing"]).prop_map(|s| ("POST", format!("/v1/sagas/{s}"))),
        1 => segment().prop_map(|s| ("GET", format!("/v1/sagas/{s}"))),
        2 => (segment(), action).prop_map(|(s, v)| ("POST", format!("/v1/sagas/{s}/{v}"))),
        1 => segment().prop_map(|s| ("GET", format!("/{s}"))),
    ]
}

fn query() -> impl Strategy<Value = Vec<(&'static str, String)>> {
    let name = prop::sample::select(
        &["wait", "limit", "after", "status", "order", "prefix", "correlation", "subscriber", "x"][..],
    );
    let value = prop_oneof![
        one_of(&[
            "1s",
            "0.2s",
            "99999999999999999999s",
            "1e400s",
            "-1s",
            "NaNs",
            "infs",
            "abc",
            "100",
            "0",
            "-5",
            "18446744073709551616",
            "newest",
            "oldest",
            "stuck",
            "%ZZ",
            "",
            "stock/",
            "inventory",
        ]),
        "[a-z0-9%]{0,12}",
    ];
    prop::collection::vec((name, value), 0..4)
}

/// Mostly a good key and the admin token (so that requests reach the plugins), and a
/// few other headers, any of which may be hostile.
fn headers() -> impl Strategy<Value = Vec<(&'static str, String)>> {
    let long = "k".repeat(300);
    let key = prop_oneof![
        6 => "[!-~]{1,24}".prop_map(Some),
        1 => Just(None),
        1 => prop::sample::select(vec![
            "k 2".to_string(), long.clone(), String::new(), "saga/x/y/do".into(), "event/1/inventory".into(),
        ])
        .prop_map(Some),
    ];
    let admin = format!("Bearer {ADMIN_TOKEN}");
    let auth = prop_oneof![
        5 => Just(Some(admin)),
        2 => Just(None),
        1 => prop::sample::select(vec!["Bearer wrong".to_string(), "Basic YTpi".into(), "Bearer ".into()])
            .prop_map(Some),
    ];
    let other = prop_oneof![
        1 => (Just("if-match"), one_of(&["\"1\"", "*", "W/\"1\"", "\"x\"", "1", "\"1\", \"2\"",
                                         "\"99999999999999999999\"", ""])),
        1 => (Just("if-none-match"), one_of(&["*", "\"1\""])),
        1 => (Just("correlation-id"), prop::sample::select(vec!["c-1".to_string(), "two words".into(), long])),
        1 => (Just("content-type"), one_of(&["application/json", "text/plain", "application/x-www-form-urlencoded"])),
        1 => (Just("host"), one_of(&["localhost", "evil.example", "127.0.0.1:1", "[::1]"])),
    ];
    (key, auth, prop::collection::vec(other, 0..3)).prop_map(|(key, auth, mut headers)| {
        headers.extend(key.map(|k| ("idempotency-key", k)));
        headers.extend(auth.map(|a| ("authorization", a)));
        headers
    })
}

/// A JSON value of a few levels, with the demo's field names among the keys.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<u64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(serde_json::Value::from),
        "[a-z0-9 -]{0,12}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        let key = one_of(&[
            "order",
            "customer",
            "sku",
            "qty",
            "amount",
            "balance",
            "reason",
            "step",
            "output",
            "by",
            "note",
            "release_transient_failures",
            "refuse_completion",
            "n",
            "topic",
            "payload",
        ]);
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map(key, inner, 0..6)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    let order = (
        one_of(&["o-1", "o-2", "o-3"]),
        one_of(&["ada", "poor", "nobody"]),
        one_of(&["lamp", "desk"]),
        prop_oneof![0u64..3, Just(u64::MAX)],
        prop_oneof![-1i64..3000, Just(i64::MAX), Just(i64::MIN)],
        0u32..4,
    )
        .prop_map(|(order, customer, sku, qty, amount, failures)| {
            json!({"order": order, "customer": customer, "sku": sku, "qty": qty, "amount": amount,
                   "release_transient_failures": failures, "payment_transient_failures": failures})
            .to_string()
            .into_bytes()
        });
    prop_oneof![
        1 => Just(Vec::new()),
        1 => Just(br#"{"x":1e400}"#.to_vec()),
        1 => Just(format!("{}{}", "[".repeat(300), "]".repeat(300)).into_bytes()),
        1 => Just(b"\xff\xfe{}".to_vec()),
        1 => Just(b"order=o-1&qty=1".to_vec()),
        1 => Just(vec![b' '; (1 << 20) + 2048]),
        4 => order,
        4 => json_value().prop_map(|v| v.to_string().into_bytes()),
        1 => prop::collection::vec(any::<u8>(), 0..48),
    ]
}

fn generated() -> impl Strategy<Value = Generated> {
    // Mostly the route's own method; now and then any other.
    let other = prop::sample::select(&["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"][..]);
    let method = prop_oneof![6 => Just(None), 1 => other.prop_map(Some)];
    (route(), method, query(), headers(), body()).prop_map(|((own, path), other, query, headers, body)| {
        Generated { method: other.unwrap_or(own), path, query, headers, body }
    })
}

/// Any generated request: no panic, no 5xx but a deliberate 503.
#[test]
fn no_generated_request_panics_or_fails_the_server() {
    let tokio = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let data = tempfile::tempdir().unwrap();
    let app = tokio.block_on(async {
        let runtime = runtime();
        let mut plugins = Vec::new();
        for name in ["inventory", "payment", "order", "notification"] {
            plugins.push(load(&runtime, name, Limits::default()).await);
        }
        let state = app_state(plugins, InvokeOptions::default(), data.path()).await;
        let place_order =
            std::fs::read_to_string(format!("{}/place-order.toml", crate::support::SAGAS)).unwrap();
        let registered = state.invoker.registry().plugins();
        let manifest = |s: &str| registered.iter().find(|p| p.service() == s).map(|p| p.manifest());
        let def = SagaDef::parse("place-order.toml".as_ref(), &place_order, manifest).unwrap();
        state.sagas.add_definition(def).await.unwrap();
        for (service, operation, input) in [
            ("inventory", "restock", json!({"sku": "lamp", "qty": 100})),
            ("payment", "open-account", json!({"customer": "ada", "balance": 1_000_000})),
            ("payment", "open-account", json!({"customer": "poor", "balance": 10})),
        ] {
            let key = format!("seed-{service}-{operation}-{input}");
            let request =
                Request::new(Caller::Operator, service, operation, input.to_string().into_bytes(), key);
            state.invoker.invoke(request).await.unwrap().result.unwrap();
        }
        wasaga::http::router(state)
    });

    let config = Config { cases: 1000, failure_persistence: None, ..Config::default() };
    let mut runner = TestRunner::new(config);
    // Statuses answered (0: not a valid HTTP request), to prove the requests get far.
    let seen = std::sync::Mutex::new(std::collections::BTreeMap::<u16, u32>::new());
    let outcome = runner.run(&generated(), |generated| {
        let mut uri = generated.path.clone();
        if !generated.query.is_empty() {
            let pairs: Vec<String> = generated.query.iter().map(|(k, v)| format!("{k}={v}")).collect();
            uri = format!("{uri}?{}", pairs.join("&"));
        }
        let mut builder = axum::http::Request::builder().method(generated.method).uri(&uri);
        for (name, value) in &generated.headers {
            builder = builder.header(*name, value);
        }
        // What no client could send (a URI or header the HTTP layer would refuse) is
        // not a request.
        let Ok(request) = builder.body(axum::body::Body::from(generated.body.clone())) else {
            seen.lock().unwrap().entry(0).and_modify(|n| *n += 1).or_insert(1);
            return Ok(());
        };
        let (status, body) = tokio.block_on(async {
            let response = app.clone().oneshot(request).await.unwrap();
            let status = response.status();
            let body = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
            (status, body)
        });
        seen.lock().unwrap().entry(status.as_u16()).and_modify(|n| *n += 1).or_insert(1);
        if status.is_server_error() && status != axum::http::StatusCode::SERVICE_UNAVAILABLE {
            return Err(TestCaseError::fail(format!(
                "{} {uri} answered {status}: {}",
                generated.method,
                String::from_utf8_lossy(&body)
            )));
        }
        Ok(())
    });
    if let Err(error) = outcome {
        panic!("{error}");
    }
    // The generator must reach every layer: refusals of the HTTP edge, of the access
    // rules, of the routes, and answers of the plugins and the saga engine.
    let seen = seen.into_inner().unwrap();
    for status in [200, 202, 400, 401, 404, 413, 421, 422] {
        assert!(seen.contains_key(&status), "no request got {status}: {seen:?}");
    }
}
