//! A whole store as a file, to move it from one backend to the other (SQLite to
//! PostgreSQL when a deployment outgrows one machine) or to keep a copy: `wasaga export`
//! writes every table as JSON lines, `wasaga import` loads such a file into an empty
//! store.
//!
//! What is copied: records and tombstones with their versions and version floors,
//! stored outcomes, sagas (with their owners: none is alive in the new store, so the
//! first host there takes the unfinished ones over), saga definition versions, events
//! with their ids, deliveries and the dispatcher's cursor, plugin uploads and removals.
//! Not copied: what each store keeps about itself (its hosts, its schema version, the
//! saga counts, which the target's triggers count again as the sagas go in).
//!
//! The file: a header line, one line per row (`{"table": …, "row": {column: value}}`;
//! bytes in base64, SQL NULL as `null`), and an end line with the count of rows, so
//! that a truncated file is refused rather than loaded in part.
//!
//! Here is the format, defined once: its tables and columns ([`TABLES`]), how a row is
//! written ([`Export`]) and read back, checked, as typed cells ([`Rows`]). Each backend
//! reads and writes its own rows through them (`sqlite/portable.rs`,
//! `postgres/portable.rs`). The format's tables are its own, not read from a schema:
//! a file keeps its meaning as the schemas move on (a column added since it was written
//! loads as NULL), and a test holds both schemas to it (every column is in the format,
//! or kept back by name).

use std::io::{BufRead, Write};

use anyhow::Context;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Map, Value, json};

/// The format's name and version, in the header line.
const FORMAT: &str = "wasaga-export";
const VERSION: u64 = 1;

/// A column's kind in the file: how its values are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::store) enum Kind {
    Text,
    Int,
    Blob,
    Bool,
}

/// One table of the file.
pub(in crate::store) struct Table {
    pub(in crate::store) name: &'static str,
    pub(in crate::store) columns: &'static [(&'static str, Kind)],
    /// The columns an export reads the rows in, so that one store always makes one file.
    pub(in crate::store) order: &'static str,
    /// Its rows are in every store from the start (the dispatcher's cursor): an import
    /// replaces them, and they do not make a store non-empty.
    pub(in crate::store) preset: bool,
}

use Kind::{Blob, Bool, Int, Text};

/// Every table that is copied, in an order that loads (definitions before the sagas
/// that name them is not required by the schema, but reads better).
pub(in crate::store) const TABLES: &[Table] = &[
    Table {
        name: "records",
        columns: &[("service", Text), ("key", Text), ("value", Blob), ("version", Int), ("deleted_at", Int)],
        order: "service, key",
        preset: false,
    },
    Table {
        name: "version_floors",
        columns: &[("service", Text), ("floor", Int)],
        order: "service",
        preset: false,
    },
    Table {
        name: "invocations",
        columns: &[
            ("service", Text),
            ("space", Text),
            ("key", Text),
            ("fingerprint", Blob),
            ("operation", Text),
            ("ok", Bool),
            ("output", Blob),
            ("digest", Text),
            ("correlation_id", Text),
            ("created_at", Int),
            ("expires_at", Int),
        ],
        order: "service, space, key",
        preset: false,
    },
    Table {
        name: "saga_definitions",
        columns: &[("digest", Text), ("name", Text), ("text", Text), ("saved_at", Int)],
        order: "digest",
        preset: false,
    },
    Table {
        name: "sagas",
        columns: &[
            ("id", Text),
            ("name", Text),
            ("status", Text),
            ("input", Blob),
            ("state", Text),
            ("version", Int),
            ("key", Text),
            ("fingerprint", Blob),
            ("created_at", Int),
            ("updated_at", Int),
            ("owner", Text),
        ],
        order: "id",
        preset: false,
    },
    Table {
        name: "outbox",
        columns: &[
            ("id", Int),
            ("service", Text),
            ("topic", Text),
            ("payload", Blob),
            ("correlation_id", Text),
            ("created_at", Int),
            ("traceparent", Text),
            ("subscribers", Text),
        ],
        order: "id",
        preset: false,
    },
    Table {
        name: "deliveries",
        columns: &[
            ("event_id", Int),
            ("subscriber", Text),
            ("operation", Text),
            ("topic", Text),
            ("correlation_id", Text),
            ("status", Text),
            ("attempts", Int),
            ("next_at", Int),
            ("outcome", Text),
            ("last_error", Text),
            ("created_at", Int),
            ("done_at", Int),
        ],
        order: "event_id, subscriber",
        preset: false,
    },
    // One row, there from the start in every store: replaced, not added.
    Table { name: "dispatch", columns: &[("id", Int), ("through", Int)], order: "id", preset: true },
    Table {
        name: "plugin_uploads",
        columns: &[("service", Text), ("digest", Text), ("base", Text), ("wasm", Blob), ("uploaded_at", Int)],
        order: "service",
        preset: false,
    },
];

