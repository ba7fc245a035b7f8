//! One loaded version of a service: compiled, validated against the
//! `wasaga:plugin/plugin` world, described, and pre-linked so that each call only
//! instantiates.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use wasmtime::component::Component;
use wasmtime::{Store, UpdateDeadline};

use super::Runtime;
use super::bindings;
use super::cache::{self, Origin};
use super::sandbox::{CallState, MemoryLimitExceeded};
use super::{Limits, PluginSettings};
use crate::outbound::Destination;
use crate::service::{Failure, Invocation, Manifest, PluginDigest};
use crate::store::{ChangeSet, Transaction};

/// The version of the WIT package `wasaga:plugin` this host serves (from `wit/`).
pub const WIT_VERSION: &str = env!("WASAGA_WIT_VERSION");
/// The name of the export every plugin must have.
const SERVICE_EXPORT: &str = concat!("wasaga:plugin/service@", env!("WASAGA_WIT_VERSION"));
/// The export of plugins built against earlier versions of the contract, which this
/// host no longer serves (see docs/architecture.md, "The contract's versions").
const RETIRED_EXPORTS: &[&str] = &["wasaga:plugin/service@0.1.0", "wasaga:plugin/service@0.2.0"];

/// Why a file cannot serve as a plugin. Each message says what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("not a WebAssembly file (it does not start with the `\\0asm` magic bytes)")]
    NotWasm,
    #[error(
        "a core WebAssembly module, not a component: build the plugin for the \
         wasm32-wasip2 target (or run `wasm-tools component new` on it)"
    )]
    CoreModule,
    #[error("not a valid WebAssembly component: {0}")]
    Invalid(String),
    #[error("not a plugin of the wasaga:plugin/plugin world: {0}")]
    WrongWorld(String),
    #[error("`describe` failed: {0}")]
    Describe(CallError),
    #[error("the manifest is invalid: {0}")]
    Manifest(String),
    #[error("memory limit of {limit} bytes is over the runtime's maximum of {max} bytes")]
    LimitTooHigh { limit: u64, max: u64 },
}

/// Why a call did not produce an answer. None of these is a business outcome: nothing
/// of the call is kept, and the same request may be retried.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("service `{service}` has no operation `{operation}`")]
    UnknownOperation { service: String, operation: String },
    #[error("plugin `{service}` trapped: {message}")]
    Trap { service: String, message: String },
    #[error("plugin `{service}` ran past its deadline of {}ms", .limit.as_millis())]
    Deadline { service: String, limit: Duration },
    #[error("plugin `{service}` went over its memory limit of {limit} bytes")]
    MemoryLimit { service: String, limit: u64 },
    /// The plugin asked more of the store than one call may (records read, bytes
    /// written, events, an event's form) where its import has no error to return.
    #[error("plugin `{service}` went past what one call may do: {message}")]
    OverLimit { service: String, message: String },
    #[error("plugin `{service}` could not start: {message}")]
    Busy { service: String, message: String },
    #[error("the store failed while plugin `{service}` ran: {message}")]
    StoreUnavailable { service: String, message: String },
}

/// What a completed call returned, and the changes to commit if it succeeded.
#[derive(Debug)]
pub struct Outcome {
    pub result: Result<Vec<u8>, Failure>,
    /// The call's reads, writes and events. Only an `Ok` result may commit them.
    pub changes: ChangeSet,
}

/// One loaded plugin version. Calls share it through an `Arc`.
pub struct Plugin {
    service: Arc<str>,
    digest: PluginDigest,
    size: usize,
    loaded_at: SystemTime,
    manifest: Manifest,
    /// The manifest's destinations, parsed (checked by `Manifest::validate`).
    destinations: Arc<[Destination]>,
    limits: Limits,
    pre: bindings::PluginPre<CallState>,
    runtime: Runtime,
}

