//! The `wasaga` command line, run as a real process.

use std::process::Output;

use crate::support::{guest, wasaga};

fn check(file: &std::path::Path, extra: &[&str]) -> Output {
    wasaga().args(["plugin", "check"]).arg(file).args(extra).output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A valid plugin: exit 0, and the service, digest and operations are printed.
#[test]
fn plugin_check_prints_the_manifest_of_a_valid_plugin() {
    let out = check(&guest("echo"), &[]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert!(stdout.contains("service       echo"), "{stdout}");
    assert!(stdout.contains("digest        sha256:"), "{stdout}");
    assert!(stdout.contains("  set (public): Writes one record"), "{stdout}");
    assert!(stdout.contains("  append (internal): On `journal` events"), "a subscription handler: {stdout}");

    let out = check(&guest("echo"), &["--json"]);
    assert!(out.status.success());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["service"], "echo");
    assert_eq!(json["manifest"]["operations"][0]["name"], "echo");
    assert_eq!(json["manifest"]["operations"][0]["visibility"], "public");
}

/// The HTTP destinations a plugin declares, and with a grants file which of them the
/// operator grants; a bad grants file is an error that names it.
#[test]
fn plugin_check_shows_the_destinations_and_what_a_grants_file_grants() {
    let out = check(&guest("caller"), &[]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert!(stdout.contains("  http://127.0.0.1:*/ (any method)\n"), "{stdout}");

    let dir = tempfile::tempdir().unwrap();
    let grants = dir.path().join("outbound.toml");
    std::fs::write(&grants, "[[services.caller.destinations]]\nurl = \"http://localhost:8080/api/\"\n")
        .unwrap();
    let out = check(&guest("caller"), &["--outbound", grants.to_str().unwrap()]);
    let stdout = text(&out.stdout);
    assert!(stdout.contains("  http://127.0.0.1:*/ (any method) - not granted"), "{stdout}");
    assert!(
        stdout.contains("  http://localhost:*/ (any method) - granted by http://localhost:8080/api/"),
        "{stdout}"
    );
    let out = check(&guest("caller"), &["--outbound", grants.to_str().unwrap(), "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["destinations"][1]["granted_by"][0], "http://localhost:8080/api/");

    std::fs::write(&grants, "[services.caller]\nmax_requests = 3\n").unwrap();
    let out = check(&guest("caller"), &["--outbound", grants.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("outbound.toml") && text(&out.stderr).contains("max_requests"),
        "{}",
        text(&out.stderr)
    );
}

/// Every kind of bad file: exit 1, and stderr says what is wrong with it.
#[test]
fn plugin_check_refuses_bad_files_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let text_file = dir.path().join("notes.wasm");
    std::fs::write(&text_file, "not wasm at all").unwrap();
    let core = dir.path().join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    let cases = [
        (text_file.clone(), "not a WebAssembly file"),
        (core, "a core WebAssembly module, not a component: build the plugin for the wasm32-wasip2 target"),
        (
            guest("stranger"),
            "not a plugin of the wasaga:plugin/plugin world: it does not export `wasaga:plugin/service@0.3.0` (it exports: greet)",
        ),
        (dir.path().join("missing.wasm"), "No such file"),
    ];
    for (file, expected) in cases {
        let out = check(&file, &[]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{}: {stderr}", file.display());
        assert!(stderr.contains(expected), "{}: expected {expected:?} in {stderr:?}", file.display());
        assert!(stderr.contains(&*file.to_string_lossy()), "the message names the file: {stderr}");
    }
}

/// A plugin whose `<name>.toml` limits file is wrong is refused, naming the file and key.
#[test]
fn plugin_check_reports_a_bad_limits_file() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = dir.path().join("echo.wasm");
    std::fs::copy(guest("echo"), &wasm).unwrap();
    std::fs::write(dir.path().join("echo.toml"), "deadline = \"soon\"\n").unwrap();
    let out = check(&wasm, &[]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("`deadline` in") && stderr.contains("echo.toml") && stderr.contains("`soon`"),
        "{stderr}"
    );
}

/// `--version` says the version, the commit it was built from and the contract it
/// serves to plugins.
#[test]
fn version_names_the_commit_and_the_contract() {
    let out = wasaga().arg("--version").output().unwrap();
    let version = text(&out.stdout);
    assert!(out.status.success());
    let expected = format!("wasaga {} (commit ", env!("CARGO_PKG_VERSION"));
    assert!(version.starts_with(&expected), "{version}");
    assert!(version.trim_end().ends_with("; serves plugins of wasaga:plugin@0.3.0)"), "{version}");
    let commit = version[expected.len()..].split(';').next().unwrap();
    assert!(
        commit == "unknown" || (commit.len() == 12 && commit.chars().all(|c| c.is_ascii_hexdigit())),
        "{commit}"
    );
}

/// `--help` names the commands and explains the flags, with their environment variables.
#[test]
fn help_teaches_the_commands_and_flags() {
    let out = wasaga().arg("--help").output().unwrap();
    let help = text(&out.stdout);
    assert!(out.status.success());
    for needle in ["serve", "plugin", "bench", "exactly-once invocations"] {
        assert!(help.contains(needle), "`{needle}` missing from --help:\n{help}");
    }
    let out = wasaga().args(["serve", "--help"]).output().unwrap();
    let help = text(&out.stdout);
    for needle in ["--plugins", "WASAGA_PLUGINS", "--deadline", "--memory-limit", "port 0"] {
        assert!(help.contains(needle), "`{needle}` missing from serve --help:\n{help}");
    }
    // The server's own options come in groups, apart from the global ones.
    let headings: Vec<&str> = help.lines().filter(|l| !l.starts_with(' ') && l.ends_with(':')).collect();
    for heading in ["Plugins and sagas:", "Storage:", "Access:", "HTTP:", "Plugin limits:", "Global options:"]
    {
        assert!(headings.contains(&heading), "`{heading}` missing from serve --help: {headings:?}");
    }
    let global = &help[help.find("Global options:").unwrap()..];
    assert!(global.contains("--log") && !global.contains("--plugins"), "{global}");
    let out = wasaga().args(["serve", "--plugins", "x"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "a missing required flag is a usage error");
    assert!(text(&out.stderr).contains("--data"), "{}", text(&out.stderr));
}

fn run(args: &[&str], extra: &[&str]) -> Output {
    wasaga().args(["plugin", "run"]).arg(guest("echo")).args(args).args(extra).output().unwrap()
}

/// `plugin run` runs one operation offline on a scratch store seeded by `--records`,
/// and prints its output, writes and events; nothing is kept between runs.
#[test]
fn plugin_run_runs_one_operation_on_a_scratch_store() {
    let dir = tempfile::tempdir().unwrap();
    let seed = dir.path().join("seed.json");
    std::fs::write(&seed, r#"{"lamp": {"stock": 3}}"#).unwrap();
    let seeded = ["--records", seed.to_str().unwrap()];

    let out = run(&["get", r#"{"key": "lamp"}"#], &seeded);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "output  {\"key\":\"lamp\",\"value\":{\"stock\":3},\"version\":1}\n");

    let out = run(&["set", r#"{"key": "lamp", "value": {"stock": 2}}"#], &["--json", seeded[0], seeded[1]]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["output"], serde_json::json!({"key": "lamp", "version": 2}));
    assert_eq!(report["writes"], serde_json::json!([{"key": "lamp", "value": {"stock": 2}, "version": 2}]));

    let out = run(&["publish", r#"{"topic": "t", "payload": {"n": 1}, "chain": "c-1"}"#], &[]);
    assert_eq!(text(&out.stdout), "output  {}\nevent   t: {\"n\":1} (chain c-1)\n");

    // Nothing kept: without the seed the record is not there.
    let out = run(&["get", r#"{"key": "lamp"}"#], &[]);
    assert_eq!(text(&out.stdout), "output  {\"key\":\"lamp\",\"value\":null,\"version\":null}\n");
}

/// A failed operation exits 2 and writes nothing; what cannot run exits 1 and says why.
#[test]
fn plugin_run_says_why_an_operation_failed_or_could_not_run() {
    let out = run(&["publish-then-refuse", r#"{"topic": "t", "payload": {}}"#], &["--json"]);
    assert_eq!(out.status.code(), Some(2), "stderr: {}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["failure"]["kind"], "rejected");
    assert_eq!(report["events"], serde_json::json!([]), "a refused call publishes nothing");

    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("list.json");
    std::fs::write(&list, "[1, 2]").unwrap();
    let cases: [(&[&str], &[&str], &str); 3] = [
        (&["nope"], &[], "service `echo` has no operation `nope` (it has: echo, get,"),
        (&["echo"], &["--records", list.to_str().unwrap()], "must hold one JSON object"),
        (&["burn", r#"{"ms": 500}"#], &["--deadline", "100ms"], "ran past its deadline of 100ms"),
    ];
    for (args, extra, expected) in cases {
        let out = run(args, extra);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: expected {expected:?} in {stderr:?}");
    }
}

/// `wasaga new` refuses a name that cannot name a service, and a directory that holds
/// something, and writes nothing then.
#[test]
fn new_refuses_a_bad_name_and_a_directory_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let out =
        wasaga().args(["new", "My_Service", "--lang", "python"]).current_dir(dir.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("`My_Service` is not a valid service name"), "{}", text(&out.stderr));
    std::fs::write(dir.path().join("notes.txt"), "mine").unwrap();
    let out = wasaga().args(["new", "greeter", "--lang", "js", "--dir"]).arg(dir.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("exists and is not empty"), "{}", text(&out.stderr));
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, ["notes.txt"], "nothing written");
}
