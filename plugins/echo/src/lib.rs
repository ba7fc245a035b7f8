//! `echo`: the smallest useful service. It returns its input, and gives tests a direct
//! handle on every host import (store, events, log) and on both kinds of failure.
//!
//! Operations (input and output are JSON):
//! - `echo`: returns the input bytes unchanged.
//! - `get` `{key}` → `{key, value, version}` (`value` null when absent).
//! - `set` `{key, value}` → `{key, version}`.
//! - `put` `{key, value, expected}` → `{key, version}`; a version conflict is a rejection.
//! - `delete` `{key, expected}` → `{key}`.
//! - `scan` `{prefix, start_after, limit}` → `[{key, value, version}]`.
//! - `publish` `{topic, payload, chain?}` → `{}` (the event in chain `chain` if given).
//! - `log` `{message}` → `{}` (logs at every level and prints to stdout and stderr).
//! - `fail` `{kind: "rejected" | "transient", reason}` → that failure.
//! - `agree` `{keys: [..]}` → `{value}` when every key holds the same value, else a
//!   transient failure.
//! - `burn` `{ms}` → `{burned_ms}`: keeps its instance busy that long (at most 2 s).
//! - `publish-then-refuse` `{topic, payload}` → publishes, then a rejection.
//! - `append` `{n}` (subscribed to `journal`, so internal) → appends `n` to
//!   `journal/<correlation id>`.
//!
//! Every other operation is public.

mod logic;

use wasaga_guest::{Failure, Guest, Invocation, Manifest, OperationInfo};

struct Echo;

impl Guest for Echo {
    fn describe() -> Manifest {
        let op = OperationInfo::new;
        Manifest {
            name: "echo".into(),
            operations: vec![
                op("echo", "Returns its input unchanged."),
                op("get", "Reads one record."),
                op("set", "Writes one record, based on what was read."),
                op("put", "Compare-and-set of one record."),
                op("delete", "Deletes one record."),
                op("scan", "Lists records by key prefix."),
                op("publish", "Publishes one event."),
                op("log", "Writes to the host log, stdout and stderr."),
                op("fail", "Fails the way the input asks."),
                op(
                    "agree",
                    "Reads the given keys: their one value, or a transient failure if any two differ.",
                ),
                op("burn", "Keeps its instance busy for `ms` milliseconds."),
                op("publish-then-refuse", "Publishes an event, then refuses: the event must never exist."),
                op("append", "On `journal` events: appends the input's `n` to journal/<correlation id>."),
            ],
            subscriptions: vec![("journal".into(), "append".into())],
            destinations: vec![],
        }
    }

    fn handle(call: Invocation) -> Result<Vec<u8>, Failure> {
        logic::handle(&call.operation, &call.input, &call.correlation_id)
    }
}

wasaga_guest::export!(Echo with_types_in wasaga_guest);
