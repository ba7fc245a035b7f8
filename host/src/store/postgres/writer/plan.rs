//! The statement plan: the steps of a round trip, pipelined, and how each answer is
//! checked (its guard).

use std::collections::HashSet;

use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;

use super::XACT_ID;
use crate::store::StoreError;
use crate::store::postgres::conn::{Conn, unavailable};

pub(in crate::store::postgres) type Param = Box<dyn ToSql + Sync + Send>;

/// One statement of a pipeline, and how its answer is checked.
pub(in crate::store::postgres) struct Step {
    pub(super) sql: &'static str,
    pub(super) params: Vec<Param>,
    pub(super) guard: Guard,
}

/// What a statement must have changed, else the commit it writes for meets a change
/// its checks did not see, and is refused.
pub(in crate::store::postgres) enum Guard {
    None,
    /// Exactly one row, else job `.0` is refused with `.1`.
    One(usize, StoreError),
    /// A statement that writes rows of many commits and returns the key of each row it
    /// changed: each (key, job, refusal) whose key it did not return refuses its job.
    Rows(Vec<(String, usize, StoreError)>),
}

pub(in crate::store::postgres) fn step(sql: &'static str, params: Vec<Param>) -> Step {
    Step { sql, params, guard: Guard::None }
}

pub(in crate::store::postgres) fn guarded(
    sql: &'static str,
    params: Vec<Param>,
    job: usize,
    refusal: StoreError,
) -> Step {
    Step { sql, params, guard: Guard::One(job, refusal) }
}

pub(super) enum Pipelined {
    /// Every step ran; the transaction's id (to ask about it if its COMMIT's answer is
    /// lost).
    Done(String),
    /// A guarded step did not change what it had to (the first such): this job is
    /// refused with this.
    Late(usize, StoreError),
    /// PostgreSQL found a deadlock with another host's batch and failed this one.
    Deadlock,
}

/// Sends every statement at once and reads the answers after (one round trip);
/// PostgreSQL runs them in order.
pub(super) async fn pipeline(conn: &mut Conn, steps: &[Step]) -> Result<Pipelined, StoreError> {
    let mut statements = Vec::with_capacity(steps.len());
    for step in steps {
        statements.push(conn.statement(step.sql).await?);
    }
    let xact_id = conn.statement(XACT_ID).await?;
    let client = &conn.client;
    // The transaction's id is asked in the same round trip, after the steps.
    let (results, xact) = tokio::join!(
        futures_util::future::join_all(steps.iter().zip(&statements).map(|(step, statement)| {
            let params: Vec<&(dyn ToSql + Sync)> = step.params.iter().map(|p| p.as_ref() as _).collect();
            async move {
                match step.guard {
                    Guard::Rows(_) => client.query(statement, &params).await.map(Changed::Rows),
                    _ => client.execute(statement, &params).await.map(Changed::Count),
                }
            }
        })),
        client.query_one(&xact_id, &[])
    );
    let mut late = None;
    for (step, result) in steps.iter().zip(results) {
        let changed = match result {
            Ok(changed) => changed,
            Err(error) if error.code() == Some(&SqlState::T_R_DEADLOCK_DETECTED) => {
                return Ok(Pipelined::Deadlock);
            }
            Err(error) => return Err(unavailable(error)),
        };
        if late.is_none() {
            late = step.guard.missed(changed);
        }
    }
    match late {
        Some((job, refusal)) => Ok(Pipelined::Late(job, refusal)),
        None => Ok(Pipelined::Done(xact.map_err(unavailable)?.get(0))),
    }
}

/// What a statement changed: a count of rows, or the rows it returned.
pub(super) enum Changed {
    Count(u64),
    Rows(Vec<tokio_postgres::Row>),
}

impl Guard {
    /// The first job refused by what its statement changed.
    pub(super) fn missed(&self, changed: Changed) -> Option<(usize, StoreError)> {
        match (self, changed) {
            (Guard::One(job, refusal), Changed::Count(n)) if n != 1 => Some((*job, refusal.clone())),
            (Guard::Rows(expected), Changed::Rows(rows)) => {
                let returned: HashSet<String> = rows.iter().map(row_key).collect();
                let (_, job, refusal) = expected.iter().find(|(key, ..)| !returned.contains(key))?;
                Some((*job, refusal.clone()))
            }
            _ => None,
        }
    }
}

/// The key of a row a multi-row write returned: its key columns, joined by NUL
/// (which no key holds).
pub(super) fn row_key(row: &tokio_postgres::Row) -> String {
    (0..row.len()).map(|i| row.get::<_, &str>(i)).collect::<Vec<_>>().join("\0")
}
