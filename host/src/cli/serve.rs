//! `wasaga serve`: the server.

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use super::RuntimeArgs;
use super::choices::Synchronous;
use super::tokens::{ServerTokens, Tokens};
use crate::app::{App, AppConfig, Storage};
use crate::config::{parse_bytes, parse_duration};
use crate::http::{Access, AppState, Secret, ServerLimits, router};
use crate::invoke::InvokeOptions;
use crate::retention::Retention;
use crate::store::postgres::PgOptions;
use crate::store::sqlite::SqliteOptions;

/// Serve the plugins of a directory over HTTP.
///
/// Every `*.wasm` in the plugins directory is compiled, checked against the
/// wasaga:plugin world and described; a file that fails is reported (log and
/// `GET /v1/plugins`) and the others still serve. While serving, a changed, added or
/// removed file is reloaded without dropping a call, and so is an upload through the
/// admin API. Prints `listening on http://ADDR` on stdout once ready.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Directory of plugin components (`<name>.wasm`, optional `<name>.toml` limits).
    #[arg(long, help_heading = "Plugins and sagas", env = "WASAGA_PLUGINS")]
    plugins: PathBuf,

    /// Directory of saga definitions (`<name>.toml`), checked against the plugins.
    #[arg(long, help_heading = "Plugins and sagas", env = "WASAGA_SAGAS")]
    sagas: Option<PathBuf>,

    /// How many sagas are driven at once; more wait their turn.
    #[arg(long, help_heading = "Plugins and sagas", env = "WASAGA_MAX_RUNNING_SAGAS", default_value_t = 256)]
    max_running_sagas: usize,

    /// What plugins may call over HTTP: a TOML file granting each service its
    /// destinations (`[[services.<name>.destinations]]`: url, methods, addresses,
    /// timeout, max-response, connections, idempotency-header) and secrets
    /// (`[services.<name>.secrets.<secret>]`: env or file, destinations). Without it no
    /// plugin may make a request. A request must match a destination of the plugin's
    /// manifest too. See docs/outbound.md.
    #[arg(long, help_heading = "Plugins and sagas", env = "WASAGA_OUTBOUND")]
    outbound: Option<PathBuf>,

    /// Grants made by the caller in code (the demo's, for its card processor), used
    /// when --outbound is not given.
    #[arg(skip)]
    granted: Option<crate::outbound::Outbound>,

    /// POST alerts (a saga stuck, a step out of retries) as JSON to this URL, with
    /// retries. They always go to the log (ERROR) and to /metrics.
    #[arg(long, help_heading = "Alerts", env = "WASAGA_ALERT_WEBHOOK")]
    alert_webhook: Option<String>,

    /// Export OpenTelemetry traces over OTLP/HTTP (JSON) to this collector, e.g.
    /// http://localhost:4318 (spans go to its /v1/traces): a span per HTTP request,
    /// invocation, saga step and event delivery, a saga's and an event chain's in the
    /// trace of the request that started them. Without the flag, the standard
    /// variables: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT (a full URL), then
    /// OTEL_EXPORTER_OTLP_ENDPOINT (a base URL, like this flag); also read:
    /// OTEL_SERVICE_NAME, OTEL_EXPORTER_OTLP_HEADERS, OTEL_SDK_DISABLED. Off when none is
    /// set: no span is recorded.
    #[arg(long, help_heading = "Traces")]
    otlp_endpoint: Option<String>,

    /// Keep the kernel's transparent huge pages for this process. Off by default: the
    /// kernel folds the allocator's sparse 2 MiB ranges into whole huge pages some
    /// minutes into a run, and RSS steps up by 8–30 MiB over a live heap of a few MiB.
    /// With them a host at saturation spent ~8 % less CPU per saga
    /// (docs/benchmarks.md, "Runs for months").
    #[arg(
        long,
        help_heading = "Memory",
        env = "WASAGA_HUGE_PAGES",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    huge_pages: bool,

    /// Do not watch the plugins directory (by default a changed, added or removed
    /// `.wasm` is reloaded while serving).
    #[arg(long, help_heading = "Plugins and sagas")]
    no_watch: bool,

    /// Where compiled plugins are kept, so that a restart, or a hot swap back to a
    /// component compiled before, skips its compilation (seconds for a large one).
    /// Default: `compiled/` in --data (none without --data); `off` compiles every time.
    /// Its files run as native code in this process: keep it as private as --data.
    #[arg(long, help_heading = "Plugins and sagas", env = "WASAGA_COMPILE_CACHE")]
    compile_cache: Option<PathBuf>,

    /// The most the compile cache keeps; the files used least recently go first.
    #[arg(long, help_heading = "Plugins and sagas", env = "WASAGA_COMPILE_CACHE_SIZE", default_value = "1GiB", value_parser = parse_bytes)]
    compile_cache_size: u64,

    #[command(flatten)]
    tokens: ServerTokens,

    /// Directory for wasaga's data: the SQLite database `wasaga.db` (created if
    /// missing). One wasaga process at a time may use it. Not needed with --database.
    #[arg(long, help_heading = "Storage", env = "WASAGA_DATA", required_unless_present = "database")]
    data: Option<PathBuf>,

    /// Keep everything in PostgreSQL instead of SQLite: a connection string, e.g.
    /// `postgres://wasaga@db1,db2/wasaga?target_session_attrs=read-write` (with several
    /// hosts, the one that accepts writes is used, and a failover is followed). Pass a
    /// password through WASAGA_DATABASE, not on the command line. The schema is created
    /// or migrated at start. Several hosts may share one database (see
    /// docs/deployment.md).
    #[arg(long, help_heading = "Storage", env = "WASAGA_DATABASE", hide_env_values = true)]
    database: Option<String>,

    /// With --database: the most connections open for reads and plugin snapshots (a
    /// call waits for one beyond that); the writer has one more of its own. A few per
    /// core of the database server is plenty: each is a server process.
    #[arg(long, help_heading = "Storage", env = "WASAGA_DATABASE_CONNECTIONS", default_value_t = 16)]
    database_connections: usize,

    /// With --database: memory for the records invocations read (their reads that it
    /// answers do not go to the database; every read is checked again at the
    /// invocation's commit, so a record another host changed is read anew). 0 turns
    /// it off.
    #[arg(long, help_heading = "Storage", env = "WASAGA_DATABASE_CACHE", default_value = "64MiB", value_parser = parse_bytes)]
    database_cache: u64,

    /// With --database: how long a host counts as alive after each heartbeat (it beats
    /// every third of it). The sagas of a host that stopped (or paused) are taken over by
    /// the others this long after its last beat.
    #[arg(long, help_heading = "Storage", env = "WASAGA_HOST_LEASE", default_value = "5s", value_parser = parse_lease)]
    host_lease: std::time::Duration,

    /// When a commit counts as done: `full` waits for the disk (fsync) before
    /// answering; `normal` is faster, and a power loss may lose the last commits.
    #[arg(long, help_heading = "Storage", env = "WASAGA_SYNCHRONOUS", value_enum, default_value_t = Synchronous::Full)]
    synchronous: Synchronous,

    /// The SQLite WAL's size past which the writer checkpoints and starts it again (and
    /// the file is cut back to it), e.g. 64MiB. Commits wait while it does.
    #[arg(long, help_heading = "Storage", env = "WASAGA_WAL_LIMIT", default_value = "64MiB", value_parser = parse_bytes)]
    wal_limit: u64,

    /// The most invocations committed in one transaction (group commit); 1 commits
    /// each invocation on its own.
    #[arg(long, help_heading = "Storage", env = "WASAGA_MAX_BATCH", default_value_t = 256)]
    max_batch: usize,

    /// How long finished sagas (completed, compensated) are kept, from their last
    /// change (e.g. 7d). At least the idempotency retention: a saga outlives the key that
    /// started it. Running, compensating and stuck sagas are kept.
    #[arg(long, help_heading = "Storage", env = "WASAGA_SAGA_RETENTION", default_value = "7d", value_parser = parse_duration)]
    saga_retention: std::time::Duration,

    /// How long events whose deliveries are all made are kept, with their deliveries,
    /// from their publication (e.g. 7d). Pending and dead deliveries are kept.
    #[arg(long, help_heading = "Storage", env = "WASAGA_EVENT_RETENTION", default_value = "7d", value_parser = parse_duration)]
    event_retention: std::time::Duration,

    /// How long a deleted record's tombstone is kept (e.g. 7d). Forgotten, its version
    /// still counts: the key, created again, goes on above it.
    #[arg(long, help_heading = "Storage", env = "WASAGA_TOMBSTONE_RETENTION", default_value = "7d", value_parser = parse_duration)]
    tombstone_retention: std::time::Duration,

    /// How often retention looks for what to forget.
    #[arg(long, help_heading = "Storage", env = "WASAGA_PRUNE_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    prune_interval: std::time::Duration,

    /// How long the outcome of an idempotent request is kept and replayed for its key
    /// (e.g. 24h, 30m).
    #[arg(long, help_heading = "Storage", env = "WASAGA_IDEMPOTENCY_RETENTION", default_value = "24h", value_parser = parse_duration)]
    idempotency_retention: std::time::Duration,

    /// Address to listen on; port 0 picks a free port. On a loopback address only
    /// requests for localhost, 127.0.0.1 or [::1] are answered; on any other, set an
    /// API token unless every client that can reach it may call and read.
    #[arg(long, help_heading = "HTTP", env = "WASAGA_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,

    /// The most client connections open at once; more wait in the listen backlog until
    /// one closes. A client gets 10 s to send a request's head and 75 s for the whole
    /// request (its body included).
    #[arg(long, help_heading = "HTTP", env = "WASAGA_MAX_CONNECTIONS", default_value_t = 1024)]
    max_connections: usize,

    /// A host name clients use to reach this server (repeatable, or comma-separated in
    /// the variable). Without an API token a server answers only requests for
    /// localhost, loopback addresses and (off loopback) its IP address, since a web
    /// page can point any name it owns at it (DNS rebinding); name the others here.
    #[arg(long, help_heading = "HTTP", env = "WASAGA_ALLOW_HOSTS", value_delimiter = ',')]
    allow_host: Vec<String>,

    #[command(flatten)]
    runtime: RuntimeArgs,
}

