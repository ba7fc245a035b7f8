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
    /// Give a stuck saga's stuck call another attempt, once its cause is fixed.
    Retry(ActionArgs),
    /// Undo what a stuck saga did (only while its pivot has not committed).
    Compensate(ActionArgs),
    Resolve(ResolveArgs),
}

/// An operator action on a stuck saga (needs the admin token: WASAGA_ADMIN_TOKEN or
/// --admin-token-file). Recorded in the saga's history with --by and --note.
#[derive(Debug, Args)]
pub struct ActionArgs {
    /// The saga's id.
    id: String,

    /// Who does it, for the saga's history (default: $USER).
    #[arg(long)]
    by: Option<String>,

    /// Why, for the saga's history.
    #[arg(long)]
    note: Option<String>,

    #[command(flatten)]
    remote: Remote,
}

/// Mark a stuck saga's stuck step done by hand, with the output it would have had (a
/// stuck compensation: compensated); the saga goes on from there.
#[derive(Debug, Args)]
pub struct ResolveArgs {
    #[command(flatten)]
    action: ActionArgs,

    /// The stuck step's name, to make sure it is the one meant.
    #[arg(long)]
    step: Option<String>,

    /// The step's output, as JSON (default: null).
    #[arg(long)]
    output: Option<String>,
}

impl ActionArgs {
    fn body(&self) -> serde_json::Map<String, Value> {
        let by = self.by.clone().or_else(|| std::env::var("USER").ok()).unwrap_or_else(|| "operator".into());
        let mut body = serde_json::Map::new();
        body.insert("by".into(), by.into());
        if let Some(note) = &self.note {
            body.insert("note".into(), note.clone().into());
        }
        body
    }
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
        SagaCommand::Retry(args) => (operate(&client, &args, "retry", args.body())?, false),
        SagaCommand::Compensate(args) => (operate(&client, &args, "compensate", args.body())?, false),
        SagaCommand::Resolve(args) => {
            let mut body = args.action.body();
            if let Some(step) = &args.step {
                body.insert("step".into(), step.clone().into());
            }
            if let Some(output) = &args.output {
                let output: Value = serde_json::from_str(output).context("--output is not valid JSON")?;
                body.insert("output".into(), output);
            }
            (operate(&client, &args.action, "resolve", body)?, false)
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

/// `POST /v1/sagas/{id}/{verb}` with the admin token and `body`.
fn operate(
    client: &reqwest::Client,
    args: &ActionArgs,
    verb: &str,
    body: serde_json::Map<String, Value>,
) -> anyhow::Result<reqwest::RequestBuilder> {
    let request = client.post(format!("{}/v1/sagas/{}/{verb}", args.remote.server, args.id)).json(&body);
    args.remote.as_operator(request)
}

fn text(value: &Value) -> &str {
    value.as_str().unwrap_or("")
}
