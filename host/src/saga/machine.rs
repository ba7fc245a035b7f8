//! The saga as a pure state machine: `apply(definition, state, event) -> actions`.
//!
//! No I/O and no clock: events carry their time, and a delay is returned as the
//! ceiling of its backoff (the driver adds jitter and sleeps). Every transition is
//! unit-tested below; `driver.rs` performs the actions and persists each new state
//! in the same commit as the step invocation that caused it.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::definition::SagaDef;
use crate::store::SagaStatus;

/// Where one step is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Pending,
    Running,
    Done,
    /// Refused, or out of attempts: the reason the saga compensates.
    Failed,
    Compensating,
    Compensated,
    /// Its compensation is out of attempts (the saga is stuck).
    CompensationFailed,
}

/// One step's record: what the saga view shows. Stored as JSON in the saga's row,
/// rewritten at every step: empty fields are left out (a row a quarter smaller).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepState {
    pub status: StepStatus,
    /// Forward attempts so far.
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub compensation_attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The plugin version that ran the last successful call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// The records its calls wrote (keys of its service, at most 20): where to look.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub touched: Vec<String>,
    /// Unix ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<i64>,
    /// When its forward call ended (done, or failed for good); compensations do not
    /// move it, so that its duration is the forward call's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<i64>,
    /// When its compensation began and ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensation_started_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensated_at: Option<i64>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl StepState {
    /// Adds the keys a call wrote to the step's (each once, at most 20).
    fn touch(&mut self, keys: Vec<String>) {
        for key in keys {
            if self.touched.len() < 20 && !self.touched.contains(&key) {
                self.touched.push(key);
            }
        }
    }

    fn new() -> Self {
        StepState {
            status: StepStatus::Pending,
            attempts: 0,
            compensation_attempts: 0,
            output: None,
            last_error: None,
            digest: None,
            touched: Vec::new(),
            started_at: None,
            finished_at: None,
            compensation_started_at: None,
            compensated_at: None,
        }
    }
}

/// Who asked for an operator action, and why: kept in the saga's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorNote {
    /// The name the operator gave (`operator` when none).
    pub by: String,
    pub note: Option<String>,
}

/// What an operator did to a saga.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OperatorAction {
    Retry,
    Compensate,
    Resolve,
}

/// One entry of a saga's history: what happened, when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HistoryEntry {
    /// Unix ms.
    pub at: i64,
    #[serde(flatten)]
    pub what: Happened,
}

/// What a saga's history records: the failures on the way (each attempt), the moment it
/// got stuck, and what operators did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Happened {
    /// A step's call failed: `transient` (retried, or out of attempts) or refused.
    StepFailed { step: String, attempt: u32, transient: bool, error: String },
    /// A compensation's call failed.
    CompensationFailed { step: String, attempt: u32, transient: bool, error: String },
    /// The saga waits for an operator, and why.
    Stuck { reason: String },
    /// An operator acted: `step` and `output` for a resolve.
    Operator {
        action: OperatorAction,
        by: String,
        note: Option<String>,
        step: Option<String>,
        output: Option<Value>,
    },
}

/// The most entries a history keeps: past it, the oldest failures go (operator actions
/// stay), so that a step retried for days does not grow its saga without bound.
const MAX_HISTORY: usize = 100;

/// A saga's whole state, persisted as JSON after every transition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SagaState {
    pub status: SagaStatus,
    pub steps: Vec<StepState>,
    /// Why the saga compensates: the business reason (a refusal, a step out of
    /// attempts), kept whatever happens later; the compensations are given it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Why the saga waits for an operator, while it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stuck: Option<String>,
    /// Operator retries so far; part of the keys of calls made after a retry, so that a
    /// stored refusal is not just replayed.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub round: u32,
    /// The digest of the definition the saga started with.
    #[serde(default)]
    pub definition: String,
    /// What happened on the way (failed attempts, getting stuck, operator actions),
    /// oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<HistoryEntry>,
    /// The span of the request that started the saga (W3C `traceparent`), the parent
    /// of its steps' spans; absent when traces were off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

impl SagaState {
    pub fn new(def: &SagaDef) -> Self {
        SagaState {
            status: SagaStatus::Running,
            steps: vec![StepState::new(); def.steps.len()],
            reason: None,
            stuck: None,
            round: 0,
            definition: def.digest.clone(),
            history: Vec::new(),
            traceparent: None,
        }
    }

