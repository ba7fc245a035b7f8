//! A whole store as a file, to move it from one backend to the other (SQLite to
//! PostgreSQL when a deployment outgrows one machine) or to keep a copy: `wasaga export`
//! writes every table as JSON lines, `wasaga import` loads such a file into an empty
//! store. Both backends hold the same tables with the same columns (`sqlite/schema.rs`,
//! `postgres/schema.rs`), listed once here.
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

use std::io::{BufRead, Write};

use anyhow::Context;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use futures_util::TryStreamExt;
use serde_json::{Map, Value, json};

use super::postgres::PgStore;
use super::sqlite::{SqliteOptions, SqliteStore};

/// The format's name and version, in the header line.
const FORMAT: &str = "wasaga-export";
const VERSION: u64 = 1;

#[derive(Debug, Clone, Copy)]
enum Kind {
    Text,
    Int,
    Blob,
    Bool,
}

struct Table {
    name: &'static str,
    columns: &'static [(&'static str, Kind)],
    order: &'static str,
}

use Kind::{Blob, Bool, Int, Text};

/// Every table that is copied, in an order that loads (definitions before the sagas
/// that name them is not required by the schema, but reads better).
const TABLES: &[Table] = &[
    Table {
        name: "records",
        columns: &[("service", Text), ("key", Text), ("value", Blob), ("version", Int), ("deleted_at", Int)],
        order: "service, key",
    },
    Table { name: "version_floors", columns: &[("service", Text), ("floor", Int)], order: "service" },
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
    },
    Table {
        name: "saga_definitions",
        columns: &[("digest", Text), ("name", Text), ("text", Text), ("saved_at", Int)],
        order: "digest",
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
    },
    // One row, there from the start in every store: replaced, not added.
    Table { name: "dispatch", columns: &[("id", Int), ("through", Int)], order: "id" },
    Table {
        name: "plugin_uploads",
        columns: &[("service", Text), ("digest", Text), ("base", Text), ("wasm", Blob), ("uploaded_at", Int)],
        order: "service",
    },
];

/// Where a store is: a SQLite data directory or a PostgreSQL connection string.
#[derive(Debug, Clone)]
pub enum Location {
    Sqlite(std::path::PathBuf),
    Postgres(String),
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Sqlite(dir) => write!(f, "the SQLite store in {}", dir.display()),
            Location::Postgres(_) => write!(f, "the PostgreSQL database"),
        }
    }
}

