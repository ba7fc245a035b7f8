//! The registry: which plugin version serves each service, and which files were
//! refused and why.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use super::{Limits, LoadError, Plugin, Runtime};
use crate::config::PluginSettings;

/// A plugin file that could not be loaded, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Refusal {
    pub file: PathBuf,
    pub error: String,
}

/// The plugins that serve, by service name. Cheap to clone; swaps are atomic per
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
    refused: Vec<Refusal>,
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

    /// Files refused by the last directory load.
    pub fn refused(&self) -> Vec<Refusal> {
        self.read().refused.clone()
    }

    /// Makes `plugin` serve its service; returns the version it replaces.
    pub fn insert(&self, plugin: Plugin) -> Option<Arc<Plugin>> {
        let service = plugin.service().to_owned();
        self.inner.write().expect("registry lock poisoned").services.insert(service, Arc::new(plugin))
    }

    /// Loads every `*.wasm` in `dir` (in name order). A file that fails is recorded in
    /// [`Registry::refused`] and logged; the others still load. The service is the one
    /// the manifest names; a second file for the same service is refused.
    pub async fn load_dir(&self, dir: &Path, settings: &PluginSettings) -> std::io::Result<()> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| path.extension().is_some_and(|ext| ext == "wasm"))
            .collect();
        files.sort();
        let mut refused = Vec::new();
        let mut loaded: BTreeMap<String, PathBuf> = BTreeMap::new();
        for file in files {
            match self.load_file(&file, settings).await {
                Ok(plugin) => {
                    if let Some(first) = loaded.get(plugin.service()) {
                        let error = format!(
                            "service `{}` is already served by {}",
                            plugin.service(),
                            first.display()
                        );
                        tracing::error!(file = %file.display(), "plugin refused: {error}");
                        refused.push(Refusal { file, error });
                        continue;
                    }
                    tracing::info!(
                        service = plugin.service(),
                        digest = %plugin.digest(),
                        file = %file.display(),
                        "plugin loaded"
                    );
                    loaded.insert(plugin.service().to_owned(), file);
                    self.insert(plugin);
                }
                Err(error) => {
                    let error = format!("{error:#}");
                    tracing::error!(file = %file.display(), "plugin refused: {error}");
                    refused.push(Refusal { file, error });
                }
            }
        }
        self.inner.write().expect("registry lock poisoned").refused = refused;
        Ok(())
    }

    /// Loads one file with the limits that apply to it.
    pub async fn load_file(&self, file: &Path, settings: &PluginSettings) -> anyhow::Result<Plugin> {
        let limits: Limits = settings.limits_for(file)?;
        let wasm = tokio::fs::read(file).await?;
        let label = file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let plugin =
            self.runtime.load(&label, wasm, limits).await.map_err(|e: LoadError| anyhow::Error::new(e))?;
        Ok(plugin)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().expect("registry lock poisoned")
    }
}
