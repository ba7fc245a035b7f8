//! How the commands that talk to a server print what it answers: tables for people,
//! and (with `--json`) the server's JSON as it is, for scripts.

use std::process::ExitCode;

use anyhow::Context;
use serde_json::Value;

/// A server's refusal: its status and the problem's `detail`.
#[derive(Debug)]
pub struct Refused {
    pub status: reqwest::StatusCode,
    pub detail: String,
}

/// Sends `request`: the JSON of a successful answer (null when it has no body), or the
/// server's refusal.
pub async fn call(request: reqwest::RequestBuilder) -> anyhow::Result<Result<Value, Refused>> {
    let response = request.send().await.context("the server did not answer")?;
    let status = response.status();
    let text = response.text().await.context("reading the server's answer")?;
    if !status.is_success() {
        let detail = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|problem| problem["detail"].as_str().map(str::to_owned))
            .unwrap_or(text);
        return Ok(Err(Refused { status, detail }));
    }
    if text.is_empty() {
        return Ok(Ok(Value::Null));
    }
    serde_json::from_str(&text).map(Ok).context("the server's answer is not JSON")
}

/// Prints `body` with `table` for people, or as JSON; a refusal goes to stderr, and
/// the exit code says which it was.
pub fn answer(
    body: Result<Value, Refused>,
    json: bool,
    table: impl FnOnce(&Value),
) -> anyhow::Result<ExitCode> {
    let body = match body {
        Ok(body) => body,
        Err(Refused { status, detail }) => {
            eprintln!("error: {detail} ({status})");
            return Ok(ExitCode::FAILURE);
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&body)?);
    } else {
        table(&body);
    }
    Ok(ExitCode::SUCCESS)
}

/// One saga: what it is, why, its steps, and its history.
pub fn saga(saga: &Value) {
    println!("saga      {}  {}  {}", text(&saga["id"]), text(&saga["name"]), text(&saga["status"]));
    if let Some(reason) = saga["reason"].as_str() {
        println!("reason    {reason}");
    }
    if let Some(stuck) = saga["stuck_reason"].as_str() {
        println!("stuck     {stuck}");
    }
    println!("created   {}   updated {}", time(&saga["created_at"]), time(&saga["updated_at"]));
    let rows: Vec<Vec<String>> = saga["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|step| {
            let undo = match (step["compensation"].as_str(), step["compensation_attempts"].as_u64()) {
                (Some(undo), Some(n)) if n > 0 => format!("{undo} ×{n}"),
                (Some(undo), _) => undo.to_owned(),
                (None, _) => "-".into(),
            };
            vec![
                text(&step["name"]).to_owned(),
                format!("{}.{}", text(&step["service"]), text(&step["action"])),
                text(&step["status"]).to_owned(),
                step["attempts"].to_string(),
                undo,
                step["duration_ms"].as_i64().map(|ms| format!("{ms} ms")).unwrap_or_default(),
                text(&step["last_error"]).to_owned(),
            ]
        })
        .collect();
    println!();
    table(&["STEP", "CALL", "STATUS", "ATTEMPTS", "UNDO", "TOOK", "LAST ERROR"], &rows);
    let history = saga["history"].as_array().filter(|h| !h.is_empty());
    if let Some(history) = history {
        println!("\nhistory");
        for entry in history {
            println!("  {}  {}", time(&entry["at"]), happened(entry));
        }
    }
}

/// One entry of a saga's history, in words.
fn happened(entry: &Value) -> String {
    let failed = |entry: &Value| if entry["transient"] == true { "failed" } else { "was refused" };
    match text(&entry["kind"]) {
        "step_failed" => format!(
            "{} attempt {} {}: {}",
            text(&entry["step"]),
            entry["attempt"],
            failed(entry),
            text(&entry["error"])
        ),
        "compensation_failed" => format!(
            "undoing {}, attempt {}, {}: {}",
            text(&entry["step"]),
            entry["attempt"],
            failed(entry),
            text(&entry["error"])
        ),
        "stuck" => format!("stuck: {}", text(&entry["reason"])),
        "operator" => {
            let step = entry["step"].as_str().map(|s| format!(" of {s}")).unwrap_or_default();
            let note = entry["note"].as_str().map(|n| format!(": {n}")).unwrap_or_default();
            format!("{}{step} by {}{note}", text(&entry["action"]), text(&entry["by"]))
        }
        _ => entry.to_string(),
    }
}

/// Columns padded to their widest cell; the last column is not padded.
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let padded: Vec<String> = cells
            .iter()
            .enumerate()
            .map(
                |(i, cell)| if i == last { (*cell).to_owned() } else { format!("{cell:<w$}", w = widths[i]) },
            )
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

pub fn text(value: &Value) -> &str {
    value.as_str().unwrap_or("")
}

/// A unix-ms timestamp as `2026-12-01 10:30:25.123Z` (UTC).
pub fn time(value: &Value) -> String {
    value.as_i64().map(crate::clock::utc).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_print_as_utc_dates() {
        assert_eq!(time(&Value::from(0)), "1970-01-01 00:00:00.000Z");
        assert_eq!(time(&Value::from(1_764_585_025_123i64)), "2025-12-01 10:30:25.123Z");
        assert_eq!(time(&Value::from(951_782_400_000i64)), "2000-02-29 00:00:00.000Z", "a leap day");
        assert_eq!(time(&Value::Null), "");
    }
}
