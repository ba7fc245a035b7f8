//! The command line's spellings of the host's settings that are a choice among names.
//! The settings themselves belong to their layers (`store`, `runtime`), which know
//! nothing of clap; these enums are what `--help` lists, and each converts into its
//! layer's own.

use clap::ValueEnum;

use crate::{runtime, store};

/// SQLite's `synchronous` setting for commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Synchronous {
    /// Every commit is on disk before it is acknowledged (fsync of the WAL).
    Full,
    /// Faster; a power loss may lose the last commits (never corrupts).
    Normal,
}

impl From<Synchronous> for store::sqlite::Synchronous {
    fn from(choice: Synchronous) -> Self {
        match choice {
            Synchronous::Full => Self::Full,
            Synchronous::Normal => Self::Normal,
        }
    }
}

/// How plugin instances get their memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Allocator {
    /// Slots reserved up front and reused: the fastest per call.
    Pooling,
    /// A fresh mmap per instance: no reservation, slower per call.
    OnDemand,
}

impl From<Allocator> for runtime::Allocator {
    fn from(choice: Allocator) -> Self {
        match choice {
            Allocator::Pooling => Self::Pooling,
            Allocator::OnDemand => Self::OnDemand,
        }
    }
}
