//! The plugin lifecycle: loading at start-up, hot reload from the plugins directory,
//! uploads and removals through the admin API (kept in the store, and followed from
//! there by every other host on a shared store), and the checks that keep the saga
//! definitions working across all of them.
//!
//! A new version is compiled and validated off the request path and then swapped in
//! atomically (`Registry::swap`); calls in flight keep the `Arc<Plugin>` they started
//! with. A version that fails any check is refused, and the one serving stays.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::runtime::{Limits, LoadError, Plugin, PluginDigest, PluginSettings, Registry};
use crate::saga::SagaEngine;
use crate::service::Manifest;
use crate::store::{Commit, Store, StoreError, UploadChange, UploadRow, UploadStamp, Uploaded};
use crate::watch;

/// How often a host looks for plugin changes made through other hosts (a read of one
/// small row per kept change: no bytes unless something changed) while hints of them
/// may not arrive (`store/wakeups.rs`); while they do, a hint makes it look at once
/// and it polls only every [`FOLLOW_HINTED`].
pub const FOLLOW_EVERY: Duration = Duration::from_secs(2);
const FOLLOW_HINTED: Duration = Duration::from_secs(10);

/// Why a plugin change was refused. Nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("the file holds service `{found}`, not `{expected}`")]
    WrongService { expected: String, found: String },
    #[error("{0}")]
    BreaksSaga(String),
    #[error("no service `{0}` is loaded")]
    Unknown(String),
    #[error("service `{service}` is still needed by {users}")]
    InUse { service: String, users: String },
    #[error("{0}")]
    Io(String),
    #[error("keeping the change failed: {0}")]
    Store(StoreError),
}

/// Manages the plugin versions. Cheap to clone.
#[derive(Debug, Clone)]
pub struct PluginManager {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    registry: Registry,
    sagas: SagaEngine,
    settings: PluginSettings,
    /// Where uploads are kept, so that a restart serves the same versions.
    store: Arc<dyn Store>,
    /// One change at a time: an upload, a removal and a file reload that overlapped
    /// could otherwise undo each other (a slow compile swapping in after a newer
    /// upload, a removal deleting a fresh upload). It also guards `seen`.
    changing: tokio::sync::Mutex<Seen>,
}

#[derive(Debug, Default)]
struct Seen {
    /// What each file of the plugins directory held when it was last loaded: a change
    /// event for a file whose content and limits are the same changes nothing (a `cp`
    /// of the same bytes must not undo an upload).
    files: HashMap<PathBuf, FileState>,
    /// The store's change (upload or removal) for each service as this host last
    /// applied, made or refused it: [`PluginManager::follow`] applies what differs.
    applied: HashMap<String, UploadStamp>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct FileState {
    digest: PluginDigest,
    limits: Limits,
    service: String,
}

impl Seen {
    /// The digest of the directory's file for `service`, if it has one.
    fn digest_for(&self, service: &str) -> Option<PluginDigest> {
        self.file_for(service).map(|(_, f)| f.digest)
    }

    fn file_for(&self, service: &str) -> Option<(&PathBuf, &FileState)> {
        self.files.iter().find(|(_, f)| f.service == service)
    }
}

/// The name an upload of `service` serves under in the registry (and its refusals).
fn upload_source(service: &str) -> PathBuf {
    PathBuf::from(format!("upload:{service}"))
}

impl PluginManager {
    /// Uploads are kept in `store`.
    pub fn new(
        registry: Registry,
        sagas: SagaEngine,
        settings: PluginSettings,
        store: Arc<dyn Store>,
    ) -> Self {
        PluginManager {
            inner: Arc::new(Inner {
                registry,
                sagas,
                settings,
                store,
                changing: tokio::sync::Mutex::new(Seen::default()),
            }),
        }
    }

    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// Loads the plugins directory. Then [`PluginManager::apply_kept`] applies the
    /// changes kept in the store, once the saga definitions they are checked against
    /// are loaded (`app.rs`).
    pub async fn load(&self, plugins_dir: &Path) -> std::io::Result<()> {
        let registry = &self.inner.registry;
        self.load_dir(plugins_dir).await?;
        let mut seen = self.inner.changing.lock().await;
        for (file, service) in registry.sources() {
            if let Some(plugin) = registry.get(&service) {
                let state = FileState { digest: plugin.digest(), limits: plugin.limits(), service };
                seen.files.insert(file, state);
            }
        }
        Ok(())
    }

