//! The plugin runtime: one wasmtime [`Engine`] shared by every plugin, each plugin
//! compiled once and pre-linked, and a fresh, sandboxed `Store` for every call.
//!
//! - [`Runtime`] is the cheap-to-clone handle: engine, linker, epoch ticker.
//! - [`Plugin`] is one loaded, validated version of a service (`plugin.rs`).
//! - [`Registry`] maps service names to the version that serves them (`registry.rs`).
//! - `cache.rs`: compiled components kept on disk, so a known one skips compilation.
//! - `limits.rs`: what each plugin may use (deadline, memory), from the command line
//!   and its own `<name>.toml`.
//! - `sandbox.rs` holds what a call's store contains and the walls around it;
//!   `imports.rs` the host side of the plugin's imports; `outbound.rs` its
//!   `wasi:http` requests, handed to [`crate::outbound`]; `bindings.rs` the generated
//!   code. Nothing outside this module names a wasmtime type.

mod bindings;
mod cache;
mod imports;
mod limits;
mod outbound;
mod plugin;
mod registry;
mod sandbox;

use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

pub use crate::service::PluginDigest;
pub use cache::{
    CompileError, CompiledCache, DEFAULT_BUDGET as DEFAULT_CACHE_BUDGET, REFUSED as COMPILE_REFUSED, Worker,
};
pub use limits::{Limits, PluginSettings};
pub use plugin::{CallError, LoadError, Outcome, Plugin, WIT_VERSION};
pub use registry::{PastVersion, Refusal, Registry};

use sandbox::CallState;

/// How often the epoch advances. A running plugin checks its deadline, and yields to
/// other tasks, once per tick.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// How instances get their memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Allocator {
    /// Slots reserved up front and reused: the fastest per call.
    #[default]
    Pooling,
    /// A fresh mmap per instance: no reservation, slower per call.
    OnDemand,
}

/// Engine-wide settings. Per-plugin limits are [`Limits`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuntimeOptions {
    pub allocator: Allocator,
    /// With the pooling allocator: how many calls may run at the same time.
    pub max_concurrent_calls: u32,
    /// The largest memory limit any plugin may be given; the pool reserves this much
    /// address space per slot.
    pub max_memory_bytes: u64,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        RuntimeOptions { allocator: Allocator::Pooling, max_concurrent_calls: 256, max_memory_bytes: 1 << 30 }
    }
}

/// The shared plugin runtime. Clone it freely.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Engine,
    linker: Linker<CallState>,
    options: RuntimeOptions,
    cache: Option<CompiledCache>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").field("options", &self.inner.options).finish_non_exhaustive()
    }
}

impl Runtime {
    /// Builds the engine and the linker, and starts the epoch ticker (a thread that
    /// ends when the last handle to the engine is dropped). Every component is compiled
    /// when loaded.
    pub fn new(options: RuntimeOptions) -> anyhow::Result<Runtime> {
        Runtime::with_cache(options, None)
    }

    /// As [`Runtime::new`], keeping compiled components in `cache` (and loading known
    /// ones from there instead of compiling them).
    pub fn with_cache(options: RuntimeOptions, cache: Option<CompiledCache>) -> anyhow::Result<Runtime> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        if options.allocator == Allocator::Pooling {
            config.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling(&options)));
        }
        let engine = Engine::new(&config).map_err(anyhow::Error::from)?;

        let mut linker = Linker::new(&engine);
        // A Rust guest imports WASI (std pulls it in) even when it uses none of it; the
        // WASI context of each call grants nothing (see sandbox.rs).
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(anyhow::Error::from)?;
        // wasi:http's types and outgoing-handler; each request goes through the host's
        // policy (runtime/outbound.rs, outbound/).
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).map_err(anyhow::Error::from)?;
        // The wasaga:plugin imports, one interface at a time: the world's own
        // add_to_linker would link wasi:http's again.
        bindings::wasaga::plugin::store::add_to_linker::<CallState, HasSelf<CallState>>(
            &mut linker,
            |state| state,
        )
        .map_err(anyhow::Error::from)?;
        bindings::wasaga::plugin::events::add_to_linker::<CallState, HasSelf<CallState>>(
            &mut linker,
            |state| state,
        )
        .map_err(anyhow::Error::from)?;
        bindings::wasaga::plugin::log::add_to_linker::<CallState, HasSelf<CallState>>(&mut linker, |state| {
            state
        })
        .map_err(anyhow::Error::from)?;
        bindings::wasaga::plugin::types::add_to_linker::<CallState, HasSelf<CallState>>(
            &mut linker,
            |state| state,
        )
        .map_err(anyhow::Error::from)?;

        spawn_epoch_ticker(&engine);
        Ok(Runtime { inner: Arc::new(Inner { engine, linker, options, cache }) })
    }

    pub fn options(&self) -> &RuntimeOptions {
        &self.inner.options
    }

    /// Compiles `wasm` into `file`, as a compile cache keeps it (what `wasaga
    /// compile-worker` does for a server's cache).
    pub fn compile_into(&self, wasm: &[u8], file: &std::path::Path) -> Result<(), CompileError> {
        cache::compile_into(&self.inner.engine, wasm, file)
    }
}

fn pooling(options: &RuntimeOptions) -> PoolingAllocationConfig {
    let calls = options.max_concurrent_calls;
    let mut pool = PoolingAllocationConfig::new();
    // A Rust component has one memory and a handful of core instances (the module
    // and the canonical-ABI shims).
    pool.total_component_instances(calls)
        .total_core_instances(calls * 8)
        .total_memories(calls)
        .total_tables(calls * 4)
        .total_stacks(calls)
        .max_core_instances_per_component(32)
        .max_memories_per_component(2)
        .max_tables_per_component(8)
        .max_memory_size(options.max_memory_bytes as usize)
        // Keep the first pages of each slot resident between calls, and reset them with
        // pagemap_scan where the kernel has it: most of the per-call cost otherwise is
        // unmapping and faulting pages back in (measured in docs/benchmarks.md).
        .linear_memory_keep_resident(1 << 20)
        .table_keep_resident(64 << 10)
        .async_stack_keep_resident(64 << 10)
        .pagemap_scan(wasmtime::Enabled::Auto);
    pool
}

fn spawn_epoch_ticker(engine: &Engine) {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("wasaga-epoch".into())
        .spawn(move || {
            loop {
                std::thread::sleep(EPOCH_TICK);
                match weak.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => break,
                }
            }
        })
        .expect("failed to start the epoch thread");
}
