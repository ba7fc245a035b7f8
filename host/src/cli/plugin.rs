//! `wasaga plugin ...`: work with plugin files.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};

use super::RuntimeArgs;
use super::print::{self, answer, call, text};
use super::tokens::Remote;
use crate::service::Visibility;

#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    Check(CheckArgs),
    Run(super::plugin_run::RunArgs),
    Push(PushArgs),
    List(ListArgs),
    Remove(RemoveArgs),
}

/// Stop serving a service on a running server (needs the admin token). Refused while
/// a saga definition, or an unfinished saga, still needs it; the server names them.
#[derive(Debug, Args)]
pub struct RemoveArgs {
    /// The service.
    service: String,

    #[command(flatten)]
    remote: Remote,
}

/// Upload a plugin to a running server, which swaps it in without dropping a call.
///
/// The server checks it first (a component of the wasaga:plugin world, of this
/// service, keeping every operation its sagas use); if anything is wrong it says why
/// and the version serving stays. Needs the server's admin token (WASAGA_ADMIN_TOKEN
/// or --admin-token-file).
#[derive(Debug, Args)]
pub struct PushArgs {
    /// The `.wasm` file.
    file: PathBuf,

    /// The service it replaces (or adds).
    #[arg(long)]
    service: String,

    #[command(flatten)]
    remote: Remote,
}

/// List the plugins a running server serves: service, digest, size, when loaded,
/// how many versions it replaced; and the files it refused.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print the server's JSON instead of a table.
    #[arg(long)]
    json: bool,

    #[command(flatten)]
    remote: Remote,
}

/// Check that a file is a valid wasaga plugin, and print its manifest.
///
/// Compiles the component, checks it against the wasaga:plugin/plugin world, runs its
/// `describe` inside the sandbox and validates the manifest. Exits 0 and prints the
/// service, its digest and its operations; or exits 1 and says exactly why the file
/// is refused.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The `.wasm` file to check.
    file: PathBuf,

    /// Print the manifest as JSON.
    #[arg(long)]
    json: bool,

    /// The grants file `wasaga serve --outbound` reads: for each HTTP destination the
    /// manifest declares, say whether a grant of this file covers it.
    #[arg(long, env = "WASAGA_OUTBOUND")]
    outbound: Option<PathBuf>,

    #[command(flatten)]
    runtime: RuntimeArgs,
}

pub async fn run(command: PluginCommand) -> anyhow::Result<ExitCode> {
    match command {
        PluginCommand::Check(args) => check(args).await,
        PluginCommand::Run(args) => super::plugin_run::run(args).await,
        PluginCommand::Push(args) => push(args).await,
        PluginCommand::List(args) => list(args).await,
        PluginCommand::Remove(args) => {
            let url = format!("{}/v1/plugins/{}", args.remote.server, args.service);
            let removed = call(args.remote.as_operator(reqwest::Client::new().delete(url))?).await?;
            answer(removed, false, |_| println!("{} is no longer served", args.service))
        }
    }
}

async fn push(args: PushArgs) -> anyhow::Result<ExitCode> {
    let wasm = std::fs::read(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let url = format!("{}/v1/plugins/{}", args.remote.server, args.service);
    match call(args.remote.as_operator(reqwest::Client::new().put(url))?.body(wasm)).await? {
        Ok(body) => {
            println!("{} now serves {}", text(&body["service"]), text(&body["digest"]));
            Ok(ExitCode::SUCCESS)
        }
        Err(refused) => {
            eprintln!("{}: refused: {} ({})", args.file.display(), refused.detail, refused.status);
            Ok(ExitCode::FAILURE)
        }
    }
}

async fn list(args: ListArgs) -> anyhow::Result<ExitCode> {
    let request = reqwest::Client::new().get(format!("{}/v1/plugins", args.remote.server));
    answer(call(args.remote.as_reader(request)?).await?, args.json, |body| {
        let plugins = body["plugins"].as_array().map(Vec::as_slice).unwrap_or_default();
        if plugins.is_empty() {
            println!("no plugin is served");
        }
        let rows: Vec<Vec<String>> = plugins
            .iter()
            .map(|plugin| {
                vec![
                    text(&plugin["service"]).to_owned(),
                    text(&plugin["digest"]).to_owned(),
                    format!("{} bytes", plugin["size"]),
                    print::time(&plugin["loaded_at"]),
                    format!("{} earlier versions", plugin["previous"].as_array().map_or(0, Vec::len)),
                ]
            })
            .collect();
        if !rows.is_empty() {
            print::table(&["SERVICE", "DIGEST", "SIZE", "LOADED", "HISTORY"], &rows);
        }
        for refused in body["refused"].as_array().into_iter().flatten() {
            println!("refused {}: {}", text(&refused["file"]), text(&refused["error"]));
        }
    })
}

async fn check(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let Some(plugin) = args.runtime.load_file(&args.file).await? else {
        return Ok(ExitCode::FAILURE);
    };
    let manifest = plugin.manifest();
    let grants = args.outbound.as_deref().map(crate::outbound::Grants::load).transpose()?;
    // Per declared destination: the grants of the file that overlap it, if a file is given.
    let granted: Vec<Option<Vec<String>>> = plugin
        .destinations()
        .iter()
        .map(|declared| {
            let grants = grants.as_ref()?;
            let service = grants.of(plugin.service());
            Some(service.map_or_else(Vec::new, |g| g.granting(declared)))
        })
        .collect();
    if args.json {
        let destinations: Vec<serde_json::Value> = manifest
            .destinations
            .iter()
            .zip(&granted)
            .map(|(d, granted)| serde_json::json!({ "url": d.url, "methods": d.methods, "granted_by": granted }))
            .collect();
        let json = serde_json::json!({
            "service": plugin.service(),
            "digest": plugin.digest().to_string(),
            "size": plugin.size(),
            "manifest": manifest,
            "destinations": destinations,
        });
        println!("{}", serde_json::to_string_pretty(&json)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("{}: ok", args.file.display());
    println!("service       {}", plugin.service());
    println!("digest        {}", plugin.digest());
    println!("size          {} bytes", plugin.size());
    println!("operations");
    for op in &manifest.operations {
        let undo = op.compensated_by.as_deref().map(|u| format!(", undone by {u}")).unwrap_or_default();
        let visibility = match op.visibility {
            Visibility::Public => "public",
            Visibility::Internal => "internal",
        };
        println!("  {} ({visibility}{undo}): {}", op.name, op.description);
    }
    if !manifest.subscriptions.is_empty() {
        println!("subscriptions");
        for (topic, operation) in &manifest.subscriptions {
            println!("  {topic} -> {operation}");
        }
    }
    if !manifest.destinations.is_empty() {
        println!("destinations (HTTP; each needs the operator's grant too: wasaga serve --outbound)");
        for (d, granted) in manifest.destinations.iter().zip(&granted) {
            let methods = if d.methods.is_empty() { "any method".to_owned() } else { d.methods.join(", ") };
            let grant = match granted {
                None => String::new(),
                Some(urls) if urls.is_empty() => " - not granted".to_owned(),
                Some(urls) => format!(" - granted by {}", urls.join(", ")),
            };
            println!("  {} ({methods}){grant}", d.url);
        }
    }
    Ok(ExitCode::SUCCESS)
}
