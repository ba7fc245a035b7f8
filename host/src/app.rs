//! The host wired together, in one place: [`App::start`] opens the store, loads the
//! plugins and the saga definitions, resumes the unfinished sagas and starts the
//! background tasks (event dispatcher, retention, watchers). `wasaga serve`, the demo,
//! the benchmarks and the tests all start the host through it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::alert::Alerter;
use crate::clock::SystemClock;
use crate::cluster::Membership;
use crate::dispatch::Dispatcher;
use crate::http::{Access, AppState};
use crate::invoke::{InvokeOptions, Invoker};
use crate::lifecycle::PluginManager;
use crate::outbound::Outbound;
use crate::retention::Retention;
use crate::runtime::{CompiledCache, PluginSettings, Registry, Runtime, RuntimeOptions, Worker};
use crate::saga::SagaEngine;
use crate::store::postgres::{PgOptions, PgStore};
use crate::store::sqlite::{SqliteOptions, SqliteStore};
use crate::store::{Store, portable};

/// Where the host keeps everything.
#[derive(Clone)]
pub enum Storage {
    /// SQLite in `<data>/wasaga.db`: the embedded default, one process per directory.
    Sqlite { data: PathBuf, options: SqliteOptions },
    /// A PostgreSQL database (a connection string).
    Postgres { url: String, options: PgOptions },
}

impl std::fmt::Debug for Storage {
    /// A connection string may carry a password: only its hosts are shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Storage::Sqlite { data, options } => {
                f.debug_struct("Sqlite").field("data", data).field("options", options).finish()
            }
            Storage::Postgres { url, options } => {
                let hosts = url.parse::<tokio_postgres::Config>().map(|c| format!("{:?}", c.get_hosts()));
                f.debug_struct("Postgres")
                    .field("hosts", &hosts.unwrap_or_default())
                    .field("options", options)
                    .finish()
            }
        }
    }
}

impl Storage {
    /// Opens (and migrates) the store: the one place a backend is chosen.
    pub async fn open(&self) -> anyhow::Result<Arc<dyn Store>> {
        Ok(match self {
            Storage::Sqlite { data, options } => Arc::new(
                SqliteStore::open(data, *options)
                    .with_context(|| format!("opening the data directory {}", data.display()))?,
            ),
            Storage::Postgres { url, options } => {
                Arc::new(PgStore::connect(url, *options).await.context("opening the PostgreSQL database")?)
            }
        })
    }
}

impl std::fmt::Display for Storage {
    /// The store as messages name it (never the connection string: it may carry a
    /// password).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Storage::Sqlite { data, .. } => write!(f, "the SQLite store in {}", data.display()),
            Storage::Postgres { .. } => write!(f, "the PostgreSQL database"),
        }
    }
}

impl Storage {
    /// Writes the whole store to `out` in the format of `store/portable.rs`
    /// (`wasaga export`). A SQLite store must be at rest (no server using it).
    pub async fn export(&self, out: &mut dyn std::io::Write) -> anyhow::Result<portable::Counts> {
        match self {
            Storage::Sqlite { data, .. } => crate::store::sqlite::portable::export(data, out),
            Storage::Postgres { url, .. } => crate::store::postgres::portable::export(url, out).await,
        }
    }

    /// Loads a file written by [`Storage::export`] into the store, which must be empty:
    /// all of it, or nothing (`wasaga import`).
    pub async fn import(&self, input: &mut dyn std::io::BufRead) -> anyhow::Result<portable::Counts> {
        match self {
            Storage::Sqlite { data, .. } => crate::store::sqlite::portable::import(data, input),
            Storage::Postgres { url, .. } => crate::store::postgres::portable::import(url, input).await,
        }
    }
}

/// A store of its own in a temporary directory, gone when the store is dropped (SQLite
/// without fsync): for `wasaga saga verify`'s runs and for tests.
pub fn scratch_store() -> Result<Arc<dyn Store>, crate::store::StoreError> {
    Ok(Arc::new(SqliteStore::temporary()?))
}

