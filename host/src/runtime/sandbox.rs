//! What one call's `Store` holds, and the walls around it: an empty WASI context (no
//! files, environment, arguments, sockets or name lookups), `wasi:http` through the
//! host's policy (`outbound.rs`), captured stdout/stderr, and the memory cap.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::Limits;
use super::outbound::HttpHooks;
use crate::store::Transaction;

/// How much of a call's stdout and of its stderr is kept for the log; the rest is
/// counted and dropped, so a chatty plugin cannot fill the host's memory.
const OUTPUT_CAP: usize = 16 << 10;

/// How many bytes of messages one call may write through the `log` import; the rest
/// is counted and dropped, for the same reason.
pub(crate) const LOG_CAP: usize = 64 << 10;

/// The data of one call's `Store`.
pub(crate) struct CallState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    hooks: HttpHooks,
    table: ResourceTable,
    pub(crate) limiter: MemoryCap,
    pub(crate) stdout: Captured,
    pub(crate) stderr: Captured,
    /// The invocation's transaction; `None` during `describe`, where store and events
    /// imports trap.
    pub(crate) tx: Option<Transaction>,
    /// Tags for the plugin's log lines.
    pub(crate) service: Arc<str>,
    pub(crate) operation: String,
    /// Bytes logged through the `log` import so far, and dropped past [`LOG_CAP`].
    pub(crate) logged: usize,
    pub(crate) log_dropped: usize,
}

impl CallState {
    pub(crate) fn new(
        service: Arc<str>,
        operation: String,
        limits: &Limits,
        tx: Option<Transaction>,
        outbound: Option<crate::outbound::Call>,
    ) -> Self {
        let stdout = Captured::default();
        let stderr = Captured::default();
        // Nothing is granted: WasiCtxBuilder starts with no preopens, no environment,
        // no arguments, empty stdin, and a socket check that denies every address.
        // Name lookups and TCP/UDP are switched off as well, so no socket is created.
        let wasi = WasiCtxBuilder::new()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_ip_name_lookup(false)
            .allow_tcp(false)
            .allow_udp(false)
            .build();
        CallState {
            wasi,
            http: WasiHttpCtx::new(),
            hooks: HttpHooks { call: outbound },
            table: ResourceTable::new(),
            limiter: MemoryCap { limit: limits.memory_bytes, exceeded: false },
            stdout,
            stderr,
            tx,
            service,
            operation,
            logged: 0,
            log_dropped: 0,
        }
    }

    /// Why this run's HTTP requests are not the ones an earlier run of its invocation
    /// made, if they are not.
    pub(crate) fn diverged(&self) -> Option<String> {
        self.hooks.call.as_ref()?.diverged()
    }

    /// Sends what the plugin printed to the host log, tagged with the service.
    pub(crate) fn flush_output(&self) {
        for (stream, captured) in [("stdout", &self.stdout), ("stderr", &self.stderr)] {
            let (text, dropped) = captured.take();
            for line in text.lines() {
                let line = crate::text::printable(line);
                tracing::info!(target: "wasaga::plugin", service = %self.service, stream, "{line}");
            }
            if dropped > 0 {
                tracing::warn!(target: "wasaga::plugin", service = %self.service, stream, dropped, "plugin output over {OUTPUT_CAP} bytes dropped");
            }
        }
        if self.log_dropped > 0 {
            let dropped = self.log_dropped;
            tracing::warn!(target: "wasaga::plugin", service = %self.service, dropped, "plugin log over {LOG_CAP} bytes in one call dropped");
        }
    }
}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl WasiHttpView for CallState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: &mut self.hooks }
    }
}

/// The memory cap of one instance. Refusing a grow with an error (rather than letting
/// `memory.grow` return -1) traps at once with a cause the host can name.
#[derive(Debug)]
pub(crate) struct MemoryCap {
    pub(crate) limit: u64,
    pub(crate) exceeded: bool,
}

/// The error a call ends with when it asks for more memory than its cap.
#[derive(Debug, thiserror::Error)]
#[error("memory limit of {limit} bytes exceeded (asked for {desired} bytes)")]
pub(crate) struct MemoryLimitExceeded {
    pub(crate) limit: u64,
    pub(crate) desired: usize,
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired as u64 > self.limit {
            self.exceeded = true;
            return Err(MemoryLimitExceeded { limit: self.limit, desired }.into());
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

/// A plugin's stdout or stderr: the first [`OUTPUT_CAP`] bytes kept, the rest counted.
#[derive(Debug, Clone, Default)]
pub(crate) struct Captured(Arc<Mutex<CapturedBytes>>);

#[derive(Debug, Default)]
struct CapturedBytes {
    kept: Vec<u8>,
    dropped: usize,
}

impl Captured {
    fn push(&self, bytes: &[u8]) {
        let mut buf = self.0.lock().expect("output mutex poisoned");
        let room = OUTPUT_CAP.saturating_sub(buf.kept.len());
        let (keep, drop) = bytes.split_at(bytes.len().min(room));
        buf.kept.extend_from_slice(keep);
        buf.dropped += drop.len();
    }

    /// The text kept so far and the count of bytes dropped; clears both.
    pub(crate) fn take(&self) -> (String, usize) {
        let mut buf = self.0.lock().expect("output mutex poisoned");
        let text = String::from_utf8_lossy(&buf.kept).into_owned();
        let dropped = buf.dropped;
        *buf = CapturedBytes::default();
        (text, dropped)
    }

    /// The last `n` bytes of text kept, without clearing (for error messages).
    pub(crate) fn tail(&self, n: usize) -> String {
        let buf = self.0.lock().expect("output mutex poisoned");
        let start = buf.kept.len().saturating_sub(n);
        String::from_utf8_lossy(&buf.kept[start..]).trim().to_owned()
    }
}

impl IsTerminal for Captured {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Captured {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl OutputStream for Captured {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        // Always writable: output past the cap is dropped, never refused, so that
        // printing can never make a plugin fail.
        Ok(64 << 10)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for Captured {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for Captured {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.push(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captured_output_keeps_the_first_bytes_and_counts_the_rest() {
        let out = Captured::default();
        out.push(&vec![b'a'; OUTPUT_CAP - 1]);
        out.push(b"bc");
        let (text, dropped) = out.take();
        assert_eq!(text.len(), OUTPUT_CAP);
        assert!(text.ends_with('b'));
        assert_eq!(dropped, 1);
        assert_eq!(out.take(), (String::new(), 0), "take clears");
    }
}
