//! End-to-end tests: the real runtime with real wasm components built from plugins/,
//! and the real `wasaga` binary over HTTP on loopback. See tests/README.md.

mod cli;
mod crash;
mod demo;
mod ecosystem;
mod events;
mod history;
mod http_props;
mod invocations;
mod new_service;
mod outbound;
mod overload;
mod polyglot;
mod postgres;
mod provider;
mod readme;
mod reload;
mod retention;
mod runtime;
mod saga_crash;
mod sagas;
mod security;
mod serve;
mod storage_faults;
mod support;
mod verify;
