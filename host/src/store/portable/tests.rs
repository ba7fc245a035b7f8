use std::path::Path;

use serde_json::Value;

use super::{KEPT_BACK, TABLES};
use crate::app::Storage;
use crate::service::PluginDigest;
use crate::store::contract_tests::{commit_of, create_saga, outcome, saga};
use crate::store::postgres::{PgOptions, PgStore};
use crate::store::sqlite::{SqliteOptions, SqliteStore};
use crate::store::{
    ChangeSet, Commit, DefinitionRow, DeliveryChange, DeliveryRow, DeliveryStatus, Event, SagaStatus, Store,
    Subscriber, Transaction, TxLimits, UploadChange, UploadRow, Uploaded,
};

/// A store with rows in the tables that are copied: a record, a tombstone, a stored
/// outcome, a saga and its definition, two events (one delivered, which moves the
/// dispatcher's cursor), an upload.
async fn fill(store: &dyn Store) {
    let mut tx = Transaction::new(store.snapshot("svc").unwrap(), TxLimits::default());
    tx.set("a", b"{\"n\":1}".to_vec()).await.unwrap();
    tx.set("gone", b"1".to_vec()).await.unwrap();
    let mut changes = tx.into_changes();
    changes.events.push(Event {
        subscribers: Some(vec![Subscriber { service: "mail".into(), operation: "on-t".into() }]),
        ..Event::new("t", b"{}", Some("c"))
    });
    changes.events.push(Event::new("t", b"\x00\xff", None));
    let mut commit = commit_of(changes, Some(outcome("k", 1, i64::MAX)));
    commit.traceparent = Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
    store.commit(commit).await.unwrap();
    let mut tx = Transaction::new(store.snapshot("svc").unwrap(), TxLimits::default());
    tx.delete("gone", Some(1)).await.unwrap();
    store.commit(commit_of(tx.into_changes(), None)).await.unwrap();

    create_saga(store, saga("s-1", "place-order", "order-1", SagaStatus::Running, 5)).await.unwrap();
    let definition = DefinitionRow {
        digest: "d1".into(),
        name: "place-order".into(),
        text: "name = \"x\"".into(),
        saved_at: 3,
    };
    let upload = UploadRow {
        service: "hello".into(),
        component: Some(Uploaded { digest: PluginDigest::of(b"wasm"), wasm: b"wasm".to_vec() }),
        base: None,
        uploaded_at: 4,
    };
    let first = store.events_after(0, 10).await.unwrap()[0].id;
    let delivery = DeliveryRow {
        event_id: first,
        subscriber: "mail".into(),
        operation: "on-t".into(),
        topic: "t".into(),
        correlation_id: Some("c".into()),
        status: DeliveryStatus::Delivered,
        attempts: 2,
        next_at: 6,
        outcome: Some("ok".into()),
        last_error: Some("once: \"timeout\"".into()),
        created_at: 6,
        done_at: Some(7),
    };
    let rest = Commit {
        definitions: vec![definition],
        uploads: vec![UploadChange::Keep(upload)],
        deliveries: vec![DeliveryChange::Create { deliveries: vec![delivery], through: first }],
        ..Commit::default()
    };
    store.commit(rest).await.unwrap();
}

fn sqlite(dir: &Path) -> Storage {
    Storage::Sqlite { data: dir.into(), options: SqliteOptions::default() }
}

fn postgres(url: &str) -> Storage {
    Storage::Postgres { url: url.into(), options: PgOptions::default() }
}

async fn export_of(from: &Storage) -> Vec<u8> {
    let mut file = Vec::new();
    from.export(&mut file).await.unwrap();
    file
}

