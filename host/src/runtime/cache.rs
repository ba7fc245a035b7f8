//! Compiled components kept on disk, so that a restart or a hot swap of a component
//! this host has compiled before skips compilation (a large component takes seconds of
//! CPU to compile; loading its compiled code is a file mapping).
//!
//! A file per component and engine: `<sha256 of the wasm>-<engine hash>.cwasm`. The
//! engine hash is wasmtime's compatibility hash of the engine's settings (and its
//! version), so a host built or configured differently never picks up code compiled
//! for another; wasmtime checks the file's header again when it loads it, and a file
//! it refuses is compiled again and replaced. Files are written under a temporary
//! name and renamed, so a crash leaves no half file under a real name.
//!
//! Loading compiled code runs it as native code in this process: whoever can write to
//! the directory can run code as wasaga. It is wasaga's own (in its data directory by
//! default, made private to its user), like the database next to it.
//!
//! The directory is kept under a size budget: after each file written, the files used
//! least recently (a file's modification time is set when it is used) are removed
//! until the rest fit. A removed file still mapped by a loaded plugin stays valid.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use wasmtime::Engine;
use wasmtime::component::Component;

use crate::service::PluginDigest;

/// What the directory may hold by default.
pub const DEFAULT_BUDGET: u64 = 1 << 30;

/// A directory of compiled components.
#[derive(Debug, Clone)]
pub struct CompiledCache {
    dir: PathBuf,
    budget: u64,
    worker: Option<Worker>,
}

/// A program that compiles a component in a process of its own: run with `args` and
/// the file to write, the component on its stdin (`wasaga compile-worker`). It exits 0
/// once the file is written, [`REFUSED`] when the component does not compile (stderr
/// says why); anything else is the worker failing (clap's usage errors exit 2).
///
/// Compiling a 12–18 MB component allocates hundreds of MiB, and the allocator keeps
/// them in the process that compiled: a server that compiled one JavaScript and one
/// Python plugin stayed at 330 MiB, against 130 MiB when it maps the compiled files.
/// The worker takes that memory with it when it exits; the server maps its file.
/// The exit code of a worker whose component does not compile.
pub const REFUSED: u8 = 3;

#[derive(Debug, Clone)]
pub struct Worker {
    pub program: PathBuf,
    pub args: Vec<std::ffi::OsString>,
}

/// Where a loaded component's code came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Compiled now (and kept, if there is a cache).
    Compiled,
    /// Loaded from the cache.
    Cached,
}

impl CompiledCache {
    /// The cache in `dir` (created, private to this user, if missing). A directory that
    /// is there already is used only if it is this user's and nobody else may write
    /// in it: its files are loaded as native code, so whoever can put one there runs
    /// code as wasaga.
    pub fn open(dir: impl Into<PathBuf>, budget: u64) -> std::io::Result<CompiledCache> {
        let dir = dir.into();
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(&dir)?;
        #[cfg(target_os = "linux")]
        {
            use std::os::unix::fs::MetadataExt;
            let meta = std::fs::metadata(&dir)?;
            let me = rustix::process::geteuid().as_raw();
            if meta.uid() != me || meta.mode() & 0o022 != 0 {
                return Err(std::io::Error::other(format!(
                    "{} is not private to this user (owner {}, mode {:o}): others could put native code \
                     in it; use a directory of this user's that only it may write (chmod go-w)",
                    dir.display(),
                    meta.uid(),
                    meta.mode() & 0o777
                )));
            }
        }
        Ok(CompiledCache { dir, budget, worker: None })
    }

