//! Bindings of the `wasaga:plugin/plugin` world for Rust services.
//!
//! A service is declared once with [`Service`], each operation with its typed input
//! and output, and exported with [`service!`]:
//!
//! ```ignore
//! wasaga_guest::service!(Service::new("inventory").operation(OperationInfo::new("reserve", "..."), reserve));
//! ```
//!
//! The raw world stays usable: implement [`Guest`] (`describe` and `handle`) and export
//! it with `wasaga_guest::export!(MyService with_types_in wasaga_guest)`. The imports
//! are here too: [`wasaga::plugin::store`], [`wasaga::plugin::events`],
//! [`wasaga::plugin::log`], `wasi:http`'s outgoing handler ([`wasi::http`]); [`json`]
//! reads and writes JSON records, [`http`] makes HTTP requests.

pub mod http;
mod service;

wit_bindgen::generate!({
    world: "plugin",
    path: "../../wit",
    pub_export_macro: true,
    default_bindings_module: "wasaga_guest",
    // wasi:http and what its types use (wasi:io, wasi:clocks).
    generate_all,
});

pub use exports::wasaga::plugin::service::{
    Destination, Guest, Invocation, Manifest, OperationInfo, Visibility,
};
pub use service::Service;
pub use wasaga::plugin::types::Failure;

impl OperationInfo {
    /// An operation without a compensation, whose visibility the host decides
    /// (internal if it compensates another or handles a subscription, else public).
    pub fn new(name: &str, description: &str) -> Self {
        OperationInfo {
            name: name.into(),
            compensated_by: None,
            description: description.into(),
            visibility: None,
        }
    }

    /// Undone by `compensation` in a saga.
    pub fn compensated_by(mut self, compensation: &str) -> Self {
        self.compensated_by = Some(compensation.into());
        self
    }

    /// Callable only by sagas, event deliveries and operators, never by a client.
    pub fn internal(mut self) -> Self {
        self.visibility = Some(Visibility::Internal);
        self
    }

    /// Callable by clients, even if it compensates another or handles a subscription.
    pub fn public(mut self) -> Self {
        self.visibility = Some(Visibility::Public);
        self
    }
}

/// JSON helpers for services whose inputs, outputs and records are JSON (the
/// convention of the wasaga API).
pub mod json {
    use serde::Serialize;
    use serde::de::DeserializeOwned;

    use super::Failure;
    use super::wasaga::plugin::store;

    /// Parses the input; a malformed input is a rejection that says what is wrong.
    pub fn input<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Failure> {
        serde_json::from_slice(bytes).map_err(|e| Failure::Rejected(format!("invalid input: {e}")))
    }

    /// Serialises an output.
    pub fn output<T: Serialize>(value: &T) -> Result<Vec<u8>, Failure> {
        serde_json::to_vec(value).map_err(|e| Failure::Rejected(format!("cannot encode the output: {e}")))
    }

    /// Reads and parses the record at `key`, with its version.
    pub fn get<T: DeserializeOwned>(key: &str) -> Result<Option<(T, u64)>, Failure> {
        match store::get(key) {
            None => Ok(None),
            Some(entry) => {
                serde_json::from_slice(&entry.value).map(|value| Some((value, entry.version))).map_err(|e| {
                    Failure::Rejected(format!("record `{key}` is not what this service wrote: {e}"))
                })
            }
        }
    }

    /// Writes `value` at `key` (based on what this invocation read).
    pub fn set<T: Serialize>(key: &str, value: &T) -> Result<u64, Failure> {
        let bytes = serde_json::to_vec(value)
            .map_err(|e| Failure::Rejected(format!("cannot encode `{key}`: {e}")))?;
        store::set(key, &bytes).map_err(store_failure)
    }

    /// A refused store operation, as a failure: a conflict is transient (the host
    /// runs the invocation again), an invalid request is a rejection.
    pub fn store_failure(error: store::StoreError) -> Failure {
        match error {
            store::StoreError::Conflict(c) => Failure::Transient(format!("version conflict on `{}`", c.key)),
            store::StoreError::Invalid(message) => Failure::Rejected(message),
        }
    }
}
