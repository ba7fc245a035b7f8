//! The runtime with real components: describe and handle, the store imports, and the
//! sandbox against plugins that misbehave on purpose.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wasaga::runtime::{CallError, Limits, LoadError};
use wasaga::service::Failure;
use wasaga::store::sqlite::SqliteStore;
use wasaga::store::{ChangeSet, Commit, Event, Store, Transaction, TxLimits};

use crate::support::{call, guest, load, runtime};

async fn commit(store: &SqliteStore, changes: ChangeSet) {
    let commit = Commit { service: "echo".into(), changes, ..Commit::default() };
    store.commit(commit).await.unwrap();
}

/// A store of its own for each test, removed after it.
fn scratch() -> Arc<SqliteStore> {
    Arc::new(SqliteStore::temporary().unwrap())
}

fn tx(store: &SqliteStore, service: &str) -> Transaction {
    Transaction::new(store.snapshot(service).unwrap(), TxLimits::default())
}

/// `describe` runs at load: the manifest, the digest of the bytes and the size are kept.
#[tokio::test]
async fn echo_is_described_at_load() {
    let plugin = load(&runtime(), "echo", Limits::default()).await;
    assert_eq!(plugin.service(), "echo");
    let ops: Vec<&str> = plugin.manifest().operations.iter().map(|o| o.name.as_str()).collect();
    assert!(ops.contains(&"echo") && ops.contains(&"set") && ops.contains(&"scan"), "{ops:?}");
    let bytes = std::fs::read(guest("echo")).unwrap();
    assert_eq!(plugin.size(), bytes.len());
    assert_eq!(plugin.digest(), wasaga::runtime::PluginDigest::of(&bytes));
    assert!(plugin.digest().to_string().starts_with("sha256:"));
}

