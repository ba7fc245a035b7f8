//! What each plugin may use: its [`Limits`], the defaults from the command line, and a
//! plugin's own `<name>.toml` beside its `<name>.wasm`.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;

use crate::config::{parse_bytes, parse_duration};

/// Per-plugin limits, enforced on every call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Wall-clock time one call may run, instantiation included.
    pub deadline: Duration,
    /// The most linear memory one instance may have, in bytes.
    pub memory_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { deadline: Duration::from_secs(5), memory_bytes: 64 << 20 }
    }
}

/// Limits for plugins: defaults from the command line, overridden per plugin by a
/// `<name>.toml` file beside `<name>.wasm`:
///
/// ```toml
/// deadline = "2s"     # wall-clock time per call
/// memory = "32MiB"    # linear memory per instance
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PluginSettings {
    pub defaults: Limits,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsFile {
    deadline: Option<String>,
    memory: Option<String>,
}

impl PluginSettings {
    /// The limits for the plugin in `wasm_file`: the defaults, with what its sidecar
    /// `.toml` sets. A sidecar that does not parse is an error (never silently ignored).
    pub fn limits_for(&self, wasm_file: &Path) -> anyhow::Result<Limits> {
        let sidecar = wasm_file.with_extension("toml");
        let text = match std::fs::read_to_string(&sidecar) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(self.defaults),
            Err(e) => return Err(e).with_context(|| format!("reading {}", sidecar.display())),
        };
        let file: LimitsFile = toml::from_str(&text).with_context(|| format!("in {}", sidecar.display()))?;
        let mut limits = self.defaults;
        if let Some(deadline) = &file.deadline {
            limits.deadline =
                parse_duration(deadline).with_context(|| format!("`deadline` in {}", sidecar.display()))?;
        }
        if let Some(memory) = &file.memory {
            limits.memory_bytes =
                parse_bytes(memory).with_context(|| format!("`memory` in {}", sidecar.display()))?;
        }
        Ok(limits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sidecar_overrides_the_defaults_and_a_bad_one_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let settings = PluginSettings::default();
        let wasm = dir.path().join("svc.wasm");
        assert_eq!(settings.limits_for(&wasm).unwrap(), Limits::default(), "no sidecar: defaults");

        std::fs::write(dir.path().join("svc.toml"), "deadline = \"200ms\"\n").unwrap();
        let limits = settings.limits_for(&wasm).unwrap();
        assert_eq!(limits.deadline, Duration::from_millis(200));
        assert_eq!(limits.memory_bytes, Limits::default().memory_bytes);

        std::fs::write(dir.path().join("svc.toml"), "memroy = \"1MiB\"\n").unwrap();
        let err = format!("{:#}", settings.limits_for(&wasm).unwrap_err());
        assert!(err.contains("svc.toml") && err.contains("memroy"), "{err}");
    }
}