pub async fn run(args: ServeArgs) -> anyhow::Result<std::process::ExitCode> {
    let tokens = args.tokens.resolve()?;
    run_with(args, tokens, |_, addr| super::say(&format!("listening on http://{addr}"))).await
}

impl ServeArgs {
    /// The server the demo runs: `serve`'s own defaults (and `WASAGA_*` settings), with
    /// the demo's directories, address and runtime settings.
    pub(super) fn demo(
        plugins: PathBuf,
        sagas: PathBuf,
        data: PathBuf,
        database: Option<String>,
        listen: SocketAddr,
        runtime: RuntimeArgs,
    ) -> anyhow::Result<Self> {
        #[derive(clap::Parser)]
        struct Serve {
            #[command(flatten)]
            args: ServeArgs,
        }
        let required: [&OsStr; 5] =
            ["demo".as_ref(), "--plugins".as_ref(), plugins.as_ref(), "--data".as_ref(), data.as_ref()];
        let mut args = <Serve as clap::Parser>::try_parse_from(required)?.args;
        args.sagas = Some(sagas);
        args.database = database;
        args.listen = listen;
        args.runtime = runtime;
        Ok(args)
    }

    /// What plugins may call, unless --outbound names a file.
    pub(super) fn granted(mut self, outbound: Option<crate::outbound::Outbound>) -> Self {
        self.granted = outbound;
        self
    }