/// An invoker over guest components built with this crate (`guests::path`), on a
/// scratch store, and their manifests in the order given: for the tests of the layers
/// above the runtime, which then need not see it.
#[cfg(test)]
pub(crate) async fn scratch_invoker(services: &[&str]) -> (Invoker, Vec<crate::service::Manifest>) {
    use crate::runtime::Limits;

    let runtime =
        Runtime::new(RuntimeOptions { max_concurrent_calls: 8, ..RuntimeOptions::default() }).unwrap();
    let registry = Registry::new(runtime.clone());
    let mut manifests = Vec::new();
    for service in services {
        let wasm = std::fs::read(crate::guests::path(service)).unwrap();
        let plugin = runtime.load(service, wasm, Limits::default()).await.unwrap();
        manifests.push(plugin.manifest().clone());
        registry.insert(plugin);
    }
    (
        Invoker::new(registry, scratch_store().unwrap(), InvokeOptions::default(), Outbound::default()),
        manifests,
    )
}

/// What the host is made of. [`AppConfig::new`] gives `wasaga serve`'s defaults, for
/// a data directory.
#[derive(Debug, Clone)]
pub struct AppConfig {
    pub storage: Storage,
    /// The plugins directory, loaded at start (none: start with no plugin).
    pub plugins: Option<PathBuf>,
    /// The saga definitions directory, checked against the plugins.
    pub sagas: Option<PathBuf>,
    /// Reload the directories' files when they change.
    pub watch: bool,
    /// Where compiled components are kept (none: each load compiles), and the most
    /// it keeps, in bytes.
    pub compile_cache: Option<PathBuf>,
    pub compile_cache_size: u64,
    /// With a compile cache: compile in this worker's processes (see `runtime::Worker`).
    pub compile_worker: Option<Worker>,
    pub runtime: RuntimeOptions,
    pub plugin_settings: PluginSettings,
    pub invoke: InvokeOptions,
    pub retention: Retention,
    /// Sagas driven at once; more wait their turn.
    pub max_running_sagas: usize,
    /// Where alerts are POSTed, besides the log and the metrics.
    pub alert_webhook: Option<String>,
    /// What plugins may call over HTTP (`wasaga serve --outbound`): nothing by default.
    pub outbound: Outbound,
    /// How long this host counts as alive after each heartbeat: on a shared store, the
    /// sagas of a host that stopped are taken over this long after its last beat.
    pub host_lease: Duration,
}

impl AppConfig {
    /// The defaults, with wasaga's data in SQLite in `data`.
    pub fn new(data: impl Into<PathBuf>) -> Self {
        Self::with_storage(Storage::Sqlite { data: data.into(), options: SqliteOptions::default() })
    }

    /// The defaults, with wasaga's data in `storage`.
    pub fn with_storage(storage: Storage) -> Self {
        AppConfig {
            storage,
            plugins: None,
            sagas: None,
            watch: false,
            compile_cache: None,
            compile_cache_size: crate::runtime::DEFAULT_CACHE_BUDGET,
            compile_worker: None,
            runtime: RuntimeOptions::default(),
            plugin_settings: PluginSettings::default(),
            invoke: InvokeOptions::default(),
            retention: Retention::default(),
            max_running_sagas: 256,
            alert_webhook: None,
            outbound: Outbound::default(),
            host_lease: crate::cluster::DEFAULT_LEASE,
        }
    }
}

/// The running host's parts. Cheap to clone.
#[derive(Debug, Clone)]
pub struct App {
    pub store: Arc<dyn Store>,
    pub invoker: Invoker,
    pub sagas: SagaEngine,
    pub plugins: PluginManager,
    pub events: Dispatcher,
    /// How many unfinished sagas were resumed at start.
    pub resumed: usize,
    /// The heartbeat's, the dispatcher's, retention's and the plugin follower's tasks,
    /// stopped by [`App::stop`].
    tasks: Arc<[tokio::task::AbortHandle]>,
}