/// Rows per table, in [`TABLES`]' order.
pub type Counts = Vec<(&'static str, u64)>;

/// Writes the whole store at `from` to `out`, read in one snapshot. A SQLite store
/// must be at rest (no server using it): opening it takes its lock.
pub async fn export(from: &Location, out: &mut dyn Write) -> anyhow::Result<Counts> {
    let header = json!({"format": FORMAT, "version": VERSION, "tables": TABLES.iter().map(|t| t.name).collect::<Vec<_>>()});
    writeln!(out, "{header}")?;
    let mut counts = Vec::new();
    match from {
        Location::Sqlite(dir) => {
            // Opening would make an empty store where there is none (a mistyped path).
            anyhow::ensure!(dir.join("wasaga.db").is_file(), "there is no wasaga store in {}", dir.display());
            // Opening migrates an older store and takes its lock for the export's length.
            let store = SqliteStore::open(dir, SqliteOptions::default()).map_err(|e| {
                anyhow::anyhow!("{e} (an export needs the store at rest: stop its server first)")
            })?;
            let mut conn = rusqlite::Connection::open(store.path())?;
            let tx = conn.transaction()?;
            for table in TABLES {
                let sql = format!("SELECT {} FROM {} ORDER BY {}", columns(table), table.name, table.order);
                let mut statement = tx.prepare(&sql)?;
                let mut rows = statement.query([])?;
                let mut n = 0;
                while let Some(row) = rows.next()? {
                    let mut object = Map::new();
                    for (i, (column, kind)) in table.columns.iter().enumerate() {
                        object.insert((*column).into(), sqlite_value(row, i, *kind)?);
                    }
                    write_row(out, table.name, object)?;
                    n += 1;
                }
                counts.push((table.name, n));
            }
        }
        Location::Postgres(url) => {
            // An older schema is migrated first: the file is always of the latest one.
            PgStore::migrate(url).await?;
            let client = pg_connect(url).await?;
            client.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").await?;
            for table in TABLES {
                let select: Vec<String> = table
                    .columns
                    .iter()
                    .map(
                        |(c, kind)| {
                            if matches!(kind, Int) { format!("{c}::bigint") } else { (*c).to_owned() }
                        },
                    )
                    .collect();
                let sql =
                    format!("SELECT {} FROM {} ORDER BY {}", select.join(", "), table.name, table.order);
                let rows = client.query_raw(&sql, std::iter::empty::<i64>()).await?;
                futures_util::pin_mut!(rows);
                let mut n = 0;
                while let Some(row) = rows.try_next().await? {
                    let mut object = Map::new();
                    for (i, (column, kind)) in table.columns.iter().enumerate() {
                        object.insert((*column).into(), pg_value(&row, i, *kind));
                    }
                    write_row(out, table.name, object)?;
                    n += 1;
                }
                counts.push((table.name, n));
            }
            client.batch_execute("COMMIT").await?;
        }
    }
    let rows: u64 = counts.iter().map(|(_, n)| n).sum();
    writeln!(out, "{}", json!({"end": {"rows": rows}}))?;
    out.flush()?;
    Ok(counts)
}

/// Loads a file written by [`export`] into the store at `to`, which must be empty, in
/// one transaction: all of it, or nothing. The file is read as it loads (it may be
/// larger than memory); a bad line or a missing end rolls everything back.
pub async fn import(to: &Location, input: &mut dyn BufRead) -> anyhow::Result<Counts> {
    let mut rows = Rows::open(input)?;
    let mut counts: Counts = TABLES.iter().map(|t| (t.name, 0)).collect();
    match to {
        Location::Sqlite(dir) => {
            let store = SqliteStore::open(dir, SqliteOptions::default()).map_err(|e| {
                anyhow::anyhow!("{e} (an import needs the store at rest: stop its server first)")
            })?;
            let mut conn = rusqlite::Connection::open(store.path())?;
            conn.busy_timeout(std::time::Duration::from_secs(10))?;
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            for sql in emptiness_checks() {
                anyhow::ensure!(!tx.query_row(&sql, [], |row| row.get::<_, bool>(0))?, not_empty(to));
            }
            while let Some((t, row)) = rows.next_row()? {
                let table = &TABLES[t];
                let values = table
                    .columns
                    .iter()
                    .map(|(column, kind)| sqlite_param(table, column, *kind, value_of(&row, column)))
                    .collect::<anyhow::Result<Vec<_>>>()?;
                tx.prepare_cached(&sqlite_insert(table))?.execute(rusqlite::params_from_iter(values))?;
                counts[t].1 += 1;
            }
            tx.commit()?;
        }
        Location::Postgres(url) => {
            PgStore::migrate(url).await?;
            let mut client = pg_connect(url).await?;
            let tx = client.transaction().await?;
            for sql in emptiness_checks() {
                anyhow::ensure!(!tx.query_one(&sql, &[]).await?.get::<_, bool>(0), not_empty(to));
            }
            let mut statements = std::collections::HashMap::new();
            while let Some((t, row)) = rows.next_row()? {
                let table = &TABLES[t];
                let values = table
                    .columns
                    .iter()
                    .map(|(column, kind)| pg_param(table, column, *kind, value_of(&row, column)))
                    .collect::<anyhow::Result<Vec<_>>>()?;
                let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
                    values.iter().map(|v| v.as_ref() as _).collect();
                let statement = match statements.get(&t) {
                    Some(statement) => statement,
                    None => statements.entry(t).or_insert(tx.prepare(&pg_insert(table)).await?),
                };
                tx.execute(statement, &params).await?;
                counts[t].1 += 1;
            }
            // New events go on above the imported ones and the dispatcher's cursor (the
            // newest events may have been forgotten by retention before the export).
            tx.batch_execute(
                "SELECT setval(pg_get_serial_sequence('outbox', 'id'),
                   greatest((SELECT max(id) FROM outbox), (SELECT through FROM dispatch WHERE id = 1), 1))",
            )
            .await?;
            tx.commit().await?;
        }
    }
    Ok(counts)
}

/// A row's value of `column`: NULL when the file has none (a column added since the
/// file was written, such as the outbox's `traceparent`; a NOT NULL one is then
/// refused by the store).
fn value_of<'a>(row: &'a Map<String, Value>, column: &str) -> &'a Value {
    row.get(column).unwrap_or(&Value::Null)
}

fn columns(table: &Table) -> String {
    table.columns.iter().map(|(c, _)| *c).collect::<Vec<_>>().join(", ")
}

/// The statement that loads a row of `table` into SQLite (the dispatcher's cursor,
/// there from the start, is replaced).
fn sqlite_insert(table: &Table) -> String {
    let verb = if table.name == "dispatch" { "INSERT OR REPLACE" } else { "INSERT" };
    let marks = vec!["?"; table.columns.len()].join(", ");
    format!("{verb} INTO {} ({}) VALUES ({marks})", table.name, columns(table))
}

/// The same for PostgreSQL, each parameter cast from its kind (an `INTEGER` column
/// takes a `bigint` parameter that way).
fn pg_insert(table: &Table) -> String {
    let casts: Vec<String> =
        (1..).zip(table.columns).map(|(i, (_, kind))| format!("${i}::{}", pg_type(*kind))).collect();
    let mut sql = format!("INSERT INTO {} ({}) VALUES ({})", table.name, columns(table), casts.join(", "));
    if table.name == "dispatch" {
        sql += " ON CONFLICT (id) DO UPDATE SET through = excluded.through";
    }
    sql
}

