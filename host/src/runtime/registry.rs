//! The registry: which plugin version serves each service, the versions it replaced,
//! and which files were refused and why. A map, kept by the plugin lifecycle
//! (`lifecycle.rs`, which reads the files); calls only look versions up.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use super::{Plugin, PluginDigest, Runtime};
use crate::store::Subscriber;

/// A plugin file or upload that could not be loaded, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Refusal {
    /// The file, or `upload:<service>`.
    #[schema(value_type = String)]
    pub file: PathBuf,
    pub error: String,
    /// Unix ms.
    pub at: i64,
}

/// A version that served before the current one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PastVersion {
    pub digest: PluginDigest,
    pub loaded_at: SystemTime,
    pub replaced_at: SystemTime,
}

/// How many replaced versions are remembered per service.
const HISTORY: usize = 10;

/// The plugins that serve, by service name. Cheap to clone; a swap is atomic per
/// service, and a call holds its own `Arc<Plugin>`, so it finishes on the version it
/// started with.
#[derive(Debug, Clone)]
pub struct Registry {
    runtime: Runtime,
    inner: Arc<RwLock<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    services: BTreeMap<String, Arc<Plugin>>,
    history: BTreeMap<String, Vec<PastVersion>>,
    /// The latest refusal of each file or upload (cleared when it loads, or the file
    /// goes).
    refused: BTreeMap<PathBuf, Refusal>,
    /// Which file serves which service, for removals seen by the watcher.
    files: BTreeMap<PathBuf, String>,
    reloads: u64,
}

impl Registry {
    pub fn new(runtime: Runtime) -> Self {
        Registry { runtime, inner: Arc::default() }
    }

    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// The version serving `service` now.
    pub fn get(&self, service: &str) -> Option<Arc<Plugin>> {
        self.read().services.get(service).cloned()
    }

    /// Every serving plugin, by service name.
    pub fn plugins(&self) -> Vec<Arc<Plugin>> {
        self.read().services.values().cloned().collect()
    }

    /// Who subscribes to `topic` among the services serving now, by service (each
    /// service subscribes to a topic once: `Manifest::validate`).
    pub fn subscribers(&self, topic: &str) -> Vec<Subscriber> {
        let inner = self.read();
        inner
            .services
            .values()
            .flat_map(|plugin| {
                let manifest = plugin.manifest();
                manifest.subscriptions.iter().filter(move |(t, _)| t == topic).map(move |(_, operation)| {
                    Subscriber { service: manifest.name.clone(), operation: operation.clone() }
                })
            })
            .collect()
    }

    /// The versions `service` had before, newest first.
    pub fn history(&self, service: &str) -> Vec<PastVersion> {
        self.read().history.get(service).cloned().unwrap_or_default()
    }

    /// Files and uploads refused, and why.
    pub fn refused(&self) -> Vec<Refusal> {
        self.read().refused.values().cloned().collect()
    }

    /// How many times a service's version was replaced since start-up.
    pub fn reloads(&self) -> u64 {
        self.read().reloads
    }

    /// Every file (or upload) that serves a service, with the service.
    pub fn sources(&self) -> Vec<(PathBuf, String)> {
        self.read().files.iter().map(|(f, s)| (f.clone(), s.clone())).collect()
    }

    /// The file (or upload) that serves `service`.
    pub fn file_of(&self, service: &str) -> Option<PathBuf> {
        self.read().files.iter().find(|(_, s)| *s == service).map(|(f, _)| f.clone())
    }

    /// Forgets the refusal of `source` (it loaded, or is gone).
    pub fn clear_refusal(&self, source: &Path) {
        self.write().refused.remove(source);
    }

    /// The service that `file` serves, if it loaded.
    pub fn service_of(&self, file: &Path) -> Option<String> {
        self.read().files.get(file).cloned()
    }

    /// Makes `plugin` serve its service; returns the version it replaces.
    pub fn insert(&self, plugin: Plugin) -> Option<Arc<Plugin>> {
        self.swap(plugin, None)
    }

    /// Like [`Registry::insert`], remembering that `source` (a file or `upload:<name>`)
    /// now serves the service and clearing its refusal.
    pub fn swap(&self, plugin: Plugin, source: Option<&Path>) -> Option<Arc<Plugin>> {
        let service = plugin.service().to_owned();
        let mut inner = self.write();
        if let Some(source) = source {
            inner.refused.remove(source);
            inner.files.retain(|_, s| *s != service);
            inner.files.insert(source.to_owned(), service.clone());
        }
        let previous = inner.services.insert(service.clone(), Arc::new(plugin));
        if let Some(previous) = &previous {
            inner.reloads += 1;
            crate::metrics::metrics().reloads.inc();
            let history = inner.history.entry(service).or_default();
            history.insert(
                0,
                PastVersion {
                    digest: previous.digest(),
                    loaded_at: previous.loaded_at(),
                    replaced_at: SystemTime::now(),
                },
            );
            history.truncate(HISTORY);
        }
        previous
    }

    /// Stops serving `service`; returns the version that served it.
    pub fn remove(&self, service: &str) -> Option<Arc<Plugin>> {
        let mut inner = self.write();
        inner.files.retain(|_, s| s != service);
        inner.services.remove(service)
    }

    /// Records that `source` was refused (the version serving, if any, stays).
    pub fn refuse(&self, source: &Path, error: String) {
        tracing::error!(file = %source.display(), "plugin refused: {error}");
        crate::metrics::metrics().refused.inc();
        let refusal = Refusal { file: source.to_owned(), error, at: crate::clock::now_ms() };
        self.write().refused.insert(source.to_owned(), refusal);
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().expect("registry lock poisoned")
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().expect("registry lock poisoned")
    }
}
