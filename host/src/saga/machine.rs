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
pub use crate::store::SagaStatus;

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
mod tests {
    use std::path::PathBuf;

    use serde_json::json;

    use super::*;
    use crate::saga::definition::{RetryPolicy, StepDef};

    /// a (undo: a-undo) → b (undo: b-undo) → c (the pivot) → d (forward only)
    fn def() -> SagaDef {
        let step = |name: &str, undo: Option<&str>| StepDef {
            name: name.into(),
            service: "svc".into(),
            action: name.into(),
            compensation: undo.map(Into::into),
            retry: RetryPolicy {
                max_attempts: 3,
                initial_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(1),
            },
        };
        SagaDef {
            name: "s".into(),
            steps: vec![
                step("a", Some("a-undo")),
                step("b", Some("b-undo")),
                step("c", None),
                step("d", None),
            ],
            pivot: 2,
            source: PathBuf::from("s.toml"),
            digest: "d".into(),
            text: String::new(),
            audit: Vec::new(),
            invariants: Vec::new(),
        }
    }

    fn invoke(step: usize, direction: Direction, attempt: u32, delay_ms: u64) -> Vec<Action> {
        vec![Action::Invoke { step, direction, attempt, delay: Duration::from_millis(delay_ms) }]
    }

    fn ok(step: usize) -> Event {
        Event::Succeeded { step, output: json!({"step": step}), digest: "d".into(), touched: vec![], at: 10 }
    }

    fn fail(step: usize, transient: bool) -> Event {
        Event::Failed { step, reason: "no".into(), transient, at: 20 }
    }

    fn undone(step: usize) -> Event {
        Event::Compensated { step, digest: "d".into(), touched: vec![], at: 30 }
    }

    fn undo_failed(step: usize) -> Event {
        Event::CompensationFailed { step, reason: "still no".into(), transient: true, at: 40 }
    }

    /// Runs `events` from a fresh state; returns the state and the last actions.
    fn run(events: Vec<Event>) -> (SagaState, Vec<Action>) {
        let def = def();
        let mut state = SagaState::new(&def);
        let mut actions = apply(&def, &mut state, Event::Started { at: 0 });
        for event in events {
            actions = apply(&def, &mut state, event);
        }
        (state, actions)
    }

    #[test]
    fn starting_runs_the_first_step() {
        let (state, actions) = run(vec![]);
        assert_eq!(actions, invoke(0, Direction::Do, 1, 0));
        assert_eq!(state.steps[0].status, StepStatus::Running);
        assert_eq!(state.steps[0].started_at, Some(0));
    }

    #[test]
    fn every_step_succeeding_completes_the_saga() {
        let (state, actions) = run(vec![ok(0), ok(1), ok(2), ok(3)]);
        assert_eq!(actions, vec![Action::Finished(SagaStatus::Completed)]);
        assert_eq!(state.status, SagaStatus::Completed);
        assert!(state.steps.iter().all(|s| s.status == StepStatus::Done));
        assert_eq!(state.steps[1].output, Some(json!({"step": 1})));
    }

    #[test]
    fn a_success_starts_the_next_step() {
        let (state, actions) = run(vec![ok(0)]);
        assert_eq!(actions, invoke(1, Direction::Do, 1, 0));
        assert_eq!(state.steps[0].status, StepStatus::Done);
        assert_eq!(state.steps[0].finished_at, Some(10));
    }

    #[test]
    fn a_transient_failure_is_retried_with_growing_backoff() {
        let (state, actions) = run(vec![ok(0), fail(1, true)]);
        assert_eq!(actions, invoke(1, Direction::Do, 2, 100));
        assert_eq!(state.steps[1].last_error.as_deref(), Some("no"));
        let (_, actions) = run(vec![ok(0), fail(1, true), fail(1, true)]);
        assert_eq!(actions, invoke(1, Direction::Do, 3, 200));
    }