    /// Applies the uploads and removals kept in the store, with the checks a change
    /// made while running passes (`checked`, `check_unused`): an upload or removal
    /// this host refused while it ran, because it would break a saga here, is refused
    /// again rather than served after a restart (it stays in `refused`, and the
    /// directory's file serves). An upload wins over the directory's file for its
    /// service, unless that file's content changed since the upload (the upload keeps
    /// the digest of the file it replaced): the latest change wins, across restarts too.
    pub async fn apply_kept(&self) -> std::io::Result<()> {
        let registry = &self.inner.registry;
        let mut seen = self.inner.changing.lock().await;
        let uploads = self.inner.store.uploads().await.map_err(std::io::Error::other)?;
        for upload in uploads {
            let service = upload.service.clone();
            if upload.base != seen.digest_for(&service) {
                tracing::info!(
                    service,
                    "the plugins directory's file changed since this service was uploaded or \
                     removed through the admin API; the file serves, and that change is discarded"
                );
                self.discard_upload(&service).await.map_err(std::io::Error::other)?;
                continue;
            }
            seen.applied.insert(service.clone(), upload.stamp());
            let source = upload_source(&service);
            let Some(Uploaded { wasm, .. }) = upload.component else {
                if registry.get(&service).is_none() {
                    continue;
                }
                match self.check_unused(&service).await {
                    Ok(()) => {
                        registry.remove(&service);
                        tracing::info!(service, "removed through the admin API: not served");
                    }
                    Err(error) => {
                        let why =
                            format!("removed through the admin API, but here {error}; it keeps serving");
                        tracing::warn!(service, "{why}");
                        registry.refuse(&source, why);
                    }
                }
                continue;
            };
            match self.checked(&service, wasm).await {
                Ok(plugin) => {
                    tracing::info!(service, digest = %plugin.digest(), "uploaded plugin loaded");
                    registry.swap(plugin, Some(&source));
                }
                Err(error) => {
                    let why = format!("kept from an upload, but here: {error}; the version serving stays");
                    tracing::warn!(service, "{why}");
                    registry.refuse(&source, why);
                }
            }
        }
        Ok(())
    }

    /// Loads every `*.wasm` in `dir` (in name order). A file that fails is recorded in
    /// the registry's refusals and logged; the others still load. The service is the one
    /// the manifest names; a second file for the same service is refused.
    async fn load_dir(&self, dir: &Path) -> std::io::Result<()> {
        let registry = &self.inner.registry;
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| is_plugin_file(path))
            .collect();
        files.sort();
        for file in files {
            match registry.runtime().load_file(&file, &self.inner.settings).await {
                Ok(plugin) => {
                    let taken = registry.file_of(plugin.service()).filter(|f| *f != file);
                    if let Some(first) = taken {
                        let error = format!(
                            "service `{}` is already served by {}",
                            plugin.service(),
                            first.display()
                        );
                        registry.refuse(&file, error);
                        continue;
                    }
                    tracing::info!(
                        service = plugin.service(),
                        digest = %plugin.digest(),
                        file = %file.display(),
                        "plugin loaded"
                    );
                    registry.swap(plugin, Some(&file));
                }
                Err(error) => registry.refuse(&file, format!("{error:#}")),
            }
        }
        Ok(())
    }

    /// Replaces (or adds) `service` with an uploaded component, and keeps it in the
    /// store (for restarts and the other hosts). Returns the new version and whether the service is new.
    pub async fn upload(&self, service: &str, wasm: Vec<u8>) -> Result<(Arc<Plugin>, bool), ChangeError> {
        let mut seen = self.inner.changing.lock().await;
        let source = upload_source(service);
        let result = self.try_upload(service, wasm, &mut seen).await;
        match &result {
            Ok(_) => self.inner.registry.clear_refusal(&source),
            Err(error) => self.inner.registry.refuse(&source, error.to_string()),
        }
        result
    }

