//! Outside tools check what the host serves: schemathesis fuzzes the HTTP API against
//! its own OpenAPI document (`/openapi.json`), and promtool checks the metrics. Each
//! runs against the real `wasaga demo`. A missing tool fails the test and says what to
//! install; nothing is skipped.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{Value, json};

use crate::demo::Demo;
use crate::support::{ADMIN_TOKEN, Server};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

/// schemathesis, at the version `tests/api/requirements.txt` pins, in a venv of its own
/// under target/ (made once).
fn schemathesis() -> PathBuf {
    let requirements = root().join("tests/api/requirements.txt");
    let pinned = std::fs::read_to_string(&requirements).unwrap();
    let version = pinned.trim().strip_prefix("schemathesis==").expect("requirements.txt pins schemathesis");
    let venv = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("schemathesis");
    let program = venv.join("bin/schemathesis");
    let installed = Command::new(&program).arg("--version").output();
    if installed.is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains(version)) {
        return program;
    }
    let made = Command::new("python3").args(["-m", "venv"]).arg(&venv).status();
    assert!(
        made.is_ok_and(|s| s.success()),
        "the API test needs Python 3.10 or later with venv (Debian: python3-venv)"
    );
    let pip =
        Command::new(venv.join("bin/pip")).args(["install", "-q", "-r"]).arg(&requirements).output().unwrap();
    assert!(
        pip.status.success(),
        "pip install -r {}: {}",
        requirements.display(),
        String::from_utf8_lossy(&pip.stderr)
    );
    program
}

/// Every check and every phase of schemathesis (examples, coverage, fuzzing, and the
/// stateful phase, which follows the document's links), as an operator (so operator
/// routes are fuzzed too): no server error, no answer the document does not describe,
/// no bad input accepted, no good input refused. What the document cannot say is in
/// tests/api/schemathesis.toml, with the reason.
#[test]
fn schemathesis_finds_nothing_wrong_with_the_api() {
    let program = schemathesis();
    let data = tempfile::tempdir().unwrap();
    let demo = Demo::start(data.path(), &[]);
    let out = Command::new(program)
        .arg("--config-file")
        .arg(root().join("tests/api/schemathesis.toml"))
        .args(["run", &format!("{}/openapi.json", demo.1), "--checks", "all", "--no-color"])
        .args(["--header", &format!("Authorization: Bearer {ADMIN_TOKEN}")])
        .stdin(Stdio::null())
        // It keeps a cache in its working directory.
        .current_dir(env!("CARGO_TARGET_TMPDIR"))
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found something:\n{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Every phase ran, and every operation of the document was tested.
    for phase in ["Coverage", "Fuzzing", "Stateful"] {
        assert!(report.contains(&format!("✅ {phase}")), "the {phase} phase did not pass:\n{report}");
    }
    let selected = report.lines().find(|l| l.trim_start().starts_with("Tested:")).unwrap_or_default();
    assert!(selected.contains("Tested: 21"), "not every operation was tested ({selected}):\n{report}");
}

/// promtool (Debian's `prometheus` package) finds no error and no lint problem in the
/// metrics of a demo that ran sagas, refused a call, and replayed one; a scraper that
/// asks for OpenMetrics gets it.
#[tokio::test]
async fn promtool_accepts_the_metrics() {
    let version = Command::new("promtool").arg("--version").output();
    assert!(
        version.is_ok_and(|o| o.status.success()),
        "the metrics test needs promtool (Debian: apt-get install prometheus)"
    );
    let data = tempfile::tempdir().unwrap();
    let demo = Demo::start(data.path(), &["--traffic", "50"]);
    let client = Server::client();
    let url = &demo.1;
    // Sagas of every end, a refusal, a replay, a call of nothing: every family has samples.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    for _ in 0..2 {
        let response = client
            .post(format!("{url}/v1/services/inventory/release"))
            .header("Idempotency-Key", "metrics-release")
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 422);
    }
    client
        .post(format!("{url}/v1/services/nothing/here"))
        .header("Idempotency-Key", "k")
        .send()
        .await
        .unwrap();

    let text = client.get(format!("{url}/metrics")).send().await.unwrap();
    assert_eq!(text.headers()["content-type"], "text/plain; version=0.0.4; charset=utf-8");
    let text = text.text().await.unwrap();
    for family in
        ["wasaga_invocations_total", "wasaga_saga_seconds", "wasaga_sagas", "wasaga_idempotent_replays_total"]
    {
        assert!(text.contains(&format!("\n{family}")), "no {family} samples in:\n{text}");
    }
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut promtool.stdin.take().unwrap(), text.as_bytes()).unwrap();
    let checked = promtool.wait_with_output().unwrap();
    let said =
        format!("{}{}", String::from_utf8_lossy(&checked.stdout), String::from_utf8_lossy(&checked.stderr));
    assert!(
        checked.status.success() && said.trim().is_empty(),
        "promtool check metrics:\n{said}\non:\n{text}"
    );

    let open = client
        .get(format!("{url}/metrics"))
        .header("Accept", "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5")
        .send()
        .await
        .unwrap();
    assert!(open.headers()["content-type"].to_str().unwrap().starts_with("application/openmetrics-text"));
    assert!(open.text().await.unwrap().ends_with("# EOF\n"));
    let _: Value = client.get(format!("{url}/openapi.json")).send().await.unwrap().json().await.unwrap();
}
