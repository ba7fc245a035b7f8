//! Helpers shared by the end-to-end tests.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use wasaga::app::{App, AppConfig};
use wasaga::http::{Access, AppState, Secret, router};
use wasaga::invoke::InvokeOptions;
use wasaga::runtime::{Limits, Plugin, Runtime, RuntimeOptions};
use wasaga::service::Invocation;

/// The admin token of every server the tests start (through `WASAGA_ADMIN_TOKEN`).
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// One compile cache for every `wasaga` of the suite (each server has a data directory
/// of its own): the same few components are loaded by a hundred servers.
pub const COMPILE_CACHE: &str = concat!(env!("CARGO_TARGET_TMPDIR"), "/compiled");

/// The `wasaga` binary built for these tests, with [`ADMIN_TOKEN`] in its environment
/// (so servers have an operator, and the CLI's operator commands send it).
pub fn wasaga() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_wasaga"));
    with_test_env(&mut command);
    command
}

/// The `wasaga` binary run by `program` (`strace`, `unshare`, ...) with `args` before
/// it, and the environment of [`wasaga`].
pub fn wasaga_under(program: &str, args: &[&str]) -> Command {
    let mut command = Command::new(program);
    command.args(args).arg(env!("CARGO_BIN_EXE_wasaga"));
    with_test_env(&mut command);
    command
}

fn with_test_env(command: &mut Command) {
    command.env("WASAGA_LOG", "warn").env("WASAGA_ADMIN_TOKEN", ADMIN_TOKEN);
    command.env("WASAGA_COMPILE_CACHE", COMPILE_CACHE);
    for name in ["WASAGA_API_TOKEN", "WASAGA_ADMIN_TOKEN_FILE", "WASAGA_API_TOKEN_FILE"] {
        command.env_remove(name);
    }
}

/// The saga definitions of the demo.
pub const SAGAS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../plugins/sagas");

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
        correlation_id: format!("test-{operation}"),
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
    _data: Option<tempfile::TempDir>,
    _plugins: Option<tempfile::TempDir>,
}

impl Server {
    /// A server over `plugins` with a fresh data directory.
    pub fn start(plugins: &Path) -> Server {
        let data = tempfile::tempdir().unwrap();
        let mut server = Server::start_in(plugins, data.path(), &[]);
        server._data = Some(data);
        server
    }

    /// A server over its own copies of the named guests, with a fresh data directory.
    pub fn with_plugins(names: &[&str]) -> Server {
        let plugins = plugins_dir(names);
        let mut server = Server::start(plugins.path());
        server._plugins = Some(plugins);
        server
    }

    /// A server over the demo's services and its saga definitions, with a fresh data
    /// directory and the extra flags.
    pub fn with_sagas(args: &[&str]) -> Server {
        let plugins = plugins_dir(&["inventory", "payment", "order", "notification"]);
        let data = tempfile::tempdir().unwrap();
        let mut all = vec!["--sagas", SAGAS];
        all.extend_from_slice(args);
        let mut server = Server::start_in(plugins.path(), data.path(), &all);
        server._plugins = Some(plugins);
        server._data = Some(data);
        server
    }

    /// A server over `plugins` and the data directory `data`, with extra flags.
    pub fn start_in(plugins: &Path, data: &Path, args: &[&str]) -> Server {
        Server::start_with(wasaga(), plugins, data, args)
    }

    /// Like [`Server::start_in`], from a `wasaga` command prepared by the caller (its
    /// environment, say).
    pub fn start_with(command: Command, plugins: &Path, data: &Path, args: &[&str]) -> Server {
        Server::start_logging(command, plugins, data, args, Stdio::inherit())
    }