    async fn try_upload(
        &self,
        service: &str,
        wasm: Vec<u8>,
        seen: &mut Seen,
    ) -> Result<(Arc<Plugin>, bool), ChangeError> {
        let plugin = self.checked(service, wasm.clone()).await?;
        self.keep(seen, service, Some(Uploaded { digest: plugin.digest(), wasm })).await?;
        let digest = plugin.digest();
        let previous = self.inner.registry.swap(plugin, Some(&upload_source(service)));
        tracing::info!(
            service,
            %digest,
            previous = previous.as_ref().map(|p| p.digest().to_string()).unwrap_or_default(),
            "plugin uploaded and serving"
        );
        let current = self.inner.registry.get(service).expect("just inserted");
        Ok((current, previous.is_none()))
    }

    /// Keeps an operator's change of `service` (a version to serve, or `None`: removed)
    /// in the store, for restarts and the other hosts, with what the directory holds for
    /// the service now: if that changes later, even while the server is down, the
    /// directory's file wins again.
    async fn keep(
        &self,
        seen: &mut Seen,
        service: &str,
        component: Option<Uploaded>,
    ) -> Result<(), ChangeError> {
        let change = UploadRow {
            service: service.to_owned(),
            component,
            base: seen.digest_for(service),
            uploaded_at: crate::clock::now_ms(),
        };
        let stamp = change.stamp();
        let keep = Commit { uploads: vec![UploadChange::Keep(change)], ..Commit::default() };
        self.inner.store.commit(keep).await.map_err(ChangeError::Store)?;
        seen.applied.insert(service.to_owned(), stamp);
        Ok(())
    }

    /// A new version of `service`, loaded and checked: the service it names, and every
    /// saga step using it finds its operations.
    async fn checked(&self, service: &str, wasm: Vec<u8>) -> Result<Plugin, ChangeError> {
        let plugin = self.inner.registry.runtime().load(service, wasm, self.inner.settings.defaults).await?;
        if plugin.service() != service {
            return Err(ChangeError::WrongService {
                expected: service.into(),
                found: plugin.service().into(),
            });
        }
        self.check_sagas(plugin.manifest()).await.map_err(ChangeError::BreaksSaga)?;
        Ok(plugin)
    }

    /// Stops serving `service`, unless a saga definition or an unfinished saga needs it.
    /// The removal is kept in the store: it outlives a restart (the directory's file for
    /// the service does not serve again until it changes) and reaches the other hosts.
    pub async fn remove(&self, service: &str) -> Result<(), ChangeError> {
        let mut seen = self.inner.changing.lock().await;
        if self.inner.registry.get(service).is_none() {
            return Err(ChangeError::Unknown(service.into()));
        }
        self.check_unused(service).await?;
        self.keep(&mut seen, service, None).await?;
        self.inner.registry.remove(service);
        tracing::info!(service, "plugin removed");
        Ok(())
    }

    /// Follows the changes made through other hosts of a shared store, on their hint
    /// or every [`FOLLOW_EVERY`], until the returned task is aborted. (On SQLite, with
    /// one host, it finds none.)
    pub fn follow(&self) -> tokio::task::JoinHandle<()> {
        let manager = self.clone();
        let wakeups = self.inner.store.wakeups();
        tokio::spawn(async move {
            loop {
                wakeups.plugins(FOLLOW_HINTED, FOLLOW_EVERY).await;
                if let Err(error) = manager.follow_once().await {
                    tracing::warn!("looking for plugin changes made through other hosts: {error}");
                }
            }
        })
    }

    /// Applies each kept change this host has not applied yet, and falls back to the
    /// directory's file where another host discarded a change.
    async fn follow_once(&self) -> Result<(), StoreError> {
        let mut seen = self.inner.changing.lock().await;
        let stamps = self.inner.store.upload_stamps().await?;
        let new: Vec<&UploadStamp> =
            stamps.iter().filter(|s| seen.applied.get(&s.service) != Some(*s)).collect();
        if !new.is_empty() {
            for row in self.inner.store.uploads().await? {
                if new.iter().any(|s| s.service == row.service) {
                    self.apply_from_elsewhere(&mut seen, row).await;
                }
            }
        }
        let discarded: Vec<String> = seen
            .applied
            .keys()
            .filter(|service| !stamps.iter().any(|s| &s.service == *service))
            .cloned()
            .collect();
        for service in discarded {
            seen.applied.remove(&service);
            self.fall_back_to_file(&mut seen, &service).await;
        }
        Ok(())
    }

