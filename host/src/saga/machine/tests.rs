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
        steps: vec![step("a", Some("a-undo")), step("b", Some("b-undo")), step("c", None), step("d", None)],
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
    let (mut state, _) = run(vec![ok(0), ok(1), fail(2, false), undone(1), undo_failed(0), undo_failed(0)]);
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
    let (state, actions) = run(vec![ok(0), fail(1, false), undo_failed(0), undo_failed(0), undo_failed(0)]);
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
