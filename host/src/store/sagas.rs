//! What the store keeps of sagas: each saga's row (its state machine's state, guarded
//! by a version) and the definition versions sagas started with.

use serde::{Deserialize, Serialize};

/// Where a saga is.
///
/// The store's own type, though the saga machine moves sagas between these: the five
/// values are the store's schema (the `status` column, the index of finished sagas,
/// the seeded per-status counts) and its queries depend on them (the claim of a dead
/// host's running and compensating sagas, retention of completed and compensated
/// ones, the operators' stuck sagas). The saga layer sits above the store and imports
/// it from here; owned there, it would make the store depend on the layer above it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SagaStatus {
    /// Going forward.
    Running,
    /// A step failed; undoing the completed steps in reverse order.
    Compensating,
    /// Every step succeeded.
    Completed,
    /// Failed and cleanly undone.
    Compensated,
    /// Cannot go on by itself: a compensation kept failing, or a step after the pivot
    /// was refused. An operator retries it, compensates it (while the pivot has not
    /// committed) or resolves the stuck step by hand.
    Stuck,
}

impl SagaStatus {
    pub const ALL: [SagaStatus; 5] = [
        SagaStatus::Running,
        SagaStatus::Compensating,
        SagaStatus::Completed,
        SagaStatus::Compensated,
        SagaStatus::Stuck,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SagaStatus::Running => "running",
            SagaStatus::Compensating => "compensating",
            SagaStatus::Completed => "completed",
            SagaStatus::Compensated => "compensated",
            SagaStatus::Stuck => "stuck",
        }
    }

    pub fn parse(text: &str) -> Option<SagaStatus> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// Completed or compensated: nothing will ever happen to it again.
    pub fn is_terminal(self) -> bool {
        matches!(self, SagaStatus::Completed | SagaStatus::Compensated)
    }
}

/// A saga as stored: its definition's name, its input, and its state machine's state
/// (JSON), versioned so that only the driver that read a version may write the next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SagaRow {
    pub id: String,
    pub name: String,
    pub status: SagaStatus,
    pub input: Vec<u8>,
    pub state: String,
    pub version: u64,
    /// The `Idempotency-Key` that started it, and the sha256 of its input.
    pub key: String,
    pub fingerprint: [u8; 32],
    /// Unix ms.
    pub created_at: i64,
    pub updated_at: i64,
    /// The host that drives it (see `Store::claim_sagas`); `None` before hosts had ids.
    pub owner: Option<String>,
}

/// A saga definition as kept for the sagas that started with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefinitionRow {
    /// The digest of its steps (what a saga records).
    pub digest: String,
    pub name: String,
    /// The TOML.
    pub text: String,
    /// Unix ms.
    pub saved_at: i64,
}

/// A change to a saga, committed together with the step invocation that caused it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SagaChange {
    /// A new saga; refused with [`StoreError::Duplicate`] if its (name, key) exists.
    Create(SagaRow),
    /// The next state of a saga at `version` (it becomes `version + 1`), made by host
    /// `by`, which drives it from then on. Refused (a conflict) if the saga moved on, or
    /// if another host drives it now (it took the saga over): only a saga that is
    /// `by`'s, has no owner, or is stuck (an operator's action takes it over) changes.
    /// `by: None` checks the version alone.
    Update { id: String, version: u64, status: SagaStatus, state: String, at: i64, by: Option<String> },
}
