//! `wasaga events ...`: a choreographed flow's chain of events, the dead letters, and
//! an operator's redelivery, on a running server.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde_json::Value;

use super::print::{self, answer, call, text};
use super::tokens::Remote;

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    Chain(ChainArgs),
    Dead(DeadArgs),
    Redeliver(RedeliverArgs),
}

/// Show the events of one chain (a correlation id: an order's id for the demo's order
/// flow, a saga's id for the events its steps publish), in publication order, each
/// with its deliveries.
#[derive(Debug, Args)]
pub struct ChainArgs {
    /// The correlation id.
    correlation: String,

    /// Start after this event id (the table ends by saying what to pass for the next
    /// page).
    #[arg(long)]
    after: Option<i64>,

    /// Print the server's JSON instead of a table.
    #[arg(long)]
    json: bool,

    #[command(flatten)]
    remote: Remote,
}

/// List the deliveries that failed every attempt (dead letters), oldest first.
#[derive(Debug, Args)]
pub struct DeadArgs {
    /// Print the server's JSON instead of a table.
    #[arg(long)]
    json: bool,

    #[command(flatten)]
    remote: Remote,
}

/// Deliver a dead event to its subscriber again (needs the admin token:
/// WASAGA_ADMIN_TOKEN or --admin-token-file). Its attempts go on counting.
#[derive(Debug, Args)]
pub struct RedeliverArgs {
    /// The event's id (see `wasaga events dead`).
    event: i64,

    /// The subscriber (service) to deliver it to.
    #[arg(long)]
    subscriber: String,

    #[command(flatten)]
    remote: Remote,
}

pub async fn run(command: EventsCommand) -> anyhow::Result<ExitCode> {
    let client = reqwest::Client::new();
    match command {
        EventsCommand::Chain(args) => {
            let mut request = client
                .get(format!("{}/v1/events", args.remote.server))
                .query(&[("correlation", &args.correlation)]);
            if let Some(after) = args.after {
                request = request.query(&[("after", after)]);
            }
            answer(call(args.remote.as_reader(request)?).await?, args.json, chain)
        }
        EventsCommand::Dead(args) => {
            let request = client.get(format!("{}/v1/events/dead", args.remote.server));
            answer(call(args.remote.as_reader(request)?).await?, args.json, dead)
        }
        EventsCommand::Redeliver(args) => {
            let request = client
                .post(format!("{}/v1/events/{}/redeliver", args.remote.server, args.event))
                .query(&[("subscriber", &args.subscriber)]);
            let done = call(args.remote.as_operator(request)?).await?;
            answer(done, false, |_| println!("event {} goes to {} again", args.event, args.subscriber))
        }
    }
}

fn chain(page: &Value) {
    let events = page["events"].as_array().map(Vec::as_slice).unwrap_or_default();
    if events.is_empty() {
        println!("no event in this chain");
        return;
    }
    let rows: Vec<Vec<String>> = events
        .iter()
        .map(|event| {
            let deliveries: Vec<String> = if event["dispatched"] != true {
                vec!["not dispatched yet".into()]
            } else {
                event["deliveries"].as_array().into_iter().flatten().map(delivery).collect()
            };
            vec![
                event["id"].to_string(),
                text(&event["topic"]).to_owned(),
                text(&event["publisher"]).to_owned(),
                print::time(&event["created_at"]),
                if deliveries.is_empty() { "no subscriber".into() } else { deliveries.join("; ") },
            ]
        })
        .collect();
    print::table(&["EVENT", "TOPIC", "PUBLISHER", "PUBLISHED", "DELIVERIES"], &rows);
    if let Some(next) = page["next"].as_i64() {
        println!("(more: --after {next})");
    }
}

fn delivery(d: &Value) -> String {
    let outcome = d["outcome"].as_str().map(|o| format!(" ({o})")).unwrap_or_default();
    let attempts = match d["attempts"].as_u64() {
        Some(n) if n > 1 => format!(" ×{n}"),
        _ => String::new(),
    };
    format!("{}.{}: {}{outcome}{attempts}", text(&d["subscriber"]), text(&d["operation"]), text(&d["status"]))
}

fn dead(deliveries: &Value) {
    let deliveries = deliveries.as_array().map(Vec::as_slice).unwrap_or_default();
    if deliveries.is_empty() {
        println!("no dead letter");
        return;
    }
    let rows: Vec<Vec<String>> = deliveries
        .iter()
        .map(|d| {
            vec![
                d["event_id"].to_string(),
                text(&d["subscriber"]).to_owned(),
                text(&d["operation"]).to_owned(),
                d["attempts"].to_string(),
                text(&d["last_error"]).to_owned(),
            ]
        })
        .collect();
    print::table(&["EVENT", "SUBSCRIBER", "OPERATION", "ATTEMPTS", "LAST ERROR"], &rows);
    println!("\nredeliver one with: wasaga events redeliver <EVENT> --subscriber <SUBSCRIBER>");
}