impl App {
    /// Opens the store, loads what the config names, resumes the
    /// unfinished sagas, and starts the dispatcher, retention and (if asked) the
    /// watchers. The plugins directory's files that fail to load are refused and
    /// reported (`GET /v1/plugins`); an unreadable directory is an error.
    pub async fn start(config: AppConfig) -> anyhow::Result<App> {
        config.retention.check(config.invoke.retention).map_err(anyhow::Error::msg)?;
        let store = config.storage.open().await?;
        // The cache only saves time: one that cannot be used leaves every load compiling.
        let compiled = config.compile_cache.as_ref().and_then(|dir| {
            CompiledCache::open(dir, config.compile_cache_size)
                .inspect_err(|error| {
                    tracing::warn!(dir = %dir.display(), "the compile cache cannot be used ({error}); every component is compiled when loaded")
                })
                .ok()
                .map(|cache| match &config.compile_worker {
                    Some(worker) => cache.compile_in(worker.clone()),
                    None => cache,
                })
        });
        let registry = Registry::new(Runtime::with_cache(config.runtime, compiled)?);
        let invoker = Invoker::new(registry.clone(), store.clone(), config.invoke, config.outbound.clone());
        let alerter = match &config.alert_webhook {
            Some(url) => Alerter::with_webhook(url.clone()),
            None => Alerter::none(),
        };
        let membership = Membership::new(config.host_lease);
        let sagas = SagaEngine::new(
            invoker.clone(),
            store.clone(),
            Arc::new(SystemClock),
            config.max_running_sagas,
            alerter.clone(),
            membership.id().to_owned(),
        );
        let events = Dispatcher::new(invoker.clone(), store.clone(), alerter, membership.clone());
        let plugins = PluginManager::new(registry, sagas.clone(), config.plugin_settings, store.clone());
        // The directory's plugins, then the definitions they satisfy, then the plugin
        // changes kept in the store, checked against those definitions as a change made
        // while running is; then every definition against what serves at last (one that
        // needs what only an upload has loads now).
        if let Some(dir) = &config.plugins {
            plugins
                .load(dir)
                .await
                .with_context(|| format!("reading the plugins directory {}", dir.display()))?;
        }
        let read_sagas = |dir: &std::path::Path| format!("reading the sagas directory {}", dir.display());
        if let Some(dir) = &config.sagas {
            sagas.preload_definitions(dir).await.with_context(|| read_sagas(dir))?;
        }
        plugins.apply_kept().await.context("applying the plugin changes kept in the store")?;
        if let Some(dir) = &config.sagas {
            sagas.load_definitions(dir).await.with_context(|| read_sagas(dir))?;
        }
        if config.watch {
            if let Some(dir) = &config.plugins {
                plugins
                    .watch(dir)
                    .with_context(|| format!("watching the plugins directory {}", dir.display()))?;
            }
            if let Some(dir) = &config.sagas {
                plugins
                    .watch_sagas(dir)
                    .with_context(|| format!("watching the sagas directory {}", dir.display()))?;
            }
        }
        membership.beat(&*store, crate::clock::now_ms()).await.context("joining the hosts on the store")?;
        let resumed = sagas.take_over().await.context("resuming unfinished sagas")?;
        let tasks = [
            tokio::spawn(membership.clone().run(store.clone(), sagas.clone())).abort_handle(),
            tokio::spawn(config.retention.run(store.clone(), membership.clone())).abort_handle(),
            events.spawn().abort_handle(),
            plugins.follow().abort_handle(),
        ];
        Ok(App { store, invoker, sagas, plugins, events, resumed, tasks: Arc::new(tasks) })
    }

    /// The HTTP API's state, with `access` deciding who may do what.
    pub fn state(&self, access: Access) -> AppState {
        AppState {
            store: self.store.clone(),
            invoker: self.invoker.clone(),
            sagas: self.sagas.clone(),
            plugins: self.plugins.clone(),
            events: self.events.clone(),
            access,
        }
    }

    /// Stops the heartbeat, the dispatcher, retention and the plugin follower (a
    /// benchmark that starts one app per run stops the last one first). Sagas being
    /// driven finish their current step.
    pub fn stop(&self) {
        for task in self.tasks.iter() {
            task.abort();
        }
    }

    /// The plugin registry (what serves now).
    pub fn registry(&self) -> &Registry {
        self.invoker.registry()
    }
}