    /// Whether the pivot (or a step after it) has committed: from then on the saga only
    /// goes forward, and may no longer be compensated.
    pub fn past_the_pivot(&self, def: &SagaDef) -> bool {
        self.steps.iter().skip(def.pivot).any(|s| s.status == StepStatus::Done)
    }

    /// The step that keeps a stuck saga stuck: a compensation out of attempts, or a
    /// refused step.
    pub fn stuck_step(&self) -> Option<usize> {
        let failed = |status| self.steps.iter().position(|s| s.status == status);
        failed(StepStatus::CompensationFailed).or_else(|| failed(StepStatus::Failed))
    }
}

/// Which way a call goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Do,
    Undo,
}

/// What happened.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Started {
        at: i64,
    },
    Succeeded {
        step: usize,
        output: Value,
        digest: String,
        /// The keys of the records the call wrote.
        touched: Vec<String>,
        at: i64,
    },
    /// A forward call failed: refused (`transient: false`) or temporarily.
    Failed {
        step: usize,
        reason: String,
        transient: bool,
        at: i64,
    },
    Compensated {
        step: usize,
        digest: String,
        touched: Vec<String>,
        at: i64,
    },
    /// A compensation failed: refused (`transient: false`) or temporarily.
    CompensationFailed {
        step: usize,
        reason: String,
        transient: bool,
        at: i64,
    },
    /// An operator asked a stuck saga to try its stuck call again.
    RetryRequested {
        at: i64,
        by: OperatorNote,
    },
    /// An operator asked a stuck saga whose pivot has not committed to undo what it did.
    CompensateRequested {
        at: i64,
        by: OperatorNote,
    },
    /// An operator did by hand what a stuck saga's stuck call could not: the step is
    /// done with `output` (or, for a compensation, compensated).
    Resolved {
        step: usize,
        output: Value,
        at: i64,
        by: OperatorNote,
    },
}

/// What the driver must do next.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Call the step (or its compensation) after waiting up to `delay` (jittered).
    Invoke { step: usize, direction: Direction, attempt: u32, delay: Duration },
    /// The saga reached `status` (terminal or stuck) and waits for nothing.
    Finished(SagaStatus),
    /// A step used up its retries (an alert); the saga goes on with the other actions.
    RetriesExhausted { step: usize },
}

