//! The command line: one file per command, `///` comments double as `--help`.

mod bench;
mod choices;
mod demo;
mod events;
mod new;
mod plugin;
mod plugin_run;
mod print;
mod provider;
mod saga;
mod saga_verify;
mod serve;
mod store;
mod tokens;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{parse_bytes, parse_duration};
use crate::runtime::{
    COMPILE_REFUSED, CompileError, CompiledCache, DEFAULT_CACHE_BUDGET, Limits, PluginSettings, Runtime,
    RuntimeOptions, Worker,
};
use choices::Allocator;

/// `wasaga --version`: the version, the commit it was built from, and the contract it
/// serves to plugins.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("WASAGA_COMMIT"),
    "; serves plugins of wasaga:plugin@",
    env!("WASAGA_WIT_VERSION"),
    ")"
);

/// wasaga runs business services written as WebAssembly components, and gives each
/// one versioned storage, exactly-once invocations and sagas with compensations.
///
/// Try it with `wasaga demo` (an online store with a dashboard); start a service of
/// your own with `wasaga new NAME --lang rust|js|python`; check and try a plugin file
/// with `wasaga plugin check` and `wasaga plugin run`; serve a directory of them with
/// `wasaga serve`.
#[derive(Debug, Parser)]
#[command(name = "wasaga", version = VERSION, propagate_version = true, max_term_width = 100)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,

    /// Log filter, e.g. `info`, `debug`, `wasaga=debug,wasaga::plugin=warn`.
    #[arg(long, global = true, env = "WASAGA_LOG", default_value = "info", help_heading = "Global options")]
    log: String,

    /// Log lines as `text` (for people; coloured on a terminal) or `json` (one object
    /// per line, for machines).
    #[arg(
        long,
        global = true,
        env = "WASAGA_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Text,
        help_heading = "Global options"
    )]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    Demo(demo::DemoArgs),
    Serve(Box<serve::ServeArgs>),
    New(new::NewArgs),
    /// Work with plugins: check a file or run one operation of it; push, list or remove
    /// them on a running server.
    #[command(subcommand)]
    Plugin(plugin::PluginCommand),
    /// Start, show and list sagas on a running server; retry, compensate or resolve a
    /// stuck one.
    #[command(subcommand)]
    Saga(saga::SagaCommand),
    /// A flow's chain of events, the dead letters, and redelivering one, on a running
    /// server.
    #[command(subcommand)]
    Events(events::EventsCommand),
    Export(store::ExportArgs),
    Import(store::ImportArgs),
    /// Measure wasaga on this machine (reports figures; see docs/benchmarks.md).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    Provider(provider::ProviderArgs),
    #[command(hide = true)]
    CompileWorker(CompileWorkerArgs),
}

/// (A server's own) Compile the component on stdin into FILE, for its compile cache,
/// in a process that takes the compilation's memory with it when it exits. Exits 3
/// when the component does not compile, saying why.
#[derive(Debug, Args)]
struct CompileWorkerArgs {
    /// Where to write the compiled component.
    file: PathBuf,

    #[command(flatten)]
    runtime: RuntimeArgs,
}

fn compile_worker(args: CompileWorkerArgs) -> anyhow::Result<std::process::ExitCode> {
    use std::io::Read;
    let mut wasm = Vec::new();
    std::io::stdin().read_to_end(&mut wasm)?;
    let runtime = Runtime::new(args.runtime.options())?;
    match runtime.compile_into(&wasm, &args.file) {
        Ok(()) => Ok(std::process::ExitCode::SUCCESS),
        Err(CompileError::Refused(why)) => {
            eprintln!("{why}");
            Ok(std::process::ExitCode::from(COMPILE_REFUSED))
        }
        Err(error @ CompileError::Io(_)) => Err(error.into()),
    }
}

impl Cli {
    /// Runs the command. Errors carry their causes; `main` prints the chain.
    pub fn run(self) -> anyhow::Result<std::process::ExitCode> {
        init_logging(&self.log, self.log_format)?;
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
        runtime.block_on(async move {
            match self.command {
                Command::Demo(args) => demo::run(args).await,
                Command::Serve(args) => serve::run(*args).await,
                Command::New(args) => new::run(args),
                Command::Plugin(command) => plugin::run(command).await,
                Command::Bench(command) => bench::run(command).await,
                Command::Provider(args) => provider::run(args).await,
                Command::Saga(command) => saga::run(command).await,
                Command::Events(command) => events::run(command).await,
                Command::Export(args) => store::export(args).await,
                Command::Import(args) => store::import(args).await,
                Command::CompileWorker(args) => compile_worker(args),
            }
        })
    }
}