impl fmt::Debug for Plugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Plugin")
            .field("service", &self.service)
            .field("digest", &self.digest)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Runtime {
    /// Loads the plugin in `file`, with the limits that apply to it (the defaults, or
    /// its `<name>.toml`).
    pub async fn load_file(&self, file: &Path, settings: &PluginSettings) -> anyhow::Result<Plugin> {
        let limits = settings.limits_for(file)?;
        let wasm = tokio::fs::read(file).await?;
        let label = file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        Ok(self.load(&label, wasm, limits).await?)
    }

    /// Compiles (or finds in the cache of compiled components), validates and describes
    /// a plugin. Compilation takes tens of milliseconds to seconds of CPU, so it runs on
    /// the blocking pool, off the request path.
    /// `label` names the plugin in messages until its manifest names it (a file name).
    pub async fn load(&self, label: &str, wasm: Vec<u8>, limits: Limits) -> Result<Plugin, LoadError> {
        check_header(&wasm)?;
        let max = self.options().max_memory_bytes;
        if limits.memory_bytes > max {
            return Err(LoadError::LimitTooHigh { limit: limits.memory_bytes, max });
        }
        let digest = PluginDigest::of(&wasm);
        let size = wasm.len();
        let (engine, cache) = (self.inner.engine.clone(), self.inner.cache.clone());
        let (component, origin) = tokio::task::spawn_blocking(move || {
            cache::load_or_compile(&engine, cache.as_ref(), &digest, &wasm)
        })
        .await
        .map_err(|failed| LoadError::Invalid(format!("its compilation failed: {failed}")))?
        .map_err(|e| LoadError::Invalid(format!("{e:#}")))?;
        let from = match origin {
            Origin::Compiled => "compilation",
            Origin::Cached => "cache",
        };
        crate::metrics::metrics().plugin_loads.get_or_create(&vec![("from", from.to_owned())]).inc();
        let pre = self.prelink(&component)?;
        let mut plugin = Plugin {
            service: Arc::from(label),
            digest,
            size,
            loaded_at: SystemTime::now(),
            manifest: Manifest {
                name: String::new(),
                operations: vec![],
                subscriptions: vec![],
                destinations: vec![],
            },
            destinations: Arc::from([]),
            limits,
            pre,
            runtime: self.clone(),
        };
        let manifest = plugin.describe().await.map_err(LoadError::Describe)?;
        manifest.validate().map_err(LoadError::Manifest)?;
        plugin.destinations = manifest.parsed_destinations().map_err(LoadError::Manifest)?.into();
        plugin.service = Arc::from(manifest.name.as_str());
        plugin.manifest = manifest;
        Ok(plugin)
    }

    /// Pre-links a component against the host's imports and checks its exports.
    fn prelink(&self, component: &Component) -> Result<bindings::PluginPre<CallState>, LoadError> {
        let engine = &self.inner.engine;
        let ty = component.component_type();
        if ty.get_export(engine, SERVICE_EXPORT).is_none() {
            if let Some(retired) = RETIRED_EXPORTS.iter().find(|e| ty.get_export(engine, e).is_some()) {
                let version = retired.rsplit('@').next().unwrap_or_default();
                return Err(LoadError::WrongWorld(format!(
                    "it was built against wasaga:plugin@{version}, which this wasaga no longer serves; \
                     rebuild it against `wit/` of this version (wasaga:plugin@{WIT_VERSION}; see \
                     docs/architecture.md, \"The contract's versions\", for what changed)"
                )));
            }
            let exports: Vec<&str> = ty.exports(engine).map(|(name, _)| name).collect();
            return Err(LoadError::WrongWorld(format!(
                "it does not export `{SERVICE_EXPORT}` (it exports: {})",
                if exports.is_empty() { "nothing".into() } else { exports.join(", ") }
            )));
        }
        let instance_pre =
            self.inner.linker.instantiate_pre(component).map_err(|e| unprovided_import(&format!("{e:#}")))?;
        bindings::PluginPre::new(instance_pre).map_err(|e| LoadError::WrongWorld(format!("{e:#}")))
    }
}

/// A component that imports what the host does not link: the import named first.
/// (a component built for a world of its own, beside wasaga's: `plugins/js/needy`.)
fn unprovided_import(linker_error: &str) -> LoadError {
    let named = ["imports instance `", "imports function `", "imports resource `"]
        .iter()
        .find_map(|prefix| linker_error.split_once(prefix)?.1.split_once('`').map(|(name, _)| name));
    match named {
        Some(name) => LoadError::WrongWorld(format!(
            "it imports `{name}`, which wasaga does not provide (a plugin gets the wasaga:plugin \
             imports, wasi:http's outgoing-handler, and WASI granting nothing: no sockets, files \
             or environment); build it without what needs it ({linker_error})"
        )),
        None => LoadError::WrongWorld(linker_error.to_owned()),
    }
}

fn check_header(wasm: &[u8]) -> Result<(), LoadError> {
    match wasm.get(..8) {
        Some([0, b'a', b's', b'm', 1, 0, 0, 0]) => Err(LoadError::CoreModule),
        Some([0, b'a', b's', b'm', ..]) => Ok(()),
        _ => Err(LoadError::NotWasm),
    }
}

impl Plugin {
    /// The service this plugin serves (from its manifest).
    pub fn service(&self) -> &str {
        &self.service
    }

    pub fn digest(&self) -> PluginDigest {
        self.digest
    }

    /// Size of the wasm file in bytes.
    pub fn size(&self) -> usize {
        self.size
    }

