//! Outside tools check what the host serves: schemathesis fuzzes the HTTP API against
//! its own OpenAPI document (`/openapi.json`), and promtool checks the metrics. Each
//! runs against the real `wasaga demo`. Each test installs its tool under target/ when
//! it is missing (schemathesis from PyPI, promtool from Debian's package); one it
//! cannot install fails the test and says what to install. Nothing is skipped.

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
#[tokio::test]
async fn schemathesis_finds_nothing_wrong_with_the_api() {
    let program = schemathesis();
    let data = tempfile::tempdir().unwrap();
    let demo = Demo::start(data.path(), &[]);
    let document: Value =
        Server::client().get(format!("{}/openapi.json", demo.1)).send().await.unwrap().json().await.unwrap();
    let operations: usize =
        document["paths"].as_object().unwrap().values().map(|p| p.as_object().unwrap().len()).sum();
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
    // Every operation but the one it reads the document from (`GET /openapi.json`,
    // which schemathesis leaves out unless told to take it) was selected and tested.
    let count = |label: &str| -> Option<usize> {
        let line = report.lines().find(|l| l.trim_start().starts_with(label))?;
        line.trim_start()[label.len()..].split_whitespace().next()?.parse().ok()
    };
    assert_eq!(count("Operations:"), Some(operations - 1), "selected:\n{report}");
    assert_eq!(count("Tested:"), Some(operations - 1), "tested:\n{report}");
    assert!(!report.contains("Errored:") && !report.contains("Skipped:"), "{report}");
}

/// promtool: the one on the PATH, else the one of Debian's `prometheus` package
/// fetched once into target/ (`apt-get download`, which needs no root, and `dpkg-deb
/// -x`), so that `cargo test` needs nothing installed by hand on Debian or Ubuntu.
fn promtool() -> PathBuf {
    let works = |program: &Path| {
        Command::new(program).arg("--version").output().is_ok_and(|out| out.status.success())
    };
    if works(Path::new("promtool")) {
        return PathBuf::from("promtool");
    }
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("promtool");
    let program = dir.join("usr/bin/promtool");
    if works(&program) {
        return program;
    }
    std::fs::create_dir_all(&dir).unwrap();
    let fetched = Command::new("apt-get").args(["download", "-q", "prometheus"]).current_dir(&dir).output();
    let said = match &fetched {
        Ok(out) => String::from_utf8_lossy(&out.stderr).into_owned(),
        Err(error) => error.to_string(),
    };
    assert!(
        fetched.is_ok_and(|out| out.status.success()),
        "the metrics test needs promtool: none on the PATH, and `apt-get download prometheus` failed ({}); \
         install it (Debian: apt-get install prometheus) or put it on the PATH",
        said.trim()
    );
    let deb = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|entry| Some(entry.ok()?.path()))
        .find(|path| path.extension().is_some_and(|e| e == "deb"))
        .expect("apt-get download leaves a .deb");
    let unpacked = Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&dir).status();
    assert!(unpacked.is_ok_and(|s| s.success()), "dpkg-deb -x {} failed", deb.display());
    assert!(works(&program), "{} does not run", program.display());
    program
}