/// Tables of the schemas that are not in the file: what each store keeps about itself.
#[cfg(test)]
pub(in crate::store) const KEPT_BACK: &[&str] = &["hosts", "saga_counts", "probes", "wasaga_schema"];

/// A value of the file, as the kind its column is (or NULL).
#[derive(Debug, Clone, PartialEq)]
pub(in crate::store) enum Cell {
    Null,
    Text(String),
    Int(i64),
    Blob(Vec<u8>),
    Bool(bool),
}

/// Rows per table, in [`TABLES`]' order.
pub type Counts = Vec<(&'static str, u64)>;

fn zero_counts() -> Counts {
    TABLES.iter().map(|t| (t.name, 0)).collect()
}

/// A file being written: the header, written at once, then rows, then the end line.
pub(in crate::store) struct Export<'a> {
    out: &'a mut dyn Write,
    counts: Counts,
}

impl<'a> Export<'a> {
    pub(in crate::store) fn start(out: &'a mut dyn Write) -> anyhow::Result<Export<'a>> {
        let tables: Vec<&str> = TABLES.iter().map(|t| t.name).collect();
        writeln!(out, "{}", json!({"format": FORMAT, "version": VERSION, "tables": tables}))?;
        Ok(Export { out, counts: zero_counts() })
    }

    /// Writes one row of table `t` (its index in [`TABLES`]): its cells in the order of
    /// the table's columns.
    pub(in crate::store) fn row(&mut self, t: usize, cells: Vec<Cell>) -> anyhow::Result<()> {
        let table = &TABLES[t];
        anyhow::ensure!(
            cells.len() == table.columns.len(),
            "a row of `{}` with {} cells",
            table.name,
            cells.len()
        );
        let mut row = Map::new();
        for ((column, _), cell) in table.columns.iter().zip(cells) {
            let value = match cell {
                Cell::Null => Value::Null,
                Cell::Text(s) => s.into(),
                Cell::Int(n) => n.into(),
                Cell::Blob(b) => BASE64.encode(b).into(),
                Cell::Bool(b) => b.into(),
            };
            row.insert((*column).into(), value);
        }
        writeln!(self.out, "{}", json!({"table": table.name, "row": row}))?;
        self.counts[t].1 += 1;
        Ok(())
    }

    /// Writes the end line, with the count of rows.
    pub(in crate::store) fn finish(self) -> anyhow::Result<Counts> {
        let rows: u64 = self.counts.iter().map(|(_, n)| n).sum();
        writeln!(self.out, "{}", json!({"end": {"rows": rows}}))?;
        self.out.flush()?;
        Ok(self.counts)
    }
}

/// The rows of a file written by [`Export`], each checked as it is read: the header
/// first, then each row's table, columns and values, and the end line with the count
/// of rows, without which reading fails (and the import's transaction with it).
pub(in crate::store) struct Rows<'a> {
    lines: std::io::Lines<&'a mut dyn BufRead>,
    /// The number of the line read last.
    number: u64,
    counts: Counts,
}

