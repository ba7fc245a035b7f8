//! The engine's definitions: the directory loaded at start and each file reloaded as it
//! changes, checked against the loaded services; every version a saga still runs kept
//! in the store and found again by its digest.

use std::path::Path;
use std::sync::Arc;

use super::{DefinitionError, SagaDef, SagaEngine, SagaError};
use crate::store::{Commit, DefinitionRow};

impl SagaEngine {
    /// Loads every `*.toml` of `dir`, checked against the loaded services. Good
    /// definitions replace those of the same name; each bad one is returned (and
    /// logged) and refused. An I/O error, or the store failing to keep a definition,
    /// is an error.
    pub async fn load_definitions(&self, dir: &Path) -> anyhow::Result<Vec<DefinitionError>> {
        self.load_definitions_saying(dir, true).await
    }

    /// Loads the definitions of `dir` that the services serving now satisfy, saying
    /// nothing of the others: the definitions kept plugin changes are checked against
    /// at start, before [`SagaEngine::load_definitions`] loads them all against the
    /// versions that then serve (`app.rs`).
    pub async fn preload_definitions(&self, dir: &Path) -> anyhow::Result<()> {
        self.load_definitions_saying(dir, false).await.map(drop)
    }

    async fn load_definitions_saying(&self, dir: &Path, say: bool) -> anyhow::Result<Vec<DefinitionError>> {
        let mut files: Vec<_> = std::fs::read_dir(dir)?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
            .collect();
        files.sort();
        let mut refused = Vec::new();
        for file in files {
            let text = std::fs::read_to_string(&file)?;
            match self.parse(&file, &text) {
                Ok(def) => {
                    if say {
                        tracing::info!(saga = %def.name, file = %file.display(), steps = def.steps.len(), "saga definition loaded");
                    }
                    self.add_definition(def).await?;
                }
                Err(error) => {
                    if say {
                        tracing::error!("saga definition refused: {error}");
                    }
                    refused.push(error);
                }
            }
        }
        Ok(refused)
    }

    /// Applies a change of one definition file (the plugin lifecycle's watcher calls
    /// it): a removed file's definition is no longer offered; a changed or new one is
    /// checked against the services and offered, or refused with the old one staying.
    /// Unfinished sagas finish on the version they started with, whatever happens here.
    pub async fn reload_definition(&self, file: &Path) {
        if !file.exists() {
            let Some(def) = self.definitions().into_iter().find(|d| d.source == file) else { return };
            self.remove_definition(&def.name);
            tracing::info!(saga = %def.name, "saga definition removed; its unfinished sagas finish on their version");
            return;
        }
        let text = match std::fs::read_to_string(file) {
            Ok(text) => text,
            Err(error) => {
                return tracing::error!(file = %file.display(), "reading a saga definition: {error}");
            }
        };
        match self.parse(file, &text) {
            Ok(def) => {
                let name = def.name.clone();
                match self.add_definition(def).await {
                    Ok(()) => {
                        tracing::info!(saga = %name, file = %file.display(), "saga definition reloaded")
                    }
                    Err(error) => {
                        tracing::error!(saga = %name, "keeping the saga definition failed: {error}")
                    }
                }
            }
            Err(error) => {
                crate::metrics::metrics().refused.inc();
                tracing::error!("saga definition refused, the one loaded stays: {error}");
            }
        }
    }

    /// Parses a definition against the services loaded now.
    fn parse(&self, file: &Path, text: &str) -> Result<SagaDef, DefinitionError> {
        let plugins = self.inner.invoker.registry().plugins();
        let manifest = |service: &str| plugins.iter().find(|p| p.service() == service).map(|p| p.manifest());
        SagaDef::parse(file, text, manifest)
    }

    /// Makes `def` the definition new sagas of its name use. It is kept in the store
    /// first (by digest), so that every saga that starts with it finds it again after
    /// its file changes or the process restarts.
    pub async fn add_definition(&self, def: SagaDef) -> Result<(), SagaError> {
        let row = DefinitionRow {
            digest: def.digest.clone(),
            name: def.name.clone(),
            text: def.text.clone(),
            saved_at: self.inner.clock.now_ms(),
        };
        self.inner.invoker.commit(Commit { definitions: vec![row], ..Commit::default() }).await?;
        let def = Arc::new(def);
        let versions = &self.inner.versions;
        versions.write().expect("versions lock poisoned").insert(def.digest.clone(), def.clone());
        self.inner.definitions.write().expect("definitions lock poisoned").insert(def.name.clone(), def);
        Ok(())
    }

    /// Stops offering saga `name`. Its unfinished sagas finish on the version they
    /// started with.
    pub fn remove_definition(&self, name: &str) {
        self.inner.definitions.write().expect("definitions lock poisoned").remove(name);
    }

    /// The definitions that matter now: the ones new sagas use, and every version an
    /// unfinished saga uses (each once). A plugin change is checked against all of them.
    pub async fn definitions_in_use(&self) -> Result<Vec<Arc<SagaDef>>, SagaError> {
        let mut defs = self.definitions();
        for row in self.unfinished_rows().await? {
            if let Some(def) = self.decode(row).await?.def
                && !defs.iter().any(|d| d.digest == def.digest)
            {
                defs.push(def);
            }
        }
        Ok(defs)
    }

    /// The version `digest` of definition `name`: from memory, else from the store (after
    /// a restart, or for a version replaced since). States from before definitions had
    /// digests (empty) use the current one of the name.
    pub(super) async fn version(&self, name: &str, digest: &str) -> Result<Option<Arc<SagaDef>>, SagaError> {
        if digest.is_empty() {
            return Ok(self.definition(name));
        }
        if let Some(def) = self.inner.versions.read().expect("versions lock poisoned").get(digest) {
            return Ok(Some(def.clone()));
        }
        let Some(row) = self.inner.store.definition(digest).await? else { return Ok(None) };
        match SagaDef::parse_stored(&row.digest, &row.text) {
            Ok(def) if def.digest == digest => {
                let def = Arc::new(def);
                let mut versions = self.inner.versions.write().expect("versions lock poisoned");
                Ok(Some(versions.entry(digest.to_owned()).or_insert(def).clone()))
            }
            Ok(_) => {
                tracing::error!(digest, "a stored saga definition no longer has its digest");
                Ok(None)
            }
            Err(error) => {
                tracing::error!("a stored saga definition does not parse: {error}");
                Ok(None)
            }
        }
    }

    pub fn definition(&self, name: &str) -> Option<Arc<SagaDef>> {
        self.inner.definitions.read().expect("definitions lock poisoned").get(name).cloned()
    }

    pub fn definitions(&self) -> Vec<Arc<SagaDef>> {
        let mut defs: Vec<_> =
            self.inner.definitions.read().expect("definitions lock poisoned").values().cloned().collect();
        defs.sort_by(|a, b| a.name.cmp(&b.name));
        defs
    }
}
