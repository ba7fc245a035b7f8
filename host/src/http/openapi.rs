//! The OpenAPI 3.1 document of the HTTP API, served at `GET /openapi.json`. Each route's
//! parameters, bodies and answers come from its handler's annotation and types
//! (utoipa), so the document changes with the code. What every route shares is added
//! here, once: the two bearer tokens, the problem+json body of every error,
//! `Retry-After`, `WWW-Authenticate`, and the answers any route can give (421 to a
//! non-loopback `Host` on a loopback server, 500 from the panic guard).

use std::sync::OnceLock;

use serde_json::{Value, json};
use utoipa::OpenApi;

use super::{dashboard, events, plugins, records, sagas, services};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "wasaga",
        description = "The HTTP API of a wasaga host: idempotent calls to the operations of wasm \
            services, sagas, versioned records, the event outbox, and plugin management. Every \
            error is RFC 9457 problem+json. See docs/architecture.md for the guarantees.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(
        services::invoke,
        sagas::start,
        sagas::get_saga,
        sagas::list,
        sagas::act,
        sagas::search,
        sagas::overview,
        events::chain,
        events::dead,
        events::redeliver,
        records::list,
        records::get,
        records::put,
        records::delete,
        plugins::list,
        plugins::upload,
        plugins::remove,
        super::healthz,
        super::readyz,
        super::metrics,
        openapi_json,
        dashboard::page,
    ),
    // The two enums are named by parameters only, which utoipa does not collect.
    components(schemas(super::error::Problem, sagas::Order, sagas::Action)),
    tags(
        (name = "services", description = "Calls to the operations of the loaded services"),
        (name = "sagas", description = "Sagas: start, follow, and an operator's decisions"),
        (name = "events", description = "The outbox: event chains, dead deliveries"),
        (name = "records", description = "The services' versioned records"),
        (name = "plugins", description = "The components that serve each service"),
        (name = "operations", description = "Health, readiness, metrics, this document, the dashboard"),
    ),
)]
struct ApiDoc;

/// This document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    operation_id = "openapi",
    tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API", content_type = "application/json", body = Object)),
)]
pub async fn openapi_json() -> impl axum::response::IntoResponse {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], document())
}

/// The document as served: made once.
pub fn document() -> &'static [u8] {
    static DOCUMENT: OnceLock<Vec<u8>> = OnceLock::new();
    DOCUMENT.get_or_init(|| serde_json::to_vec_pretty(&build()).expect("the document serialises"))
}

fn build() -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).expect("the document serialises");
    doc["info"]["version"] = json!(env!("CARGO_PKG_VERSION"));
    let bearer = |who: &str| json!({"type": "http", "scheme": "bearer", "description": who});
    doc["components"]["securitySchemes"] = json!({
        "api_token": bearer("The API token (`--api-token-file` / `WASAGA_API_TOKEN`): public calls and reads, when the server requires it"),
        "admin_token": bearer("The admin token (`--admin-token-file` / `WASAGA_ADMIN_TOKEN`): operator actions, and everything a client may do"),
    });
    for operation in operations(&mut doc) {
        conventions(operation);
    }
    for (from, statuses, to, parameters) in LINKS {
        let parameters: serde_json::Map<String, Value> =
            parameters.iter().map(|(name, value)| ((*name).to_owned(), json!(value))).collect();
        let link = json!({"operationId": to, "parameters": parameters});
        let operation = operations(&mut doc)
            .find(|o| o["operationId"] == *from)
            .unwrap_or_else(|| panic!("no operation {from}"));
        for status in *statuses {
            operation["responses"][status]["links"][to] = link.clone();
        }
    }
    doc
}