/// Applies `event` to `state`, returning what to do next.
pub fn apply(def: &SagaDef, state: &mut SagaState, event: Event) -> Vec<Action> {
    match event {
        Event::Started { at } => start_step(state, 0, at, Duration::ZERO),
        Event::Succeeded { step, output, digest, touched, at } => {
            let s = &mut state.steps[step];
            s.touch(touched);
            s.status = StepStatus::Done;
            s.output = Some(output);
            s.digest = Some(digest);
            s.last_error = None;
            s.finished_at = Some(at);
            if step + 1 == def.steps.len() {
                state.status = SagaStatus::Completed;
                vec![Action::Finished(SagaStatus::Completed)]
            } else {
                start_step(state, step + 1, at, Duration::ZERO)
            }
        }
        Event::Failed { step, reason, transient, at } => {
            let policy = def.steps[step].retry;
            let attempts = state.steps[step].attempts;
            state.steps[step].last_error = Some(reason.clone());
            let name = def.steps[step].name.clone();
            let failed = Happened::StepFailed {
                step: name.clone(),
                attempt: attempts,
                transient,
                error: reason.clone(),
            };
            remember(state, at, failed);
            // Up to the pivot, a failed step wrote nothing: the steps before it are
            // undone. After it, the saga only goes forward.
            if step > def.pivot {
                if transient {
                    let mut actions = retry_step(state, step, policy.backoff_ceiling(attempts));
                    if attempts == policy.max_attempts {
                        actions.push(Action::RetriesExhausted { step });
                    }
                    return actions;
                }
                state.steps[step].status = StepStatus::Failed;
                state.steps[step].finished_at = Some(at);
                return stuck(state, at, format!("step `{name}` was refused after the pivot: {reason}"));
            }
            if transient && attempts < policy.max_attempts {
                return retry_step(state, step, policy.backoff_ceiling(attempts));
            }
            state.steps[step].status = StepStatus::Failed;
            state.steps[step].finished_at = Some(at);
            state.status = SagaStatus::Compensating;
            state.reason = Some(if transient {
                format!("step `{}` failed {attempts} times: {reason}", def.steps[step].name)
            } else {
                format!("step `{}` was refused: {reason}", def.steps[step].name)
            });
            let mut actions = compensate_below(state, step, at);
            if transient {
                actions.push(Action::RetriesExhausted { step });
            }
            actions
        }
        Event::Compensated { step, digest, touched, at } => {
            let s = &mut state.steps[step];
            s.touch(touched);
            s.status = StepStatus::Compensated;
            s.digest = Some(digest);
            s.last_error = None;
            s.compensated_at = Some(at);
            compensate_below(state, step, at)
        }
        Event::CompensationFailed { step, reason, transient, at } => {
            let policy = def.steps[step].retry;
            let name = def.steps[step].name.clone();
            let attempt = state.steps[step].compensation_attempts;
            let failed = Happened::CompensationFailed {
                step: name.clone(),
                attempt,
                transient,
                error: reason.clone(),
            };
            remember(state, at, failed);
            let s = &mut state.steps[step];
            s.last_error = Some(reason.clone());
            // A refused compensation would only be refused again (its stored refusal is
            // replayed to the same key): it waits for an operator at once.
            if transient && s.compensation_attempts < policy.max_attempts {
                let delay = policy.backoff_ceiling(s.compensation_attempts);
                s.compensation_attempts += 1;
                return vec![Action::Invoke {
                    step,
                    direction: Direction::Undo,
                    attempt: s.compensation_attempts,
                    delay,
                }];
            }
            s.status = StepStatus::CompensationFailed;
            let why = format!(
                "the compensation of step `{name}` failed {} times: {reason}",
                s.compensation_attempts
            );
            stuck(state, at, why)
        }
        Event::RetryRequested { at, by } => {
            if state.status != SagaStatus::Stuck {
                return vec![];
            }
            record(state, OperatorAction::Retry, at, by, None, None);
            state.round += 1;
            state.stuck = None;
            if let Some(step) = state.steps.iter().position(|s| s.status == StepStatus::CompensationFailed) {
                state.status = SagaStatus::Compensating;
                let s = &mut state.steps[step];
                s.status = StepStatus::Compensating;
                s.compensation_attempts += 1;
                return vec![Action::Invoke {
                    step,
                    direction: Direction::Undo,
                    attempt: s.compensation_attempts,
                    delay: Duration::ZERO,
                }];
            }
            if let Some(step) = state.steps.iter().position(|s| s.status == StepStatus::Failed) {
                state.status = SagaStatus::Running;
                return retry_step(state, step, Duration::ZERO);
            }
            vec![]
        }
        Event::CompensateRequested { at, by } => {
            if state.status != SagaStatus::Stuck || state.past_the_pivot(def) {
                return vec![];
            }
            record(state, OperatorAction::Compensate, at, by, None, None);
            // A new round: calls get new keys, so that no stored refusal is replayed.
            state.round += 1;
            state.status = SagaStatus::Compensating;
            // A saga stuck by an earlier version kept why it was stuck as its reason; one
            // without any reason is compensated because the operator said so.
            let why = state.stuck.take();
            if state.reason.is_none() {
                state.reason = Some(why.unwrap_or_else(|| "compensated at an operator's request".into()));
            }
            match state.steps.iter().position(|s| s.status == StepStatus::CompensationFailed) {
                Some(step) => {
                    let s = &mut state.steps[step];
                    s.status = StepStatus::Compensating;
                    s.compensation_attempts += 1;
                    vec![Action::Invoke {
                        step,
                        direction: Direction::Undo,
                        attempt: s.compensation_attempts,
                        delay: Duration::ZERO,
                    }]
                }
                // A refused step (the pivot, before a refused pivot compensated by
                // itself): undo what came before it.
                None => {
                    let below = state.stuck_step().unwrap_or(state.steps.len());
                    compensate_below(state, below, at)
                }
            }
        }
        Event::Resolved { step, output, at, by } => {
            if state.status != SagaStatus::Stuck || state.stuck_step() != Some(step) {
                return vec![];
            }
            let name = def.steps[step].name.clone();
            record(state, OperatorAction::Resolve, at, by, Some(name), Some(output.clone()));
            state.stuck = None;
            let s = &mut state.steps[step];
            s.last_error = None;
            s.digest = None;
            if s.status == StepStatus::CompensationFailed {
                s.status = StepStatus::Compensated;
                s.compensated_at = Some(at);
                state.status = SagaStatus::Compensating;
                return compensate_below(state, step, at);
            }
            s.status = StepStatus::Done;
            s.output = Some(output);
            s.finished_at = Some(at);
            state.status = SagaStatus::Running;
            if step + 1 == def.steps.len() {
                state.status = SagaStatus::Completed;
                vec![Action::Finished(SagaStatus::Completed)]
            } else {
                start_step(state, step + 1, at, Duration::ZERO)
            }
        }
    }
}