    /// Applies an upload or removal made through another host, with the same checks as
    /// here; one that fails them is refused (and reported) and the version serving stays.
    async fn apply_from_elsewhere(&self, seen: &mut Seen, row: UploadRow) {
        let registry = &self.inner.registry;
        let (service, stamp) = (row.service.clone(), row.stamp());
        let source = upload_source(&service);
        seen.applied.insert(service.clone(), stamp);
        match row.component {
            Some(Uploaded { digest, .. }) if registry.get(&service).is_some_and(|p| p.digest() == digest) => {
                registry.clear_refusal(&source);
            }
            Some(Uploaded { wasm, .. }) => match self.checked(&service, wasm).await {
                Ok(plugin) => {
                    tracing::info!(service, digest = %plugin.digest(), "uploaded through another host: serving");
                    registry.swap(plugin, Some(&source));
                    registry.clear_refusal(&source);
                }
                Err(error) => registry.refuse(
                    &source,
                    format!("uploaded through another host, but here: {error}; the version serving stays"),
                ),
            },
            None if registry.get(&service).is_none() => {}
            None => match self.check_unused(&service).await {
                Ok(()) => {
                    registry.remove(&service);
                    tracing::info!(service, "removed through another host: no longer served");
                }
                Err(error) => registry.refuse(
                    &source,
                    format!("removed through another host, but here {error}; it keeps serving"),
                ),
            },
        }
    }

    /// Another host discarded the change kept for `service` (its plugins directory's
    /// file changed since): serve this host's file for it again, if there is one.
    async fn fall_back_to_file(&self, seen: &mut Seen, service: &str) {
        let registry = &self.inner.registry;
        let served_by_file = registry.file_of(service).is_some_and(|f| f != upload_source(service));
        let Some((file, _)) = seen.file_for(service) else { return };
        if served_by_file {
            return;
        }
        let file = file.clone();
        match registry.runtime().load_file(&file, &self.inner.settings).await {
            Ok(plugin) if plugin.service() == service => {
                tracing::info!(service, file = %file.display(), "the change through the admin API was discarded elsewhere: the file serves");
                let state =
                    FileState { digest: plugin.digest(), limits: plugin.limits(), service: service.into() };
                registry.swap(plugin, Some(&file));
                seen.files.insert(file, state);
            }
            Ok(plugin) => registry
                .refuse(&file, format!("the file holds service `{}`, not `{service}`", plugin.service())),
            Err(error) => registry.refuse(&file, format!("{error:#}")),
        }
    }

    /// Applies a change of `file` in the plugins directory: load it (if its content or
    /// limits changed since it was last loaded), or remove its service (if it is gone).
    pub async fn reload_file(&self, file: &Path) {
        let mut seen = self.inner.changing.lock().await;
        let registry = &self.inner.registry;
        if !file.exists() {
            seen.files.remove(file);
            registry.clear_refusal(file);
            let Some(service) = registry.service_of(file) else { return };
            match self.check_unused(&service).await {
                Ok(()) => {
                    registry.remove(&service);
                    tracing::info!(service, file = %file.display(), "plugin file removed: service no longer served");
                }
                Err(error) => {
                    registry.refuse(file, format!("the file was removed but {error}; it keeps serving"))
                }
            }
            return;
        }
        let plugin = match registry.runtime().load_file(file, &self.inner.settings).await {
            Ok(plugin) => plugin,
            Err(error) => return registry.refuse(file, format!("{error:#}; the version serving stays")),
        };
        // The same bytes and limits as when this file was last loaded: nothing changed
        // (whatever else serves the service, an upload say, stays).
        let service = plugin.service().to_owned();
        let state = FileState { digest: plugin.digest(), limits: plugin.limits(), service: service.clone() };
        if seen.files.get(file) == Some(&state) {
            registry.clear_refusal(file);
            return;
        }
        let upload = upload_source(&service);
        if let Some(other) = registry.file_of(&service).filter(|f| f != file && *f != upload) {
            let error = format!("service `{service}` is already served by {}", other.display());
            return registry.refuse(file, error);
        }
        let current = registry.get(&service);
        if current.as_ref().is_some_and(|c| c.digest() == plugin.digest() && c.limits() == plugin.limits()) {
            registry.clear_refusal(file);
            seen.files.insert(file.to_owned(), state);
            return;
        }
        if let Err(error) = self.check_sagas(plugin.manifest()).await {
            return registry.refuse(file, format!("{error}; the version serving stays"));
        }
        // The file is now newer than any upload of this service: the upload must not
        // come back at the next start.
        if let Err(error) = self.discard_upload(&service).await {
            return registry.refuse(file, format!("forgetting the upload it replaces failed: {error}"));
        }
        seen.applied.remove(&service);
        let digest = plugin.digest();
        registry.swap(plugin, Some(file));
        seen.files.insert(file.to_owned(), state);
        tracing::info!(
            service,
            %digest,
            previous = current.map(|p| p.digest().to_string()).unwrap_or_default(),
            "plugin reloaded"
        );
    }

