//! Watching a directory for changed files (the plugins and the saga definitions), each
//! change handed on once its file has settled.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::time::Instant;

/// Changes to one file closer together than this are one change: an editor or a `cp`
/// writes a file in several steps, and a half-written file must not be loaded.
const DEBOUNCE: Duration = Duration::from_millis(150);

/// Watches `dir`; each path that `select` keeps (and maps) is handed to `on_change` a
/// short while ([`DEBOUNCE`]) after the last event for it.
pub fn watch_dir<F, Fut>(
    dir: &Path,
    select: fn(PathBuf) -> Option<PathBuf>,
    on_change: F,
) -> notify::Result<()>
where
    F: Fn(PathBuf) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let (events, mut changes) = tokio::sync::mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event
            && changes_content(&event.kind)
        {
            for path in event.paths {
                let _ = events.send(path);
            }
        }
    })?;
    watcher.watch(dir, RecursiveMode::NonRecursive)?;
    tokio::spawn(async move {
        let _watcher = watcher;
        let mut due: HashMap<PathBuf, Instant> = HashMap::new();
        loop {
            let next = due.values().min().copied();
            tokio::select! {
                changed = changes.recv() => match changed {
                    Some(path) => {
                        if let Some(path) = select(path) {
                            due.insert(path, Instant::now() + DEBOUNCE);
                        }
                    }
                    None => break,
                },
                () = sleep_until(next) => {
                    let now = Instant::now();
                    let ready: Vec<PathBuf> = due.iter().filter(|(_, at)| **at <= now).map(|(p, _)| p.clone()).collect();
                    for path in ready {
                        due.remove(&path);
                        on_change(path).await;
                    }
                }
            }
        }
    });
    Ok(())
}

/// Whether an event can mean new content: a file created, written (closed after
/// writing), renamed or removed. Opening, reading, closing after reading and metadata
/// changes (a `touch`, a `chmod`) do not: a `cat` of a plugin's file must not reload it.
fn changes_content(kind: &notify::EventKind) -> bool {
    use notify::EventKind;
    use notify::event::{AccessKind, AccessMode, ModifyKind};
    match kind {
        EventKind::Create(_) | EventKind::Remove(_) => true,
        EventKind::Modify(ModifyKind::Metadata(_)) => false,
        EventKind::Modify(_) => true,
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) | EventKind::Any | EventKind::Other => false,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