    /// Compiles what the cache does not hold in `worker`'s processes (falling back to
    /// this process when the worker cannot run).
    pub fn compile_in(self, worker: Worker) -> CompiledCache {
        CompiledCache { worker: Some(worker), ..self }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn file(&self, engine: &Engine, digest: &PluginDigest) -> PathBuf {
        // SipHash with fixed keys: the same engine settings give the same name in every
        // process of this build.
        let mut hasher = std::hash::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let hex = digest.to_string();
        let hex = hex.strip_prefix("sha256:").unwrap_or(&hex);
        self.dir.join(format!("{hex}-{:016x}.cwasm", hasher.finish()))
    }
}

/// The component of `wasm` (whose digest is `digest`): from the cache if it has it,
/// else compiled (and kept there). Blocking: run it off the async threads.
pub fn load_or_compile(
    engine: &Engine,
    cache: Option<&CompiledCache>,
    digest: &PluginDigest,
    wasm: &[u8],
) -> wasmtime::Result<(Component, Origin)> {
    let Some(cache) = cache else {
        return Ok((Component::new(engine, wasm)?, Origin::Compiled));
    };
    let file = cache.file(engine, digest);
    if file.exists() {
        let began = Instant::now();
        match deserialize(engine, &file) {
            Ok(component) => {
                touch(&file);
                tracing::debug!(file = %file.display(), took = ?began.elapsed(), "compiled code loaded from the cache");
                return Ok((component, Origin::Cached));
            }
            Err(error) => {
                tracing::warn!(file = %file.display(), "compiled code in the cache refused ({error:#}); compiling again");
                let _ = std::fs::remove_file(&file);
            }
        }
    }
    let began = Instant::now();
    if let Some(worker) = &cache.worker {
        match compile_in_worker(worker, &file, wasm) {
            Ok(()) => match deserialize(engine, &file) {
                Ok(component) => {
                    tracing::info!(file = %file.display(), took = ?began.elapsed(), "component compiled by a worker process and kept in the cache");
                    trim(cache);
                    return Ok((component, Origin::Compiled));
                }
                Err(error) => {
                    tracing::warn!("the compile worker's file was refused ({error:#}); compiling here")
                }
            },
            Err(WorkerError::Refused(why)) => return Err(wasmtime::Error::msg(why)),
            Err(WorkerError::Failed(why)) => {
                tracing::warn!("the compile worker failed ({why}); compiling here")
            }
        }
    }
    let component = Component::new(engine, wasm)?;
    let took = began.elapsed();
    match keep(cache, &file, &component) {
        Ok(()) => tracing::info!(file = %file.display(), ?took, "component compiled and kept in the cache"),
        // A full or read-only disk costs the next start a compilation, nothing more.
        Err(error) => {
            tracing::warn!(file = %file.display(), "could not keep the compiled component: {error}")
        }
    }
    Ok((component, Origin::Compiled))
}

enum WorkerError {
    /// The component does not compile: why.
    Refused(String),
    /// The worker did not do its job (missing, killed, no file): why.
    Failed(String),
}

fn compile_in_worker(worker: &Worker, file: &Path, wasm: &[u8]) -> Result<(), WorkerError> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let failed = |why: String| WorkerError::Failed(format!("{}: {why}", worker.program.display()));
    let mut child = Command::new(&worker.program)
        .args(&worker.args)
        .arg(file)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| failed(e.to_string()))?;
    // The worker reads all its input before it writes anything.
    let written = child.stdin.take().expect("stdin is piped").write_all(wasm);
    let out = child.wait_with_output().map_err(|e| failed(e.to_string()))?;
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    match out.status.code() {
        Some(0) if file.exists() => Ok(()),
        Some(code) if code == i32::from(REFUSED) => Err(WorkerError::Refused(stderr)),
        _ => Err(failed(format!("{} ({:?}, input written: {})", stderr, out.status, written.is_ok()))),
    }
}

/// What `wasaga compile-worker` does: compiles `wasm` with `engine` into `file` (under a
/// temporary name, then renamed).
pub fn compile_into(engine: &Engine, wasm: &[u8], file: &Path) -> Result<(), CompileError> {
    let component = Component::new(engine, wasm).map_err(|e| CompileError::Refused(format!("{e:#}")))?;
    let bytes = component.serialize().map_err(|e| CompileError::Io(std::io::Error::other(e)))?;
    write(file, &bytes).map_err(CompileError::Io)
}

/// Why [`compile_into`] wrote no file.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error("{0}")]
    Refused(String),
    #[error("writing the compiled component: {0}")]
    Io(std::io::Error),
}

