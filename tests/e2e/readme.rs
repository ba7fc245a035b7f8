//! The README, run as written against a fresh `wasaga demo`, so that it cannot drift.
//!
//! Every ```sh block of README.md runs, in order, through `bash`, from the repository
//! root, with the built `wasaga` first on the PATH, `WASAGA_ADMIN_TOKEN` set to the
//! demo's admin token and `WASAGA_SERVER` to its address; `localhost:8080` in a
//! command is the demo's address. A block right after `<!-- readme-test: skip ... -->`
//! is not run (the commands of a fresh machine, say). In a block:
//!
//! - a line ending in `\` goes on to the next line (one command);
//! - a comment `# => fragment ... fragment` says what the command before it prints:
//!   each fragment must be in its output (stdout and stderr), in that order, white space
//!   aside; `# => exit 1` that it exits 1 (otherwise it must exit 0). A command whose
//!   output does not match yet is run again for a while (a chain of events settles, a
//!   dead letter takes its attempts): every README command can be repeated, as the
//!   keys and preconditions make them idempotent;
//! - `<id>` stands for the last UUID printed (a saga's id), `<event>` for the last
//!   `"event_id"` printed, `<data>` for the demo's data directory.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::{ADMIN_TOKEN, wasaga};

/// One command of a README block and what it must print.
#[derive(Debug)]
struct Step {
    line: usize,
    command: String,
    expected: Vec<String>,
    exit: i32,
}

/// The commands of every ```sh block the test runs, in order.
fn steps(readme: &str) -> Vec<Step> {
    let mut steps: Vec<Step> = Vec::new();
    let mut in_block = false;
    let mut skip = false;
    let mut pending: Option<(usize, String)> = None;
    for (n, line) in readme.lines().enumerate() {
        let trimmed = line.trim();
        if !in_block {
            if trimmed.starts_with("<!-- readme-test: skip") {
                skip = true;
            } else if trimmed == "```sh" {
                in_block = true;
            } else if !trimmed.is_empty() {
                skip = false;
            }
            continue;
        }
        if trimmed == "```" {
            in_block = false;
            skip = false;
            continue;
        }
        if skip {
            continue;
        }
        if let Some((start, mut command)) = pending.take() {
            command.push('\n');
            command.push_str(line);
            if goes_on(&command) {
                pending = Some((start, command));
            } else {
                steps.push(Step { line: start, command, expected: Vec::new(), exit: 0 });
            }
            continue;
        }
        if let Some(expected) = trimmed.strip_prefix("# =>") {
            let step = steps
                .last_mut()
                .unwrap_or_else(|| panic!("README line {}: `# =>` before any command", n + 1));
            match expected.trim().strip_prefix("exit ") {
                Some(code) => step.exit = code.parse().expect("`# => exit N`"),
                None => step.expected.push(expected.trim().to_owned()),
            }
        } else if trimmed.starts_with('#') || trimmed.is_empty() {
            continue;
        } else if goes_on(line) {
            pending = Some((n + 1, line.to_owned()));
        } else {
            steps.push(Step { line: n + 1, command: line.to_owned(), expected: Vec::new(), exit: 0 });
        }
    }
    steps
}

/// Whether a command goes on to the next line: it ends with `\`, or a single-quoted
/// string (a JSON body, say) is still open.
fn goes_on(command: &str) -> bool {
    command.ends_with('\\') || command.matches('\'').count() % 2 == 1
}

/// Whether `output` holds the fragments of `expected` in order, white space aside.
pub(crate) fn matches(output: &str, expected: &str) -> bool {
    let squeeze = |text: &str| text.chars().filter(|c| !c.is_whitespace()).collect::<String>();
    let output = squeeze(output);
    let mut from = 0;
    for fragment in expected.split("...").map(squeeze).filter(|f| !f.is_empty()) {
        match output[from..].find(&fragment) {
            Some(at) => from += at + fragment.len(),
            None => return false,
        }
    }
    true
}

/// The last UUID in `text`, if any.
fn last_uuid(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    (0..bytes.len().saturating_sub(35)).rev().find_map(|i| {
        let candidate = &text.get(i..i + 36)?;
        let shape = candidate.char_indices().all(|(j, c)| {
            if [8, 13, 18, 23].contains(&j) {
                c == '-'
            } else {
                c.is_ascii_hexdigit() && !c.is_ascii_uppercase()
            }
        });
        shape.then(|| candidate.to_string())
    })
}

