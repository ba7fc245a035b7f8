//! `wasaga export` and `import` of a SQLite store: its rows in the file format of
//! `store/portable.rs`. The store must be at rest: opening it takes its lock.

use std::io::{BufRead, Write};
use std::path::Path;

use rusqlite::types::Value;
use rusqlite::{Connection, TransactionBehavior};

use super::{SqliteOptions, SqliteStore};
use crate::store::portable::{
    Cell, Counts, Export, Kind, Rows, TABLES, Table, column_list, must_be_empty, not_empty,
};

/// Writes the whole store in `dir` to `out`, read in one transaction.
pub fn export(dir: &Path, out: &mut dyn Write) -> anyhow::Result<Counts> {
    // Opening would make an empty store where there is none (a mistyped path).
    anyhow::ensure!(dir.join("wasaga.db").is_file(), "there is no wasaga store in {}", dir.display());
    let (_store, mut conn) = open(dir, "an export")?;
    let tx = conn.transaction()?;
    let mut file = Export::start(out)?;
    for (t, table) in TABLES.iter().enumerate() {
        let sql = format!("SELECT {} FROM {} ORDER BY {}", column_list(table), table.name, table.order);
        let mut statement = tx.prepare(&sql)?;
        let mut rows = statement.query([])?;
        while let Some(row) = rows.next()? {
            let cells = (table.columns.iter().enumerate())
                .map(|(i, (_, kind))| cell(row, i, *kind))
                .collect::<rusqlite::Result<_>>()?;
            file.row(t, cells)?;
        }
    }
    file.finish()
}

/// Loads a file written by an export into the store in `dir`, which must be empty,
/// in one transaction: all of it, or nothing.
pub fn import(dir: &Path, input: &mut dyn BufRead) -> anyhow::Result<Counts> {
    // A file that is not an export is refused before the store is opened (or made).
    let mut rows = Rows::open(input)?;
    let (_store, mut conn) = open(dir, "an import")?;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    for table in must_be_empty() {
        let sql = format!("SELECT EXISTS (SELECT 1 FROM {})", table.name);
        anyhow::ensure!(
            !tx.query_row(&sql, [], |row| row.get::<_, bool>(0))?,
            not_empty(&format!("the SQLite store in {}", dir.display()))
        );
    }
    while let Some((t, cells)) = rows.next_row()? {
        let values = cells.into_iter().map(value);
        tx.prepare_cached(&insert(&TABLES[t]))?.execute(rusqlite::params_from_iter(values))?;
    }
    tx.commit()?;
    Ok(rows.counts())
}

/// Opens (and migrates) the store, which holds its lock meanwhile, and a connection
/// of the export's or import's own.
fn open(dir: &Path, what: &str) -> anyhow::Result<(SqliteStore, Connection)> {
    let store = SqliteStore::open(dir, SqliteOptions::default())
        .map_err(|e| anyhow::anyhow!("{e} ({what} needs the store at rest: stop its server first)"))?;
    let conn = Connection::open(store.path())?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    Ok((store, conn))
}

/// The statement that loads a row of `table` (a preset row is replaced).
fn insert(table: &Table) -> String {
    let verb = if table.preset { "INSERT OR REPLACE" } else { "INSERT" };
    let marks = vec!["?"; table.columns.len()].join(", ");
    format!("{verb} INTO {} ({}) VALUES ({marks})", table.name, column_list(table))
}

/// Column `i` of a row, as its kind in the file (SQLite keeps a boolean as 0 or 1).
fn cell(row: &rusqlite::Row<'_>, i: usize, kind: Kind) -> rusqlite::Result<Cell> {
    Ok(match kind {
        Kind::Text => row.get::<_, Option<String>>(i)?.map_or(Cell::Null, Cell::Text),
        Kind::Int => row.get::<_, Option<i64>>(i)?.map_or(Cell::Null, Cell::Int),
        Kind::Blob => row.get::<_, Option<Vec<u8>>>(i)?.map_or(Cell::Null, Cell::Blob),
        Kind::Bool => row.get::<_, Option<i64>>(i)?.map_or(Cell::Null, |b| Cell::Bool(b != 0)),
    })
}

fn value(cell: Cell) -> Value {
    match cell {
        Cell::Null => Value::Null,
        Cell::Text(s) => Value::Text(s),
        Cell::Int(n) => Value::Integer(n),
        Cell::Blob(b) => Value::Blob(b),
        Cell::Bool(b) => Value::Integer(b.into()),
    }
}