/// `handle` returns the plugin's output, and failures come back as the plugin chose them.
#[tokio::test]
async fn echo_handles_calls_and_reports_failures() {
    let plugin = load(&runtime(), "echo", Limits::default()).await;
    let store = scratch();
    let out = plugin.invoke(call("echo", "hello, wasm"), tx(&store, "echo"), None).await.unwrap();
    assert_eq!(out.result.unwrap(), b"hello, wasm");

    let out = plugin
        .invoke(call("fail", r#"{"kind":"rejected","reason":"out of stock"}"#), tx(&store, "echo"), None)
        .await
        .unwrap();
    assert_eq!(out.result, Err(Failure::Rejected("out of stock".into())));
    let out = plugin
        .invoke(call("fail", r#"{"kind":"transient","reason":"try later"}"#), tx(&store, "echo"), None)
        .await
        .unwrap();
    assert_eq!(out.result, Err(Failure::Transient("try later".into())));

    let err = plugin.invoke(call("nope", ""), tx(&store, "echo"), None).await.unwrap_err();
    assert_eq!(err.to_string(), "service `echo` has no operation `nope`");
}

/// The store imports reach the transaction: writes are buffered in the call's change set,
/// become visible to the next call only once committed, and compare-and-set conflicts
/// are reported to the plugin.
#[tokio::test]
async fn echo_reads_and_writes_versioned_records() {
    let plugin = load(&runtime(), "echo", Limits::default()).await;
    let store = scratch();
    let run = async |op: &str, input: Value| {
        let out = plugin.invoke(call(op, &input.to_string()), tx(&store, "echo"), None).await.unwrap();
        (out.result.map(|bytes| serde_json::from_slice::<Value>(&bytes).unwrap()), out.changes)
    };

    let (result, changes) = run("set", json!({"key": "greeting", "value": "hi"})).await;
    assert_eq!(result.unwrap(), json!({"key": "greeting", "version": 1}));
    assert_eq!(changes.writes.len(), 1);
    let (result, _) = run("get", json!({"key": "greeting"})).await;
    assert_eq!(result.unwrap()["value"], Value::Null, "not committed, not visible");

    commit(&store, changes).await;
    let (result, changes) = run("get", json!({"key": "greeting"})).await;
    assert_eq!(result.unwrap(), json!({"key": "greeting", "value": "hi", "version": 1}));
    assert_eq!(changes.reads, vec![("greeting".to_string(), 1)], "the read is in the read set");

    let (result, _) = run("put", json!({"key": "greeting", "value": "yo", "expected": 7})).await;
    assert_eq!(
        result.unwrap_err(),
        Failure::Rejected("conflict on `greeting`: expected Some(7), found Some(1)".into())
    );
    let (result, changes) = run("put", json!({"key": "greeting", "value": "yo", "expected": 1})).await;
    assert_eq!(result.unwrap()["version"], 2);
    commit(&store, changes).await;

    for key in ["list/a", "list/b", "list/c"] {
        let (_, changes) = run("set", json!({"key": key, "value": key})).await;
        commit(&store, changes).await;
    }
    let (result, _) = run("scan", json!({"prefix": "list/", "start_after": "list/a", "limit": 5})).await;
    let keys: Vec<Value> = result.unwrap().as_array().unwrap().iter().map(|r| r["key"].clone()).collect();
    assert_eq!(keys, [json!("list/b"), json!("list/c")]);

    let (result, changes) = run("publish", json!({"topic": "greeted", "payload": {"n": 1}})).await;
    result.unwrap();
    let event = |chain: Option<&str>| Event::new("greeted", br#"{"n":1}"#, chain);
    assert_eq!(changes.events, vec![event(None)], "in the invocation's own chain");
    let chained = json!({"topic": "greeted", "payload": {"n": 1}, "chain": "order-7"});
    let (result, changes) = run("publish", chained).await;
    result.unwrap();
    assert_eq!(changes.events, vec![event(Some("order-7"))], "in the chain the plugin named");
    // A chain no client could name ends the call: the event is never half-published.
    let bad = json!({"topic": "t", "payload": 1, "chain": "has space"}).to_string();
    let error = plugin.invoke(call("publish", &bad), tx(&store, "echo"), None).await.unwrap_err().to_string();
    assert!(error.contains("correlation id must be 1 to 255 visible ASCII"), "{error}");
}

/// A panicking plugin: the error names the plugin and carries the panic message, and
/// the next call to the same plugin works (every call has a fresh instance).
#[tokio::test]
async fn a_trap_is_a_clean_error_and_the_next_call_succeeds() {
    let plugin = load(&runtime(), "trap", Limits::default()).await;
    let store = scratch();
    let err = plugin.invoke(call("panic", "the answer was 41"), tx(&store, "trap"), None).await.unwrap_err();
    eprintln!("trap error: {err}");
    let CallError::Trap { service, message } = &err else { panic!("expected a trap, got {err:?}") };
    assert_eq!(service, "trap");
    assert!(message.contains("the answer was 41"), "panic message missing: {message}");
    assert!(err.to_string().starts_with("plugin `trap` trapped: "), "{err}");

    let out = plugin.invoke(call("ok", ""), tx(&store, "trap"), None).await.unwrap();
    assert_eq!(out.result.unwrap(), b"ok");
}

/// An endless loop is stopped at its deadline (and not long after), and meanwhile other
/// plugins keep answering on the same runtime's worker threads, even with more
/// spinners than threads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spinning_plugin_hits_its_deadline_while_others_keep_answering() {
    let runtime = runtime();
    let deadline = Duration::from_millis(1000);
    let spin = Arc::new(load(&runtime, "spin", Limits { deadline, ..Limits::default() }).await);
    let echo = Arc::new(load(&runtime, "echo", Limits::default()).await);
    let store = scratch();
    let finished = Arc::new(AtomicUsize::new(0));

    let spinners: Vec<_> = (0..3)
        .map(|_| {
            let (spin, tx, finished) = (spin.clone(), tx(&store, "spin"), finished.clone());
            tokio::spawn(async move {
                let started = Instant::now();
                let result = spin.invoke(call("forever", ""), tx, None).await;
                finished.fetch_add(1, Ordering::SeqCst);
                (result, started.elapsed())
            })
        })
        .collect();
    // On a worker thread too: it runs only if the spinners give their threads back.
    let answering = {
        let (echo, store, finished) = (echo.clone(), store.clone(), finished.clone());
        tokio::spawn(async move {
            let mut answered_meanwhile = 0;
            while finished.load(Ordering::SeqCst) == 0 {
                let out = echo.invoke(call("echo", "still here"), tx(&store, "echo"), None).await.unwrap();
                assert_eq!(out.result.unwrap(), b"still here");
                if finished.load(Ordering::SeqCst) == 0 {
                    answered_meanwhile += 1;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            answered_meanwhile
        })
    };
    for spinner in spinners {
        let (result, took) = spinner.await.unwrap();
        assert_eq!(result.unwrap_err(), CallError::Deadline { service: "spin".into(), limit: deadline });
        assert!(took >= deadline, "stopped before the deadline: {took:?}");
        assert!(took < deadline * 5, "stopped far too late: {took:?}");
    }
    let answered = answering.await.unwrap();
    assert!(answered >= 1, "echo never answered while the spinners ran");
    let out = spin.invoke(call("ok", ""), tx(&store, "spin"), None).await.unwrap();
    assert_eq!(out.result.unwrap(), b"ok", "the plugin still serves after a deadline");
}

/// Unbounded allocation stops at the memory cap with an error that says so.
#[tokio::test]
async fn a_memory_hog_hits_its_memory_limit() {
    let limit = 16 << 20;
    let plugin = load(&runtime(), "hog", Limits { memory_bytes: limit, ..Limits::default() }).await;
    let store = scratch();
    let err = plugin.invoke(call("grow", ""), tx(&store, "hog"), None).await.unwrap_err();
    assert_eq!(err, CallError::MemoryLimit { service: "hog".into(), limit });
    assert_eq!(err.to_string(), "plugin `hog` went over its memory limit of 16777216 bytes");
    let out = plugin.invoke(call("ok", ""), tx(&store, "hog"), None).await.unwrap();
    assert_eq!(out.result.unwrap(), b"ok");
}

/// Files, environment, arguments, sockets, name lookups, an HTTP request it does not
/// declare: every attempt is denied, and
/// a server listening on loopback sees no connection.
#[tokio::test]
async fn every_escape_attempt_is_denied() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let plugin = load(&runtime(), "escape", Limits::default()).await;
    let store = scratch();
    let input = format!(r#"{{"port":{port}}}"#);
    // Through the host's policy, as a served call is: nothing granted, nothing declared.
    let outbound = wasaga::outbound::Outbound::default().call(
        "escape".into(),
        plugin.destinations(),
        "key".into(),
        Default::default(),
        std::time::Instant::now() + std::time::Duration::from_secs(5),
        None,
    );
    let out = plugin.invoke(call("attempt", &input), tx(&store, "escape"), Some(outbound)).await.unwrap();
    let accepted = listener.accept();
    assert!(
        matches!(&accepted, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the plugin reached the loopback server: {accepted:?}"
    );
    let report: serde_json::Map<String, Value> = serde_json::from_slice(&out.result.unwrap()).unwrap();
    eprintln!("escape report: {report:#?}");
    assert!(report.len() >= 13, "the plugin reported fewer attempts than it makes: {report:?}");
    assert!(report["http request"].as_str().unwrap().contains("refused by the host's policy"), "{report:?}");
    for (attempt, outcome) in &report {
        let outcome = outcome.as_str().unwrap();
        assert!(outcome.starts_with("denied: "), "`{attempt}` was not denied: {outcome}");
    }
}

/// Files that are not plugins are refused with the reason.
#[tokio::test]
async fn files_that_are_not_plugins_are_refused_with_the_reason() {
    let runtime = runtime();
    let load = async |bytes: Vec<u8>| runtime.load("bad", bytes, Limits::default()).await.unwrap_err();

    assert!(matches!(load(b"hello, I am text".to_vec()).await, LoadError::NotWasm));
    let core = b"\0asm\x01\0\0\0".to_vec();
    assert!(matches!(load(core).await, LoadError::CoreModule));
    let mut truncated = std::fs::read(guest("echo")).unwrap();
    truncated.truncate(truncated.len() / 2);
    assert!(matches!(load(truncated).await, LoadError::Invalid(_)));

    let stranger = load(std::fs::read(guest("stranger")).unwrap()).await;
    let message = stranger.to_string();
    assert!(matches!(stranger, LoadError::WrongWorld(_)), "{stranger:?}");
    assert!(message.contains("wasaga:plugin/service@0.3.0") && message.contains("greet"), "{message}");

    // Built against the retired 0.1.0 and 0.2.0 contracts: the message says so, and
    // what to do.
    for (fixture, version) in [("legacy", "0.1.0"), ("legacy-v2", "0.2.0")] {
        let legacy = load(std::fs::read(guest(fixture)).unwrap()).await.to_string();
        assert!(
            legacy.contains(&format!(
                "built against wasaga:plugin@{version}, which this wasaga no longer serves"
            )) && legacy.contains("rebuild it against `wit/`"),
            "{legacy}"
        );
    }
}

/// A plugin that asks more than one call may where its import has no error to return
/// (here: reading past the read-set bound) ends its call with an error that says so,
/// not with "the store failed".
#[tokio::test]
async fn a_call_past_its_bounds_ends_with_a_clear_error() {
    let plugin = load(&runtime(), "echo", Limits::default()).await;
    let store = scratch();
    let limits = TxLimits { max_reads: 0, ..TxLimits::default() };
    let tx = Transaction::new(store.snapshot("echo").unwrap(), limits);
    let err = plugin.invoke(call("get", r#"{"key": "k"}"#), tx, None).await.unwrap_err();
    assert!(matches!(err, CallError::OverLimit { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "plugin `echo` went past what one call may do: more than 0 records read in one invocation"
    );
}
