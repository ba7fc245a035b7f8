//! Hot reload and plugin management through a real `wasaga serve`: replacing a
//! service under load without a failed call, through file changes and uploads;
//! refusing broken or incompatible versions; the admin token; removals.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{ADMIN_TOKEN, Server, guest, plugins_dir, wasaga};

const SWAPS: usize = 20;
const CLIENTS: usize = 32;

/// What the clients saw while the plugin was being replaced.
#[derive(Default)]
struct Load {
    versions: std::sync::Mutex<BTreeSet<String>>,
    failures: std::sync::Mutex<Vec<String>>,
    calls: AtomicU64,
}

/// 32 clients invoke `hello.greet` until `stop`.
fn start_load(url: &str, stop: &Arc<AtomicBool>, load: &Arc<Load>) -> Vec<tokio::task::JoinHandle<()>> {
    (0..CLIENTS)
        .map(|worker| {
            let (url, stop, load) = (url.to_owned(), stop.clone(), load.clone());
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    let sent = client
                        .post(format!("{url}/v1/services/hello/greet"))
                        .header("Idempotency-Key", format!("greet-{worker}-{n}"))
                        .body("{}")
                        .send()
                        .await;
                    load.calls.fetch_add(1, Ordering::Relaxed);
                    match sent {
                        Ok(response) if response.status() == 200 => {
                            let text = response.text().await.unwrap();
                            load.versions.lock().unwrap().insert(text);
                        }
                        Ok(response) => {
                            let failure =
                                format!("{}: {}", response.status(), response.text().await.unwrap());
                            load.failures.lock().unwrap().push(failure);
                        }
                        Err(error) => load.failures.lock().unwrap().push(error.to_string()),
                    }
                }
            })
        })
        .collect()
}

/// Waits until `hello` answers with `version` (at most 10 s).
async fn wait_for_version(server: &Server, client: &reqwest::Client, version: u32, probe: &mut u64) {
    for _ in 0..1000 {
        *probe += 1;
        let response =
            server.invoke(client, "hello/greet", &format!("probe-{probe}"), &json!({})).send().await.unwrap();
        if response.text().await.unwrap() == format!("{{\"version\":{version}}}") {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("version {version} never served");
}

async fn swap_under_load(server: &Server, swap: impl AsyncFn(usize) -> ()) {
    let client = Server::client();
    let (stop, load) = (Arc::new(AtomicBool::new(false)), Arc::new(Load::default()));
    let clients = start_load(&server.url, &stop, &load);
    let mut probe = 0;
    for i in 0..SWAPS {
        swap(i).await;
        wait_for_version(server, &client, if i % 2 == 0 { 2 } else { 1 }, &mut probe).await;
    }
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }
    let failures = std::mem::take(&mut *load.failures.lock().unwrap());
    assert!(
        failures.is_empty(),
        "{} of {} calls failed, e.g. {:?}",
        failures.len(),
        load.calls.load(Ordering::Relaxed),
        &failures[..failures.len().min(3)]
    );
    let versions = std::mem::take(&mut *load.versions.lock().unwrap());
    let allowed: BTreeSet<String> = ["{\"version\":1}", "{\"version\":2}"].map(String::from).into();
    assert!(versions.is_subset(&allowed), "answers from elsewhere: {versions:?}");
    assert_eq!(versions.len(), 2, "both versions answered");
    // The last swap installed version 1: only it answers now.
    for n in 0..20 {
        let response =
            server.invoke(&client, "hello/greet", &format!("after-{n}"), &json!({})).send().await.unwrap();
        assert_eq!(response.text().await.unwrap(), "{\"version\":1}");
    }
    let list: Value =
        client.get(format!("{}/v1/plugins", server.url)).send().await.unwrap().json().await.unwrap();
    let hello = list["plugins"].as_array().unwrap().iter().find(|p| p["service"] == "hello").unwrap();
    assert!(hello["previous"].as_array().unwrap().len() >= 2, "{hello}");
    eprintln!("{} calls while hello was replaced {SWAPS} times", load.calls.load(Ordering::Relaxed));
}

/// Replacing the file 20 times, alternating two versions, under 32 clients: no call
/// fails, every answer comes from one of the two, and after the last change only the
/// new version answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_the_file_under_load_fails_no_call() {
    let plugins = plugins_dir(&[]);
    std::fs::copy(guest("hello-v1"), plugins.path().join("hello.wasm")).unwrap();
    let data = tempfile::tempdir().unwrap();
    let server = Server::start_in(plugins.path(), data.path(), &[]);
    let dir = plugins.path().to_owned();
    swap_under_load(&server, async |i| {
        let version = if i % 2 == 0 { "hello-v2" } else { "hello-v1" };
        // As a deploy would: write beside it, then rename over it.
        let part = dir.join(".hello.wasm.part");
        std::fs::copy(guest(version), &part).unwrap();
        std::fs::rename(&part, dir.join("hello.wasm")).unwrap();
    })
    .await;
}

