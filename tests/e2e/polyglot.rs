//! The demo's shop with `payment` in JavaScript and `notification` in Python (ports of
//! the Rust services, `plugins/js/payment` and `plugins/python/notification`, on
//! wasaga's SDKs), next to the Rust `inventory` and `order`: the saga crash test and
//! the choreographed flow's crash test pass with them, invariants and all; and the demo
//! serves them (`wasaga demo --service NAME=FILE`).
//!
//! They are built once per test run, as a user would: `wasaga new` for the language,
//! the service's source copied in, the project's own build (componentize-js from npm,
//! componentize-py from PyPI, at the versions the templates pin), into
//! `target/tmp/polyglot/`. A missing toolchain fails the tests and says so.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use crate::support::{COMPILE_CACHE, SAGAS, Server, guest, wasaga};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

/// Runs `command` in `dir`, failing with its output.
fn run(dir: &Path, command: &str) {
    let out = Command::new("bash")
        .args(["-o", "pipefail", "-c", command])
        .current_dir(dir)
        .env("WASAGA_COMPILE_CACHE", COMPILE_CACHE)
        .output()
        .unwrap_or_else(|e| panic!("running `{command}`: {e}"));
    assert!(
        out.status.success(),
        "`{command}` in {} exited {:?}:\n{}{}",
        dir.display(),
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Builds the service `name` of `plugins/<lang>/<name>/` into `out/<name>.wasm`.
fn build(out: &Path, lang: &str, name: &str, source: &str, steps: &[&str]) {
    let project = out.join(format!("{lang}-{name}"));
    if !project.exists() {
        let made = wasaga().args(["new", name, "--lang", lang, "--dir"]).arg(&project).output().unwrap();
        assert!(made.status.success(), "wasaga new: {}", String::from_utf8_lossy(&made.stderr));
    }
    // The service, the contract and the SDK as this wasaga has them now (a project
    // made by an earlier build keeps its own otherwise).
    std::fs::copy(root().join("plugins").join(lang).join(name).join(source), project.join(source)).unwrap();
    let _ = std::fs::remove_dir_all(project.join("wit"));
    for dir in ["wit", "wit/deps"] {
        std::fs::create_dir_all(project.join(dir)).unwrap();
        for entry in std::fs::read_dir(root().join(dir)).unwrap().flatten() {
            if entry.path().is_file() {
                std::fs::copy(entry.path(), project.join(dir).join(entry.file_name())).unwrap();
            }
        }
    }
    let sdk = if lang == "js" { "wasaga.js" } else { "wasaga.py" };
    std::fs::copy(root().join("host/templates").join(lang).join(sdk), project.join(sdk)).unwrap();
    for step in steps {
        run(&project, step);
    }
    std::fs::copy(project.join(format!("{name}.wasm")), out.join(format!("{name}.wasm"))).unwrap();
}

/// The directory holding the JavaScript `payment.wasm` and the Python `notification.wasm`.
pub(crate) fn built() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("polyglot");
        std::fs::create_dir_all(&out).unwrap();
        let npm = Command::new("npm").arg("--version").output().is_ok_and(|o| o.status.success());
        assert!(npm, "the JavaScript payment needs Node.js with npm (Debian: nodejs, npm)");
        build(
            &out,
            "js",
            "payment",
            "app.js",
            &["test -d node_modules || npm install --no-audit --no-fund", "npm run build"],
        );
        // A world beside `plugin` that also imports what wasaga does not provide.
        let needy = "mkdir -p wit/deps && printf 'package acme:lookup;\\ninterface dns { resolve: func(name: string) -> string; }\\n' \
            > wit/deps/acme.wit && printf '\\nworld needy { include plugin; import acme:lookup/dns; }\\n' >> wit/world.wit && \
            node -e \"import('@bytecodealliance/componentize-js').then(async ({ componentize }) => \
            require('fs').writeFileSync('needy.wasm', (await componentize({ sourcePath: 'app.js', witPath: 'wit', \
            worldName: 'needy' })).component))\"";
        build(&out, "js", "needy", "app.js", &["ln -sfn ../js-payment/node_modules node_modules", needy]);
        build(&out, "js", "sdk-check", "app.js", &["ln -sfn ../js-payment/node_modules node_modules", "npm run build"]);
        std::fs::rename(out.join("sdk-check.wasm"), out.join("sdk-check-js.wasm")).unwrap();
        let venv = Command::new("python3").args(["-m", "venv", "--help"]).output().is_ok_and(|o| o.status.success());
        assert!(venv, "the Python notification needs Python 3.10 or later with venv (Debian: python3-venv)");
        build(
            &out,
            "python",
            "notification",
            "app.py",
            &[
                "test -x .venv/bin/componentize-py || (python3 -m venv .venv && .venv/bin/pip install -q componentize-py==0.25.1)",
                ".venv/bin/componentize-py -d wit -w plugin componentize app -o notification.wasm",
            ],
        );
        build(
            &out,
            "python",
            "sdk-check",
            "app.py",
            &["../python-notification/.venv/bin/componentize-py -d wit -w plugin componentize app -o sdk-check.wasm"],
        );
        std::fs::rename(out.join("sdk-check.wasm"), out.join("sdk-check-python.wasm")).unwrap();
        out
    })
}

/// A plugins directory: `inventory` and `order` in Rust, `payment` in JavaScript,
/// `notification` in Python.
fn shop() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for name in ["inventory", "order"] {
        std::fs::copy(guest(name), dir.path().join(format!("{name}.wasm"))).unwrap();
    }
    for name in ["payment", "notification"] {
        let file = built().join(format!("{name}.wasm"));
        // An interpreter inside: megabytes, where the Rust services are ~130 KB.
        assert!(
            std::fs::metadata(&file).unwrap().len() > 4 << 20,
            "{} is not the interpreted one",
            file.display()
        );
        std::fs::copy(&file, dir.path().join(format!("{name}.wasm"))).unwrap();
    }
    dir
}

