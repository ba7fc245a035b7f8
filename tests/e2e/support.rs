//! Helpers shared by the end-to-end tests.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use wasaga::runtime::{Limits, Plugin, Runtime, RuntimeOptions};
use wasaga::service::Invocation;

/// The `wasaga` binary built for these tests.
pub fn wasaga() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_wasaga"));
    command.env("WASAGA_LOG", "warn");
    command
}

/// A built guest component, e.g. `echo`.
pub fn guest(name: &str) -> PathBuf {
    wasaga::guests::path(name)
}

/// A pooled runtime, as `wasaga serve` uses by default.
pub fn runtime() -> Runtime {
    Runtime::new(RuntimeOptions { max_concurrent_calls: 32, ..RuntimeOptions::default() }).unwrap()
}

pub async fn load(runtime: &Runtime, name: &str, limits: Limits) -> Plugin {
    let wasm = std::fs::read(guest(name)).unwrap();
    runtime.load(name, wasm, limits).await.unwrap_or_else(|e| panic!("loading {name}: {e}"))
}

pub fn call(operation: &str, input: &str) -> Invocation {
    Invocation {
        operation: operation.into(),
        input: input.as_bytes().to_vec(),
        idempotency_key: format!("test-{operation}"),
        correlation_id: None,
        attempt: 1,
    }
}

/// Copies the named guests into a fresh plugins directory.
pub fn plugins_dir(names: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for name in names {
        std::fs::copy(guest(name), dir.path().join(format!("{name}.wasm"))).unwrap();
    }
    dir
}

/// A `wasaga serve` process on a free loopback port; killed when dropped.
pub struct Server {
    pub child: Child,
    pub url: String,
    pub _data: tempfile::TempDir,
}

impl Server {
    pub fn start(plugins: &Path) -> Server {
        let data = tempfile::tempdir().unwrap();
        let mut child = wasaga()
            .args(["serve", "--listen", "127.0.0.1:0", "--plugins"])
            .arg(plugins)
            .arg("--data")
            .arg(data.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting wasaga serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line from wasaga serve: {line:?}"))
            .to_owned();
        Server { child, url, _data: data }
    }

    pub fn client() -> reqwest::Client {
        reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