impl<'a> Rows<'a> {
    pub(in crate::store) fn open(input: &'a mut dyn BufRead) -> anyhow::Result<Rows<'a>> {
        let mut lines = input.lines();
        let header: Value = match lines.next() {
            Some(line) => serde_json::from_str(&line?).context("the first line is not JSON")?,
            None => anyhow::bail!("the file is empty"),
        };
        anyhow::ensure!(
            header["format"] == FORMAT,
            "not a file written by `wasaga export` (its first line has no \"format\": \"{FORMAT}\")"
        );
        anyhow::ensure!(
            header["version"] == VERSION,
            "a `wasaga export` file of version {}, which this wasaga does not know (it reads version {VERSION})",
            header["version"]
        );
        Ok(Rows { lines, number: 1, counts: zero_counts() })
    }

    /// The next row, as the index of its table in [`TABLES`] and its cells in the order
    /// of the table's columns (NULL for a column the file does not have, such as one
    /// added since it was written; a NOT NULL one is then refused by the store); `None`
    /// after the end line.
    pub(in crate::store) fn next_row(&mut self) -> anyhow::Result<Option<(usize, Vec<Cell>)>> {
        let Some(line) = self.lines.next() else {
            anyhow::bail!(
                "the file ends without its last line: it was cut short, and nothing of it was loaded"
            )
        };
        self.number += 1;
        let number = self.number;
        let mut value: Value =
            serde_json::from_str(&line?).with_context(|| format!("line {number} is not JSON"))?;
        if let Some(end) = value.get("end") {
            let read: u64 = self.counts.iter().map(|(_, n)| n).sum();
            anyhow::ensure!(
                end["rows"].as_u64() == Some(read),
                "the file ends after {read} rows but says it has {}",
                end["rows"]
            );
            return Ok(None);
        }
        let name = value["table"].as_str().unwrap_or_default().to_owned();
        let Some(t) = TABLES.iter().position(|t| t.name == name) else {
            anyhow::bail!("line {number}: no table `{name}` in a wasaga store");
        };
        let Some(Value::Object(row)) = value.get_mut("row").map(Value::take) else {
            anyhow::bail!("line {number}: no \"row\" object");
        };
        let table = &TABLES[t];
        if let Some(extra) = row.keys().find(|k| !table.columns.iter().any(|(c, _)| c == k)) {
            anyhow::bail!("line {number}: table `{name}` has no column `{extra}`");
        }
        let cells = table
            .columns
            .iter()
            .map(|(column, kind)| cell(table, column, *kind, row.get(*column).unwrap_or(&Value::Null)))
            .collect::<anyhow::Result<_>>()
            .with_context(|| format!("line {number}"))?;
        self.counts[t].1 += 1;
        Ok(Some((t, cells)))
    }

    /// The rows read per table.
    pub(in crate::store) fn counts(self) -> Counts {
        self.counts
    }
}

fn cell(table: &Table, column: &str, kind: Kind, value: &Value) -> anyhow::Result<Cell> {
    let wrong =
        || anyhow::anyhow!("table `{}`, column `{column}`: not a {kind:?} value: {value}", table.name);
    Ok(match (kind, value) {
        (_, Value::Null) => Cell::Null,
        (Text, Value::String(s)) => Cell::Text(s.clone()),
        (Int, Value::Number(n)) => Cell::Int(n.as_i64().ok_or_else(wrong)?),
        (Blob, Value::String(s)) => Cell::Blob(BASE64.decode(s).map_err(|_| wrong())?),
        (Bool, Value::Bool(b)) => Cell::Bool(*b),
        _ => return Err(wrong()),
    })
}

/// The tables an import requires empty: all but the preset ones.
pub(in crate::store) fn must_be_empty() -> impl Iterator<Item = &'static Table> {
    TABLES.iter().filter(|t| !t.preset)
}

/// The columns of `table`, as a select or insert lists them.
pub(in crate::store) fn column_list(table: &Table) -> String {
    table.columns.iter().map(|(c, _)| *c).collect::<Vec<_>>().join(", ")
}

/// Why an import into `store` (a description: "the SQLite store in …") was refused.
pub(in crate::store) fn not_empty(store: &str) -> String {
    format!("{store} is not empty: an import goes into an empty store only (nothing was loaded)")
}

#[cfg(test)]
mod tests;
