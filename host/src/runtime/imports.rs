//! The host side of the plugin's imports: `store` and `events` over the call's
//! [`Transaction`], and `log` into the host log.

use super::bindings::{events, log, wit_store};
use super::sandbox::CallState;
use crate::store::{StoreError, Transaction};
use crate::text::printable;

/// A store or events import used where there is no transaction: in `describe`.
#[derive(Debug, thiserror::Error)]
#[error("the store and events imports are not available in `describe`")]
struct NoTransaction;

impl CallState {
    fn tx(&mut self) -> wasmtime::Result<&mut Transaction> {
        self.tx.as_mut().ok_or_else(|| NoTransaction.into())
    }
}

/// Refusals go back to the plugin; a failing backend ends the call (it must not
/// continue as if the store had answered).
fn refusal(error: StoreError) -> wasmtime::Result<wit_store::StoreError> {
    match error {
        StoreError::Conflict(c) => Ok(wit_store::StoreError::Conflict(c.into())),
        StoreError::Invalid(message) => Ok(wit_store::StoreError::Invalid(message)),
        failed @ (StoreError::Unavailable(_)
        | StoreError::Duplicate(_)
        | StoreError::Overloaded(_)
        | StoreError::Moved(_)) => Err(failed.into()),
    }
}

fn answer<T>(result: Result<T, StoreError>) -> wasmtime::Result<Result<T, wit_store::StoreError>> {
    match result {
        Ok(value) => Ok(Ok(value)),
        Err(error) => refusal(error).map(Err),
    }
}

impl wit_store::Host for CallState {
    async fn get(&mut self, key: String) -> wasmtime::Result<Option<wit_store::Entry>> {
        Ok(self.tx()?.get(&key).await?.map(Into::into))
    }

    async fn set(
        &mut self,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<u64, wit_store::StoreError>> {
        answer(self.tx()?.set(&key, value).await)
    }

    async fn put(
        &mut self,
        key: String,
        value: Vec<u8>,
        expected: Option<u64>,
    ) -> wasmtime::Result<Result<u64, wit_store::StoreError>> {
        answer(self.tx()?.put(&key, value, expected).await)
    }

    async fn delete(
        &mut self,
        key: String,
        expected: Option<u64>,
    ) -> wasmtime::Result<Result<(), wit_store::StoreError>> {
        answer(self.tx()?.delete(&key, expected).await)
    }

    async fn scan(
        &mut self,
        prefix: String,
        start_after: Option<String>,
        limit: u32,
    ) -> wasmtime::Result<Vec<(String, wit_store::Entry)>> {
        let rows = self.tx()?.scan(&prefix, start_after.as_deref(), limit as usize).await?;
        Ok(rows.into_iter().map(|(key, entry)| (key, entry.into())).collect())
    }
}

impl events::Host for CallState {
    fn publish(
        &mut self,
        topic: String,
        payload: Vec<u8>,
        correlation_id: Option<String>,
    ) -> wasmtime::Result<()> {
        // `publish` has no error in the contract: an event over the limits is a bug
        // in the plugin, and silently dropping it would lose data, so the call ends.
        Ok(self.tx()?.publish(&topic, payload, correlation_id)?)
    }
}

impl log::Host for CallState {
    fn log(&mut self, level: log::Level, message: String) -> wasmtime::Result<()> {
        if self.logged + message.len() > super::sandbox::LOG_CAP {
            self.log_dropped += message.len();
            return Ok(());
        }
        self.logged += message.len();
        let (service, operation) = (&*self.service, &self.operation);
        match level {
            log::Level::Debug => {
                tracing::debug!(target: "wasaga::plugin", service, operation, "{}", printable(&message))
            }
            log::Level::Info => {
                tracing::info!(target: "wasaga::plugin", service, operation, "{}", printable(&message))
            }
            log::Level::Warn => {
                tracing::warn!(target: "wasaga::plugin", service, operation, "{}", printable(&message))
            }
            log::Level::Error => {
                tracing::error!(target: "wasaga::plugin", service, operation, "{}", printable(&message))
            }
        }
        Ok(())
    }
}

impl super::bindings::types::Host for CallState {}
