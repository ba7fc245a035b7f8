//! The `{{name}}` service. Build it with
//! `cargo build --release --target wasm32-wasip2`; see README.md.

use serde::{Deserialize, Serialize};
use wasaga_guest::{Failure, Invocation, OperationInfo, Service, json};

#[derive(Deserialize)]
struct Greet {
    name: String,
}

#[derive(Serialize)]
struct Greeting {
    greeting: String,
    count: u64,
}

/// Greets someone, and counts how often in the record `greeted/<name>`.
fn greet(input: Greet, _call: &Invocation) -> Result<Greeting, Failure> {
    let key = format!("greeted/{}", input.name);
    let count = json::get::<u64>(&key)?.map_or(0, |(count, _version)| count) + 1;
    json::set(&key, &count)?;
    Ok(Greeting { greeting: format!("Hello, {}!", input.name), count })
}

// Calling another system over HTTP: declare where with
// `.destination("https://api.example.com/v1/", &["POST"])` below, and the operator
// grants it too (`wasaga serve --outbound`, see wasaga's docs/outbound.md). The host
// adds an idempotency key that stays the same when the call runs again:
//
//     let charged: serde_json::Value = wasaga_guest::http::Request::post("https://api.example.com/v1/charges")
//         .header("authorization", "Bearer {{secret.api-key}}")
//         .json(&input)?
//         .send()?
//         .ok()?
//         .json()?;

wasaga_guest::service!(
    Service::new("{{name}}").operation(OperationInfo::new("greet", "Greets someone, and counts how often"), greet)
);
