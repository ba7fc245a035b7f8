//! `wasaga plugin run`: one operation of a plugin, offline, on a scratch store.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use serde_json::{Value, json};

use super::RuntimeArgs;
use crate::service::{Failure, Invocation};
use crate::store::sqlite::{SqliteOptions, SqliteStore};
use crate::store::{ChangeSet, Commit, Store, Transaction, TxLimits, Write};

/// Run one operation of a plugin offline, and print what it did.
///
/// Loads the file as `check` does, gives it a scratch store of its own (in a temporary
/// directory, with the records of --records), runs the operation once, and prints its
/// output or its failure, the records it wrote and the events it published. Nothing
/// is kept: a plugin's author tests with it, without a server. Exits 0 when the
/// operation succeeds, 2 when it fails (rejected or transient), 1 when it cannot run
/// (the file is refused, no such operation, the plugin trapped).
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The `.wasm` file.
    file: PathBuf,

    /// The operation, one of its manifest's.
    operation: String,

    /// The input: JSON by convention; `-` reads it from stdin.
    #[arg(default_value = "{}")]
    input: String,

    /// The service's records before the call: a JSON file of one object, each member
    /// a record (its key, and its value, stored as JSON text at version 1).
    #[arg(long)]
    records: Option<PathBuf>,

    /// Print the result as JSON.
    #[arg(long)]
    json: bool,

    #[command(flatten)]
    runtime: RuntimeArgs,
}

pub async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let input = match args.input.as_str() {
        "-" => {
            let mut input = Vec::new();
            std::io::stdin().read_to_end(&mut input).context("reading the input from stdin")?;
            input
        }
        text => text.as_bytes().to_vec(),
    };
    let seed = match &args.records {
        Some(file) => records(file)?,
        None => Vec::new(),
    };
    let Some(plugin) = args.runtime.load_file(&args.file).await? else {
        return Ok(ExitCode::FAILURE);
    };
    let operations: Vec<&str> = plugin.manifest().operations.iter().map(|op| op.name.as_str()).collect();
    if !operations.contains(&args.operation.as_str()) {
        eprintln!(
            "service `{}` has no operation `{}` (it has: {})",
            plugin.service(),
            args.operation,
            operations.join(", ")
        );
        return Ok(ExitCode::FAILURE);
    }

    let scratch = tempfile::tempdir().context("making a scratch directory")?;
    let store = SqliteStore::open(scratch.path(), SqliteOptions::default())?;
    if !seed.is_empty() {
        let writes =
            seed.into_iter().map(|(key, value)| Write { key, value: Some(value), version: 1 }).collect();
        let changes = ChangeSet { writes, ..ChangeSet::default() };
        let commit = Commit { service: plugin.service().to_owned(), changes, ..Commit::default() };
        store.commit(commit).await.context("storing the records of --records")?;
    }
    let tx = Transaction::new(store.snapshot(plugin.service())?, TxLimits::default());
    let call = Invocation {
        operation: args.operation.clone(),
        input,
        idempotency_key: "plugin-run".into(),
        correlation_id: "plugin-run".into(),
        attempt: 1,
    };
    let outcome = match plugin.invoke(call, tx, None).await {
        Ok(outcome) => outcome,
        Err(error) => {
            eprintln!("{}: {error}", args.file.display());
            return Ok(ExitCode::FAILURE);
        }
    };
    // Only a success commits its changes: a failure's are shown as nothing.
    let changes = if outcome.result.is_ok() { outcome.changes } else { ChangeSet::default() };
    if args.json {
        let (ok, failure) = match &outcome.result {
            Ok(output) => (Some(as_json(output)), None),
            Err(Failure::Rejected(why)) => (None, Some(json!({"kind": "rejected", "reason": why}))),
            Err(Failure::Transient(why)) => (None, Some(json!({"kind": "transient", "reason": why}))),
        };
        let writes: Vec<Value> = changes
            .writes
            .iter()
            .map(|w| json!({"key": w.key, "value": w.value.as_deref().map(as_json), "version": w.version}))
            .collect();
        let events: Vec<Value> = changes
            .events
            .iter()
            .map(|e| json!({"topic": e.topic, "payload": as_json(&e.payload), "chain": e.correlation_id}))
            .collect();
        let report = json!({"output": ok, "failure": failure, "writes": writes, "events": events});
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        match &outcome.result {
            Ok(output) => println!("output  {}", String::from_utf8_lossy(output)),
            Err(failure) => println!("{failure}"),
        }
        for write in &changes.writes {
            match &write.value {
                Some(value) => {
                    println!(
                        "write   {} = {} (version {})",
                        write.key,
                        String::from_utf8_lossy(value),
                        write.version
                    )
                }
                None => println!("delete  {} (version {})", write.key, write.version),
            }
        }
        for event in &changes.events {
            let chain = event.correlation_id.as_deref().map(|c| format!(" (chain {c})")).unwrap_or_default();
            println!("event   {}: {}{chain}", event.topic, String::from_utf8_lossy(&event.payload));
        }
    }
    Ok(if outcome.result.is_ok() { ExitCode::SUCCESS } else { ExitCode::from(2) })
}

/// The records of a `--records` file: one JSON object, key → value.
fn records(file: &std::path::Path) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let text = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let value: Value =
        serde_json::from_slice(&text).with_context(|| format!("{} is not JSON", file.display()))?;
    let Value::Object(members) = value else {
        anyhow::bail!("{} must hold one JSON object: each member a record (key: value)", file.display());
    };
    Ok(members.into_iter().map(|(key, value)| (key, value.to_string().into_bytes())).collect())
}

/// Bytes as JSON when they are JSON, else as a string.
fn as_json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
}
