//! `wasaga saga verify`, the real binary: the demo's `place-order` passes every single
//! and pairwise failure schedule, and a `payment` whose refund is wrong in each of three
//! ways is caught, with the shortest schedule that shows it.

use std::path::Path;
use std::process::Output;

use serde_json::Value;

use crate::support::{SAGAS, guest, wasaga};

const INPUT: &str = r#"{"order": "o-1", "customer": "ada", "sku": "lamp", "qty": 2, "amount": 2500}"#;
const RECORDS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../plugins/sagas/place-order.records.json");

fn verify(name: &str, plugins: Option<&Path>, sagas: &Path, extra: &[&str]) -> Output {
    let mut command = wasaga();
    command.args(["saga", "verify", name, "--input", INPUT, "--records", RECORDS, "--sagas"]).arg(sagas);
    if let Some(plugins) = plugins {
        command.arg("--plugins").arg(plugins);
    }
    command.args(extra).output().unwrap()
}

/// The demo's saga: no finding in any schedule, and the schedules reach every end
/// (completed, compensated, and stuck where a compensation or a post-pivot step was
/// made to fail), so the checks had something to check.
#[test]
fn the_demo_saga_passes_every_schedule() {
    let out = verify("place-order", None, Path::new(SAGAS), &["--json"]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let verdicts = report["verdicts"].as_array().unwrap();
    assert!(verdicts.len() > 500, "single and pairwise schedules: {}", verdicts.len());
    assert_eq!(verdicts[0]["schedule"], "no fault");
    assert_eq!(verdicts[0]["status"], "completed");
    for end in ["completed", "compensated", "stuck"] {
        assert!(verdicts.iter().any(|v| v["status"] == end), "no schedule ended {end}");
    }
    let findings: Vec<&Value> = verdicts.iter().filter(|v| v["findings"] != Value::Array(vec![])).collect();
    assert!(findings.is_empty(), "{findings:#?}");
    // A compensated run changed only the audit trail (order, reservation, charge).
    let refused = verdicts.iter().find(|v| v["schedule"] == "complete-order do: refused").unwrap();
    assert_eq!(refused["status"], "compensated");
    for changed in refused["changed"].as_array().unwrap() {
        let key = changed.as_str().unwrap();
        assert!(
            ["order:order/", "inventory:reservation/", "payment:charge/"].iter().any(|p| key.starts_with(p)),
            "{key}"
        );
    }
}

/// Each broken refund is found, and the report names the shortest schedule that shows
/// it; exit code 1.
#[test]
fn broken_compensations_are_caught_with_their_schedule() {
    let plugins = tempfile::tempdir().unwrap();
    for name in ["order", "inventory", "notification"] {
        std::fs::copy(guest(name), plugins.path().join(format!("{name}.wasm"))).unwrap();
    }
    std::fs::copy(guest("broken-payment"), plugins.path().join("payment.wasm")).unwrap();
    let sagas = tempfile::tempdir().unwrap();
    let place_order = std::fs::read_to_string(Path::new(SAGAS).join("place-order.toml")).unwrap();
    // The shortest schedule: one fault that makes the saga compensate after the charge;
    // for the strict refund, the charge done by hand (an operator's resolve) too.
    let cases = [
        ("refund-twice", "compensated, but records are not as they were: payment:account/ada", None),
        // The same refund, as the definition's invariant sees it.
        (
            "refund-twice",
            "invariant payment.check-balances: account/ada holds 102500, more than was ever put in",
            None,
        ),
        ("refund-forgetful", "compensated, but records are not as they were: payment:account/ada", None),
        (
            "refund-strict",
            "stuck: a compensation failed that no fault was put on",
            Some("charge do: done without its call"),
        ),
    ];
    for (refund, finding, shortest) in cases {
        let name = format!("place-order-{refund}");
        let definition = place_order
            .replace("name = \"place-order\"", &format!("name = \"{name}\""))
            .replace("compensation = \"refund\"", &format!("compensation = \"{refund}\""))
            + "\n[[invariant]]\nservice = \"payment\"\noperation = \"check-balances\"\n";
        assert!(definition.contains(refund));
        std::fs::write(sagas.path().join(format!("{name}.toml")), definition).unwrap();
        let out = verify(&name, Some(plugins.path()), sagas.path(), &[]);
        let report = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{refund}: {report}{}", String::from_utf8_lossy(&out.stderr));
        let summary = report.split_once("\n\n").map(|(_, s)| s).unwrap_or_default();
        let shown = summary.split_once(&format!("  {finding}\n    shortest schedule: ")).map(|(_, s)| s);
        let schedule = shown.and_then(|s| s.lines().next()).unwrap_or_else(|| panic!("{refund}: {summary}"));
        match shortest {
            None => assert!(!schedule.contains(" + "), "{refund}: one fault shows it: {schedule}"),
            Some(needed) => assert!(schedule.contains(needed), "{refund}: {schedule}"),
        }
    }
}

/// What it cannot run says why, and exits 2 (a finding is 1).
#[test]
fn a_verification_that_cannot_run_says_why() {
    let records = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(records.path(), r#"{"inventory": [1]}"#).unwrap();
    let sagas = Path::new(SAGAS);
    let run = |name: &str, input: &str, records: &Path| {
        let mut command = wasaga();
        command
            .args(["saga", "verify", name, "--input", input, "--records"])
            .arg(records)
            .arg("--sagas")
            .arg(sagas);
        command.output().unwrap()
    };
    let cases = [
        run("place-order", "[1]", Path::new(RECORDS)),
        run("place-order", "{", Path::new(RECORDS)),
        run("no-such-saga", INPUT, Path::new(RECORDS)),
        run("place-order", INPUT, records.path()),
        run("place-order", INPUT, Path::new("/no/such/records.json")),
    ];
    let expected = [
        "--input must be a JSON object",
        "--input is not valid JSON",
        "no saga `no-such-saga`",
        "`inventory` must be an object of records",
        "reading /no/such/records.json",
    ];
    for (out, expected) in cases.iter().zip(expected) {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{expected}: {stderr}");
        assert!(stderr.contains(expected), "expected {expected:?} in {stderr}");
    }
}
