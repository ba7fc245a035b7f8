//! Bindings of the `wasaga:plugin/plugin` world for Rust services.
//!
//! A service implements [`exports::wasaga::plugin::service::Guest`] and exports it:
//!
//! ```ignore
//! struct Inventory;
//! impl wasaga_guest::exports::wasaga::plugin::service::Guest for Inventory { /* ... */ }
//! wasaga_guest::export!(Inventory with_types_in wasaga_guest);
//! ```
//!
//! The imports are here too: [`wasaga::plugin::store`], [`wasaga::plugin::events`],
//! [`wasaga::plugin::log`].

wit_bindgen::generate!({
    world: "plugin",
    path: "../../wit",
    pub_export_macro: true,
    default_bindings_module: "wasaga_guest",
});

pub use exports::wasaga::plugin::service::{Guest, Invocation, Manifest, OperationInfo};
pub use wasaga::plugin::types::Failure;

impl OperationInfo {
    /// An operation without a compensation.
    pub fn new(name: &str, description: &str) -> Self {
        OperationInfo { name: name.into(), compensated_by: None, description: description.into() }
    }
}