fn record(
    state: &mut SagaState,
    action: OperatorAction,
    at: i64,
    by: OperatorNote,
    step: Option<String>,
    output: Option<Value>,
) {
    remember(state, at, Happened::Operator { action, by: by.by, note: by.note, step, output });
}

/// Adds to the history, dropping the oldest failure past [`MAX_HISTORY`] entries.
fn remember(state: &mut SagaState, at: i64, what: Happened) {
    state.history.push(HistoryEntry { at, what });
    if state.history.len() > MAX_HISTORY
        && let Some(oldest) = state.history.iter().position(|e| !matches!(e.what, Happened::Operator { .. }))
    {
        state.history.remove(oldest);
    }
}

/// The saga waits for an operator, for `why` (the business reason stays as it was).
fn stuck(state: &mut SagaState, at: i64, why: String) -> Vec<Action> {
    state.status = SagaStatus::Stuck;
    remember(state, at, Happened::Stuck { reason: why.clone() });
    state.stuck = Some(why);
    vec![Action::Finished(SagaStatus::Stuck)]
}

/// The actions that continue a saga loaded from storage (after a restart): the call
/// that was in progress is made again, with the same key.
pub fn resume(state: &SagaState) -> Vec<Action> {
    let in_progress = |status: StepStatus| state.steps.iter().position(|s| s.status == status);
    match state.status {
        SagaStatus::Running => match in_progress(StepStatus::Running) {
            Some(step) => vec![Action::Invoke {
                step,
                direction: Direction::Do,
                attempt: state.steps[step].attempts,
                delay: Duration::ZERO,
            }],
            None => vec![],
        },
        SagaStatus::Compensating => match in_progress(StepStatus::Compensating) {
            Some(step) => vec![Action::Invoke {
                step,
                direction: Direction::Undo,
                attempt: state.steps[step].compensation_attempts,
                delay: Duration::ZERO,
            }],
            None => vec![],
        },
        status => vec![Action::Finished(status)],
    }
}

fn start_step(state: &mut SagaState, step: usize, at: i64, delay: Duration) -> Vec<Action> {
    let s = &mut state.steps[step];
    s.status = StepStatus::Running;
    s.attempts = 1;
    s.started_at = Some(at);
    vec![Action::Invoke { step, direction: Direction::Do, attempt: 1, delay }]
}

fn retry_step(state: &mut SagaState, step: usize, delay: Duration) -> Vec<Action> {
    let s = &mut state.steps[step];
    s.status = StepStatus::Running;
    s.attempts += 1;
    vec![Action::Invoke { step, direction: Direction::Do, attempt: s.attempts, delay }]
}

/// Starts undoing the highest completed step below `step`; when none is left, the
/// saga is compensated.
fn compensate_below(state: &mut SagaState, step: usize, at: i64) -> Vec<Action> {
    match (0..step).rev().find(|&i| state.steps[i].status == StepStatus::Done) {
        Some(i) => {
            let s = &mut state.steps[i];
            s.status = StepStatus::Compensating;
            s.compensation_started_at.get_or_insert(at);
            s.compensation_attempts += 1;
            vec![Action::Invoke {
                step: i,
                direction: Direction::Undo,
                attempt: s.compensation_attempts,
                delay: Duration::ZERO,
            }]
        }
        None => {
            state.status = SagaStatus::Compensated;
            vec![Action::Finished(SagaStatus::Compensated)]
        }
    }
}

#[cfg(test)]
mod tests;