/// Prints a line to stdout for whoever reads it. A reader that went away (`| head -1`)
/// must not bring the server down, so write errors are ignored.
fn say(line: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}").and_then(|()| stdout.flush());
}

fn init_logging(filter: &str, format: LogFormat) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .map_err(|e| anyhow::anyhow!("invalid --log filter `{filter}`: {e}"))?;
    // Colours only for a person at a terminal: a file or a pipe gets plain text.
    use std::io::IsTerminal;
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().with_current_span(true).init(),
    }
    Ok(())
}

/// Limits and engine settings shared by every command that runs plugins.
#[derive(Debug, Args)]
#[command(next_help_heading = "Plugin limits")]
struct RuntimeArgs {
    /// Wall-clock time a plugin call may take before it is stopped (e.g. 500ms, 5s).
    /// A plugin's `<name>.toml` beside its `.wasm` may set its own `deadline`.
    #[arg(long, env = "WASAGA_DEADLINE", default_value = "5s", value_parser = parse_duration)]
    deadline: std::time::Duration,

    /// Linear memory one plugin instance may use (e.g. 64MiB). A plugin's
    /// `<name>.toml` may set its own `memory`.
    #[arg(long, env = "WASAGA_MEMORY_LIMIT", default_value = "64MiB", value_parser = parse_bytes)]
    memory_limit: u64,

    /// How instances get memory: `pooling` reuses pre-reserved slots (fastest);
    /// `on-demand` maps fresh memory per call.
    #[arg(long, env = "WASAGA_ALLOCATOR", value_enum, default_value_t = Allocator::Pooling)]
    allocator: Allocator,

    /// How many plugin calls may run at once (the size of the instance pool).
    #[arg(long, env = "WASAGA_MAX_CONCURRENT_CALLS", default_value_t = 256)]
    max_concurrent_calls: u32,
}

impl RuntimeArgs {
    fn options(&self) -> RuntimeOptions {
        RuntimeOptions {
            allocator: self.allocator.into(),
            max_concurrent_calls: self.max_concurrent_calls,
            ..RuntimeOptions::default()
        }
    }

    fn settings(&self) -> PluginSettings {
        PluginSettings { defaults: Limits { deadline: self.deadline, memory_bytes: self.memory_limit } }
    }

    /// This program, run as `wasaga compile-worker` with these engine settings (an
    /// engine that compiles as this one does). None when the program cannot be found.
    fn compile_worker(&self) -> Option<Worker> {
        let program = std::env::current_exe().ok()?;
        let allocator = clap::ValueEnum::to_possible_value(&self.allocator)?.get_name().to_owned();
        let args = ["compile-worker", "--allocator", &allocator, "--max-concurrent-calls"]
            .into_iter()
            .map(Into::into)
            .chain([self.max_concurrent_calls.to_string().into()])
            .collect();
        Some(Worker { program, args })
    }

    /// Loads a plugin file, as `plugin check` and `plugin run` do (with the user's
    /// compile cache); a refused file is said on stderr, and gives None.
    async fn load_file(&self, file: &std::path::Path) -> anyhow::Result<Option<crate::runtime::Plugin>> {
        match self.offline_runtime()?.load_file(file, &self.settings()).await {
            Ok(plugin) => Ok(Some(plugin)),
            Err(error) => {
                eprintln!("{}: refused: {error:#}", file.display());
                Ok(None)
            }
        }
    }

    /// The runtime of the commands that load a plugin file on their own (`plugin
    /// check`, `plugin run`), with the user's compile cache: `WASAGA_COMPILE_CACHE`
    /// (`off`: none), else `wasaga/compiled` in `$XDG_CACHE_HOME` or `~/.cache`. An
    /// author's check and test runs of one build then compile it once (seconds for a
    /// JavaScript or Python component).
    fn offline_runtime(&self) -> anyhow::Result<Runtime> {
        let dir = match std::env::var_os("WASAGA_COMPILE_CACHE") {
            Some(dir) if dir == "off" => None,
            Some(dir) => Some(PathBuf::from(dir)),
            None => std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
                .map(|cache| cache.join("wasaga").join("compiled")),
        };
        // The cache only saves time: one that cannot be made leaves loads compiling.
        let cache = dir.and_then(|dir| CompiledCache::open(dir, DEFAULT_CACHE_BUDGET).ok());
        Runtime::with_cache(self.options(), cache)
    }
}