    /// Like [`Server::start_with`], with the server's log (its stderr) sent to `log`.
    pub fn start_logging(
        mut command: Command,
        plugins: &Path,
        data: &Path,
        args: &[&str],
        log: Stdio,
    ) -> Server {
        let mut child = command
            .args(["serve", "--listen", "127.0.0.1:0", "--plugins"])
            .arg(plugins)
            .arg("--data")
            .arg(data)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("starting wasaga serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line from wasaga serve: {line:?}"))
            .to_owned();
        Server { child, url, _data: None, _plugins: None }
    }

    /// An HTTP client that acts as the operator: it sends [`ADMIN_TOKEN`], unless a
    /// request sets its own `Authorization`.
    pub fn client() -> reqwest::Client {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert("authorization", format!("Bearer {ADMIN_TOKEN}").parse().unwrap());
        reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(256)
            .default_headers(headers)
            .build()
            .unwrap()
    }

    /// An HTTP client without a token: any client on the network.
    pub fn anonymous() -> reqwest::Client {
        reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap()
    }

    /// `POST /v1/services/{service}/{operation}` with an idempotency key.
    pub fn invoke(
        &self,
        client: &reqwest::Client,
        path: &str,
        key: &str,
        body: &serde_json::Value,
    ) -> reqwest::RequestBuilder {
        client
            .post(format!("{}/v1/services/{path}", self.url))
            .header("Idempotency-Key", key)
            .header("Content-Type", "application/json")
            .body(body.to_string())
    }

    /// The value of a record, or None when it does not exist.
    pub async fn record(
        &self,
        client: &reqwest::Client,
        service: &str,
        key: &str,
    ) -> Option<serde_json::Value> {
        let response =
            client.get(format!("{}/v1/services/{service}/records/{key}", self.url)).send().await.unwrap();
        match response.status().as_u16() {
            200 => Some(response.json().await.unwrap()),
            404 => None,
            other => panic!("GET record {key}: {other} {}", response.text().await.unwrap()),
        }
    }

    /// Keeps the plugins and data directories alive as long as the server.
    pub fn keep(&mut self, plugins: tempfile::TempDir, data: tempfile::TempDir) {
        self._plugins = Some(plugins);
        self._data = Some(data);
    }

    /// Kills the process at once (SIGKILL) and reaps it; its descendants first (a
    /// server run by `strace` goes on when strace dies).
    pub fn kill(&mut self) {
        for pid in descendants(self.child.id()) {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The processes below `pid`, from /proc.
fn descendants(pid: u32) -> Vec<u32> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten();
    let children: Vec<u32> = tasks
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|list| list.split_whitespace().filter_map(|p| p.parse().ok()).collect::<Vec<u32>>())
        .collect();
    children.iter().flat_map(|&child| descendants(child).into_iter().chain([child])).collect()
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Stock of `lamp`, an account for `ada` and one for `poor` (100 cents), as an operator.
pub async fn seed_shop(server: &Server, client: &reqwest::Client, lamps: u64, ada: i64) {
    let calls = [
        ("inventory/restock", "restock-lamp", serde_json::json!({"sku": "lamp", "qty": lamps})),
        ("payment/open-account", "open-ada", serde_json::json!({"customer": "ada", "balance": ada})),
        ("payment/open-account", "open-poor", serde_json::json!({"customer": "poor", "balance": 100})),
    ];
    for (path, key, body) in calls {
        let response = server.invoke(client, path, key, &body).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}: {}", response.text().await.unwrap());
    }
}

/// Starts `place-order` with `input` under idempotency key `key` (not waiting for it);
/// returns the saga's id.
pub async fn start_saga(
    server: &Server,
    client: &reqwest::Client,
    key: &str,
    input: &serde_json::Value,
) -> String {
    let response = client
        .post(format!("{}/v1/sagas/place-order", server.url))
        .header("Idempotency-Key", key)
        .json(input)
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.text().await.unwrap());
    let saga: serde_json::Value = response.json().await.unwrap();
    saga["id"].as_str().unwrap().to_owned()
}

