//! wasaga: a host for business services written as WebAssembly components.
//!
//! Where things live:
//!
//! - [`app`]: the host wired together (store, plugins, sagas, background tasks), used
//!   by `serve`, the demo, the benchmarks and the tests.
//! - [`check`]: the history checker of `wasaga bench check`: serializability (Elle's
//!   list-append), events delivered once and in order, saga steps once each.
//! - [`alert`]: alerts (log, metric, webhook) when a saga cannot finish by itself.
//! - [`service`]: the plugin contract in the host's types (manifest, invocation, failure).
//! - [`runtime`]: wasmtime: the engine, the sandbox and its limits, loading and
//!   validating plugins, the registry of the versions that serve. The only module
//!   that sees wasmtime or generated types.
//! - [`store`]: the storage contract (`Store`: records, idempotency records, sagas,
//!   definitions, outbox, deliveries, uploaded plugins, retention, the hosts' leases),
//!   the per-invocation transaction (read set, buffered writes), the contract's test
//!   suite, and the two backends, each a module of its own: [`store::sqlite`] (embedded)
//!   and [`store::postgres`] (shared by several hosts).
//! - [`cluster`]: several hosts on one store: heartbeats, the leader, taking over the
//!   sagas of a host that died.
//! - [`trace`]: OpenTelemetry spans (requests, invocations, saga steps, deliveries),
//!   exported over OTLP/HTTP when an endpoint is configured.
//! - [`outbound`]: HTTP requests plugins make: the policy (declared and granted
//!   destinations, special addresses, secrets), the journal of an invocation's
//!   exchanges with their idempotency keys, and the bounded client that sends them.
//! - [`invoke`]: one idempotent, optimistic invocation: replay, claim, run, commit, re-run.
//! - [`saga`]: saga definitions, the pure state machine, its driver, the engine.
//! - [`lifecycle`]: hot reload, uploads and removals of plugins, checked against the sagas.
//! - [`watch`]: watching a directory for changed files, debounced.
//! - [`metrics`]: the Prometheus metrics.
//! - [`retention`]: how long the store keeps finished sagas, delivered events,
//!   tombstones and expired idempotency records, and the task that prunes them.
//! - [`rates`]: per-minute counts of the last hour (sagas ended, step failures) for the
//!   dashboard's trend.
//! - [`dispatch`]: choreography: the dispatcher delivering outbox events to subscribers.
//! - [`http`]: the axum API and its problem+json errors.
//! - [`clock`]: wall-clock time as stored (unix ms).
//! - [`text`]: outside text (plugins', operators') made safe for the log.
//! - [`config`]: the duration and size parsers (a leaf: it uses nothing of the host).
//! - [`cli`]: the `wasaga` command line, one file per command (and `choices.rs`, the
//!   spellings of the settings chosen by name).
//! - [`guests`]: paths of the guest components built with this crate.

pub mod alert;
pub mod app;
pub mod check;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod dispatch;
pub mod guests;
pub mod http;
pub mod invoke;
pub mod lifecycle;
pub mod metrics;
pub mod outbound;
pub mod rates;
pub mod retention;
pub mod runtime;
pub mod saga;
pub mod service;
pub mod store;
pub mod text;
pub mod trace;
pub mod watch;

/// The maps of the code (this file's list, docs/architecture.md's module table) name
/// every module of `host/src`, so that a newcomer finds each where the maps say.
#[cfg(test)]
mod maps {
    use std::path::Path;

    fn modules() -> Vec<String> {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut modules: Vec<String> = std::fs::read_dir(&src)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter_map(|path| match path.extension() {
                Some(ext) if ext == "rs" => Some(path.file_stem()?.to_string_lossy().into_owned()),
                None if path.is_dir() => Some(path.file_name()?.to_string_lossy().into_owned()),
                _ => None,
            })
            .filter(|name| name != "lib" && name != "main")
            .collect();
        modules.sort();
        modules.dedup();
        modules
    }

    #[test]
    fn the_maps_name_every_module() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let lib = std::fs::read_to_string(root.join("src/lib.rs")).unwrap();
        let architecture = std::fs::read_to_string(root.join("../docs/architecture.md")).unwrap();
        let table: String = architecture.lines().filter(|line| line.starts_with("| `")).collect();
        let modules = modules();
        assert!(modules.len() > 20, "{modules:?}");
        for module in &modules {
            assert!(lib.contains(&format!("//! - [`{module}`]")), "lib.rs's map lacks `{module}`");
            let named = [format!("`{module}.rs`"), format!("`{module}/`")];
            assert!(named.iter().any(|n| table.contains(n)), "architecture.md's table lacks `{module}`");
        }
    }
}