/// SQLite → file → PostgreSQL → file → SQLite: the three files are the same, so
/// every column of every row survived both backends; the imported store serves
/// what was there (a record at its version, the saga, the events), new events go on
/// above the imported ones, and a second import into a store with data is refused.
#[tokio::test]
async fn a_store_moves_between_backends_whole() {
    let origin = tempfile::tempdir().unwrap();
    {
        let store = SqliteStore::open(origin.path(), SqliteOptions::default()).unwrap();
        fill(&store).await;
    }
    let from_sqlite = export_of(&sqlite(origin.path())).await;
    let lines = String::from_utf8(from_sqlite.clone()).unwrap();
    assert_eq!(lines.lines().count(), 1 + 10 + 1, "header, ten rows, end: {lines}");

    let url = crate::store::postgres::testing::scratch().await;
    let target = postgres(&url);
    let counts = target.import(&mut from_sqlite.as_slice()).await.unwrap();
    assert_eq!(counts.iter().map(|(_, n)| n).sum::<u64>(), 10);
    let from_postgres = export_of(&target).await;
    assert_eq!(String::from_utf8(from_postgres.clone()).unwrap(), lines, "the same file back");

    let store = PgStore::connect(&url, PgOptions::default()).await.unwrap();
    let mut tx = Transaction::new(store.snapshot("svc").unwrap(), TxLimits::default());
    let a = tx.get("a").await.unwrap().unwrap();
    assert_eq!((a.value, a.version), (b"{\"n\":1}".to_vec(), 1));
    assert_eq!(tx.get("gone").await.unwrap(), None);
    assert_eq!(store.saga("s-1").await.unwrap().unwrap().key, "order-1");
    let events = store.events_after(0, 10).await.unwrap();
    let mut changes = ChangeSet::default();
    changes.events.push(Event::new("t", b"{}", None));
    store.commit(commit_of(changes, None)).await.unwrap();
    let after = store.events_after(events[1].id, 10).await.unwrap();
    assert_eq!(after.len(), 1, "a new event goes on above the imported ones");
    assert!(after[0].id > events[1].id);

    let again = target.import(&mut from_sqlite.as_slice()).await.unwrap_err();
    assert!(format!("{again:#}").contains("is not empty"), "{again:#}");

    let back = tempfile::tempdir().unwrap();
    sqlite(back.path()).import(&mut from_postgres.as_slice()).await.unwrap();
    assert_eq!(export_of(&sqlite(back.path())).await, from_sqlite, "and back to SQLite");
}

/// A store whose every event retention forgot moves with its dispatcher's cursor,
/// and on either backend the next event goes on above that cursor, to be fanned
/// out. (PostgreSQL's sequence was once set from the highest event left: with none
/// left, new events got ids at or below the cursor, never delivered.)
#[tokio::test]
async fn after_an_import_new_events_go_above_the_dispatcher_s_cursor() {
    let origin = tempfile::tempdir().unwrap();
    let through = {
        let store = SqliteStore::open(origin.path(), SqliteOptions::default()).unwrap();
        for _ in 0..3 {
            let mut changes = ChangeSet::default();
            changes.events.push(Event::new("t", b"{}", None));
            store.commit(commit_of(changes, None)).await.unwrap();
        }
        let through = store.events_after(0, 10).await.unwrap()[2].id;
        let fanned = DeliveryChange::Create { deliveries: Vec::new(), through };
        store.commit(Commit { deliveries: vec![fanned], ..Commit::default() }).await.unwrap();
        let later = crate::clock::now_ms() + 1;
        assert_eq!(store.prune(crate::store::PruneKind::Events, later, 10).await.unwrap(), 3);
        through
    };
    let file = export_of(&sqlite(origin.path())).await;
    let publish = async |store: &dyn Store| {
        let mut changes = ChangeSet::default();
        changes.events.push(Event::new("t", b"{}", None));
        store.commit(commit_of(changes, None)).await.unwrap();
        assert_eq!(store.dispatched_through().await.unwrap(), through);
        let new = store.events_after(through, 10).await.unwrap();
        assert_eq!(new.len(), 1, "the new event is past the cursor {through}");
    };
    let url = crate::store::postgres::testing::scratch().await;
    postgres(&url).import(&mut file.as_slice()).await.unwrap();
    publish(&PgStore::connect(&url, PgOptions::default()).await.unwrap()).await;
    let back = tempfile::tempdir().unwrap();
    sqlite(back.path()).import(&mut file.as_slice()).await.unwrap();
    publish(&SqliteStore::open(back.path(), SqliteOptions::default()).unwrap()).await;
}

/// An export from a directory without a store (a mistyped `--data`) says so, and
/// leaves no empty store behind.
#[tokio::test]
async fn an_export_of_no_store_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let error = sqlite(dir.path()).export(&mut Vec::new()).await.unwrap_err();
    assert!(format!("{error:#}").contains("there is no wasaga store in"), "{error:#}");
    assert!(!dir.path().join("wasaga.db").exists());
}

