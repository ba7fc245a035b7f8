//! The database schema, as an append-only list of migrations keyed on
//! `PRAGMA user_version`. Never edit a migration that has shipped: add one.

use rusqlite::Connection;

/// Migration `i` takes the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: versioned records, idempotency records, the outbox.
    "
    -- One row per record ever written. A delete keeps the row with value NULL (a
    -- tombstone), so that versions never go back.
    CREATE TABLE records (
        service TEXT NOT NULL,
        key     TEXT NOT NULL,
        value   BLOB,
        version INTEGER NOT NULL,
        PRIMARY KEY (service, key)
    ) WITHOUT ROWID;

    -- The stored outcome of each idempotent invocation, until it expires.
    CREATE TABLE invocations (
        service     TEXT NOT NULL,
        key         TEXT NOT NULL,
        fingerprint BLOB NOT NULL,
        operation   TEXT NOT NULL,
        ok          INTEGER NOT NULL,   -- 1: output holds the output; 0: the rejection reason
        output      BLOB NOT NULL,
        digest      TEXT NOT NULL,
        created_at  INTEGER NOT NULL,   -- unix ms
        expires_at  INTEGER NOT NULL,   -- unix ms
        PRIMARY KEY (service, key)
    ) WITHOUT ROWID;
    CREATE INDEX invocations_by_expiry ON invocations (expires_at);

    -- Events published by committed invocations, in commit order.
    CREATE TABLE outbox (
        id             INTEGER PRIMARY KEY,
        service        TEXT NOT NULL,
        topic          TEXT NOT NULL,
        payload        BLOB NOT NULL,
        correlation_id TEXT,
        created_at     INTEGER NOT NULL
    );
    ",
    // 2: sagas.
    "
    -- One row per saga; `state` is the state machine's JSON, `version` guards it.
    -- A rowid table: its rows (a KiB or two of state) are too large for WITHOUT ROWID.
    CREATE TABLE sagas (
        id          TEXT PRIMARY KEY,
        name        TEXT NOT NULL,
        status      TEXT NOT NULL,
        input       BLOB NOT NULL,
        state       TEXT NOT NULL,
        version     INTEGER NOT NULL,
        key         TEXT NOT NULL,
        fingerprint BLOB NOT NULL,
        created_at  INTEGER NOT NULL,
        updated_at  INTEGER NOT NULL
    );
    CREATE UNIQUE INDEX sagas_by_key ON sagas (name, key);
    CREATE INDEX sagas_by_status ON sagas (status, id);
    ",
    // 3: event deliveries.
    "
    -- Each outbox event's delivery to each subscriber, and where the dispatcher is.
    CREATE TABLE deliveries (
        event_id       INTEGER NOT NULL,
        subscriber     TEXT NOT NULL,
        operation      TEXT NOT NULL,
        topic          TEXT NOT NULL,
        correlation_id TEXT,
        status         TEXT NOT NULL,      -- pending, delivered, dead
        attempts       INTEGER NOT NULL,
        next_at        INTEGER NOT NULL,   -- unix ms
        outcome        TEXT,               -- ok, rejected
        last_error     TEXT,
        created_at     INTEGER NOT NULL,
        done_at        INTEGER,
        PRIMARY KEY (event_id, subscriber)
    );
    CREATE INDEX deliveries_due ON deliveries (status, next_at);
    CREATE INDEX deliveries_by_group ON deliveries (subscriber, topic, correlation_id, status, event_id);
    CREATE INDEX outbox_by_correlation ON outbox (correlation_id, id);
    CREATE TABLE dispatch (id INTEGER PRIMARY KEY CHECK (id = 1), through INTEGER NOT NULL);
    INSERT INTO dispatch (id, through) VALUES (1, 0);
    ",
    // 4: idempotency keys in spaces of their own (a client's key can never meet a
    // saga step's or a delivery's), and the chain of each stored invocation.
    "
    CREATE TABLE invocations_4 (
        service        TEXT NOT NULL,
        space          TEXT NOT NULL,   -- client, saga, event
        key            TEXT NOT NULL,
        fingerprint    BLOB NOT NULL,
        operation      TEXT NOT NULL,
        ok             INTEGER NOT NULL,
        output         BLOB NOT NULL,
        digest         TEXT NOT NULL,
        correlation_id TEXT,            -- NULL for outcomes stored before version 4
        created_at     INTEGER NOT NULL,
        expires_at     INTEGER NOT NULL,
        PRIMARY KEY (service, space, key)
    ) WITHOUT ROWID;
    -- The host's keys had fixed prefixes: they move to their spaces, so that an
    -- unfinished saga or delivery still finds its own outcome after the upgrade.
    INSERT INTO invocations_4
    SELECT service,
           CASE WHEN substr(key, 1, 5) = 'saga/' THEN 'saga'
                WHEN substr(key, 1, 6) = 'event/' THEN 'event'
                ELSE 'client' END,
           key, fingerprint, operation, ok, output, digest, NULL, created_at, expires_at
    FROM invocations;
    DROP TABLE invocations;
    ALTER TABLE invocations_4 RENAME TO invocations;
    CREATE INDEX invocations_by_expiry ON invocations (expires_at);
    ",
    // 5: every saga definition version, by the digest its sagas record, so that a
    // saga is driven by the version it started with after its file changed.
    "
    CREATE TABLE saga_definitions (
        digest   TEXT PRIMARY KEY,
        name     TEXT NOT NULL,
        text     TEXT NOT NULL,      -- the TOML; the latest with this digest (retry policies may differ)
        saved_at INTEGER NOT NULL    -- unix ms
    );
    ",
    // 6: retention. A tombstone says when its record was deleted (tombstones from
    // before count from this migration); a service's version floor is the highest
    // version of its forgotten tombstones (a key with no row reads at it); indexes find
    // what retention forgets without scanning.
    "
    ALTER TABLE records ADD COLUMN deleted_at INTEGER;
    UPDATE records SET deleted_at = CAST(unixepoch('subsec') * 1000 AS INTEGER) WHERE value IS NULL;
    CREATE INDEX records_tombstones ON records (deleted_at) WHERE value IS NULL;
    CREATE TABLE version_floors (
        service TEXT PRIMARY KEY,
        floor   INTEGER NOT NULL
    ) WITHOUT ROWID;
    ",
    // 7: what is read at every scrape or pruning pass without scanning every saga or
    // event: sagas by status, counted by triggers (a GROUP BY over the sagas of a week
    // took seconds); finished sagas by when they finished, events by age.
    "
    CREATE TABLE saga_counts (
        status TEXT PRIMARY KEY,
        n      INTEGER NOT NULL
    ) WITHOUT ROWID;
    INSERT INTO saga_counts (status, n)
    SELECT s.status, (SELECT count(*) FROM sagas WHERE status = s.status)
    FROM (SELECT 'running' AS status UNION ALL SELECT 'compensating' UNION ALL SELECT 'completed'
          UNION ALL SELECT 'compensated' UNION ALL SELECT 'stuck') AS s;
    CREATE TRIGGER sagas_counted AFTER INSERT ON sagas BEGIN
        UPDATE saga_counts SET n = n + 1 WHERE status = NEW.status;
    END;
    CREATE TRIGGER sagas_recounted AFTER UPDATE OF status ON sagas WHEN OLD.status != NEW.status BEGIN
        UPDATE saga_counts SET n = n - 1 WHERE status = OLD.status;
        UPDATE saga_counts SET n = n + 1 WHERE status = NEW.status;
    END;
    CREATE TRIGGER sagas_uncounted AFTER DELETE ON sagas BEGIN
        UPDATE saga_counts SET n = n - 1 WHERE status = OLD.status;
    END;
    CREATE INDEX sagas_finished ON sagas (updated_at) WHERE status IN ('completed', 'compensated');
    CREATE INDEX outbox_by_age ON outbox (created_at);
    ",
    // 8: the writer's probe of a failing store (`health.rs`): a commit of one row.
    "
    CREATE TABLE probes (id INTEGER PRIMARY KEY CHECK (id = 1), at INTEGER NOT NULL);
    ",
    // 9: uploaded plugin versions, kept in the store instead of files beside it (the
    // lifecycle moves files an older wasaga kept into it at start).
    "
    CREATE TABLE plugin_uploads (
        service     TEXT PRIMARY KEY,
        digest      TEXT NOT NULL,
        base        TEXT,               -- the directory file's digest it replaced
        wasm        BLOB NOT NULL,
        uploaded_at INTEGER NOT NULL
    );
    ",
    // 10: hosts and who drives each saga (`sagas.rs`: heartbeat, claim): one host per SQLite file, but
    // the same contract as a shared store.
    "
    ALTER TABLE sagas ADD COLUMN owner TEXT;
    CREATE TABLE hosts (
        id          TEXT PRIMARY KEY,
        started_at  INTEGER NOT NULL,
        alive_until INTEGER NOT NULL
    );
    ",
    // 11: a removal through the admin API is kept too (digest and wasm NULL), so that
    // it outlives a restart and reaches the other hosts of a shared store.
    "
    CREATE TABLE plugin_uploads_11 (
        service     TEXT PRIMARY KEY,
        digest      TEXT,               -- NULL: the service was removed
        base        TEXT,
        wasm        BLOB,
        uploaded_at INTEGER NOT NULL
    );
    INSERT INTO plugin_uploads_11 SELECT service, digest, base, wasm, uploaded_at FROM plugin_uploads;
    DROP TABLE plugin_uploads;
    ALTER TABLE plugin_uploads_11 RENAME TO plugin_uploads;
    ",
    // 12: each event's trace context (W3C traceparent), the parent of its deliveries'
    // spans; NULL when traces were off.
    "
    ALTER TABLE outbox ADD COLUMN traceparent TEXT;
    ",
    // 13: who receives each event, fixed when it is published (a JSON list of
    // {service, operation}); NULL for events published before, which the dispatcher
    // fans out to the subscribers serving when it sees them, as it did. The index finds
    // those older events at start, to say which of them were never fanned out (an
    // older wasaga could give an event an id below the dispatcher's cursor).
    "
    ALTER TABLE outbox ADD COLUMN subscribers TEXT;
    CREATE INDEX outbox_unfixed ON outbox (id) WHERE subscribers IS NULL;
    ",
];