    pub(super) fn alert_webhook(mut self, url: Option<String>) -> Self {
        self.alert_webhook = url;
        self
    }

    pub(super) fn otlp_endpoint(mut self, url: Option<String>) -> Self {
        if url.is_some() {
            self.otlp_endpoint = url;
        }
        self
    }

    /// The host these flags describe.
    fn app_config(&self) -> AppConfig {
        let storage = match (&self.database, &self.data) {
            (Some(url), _) => {
                let options = PgOptions {
                    max_batch: self.max_batch,
                    connections: self.database_connections,
                    cache_bytes: usize::try_from(self.database_cache).unwrap_or(usize::MAX),
                };
                Storage::Postgres { url: url.clone(), options }
            }
            (None, data) => Storage::Sqlite {
                data: data.clone().expect("clap requires --data without --database"),
                options: SqliteOptions {
                    synchronous: self.synchronous.into(),
                    max_batch: self.max_batch,
                    wal_limit: self.wal_limit,
                    ..SqliteOptions::default()
                },
            },
        };
        let compile_cache = match &self.compile_cache {
            Some(dir) if dir.as_os_str() == "off" => None,
            Some(dir) => Some(dir.clone()),
            None => self.data.as_ref().map(|data| data.join("compiled")),
        };
        AppConfig {
            plugins: Some(self.plugins.clone()),
            compile_cache,
            compile_cache_size: self.compile_cache_size,
            compile_worker: self.runtime.compile_worker(),
            sagas: self.sagas.clone(),
            watch: !self.no_watch,
            runtime: self.runtime.options(),
            plugin_settings: self.runtime.settings(),
            invoke: InvokeOptions { retention: self.idempotency_retention, ..InvokeOptions::default() },
            retention: Retention {
                sagas: self.saga_retention,
                events: self.event_retention,
                tombstones: self.tombstone_retention,
                every: self.prune_interval,
            },
            max_running_sagas: self.max_running_sagas,
            alert_webhook: self.alert_webhook.clone(),
            host_lease: self.host_lease,
            ..AppConfig::with_storage(storage)
        }
    }
}

