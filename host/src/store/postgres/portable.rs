//! `wasaga export` and `import` of a PostgreSQL store: its rows in the file format of
//! `store/portable.rs`. Other hosts may be running: an export reads one snapshot, and
//! an import into an empty database is one transaction.

use std::collections::HashMap;
use std::io::{BufRead, Write};

use anyhow::Context;
use futures_util::TryStreamExt;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls};

use super::PgStore;
use crate::store::portable::{
    Cell, Counts, Export, Kind, Rows, TABLES, Table, column_list, must_be_empty, not_empty,
};

/// Writes the whole database at `url` to `out`, read in one repeatable-read snapshot.
pub async fn export(url: &str, out: &mut dyn Write) -> anyhow::Result<Counts> {
    // An older schema is migrated first: the file is always of the latest one.
    PgStore::migrate(url).await?;
    let client = connect(url).await?;
    client.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").await?;
    let mut file = Export::start(out)?;
    for (t, table) in TABLES.iter().enumerate() {
        // SQLite's INTEGER columns are `integer` or `bigint` here: read as `bigint`.
        let select: Vec<String> = (table.columns.iter())
            .map(|(c, kind)| if *kind == Kind::Int { format!("{c}::bigint") } else { (*c).to_owned() })
            .collect();
        let sql = format!("SELECT {} FROM {} ORDER BY {}", select.join(", "), table.name, table.order);
        let rows = client.query_raw(&sql, std::iter::empty::<i64>()).await?;
        futures_util::pin_mut!(rows);
        while let Some(row) = rows.try_next().await? {
            let cells =
                (table.columns.iter().enumerate()).map(|(i, (_, kind))| cell(&row, i, *kind)).collect();
            file.row(t, cells)?;
        }
    }
    client.batch_execute("COMMIT").await?;
    file.finish()
}

/// Loads a file written by an export into the database at `url`, which must be
/// empty, in one transaction: all of it, or nothing.
pub async fn import(url: &str, input: &mut dyn BufRead) -> anyhow::Result<Counts> {
    let mut rows = Rows::open(input)?;
    PgStore::migrate(url).await?;
    let mut client = connect(url).await?;
    let tx = client.transaction().await?;
    for table in must_be_empty() {
        let sql = format!("SELECT EXISTS (SELECT 1 FROM {})", table.name);
        anyhow::ensure!(
            !tx.query_one(&sql, &[]).await?.get::<_, bool>(0),
            not_empty("the PostgreSQL database")
        );
    }
    let mut statements = HashMap::new();
    while let Some((t, cells)) = rows.next_row()? {
        let table = &TABLES[t];
        let values: Vec<Param> =
            table.columns.iter().zip(cells).map(|((_, kind), cell)| param(*kind, cell)).collect();
        let params: Vec<&(dyn ToSql + Sync)> = values.iter().map(|v| v.as_ref() as _).collect();
        let statement = match statements.get(&t) {
            Some(statement) => statement,
            None => statements.entry(t).or_insert(tx.prepare(&insert(table)).await?),
        };
        tx.execute(statement, &params).await?;
    }
    // New events go on above the imported ones and the dispatcher's cursor (the
    // newest events may have been forgotten by retention before the export).
    tx.batch_execute(
        "SELECT setval(pg_get_serial_sequence('outbox', 'id'),
           greatest((SELECT max(id) FROM outbox), (SELECT through FROM dispatch WHERE id = 1), 1))",
    )
    .await?;
    tx.commit().await?;
    Ok(rows.counts())
}

/// A connection of the export's or import's own, with the store's settings
/// (`config`) but not its writer's or readers' (`conn.rs`: those forbid the scans an
/// export is made of).
async fn connect(url: &str) -> anyhow::Result<Client> {
    let (client, connection) =
        super::config(url)?.connect(NoTls).await.context("connecting to PostgreSQL")?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!("the export's or import's connection ended: {error}");
        }
    });
    Ok(client)
}

/// The statement that loads a row of `table`, each parameter cast from its kind (an
/// `integer` column takes a `bigint` parameter that way); a preset row, keyed by its
/// first column, is replaced.
fn insert(table: &Table) -> String {
    let casts: Vec<String> =
        (1..).zip(table.columns).map(|(i, (_, kind))| format!("${i}::{}", sql_type(*kind))).collect();
    let mut sql =
        format!("INSERT INTO {} ({}) VALUES ({})", table.name, column_list(table), casts.join(", "));
    if table.preset {
        let (key, rest) = table.columns.split_first().expect("a table has columns");
        let set: Vec<String> = rest.iter().map(|(c, _)| format!("{c} = excluded.{c}")).collect();
        sql += &format!(" ON CONFLICT ({}) DO UPDATE SET {}", key.0, set.join(", "));
    }
    sql
}

fn sql_type(kind: Kind) -> &'static str {
    match kind {
        Kind::Text => "text",
        Kind::Int => "bigint",
        Kind::Blob => "bytea",
        Kind::Bool => "boolean",
    }
}

fn cell(row: &tokio_postgres::Row, i: usize, kind: Kind) -> Cell {
    match kind {
        Kind::Text => row.get::<_, Option<String>>(i).map_or(Cell::Null, Cell::Text),
        Kind::Int => row.get::<_, Option<i64>>(i).map_or(Cell::Null, Cell::Int),
        Kind::Blob => row.get::<_, Option<Vec<u8>>>(i).map_or(Cell::Null, Cell::Blob),
        Kind::Bool => row.get::<_, Option<bool>>(i).map_or(Cell::Null, Cell::Bool),
    }
}

type Param = Box<dyn ToSql + Sync + Send>;

/// A cell as a parameter of its column's type (a NULL too: its type is the column's).
fn param(kind: Kind, cell: Cell) -> Param {
    match (cell, kind) {
        (Cell::Null, Kind::Text) => Box::new(None::<String>),
        (Cell::Null, Kind::Int) => Box::new(None::<i64>),
        (Cell::Null, Kind::Blob) => Box::new(None::<Vec<u8>>),
        (Cell::Null, Kind::Bool) => Box::new(None::<bool>),
        (Cell::Text(s), _) => Box::new(s),
        (Cell::Int(n), _) => Box::new(n),
        (Cell::Blob(b), _) => Box::new(b),
        (Cell::Bool(b), _) => Box::new(b),
    }
}