/// Starts `place-order` with `input` under `key` at the server `base()` names, again and
/// again with the same key until one answers (servers are killed meanwhile): the same
/// key always means the same saga.
pub async fn start_until_accepted(
    client: &reqwest::Client,
    base: impl Fn() -> String,
    key: &str,
    input: &serde_json::Value,
) {
    loop {
        let sent = client
            .post(format!("{}/v1/sagas/place-order", base()))
            .header("Idempotency-Key", key)
            .json(input)
            .send()
            .await;
        match sent {
            Ok(response) if response.status().is_success() => return,
            Ok(response) if response.status().is_server_error() => {}
            Ok(response) => panic!("{key}: {}", response.text().await.unwrap()),
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The sagas `server` lists (up to 1,000), once every one is completed or compensated,
/// or as they are after a minute.
pub async fn settled_sagas(server: &Server, client: &reqwest::Client) -> Vec<serde_json::Value> {
    let mut sagas = Vec::new();
    for _ in 0..600 {
        let list: serde_json::Value = client
            .get(format!("{}/v1/sagas?limit=1000", server.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        sagas = list["sagas"].as_array().unwrap().clone();
        if sagas.iter().all(|s| s["status"] == "completed" || s["status"] == "compensated") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sagas
}

/// Polls the saga until it is finished or stuck (at most 20 s); returns it.
pub async fn wait_settled(server: &Server, client: &reqwest::Client, id: &str) -> serde_json::Value {
    for _ in 0..400 {
        let saga: serde_json::Value =
            client.get(format!("{}/v1/sagas/{id}", server.url)).send().await.unwrap().json().await.unwrap();
        if ["completed", "compensated", "stuck"].contains(&saga["status"].as_str().unwrap()) {
            return saga;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("saga {id} did not settle");
}

/// The host's shared state in this process, with the given plugins and options, on a
/// SQLite store in `data`, with [`ADMIN_TOKEN`] as its admin token.
pub async fn app_state(plugins: Vec<Plugin>, options: InvokeOptions, data: &Path) -> AppState {
    let app = App::start(AppConfig { invoke: options, ..AppConfig::new(data) }).await.unwrap();
    for plugin in plugins {
        app.registry().insert(plugin);
    }
    app.state(Access {
        admin_token: Some(Secret::new(ADMIN_TOKEN)),
        api_token: None,
        loopback_only: true,
        allowed_hosts: Vec::new(),
    })
}

/// The API in this process, over real HTTP on a free loopback port, with the given
/// plugins and options (see [`app_state`]). Returns the base URL.
pub async fn serve_in_process(plugins: Vec<Plugin>, options: InvokeOptions, data: &Path) -> String {
    let state = app_state(plugins, options, data).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router(state)).await });
    url
}

/// The alerts a webhook receiver on loopback got: its URL, and what arrived so far.
pub type Alerts = std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>;

/// Starts a webhook receiver for `--alert-webhook` on a free loopback port.
pub async fn alert_receiver() -> (String, Alerts) {
    use axum::routing::post;
    let received = Alerts::default();
    let sink = received.clone();
    let app = axum::Router::new().route(
        "/alert",
        post(move |axum::Json(alert): axum::Json<serde_json::Value>| {
            let sink = sink.clone();
            async move { sink.lock().unwrap().push(alert) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/alert", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (hook, received)
}

/// A `wasaga provider` (the card processor of the demo) on a free loopback port, with
/// `api_key` and `delay`; killed when dropped.
pub struct Provider {
    child: Child,
    pub url: String,
}

impl Provider {
    pub fn start(api_key: &str, delay: &str) -> Provider {
        let mut child = wasaga()
            .args(["provider", "--delay", delay])
            .env("WASAGA_PROVIDER_KEY", api_key)
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting wasaga provider");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let url =
            line.trim().strip_prefix("listening on ").expect("the provider says where it listens").to_owned();
        Provider { child, url }
    }

    /// Everything it did: customers, charges, refunds, requests.
    pub async fn ledger(&self) -> serde_json::Value {
        reqwest::get(format!("{}/v1/ledger", self.url)).await.unwrap().json().await.unwrap()
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