/// The one unsafe operation of wasaga: loading native code from a file.
#[allow(unsafe_code)]
fn deserialize(engine: &Engine, file: &Path) -> wasmtime::Result<Component> {
    // SAFETY: the file is one this cache wrote with `Component::serialize` for an
    // engine of the same compatibility hash (its name says so, and wasmtime checks its
    // header and version); the directory is wasaga's own (see the module's comment).
    unsafe { Component::deserialize_file(engine, file) }
}

fn keep(cache: &CompiledCache, file: &Path, component: &Component) -> std::io::Result<()> {
    write(file, &component.serialize().map_err(std::io::Error::other)?)?;
    trim(cache);
    Ok(())
}

/// Writes `bytes` under a temporary name, then renames it to `file`: a crash leaves no
/// half file under a real name.
fn write(file: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let partial = file.with_extension(format!("partial-{}", std::process::id()));
    std::fs::write(&partial, bytes)?;
    std::fs::rename(&partial, file).inspect_err(|_| {
        let _ = std::fs::remove_file(&partial);
    })
}

fn touch(file: &Path) {
    if let Ok(f) = std::fs::File::options().write(true).open(file) {
        let _ = f.set_modified(SystemTime::now());
    }
}

/// Removes the least recently used files until the rest fit the budget.
fn trim(cache: &CompiledCache) {
    let Ok(entries) = std::fs::read_dir(&cache.dir) else { return };
    let mut files: Vec<(SystemTime, u64, PathBuf)> = entries
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let meta = entry.metadata().ok()?;
            let path = entry.path();
            (meta.is_file() && path.extension().is_some_and(|e| e == "cwasm"))
                .then(|| (meta.modified().unwrap_or(SystemTime::UNIX_EPOCH), meta.len(), path))
        })
        .collect();
    let mut total: u64 = files.iter().map(|(_, len, _)| len).sum();
    files.sort();
    for (_, len, path) in files {
        if total <= cache.budget {
            break;
        }
        if std::fs::remove_file(&path).is_ok() {
            total -= len;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine() -> Engine {
        let mut config = wasmtime::Config::new();
        config.wasm_component_model(true);
        Engine::new(&config).unwrap()
    }

    fn guest(name: &str) -> Vec<u8> {
        std::fs::read(crate::guests::path(name)).unwrap()
    }

    /// A cache directory that others may write in is refused (its files run as native
    /// code); one made here is private.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_cache_directory_others_may_write_in_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let made = dir.path().join("made");
        CompiledCache::open(&made, DEFAULT_BUDGET).unwrap();
        assert_eq!(std::fs::metadata(&made).unwrap().permissions().mode() & 0o777, 0o700);
        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
        let refused = CompiledCache::open(&shared, DEFAULT_BUDGET).expect_err("refused");
        assert!(refused.to_string().contains("is not private to this user"), "{refused}");
    }

    #[test]
    fn a_component_compiled_once_is_loaded_from_the_cache_after() {
        let dir = tempfile::tempdir().unwrap();
        let cache = CompiledCache::open(dir.path().join("compiled"), DEFAULT_BUDGET).unwrap();
        let (engine, wasm) = (engine(), guest("echo"));
        let digest = PluginDigest::of(&wasm);
        let (_, first) = load_or_compile(&engine, Some(&cache), &digest, &wasm).unwrap();
        let (_, second) = load_or_compile(&engine, Some(&cache), &digest, &wasm).unwrap();
        assert_eq!((first, second), (Origin::Compiled, Origin::Cached));
        let files: Vec<_> = std::fs::read_dir(cache.dir()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(files.len(), 1, "one file, no partial left: {files:?}");
    }

    /// A damaged file (cut short, or from another build) is not loaded: the component
    /// is compiled again and the file replaced.
    #[test]
    fn a_damaged_file_is_compiled_again_and_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let cache = CompiledCache::open(dir.path(), DEFAULT_BUDGET).unwrap();
        let (engine, wasm) = (engine(), guest("echo"));
        let digest = PluginDigest::of(&wasm);
        load_or_compile(&engine, Some(&cache), &digest, &wasm).unwrap();
        let file = cache.file(&engine, &digest);
        let whole = std::fs::read(&file).unwrap();
        std::fs::write(&file, &whole[..whole.len() / 2]).unwrap();
        let (_, origin) = load_or_compile(&engine, Some(&cache), &digest, &wasm).unwrap();
        assert_eq!(origin, Origin::Compiled);
        assert_eq!(std::fs::read(&file).unwrap(), whole, "the file is whole again");
        assert_eq!(load_or_compile(&engine, Some(&cache), &digest, &wasm).unwrap().1, Origin::Cached);
    }

    fn shell(script: &str) -> Worker {
        // The file to write comes after the args: `$1` of the script.
        Worker { program: "sh".into(), args: vec!["-c".into(), script.into(), "sh".into()] }
    }

    /// A component the worker cannot compile is refused with the worker's reasons; a
    /// worker that cannot run, or writes a file that is no compiled component, leaves
    /// the compilation to this process, and the cache ends up whole either way.
    #[test]
    fn a_compile_worker_refuses_or_falls_back_to_this_process() {
        let dir = tempfile::tempdir().unwrap();
        let (engine, wasm) = (engine(), guest("echo"));
        let digest = PluginDigest::of(&wasm);

        let refusing = CompiledCache::open(dir.path().join("a"), DEFAULT_BUDGET)
            .unwrap()
            .compile_in(shell("cat > /dev/null; echo 'invalid: no such section' >&2; exit 3"));
        let error = load_or_compile(&engine, Some(&refusing), &digest, &wasm).map(|_| ()).unwrap_err();
        assert_eq!(error.to_string(), "invalid: no such section");
        assert!(!refusing.file(&engine, &digest).exists());

        let workers = [
            Worker { program: dir.path().join("no-such-program"), args: vec![] },
            shell(r#"cat > "$1""#), // the wasm itself, not compiled code
        ];
        for (i, worker) in workers.into_iter().enumerate() {
            let cache = CompiledCache::open(dir.path().join(format!("b{i}")), DEFAULT_BUDGET)
                .unwrap()
                .compile_in(worker);
            let (_, origin) = load_or_compile(&engine, Some(&cache), &digest, &wasm).unwrap();
            assert_eq!(origin, Origin::Compiled);
            assert_eq!(load_or_compile(&engine, Some(&cache), &digest, &wasm).unwrap().1, Origin::Cached);
        }
    }

    /// Past its budget the cache forgets the files used least recently.
    #[test]
    fn the_least_recently_used_files_go_past_the_budget() {
        let dir = tempfile::tempdir().unwrap();
        let engine = engine();
        let components: Vec<Vec<u8>> = ["echo", "hello-v1", "hello-v2"].map(guest).into();
        let sizes: Vec<u64> = {
            let probe = CompiledCache::open(dir.path().join("probe"), DEFAULT_BUDGET).unwrap();
            components
                .iter()
                .map(|wasm| {
                    let digest = PluginDigest::of(wasm);
                    load_or_compile(&engine, Some(&probe), &digest, wasm).unwrap();
                    std::fs::metadata(probe.file(&engine, &digest)).unwrap().len()
                })
                .collect()
        };
        let roomy = CompiledCache::open(dir.path().join("compiled"), DEFAULT_BUDGET).unwrap();
        let digests: Vec<PluginDigest> = components.iter().map(|w| PluginDigest::of(w)).collect();
        let old = SystemTime::now() - std::time::Duration::from_secs(3600);
        for (i, wasm) in components[..2].iter().enumerate() {
            load_or_compile(&engine, Some(&roomy), &digests[i], wasm).unwrap();
            let f = std::fs::File::options().write(true).open(roomy.file(&engine, &digests[i])).unwrap();
            f.set_modified(old + std::time::Duration::from_secs(i as u64)).unwrap();
        }
        // Room for the first and the last, not for all three.
        let cache = CompiledCache::open(roomy.dir(), sizes[0] + sizes[2]).unwrap();
        // Used again: the first is now the most recent.
        assert_eq!(
            load_or_compile(&engine, Some(&cache), &digests[0], &components[0]).unwrap().1,
            Origin::Cached
        );
        load_or_compile(&engine, Some(&cache), &digests[2], &components[2]).unwrap();
        let kept: Vec<bool> = digests.iter().map(|d| cache.file(&engine, d).exists()).collect();
        assert_eq!(kept, [true, false, true], "the second, used least recently, is gone");
    }
}
