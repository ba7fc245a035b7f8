//! The `{{name}}` service. Build it with
//! `cargo build --release --target wasm32-wasip2`; see README.md.

use serde::{Deserialize, Serialize};
use wasaga_guest::{Failure, Guest, Invocation, Manifest, OperationInfo, json};

struct Service;

impl Guest for Service {
    fn describe() -> Manifest {
        Manifest {
            name: "{{name}}".into(),
            operations: vec![OperationInfo::new("greet", "Greets someone, and counts how often")],
            subscriptions: vec![],
        }
    }

    fn handle(call: Invocation) -> Result<Vec<u8>, Failure> {
        match call.operation.as_str() {
            "greet" => json::output(&greet(json::input(&call.input)?)?),
            other => Err(Failure::Rejected(format!("no operation `{other}`"))),
        }
    }
}

#[derive(Deserialize)]
struct Greet {
    name: String,
}

#[derive(Serialize)]
struct Greeting {
    greeting: String,
    count: u64,
}

fn greet(input: Greet) -> Result<Greeting, Failure> {
    let key = format!("greeted/{}", input.name);
    let count = json::get::<u64>(&key)?.map_or(0, |(count, _version)| count) + 1;
    json::set(&key, &count)?;
    Ok(Greeting { greeting: format!("Hello, {}!", input.name), count })
}

wasaga_guest::export!(Service with_types_in wasaga_guest);
