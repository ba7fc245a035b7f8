use super::super::{PgOptions, PgStore, config, testing};
use super::checks::{FLOORS, LOCK_RECORDS, OUTCOMES_STORED, RECORD_VERSIONS, SAGA_VERSIONS, SAGAS_BY_KEY};
use super::{Conn, Pipelined, Writes, pipeline};
use crate::store::postgres::records::{STORE_OUTCOMES, WRITE_RECORDS};
use crate::store::postgres::sagas::UPDATE_SAGAS;
use crate::store::{ChangeSet, Commit, StoreError, Write};

/// The writer's look-ups of rows by key are planned once per connection and the
/// plan kept until the table is next analyzed. Planned while the tables hold a few
/// rows (analyzed), they must still look the rows up by key: a plan that scans
/// the table stays as the table grows to millions of rows.
#[tokio::test]
async fn statements_planned_on_small_tables_look_rows_up_by_key() {
    let url = testing::scratch().await;
    drop(PgStore::connect(&url, PgOptions::default()).await.unwrap()); // the schema
    let conn = Conn::open(&config(&url).unwrap()).await.unwrap();
    conn.client
        .batch_execute(
            "INSERT INTO records (service, key, value, version) VALUES ('s', 'a', '', 1), ('s', 'b', '', 1);
             ANALYZE records; ANALYZE invocations; ANALYZE sagas; ANALYZE version_floors;",
        )
        .await
        .unwrap();
    let statements = [
        ("lock", LOCK_RECORDS, 2),
        ("outcomes_stored", OUTCOMES_STORED, 4),
        ("record_versions", RECORD_VERSIONS, 2),
        ("floors", FLOORS, 1),
        ("saga_versions", SAGA_VERSIONS, 1),
        ("sagas_by_key", SAGAS_BY_KEY, 2),
        ("outcomes", STORE_OUTCOMES, 11),
        ("records", WRITE_RECORDS, 5),
        ("sagas", UPDATE_SAGAS, 6),
    ];
    for (name, sql, parameters) in statements {
        conn.client.batch_execute(&format!("PREPARE {name} AS {sql}")).await.unwrap();
        let nulls = vec!["NULL"; parameters].join(", ");
        let plan: Vec<String> = conn
            .client
            .query(&format!("EXPLAIN EXECUTE {name}({nulls})"), &[])
            .await
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect();
        let plan = plan.join("\n");
        assert!(!plan.contains("Seq Scan"), "{name} scans a table:\n{plan}");
    }
}

/// A batch's record writes are one statement per round: a key written by two of
/// its commits goes in two, in commit order, and a row whose guard fails (a version
/// another writer changed after the checks) refuses the commit it belongs to.
#[tokio::test]
async fn multi_row_writes_go_in_rounds_and_name_the_commit_a_guard_refuses() {
    let url = testing::scratch().await;
    drop(PgStore::connect(&url, PgOptions::default()).await.unwrap()); // the schema
    let mut conn = Conn::open(&config(&url).unwrap()).await.unwrap();
    conn.client
        .batch_execute("INSERT INTO records (service, key, value, version) VALUES ('svc', 'taken', '', 5)")
        .await
        .unwrap();
    let commit = |writes: &[(&str, u64)]| Commit {
        service: "svc".into(),
        changes: ChangeSet {
            writes: writes
                .iter()
                .map(|(key, version)| Write {
                    key: (*key).into(),
                    value: Some(b"v".to_vec()),
                    version: *version,
                })
                .collect(),
            ..ChangeSet::default()
        },
        ..Commit::default()
    };
    let mut batch = Writes::default();
    batch.add(0, &commit(&[("a", 1)]));
    batch.add(1, &commit(&[("a", 2), ("b", 1)]));
    let steps = batch.steps();
    assert_eq!(steps.len(), 2, "`a` twice: two rounds");
    conn.client.batch_execute("BEGIN").await.unwrap();
    assert!(matches!(pipeline(&mut conn, &steps).await.unwrap(), Pipelined::Done(_)));
    conn.client.batch_execute("ROLLBACK").await.unwrap();

    let mut batch = Writes::default();
    batch.add(0, &commit(&[("a", 1)]));
    batch.add(1, &commit(&[("c", 1), ("taken", 3)])); // read at 2, but it is at 5
    conn.client.batch_execute("BEGIN").await.unwrap();
    match pipeline(&mut conn, &batch.steps()).await.unwrap() {
        Pipelined::Late(job, StoreError::Conflict(c)) => assert_eq!((job, c.key.as_str()), (1, "taken")),
        _ => panic!("the guard of `taken` holds"),
    }
    conn.client.batch_execute("ROLLBACK").await.unwrap();
}
