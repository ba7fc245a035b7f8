//! Round trip 2 of a batch: the writes of the commits that hold, one statement per
//! table for the rows most commits make, a statement each for the rest.

use std::collections::HashMap;

use tokio_postgres::types::ToSql;

use super::plan::{Guard, Param, Step, guarded, step};
use crate::store::{
    Commit, Conflict, DeliveryChange, SagaChange, StoreError, Subscriber, UploadChange, attempt_refused,
    saga_moved,
};

/// The batch's transaction id (assigned by this call if no step has yet).
pub(super) const XACT_ID: &str = "SELECT pg_current_xact_id()::text";

// The writes most commits make are each one statement for the whole batch, over
// arrays of the batch's rows (`unnest`): a statement per row cost PostgreSQL more in
// the statement's handling than in the row's (~150 statements a batch), and a
// batch's writes took 3.4 ms, the longest of its round trips. Each returns the keys
// of the rows it changed, which are the rows whose guard held.
pub(super) const STORE_OUTCOMES: &str =
    "INSERT INTO invocations (service, space, key, fingerprint, operation, ok, output,
         digest, correlation_id, created_at, expires_at)
     SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[], $5::text[], $6::bool[],
         $7::bytea[], $8::text[], $9::text[], $10::int8[], $11::int8[])
     ON CONFLICT (service, space, key) DO UPDATE SET
         fingerprint = excluded.fingerprint, operation = excluded.operation,
         ok = excluded.ok, output = excluded.output, digest = excluded.digest,
         correlation_id = excluded.correlation_id,
         created_at = excluded.created_at, expires_at = excluded.expires_at
     WHERE invocations.expires_at <= excluded.created_at
     RETURNING service, space, key";
/// A write's version is the one it read plus one.
pub(super) const WRITE_RECORDS: &str = "INSERT INTO records (service, key, value, version, deleted_at)
     SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[], $4::int8[], $5::int8[])
     ON CONFLICT (service, key) DO UPDATE SET
         value = excluded.value, version = excluded.version, deleted_at = excluded.deleted_at
     WHERE records.version = excluded.version - 1
     RETURNING service, key";
/// The owner's check is here only (the batch's checks read the version alone): a saga
/// taken over by another host is rare, and refusing it late costs a batch's redo.
pub(super) const UPDATE_SAGAS: &str =
    "UPDATE sagas SET status = u.status, state = u.state, version = u.version + 1,
         updated_at = u.at, owner = coalesce(u.by, sagas.owner)
     FROM unnest($1::text[], $2::int8[], $3::text[], $4::text[], $5::int8[], $6::text[])
         AS u (id, version, status, state, at, by)
     WHERE sagas.id = u.id AND sagas.version = u.version
       AND (u.by IS NULL OR sagas.owner IS NULL OR sagas.owner = u.by OR sagas.status = 'stuck')
     RETURNING sagas.id";
pub(super) const CREATE_SAGA: &str = "INSERT INTO sagas
         (id, name, status, input, state, version, key, fingerprint, created_at, updated_at, owner)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
     ON CONFLICT DO NOTHING";
pub(super) const CREATE_DELIVERY: &str =
    "INSERT INTO deliveries (event_id, subscriber, operation, topic, correlation_id,
         status, attempts, next_at, created_at)
     VALUES ($1, $2, $3, $4, $5, 'pending', 0, $6, $6)
     ON CONFLICT DO NOTHING";
pub(super) const DISPATCHED: &str = "UPDATE dispatch SET through = GREATEST(through, $1) WHERE id = 1";
pub(super) const UPDATE_DELIVERY: &str =
    "UPDATE deliveries SET status = $3, attempts = $4, next_at = $5, outcome = $6,
         last_error = $7, done_at = $8
     WHERE event_id = $1 AND subscriber = $2 AND status = 'pending' AND attempts = $4 - 1";
pub(super) const REDELIVER: &str = "UPDATE deliveries SET status = 'pending', next_at = $3
     WHERE event_id = $1 AND subscriber = $2 AND status = 'dead'";
pub(super) const SAVE_DEFINITION: &str = "INSERT INTO saga_definitions (digest, name, text, saved_at) VALUES ($1, $2, $3, $4)
     ON CONFLICT (digest) DO UPDATE SET name = excluded.name, text = excluded.text, saved_at = excluded.saved_at";
pub(super) const KEEP_UPLOAD: &str = "INSERT INTO plugin_uploads (service, digest, base, wasm, uploaded_at)
     VALUES ($1, $2, $3, $4, $5)
     ON CONFLICT (service) DO UPDATE SET digest = excluded.digest, base = excluded.base,
         wasm = excluded.wasm, uploaded_at = excluded.uploaded_at";
pub(super) const DISCARD_UPLOAD: &str = "DELETE FROM plugin_uploads WHERE service = $1";
pub(super) const PUBLISH: &str =
    "INSERT INTO outbox (service, topic, payload, correlation_id, created_at, traceparent, subscribers)
     VALUES ($1, $2, $3, $4, $5, $6, $7)";

