//! What the store keeps of sagas: each saga's row (its state machine's state, guarded
//! by a version) and the definition versions sagas started with.

/// A saga as stored: its definition's name, its input, and its state machine's state
/// (JSON), versioned so that only the driver that read a version may write the next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SagaRow {
    pub id: String,
    pub name: String,
    /// `running`, `compensating`, `completed`, `compensated` or `stuck`.
    pub status: String,
    pub input: Vec<u8>,
    pub state: String,
    pub version: u64,
    /// The `Idempotency-Key` that started it, and the sha256 of its input.
    pub key: String,
    pub fingerprint: [u8; 32],
    /// Unix ms.
    pub created_at: i64,
    pub updated_at: i64,
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
    /// The next state of a saga at `version` (it becomes `version + 1`).
    Update { id: String, version: u64, status: String, state: String, at: i64 },
}
