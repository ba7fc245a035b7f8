//! The guest components built from `plugins/` together with this crate (by
//! `host/build.rs`): services under `services/`, misbehaving test fixtures under
//! `fixtures/`.

use std::path::PathBuf;

/// The directory holding `services/<name>.wasm` and `fixtures/<name>.wasm`.
pub const DIR: &str = env!("WASAGA_GUEST_DIR");

/// The directory of the service plugins (a ready `--plugins` directory).
pub fn services_dir() -> PathBuf {
    PathBuf::from(DIR).join("services")
}

/// The path of the built guest component `name` (a service such as `echo`, or a
/// fixture such as `trap`).
pub fn path(name: &str) -> PathBuf {
    let service = services_dir().join(format!("{name}.wasm"));
    if service.exists() { service } else { PathBuf::from(DIR).join("fixtures").join(format!("{name}.wasm")) }
}
