//! `history`: the service `wasaga bench check` drives, whose records keep a history
//! that the checker can read back whole (host/src/check/).
//!
//! Every effect is an append to a JSON list, and no operation guards against doing
//! its effect twice: exactly-once is the host's job, and a duplicate shows as an
//! element twice in a list.
//!
//! - `txn {ops: [[f, key, value], ...]}` → the same ops, reads filled in: `f` is `r`
//!   (read the list at `list/<key>`, the value becomes the list) or `append` (append
//!   the value to it). Jepsen's list-append workload: the lists give the order of
//!   every key's writes, so the checker can tell which transaction saw which.
//! - `publish {chain, n}` publishes `{"n": n}` on `history-event` in chain `chain`;
//!   `deliver` (its subscriber) appends `n` to `delivered/<chain>`.
//! - `mark-a` … `mark-d`, `unmark-a` and `unmark-b`: the steps and compensations of
//!   the `marks` saga; each appends its own name to `marks/<saga id>`. The saga's
//!   input says how each fails: `refuse: "<operation>"` (a rejection) and
//!   `flaky: {"<operation>": n}` (transient on its first n attempts).

use serde::Deserialize;
use serde_json::{Value, json};
use wasaga_guest::wasaga::plugin::events;
use wasaga_guest::{Failure, Invocation, OperationInfo, Service, json};

/// One micro-operation of a transaction: `[f, key, value]`.
type MicroOp = (String, String, Value);

#[derive(Deserialize)]
struct Txn {
    ops: Vec<MicroOp>,
}

fn txn(input: Txn, _: &Invocation) -> Result<Value, Failure> {
    let mut done = Vec::with_capacity(input.ops.len());
    for (f, key, value) in input.ops {
        let record = format!("list/{key}");
        let mut list = read(&record)?;
        match f.as_str() {
            "r" => done.push(json!([f, key, list])),
            "append" => {
                list.push(value.clone());
                json::set(&record, &list)?;
                done.push(json!([f, key, value]));
            }
            other => return Err(Failure::Rejected(format!("unknown micro-operation `{other}`"))),
        }
    }
    Ok(json!({"ops": done}))
}

fn read(key: &str) -> Result<Vec<Value>, Failure> {
    Ok(json::get::<Vec<Value>>(key)?.map(|(list, _)| list).unwrap_or_default())
}

fn append(key: &str, value: Value) -> Result<Value, Failure> {
    let mut list = read(key)?;
    list.push(value);
    json::set(key, &list)?;
    Ok(json!({"length": list.len()}))
}

#[derive(Deserialize)]
struct Publish {
    chain: String,
    n: u64,
}

fn publish(input: Publish, _: &Invocation) -> Result<Value, Failure> {
    events::publish("history-event", json!({"n": input.n}).to_string().as_bytes(), Some(&input.chain));
    Ok(json!({}))
}

#[derive(Deserialize)]
struct Delivered {
    n: u64,
}

fn deliver(input: Delivered, call: &Invocation) -> Result<Value, Failure> {
    append(&format!("delivered/{}", call.correlation_id), json!(input.n))
}

/// A saga step's input: the saga's input, with its id.
#[derive(Deserialize)]
struct Step {
    saga_id: String,
    #[serde(default)]
    refuse: Option<String>,
    #[serde(default)]
    flaky: std::collections::HashMap<String, u32>,
}

fn mark(input: Step, call: &Invocation) -> Result<Value, Failure> {
    let operation = call.operation.as_str();
    if let Some(planned) = input.flaky.get(operation)
        && call.attempt <= *planned
    {
        return Err(Failure::Transient(format!(
            "{operation}: planned failure {} of {planned}",
            call.attempt
        )));
    }
    if input.refuse.as_deref() == Some(operation) {
        return Err(Failure::Rejected(format!("{operation}: refused as the input asks")));
    }
    append(&format!("marks/{}", input.saga_id), json!(operation))
}

wasaga_guest::service!(
    Service::new("history")
        .operation(OperationInfo::new("txn", "Reads and appends to lists, in one transaction.").public(), txn)
        .operation(
            OperationInfo::new("publish", "Publishes {n} on history-event in a chain.").public(),
            publish
        )
        .operation(
            OperationInfo::new("deliver", "On history-event: appends n to delivered/<chain>."),
            deliver
        )
        .operation(OperationInfo::new("mark-a", "Saga step a.").compensated_by("unmark-a"), mark)
        .operation(OperationInfo::new("mark-b", "Saga step b.").compensated_by("unmark-b"), mark)
        .operation(OperationInfo::new("mark-c", "Saga step c (the pivot)."), mark)
        .operation(OperationInfo::new("mark-d", "Saga step d (after the pivot)."), mark)
        .operation(OperationInfo::new("unmark-a", "Undoes step a."), mark)
        .operation(OperationInfo::new("unmark-b", "Undoes step b."), mark)
        .subscribe("history-event", "deliver")
);
