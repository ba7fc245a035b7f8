//! The bindings generated from `wit/`, and the conversions between them and the host's
//! own types. Nothing outside `runtime/` names a generated type.

wasmtime::component::bindgen!({
    world: "plugin",
    path: "../wit",
    // Every import may trap: a store import used outside `handle`, or a backend
    // failure, ends the call rather than lying to the plugin. The record imports are
    // async: they await the store's snapshot, which a network database answers later.
    imports: {
        "wasaga:plugin/store.get": async | trappable,
        "wasaga:plugin/store.set": async | trappable,
        "wasaga:plugin/store.put": async | trappable,
        "wasaga:plugin/store.delete": async | trappable,
        "wasaga:plugin/store.scan": async | trappable,
        default: trappable,
    },
    exports: { default: async },
    // wasi:http (and what its types use) is wasmtime-wasi-http's: linked by
    // `wasmtime_wasi_http::p2::add_only_http_to_linker_async`, sent by outbound.rs.
    with: {
        "wasi:http": wasmtime_wasi_http::p2::bindings::http,
        "wasi:io": wasmtime_wasi::p2::bindings::io,
        "wasi:clocks": wasmtime_wasi::p2::bindings::clocks,
    },
});

use crate::service;
use crate::store;

pub(crate) use self::exports::wasaga::plugin::service as guest;
pub(crate) use self::wasaga::plugin::{events, log, store as wit_store, types};

impl From<guest::Manifest> for service::Manifest {
    fn from(m: guest::Manifest) -> Self {
        let operations = m
            .operations
            .into_iter()
            .map(|op| {
                let declared = op.visibility.map(|v| match v {
                    guest::Visibility::Public => service::Visibility::Public,
                    guest::Visibility::Internal => service::Visibility::Internal,
                });
                let info = service::OperationInfo {
                    name: op.name,
                    compensated_by: op.compensated_by,
                    description: op.description,
                    // Decided by `Manifest::new` when not declared.
                    visibility: service::Visibility::Public,
                };
                (info, declared)
            })
            .collect();
        let destinations = m
            .destinations
            .into_iter()
            .map(|d| service::DeclaredDestination { url: d.url, methods: d.methods })
            .collect();
        service::Manifest { destinations, ..service::Manifest::new(m.name, operations, m.subscriptions) }
    }
}

impl From<service::Invocation> for guest::Invocation {
    fn from(call: service::Invocation) -> Self {
        guest::Invocation {
            operation: call.operation,
            input: call.input,
            idempotency_key: call.idempotency_key,
            correlation_id: call.correlation_id,
            attempt: call.attempt,
        }
    }
}

impl From<types::Failure> for service::Failure {
    fn from(failure: types::Failure) -> Self {
        match failure {
            types::Failure::Rejected(reason) => service::Failure::Rejected(reason),
            types::Failure::Transient(reason) => service::Failure::Transient(reason),
        }
    }
}

impl From<store::Entry> for wit_store::Entry {
    fn from(e: store::Entry) -> Self {
        wit_store::Entry { value: e.value, version: e.version }
    }
}

impl From<store::Conflict> for wit_store::Conflict {
    fn from(c: store::Conflict) -> Self {
        wit_store::Conflict { key: c.key, expected: c.expected, actual: c.actual }
    }
}