/// The same through the upload API; and a restart serves the last upload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploading_under_load_fails_no_call_and_survives_a_restart() {
    let plugins = plugins_dir(&[]);
    std::fs::copy(guest("hello-v1"), plugins.path().join("hello.wasm")).unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut server = Server::start_in(plugins.path(), data.path(), &[]);
    let client = Server::client();
    let url = server.url.clone();
    swap_under_load(&server, async |i| {
        let version = if i % 2 == 0 { "hello-v2" } else { "hello-v1" };
        let response = upload(&url, "hello", Some(ADMIN_TOKEN), std::fs::read(guest(version)).unwrap()).await;
        assert_eq!(response.0, 200, "{}", response.1);
    })
    .await;
    let last = upload(&url, "hello", Some(ADMIN_TOKEN), std::fs::read(guest("hello-v2")).unwrap()).await;
    assert_eq!(last.0, 200);
    server.kill();
    let server = Server::start_in(plugins.path(), data.path(), &[]);
    let after = server.invoke(&client, "hello/greet", "after-restart", &json!({})).send().await.unwrap();
    assert_eq!(after.text().await.unwrap(), "{\"version\":2}", "the upload outlives a restart");
}

/// Uploads `wasm` as `service`, with `token` if given (and no other).
/// Whether the store in `data` keeps an upload of `service` (read beside the server).
fn upload_kept(data: &Path, service: &str) -> bool {
    let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY;
    let conn = rusqlite::Connection::open_with_flags(data.join("wasaga.db"), flags).unwrap();
    let sql = "SELECT count(*) FROM plugin_uploads WHERE service = ?1";
    conn.query_row(sql, [service], |row| row.get::<_, i64>(0)).unwrap() == 1
}