/// A file written before the outbox had `traceparent` (no such key in its rows)
/// loads, its events without one.
#[tokio::test]
async fn a_file_from_before_a_new_column_loads() {
    let full = {
        let dir = tempfile::tempdir().unwrap();
        fill(&SqliteStore::open(dir.path(), SqliteOptions::default()).unwrap()).await;
        String::from_utf8(export_of(&sqlite(dir.path())).await).unwrap()
    };
    assert!(full.contains("\"traceparent\":\"00-4bf92f"), "{full}");
    let older: String = full
        .lines()
        .map(|line| match serde_json::from_str::<Value>(line) {
            Ok(mut row) if row["table"] == "outbox" => {
                row["row"].as_object_mut().unwrap().remove("traceparent");
                format!("{row}\n")
            }
            _ => format!("{line}\n"),
        })
        .collect();
    assert!(!older.contains("traceparent\":\"00"), "{older}");
    let dir = tempfile::tempdir().unwrap();
    let counts = sqlite(dir.path()).import(&mut older.as_bytes()).await.unwrap();
    assert_eq!(counts.iter().find(|(t, _)| *t == "outbox").unwrap().1, 2);
    let again = String::from_utf8(export_of(&sqlite(dir.path())).await).unwrap();
    assert_eq!(again.matches("\"traceparent\":null").count(), 2, "{again}");
}

/// A file cut short, one that is not an export, or one with a column no store
/// has: refused with the reason, and nothing is loaded.
#[tokio::test]
async fn a_bad_file_loads_nothing() {
    let full = {
        let dir = tempfile::tempdir().unwrap();
        fill(&SqliteStore::open(dir.path(), SqliteOptions::default()).unwrap()).await;
        String::from_utf8(export_of(&sqlite(dir.path())).await).unwrap()
    };
    let cut: String = full.lines().take(5).map(|l| format!("{l}\n")).collect();
    let extra = full.replacen("{\"row\":{", "{\"row\":{\"colour\":\"red\",", 1);
    let cases = [
        (cut.as_str(), "cut short"),
        ("{\"hello\": 1}\n", "not a file written by `wasaga export`"),
        ("", "the file is empty"),
        (extra.as_str(), "has no column `colour`"),
    ];
    for (file, reason) in cases {
        let dir = tempfile::tempdir().unwrap();
        let target = sqlite(dir.path());
        let error = target.import(&mut file.as_bytes()).await.unwrap_err();
        assert!(format!("{error:#}").contains(reason), "expected {reason:?}: {error:#}");
        // A file refused by its first line is refused before the store is opened.
        if dir.path().join("wasaga.db").exists() {
            let left = String::from_utf8(export_of(&target).await).unwrap();
            assert_eq!(left.lines().count(), 3, "nothing loaded (the cursor is always there): {left}");
        }
    }
}

/// Every column of every table of both schemas is in the file, or its table is kept
/// back by name: a column added to a schema and not to the format would be left
/// behind, without a word, by every move between stores.
#[tokio::test]
async fn the_format_holds_every_column_of_both_schemas() {
    let format: Vec<(String, String)> = TABLES
        .iter()
        .flat_map(|t| t.columns.iter().map(|(c, _)| (t.name.to_owned(), (*c).to_owned())))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let sqlite = SqliteStore::open(dir.path(), SqliteOptions::default()).unwrap();
    let conn = rusqlite::Connection::open(sqlite.path()).unwrap();
    let mut statement = conn
        .prepare(
            "SELECT m.name, c.name FROM sqlite_master m, pragma_table_info(m.name) c
             WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%' ORDER BY 1, 2",
        )
        .unwrap();
    let in_sqlite: Vec<(String, String)> =
        statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?))).unwrap().map(Result::unwrap).collect();
    let url = crate::store::postgres::testing::scratch().await;
    let pg = PgStore::connect(&url, PgOptions::default()).await.unwrap();
    drop(pg);
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let in_postgres: Vec<(String, String)> = client
        .query(
            "SELECT table_name::text, column_name::text FROM information_schema.columns
             WHERE table_schema = current_schema() ORDER BY 1, 2",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    for (schema, columns) in [("SQLite", in_sqlite), ("PostgreSQL", in_postgres)] {
        assert!(columns.len() > format.len() / 2, "{schema}'s columns were read: {columns:?}");
        let missing: Vec<_> = columns
            .iter()
            .filter(|(table, _)| !KEPT_BACK.contains(&table.as_str()))
            .filter(|column| !format.contains(column))
            .collect();
        assert!(missing.is_empty(), "{schema} has columns the file does not: {missing:?}");
        let gone: Vec<_> = format.iter().filter(|column| !columns.contains(column)).collect();
        assert!(gone.is_empty(), "the file has columns {schema} does not: {gone:?}");
    }
}