    #[test]
    fn exhausted_retries_compensate_in_reverse_order() {
        let (state, actions) = run(vec![ok(0), fail(1, true), fail(1, true), fail(1, true)]);
        let mut expected = invoke(0, Direction::Undo, 1, 0);
        expected.push(Action::RetriesExhausted { step: 1 });
        assert_eq!(actions, expected, "b failed, so only a is undone; and an alert");
        assert_eq!(state.status, SagaStatus::Compensating);
        assert_eq!(state.steps[1].status, StepStatus::Failed);
        assert_eq!(state.reason.as_deref(), Some("step `b` failed 3 times: no"));
    }

    #[test]
    fn a_refusal_compensates_at_once() {
        let (state, actions) = run(vec![ok(0), fail(1, false)]);
        assert_eq!(actions, invoke(0, Direction::Undo, 1, 0));
        assert_eq!(state.reason.as_deref(), Some("step `b` was refused: no"));
    }

    #[test]
    fn compensations_run_down_to_the_first_step_then_the_saga_is_compensated() {
        // A saga whose three steps are all compensable, so that the third can be refused.
        let mut def = def();
        def.steps[2].compensation = Some("c-undo".into());
        def.pivot = 3;
        let mut state = SagaState::new(&def);
        apply(&def, &mut state, Event::Started { at: 0 });
        apply(&def, &mut state, ok(0));
        apply(&def, &mut state, ok(1));
        assert_eq!(apply(&def, &mut state, fail(2, false)), invoke(1, Direction::Undo, 1, 0));
        assert_eq!(apply(&def, &mut state, undone(1)), invoke(0, Direction::Undo, 1, 0));
        assert_eq!(apply(&def, &mut state, undone(0)), vec![Action::Finished(SagaStatus::Compensated)]);
        assert_eq!(state.status, SagaStatus::Compensated);
        assert_eq!(state.steps[1].status, StepStatus::Compensated);
        assert_eq!(state.steps[1].compensated_at, Some(30));
        assert_eq!(state.steps[2].status, StepStatus::Failed, "the refused step is not undone");
    }

    #[test]
    fn a_failure_of_the_first_step_compensates_nothing() {
        let (state, actions) = run(vec![fail(0, false)]);
        assert_eq!(actions, vec![Action::Finished(SagaStatus::Compensated)]);
        assert_eq!(state.status, SagaStatus::Compensated);
    }

    #[test]
    fn a_refused_pivot_compensates_the_steps_before_it() {
        let (state, actions) = run(vec![ok(0), ok(1), fail(2, false)]);
        assert_eq!(actions, invoke(1, Direction::Undo, 1, 0), "the pivot wrote nothing: undo b, then a");
        assert_eq!(state.status, SagaStatus::Compensating);
        assert_eq!(state.steps[2].status, StepStatus::Failed);
        assert_eq!(state.reason.as_deref(), Some("step `c` was refused: no"));
    }

    #[test]
    fn a_pivot_out_of_attempts_compensates_too() {
        let (state, actions) = run(vec![ok(0), ok(1), fail(2, true), fail(2, true), fail(2, true)]);
        let mut expected = invoke(1, Direction::Undo, 1, 0);
        expected.push(Action::RetriesExhausted { step: 2 });
        assert_eq!(actions, expected);
        assert_eq!(state.status, SagaStatus::Compensating);
    }

    #[test]
    fn after_the_pivot_transient_failures_are_retried_forever() {
        let mut events = vec![ok(0), ok(1), ok(2)];
        events.extend((0..50).map(|_| fail(3, true)));
        let (state, actions) = run(events);
        assert_eq!(actions, invoke(3, Direction::Do, 51, 1000), "backoff capped at max_backoff");
        assert_eq!(state.status, SagaStatus::Running);
    }

    #[test]
    fn after_the_pivot_using_up_the_attempts_raises_one_alert_and_goes_on() {
        let past = |failures: usize| {
            let mut events = vec![ok(0), ok(1), ok(2)];
            events.extend((0..failures).map(|_| fail(3, true)));
            run(events).1
        };
        assert_eq!(past(2), invoke(3, Direction::Do, 3, 200), "no alert before the attempts are used up");
        let mut expected = invoke(3, Direction::Do, 4, 400);
        expected.push(Action::RetriesExhausted { step: 3 });
        assert_eq!(past(3), expected);
        assert_eq!(past(4), invoke(3, Direction::Do, 5, 800), "only once");
    }

