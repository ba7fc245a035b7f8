//! `wasaga saga ...`: start, show and list sagas on a running server, and the
//! operator's actions on a stuck one (retry, compensate, resolve).

use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::{Map, Value};

use super::print::{self, answer, call, text};
use super::tokens::Remote;

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
    Verify(super::saga_verify::VerifyArgs),
}

/// Start a saga, e.g. `wasaga saga start place-order --input '{"order": "o-1", ...}'`.
///
/// Prints the saga (a table; `--json` for its JSON). The same `--key` always means the
/// same saga: run the command again with the same key and you get the saga it started,
/// not a new one.
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

    /// Print the server's JSON instead of a table.
    #[arg(long)]
    json: bool,

    #[command(flatten)]
    remote: Remote,
}

/// Show one saga: why it compensates or is stuck, every step (call, status, attempts,
/// compensation, time, last error) and its history. `--json` for everything the server
/// says (outputs, digests, timestamps).
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The saga's id.
    id: String,

    /// Print the server's JSON instead of a table.
    #[arg(long)]
    json: bool,

    #[command(flatten)]
    remote: Remote,
}

/// List sagas, oldest first, e.g. `wasaga saga list --status stuck`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only sagas in this status: running, compensating, completed, compensated, stuck.
    #[arg(long)]
    status: Option<String>,

    /// At most this many (1 to 1000).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u16).range(1..=1000))]
    limit: u16,

    /// Start after this saga id (the list ends by saying what to pass for the next page).
    #[arg(long)]
    after: Option<String>,

    /// Print the server's JSON instead of a table.
    #[arg(long)]
    json: bool,

    #[command(flatten)]
    remote: Remote,
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

    /// Wait for the saga to finish (or get stuck again), at most this long, e.g. 10s.
    #[arg(long)]
    wait: Option<String>,

    /// Print the server's JSON instead of a table.
    #[arg(long)]
    json: bool,

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

pub async fn run(command: SagaCommand) -> anyhow::Result<ExitCode> {
    let client = reqwest::Client::new();
    match command {
        SagaCommand::Verify(args) => super::saga_verify::run(args).await,
        SagaCommand::Start(args) => {
            let input: Value = serde_json::from_str(&args.input).context("--input is not valid JSON")?;
            let key = args.key.unwrap_or_else(|| format!("cli-{}", uuid::Uuid::now_v7()));
            let mut url = format!("{}/v1/sagas/{}", args.remote.server, args.name);
            if let Some(wait) = &args.wait {
                url.push_str(&format!("?wait={wait}"));
            }
            let request = client.post(url).header("Idempotency-Key", key).json(&input);
            answer(call(args.remote.as_reader(request)?).await?, args.json, print::saga)
        }
        SagaCommand::Show(args) => {
            let request = client.get(format!("{}/v1/sagas/{}", args.remote.server, args.id));
            answer(call(args.remote.as_reader(request)?).await?, args.json, print::saga)
        }
        SagaCommand::List(args) => {
            let mut url = format!("{}/v1/sagas?limit={}", args.remote.server, args.limit);
            for (name, value) in [("status", &args.status), ("after", &args.after)] {
                if let Some(value) = value {
                    url.push_str(&format!("&{name}={value}"));
                }
            }
            answer(call(args.remote.as_reader(client.get(url))?).await?, args.json, list)
        }
        SagaCommand::Retry(args) => act(&client, &args, "retry", args.body()).await,
        SagaCommand::Compensate(args) => act(&client, &args, "compensate", args.body()).await,
        SagaCommand::Resolve(args) => {
            let mut body = args.action.body();
            if let Some(step) = &args.step {
                body.insert("step".into(), step.clone().into());
            }
            if let Some(output) = &args.output {
                let output: Value = serde_json::from_str(output).context("--output is not valid JSON")?;
                body.insert("output".into(), output);
            }
            act(&client, &args.action, "resolve", body).await
        }
    }
}

impl ActionArgs {
    fn body(&self) -> Map<String, Value> {
        let by = self.by.clone().or_else(|| std::env::var("USER").ok()).unwrap_or_else(|| "operator".into());
        let mut body = Map::new();
        body.insert("by".into(), by.into());
        if let Some(note) = &self.note {
            body.insert("note".into(), note.clone().into());
        }
        body
    }
}

/// `POST /v1/sagas/{id}/{verb}` with the admin token and `body`; prints the saga.
async fn act(
    client: &reqwest::Client,
    args: &ActionArgs,
    verb: &str,
    body: Map<String, Value>,
) -> anyhow::Result<ExitCode> {
    let mut url = format!("{}/v1/sagas/{}/{verb}", args.remote.server, args.id);
    if let Some(wait) = &args.wait {
        url.push_str(&format!("?wait={wait}"));
    }
    let request = client.post(url).json(&body);
    answer(call(args.remote.as_operator(request)?).await?, args.json, print::saga)
}

fn list(body: &Value) {
    let sagas = body["sagas"].as_array().map(Vec::as_slice).unwrap_or_default();
    if sagas.is_empty() {
        println!("no saga");
        return;
    }
    let rows: Vec<Vec<String>> = sagas
        .iter()
        .map(|saga| {
            let why = saga["stuck_reason"].as_str().or_else(|| saga["reason"].as_str()).unwrap_or("");
            vec![
                text(&saga["id"]).to_owned(),
                text(&saga["name"]).to_owned(),
                text(&saga["status"]).to_owned(),
                print::time(&saga["updated_at"]),
                why.to_owned(),
            ]
        })
        .collect();
    print::table(&["ID", "SAGA", "STATUS", "UPDATED", "WHY"], &rows);
    if let Some(next) = body["next"].as_str() {
        println!("(more: --after {next})");
    }
}
