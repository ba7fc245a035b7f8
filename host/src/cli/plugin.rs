//! `wasaga plugin ...`: work with plugin files.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::RuntimeArgs;
use crate::runtime::{Registry, Runtime};

#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    Check(CheckArgs),
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

    #[command(flatten)]
    runtime: RuntimeArgs,
}

pub async fn run(command: PluginCommand) -> anyhow::Result<ExitCode> {
    match command {
        PluginCommand::Check(args) => check(args).await,
    }
}

async fn check(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let registry = Registry::new(Runtime::new(args.runtime.options())?);
    let plugin = match registry.load_file(&args.file, &args.runtime.settings()).await {
        Ok(plugin) => plugin,
        Err(error) => {
            eprintln!("{}: refused: {error:#}", args.file.display());
            return Ok(ExitCode::FAILURE);
        }
    };
    let manifest = plugin.manifest();
    if args.json {
        let json = serde_json::json!({
            "service": plugin.service(),
            "digest": plugin.digest().to_string(),
            "size": plugin.size(),
            "manifest": manifest,
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
        let undo = op.compensated_by.as_deref().map(|u| format!(" (undone by {u})")).unwrap_or_default();
        println!("  {}{undo}: {}", op.name, op.description);
    }
    if !manifest.subscriptions.is_empty() {
        println!("subscriptions");
        for (topic, operation) in &manifest.subscriptions {
            println!("  {topic} -> {operation}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