/// Where an answer leads (OpenAPI links, which client generators and schemathesis's
/// stateful phase follow): from an operation's answers to another operation, with
/// the values of its parameters.
type Link = (&'static str, &'static [&'static str], &'static str, &'static [(&'static str, &'static str)]);
const LINKS: &[Link] = &[
    ("startSaga", &["200", "202"], "getSaga", &[("saga", "$response.body#/id")]),
    ("startSaga", &["200", "202"], "actOnSaga", &[("saga", "$response.body#/id")]),
    (
        "putRecord",
        &["200", "201"],
        "getRecord",
        &[("service", "$request.path.service"), ("key", "$request.path.key")],
    ),
    (
        "putRecord",
        &["200", "201"],
        "deleteRecord",
        &[
            ("service", "$request.path.service"),
            ("key", "$request.path.key"),
            ("header.If-Match", "$response.header.ETag"),
        ],
    ),
    ("uploadPlugin", &["200", "201"], "removePlugin", &[("service", "$request.path.service")]),
];

/// Every operation of the document.
fn operations(doc: &mut Value) -> impl Iterator<Item = &mut Value> {
    let paths = doc["paths"].as_object_mut().expect("the document has paths");
    paths.values_mut().flat_map(|item| item.as_object_mut().expect("a path item is an object").values_mut())
}

/// What one operation shares with every other.
fn conventions(operation: &mut Value) {
    let schemes: Vec<String> = operation["security"]
        .as_array()
        .map(|alternatives| {
            alternatives.iter().filter_map(Value::as_object).flat_map(|r| r.keys().cloned()).collect()
        })
        .unwrap_or_default();
    // A header or query parameter is absent or a string: `Option` makes utoipa add null.
    let parameters = operation.get_mut("parameters").and_then(Value::as_array_mut);
    for parameter in parameters.into_iter().flatten() {
        let schema = &mut parameter["schema"];
        if let Some(types) = schema.get("type").and_then(Value::as_array) {
            let types: Vec<Value> = types.iter().filter(|t| *t != "null").cloned().collect();
            schema["type"] = if types.len() == 1 { types[0].clone() } else { Value::Array(types) };
        }
        let other = schema.get("oneOf").and_then(Value::as_array).and_then(|one_of| {
            let others: Vec<&Value> =
                one_of.iter().filter(|s| s.get("type") != Some(&json!("null"))).collect();
            (others.len() == 1).then(|| others[0].clone())
        });
        if let Some(other) = other {
            *schema = other;
        }
    }
    // Every route takes a W3C trace context (its span's parent, when traces are on); a
    // malformed one is ignored, as the W3C says, so the schema asks nothing of it.
    let traceparent = json!({"name": "traceparent", "in": "header", "required": false,
        "description": "W3C Trace Context: the parent of this request's span when the server exports traces",
        "schema": {"type": "string"}});
    match operation.get_mut("parameters").and_then(Value::as_array_mut) {
        Some(parameters) => parameters.push(traceparent),
        None => operation["parameters"] = json!([traceparent]),
    }
    let responses = operation["responses"].as_object_mut().expect("an operation has responses");
    let mut add = |status: &str, description: &str| {
        responses.entry(status).or_insert_with(|| json!({"description": description}));
    };
    if !schemes.is_empty() {
        add("401", "A token was sent that the server does not know, or none where one is required");
    }
    if schemes.iter().all(|s| s == "admin_token") && !schemes.is_empty() {
        add("403", "Operator actions are off on this server (no admin token), or the API token was sent");
    }
    add("421", "The server listens on loopback and the Host header is not a loopback name");
    add("500", "The server failed on this request (logged)");
    for (status, response) in responses.iter_mut() {
        if !(status.starts_with('4') || status.starts_with('5')) {
            continue;
        }
        response["content"] =
            json!({"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}});
        let retry = json!({"description": "Seconds after which to try again", "schema": {"type": "integer", "minimum": 0}});
        match status.as_str() {
            "409" | "503" => response["headers"]["Retry-After"] = retry,
            "401" => {
                response["headers"]["WWW-Authenticate"] =
                    json!({"description": "`Bearer`", "schema": {"type": "string"}})
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Client generators need one operation id per operation, and every error said as
    /// problem+json.
    #[test]
    fn operations_have_unique_ids_and_problem_errors() {
        let doc: Value = serde_json::from_slice(document()).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        let mut ids = std::collections::BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                let id = operation["operationId"].as_str().unwrap();
                assert!(ids.insert(id.to_owned()), "{method} {path}: the id {id} is taken");
                for (status, response) in operation["responses"].as_object().unwrap() {
                    if status.as_str() >= "400" {
                        let content = &response["content"]["application/problem+json"];
                        assert!(content.is_object(), "{method} {path} {status}: {response}");
                    }
                }
            }
        }
    }
}
