//! The README's "Writing a plugin" commands, run as written for each language: `wasaga
//! new`, the language's own toolchain (componentize-py from PyPI, componentize-js from
//! npm, cargo), `plugin check`, the project's `test.sh`, a push to a running server,
//! and a call of the pushed service over HTTP. Each step's time is printed (the
//! figures in docs/benchmarks.md, "A first service"). A missing toolchain fails the
//! test and says what to install; nothing is skipped.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::readme::matches;
use crate::support::{ADMIN_TOKEN, COMPILE_CACHE, Server};

/// The commands of the README block marked for `lang`, each with the fragments its
/// `# =>` lines expect.
fn block(lang: &str) -> Vec<(String, Vec<String>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let marker = format!("tests/e2e/new_service.rs: {lang})");
    let after = readme.split_once(&marker).unwrap_or_else(|| panic!("no README block marked {marker:?}")).1;
    let body = after.split_once("```sh\n").unwrap().1.split_once("\n```").unwrap().0;
    let mut commands: Vec<(String, Vec<String>)> = Vec::new();
    for line in body.lines() {
        match line.trim().strip_prefix("# =>") {
            Some(expected) => commands.last_mut().unwrap().1.push(expected.trim().to_owned()),
            None => commands.push((line.to_owned(), Vec::new())),
        }
    }
    commands
}

/// Fails with what to install when `program` does not run.
fn needs(program: &str, args: &[&str], install: &str) {
    let runs = Command::new(program).args(args).output().is_ok_and(|out| out.status.success());
    assert!(runs, "the {program} template test needs `{program} {}`: {install}", args.join(" "));
}

fn the_readme_makes_a_service(lang: &str) {
    let server = Server::with_plugins(&[]);
    let work = tempfile::tempdir().unwrap();
    let binaries = Path::new(env!("CARGO_BIN_EXE_wasaga")).parent().unwrap();
    let path = format!("{}:{}", binaries.display(), std::env::var("PATH").unwrap_or_default());
    let address = server.url.trim_start_matches("http://");
    let mut dir = work.path().to_owned();
    let mut times: Vec<(String, Duration)> = Vec::new();
    for (command, expected) in block(lang) {
        if let Some(into) = command.strip_prefix("cd ") {
            dir = dir.join(into);
            continue;
        }
        let began = Instant::now();
        let out = Command::new("bash")
            .args(["-o", "pipefail", "-c", &command.replace("localhost:8080", address)])
            .current_dir(&dir)
            .env("PATH", &path)
            .env("WASAGA_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("WASAGA_SERVER", &server.url)
            .env("WASAGA_LOG", "warn")
            .env("WASAGA_COMPILE_CACHE", COMPILE_CACHE)
            .output()
            .unwrap();
        let output =
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "`{command}` exited {:?}:\n{output}", out.status.code());
        for fragment in &expected {
            assert!(matches(&output, fragment), "`{command}` should print {fragment:?}:\n{output}");
        }
        times.push((command, began.elapsed()));
    }
    let total: Duration = times.iter().map(|(_, took)| *took).sum();
    let mut report = format!("{lang}: from nothing to a pushed, answering service in {total:.1?}\n");
    for (command, took) in &times {
        report.push_str(&format!("  {took:>8.1?}  {command}\n"));
    }
    eprint!("{report}");
}

#[test]
fn a_python_service_from_new_to_pushed() {
    needs("python3", &["-m", "venv", "--help"], "Python 3.10 or later with venv (Debian: python3-venv)");
    the_readme_makes_a_service("python");
}

#[test]
fn a_javascript_service_from_new_to_pushed() {
    needs("npm", &["--version"], "Node.js 18 or later with npm (Debian: nodejs, npm)");
    the_readme_makes_a_service("js");
}

#[test]
fn a_rust_service_from_new_to_pushed() {
    needs("rustup", &["target", "list", "--installed"], "rustup, with the wasm32-wasip2 target");
    the_readme_makes_a_service("rust");
}
