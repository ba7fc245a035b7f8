//! The PostgreSQL schema, as an append-only list of migrations recorded in
//! `wasaga_schema`. Never edit a migration that has shipped: add one. The tables follow
//! SQLite's (`store/sqlite/schema.rs`), at their latest shape.

use tokio_postgres::Client;

/// Migration `i` takes the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: everything the SQLite schema has at its version 9.
    r#"
    -- Keys and ids sort in byte order (COLLATE "C"), as in SQLite: a prefix is one
    -- range of the index, and pages by key or id go on where they stopped.
    -- One row per record ever written; value NULL is a tombstone, so that versions never
    -- go back. A service's version floor is the highest version of its forgotten
    -- tombstones: a key with no row reads at it.
    CREATE TABLE records (
        service    TEXT NOT NULL,
        key        TEXT COLLATE "C" NOT NULL,
        value      BYTEA,
        version    BIGINT NOT NULL,
        deleted_at BIGINT,
        PRIMARY KEY (service, key)
    );
    CREATE INDEX records_tombstones ON records (deleted_at) WHERE value IS NULL;
    CREATE TABLE version_floors (
        service TEXT PRIMARY KEY,
        floor   BIGINT NOT NULL
    );

    -- The stored outcome of each idempotent invocation, until it expires.
    CREATE TABLE invocations (
        service        TEXT NOT NULL,
        space          TEXT NOT NULL,   -- client, saga, event
        key            TEXT NOT NULL,
        fingerprint    BYTEA NOT NULL,
        operation      TEXT NOT NULL,
        ok             BOOLEAN NOT NULL,
        output         BYTEA NOT NULL,
        digest         TEXT NOT NULL,
        correlation_id TEXT,
        created_at     BIGINT NOT NULL,
        expires_at     BIGINT NOT NULL,
        PRIMARY KEY (service, space, key)
    );
    CREATE INDEX invocations_by_expiry ON invocations (expires_at);

    -- Events published by committed invocations, in commit order.
    CREATE TABLE outbox (
        id             BIGSERIAL PRIMARY KEY,
        service        TEXT NOT NULL,
        topic          TEXT NOT NULL,
        payload        BYTEA NOT NULL,
        correlation_id TEXT,
        created_at     BIGINT NOT NULL
    );
    CREATE INDEX outbox_by_correlation ON outbox (correlation_id, id);
    CREATE INDEX outbox_by_age ON outbox (created_at);

    -- Each event's delivery to each subscriber, and where the dispatcher is.
    CREATE TABLE deliveries (
        event_id       BIGINT NOT NULL,
        subscriber     TEXT NOT NULL,
        operation      TEXT NOT NULL,
        topic          TEXT NOT NULL,
        correlation_id TEXT,
        status         TEXT NOT NULL,      -- pending, delivered, dead
        attempts       INTEGER NOT NULL,
        next_at        BIGINT NOT NULL,
        outcome        TEXT,
        last_error     TEXT,
        created_at     BIGINT NOT NULL,
        done_at        BIGINT,
        PRIMARY KEY (event_id, subscriber)
    );
    CREATE INDEX deliveries_due ON deliveries (status, next_at);
    CREATE INDEX deliveries_by_group ON deliveries (subscriber, topic, correlation_id, status, event_id);
    CREATE TABLE dispatch (id INTEGER PRIMARY KEY CHECK (id = 1), through BIGINT NOT NULL);
    INSERT INTO dispatch (id, through) VALUES (1, 0);

    -- One row per saga; `state` is the state machine's JSON, `version` guards it.
    CREATE TABLE sagas (
        id          TEXT COLLATE "C" PRIMARY KEY,
        name        TEXT NOT NULL,
        status      TEXT NOT NULL,
        input       BYTEA NOT NULL,
        state       TEXT NOT NULL,
        version     BIGINT NOT NULL,
        key         TEXT NOT NULL,
        fingerprint BYTEA NOT NULL,
        created_at  BIGINT NOT NULL,
        updated_at  BIGINT NOT NULL
    );
    CREATE UNIQUE INDEX sagas_by_key ON sagas (name, key);
    CREATE INDEX sagas_by_status ON sagas (status, id);
    CREATE INDEX sagas_finished ON sagas (updated_at) WHERE status IN ('completed', 'compensated');

    -- Sagas by status, kept by a trigger: counting them would read every saga.
    CREATE TABLE saga_counts (status TEXT PRIMARY KEY, n BIGINT NOT NULL);
    INSERT INTO saga_counts (status, n)
        VALUES ('running', 0), ('compensating', 0), ('completed', 0), ('compensated', 0), ('stuck', 0);
    CREATE FUNCTION wasaga_count_sagas() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP IN ('UPDATE', 'DELETE') THEN
            UPDATE saga_counts SET n = n - 1 WHERE status = OLD.status;
        END IF;
        IF TG_OP IN ('INSERT', 'UPDATE') THEN
            UPDATE saga_counts SET n = n + 1 WHERE status = NEW.status;
        END IF;
        RETURN NULL;
    END $$;
    CREATE TRIGGER sagas_counted AFTER INSERT OR DELETE ON sagas
        FOR EACH ROW EXECUTE FUNCTION wasaga_count_sagas();
    CREATE TRIGGER sagas_recounted AFTER UPDATE OF status ON sagas
        FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION wasaga_count_sagas();

    -- Every saga definition version, by the digest its sagas record.
    CREATE TABLE saga_definitions (
        digest   TEXT PRIMARY KEY,
        name     TEXT NOT NULL,
        text     TEXT NOT NULL,
        saved_at BIGINT NOT NULL
    );

    -- Uploaded plugin versions.
    CREATE TABLE plugin_uploads (
        service     TEXT PRIMARY KEY,
        digest      TEXT NOT NULL,
        base        TEXT,
        wasm        BYTEA NOT NULL,
        uploaded_at BIGINT NOT NULL
    );

    -- The writer's probe of a failing store: a commit of one row.
    CREATE TABLE probes (id INTEGER PRIMARY KEY CHECK (id = 1), at BIGINT NOT NULL);
    "#,
    // 2: several hosts on one database: the live hosts, and who drives each saga.
    r#"
    ALTER TABLE sagas ADD COLUMN owner TEXT;
    CREATE TABLE hosts (
        id          TEXT PRIMARY KEY,
        started_at  BIGINT NOT NULL,
        alive_until BIGINT NOT NULL
    );
    "#,
    // 3: a removal through the admin API is kept too (digest and wasm NULL), so that it
    // reaches the other hosts and outlives a restart.
    r#"
    ALTER TABLE plugin_uploads ALTER COLUMN digest DROP NOT NULL, ALTER COLUMN wasm DROP NOT NULL;
    "#,
    // 4: the saga counts in a row per writer connection (`shard`: its backend's pid)
    // and status, summed when read. One row per status, updated by every batch of
    // every host, serialized the hosts' commits on it, and two batches that updated two
    // of those rows in opposite orders deadlocked (each found after PostgreSQL's
    // `deadlock_timeout`, 1 s). Only writer connections change a saga's status.
    r#"
    ALTER TABLE saga_counts ADD COLUMN shard INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE saga_counts DROP CONSTRAINT saga_counts_pkey, ADD PRIMARY KEY (shard, status);
    CREATE OR REPLACE FUNCTION wasaga_count_sagas() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP IN ('UPDATE', 'DELETE') THEN
            INSERT INTO saga_counts (shard, status, n) VALUES (pg_backend_pid(), OLD.status, -1)
                ON CONFLICT (shard, status) DO UPDATE SET n = saga_counts.n - 1;
        END IF;
        IF TG_OP IN ('INSERT', 'UPDATE') THEN
            INSERT INTO saga_counts (shard, status, n) VALUES (pg_backend_pid(), NEW.status, 1)
                ON CONFLICT (shard, status) DO UPDATE SET n = saga_counts.n + 1;
        END IF;
        RETURN NULL;
    END $$;
    "#,
    // 5: each event's trace context (W3C traceparent), the parent of its deliveries'
    // spans; NULL when traces were off.
    r#"
    ALTER TABLE outbox ADD COLUMN traceparent TEXT;
    "#,
    // 6: who receives each event, fixed when it is published (a JSON list of
    // {service, operation}); NULL for events published before, which the dispatcher
    // fans out to the subscribers serving when it sees them, as it did. The index finds
    // those older events at start, to say which of them were never fanned out (an
    // import could set the event ids below the dispatcher's cursor).
    r#"
    ALTER TABLE outbox ADD COLUMN subscribers TEXT;
    CREATE INDEX outbox_unfixed ON outbox (id) WHERE subscribers IS NULL;
    "#,
];