    fn alice() -> OperatorNote {
        OperatorNote { by: "alice".into(), note: Some("mail server fixed".into()) }
    }

    /// The operator actions of a history: (action, by, note, step).
    fn operator_actions(state: &SagaState) -> Vec<(OperatorAction, String, Option<String>, Option<String>)> {
        state
            .history
            .iter()
            .filter_map(|e| match &e.what {
                Happened::Operator { action, by, note, step, .. } => {
                    Some((*action, by.clone(), note.clone(), step.clone()))
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_refusal_after_the_pivot_makes_the_saga_stuck_and_a_retry_runs_it_again() {
        let (mut state, actions) = run(vec![ok(0), ok(1), ok(2), fail(3, false)]);
        assert_eq!(actions, vec![Action::Finished(SagaStatus::Stuck)]);
        assert_eq!(state.status, SagaStatus::Stuck);
        assert_eq!(state.steps[0].status, StepStatus::Done, "nothing is undone after the pivot");
        let actions = apply(&def(), &mut state, Event::RetryRequested { at: 50, by: alice() });
        assert_eq!(actions, invoke(3, Direction::Do, 2, 0));
        assert_eq!((state.status, state.round), (SagaStatus::Running, 1));
        let actions = operator_actions(&state);
        assert_eq!((actions[0].0, actions[0].1.as_str()), (OperatorAction::Retry, "alice"));
        assert_eq!(state.stuck, None, "no longer stuck");
    }

    #[test]
    fn past_the_pivot_an_operator_cannot_compensate() {
        let (mut state, _) = run(vec![ok(0), ok(1), ok(2), fail(3, false)]);
        let before = state.clone();
        assert!(state.past_the_pivot(&def()));
        assert_eq!(apply(&def(), &mut state, Event::CompensateRequested { at: 50, by: alice() }), vec![]);
        assert_eq!(state, before, "nothing changed, nothing recorded");
    }

    #[test]
    fn an_operator_resolves_a_refused_step_after_the_pivot_and_the_saga_completes() {
        let (mut state, _) = run(vec![ok(0), ok(1), ok(2), fail(3, false)]);
        let resolved = Event::Resolved { step: 3, output: json!({"sent": "by hand"}), at: 60, by: alice() };
        let actions = apply(&def(), &mut state, resolved);
        assert_eq!(actions, vec![Action::Finished(SagaStatus::Completed)]);
        assert_eq!(state.steps[3].status, StepStatus::Done);
        assert_eq!(state.steps[3].output, Some(json!({"sent": "by hand"})));
        let actions = operator_actions(&state);
        assert_eq!((actions[0].0, actions[0].3.as_deref()), (OperatorAction::Resolve, Some("d")));
        assert_eq!(actions[0].2.as_deref(), Some("mail server fixed"));
    }

    #[test]
    fn an_operator_may_only_resolve_the_stuck_step() {
        let (mut state, _) = run(vec![ok(0), ok(1), ok(2), fail(3, false)]);
        let before = state.clone();
        let wrong = Event::Resolved { step: 1, output: json!(null), at: 60, by: alice() };
        assert_eq!(apply(&def(), &mut state, wrong), vec![]);
        assert_eq!(state, before);
    }

    #[test]
    fn an_operator_resolves_a_stuck_compensation_and_the_rest_is_undone() {
        let (mut state, _) =
            run(vec![ok(0), ok(1), fail(2, false), undone(1), undo_failed(0), undo_failed(0)]);
        let (mut state, _) = {
            let actions = apply(&def(), &mut state, undo_failed(0));
            (state, actions)
        };
        assert_eq!(state.status, SagaStatus::Stuck);
        let resolved = Event::Resolved { step: 0, output: json!(null), at: 70, by: alice() };
        assert_eq!(apply(&def(), &mut state, resolved), vec![Action::Finished(SagaStatus::Compensated)]);
        assert_eq!(state.steps[0].status, StepStatus::Compensated);
    }

    /// A saga stuck on a refused pivot (as sagas became before a refused pivot
    /// compensated by itself): the operator compensates it, and what came before the
    /// pivot is undone in reverse order.
    #[test]
    fn an_operator_compensates_a_saga_stuck_before_the_pivot_committed() {
        let (mut state, _) = run(vec![ok(0), ok(1)]);
        state.steps[2].status = StepStatus::Failed;
        state.status = SagaStatus::Stuck;
        state.reason = Some("step `c` was refused after the pivot: no".into());
        assert!(!state.past_the_pivot(&def()));
        let actions = apply(&def(), &mut state, Event::CompensateRequested { at: 50, by: alice() });
        assert_eq!(actions, invoke(1, Direction::Undo, 1, 0));
        assert_eq!((state.status, state.round), (SagaStatus::Compensating, 1));
        assert_eq!(apply(&def(), &mut state, undone(1)), invoke(0, Direction::Undo, 1, 0));
        assert_eq!(apply(&def(), &mut state, undone(0)), vec![Action::Finished(SagaStatus::Compensated)]);
        assert_eq!(operator_actions(&state)[0].0, OperatorAction::Compensate);
        assert_eq!(state.reason.as_deref(), Some("step `c` was refused after the pivot: no"), "kept");
    }

    #[test]
    fn a_compensation_that_keeps_failing_makes_the_saga_stuck() {
        let (state, actions) = run(vec![ok(0), fail(1, false), undo_failed(0)]);
        assert_eq!(actions, invoke(0, Direction::Undo, 2, 100));
        assert_eq!(state.status, SagaStatus::Compensating);
        let (state, actions) =
            run(vec![ok(0), fail(1, false), undo_failed(0), undo_failed(0), undo_failed(0)]);
        assert_eq!(actions, vec![Action::Finished(SagaStatus::Stuck)]);
        assert_eq!(state.status, SagaStatus::Stuck);
        assert_eq!(state.steps[0].status, StepStatus::CompensationFailed);
        assert_eq!(state.stuck.as_deref(), Some("the compensation of step `a` failed 3 times: still no"));
        assert_eq!(state.reason.as_deref(), Some("step `b` was refused: no"), "the business reason stays");
    }

    /// A stuck compensation, then the operator's retry, then its success: the reason
    /// the saga compensates stays the business one throughout (the compensations are
    /// given it), while why it was stuck comes and goes.
    #[test]
    fn the_business_reason_survives_a_stuck_compensation_and_its_retry() {
        let def = def();
        let (mut state, _) = run(vec![ok(0), fail(1, false), undo_failed(0), undo_failed(0), undo_failed(0)]);
        assert_eq!(state.status, SagaStatus::Stuck);
        apply(&def, &mut state, Event::RetryRequested { at: 50, by: alice() });
        assert_eq!(state.stuck, None);
        apply(&def, &mut state, undone(0));
        assert_eq!(state.status, SagaStatus::Compensated);
        assert_eq!(state.reason.as_deref(), Some("step `b` was refused: no"));
        let kinds: Vec<&str> = state
            .history
            .iter()
            .map(|e| match &e.what {
                Happened::StepFailed { .. } => "step_failed",
                Happened::CompensationFailed { .. } => "compensation_failed",
                Happened::Stuck { .. } => "stuck",
                Happened::Operator { .. } => "operator",
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "step_failed",
                "compensation_failed",
                "compensation_failed",
                "compensation_failed",
                "stuck",
                "operator"
            ]
        );
    }

    /// A step's duration is its forward call's: compensating it later (and its retries)
    /// moves only its compensation times.
    #[test]
    fn a_step_s_duration_is_its_forward_call_s() {
        let (state, _) = run(vec![ok(0), fail(1, false), undo_failed(0), undo_failed(0), undo_failed(0)]);
        let a = &state.steps[0];
        assert_eq!((a.started_at, a.finished_at), (Some(0), Some(10)));
        assert_eq!(a.compensation_started_at, Some(20), "when b's refusal started the compensation");
    }

    /// Every failed attempt is in the history, but a step retried without end does not
    /// grow it past its bound; operator actions are never dropped.
    #[test]
    fn the_history_keeps_each_failure_within_a_bound() {
        let mut events = vec![ok(0), ok(1), ok(2), fail(3, false)];
        events.push(Event::RetryRequested { at: 50, by: alice() });
        events.extend((0..150).map(|_| fail(3, true)));
        let (state, _) = run(events);
        assert_eq!(state.history.len(), MAX_HISTORY);
        assert_eq!(operator_actions(&state).len(), 1, "the operator's retry is kept");
        let Happened::StepFailed { attempt, .. } = &state.history.last().unwrap().what else {
            panic!("the newest entry is the last failure")
        };
        assert_eq!(*attempt, 151);
    }

    #[test]
    fn a_refused_compensation_makes_the_saga_stuck_at_once() {
        let def = def();
        let (mut state, _) = run(vec![ok(0), fail(1, false)]);
        let refused = Event::CompensationFailed { step: 0, reason: "never".into(), transient: false, at: 40 };
        assert_eq!(apply(&def, &mut state, refused), vec![Action::Finished(SagaStatus::Stuck)]);
        assert_eq!(state.steps[0].compensation_attempts, 1);
    }

    #[test]
    fn a_retry_resumes_a_stuck_compensation_and_can_finish_it() {
        let def = def();
        let (mut state, _) = run(vec![ok(0), fail(1, false), undo_failed(0), undo_failed(0), undo_failed(0)]);
        let actions = apply(&def, &mut state, Event::RetryRequested { at: 50, by: alice() });
        assert_eq!(actions, invoke(0, Direction::Undo, 4, 0), "attempts go on counting");
        assert_eq!((state.status, state.round), (SagaStatus::Compensating, 1));
        let actions = apply(&def, &mut state, undone(0));
        assert_eq!(actions, vec![Action::Finished(SagaStatus::Compensated)]);
    }

    #[test]
    fn a_retry_of_a_saga_that_is_not_stuck_does_nothing() {
        let def = def();
        let (mut state, _) = run(vec![ok(0)]);
        let before = state.clone();
        assert_eq!(apply(&def, &mut state, Event::RetryRequested { at: 50, by: alice() }), vec![]);
        assert_eq!(state, before);
    }

    #[test]
    fn resume_repeats_the_call_in_progress() {
        let (state, _) = run(vec![ok(0), fail(1, true)]);
        assert_eq!(resume(&state), invoke(1, Direction::Do, 2, 0));
        let (state, _) = run(vec![ok(0), fail(1, false)]);
        assert_eq!(resume(&state), invoke(0, Direction::Undo, 1, 0));
        let (state, _) = run(vec![ok(0), ok(1), ok(2), ok(3)]);
        assert_eq!(resume(&state), vec![Action::Finished(SagaStatus::Completed)]);
    }

    #[test]
    fn the_state_round_trips_through_json() {
        let (state, _) = run(vec![ok(0), fail(1, false)]);
        let json = serde_json::to_string(&state).unwrap();
        assert_eq!(serde_json::from_str::<SagaState>(&json).unwrap(), state);
    }

    /// Stored states leave empty fields out, and read those written with them (as
    /// sagas stored before did).
    #[test]
    fn the_stored_state_leaves_empty_fields_out_and_reads_old_ones() {
        let (state, _) = run(vec![ok(0)]);
        let json = serde_json::to_string(&state).unwrap();
        for absent in ["null", "compensation_attempts", "\"round\""] {
            assert!(!json.contains(absent), "{absent} in {json}");
        }
        let old = r#"{"status":"running","steps":[{"status":"done","attempts":1,"compensation_attempts":0,
            "output":{"a":1},"last_error":null,"digest":"sha256:00","started_at":1,"finished_at":2,
            "compensation_started_at":null,"compensated_at":null}],"reason":null,"stuck":null,"round":0,
            "definition":"d"}"#;
        let read: SagaState = serde_json::from_str(old).unwrap();
        assert_eq!((read.steps[0].attempts, read.steps[0].output.clone()), (1, Some(json!({"a": 1}))));
        assert_eq!((read.round, read.reason, read.steps[0].compensated_at), (0, None, None));
    }
}