    /// Forgets the kept upload of `service`, if there is one.
    async fn discard_upload(&self, service: &str) -> Result<(), StoreError> {
        let discard = UploadChange::Discard { service: service.to_owned() };
        self.inner.store.commit(Commit { uploads: vec![discard], ..Commit::default() }).await
    }

    /// Watches `dir` and applies each change to a `.wasm` (or its `.toml` limits), a
    /// short while after the last event for that file.
    pub fn watch(&self, dir: &Path) -> notify::Result<()> {
        let manager = self.clone();
        watch::watch_dir(
            dir,
            |path| {
                let wasm = if path.extension().is_some_and(|e| e == "toml") {
                    path.with_extension("wasm")
                } else {
                    path
                };
                is_plugin_file(&wasm).then_some(wasm)
            },
            move |path| {
                let manager = manager.clone();
                async move { manager.reload_file(&path).await }
            },
        )
    }

    /// Watches the saga definitions in `dir`: a changed or new `.toml` is checked
    /// against the services and replaces its definition (new sagas use it; unfinished
    /// ones finish on the version they started with, kept in the store); a bad one is
    /// refused and the old one stays; a removed one goes (for new sagas).
    pub fn watch_sagas(&self, dir: &Path) -> notify::Result<()> {
        let manager = self.clone();
        watch::watch_dir(
            dir,
            |path| {
                let hidden = path.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.'));
                (!hidden && path.extension().is_some_and(|e| e == "toml")).then_some(path)
            },
            move |path| {
                let manager = manager.clone();
                async move { manager.reload_definition(&path).await }
            },
        )
    }

    /// Applies a change of one saga definition file, one change at a time with the
    /// plugin changes (a definition is checked against the plugins serving).
    pub async fn reload_definition(&self, file: &Path) {
        let _one_at_a_time = self.inner.changing.lock().await;
        self.inner.sagas.reload_definition(file).await;
    }

    /// Every saga step that uses this service must find its action and compensation:
    /// in the definitions new sagas use, and in the versions unfinished sagas use.
    async fn check_sagas(&self, manifest: &Manifest) -> Result<(), String> {
        let definitions = self.inner.sagas.definitions_in_use().await.map_err(|e| e.to_string())?;
        for def in definitions {
            for step in def.steps.iter().filter(|s| s.service == manifest.name) {
                if let Some((operation, _)) = step.missing_operation(manifest) {
                    return Err(format!(
                        "saga `{}` step `{}` needs operation `{operation}` of `{}`, which this version does not have",
                        def.name, step.name, manifest.name
                    ));
                }
            }
        }
        Ok(())
    }

    /// A service that a saga definition or an unfinished saga uses cannot go.
    async fn check_unused(&self, service: &str) -> Result<(), ChangeError> {
        let mut users: Vec<String> = self
            .inner
            .sagas
            .definitions()
            .iter()
            .filter(|def| def.steps.iter().any(|s| s.service == service))
            .map(|def| format!("saga definition `{}`", def.name))
            .collect();
        let unfinished =
            self.inner.sagas.unfinished_using(service).await.map_err(|e| ChangeError::Io(e.to_string()))?;
        users.extend(unfinished.iter().map(|id| format!("unfinished saga {id}")));
        if users.is_empty() {
            Ok(())
        } else {
            Err(ChangeError::InUse { service: service.into(), users: users.join(", ") })
        }
    }
}

/// A `*.wasm` file (not a hidden or temporary one).
pub fn is_plugin_file(path: &Path) -> bool {
    let hidden = path.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.'));
    !hidden && path.extension().is_some_and(|ext| ext == "wasm")
}
