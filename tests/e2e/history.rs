//! The history checker (`wasaga bench check`, `host/src/check/`) against real hosts:
//! list-append transactions, events across idle periods longer than the event
//! retention, and sagas, while hosts are SIGKILLed and restarted; the whole history
//! must be clean. Before their fixes, these runs found the outbox's reused event ids
//! on SQLite (events lost after an idle period) and write skew across two
//! PostgreSQL hosts (G2).

use serde_json::Value;
use wasaga::store::postgres::testing as postgres_testing;

use crate::support::wasaga;

/// Runs `wasaga bench check --json` with `args` and returns its report, after checking
/// that it found nothing wrong and ran long enough to mean something.
fn check(args: &[&str]) -> Value {
    let output = wasaga().args(["bench", "check", "--json"]).args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let report: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!("no report ({e}); exit {:?}\nstdout: {stdout}\nstderr: {stderr}", output.status)
    });
    let anomalies = &report["anomalies"];
    assert_eq!(
        anomalies.as_array().map(Vec::len),
        Some(0),
        "anomalies: {anomalies:#}\nnotes: {:#}",
        report["notes"]
    );
    assert!(output.status.success(), "exit {:?}: {stderr}", output.status);
    let count = |path: &str| report.pointer(path).and_then(Value::as_u64).unwrap_or(0);
    assert!(count("/transactions/acknowledged") >= 200, "{report:#}");
    assert!(count("/transactions/edges") >= 200, "{report:#}");
    assert!(count("/events/delivered") >= 20, "{report:#}");
    assert!(count("/sagas/completed") >= 5 && count("/sagas/compensated") >= 5, "{report:#}");
    assert!(count("/kills") >= 2, "{report:#}");
    report
}

/// One SQLite host, killed every 5 s: serializable transactions, no acknowledged
/// write lost, no effect twice; every event delivered once in order, including
/// those published after retention had forgotten every event before them; every saga
/// ended with each step once.
#[test]
fn one_sqlite_host_killed_and_restarted_keeps_a_clean_history() {
    check(&["--duration", "20s", "--kill-every", "5s", "--down", "500ms"]);
}

/// Two hosts on one PostgreSQL, one of them killed every 5 s: the same, across hosts
/// (each request to either host; sagas taken over from a host killed).
#[tokio::test]
async fn two_postgres_hosts_killed_and_restarted_keep_a_clean_history() {
    let database = postgres_testing::scratch().await;
    let report = tokio::task::spawn_blocking(move || {
        check(&[
            "--duration",
            "20s",
            "--hosts",
            "2",
            "--kill-every",
            "5s",
            "--down",
            "500ms",
            "--",
            "--database",
            &database,
            "--host-lease",
            "1s",
        ])
    })
    .await
    .unwrap();
    assert_eq!(report["hosts"], 2);
}
