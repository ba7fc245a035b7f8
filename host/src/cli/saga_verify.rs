//! `wasaga saga verify`: checks a saga's compensations before it ships.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use serde_json::{Value, json};

use super::RuntimeArgs;
use crate::invoke::{InvokeOptions, Invoker};
use crate::runtime::Registry;
use crate::saga::definition::SagaDef;
use crate::saga::verify::{Records, Verdict, Verification};

/// Check a saga under every single and pairwise failure, against its real plugins.
///
/// Runs the saga once per failure schedule, each time on a scratch store holding the
/// records of --records: with no fault; with each step's call and each compensation's
/// refused, failing transiently once, at every attempt but the last its retry policy
/// allows, or at every one, or made twice with its key (a crash after its commit, a
/// duplicate); each compensable step done without its call (an operator's resolve: its
/// compensation then runs for a step that never committed); and with each pair of
/// those on two different calls. Then checks the end: a saga
/// that ends compensated must leave every record as it found it (but for the keys its
/// definition lists in `audit`, e.g. `audit = ["order/*"]`); one that ends completed,
/// the records of the run without faults; and it may end stuck only when a
/// compensation, or a step after the pivot, was made to fail for good. Prints a table
/// of the schedules; exits 1 on any finding, naming the shortest schedule that shows
/// it, 0 when there is none, 2 when it cannot run (a bad input or records file, a saga
/// or a plugin that does not load).
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The saga definition's name (`<name>.toml` in --sagas).
    name: String,

    /// The saga's input: a JSON object.
    #[arg(long)]
    input: String,

    /// The records before the saga: a JSON file of one object per service, each member
    /// a record (`{"inventory": {"stock/lamp": {"available": 10, "reserved": 0}}}`).
    #[arg(long)]
    records: Option<PathBuf>,

    /// Directory of the plugin components (`<service>.wasm`); default: the demo's.
    #[arg(long)]
    plugins: Option<PathBuf>,

    /// Directory of saga definitions; default: the demo's.
    #[arg(long)]
    sagas: Option<PathBuf>,

    /// Print every schedule's verdict as JSON.
    #[arg(long)]
    json: bool,

    #[command(flatten)]
    runtime: RuntimeArgs,
}

pub async fn run(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    // Told apart from a finding (1), for a CI job.
    match verify(args).await {
        Ok(code) => Ok(code),
        Err(error) => {
            eprintln!("error: {error:#}");
            Ok(ExitCode::from(2))
        }
    }
}

async fn verify(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let input = match serde_json::from_str(&args.input).context("--input is not valid JSON")? {
        Value::Object(input) => input,
        _ => anyhow::bail!("--input must be a JSON object, as a saga's input is"),
    };
    let seed = match &args.records {
        Some(file) => records(file)?,
        None => Records::new(),
    };
    // The demo's services and sagas, written out, unless others are named.
    let demo = tempfile::Builder::new().prefix("wasaga-verify-").tempdir()?;
    if args.plugins.is_none() || args.sagas.is_none() {
        super::demo::install(&demo.path().join("plugins"), &demo.path().join("sagas"))?;
    }
    let plugins = args.plugins.clone().unwrap_or_else(|| demo.path().join("plugins"));
    let sagas = args.sagas.clone().unwrap_or_else(|| demo.path().join("sagas"));

    let registry = Registry::new(args.runtime.offline_runtime()?);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&plugins)
        .with_context(|| format!("the plugins directory {}", plugins.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|e| e == "wasm"))
        .collect();
    files.sort();
    for file in files {
        if let Some(plugin) = args.runtime.load_file(&file).await? {
            registry.insert(plugin);
        }
    }
    let file = sagas.join(format!("{}.toml", args.name));
    let text = std::fs::read_to_string(&file)
        .with_context(|| format!("no saga `{}`: reading {}", args.name, file.display()))?;
    let loaded = registry.plugins();
    let manifest = |service: &str| loaded.iter().find(|p| p.service() == service).map(|p| p.manifest());
    let def = SagaDef::parse(&file, &text, manifest).map_err(anyhow::Error::msg)?;
    let services = loaded.iter().map(|p| p.service().to_owned()).collect();
    let scratch = Box::new(move || {
        Ok(Invoker::new(
            registry.clone(),
            crate::app::scratch_store()?,
            InvokeOptions::default(),
            Default::default(),
        ))
    });
    let verification = Verification { def: Arc::new(def), input, seed, services, scratch };
    let began = Instant::now();
    let verdicts = verification.run().await?;
    let took = began.elapsed();
    report(&verification.def, &verdicts, args.json, took);
    Ok(if verdicts.iter().any(|v| !v.findings.is_empty()) { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

fn report(def: &SagaDef, verdicts: &[Verdict], as_json: bool, took: std::time::Duration) {
    if as_json {
        let rows: Vec<Value> = verdicts
            .iter()
            .map(|v| {
                json!({
                    "schedule": v.schedule.describe(def),
                    "status": v.status.map(|s| s.as_str()),
                    "changed": v.changed.iter().map(|(s, k)| format!("{s}:{k}")).collect::<Vec<_>>(),
                    "findings": v.findings,
                })
            })
            .collect();
        println!("{}", json!({"saga": def.name, "schedules": rows.len(), "verdicts": rows}));
        return;
    }
    let width = verdicts.iter().map(|v| v.schedule.describe(def).len()).max().unwrap_or(8).max(8);
    println!("{:<width$}  {:<12}  {:>7}  verdict", "schedule", "end", "changed");
    for v in verdicts {
        let status = v.status.map_or("(no end)", |s| s.as_str());
        let verdict = if v.findings.is_empty() { "ok".to_owned() } else { v.findings.join("; ") };
        println!("{:<width$}  {status:<12}  {:>7}  {verdict}", v.schedule.describe(def), v.changed.len());
    }
    let failing: Vec<&Verdict> = verdicts.iter().filter(|v| !v.findings.is_empty()).collect();
    println!(
        "\n{} schedules of `{}` in {:.1} s: {} with findings",
        verdicts.len(),
        def.name,
        took.as_secs_f64(),
        failing.len()
    );
    // The shortest schedule showing each finding (they are in order of length).
    let mut shown: Vec<&str> = Vec::new();
    for v in &failing {
        for finding in &v.findings {
            let kind = finding.split(':').next().unwrap_or(finding);
            if !shown.contains(&kind) {
                shown.push(kind);
                println!("  {finding}\n    shortest schedule: {}", v.schedule.describe(def));
            }
        }
    }
}

/// The records of a `--records` file: `{service: {key: value}}`.
fn records(file: &Path) -> anyhow::Result<Records> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let Value::Object(services) =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", file.display()))?
    else {
        anyhow::bail!("{} must be one JSON object: service → {{key → value}}", file.display());
    };
    let mut all = Records::new();
    for (service, records) in services {
        let Value::Object(records) = records else {
            anyhow::bail!("{}: `{service}` must be an object of records (key → value)", file.display());
        };
        for (key, value) in records {
            all.insert((service.clone(), key), value.to_string().into_bytes());
        }
    }
    Ok(all)
}