/// A batch's writes: the rows most commits write, gathered per table into one
/// statement each, and the rest, one statement per change in commit order.
#[derive(Default)]
pub(super) struct Writes {
    pub(super) outcomes: Vec<Row<11>>,
    pub(super) records: Vec<Row<5>>,
    pub(super) sagas: Vec<Row<6>>,
    pub(super) others: Vec<Step>,
}

/// One row of a multi-row write: the job it is for, its key, its columns' values, and
/// what the job is refused with if the row's guard does not hold.
pub(super) struct Row<const N: usize> {
    pub(super) job: usize,
    pub(super) key: String,
    pub(super) values: [Param; N],
    pub(super) refusal: StoreError,
}
impl Writes {
    /// Adds the writes of checked commit `job`.
    pub(super) fn add(&mut self, job: usize, commit: &Commit) {
        let service = &commit.service;
        if let Some(o) = &commit.outcome {
            let (ok, output) = match &o.result {
                Ok(output) => (true, output.clone()),
                Err(reason) => (false, reason.clone().into_bytes()),
            };
            let k = &o.key;
            self.outcomes.push(Row {
                job,
                key: format!("{}\0{}\0{}", k.service, k.space.as_str(), k.key),
                values: [
                    Box::new(k.service.clone()),
                    Box::new(k.space.as_str()),
                    Box::new(k.key.clone()),
                    Box::new(o.fingerprint.to_vec()),
                    Box::new(o.operation.clone()),
                    Box::new(ok),
                    Box::new(output),
                    Box::new(o.digest.to_string()),
                    Box::new(o.correlation_id.clone()),
                    Box::new(o.created_at),
                    Box::new(o.expires_at),
                ],
                refusal: StoreError::Duplicate(k.key.clone()),
            });
        }
        for write in &commit.changes.writes {
            let read = write.version - 1;
            let deleted_at = write.value.is_none().then(crate::clock::now_ms);
            self.records.push(Row {
                job,
                key: format!("{service}\0{}", write.key),
                values: [
                    Box::new(service.clone()),
                    Box::new(write.key.clone()),
                    Box::new(write.value.clone()),
                    Box::new(write.version as i64),
                    Box::new(deleted_at),
                ],
                refusal: Conflict {
                    key: write.key.clone(),
                    expected: (read > 0).then_some(read),
                    actual: None,
                }
                .into(),
            });
        }
        if let Some(SagaChange::Update { id, version, status, state, at, by }) = &commit.saga {
            self.sagas.push(Row {
                job,
                key: id.clone(),
                values: [
                    Box::new(id.clone()),
                    Box::new(*version as i64),
                    Box::new(status.as_str()),
                    Box::new(state.clone()),
                    Box::new(*at),
                    Box::new(by.clone()),
                ],
                refusal: saga_moved(id, *version, None),
            });
        }
        self.others.extend(others(job, commit));
    }

    /// The statements, in an order that keeps each commit's dependencies: outcomes,
    /// records, the other changes (sagas created among them), sagas updated.
    pub(super) fn steps(self) -> Vec<Step> {
        let Writes { outcomes, records, sagas, others } = self;
        let mut steps = multi_row(STORE_OUTCOMES, outcomes);
        steps.extend(multi_row(WRITE_RECORDS, records));
        steps.extend(others);
        steps.extend(multi_row(UPDATE_SAGAS, sagas));
        steps
    }
}

/// The statements of one multi-row write: its rows as one array per column, in
/// rounds in which no key appears twice (PostgreSQL changes a row once per statement;
/// two commits of a batch may write one record), a key's rows in commit order.
pub(super) fn multi_row<const N: usize>(sql: &'static str, rows: Vec<Row<N>>) -> Vec<Step> {
    let mut rounds: Vec<Vec<Row<N>>> = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for row in rows {
        let round = seen.entry(row.key.clone()).or_insert(0);
        if rounds.len() == *round {
            rounds.push(Vec::new());
        }
        rounds[*round].push(row);
        *round += 1;
    }
    rounds
        .into_iter()
        .map(|mut round| {
            // In key order, as the records' locks are taken: two hosts' batches that
            // insert the same new keys then wait for each other in one order.
            round.sort_by(|a, b| a.key.cmp(&b.key));
            let mut columns: Vec<Vec<Param>> = (0..N).map(|_| Vec::with_capacity(round.len())).collect();
            let mut expected = Vec::with_capacity(round.len());
            for Row { job, key, values, refusal } in round {
                for (column, value) in columns.iter_mut().zip(values) {
                    column.push(value);
                }
                expected.push((key, job, refusal));
            }
            let params = columns.into_iter().map(|column| Box::new(Column(column)) as Param).collect();
            Step { sql, params, guard: Guard::Rows(expected) }
        })
        .collect()
}

/// One column of a multi-row write's rows: an array parameter, whatever its values'
/// type (each value encodes itself as an element of the array).
#[derive(Debug)]
pub(super) struct Column(Vec<Param>);