/// promtool (Debian's `prometheus` package) finds no error and no lint problem in the
/// metrics of a demo that ran sagas, refused a call, and replayed one; a scraper that
/// asks for OpenMetrics gets it.
#[tokio::test]
async fn promtool_accepts_the_metrics() {
    let promtool = promtool();
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
    let mut promtool = Command::new(promtool)
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

/// Spans as a loopback OTLP/HTTP receiver gets them: every `resourceSpans` body POSTed
/// to `/v1/traces`.
type Received = std::sync::Arc<std::sync::Mutex<Vec<Value>>>;

async fn otlp_receiver() -> (String, Received) {
    use axum::routing::post;
    let received = Received::default();
    let sink = received.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        post(move |axum::Json(body): axum::Json<Value>| {
            let sink = sink.clone();
            async move {
                let spans = body["resourceSpans"].as_array().into_iter().flatten();
                let spans = spans.flat_map(|r| r["scopeSpans"].as_array().into_iter().flatten());
                let spans = spans.flat_map(|s| s["spans"].as_array().into_iter().flatten());
                sink.lock().unwrap().extend(spans.cloned());
                axum::Json(json!({}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, received)
}

/// The spans of `trace` (hex), once `enough` holds of them (at most 20 s).
async fn spans_of(received: &Received, trace: &str, enough: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    for _ in 0..200 {
        let spans: Vec<Value> =
            received.lock().unwrap().iter().filter(|s| s["traceId"] == trace).cloned().collect();
        if enough(&spans) {
            return spans;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let spans: Vec<Value> =
        received.lock().unwrap().iter().filter(|s| s["traceId"] == trace).cloned().collect();
    panic!("the trace {trace} never had what was expected: {spans:#?}");
}

fn named<'a>(spans: &'a [Value], name: &str) -> Vec<&'a Value> {
    spans.iter().filter(|s| s["name"] == name).collect()
}

fn attribute<'a>(span: &'a Value, key: &str) -> &'a Value {
    let attributes = span["attributes"].as_array().unwrap();
    attributes.iter().find(|a| a["key"] == key).map_or(&Value::Null, |a| &a["value"])
}

/// With an OTLP endpoint, a saga started with a client's `traceparent` is one trace:
/// the client's span → the request's → each step's → the step's invocation (with the
/// plugin's digest and the attempt); and a choreographed order is one trace across its
/// deliveries: each delivery a child of the invocation that published its event, and
/// the subscriber's invocation a child of the delivery.
#[tokio::test]
async fn traces_follow_a_saga_and_an_event_chain() {
    let (endpoint, received) = otlp_receiver().await;
    let plugins = crate::support::plugins_dir(&["order", "inventory", "payment", "notification"]);
    let data = tempfile::tempdir().unwrap();
    let mut command = crate::support::wasaga();
    command.env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint).env("OTEL_SERVICE_NAME", "shop");
    let server =
        Server::start_with(command, plugins.path(), data.path(), &["--sagas", crate::support::SAGAS]);
    let client = Server::client();
    crate::support::seed_shop(&server, &client, 100, 1_000_000).await;

    // The saga.
    let (client_trace, client_span) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let input = json!({"order": "o-traced", "customer": "ada", "sku": "lamp", "qty": 1, "amount": 100});
    let response = client
        .post(format!("{}/v1/sagas/place-order?wait=20s", server.url))
        .header("Idempotency-Key", "traced-saga")
        .header("traceparent", format!("00-{client_trace}-{client_span}-01"))
        .json(&input)
        .send()
        .await
        .unwrap();
    let saga: Value = response.json().await.unwrap();
    assert_eq!(saga["status"], "completed", "{saga}");
    let steps: Vec<&str> =
        saga["steps"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    let spans = spans_of(&received, client_trace, |spans| {
        steps.iter().all(|step| spans.iter().any(|s| s["name"] == format!("saga place-order {step} do")))
            && spans.iter().filter(|s| s["name"].as_str().unwrap().starts_with("invoke ")).count()
                >= steps.len()
    })
    .await;
    let request = named(&spans, "POST /v1/sagas/{saga}");
    assert_eq!(request.len(), 1, "{spans:#?}");
    assert_eq!(request[0]["parentSpanId"], client_span, "the request's span is a child of the client's");
    assert_eq!(request[0]["kind"], 2);
    assert_eq!(attribute(request[0], "http.response.status_code"), &json!({"intValue": "200"}));
    for step in &steps {
        let step_span = named(&spans, &format!("saga place-order {step} do"));
        assert_eq!(step_span.len(), 1, "{step}: {spans:#?}");
        assert_eq!(step_span[0]["parentSpanId"], request[0]["spanId"], "{step} is a child of the request");
        assert_eq!(attribute(step_span[0], "wasaga.saga.id"), &json!({"stringValue": saga["id"]}));
        let calls: Vec<&Value> =
            spans.iter().filter(|s| s["parentSpanId"] == step_span[0]["spanId"]).collect();
        assert_eq!(calls.len(), 1, "{step}: one invocation: {spans:#?}");
        assert!(calls[0]["name"].as_str().unwrap().starts_with("invoke "), "{}", calls[0]);
        assert_eq!(attribute(calls[0], "wasaga.attempt"), &json!({"intValue": "1"}));
        let digest = attribute(calls[0], "wasaga.plugin.digest")["stringValue"].as_str().unwrap();
        assert!(digest.starts_with("sha256:"), "{digest}");
    }

    // The choreographed order: order-placed → stock-reserved → payment-completed → order-completed.
    let chain_trace = "0af7651916cd43dd8448eb211c80319c";
    let input = json!({"order": "o-chain", "customer": "ada", "sku": "lamp", "qty": 1, "amount": 100});
    let response = client
        .post(format!("{}/v1/services/order/place", server.url))
        .header("Idempotency-Key", "traced-chain")
        .header("traceparent", format!("00-{chain_trace}-b7ad6b7169203331-01"))
        .json(&input)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let topics = ["order-placed", "stock-reserved", "payment-completed", "order-completed"];
    let spans = spans_of(&received, chain_trace, |spans| {
        let deliveries = spans.iter().filter(|s| s["name"].as_str().unwrap().starts_with("deliver "));
        let delivered: Vec<&str> =
            deliveries.map(|s| attribute(s, "wasaga.event.topic")["stringValue"].as_str().unwrap()).collect();
        topics.iter().all(|t| delivered.contains(t))
    })
    .await;
    let by_id = |id: &Value| spans.iter().find(|s| s["spanId"] == *id);
    for delivery in spans.iter().filter(|s| s["name"].as_str().unwrap().starts_with("deliver ")) {
        assert_eq!(delivery["kind"], 5, "a delivery is a consumer span");
        let publisher = by_id(&delivery["parentSpanId"])
            .unwrap_or_else(|| panic!("{delivery} has no parent in {spans:#?}"));
        assert!(publisher["name"].as_str().unwrap().starts_with("invoke "), "{delivery} under {publisher}");
        let consumer: Vec<&Value> =
            spans.iter().filter(|s| s["parentSpanId"] == delivery["spanId"]).collect();
        assert_eq!(consumer.len(), 1, "{delivery}: {spans:#?}");
        assert!(consumer[0]["name"].as_str().unwrap().starts_with("invoke "));
    }
    // Walked up from the last event's delivery, the chain reaches the client's request.
    let last = spans
        .iter()
        .find(|s| attribute(s, "wasaga.event.topic") == &json!({"stringValue": "order-completed"}))
        .unwrap();
    let mut at = last;
    let mut hops = 0;
    while let Some(parent) = by_id(&at["parentSpanId"]) {
        at = parent;
        hops += 1;
    }
    assert_eq!(at["name"], "POST /v1/services/{service}/{operation}", "the root: {at}");
    assert_eq!(at["parentSpanId"], "b7ad6b7169203331");
    assert!(hops >= 7, "four deliveries and their publishers deep: {hops} hops");

    // A client that asks not to record (`-00`): nothing of its saga is, neither under its
    // trace nor as traces of their own.
    let unsampled = "1af7651916cd43dd8448eb211c80319c";
    let input = json!({"order": "o-quiet", "customer": "ada", "sku": "lamp", "qty": 1, "amount": 100});
    let response = client
        .post(format!("{}/v1/sagas/place-order?wait=20s", server.url))
        .header("Idempotency-Key", "quiet-saga")
        .header("traceparent", format!("00-{unsampled}-b7ad6b7169203331-00"))
        .json(&input)
        .send()
        .await
        .unwrap();
    let quiet: Value = response.json().await.unwrap();
    assert_eq!(quiet["status"], "completed", "{quiet}");
    // A span recorded would be sent within half a second; a later request's span shows
    // the exporter has sent what it held.
    let marker = "2af7651916cd43dd8448eb211c80319c";
    let response = client
        .get(format!("{}/v1/sagas/{}", server.url, quiet["id"].as_str().unwrap()))
        .header("traceparent", format!("00-{marker}-b7ad6b7169203331-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    spans_of(&received, marker, |spans| !spans.is_empty()).await;
    let received = received.lock().unwrap();
    let of_quiet = |s: &&Value| {
        s["traceId"] == unsampled || attribute(s, "wasaga.saga.id") == &json!({"stringValue": quiet["id"]})
    };
    let recorded: Vec<&Value> = received.iter().filter(of_quiet).collect();
    assert!(recorded.is_empty(), "an unsampled saga was recorded: {recorded:#?}");
}

/// A server stopped with SIGTERM sends the spans it holds before it exits (they would
/// wait up to half a second for their batch otherwise, and be lost with the process).
#[tokio::test]
async fn the_last_spans_are_sent_at_shutdown() {
    let (endpoint, received) = otlp_receiver().await;
    let plugins = crate::support::plugins_dir(&["echo"]);
    let data = tempfile::tempdir().unwrap();
    let mut command = crate::support::wasaga();
    command.env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint);
    let mut server = Server::start_with(command, plugins.path(), data.path(), &[]);
    let trace = "5bf92f3577b34da6a3ce929d0e0e4736";
    let response = Server::client()
        .get(format!("{}/v1/plugins", server.url))
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let term = Command::new("kill").args(["-TERM", &server.child.id().to_string()]).status().unwrap();
    assert!(term.success());
    // Waited for without blocking this runtime, which runs the receiver.
    let exited = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert!(exited.success(), "{exited:?}");
    let spans: Vec<Value> =
        received.lock().unwrap().iter().filter(|s| s["traceId"] == trace).cloned().collect();
    assert_eq!(named(&spans, "GET /v1/plugins").len(), 1, "{spans:#?}");
}

/// An endpoint that is not an http(s) URL, or headers that are not `name=value`, stop
/// the server at start with the reason, rather than leave it running without traces.
#[test]
fn a_bad_otlp_setting_is_refused_at_start() {
    let plugins = crate::support::plugins_dir(&["echo"]);
    let data = tempfile::tempdir().unwrap();
    let serve = |env: &[(&str, &str)]| {
        let mut command = crate::support::wasaga();
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--plugins"])
            .arg(plugins.path())
            .arg("--data")
            .arg(data.path());
        command.envs(env.iter().copied()).output().unwrap()
    };
    for (env, expected) in [
        (&[("OTEL_EXPORTER_OTLP_ENDPOINT", "localhost:4318")][..], "is not an http:// or https:// URL"),
        (
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9"),
                ("OTEL_EXPORTER_OTLP_HEADERS", "api-key"),
            ][..],
            "`api-key` is not name=value",
        ),
    ] {
        let out = serve(env);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(expected), "{env:?}: {stderr}");
    }
}