/// Runs the server with `tokens`; `ready` is called once it listens (the demo seeds
/// and starts its traffic there).
pub(super) async fn run_with(
    mut args: ServeArgs,
    tokens: Tokens,
    ready: impl FnOnce(AppState, std::net::SocketAddr),
) -> anyhow::Result<std::process::ExitCode> {
    huge_pages(args.huge_pages);
    // The watcher names the files it reports by absolute paths: the directories are
    // made absolute too, so that a file read from the directory and the same file in
    // a change event are one file (a relative --plugins once made a `touch` of a
    // plugin's file look like new content).
    args.plugins = std::fs::canonicalize(&args.plugins)
        .with_context(|| format!("the plugins directory {}", args.plugins.display()))?;
    if let Some(dir) = &args.sagas {
        let dir =
            std::fs::canonicalize(dir).with_context(|| format!("the sagas directory {}", dir.display()))?;
        args.sagas = Some(dir);
    }
    let shutdown = shutdown_signal()?;
    let instance = uuid::Uuid::now_v7().to_string();
    if let Some(otlp) = crate::trace::OtlpConfig::from_env(args.otlp_endpoint.as_deref(), &instance)? {
        crate::trace::start(otlp);
    }
    let mut config = args.app_config();
    if let Some(file) = &args.outbound {
        config.outbound = crate::outbound::Outbound::new(crate::outbound::Grants::load(file)?);
    } else if let Some(granted) = &args.granted {
        config.outbound = granted.clone();
    }
    let app = App::start(config).await?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(
        %addr,
        plugins = app.registry().plugins().len(),
        refused = app.registry().refused().len(),
        resumed = app.resumed,
        storage = ?args.app_config().storage,
        "serving"
    );
    warn_if_exposed(addr, &tokens);
    let state = app.state(Access {
        admin_token: tokens.admin.as_deref().map(Secret::new),
        api_token: tokens.api.as_deref().map(Secret::new),
        loopback_only: addr.ip().is_loopback(),
        allowed_hosts: args.allow_host.clone(),
    });
    ready(state.clone(), addr);
    let limits = ServerLimits { max_connections: args.max_connections, ..ServerLimits::default() };
    crate::http::serve(listener, router(state), limits, shutdown).await;
    crate::trace::flush(std::time::Duration::from_secs(2)).await;
    tracing::info!("stopped");
    Ok(std::process::ExitCode::SUCCESS)
}

/// Says so, at start, when a server anyone on the network may reach leaves calls and
/// reads open, or has no operator.
fn warn_if_exposed(addr: SocketAddr, tokens: &Tokens) {
    if addr.ip().is_loopback() {
        return;
    }
    if tokens.api.is_none() {
        tracing::warn!(
            %addr,
            "listening on a non-loopback address without an API token: anyone who can reach it \
             may call public operations, start sagas and read every record; set WASAGA_API_TOKEN \
             (or --api-token-file) unless that is what you want. Meanwhile only requests for its \
             IP, localhost or a name given with --allow-host are answered (a web page can point any \
             other name at it)"
        );
    }
    if tokens.admin.is_none() {
        tracing::warn!(
            %addr,
            "no admin token: operator actions (record writes, retries, plugin uploads) are refused; \
             set WASAGA_ADMIN_TOKEN (or --admin-token-file) to allow them"
        );
    }
}

/// Resolves on Ctrl-C or SIGTERM. The handlers are installed here, before the server
/// says it is listening, so that a signal sent right after cannot kill it uncleanly.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = interrupt.recv() => {}
        }
    })
}

/// A host lease: long enough for a beat (a third of it) to reach the database in time.
fn parse_lease(text: &str) -> anyhow::Result<std::time::Duration> {
    let lease = parse_duration(text)?;
    if lease < std::time::Duration::from_millis(300) {
        anyhow::bail!("a host lease under 300ms would expire between beats on any real network");
    }
    Ok(lease)
}

/// Switches the kernel's transparent huge pages off for this process (and the compile
/// workers it starts, which inherit it), or on again for `--huge-pages` (a parent may
/// have switched them off). mimalloc asks for them on its arena, and the kernel's
/// khugepaged, crawling the 1 GiB arena at its default pace, reaches the pages in use
/// some eleven minutes into a run and folds each sparse 2 MiB of them into a whole huge
/// page: RSS stepped up by 8–30 MiB then, with the live heap at ~2 MiB.
fn huge_pages(keep: bool) {
    #[cfg(target_os = "linux")]
    if let Err(error) = rustix::thread::disable_transparent_huge_pages(!keep) {
        tracing::warn!(%error, "could not switch transparent huge pages {}", if keep { "on" } else { "off" });
    }
    #[cfg(not(target_os = "linux"))]
    let _ = keep;
}