/// The last `"event_id":N` in `text`, if any.
fn last_event(text: &str) -> Option<String> {
    let at = text.rfind("\"event_id\":")? + "\"event_id\":".len();
    Some(text[at..].chars().take_while(char::is_ascii_digit).collect())
}

/// Every README command against a fresh demo: each runs, exits as it says, and prints
/// what its `# =>` lines say.
#[test]
fn the_readme_runs_as_written_against_the_demo() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let steps = steps(&readme);
    assert!(steps.len() > 20, "the README's tour should be run, not skipped: {steps:#?}");
    assert!(steps.iter().filter(|s| !s.expected.is_empty()).count() > 15, "and its outputs checked");

    let data = tempfile::tempdir().unwrap();
    let mut demo = Demo(
        wasaga()
            .args(["demo", "--listen", "127.0.0.1:0", "--data"])
            .arg(data.path())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(demo.0.stdout.take().unwrap()).lines();
    let url = lines.next().unwrap().unwrap().trim().strip_prefix("listening on ").unwrap().to_owned();
    let address = url.trim_start_matches("http://").to_owned();
    // Let the demo seed its store before the tour starts (with curl, which the README
    // needs anyway).
    let seeded = format!("{url}/v1/services/payment/records/account/poor-paul");
    for _ in 0..200 {
        let out = Command::new("curl").args(["-sf", "-o", "/dev/null", &seeded]).status();
        assert!(out.is_ok(), "the README test needs curl on the PATH");
        if out.is_ok_and(|s| s.success()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }

    let binaries = Path::new(env!("CARGO_BIN_EXE_wasaga")).parent().unwrap().to_owned();
    let path = format!("{}:{}", binaries.display(), std::env::var("PATH").unwrap_or_default());
    let (mut id, mut event) = (None::<String>, None::<String>);
    for step in &steps {
        let mut command = step.command.replace("localhost:8080", &address);
        command = command.replace("<data>", &data.path().to_string_lossy());
        for (placeholder, value) in [("<id>", &id), ("<event>", &event)] {
            if command.contains(placeholder) {
                let value = value.as_deref().unwrap_or_else(|| {
                    panic!("README line {}: {placeholder} before anything printed one", step.line)
                });
                command = command.replace(placeholder, value);
            }
        }
        let mut last = String::new();
        let mut passed = false;
        for _ in 0..100 {
            let out = Command::new("bash")
                .args(["-o", "pipefail", "-c", &command])
                .current_dir(&root)
                .env("PATH", &path)
                .env("WASAGA_ADMIN_TOKEN", ADMIN_TOKEN)
                .env("WASAGA_SERVER", &url)
                .env("WASAGA_LOG", "warn")
                .output()
                .unwrap();
            last = format!(
                "exit {:?}\n{}{}",
                out.status.code(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            passed = out.status.code() == Some(step.exit) && step.expected.iter().all(|e| matches(&last, e));
            if passed {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(
            passed,
            "README line {}: `{}`\nexpected exit {} and {:?}\ngot: {last}",
            step.line, step.command, step.exit, step.expected
        );
        id = last_uuid(&last).or(id);
        event = last_event(&last).or(event);
    }
}

/// The demo process, killed when the test ends, failed or not.
struct Demo(std::process::Child);

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn outputs_match_by_fragments_in_order_white_space_aside() {
    assert!(matches(
        "{\"status\":\"completed\", \"reason\": null}",
        r#""status": "completed" ... "reason": null"#
    ));
    assert!(!matches(
        "{\"reason\": null, \"status\":\"completed\"}",
        r#""status": "completed" ... "reason""#
    ));
    assert_eq!(
        last_uuid("a 01a2313d-ce37-7658-8742-764883580759 b"),
        Some("01a2313d-ce37-7658-8742-764883580759".into())
    );
    assert_eq!(last_event(r#"[{"event_id":12,"x":1},{"event_id":7}]"#), Some("7".into()));
    let parsed = steps(
        "<!-- readme-test: skip (why) -->\n```sh\nnot run\n```\n\n```sh\na \\\n  b\n# => x ... y\n# => exit 1\n# plain\nc '{\n  d}'\n```\n",
    );
    assert_eq!(parsed.len(), 2);
    assert_eq!((parsed[0].command.as_str(), parsed[0].exit), ("a \\\n  b", 1));
    assert_eq!(parsed[0].expected, ["x ... y"]);
    assert_eq!(parsed[1].command, "c '{\n  d}'", "an open quote goes on");
}