/// Brings the schema up to date, in one transaction per migration. A database from a
/// newer wasaga is refused rather than misread.
pub fn migrate(conn: &mut Connection) -> rusqlite::Result<Result<(), String>> {
    let current: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    let current = current as usize;
    if current > MIGRATIONS.len() {
        return Ok(Err(format!(
            "the database is at schema version {current}, newer than this wasaga knows ({}); \
             use a newer wasaga",
            MIGRATIONS.len()
        )));
    }
    for (version, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (version + 1) as i64)?;
        tx.commit()?;
    }
    Ok(Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An idempotency record of version 3 lands in the key space of whoever made it.
    #[test]
    fn the_host_s_keys_move_to_their_own_spaces() {
        let mut conn = Connection::open_in_memory().unwrap();
        let tx = conn.transaction().unwrap();
        for sql in &MIGRATIONS[..3] {
            tx.execute_batch(sql).unwrap();
        }
        tx.pragma_update(None, "user_version", 3).unwrap();
        for key in ["order-1", "saga/01a2/charge/do", "event/7/payment"] {
            tx.execute(
                "INSERT INTO invocations VALUES ('svc', ?1, x'00', 'op', 1, x'', 'sha256:0', 1, 2)",
                [key],
            )
            .unwrap();
        }
        tx.commit().unwrap();
        migrate(&mut conn).unwrap().unwrap();
        let spaces: Vec<(String, String)> = conn
            .prepare("SELECT space, key FROM invocations ORDER BY key")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let expected = [("event", "event/7/payment"), ("client", "order-1"), ("saga", "saga/01a2/charge/do")];
        assert_eq!(spaces, expected.map(|(s, k)| (s.to_owned(), k.to_owned())));
    }

    #[test]
    fn migrations_apply_once_and_a_newer_schema_is_refused() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap().unwrap();
        migrate(&mut conn).unwrap().unwrap();
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
        assert_eq!(version as usize, MIGRATIONS.len());
        conn.pragma_update(None, "user_version", 99).unwrap();
        let err = migrate(&mut conn).unwrap().unwrap_err();
        assert!(err.contains("schema version 99"), "{err}");
    }

    /// The saga counts follow every insert, status change and delete, from the counts
    /// of the sagas there were when the migration ran.
    #[test]
    fn saga_counts_follow_every_change() {
        let mut conn = Connection::open_in_memory().unwrap();
        let tx = conn.transaction().unwrap();
        for sql in &MIGRATIONS[..6] {
            tx.execute_batch(sql).unwrap();
        }
        tx.pragma_update(None, "user_version", 6).unwrap();
        let insert = |conn: &Connection, id: &str, status: &str| {
            conn.execute(
                "INSERT INTO sagas (id, name, status, input, state, version, key, fingerprint,
                     created_at, updated_at)
                 VALUES (?1, 's', ?2, x'', '{}', 1, ?1, x'00', 1, 1)",
                [id, status],
            )
            .unwrap();
        };
        insert(&tx, "before", "completed");
        tx.commit().unwrap();
        migrate(&mut conn).unwrap().unwrap();
        for (id, status) in [("a", "running"), ("b", "running"), ("c", "stuck")] {
            insert(&conn, id, status);
        }
        conn.execute("UPDATE sagas SET status = 'completed' WHERE id = 'a'", []).unwrap();
        conn.execute("UPDATE sagas SET state = '{\"x\":1}' WHERE id = 'b'", []).unwrap();
        conn.execute("DELETE FROM sagas WHERE id = 'c'", []).unwrap();
        let counted: Vec<(String, i64)> = conn
            .prepare("SELECT status, n FROM saga_counts WHERE n > 0 ORDER BY status")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let grouped: Vec<(String, i64)> = conn
            .prepare("SELECT status, count(*) FROM sagas GROUP BY status ORDER BY status")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(counted, grouped);
        assert_eq!(counted, [("completed".to_owned(), 2), ("running".to_owned(), 1)]);
    }
}
