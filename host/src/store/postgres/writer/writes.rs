//! Round trip 2 of a batch: the writes of the commits that hold, gathered here, one
//! statement per table for the rows most commits make (outcomes, records, saga
//! updates), a statement each for the rest. Each table's statements and rows are in
//! its own file (`records.rs`, `sagas.rs`, `outbox.rs`, `plugins.rs`), as SQLite's.

use std::collections::HashMap;

use tokio_postgres::types::ToSql;

use super::plan::{Guard, Param, Step};
use crate::store::postgres::records::{STORE_OUTCOMES, WRITE_RECORDS};
use crate::store::postgres::sagas::UPDATE_SAGAS;
use crate::store::postgres::{outbox, plugins, records, sagas};
use crate::store::{Commit, StoreError};

/// The batch's transaction id (assigned by this call if no step has yet).
pub(super) const XACT_ID: &str = "SELECT pg_current_xact_id()::text";

/// A batch's writes: the rows most commits write, gathered per table into one
/// statement each, and the rest, one statement per change in commit order.
#[derive(Default)]
pub(in crate::store::postgres) struct Writes {
    pub(in crate::store::postgres) outcomes: Vec<Batched<11>>,
    pub(in crate::store::postgres) records: Vec<Batched<5>>,
    pub(in crate::store::postgres) sagas: Vec<Batched<6>>,
    pub(in crate::store::postgres) others: Vec<Step>,
}

/// One row of a multi-row write: the job it is for, its key, its columns' values, and
/// what the job is refused with if the row's guard does not hold.
pub(in crate::store::postgres) struct Batched<const N: usize> {
    pub(in crate::store::postgres) job: usize,
    pub(in crate::store::postgres) key: String,
    pub(in crate::store::postgres) values: [Param; N],
    pub(in crate::store::postgres) refusal: StoreError,
}

impl Writes {
    /// Adds the writes of checked commit `job`, in the order of SQLite's `apply`
    /// (`store/sqlite/writer.rs`), each table's by its own file.
    pub(in crate::store::postgres) fn add(&mut self, job: usize, commit: &Commit) {
        if let Some(outcome) = &commit.outcome {
            records::store_outcome(job, outcome, self);
        }
        records::apply_changes(job, &commit.service, &commit.changes, self);
        if let Some(saga) = &commit.saga {
            sagas::apply(job, saga, self);
        }
        for change in &commit.deliveries {
            outbox::apply(job, change, self);
        }
        for def in &commit.definitions {
            sagas::save_definition(def, self);
        }
        for change in &commit.uploads {
            plugins::apply(change, self);
        }
        if !commit.changes.events.is_empty() {
            let created_at = commit.outcome.as_ref().map_or_else(crate::clock::now_ms, |o| o.created_at);
            let chain = commit.correlation_id.as_ref();
            let trace = commit.traceparent.as_ref();
            outbox::publish(&commit.service, &commit.changes.events, chain, trace, created_at, self);
        }
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
pub(super) fn multi_row<const N: usize>(sql: &'static str, rows: Vec<Batched<N>>) -> Vec<Step> {
    let mut rounds: Vec<Vec<Batched<N>>> = Vec::new();
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
            for Batched { job, key, values, refusal } in round {
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