impl ToSql for Column {
    fn to_sql(
        &self,
        ty: &tokio_postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        let tokio_postgres::types::Kind::Array(member) = ty.kind() else {
            return Err(format!("a column of rows is an array, not {ty}").into());
        };
        postgres_protocol::types::array_to_sql(
            Some(postgres_protocol::types::ArrayDimension {
                len: i32::try_from(self.0.len())?,
                lower_bound: 1,
            }),
            member.oid(),
            self.0.iter(),
            |value, out| match value.to_sql_checked(member, out)? {
                tokio_postgres::types::IsNull::No => Ok(postgres_protocol::IsNull::No),
                tokio_postgres::types::IsNull::Yes => Ok(postgres_protocol::IsNull::Yes),
            },
            out,
        )?;
        Ok(tokio_postgres::types::IsNull::No)
    }

    fn accepts(ty: &tokio_postgres::types::Type) -> bool {
        matches!(ty.kind(), tokio_postgres::types::Kind::Array(_))
    }

    tokio_postgres::types::to_sql_checked!();
}

/// The statements of a checked commit's changes that are not multi-row writes, in
/// SQLite's order.
pub(super) fn others(job: usize, commit: &Commit) -> Vec<Step> {
    let mut steps = Vec::new();
    let service = &commit.service;
    match &commit.saga {
        Some(SagaChange::Create(row)) => steps.push(guarded(
            CREATE_SAGA,
            vec![
                Box::new(row.id.clone()),
                Box::new(row.name.clone()),
                Box::new(row.status.as_str()),
                Box::new(row.input.clone()),
                Box::new(row.state.clone()),
                Box::new(row.version as i64),
                Box::new(row.key.clone()),
                Box::new(row.fingerprint.to_vec()),
                Box::new(row.created_at),
                Box::new(row.updated_at),
                Box::new(row.owner.clone()),
            ],
            job,
            StoreError::Duplicate(row.key.clone()),
        )),
        Some(SagaChange::Update { .. }) | None => {}
    }
    for change in &commit.deliveries {
        match change {
            DeliveryChange::Create { deliveries, through } => {
                for d in deliveries {
                    steps.push(step(
                        CREATE_DELIVERY,
                        vec![
                            Box::new(d.event_id),
                            Box::new(d.subscriber.clone()),
                            Box::new(d.operation.clone()),
                            Box::new(d.topic.clone()),
                            Box::new(d.correlation_id.clone()),
                            Box::new(d.created_at),
                        ],
                    ));
                }
                steps.push(step(DISPATCHED, vec![Box::new(*through)]));
            }
            DeliveryChange::Update {
                event_id,
                subscriber,
                status,
                attempts,
                next_at,
                outcome,
                last_error,
                done_at,
            } => steps.push(guarded(
                UPDATE_DELIVERY,
                vec![
                    Box::new(*event_id),
                    Box::new(subscriber.clone()),
                    Box::new(status.as_str()),
                    Box::new(*attempts as i32),
                    Box::new(*next_at),
                    Box::new(outcome.clone()),
                    Box::new(last_error.clone()),
                    Box::new(*done_at),
                ],
                job,
                attempt_refused(*event_id, subscriber, *attempts),
            )),
            DeliveryChange::Redeliver { event_id, subscriber, at } => steps.push(guarded(
                REDELIVER,
                vec![Box::new(*event_id), Box::new(subscriber.clone()), Box::new(*at)],
                job,
                StoreError::Invalid(format!("no dead delivery of event {event_id} to `{subscriber}`")),
            )),
        }
    }
    for def in &commit.definitions {
        steps.push(step(
            SAVE_DEFINITION,
            vec![
                Box::new(def.digest.clone()),
                Box::new(def.name.clone()),
                Box::new(def.text.clone()),
                Box::new(def.saved_at),
            ],
        ));
    }
    for change in &commit.uploads {
        match change {
            UploadChange::Keep(u) => steps.push(step(
                KEEP_UPLOAD,
                vec![
                    Box::new(u.service.clone()),
                    Box::new(u.component.as_ref().map(|c| c.digest.to_string())),
                    Box::new(u.base.map(|b| b.to_string())),
                    Box::new(u.component.as_ref().map(|c| c.wasm.clone())),
                    Box::new(u.uploaded_at),
                ],
            )),
            UploadChange::Discard { service } => {
                steps.push(step(DISCARD_UPLOAD, vec![Box::new(service.clone())]))
            }
        }
    }
    if !commit.changes.events.is_empty() {
        let created_at = commit.outcome.as_ref().map_or_else(crate::clock::now_ms, |o| o.created_at);
        for event in &commit.changes.events {
            let chain = event.correlation_id.as_ref().or(commit.correlation_id.as_ref()).cloned();
            steps.push(step(
                PUBLISH,
                vec![
                    Box::new(service.clone()),
                    Box::new(event.topic.clone()),
                    Box::new(event.payload.clone()),
                    Box::new(chain),
                    Box::new(created_at),
                    Box::new(commit.traceparent.clone()),
                    Box::new(event.subscribers.as_deref().map(Subscriber::encode)),
                ],
            ));
        }
    }
    steps
}