async fn upload(url: &str, service: &str, token: Option<&str>, wasm: Vec<u8>) -> (u16, Value) {
    let mut request = Server::anonymous().put(format!("{url}/v1/plugins/{service}")).body(wasm);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn digest_of(client: &reqwest::Client, url: &str, service: &str) -> Value {
    let list: Value = client.get(format!("{url}/v1/plugins")).send().await.unwrap().json().await.unwrap();
    list["plugins"].as_array().unwrap().iter().find(|p| p["service"] == service).unwrap()["digest"].clone()
}

/// Broken uploads are refused with the reason and the old version still answers:
/// not wasm, another world, another service, an operation a saga uses gone. A missing
/// or wrong token changes nothing.
#[tokio::test]
async fn bad_uploads_and_tokens_change_nothing() {
    let server = Server::with_sagas(&[]);
    let client = Server::client();
    let url = server.url.clone();
    let before = digest_of(&client, &url, "inventory").await;
    let read = |name: &str| std::fs::read(guest(name)).unwrap();
    let token = Some(ADMIN_TOKEN);
    let cases = [
        (token, b"not wasm".to_vec(), 400, "not a WebAssembly file"),
        (token, read("stranger"), 422, "not a plugin of the wasaga:plugin/plugin world"),
        (token, read("payment"), 422, "the file holds service `payment`, not `inventory`"),
        (
            token,
            read("old-inventory"),
            409,
            "saga `place-order` step `reserve-stock` needs operation `release` of `inventory`",
        ),
        (None, read("inventory"), 401, "send `Authorization: Bearer <admin token>`"),
        (Some("guess-guess-guess-guess"), read("inventory"), 401, "neither this server's admin token"),
    ];
    for (token, wasm, status, detail) in cases {
        let (got, problem) = upload(&url, "inventory", token, wasm).await;
        assert_eq!(got, status, "{problem}");
        assert!(problem["detail"].as_str().unwrap().contains(detail), "expected {detail:?} in {problem}");
        assert_eq!(digest_of(&client, &url, "inventory").await, before, "the old version still serves");
    }
    let list: Value = client.get(format!("{url}/v1/plugins")).send().await.unwrap().json().await.unwrap();
    let refusal =
        list["refused"].as_array().unwrap().iter().find(|r| r["file"] == "upload:inventory").unwrap();
    let error = refusal["error"].as_str().unwrap();
    assert!(error.contains("needs operation `release`"), "the last refused upload is reported: {error}");
    let restock = server
        .invoke(&client, "inventory/restock", "r-1", &json!({"sku": "x", "qty": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(restock.status(), 200);

    let delete = |service: &str, token: Option<&str>| {
        let mut request = Server::anonymous().delete(format!("{url}/v1/plugins/{service}"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    assert_eq!(delete("inventory", None).await.unwrap().status(), 401);
    let in_use = delete("inventory", token).await.unwrap();
    assert_eq!(in_use.status(), 409);
    let problem: Value = in_use.json().await.unwrap();
    assert!(problem["detail"].as_str().unwrap().contains("saga definition `place-order`"), "{problem}");
    assert_eq!(delete("nothing", token).await.unwrap().status(), 404);

    let (status, _) = upload(&url, "hello", token, read("hello-v1")).await;
    assert_eq!(status, 201, "a new service");
    assert_eq!(delete("hello", token).await.unwrap().status(), 204);
    let gone = server.invoke(&client, "hello/greet", "g-1", &json!({})).send().await.unwrap();
    assert_eq!(gone.status(), 404);
}

/// Without an admin token, plugin changes are refused (not open), and the refusal says
/// how to allow them.
#[tokio::test]
async fn without_a_token_the_admin_api_is_off() {
    let plugins = plugins_dir(&["echo"]);
    let data = tempfile::tempdir().unwrap();
    let mut command = crate::support::wasaga();
    command.env_remove("WASAGA_ADMIN_TOKEN");
    let server = Server::start_with(command, plugins.path(), data.path(), &[]);
    let wasm = std::fs::read(guest("echo")).unwrap();
    for token in [None, Some("anything-anything-anything")] {
        let (status, problem) = upload(&server.url, "echo", token, wasm.clone()).await;
        assert_eq!(status, 403, "{problem}");
        let detail = problem["detail"].as_str().unwrap();
        assert!(
            detail.contains("operator actions are off") && detail.contains("WASAGA_ADMIN_TOKEN"),
            "{detail}"
        );
    }
}

/// A file that fails to load leaves the version serving, and is reported.
#[tokio::test]
async fn a_broken_file_leaves_the_old_version_serving() {
    let plugins = plugins_dir(&[]);
    std::fs::copy(guest("hello-v1"), plugins.path().join("hello.wasm")).unwrap();
    let data = tempfile::tempdir().unwrap();
    let server = Server::start_in(plugins.path(), data.path(), &[]);
    let client = Server::client();
    std::fs::write(plugins.path().join("hello.wasm"), b"\0asm garbage").unwrap();
    let mut reported = false;
    for _ in 0..200 {
        let list: Value =
            client.get(format!("{}/v1/plugins", server.url)).send().await.unwrap().json().await.unwrap();
        if list["refused"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["file"].as_str().unwrap().ends_with("hello.wasm"))
        {
            reported = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(reported, "the broken file was never reported");
    let answer = server.invoke(&client, "hello/greet", "still", &json!({})).send().await.unwrap();
    assert_eq!(answer.text().await.unwrap(), "{\"version\":1}");
}

/// `wasaga plugin push`, `list` and `remove` against a running server; a refused push
/// or removal exits 1 with the reason.
#[tokio::test]
async fn the_plugin_commands_push_and_list() {
    let plugins = plugins_dir(&[]);
    std::fs::copy(guest("hello-v1"), plugins.path().join("hello.wasm")).unwrap();
    let data = tempfile::tempdir().unwrap();
    let server = Server::start_in(plugins.path(), data.path(), &[]);
    let url = server.url.clone();
    let run = move |args: Vec<String>| {
        let url = url.clone();
        tokio::task::spawn_blocking(move || {
            crate::support::wasaga().arg("plugin").args(&args).arg("--server").arg(&url).output().unwrap()
        })
    };
    let v2 = guest("hello-v2").to_string_lossy().into_owned();
    let out = run(vec!["push".into(), v2, "--service".into(), "hello".into()]).await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("hello now serves sha256:"));
    let answer = server.invoke(&Server::client(), "hello/greet", "k", &json!({})).send().await.unwrap();
    assert_eq!(answer.text().await.unwrap(), "{\"version\":2}");

    let stranger = guest("stranger").to_string_lossy().into_owned();
    let out = run(vec!["push".into(), stranger, "--service".into(), "hello".into()]).await.unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("refused: not a plugin of the wasaga:plugin/plugin world")
    );

    let out = run(vec!["list".into()]).await.unwrap();
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(listed.contains("hello") && listed.contains("1 earlier versions"), "{listed}");

    let out = run(vec!["remove".into(), "hello".into()]).await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello is no longer served\n");
    let out = run(vec!["list".into()]).await.unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("no plugin is served"));
    let out = run(vec!["remove".into(), "hello".into()]).await.unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no service `hello` is loaded (404"));
}

/// Saga definitions are watched too: a new definition becomes available, a broken
/// change is refused while the loaded one keeps working, a removed one goes.
#[tokio::test]
async fn saga_definitions_reload_and_bad_ones_are_refused() {
    let plugins = plugins_dir(&["inventory", "payment", "order", "notification"]);
    let sagas = tempfile::tempdir().unwrap();
    let place_order = sagas.path().join("place-order.toml");
    std::fs::copy(std::path::Path::new(crate::support::SAGAS).join("place-order.toml"), &place_order)
        .unwrap();
    let data = tempfile::tempdir().unwrap();
    let sagas_arg = sagas.path().to_string_lossy().into_owned();
    let server = Server::start_in(plugins.path(), data.path(), &["--sagas", &sagas_arg]);
    let client = Server::client();
    let start = async |name: &str, key: &str| {
        let input = json!({"order": key, "customer": "nobody", "sku": "x", "qty": 1, "amount": 1});
        client
            .post(format!("{}/v1/sagas/{name}?wait=10s", server.url))
            .header("Idempotency-Key", key)
            .json(&input)
            .send()
            .await
            .unwrap()
    };

    let quick = "name = \"quick-order\"\n[[step]]\nname = \"create\"\nservice = \"order\"\naction = \"create\"\ncompensation = \"cancel\"\n[[step]]\nname = \"complete\"\nservice = \"order\"\naction = \"complete\"\n";
    std::fs::write(sagas.path().join("quick-order.toml"), quick).unwrap();
    let mut status = 0;
    for n in 0..200 {
        status = start("quick-order", &format!("q-{n}")).await.status().as_u16();
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status, 200, "the new definition was never loaded");

    let broken =
        std::fs::read_to_string(&place_order).unwrap().replace("action = \"charge\"", "action = \"steal\"");
    std::fs::write(&place_order, broken).unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let saga: Value = start("place-order", "p-1").await.json().await.unwrap();
    let charge = saga["steps"].as_array().unwrap().iter().find(|s| s["name"] == "charge").unwrap();
    assert_eq!(charge["action"], "charge", "the broken change was refused; the loaded definition runs");

    std::fs::remove_file(sagas.path().join("quick-order.toml")).unwrap();
    let mut gone = false;
    for n in 0..200 {
        if start("quick-order", &format!("gone-{n}")).await.status() == 404 {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(gone, "the removed definition still starts sagas");
}

/// A push stays until the plugins directory's file really changes. Reading that file
/// (`cat`, `sha256sum`: open, read, close), touching it or writing the same bytes
/// again changes nothing, also across a restart; a new content is the latest change
/// and wins: while the server was down (the upload is discarded at start) or while it
/// runs. (Before: a `cat` reverted the push and deleted the kept upload.)
#[tokio::test]
async fn a_pushed_plugin_stays_until_the_file_really_changes() {
    let plugins = plugins_dir(&[]);
    let file = plugins.path().join("hello.wasm");
    let (v1, v2) = (std::fs::read(guest("hello-v1")).unwrap(), std::fs::read(guest("hello-v2")).unwrap());
    std::fs::write(&file, &v1).unwrap();
    let data = tempfile::tempdir().unwrap();
    let kept = || upload_kept(data.path(), "hello");
    // The plugins directory is given as a relative path, as people type it.
    let start = || {
        let mut command = crate::support::wasaga();
        command.current_dir(plugins.path().parent().unwrap());
        let relative = Path::new(plugins.path().file_name().unwrap());
        Server::start_with(command, relative, data.path(), &[])
    };
    let mut server = start();
    let client = Server::client();
    let version = async |server: &Server, key: &str| -> String {
        let response = server.invoke(&client, "hello/greet", key, &json!({})).send().await.unwrap();
        response.text().await.unwrap()
    };
    assert_eq!(version(&server, "a").await, "{\"version\":1}");
    assert_eq!(upload(&server.url, "hello", Some(ADMIN_TOKEN), v2.clone()).await.0, 200);
    assert_eq!(version(&server, "b").await, "{\"version\":2}");

    for command in [vec!["cat"], vec!["sha256sum"], vec!["touch"], vec!["chmod", "644"]] {
        let status = std::process::Command::new(command[0]).args(&command[1..]).arg(&file).output().unwrap();
        assert!(status.status.success(), "{command:?}");
    }
    std::fs::write(&file, &v1).unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        version(&server, "c").await,
        "{\"version\":2}",
        "reads, touches and the same bytes change nothing"
    );
    assert!(kept(), "the kept upload is still there");

    server.kill();
    let mut server = start();
    assert_eq!(
        version(&server, "d").await,
        "{\"version\":2}",
        "the upload wins at start: the file did not change"
    );

    server.kill();
    std::fs::write(&file, &v2).unwrap();
    let server = start();
    assert!(!kept(), "the file changed while the server was down: the upload is discarded");
    assert_eq!(version(&server, "e").await, "{\"version\":2}");

    std::fs::write(&file, &v1).unwrap();
    let mut now = String::new();
    for n in 0..200 {
        now = version(&server, &format!("f-{n}")).await;
        if now == "{\"version\":1}" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(now, "{\"version\":1}", "a new content while it runs is loaded");
}

/// How many components a server loaded by compiling them, and from its compile cache.
async fn loads(server: &Server) -> (u64, u64) {
    let metrics = Server::client().get(format!("{}/metrics", server.url)).send().await.unwrap();
    let text = metrics.text().await.unwrap();
    let count = |from: &str| {
        let line = format!("wasaga_plugin_loads_total{{from=\"{from}\"}} ");
        text.lines().find_map(|l| l.strip_prefix(&line)).map_or(0, |n| n.parse().unwrap())
    };
    (count("compilation"), count("cache"))
}

/// Compiled components are kept in the data directory: a swap back to a version
/// compiled before loads it from there, and so does every plugin at a restart; the
/// compile worker writes files a server loads, and refuses a broken component with
/// its own exit code; `--compile-cache off` compiles every time.
#[tokio::test]
async fn known_components_load_from_the_compile_cache() {
    let plugins = plugins_dir(&["echo"]);
    let hello = plugins.path().join("hello.wasm");
    std::fs::copy(guest("hello-v1"), &hello).unwrap();
    let data = tempfile::tempdir().unwrap();
    // The default place, not the suite's shared cache.
    let (mut command, cache) = (wasaga(), data.path().join("compiled"));
    command.env_remove("WASAGA_COMPILE_CACHE");
    let mut server = Server::start_with(command, plugins.path(), data.path(), &[]);
    assert_eq!(loads(&server).await, (2, 0), "both compiled at the first start");

    let (client, mut probe) = (Server::client(), 0);
    for (version, loaded) in [(2, (3, 0)), (1, (3, 1))] {
        let part = plugins.path().join(".hello.wasm.part");
        std::fs::copy(guest(&format!("hello-v{version}")), &part).unwrap();
        std::fs::rename(&part, &hello).unwrap();
        wait_for_version(&server, &client, version, &mut probe).await;
        assert_eq!(loads(&server).await, loaded, "after the swap to version {version}");
    }
    let kept = std::fs::read_dir(&cache).unwrap().count();
    assert_eq!(kept, 3, "echo, hello v1 and v2");

    server.kill();
    let mut server =
        Server::start_in(plugins.path(), data.path(), &["--compile-cache", cache.to_str().unwrap()]);
    assert_eq!(loads(&server).await, (0, 2), "a restart compiles nothing");
    server.kill();

    // The worker a server compiles in writes what a server loads: echo's file, written
    // again by `wasaga compile-worker` on its own, is loaded from the cache.
    let echo = std::fs::read(guest("echo")).unwrap();
    let digest = wasaga::runtime::PluginDigest::of(&echo).to_string();
    let named = |p: &std::path::PathBuf| p.file_name().unwrap().to_str().unwrap().starts_with(&digest[7..]);
    let file = std::fs::read_dir(&cache).unwrap().map(|e| e.unwrap().path()).find(named).unwrap();
    std::fs::remove_file(&file).unwrap();
    let compiled = compile_worker(&file, &echo);
    assert!(compiled.status.success(), "{}", String::from_utf8_lossy(&compiled.stderr));
    let mut server =
        Server::start_in(plugins.path(), data.path(), &["--compile-cache", cache.to_str().unwrap()]);
    assert_eq!(loads(&server).await, (0, 2), "the worker's file is loaded");
    server.kill();
    // A component that does not compile: exit 3, saying why, and no file.
    let bad = cache.join("bad.cwasm");
    let refused = compile_worker(&bad, b"\0asm\x0d\0\x01\0garbage");
    assert_eq!(refused.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("failed to parse WebAssembly"));
    assert!(!bad.exists());

    let server = Server::start_in(plugins.path(), data.path(), &["--compile-cache", "off"]);
    assert_eq!(loads(&server).await, (2, 0));
}

/// `wasaga compile-worker FILE` with `wasm` on its stdin.
fn compile_worker(file: &Path, wasm: &[u8]) -> std::process::Output {
    use std::io::Write;
    let mut child = wasaga()
        .arg("compile-worker")
        .arg(file)
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(wasm).unwrap();
    child.wait_with_output().unwrap()
}
