//! Hints that the store changed, so that the tasks that look for changes look sooner
//! than their next poll: the dispatcher (an event was published) and the plugin
//! follower (an operator's plugin change was kept).
//!
//! Each backend's writer wakes them after a batch that made such a change commits, and
//! PostgreSQL's `LISTEN` (`postgres/listen.rs`) carries the other hosts' `NOTIFY`s. A
//! hint is only a hint: every task still polls, often while hints from other hosts do
//! not arrive (the listener reconnecting, or a database in front of which `LISTEN`
//! does not work, such as a transaction-pooling proxy), rarely while they do.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

use super::Commit;

/// What a batch of commits changed that a waiting task looks for.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Hints {
    /// Events published, deliveries made, done or put back: the dispatcher's.
    pub events: bool,
    /// An operator's plugin change kept: the plugin follower's.
    pub plugins: bool,
}

impl Hints {
    pub(crate) fn of<'a>(commits: impl IntoIterator<Item = &'a Commit>) -> Hints {
        let mut hints = Hints::default();
        for commit in commits {
            hints.events |= !commit.changes.events.is_empty() || !commit.deliveries.is_empty();
            hints.plugins |= !commit.uploads.is_empty();
        }
        hints
    }
}

/// One hint per kind of change; each has one task that waits for it (`notify_one`
/// keeps a hint that comes while that task is busy, so none is lost between polls).
#[derive(Debug)]
pub struct Wakeups {
    events: Notify,
    plugins: Notify,
    /// Whether every change, this host's and the others', wakes: true for a store only
    /// this process writes (SQLite), and for PostgreSQL while its listener is connected.
    complete: AtomicBool,
}

impl Wakeups {
    /// `complete`: whether this host's own commits are all the changes there are.
    pub(crate) fn new(complete: bool) -> Self {
        Wakeups { events: Notify::new(), plugins: Notify::new(), complete: AtomicBool::new(complete) }
    }

    /// What a writer calls once a batch with these hints is durable.
    pub(crate) fn wake(&self, hints: Hints) {
        if hints.events {
            self.events.notify_one();
        }
        if hints.plugins {
            self.plugins.notify_one();
        }
    }

    /// Every waiting task looks now (after hints may have been missed).
    pub(crate) fn wake_all(&self) {
        self.events.notify_one();
        self.plugins.notify_one();
    }

    pub(crate) fn set_complete(&self, complete: bool) {
        self.complete.store(complete, Ordering::Relaxed);
    }

    /// Whether every change wakes now (see `complete`).
    pub fn complete(&self) -> bool {
        self.complete.load(Ordering::Relaxed)
    }

    /// Waits for an event hint, or for `complete_poll` (while every change wakes) or
    /// `fallback_poll` (while some may not), whichever comes first.
    pub async fn events(&self, complete_poll: Duration, fallback_poll: Duration) {
        self.wait(&self.events, complete_poll, fallback_poll).await
    }

    /// The same for plugin changes.
    pub async fn plugins(&self, complete_poll: Duration, fallback_poll: Duration) {
        self.wait(&self.plugins, complete_poll, fallback_poll).await
    }

    async fn wait(&self, hint: &Notify, complete_poll: Duration, fallback_poll: Duration) {
        let poll = if self.complete.load(Ordering::Relaxed) { complete_poll } else { fallback_poll };
        tokio::select! {
            // A hint already there is taken first, even with a poll of zero.
            biased;
            () = hint.notified() => {}
            () = tokio::time::sleep(poll) => {}
        }
    }
}