/// Every host migrates at start, under a transaction-scoped advisory lock on the schema
/// it uses: hosts that start together take turns, and each finds the schema where the
/// one before left it.
const MIGRATION_LOCK: &str = "SELECT pg_advisory_xact_lock(x'7761'::int, hashtext(current_schema()))";

/// Brings the schema up to date; refuses a database migrated by a newer wasaga.
pub(super) async fn migrate(client: &mut Client) -> Result<(), String> {
    let tx = client.transaction().await.map_err(|e| e.to_string())?;
    tx.execute(MIGRATION_LOCK, &[]).await.map_err(|e| e.to_string())?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS wasaga_schema (version INTEGER NOT NULL)")
        .await
        .map_err(|e| e.to_string())?;
    let current: i32 = match tx.query_opt("SELECT version FROM wasaga_schema", &[]).await {
        Ok(Some(row)) => row.get(0),
        Ok(None) => {
            tx.execute("INSERT INTO wasaga_schema (version) VALUES (0)", &[])
                .await
                .map_err(|e| e.to_string())?;
            0
        }
        Err(e) => return Err(e.to_string()),
    };
    let known = MIGRATIONS.len() as i32;
    if current > known {
        return Err(format!(
            "the database's schema is at version {current}, from a newer wasaga (this one knows {known}); \
             upgrade wasaga"
        ));
    }
    for (version, migration) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        tx.batch_execute(migration).await.map_err(|e| format!("migration {}: {e}", version + 1))?;
        tx.execute("UPDATE wasaga_schema SET version = $1", &[&(version as i32 + 1)])
            .await
            .map_err(|e| e.to_string())?;
    }
    tx.commit().await.map_err(|e| e.to_string())
}