/// The saga crash test (`saga_crash.rs`: 300 sagas, 10 SIGKILLs, the records' invariants)
/// with the JavaScript payment and the Python notification.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sagas_across_sigkills_with_payment_in_javascript_and_notification_in_python() {
    let plugins = shop();
    let data = tempfile::tempdir().unwrap();
    let start = |_: usize| Server::start_in(plugins.path(), data.path(), &["--sagas", SAGAS]);
    crate::saga_crash::run_with_kills(1, 10, start).await;
}

/// The choreographed flow's crash test (`events.rs`) with the same services.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_choreographed_flow_across_sigkills_with_payment_in_javascript_and_notification_in_python() {
    let plugins = shop();
    crate::events::once_across_sigkills(plugins.path(), &[], Duration::ZERO).await;
}

/// `wasaga demo --service payment=... --service notification=...`: the demo serves the
/// JavaScript payment and the Python notification in place of its own, and its saga
/// completes and compensates with them.
#[tokio::test]
async fn the_demo_serves_payment_in_javascript_and_notification_in_python() {
    let data = tempfile::tempdir().unwrap();
    let (payment, notification) = (built().join("payment.wasm"), built().join("notification.wasm"));
    let mut child = wasaga()
        .args(["demo", "--listen", "127.0.0.1:0", "--data"])
        .arg(data.path())
        .arg("--service")
        .arg(format!("payment={}", payment.display()))
        .arg("--service")
        .arg(format!("notification={}", notification.display()))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let _demo = KillOnDrop(child);
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).unwrap();
    let url = line.trim().strip_prefix("listening on ").unwrap().to_owned();
    let client = Server::client();
    let seeded = format!("{url}/v1/services/payment/records/account/poor-paul");
    for _ in 0..500 {
        if client.get(&seeded).send().await.unwrap().status() == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let list: serde_json::Value =
        client.get(format!("{url}/v1/plugins")).send().await.unwrap().json().await.unwrap();
    for service in ["payment", "notification"] {
        let plugin = list["plugins"].as_array().unwrap().iter().find(|p| p["service"] == service).unwrap();
        assert!(plugin["size"].as_u64().unwrap() > 4 << 20, "the interpreted {service}: {plugin}");
    }
    let place = async |key: &str, customer: &str| -> serde_json::Value {
        let input =
            serde_json::json!({"order": key, "customer": customer, "sku": "lamp", "qty": 1, "amount": 2500});
        let url = format!("{url}/v1/sagas/place-order?wait=20s");
        let response = client.post(url).header("Idempotency-Key", key).json(&input).send().await.unwrap();
        response.json().await.unwrap()
    };
    assert_eq!(place("o-1", "ada").await["status"], "completed");
    assert_eq!(place("o-2", "poor-paul").await["status"], "compensated");
    let sent = client.get(format!("{url}/v1/services/notification/records/sent/o-1")).send().await.unwrap();
    assert_eq!(sent.json::<serde_json::Value>().await.unwrap(), serde_json::json!({"count": 1}));
}

/// A process killed when the test ends, passed or not.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A component that imports what the host does not provide is refused, and the
/// refusal names the import; one built with componentize-js's default features
/// (`fetch` through `wasi:http`, stdio, clocks, random) loads.
#[test]
fn plugin_check_names_an_import_the_host_does_not_provide() {
    let check = |file: &str| {
        wasaga()
            .args(["plugin", "check"])
            .arg(built().join(file))
            .env("WASAGA_COMPILE_CACHE", COMPILE_CACHE)
            .output()
            .unwrap()
    };
    let out = check("needy.wasm");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("it imports `acme:lookup/dns`"), "{stderr}");
    assert!(stderr.contains("which wasaga does not provide"), "{stderr}");

    let out = check("payment.wasm");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let built = std::fs::read_to_string(root().join("host/templates/js/build.mjs")).unwrap();
    assert!(!built.contains("disableFeatures"), "the template builds with the default features");
}

/// Every part of each SDK (`plugins/*/sdk-check`) run offline with `wasaga plugin run`:
/// both languages answer, write, delete, refuse a stale compare-and-set and publish alike.
#[test]
fn the_javascript_and_python_sdks_do_what_they_say() {
    let seed = built().join("sdk-check-records.json");
    std::fs::write(&seed, r#"{"c": 3, "x": {"y": 1}}"#).unwrap();
    let expected = "write   a = {\"n\":1} (version 1)\nwrite   b = 2 (version 1)\ndelete  c (version 2)\n\
                    event   t: {\"x\":1} (chain chain-1)\n";
    for lang in ["js", "python"] {
        let out = wasaga()
            .args(["plugin", "run"])
            .arg(built().join(format!("sdk-check-{lang}.wasm")))
            .args(["all", "{}", "--records"])
            .arg(&seed)
            .env("WASAGA_COMPILE_CACHE", COMPILE_CACHE)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{lang}: {}", String::from_utf8_lossy(&out.stderr));
        let (output, rest) = stdout.split_once('\n').unwrap();
        let output: serde_json::Value =
            serde_json::from_str(output.strip_prefix("output  ").unwrap()).unwrap();
        assert_eq!(output["v1"], 1, "{lang}: {output}");
        assert_eq!(output["v2"], 1, "{lang}: {output}");
        assert_eq!(output["conflict"], "record `a` is at version 1, not 7", "{lang}");
        assert_eq!(output["listed"], serde_json::json!(["a@1", "b@1", "x@1"]), "{lang}");
        assert_eq!(rest, expected, "{lang}");
    }
}