fn write_row(out: &mut dyn Write, table: &str, row: Map<String, Value>) -> std::io::Result<()> {
    writeln!(out, "{}", json!({"table": table, "row": row}))
}

/// The rows of a file written by [`export`], each checked as it is read: the header
/// first, then each row's table and columns, and the end line with the count of rows,
/// without which reading fails (and the import's transaction with it).
struct Rows<'a> {
    lines: std::io::Lines<&'a mut dyn BufRead>,
    /// The number of the line read last.
    number: u64,
    read: u64,
}

impl<'a> Rows<'a> {
    fn open(input: &'a mut dyn BufRead) -> anyhow::Result<Rows<'a>> {
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
        Ok(Rows { lines, number: 1, read: 0 })
    }

    /// The next row, as the index of its table in [`TABLES`] and its columns; `None`
    /// after the end line.
    fn next_row(&mut self) -> anyhow::Result<Option<(usize, Map<String, Value>)>> {
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
            anyhow::ensure!(
                end["rows"].as_u64() == Some(self.read),
                "the file ends after {} rows but says it has {}",
                self.read,
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
        if let Some(extra) = row.keys().find(|k| !TABLES[t].columns.iter().any(|(c, _)| c == k)) {
            anyhow::bail!("line {number}: table `{name}` has no column `{extra}`");
        }
        self.read += 1;
        Ok(Some((t, row)))
    }
}

/// One query per table that says whether it has a row (the dispatcher's cursor is
/// there in every store).
fn emptiness_checks() -> impl Iterator<Item = String> {
    TABLES
        .iter()
        .filter(|t| t.name != "dispatch")
        .map(|t| format!("SELECT EXISTS (SELECT 1 FROM {})", t.name))
}

fn not_empty(to: &Location) -> String {
    format!("{to} is not empty: an import goes into an empty store only (nothing was loaded)")
}

fn sqlite_value(row: &rusqlite::Row<'_>, i: usize, kind: Kind) -> rusqlite::Result<Value> {
    Ok(match kind {
        Text => row.get::<_, Option<String>>(i)?.map_or(Value::Null, Value::from),
        Int => row.get::<_, Option<i64>>(i)?.map_or(Value::Null, Value::from),
        Blob => row.get::<_, Option<Vec<u8>>>(i)?.map_or(Value::Null, |b| BASE64.encode(b).into()),
        Bool => row.get::<_, Option<i64>>(i)?.map_or(Value::Null, |b| (b != 0).into()),
    })
}

fn pg_value(row: &tokio_postgres::Row, i: usize, kind: Kind) -> Value {
    match kind {
        Text => row.get::<_, Option<String>>(i).map_or(Value::Null, Value::from),
        Int => row.get::<_, Option<i64>>(i).map_or(Value::Null, Value::from),
        Blob => row.get::<_, Option<Vec<u8>>>(i).map_or(Value::Null, |b| BASE64.encode(b).into()),
        Bool => row.get::<_, Option<bool>>(i).map_or(Value::Null, Value::from),
    }
}

fn pg_type(kind: Kind) -> &'static str {
    match kind {
        Text => "text",
        Int => "bigint",
        Blob => "bytea",
        Bool => "boolean",
    }
}

/// A column's value from the file, as the kind it must be (or NULL).
enum Cell {
    Null,
    Text(String),
    Int(i64),
    Blob(Vec<u8>),
    Bool(bool),
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

fn sqlite_param(
    table: &Table,
    column: &str,
    kind: Kind,
    value: &Value,
) -> anyhow::Result<rusqlite::types::Value> {
    use rusqlite::types::Value as V;
    Ok(match cell(table, column, kind, value)? {
        Cell::Null => V::Null,
        Cell::Text(s) => V::Text(s),
        Cell::Int(n) => V::Integer(n),
        Cell::Blob(b) => V::Blob(b),
        Cell::Bool(b) => V::Integer(b.into()),
    })
}

type PgParam = Box<dyn tokio_postgres::types::ToSql + Sync + Send>;

fn pg_param(table: &Table, column: &str, kind: Kind, value: &Value) -> anyhow::Result<PgParam> {
    Ok(match cell(table, column, kind, value)? {
        Cell::Null => match kind {
            Text => Box::new(None::<String>),
            Int => Box::new(None::<i64>),
            Blob => Box::new(None::<Vec<u8>>),
            Bool => Box::new(None::<bool>),
        },
        Cell::Text(s) => Box::new(s),
        Cell::Int(n) => Box::new(n),
        Cell::Blob(b) => Box::new(b),
        Cell::Bool(b) => Box::new(b),
    })
}

async fn pg_connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let config: tokio_postgres::Config = url.parse().context("not a PostgreSQL connection string")?;
    let (client, connection) =
        config.connect(tokio_postgres::NoTls).await.context("connecting to PostgreSQL")?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!("the export's connection ended: {error}");
        }
    });
    Ok(client)
}

#[cfg(test)]
mod tests;