    pub fn loaded_at(&self) -> SystemTime {
        self.loaded_at
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The HTTP destinations its manifest declares.
    pub fn destinations(&self) -> Arc<[Destination]> {
        self.destinations.clone()
    }

    /// Runs one operation in a fresh instance, inside the plugin's limits. The
    /// transaction gives the plugin its records, `outbound` its HTTP requests (none
    /// without it); the returned [`Outcome`] carries what it wants committed. The
    /// caller commits, or not.
    pub async fn invoke(
        &self,
        call: Invocation,
        tx: Transaction,
        outbound: Option<crate::outbound::Call>,
    ) -> Result<Outcome, CallError> {
        if self.manifest.operation(&call.operation).is_none() {
            return Err(CallError::UnknownOperation {
                service: self.service.to_string(),
                operation: call.operation,
            });
        }
        let state =
            CallState::new(self.service.clone(), call.operation.clone(), &self.limits, Some(tx), outbound);
        let (result, mut store) = self
            .run(state, async |instance, store| {
                instance.wasaga_plugin_service().call_handle(store, &call.into()).await
            })
            .await?;
        // A run that did not make the requests an earlier run made is not a run of the
        // same invocation: its outcome cannot stand, whatever the plugin made of it.
        if let Some(why) = store.data().diverged() {
            return Err(CallError::Trap { service: self.service.to_string(), message: why });
        }
        let tx = store.data_mut().tx.take().expect("the transaction stays in the store");
        Ok(Outcome { result: result.map_err(Failure::from), changes: tx.into_changes() })
    }

    async fn describe(&self) -> Result<Manifest, CallError> {
        let state = CallState::new(self.service.clone(), "describe".into(), &self.limits, None, None);
        let (manifest, _) = self
            .run(state, async |instance, store| instance.wasaga_plugin_service().call_describe(store).await)
            .await?;
        Ok(manifest.into())
    }

    /// Instantiates the plugin in a fresh store and runs `f` on it, under the deadline
    /// and memory cap. Returns the store too, for what the call left in it.
    async fn run<R>(
        &self,
        state: CallState,
        f: impl AsyncFnOnce(&bindings::Plugin, &mut Store<CallState>) -> wasmtime::Result<R>,
    ) -> Result<(R, Store<CallState>), CallError> {
        let limit = self.limits.deadline;
        let started = Instant::now();
        let mut store = Store::new(&self.runtime.inner.engine, state);
        store.limiter(|state| &mut state.limiter);
        // The epoch callback fires once per tick while wasm runs: it ends the call at
        // the deadline and otherwise yields, so a plugin that never returns cannot hold
        // a worker thread.
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            if started.elapsed() >= limit {
                Err(DeadlineExceeded.into())
            } else {
                // tokio's yield_now lets the scheduler poll its timers and sockets
                // before this task runs again; a plain wake-up would starve them on a
                // thread that only runs spinning plugins.
                Ok(UpdateDeadline::YieldCustom(1, Box::pin(tokio::task::yield_now())))
            }
        });
        // The timeout is the backstop for time spent outside wasm (a plugin blocked in
        // a WASI wait, say), where no epoch check runs.
        let outcome = tokio::time::timeout(limit + super::EPOCH_TICK * 2, async {
            let instance = self.pre.instantiate_async(&mut store).await?;
            f(&instance, &mut store).await
        })
        .await;
        let result = match outcome {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(self.classify(error, &store)),
            Err(_elapsed) => Err(CallError::Deadline { service: self.service.to_string(), limit }),
        };
        store.data().flush_output();
        result.map(|value| (value, store))
    }

    /// Names what went wrong in a failed call.
    fn classify(&self, error: wasmtime::Error, store: &Store<CallState>) -> CallError {
        let service = self.service.to_string();
        if error.downcast_ref::<DeadlineExceeded>().is_some() {
            return CallError::Deadline { service, limit: self.limits.deadline };
        }
        if error.downcast_ref::<MemoryLimitExceeded>().is_some() || store.data().limiter.exceeded {
            return CallError::MemoryLimit { service, limit: self.limits.memory_bytes };
        }
        match error.downcast_ref::<crate::store::StoreError>() {
            Some(crate::store::StoreError::Invalid(message)) => {
                return CallError::OverLimit { service, message: message.clone() };
            }
            Some(store) => return CallError::StoreUnavailable { service, message: store.to_string() },
            None => {}
        }
        let pool_exhausted = error.chain().any(|cause| {
            let text = cause.to_string();
            text.contains("maximum concurrent") || text.contains("limit reached")
        });
        if pool_exhausted {
            return CallError::Busy { service, message: format!("{error}") };
        }
        // A guest panic aborts with a bare `unreachable` trap; what it printed to stderr
        // (the panic message) is what a person needs, so it goes into the error.
        let cause = match error.downcast_ref::<wasmtime::Trap>() {
            Some(trap) => trap.to_string(),
            None => format!("{error}"),
        };
        let stderr = store.data().stderr.tail(2048);
        let message = if stderr.is_empty() { cause } else { format!("{cause}; stderr: {stderr}") };
        CallError::Trap { service, message }
    }
}

/// Raised from the epoch callback when a call's time is up.
#[derive(Debug, thiserror::Error)]
#[error("deadline exceeded")]
struct DeadlineExceeded;
