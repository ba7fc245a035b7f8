//! `wasaga saga ...`: start, show, list and retry sagas on a running server.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};

use super::tokens::Remote;
use serde_json::Value;

#[derive(Debug, Subcommand)]
pub enum SagaCommand {
    Start(StartArgs),
    Show(ShowArgs),
    List(ListArgs),
    /// Give a stuck saga another attempt, once its cause is fixed.
    Retry(ShowArgs),
}

/// Start a saga, e.g. `wasaga saga start place-order --input '{"order": "o-1", ...}'`.
///
/// Prints the saga as JSON. The same `--key` always means the same saga: run the
/// command again with the same key and you get the saga it started, not a new one.
#[derive(Debug, Args)]
pub struct StartArgs {
    /// The saga definition's name.
    name: String,

    /// The saga's input: a JSON object.
    #[arg(long)]
    input: String,

    /// The idempotency key (default: a new random one).
    #[arg(long)]
    key: Option<String>,

    /// Wait for the saga to finish (or get stuck), at most this long, e.g. 10s.
    #[arg(long)]
    wait: Option<String>,

    #[command(flatten)]
    remote: Remote,
}

/// Show one saga (every step: status, attempts, errors, outputs, timings) as JSON.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The saga's id.
    id: String,

    #[command(flatten)]
    remote: Remote,
}

/// List sagas, oldest first, e.g. `wasaga saga list --status stuck`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only sagas in this status: running, compensating, completed, compensated, stuck.
    #[arg(long)]
    status: Option<String>,

    /// At most this many.
    #[arg(long, default_value_t = 100)]
    limit: usize,

    #[command(flatten)]
    remote: Remote,
}

pub async fn run(command: SagaCommand) -> anyhow::Result<ExitCode> {
    let client = reqwest::Client::new();
    let (request, table) = match command {
        SagaCommand::Start(args) => {
            let input: Value = serde_json::from_str(&args.input).context("--input is not valid JSON")?;
            let key = args.key.unwrap_or_else(|| format!("cli-{}", uuid::Uuid::now_v7()));
            let mut url = format!("{}/v1/sagas/{}", args.remote.server, args.name);
            if let Some(wait) = &args.wait {
                url.push_str(&format!("?wait={wait}"));
            }
            let request = client.post(url).header("Idempotency-Key", key).json(&input);
            (args.remote.as_reader(request)?, false)
        }
        SagaCommand::Show(args) => {
            let request = client.get(format!("{}/v1/sagas/{}", args.remote.server, args.id));
            (args.remote.as_reader(request)?, false)
        }
        SagaCommand::Retry(args) => {
            let request = client.post(format!("{}/v1/sagas/{}/retry", args.remote.server, args.id));
            (args.remote.as_operator(request)?, false)
        }
        SagaCommand::List(args) => {
            let mut url = format!("{}/v1/sagas?limit={}", args.remote.server, args.limit);
            if let Some(status) = &args.status {
                url.push_str(&format!("&status={status}"));
            }
            (args.remote.as_reader(client.get(url))?, true)
        }
    };
    let response = request.send().await.context("the server did not answer")?;
    let status = response.status();
    let body: Value = response.json().await.context("the server's answer is not JSON")?;
    if !status.is_success() {
        eprintln!("error: {} ({status})", body["detail"].as_str().unwrap_or("no detail"));
        return Ok(ExitCode::FAILURE);
    }
    if table {
        for saga in body["sagas"].as_array().into_iter().flatten() {
            let reason = saga["reason"].as_str().unwrap_or("");
            println!(
                "{}  {:<14} {:<12} {reason}",
                text(&saga["id"]),
                text(&saga["name"]),
                text(&saga["status"])
            );
        }
    } else {
        println!("{}", serde_json::to_string_pretty(&body)?);
    }
    Ok(ExitCode::SUCCESS)
}

fn text(value: &Value) -> &str {
    value.as_str().unwrap_or("")
}
