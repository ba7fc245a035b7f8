//! The driver: performs a saga's actions. Each step call is one idempotent invocation
//! whose outcome and the saga's next state are committed together; a call that
//! produced no outcome (transient failure, trap, deadline) commits the next state
//! alone. One driver runs a saga at a time.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use serde_json::{Map, Value};
use tracing::Instrument;

use super::definition::SagaDef;
use super::machine::{Action, Direction, Event, SagaState, StepStatus, apply};
use super::{EngineInner, SagaId};
use crate::alert::Alert;
use crate::invoke::{Attached, Caller, InvokeError, Produced, Request};
use crate::metrics::{labels, metrics};
use crate::rates::{Rate, rates};
use crate::store::SagaStatus;
use crate::store::{Commit, SagaChange, StoreError};
use crate::trace::{Kind, Span, TraceContext};

/// Everything the driver keeps between actions.
pub(super) struct Run {
    pub def: Arc<SagaDef>,
    pub id: SagaId,
    pub input: Map<String, Value>,
    pub state: SagaState,
    /// The stored version of `state`.
    pub version: u64,
    /// When the saga was created (unix ms).
    pub started_at: i64,
}

/// Drives the saga until it finishes, gets stuck or is another host's (`Ok`), or a
/// step's call or its transition fails in a way the driver does not wait out (`Err`:
/// the engine's supervisor starts it again from the stored saga).
pub(super) async fn drive(
    engine: Arc<EngineInner>,
    mut run: Run,
    mut actions: Vec<Action>,
) -> Result<(), StoreError> {
    while let Some(action) = actions.pop() {
        actions = match action {
            Action::Finished(status) => {
                finished(&engine, &run, status);
                Vec::new()
            }
            Action::RetriesExhausted { step } => {
                engine.alerter.raise(Alert {
                    kind: "step_retries_exhausted",
                    saga_id: run.id.to_string(),
                    saga: run.def.name.clone(),
                    step: Some(run.def.steps[step].name.clone()),
                    reason: run.state.steps[step].last_error.clone().unwrap_or_default(),
                    at: engine.clock.now_ms(),
                });
                actions
            }
            Action::Invoke { step, direction, attempt, delay } => {
                if !delay.is_zero() {
                    // Full jitter: sagas that failed together do not retry together.
                    let wait = delay.mul_f64(rand::rng().random::<f64>());
                    engine.clock.sleep(wait).await;
                }
                // A slot per call, not per saga: sagas waiting out a backoff hold none.
                let _permit = engine.permits.acquire().await.expect("the semaphore is never closed");
                call(&engine, &mut run, step, direction, attempt).await?
            }
        };
    }
    Ok(())
}

/// Makes one step call and commits the transition it causes; returns the next actions.
async fn call(
    engine: &Arc<EngineInner>,
    run: &mut Run,
    step: usize,
    direction: Direction,
    attempt: u32,
) -> Result<Vec<Action>, StoreError> {
    let def = run.def.clone();
    let step_def = &def.steps[step];
    let label = label(direction);
    let mut request = step_request(run, step, direction);
    request.attempt = attempt;
    // A child of the request that started the saga, whichever host drives it now.
    let parent = run.state.traceparent.as_deref().and_then(TraceContext::parse);
    let mut trace = Span::start(
        || format!("saga {} {} {label}", def.name, step_def.name),
        parent.as_ref(),
        Kind::Internal,
    );
    if trace.recording() {
        trace.set("wasaga.saga.id", run.id.to_string());
    }
    trace.set("wasaga.saga.step", step_def.name.as_str());
    trace.set("wasaga.saga.direction", label);
    trace.set("wasaga.attempt", attempt);
    request.trace = trace.context();

    let span =
        tracing::info_span!("saga step", saga = %run.id, step = %step_def.name, direction = label, attempt);
    let began = std::time::Instant::now();
    let actions = async { call_until_answered(engine, run, &def, request, step, direction).await }
        .instrument(span)
        .await
        .inspect_err(|error| trace.fail(error))?;
    let outcome = match run.state.steps[step].status {
        StepStatus::Done | StepStatus::Compensated => "ok",
        _ => "failed",
    };
    if outcome == "failed" {
        let error = run.state.steps[step].last_error.as_deref().unwrap_or("failed");
        trace.fail(error);
    }
    let step_labels =
        [("saga", def.name.as_str()), ("step", &step_def.name), ("direction", label), ("outcome", outcome)];
    metrics().step_seconds.get_or_create(&labels(&step_labels)).observe(began.elapsed().as_secs_f64());
    if outcome == "failed" {
        rates().count(Rate::StepFailed, engine.clock.now_ms());
    }
    Ok(actions)
}

/// How a direction is named in keys, spans and metrics.
fn label(direction: Direction) -> &'static str {
    match direction {
        Direction::Do => "do",
        Direction::Undo => "undo",
    }
}

/// The call a step makes: its operation, its input, and its idempotency key
/// (`saga/<id>/<step>/<do|undo>`, with `/retry-<n>` once an operator has retried the
/// stuck saga `n` times, so that the retry runs the call again instead of replaying
/// its refusal). `saga verify` makes its calls with it too.
pub(super) fn step_request(run: &Run, step: usize, direction: Direction) -> Request {
    let step_def = &run.def.steps[step];
    let operation = match direction {
        Direction::Do => step_def.action.as_str(),
        Direction::Undo => step_def.compensation.as_deref().expect("only compensable steps are undone"),
    };
    let mut key = format!("saga/{}/{}/{}", run.id, step_def.name, label(direction));
    if run.state.round > 0 {
        key.push_str(&format!("/retry-{}", run.state.round));
    }
    let mut request =
        Request::new(Caller::Saga, &step_def.service, operation, step_input(run, direction), key);
    request.correlation_id = run.id.to_string();
    request
}

/// Calls until the call has an answer (anything but a store failure), and commits the
/// transition.
async fn call_until_answered(
    engine: &Arc<EngineInner>,
    run: &mut Run,
    def: &Arc<SagaDef>,
    request: Request,
    step: usize,
    direction: Direction,
) -> Result<Vec<Action>, StoreError> {
    loop {
        let at = engine.clock.now_ms();
        let (base, version, id) = (run.state.clone(), run.version, run.id.clone());
        let def_for_attach = def.clone();
        let engine_for_attach = engine.clone();
        let attach = Arc::new(move |produced: &Produced<'_>| {
            let mut next = base.clone();
            apply(&def_for_attach, &mut next, outcome_event(step, direction, produced, at));
            Attached {
                saga: Some(update(&engine_for_attach, &id, version, &next, at)),
                ..Attached::default()
            }
        });
        let event = match engine.invoker.invoke_with(request.clone(), attach).await {
            Ok(invoked) => {
                let produced =
                    Produced { result: &invoked.result, digest: &invoked.digest, written: &invoked.written };
                let event = outcome_event(step, direction, &produced, at);
                let actions = apply(def, &mut run.state, event);
                if invoked.replayed {
                    // The outcome was stored before, without this transition (only
                    // another process can do that): commit the transition on its own.
                    return save(engine, run, at, actions).await;
                }
                run.version += 1;
                return Ok(actions);
            }
            // The step's commit was refused by the saga's fence: another host (or an
            // operator) moved the saga on. No re-run of the call can change that.
            Err(InvokeError::Store(StoreError::Moved(_))) => return moved_on(engine, run).await,
            Err(InvokeError::Store(error)) => {
                // Not the step's fault: wait and make the same call again.
                tracing::warn!("the store failed during a saga step ({error}); trying again in 1 s");
                engine.clock.sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(error) if error.is_busy() => {
                // Every instance is busy: capacity, not the step, is short. The same call
                // again shortly, no attempt spent (overload must not compensate a saga).
                let wait = Duration::from_millis(rand::rng().random_range(10..100));
                engine.clock.sleep(wait).await;
                continue;
            }
            Err(error) => {
                let reason = error.to_string();
                match direction {
                    Direction::Do => Event::Failed { step, reason, transient: true, at },
                    Direction::Undo => Event::CompensationFailed { step, reason, transient: true, at },
                }
            }
        };
        let reason = match &event {
            Event::Failed { reason, .. } | Event::CompensationFailed { reason, .. } => reason.as_str(),
            _ => "",
        };
        tracing::info!("saga step failed, no outcome stored: {}", crate::text::printable(reason));
        let actions = apply(def, &mut run.state, event);
        return save(engine, run, at, actions).await;
    }
}

/// Commits the saga's new state on its own. The store failing is waited out; a
/// refused update means the stored saga moved on (another process drove it): the
/// driver takes the stored state and goes on from there.
async fn save(
    engine: &EngineInner,
    run: &mut Run,
    at: i64,
    actions: Vec<Action>,
) -> Result<Vec<Action>, StoreError> {
    loop {
        match commit(engine, update(engine, &run.id, run.version, &run.state, at)).await {
            Ok(()) => {
                run.version += 1;
                return Ok(actions);
            }
            Err(StoreError::Moved(_)) => return moved_on(engine, run).await,
            Err(error @ (StoreError::Unavailable(_) | StoreError::Overloaded(_))) => {
                tracing::warn!(saga = %run.id, "saving the saga failed ({error}); trying again in 1 s");
                engine.clock.sleep(Duration::from_secs(1)).await;
            }
            Err(other) => return Err(other),
        }
    }
}

/// The saga is not where this driver had it (its update was refused): the stored state
/// from now on, and nothing more to do here if another host owns the saga now. A read
/// that fails is the supervisor's to retry (`SagaEngine::supervise`).
async fn moved_on(engine: &EngineInner, run: &mut Run) -> Result<Vec<Action>, StoreError> {
    let row = engine
        .store
        .saga(&run.id.to_string())
        .await?
        .ok_or_else(|| StoreError::Unavailable(format!("saga {} disappeared from the store", run.id)))?;
    run.state = serde_json::from_str(&row.state)
        .map_err(|e| StoreError::Unavailable(format!("saga {} has an unreadable state: {e}", run.id)))?;
    run.version = row.version;
    if let Some(owner) = row.owner.filter(|owner| *owner != engine.host) {
        tracing::warn!(saga = %run.id, %owner, "another host took the saga over; this one stops driving it");
        return Ok(Vec::new());
    }
    tracing::warn!(saga = %run.id, "the saga moved on elsewhere; going on from its stored state");
    Ok(super::machine::resume(&run.state))
}

/// The event an outcome means.
pub(super) fn outcome_event(step: usize, direction: Direction, produced: &Produced<'_>, at: i64) -> Event {
    let (digest, touched) = (produced.digest.to_string(), produced.written.to_vec());
    match (direction, produced.result) {
        (Direction::Do, Ok(output)) => Event::Succeeded {
            step,
            output: serde_json::from_slice(output)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(output).into_owned())),
            digest,
            touched,
            at,
        },
        (Direction::Do, Err(reason)) => Event::Failed { step, reason: reason.clone(), transient: false, at },
        (Direction::Undo, Ok(_)) => Event::Compensated { step, digest, touched, at },
        (Direction::Undo, Err(reason)) => {
            Event::CompensationFailed { step, reason: reason.clone(), transient: false, at }
        }
    }
}

/// A step's input: the saga's input, with `saga_id`, `steps` (the outputs of the
/// completed steps, by name) and, for a compensation, `reason`.
pub(super) fn step_input(run: &Run, direction: Direction) -> Vec<u8> {
    let mut input = run.input.clone();
    input.insert("saga_id".into(), Value::String(run.id.to_string()));
    let outputs: Map<String, Value> = run
        .def
        .steps
        .iter()
        .zip(&run.state.steps)
        .filter_map(|(def, state)| Some((def.name.clone(), state.output.clone()?)))
        .collect();
    input.insert("steps".into(), Value::Object(outputs));
    if direction == Direction::Undo
        && let Some(reason) = &run.state.reason
    {
        input.insert("reason".into(), Value::String(reason.clone()));
    }
    serde_json::to_vec(&input).expect("JSON values serialise")
}

/// The saga's next state, made by this host (which drives it from then on).
pub(super) fn update(
    engine: &EngineInner,
    id: &SagaId,
    version: u64,
    state: &SagaState,
    at: i64,
) -> SagaChange {
    SagaChange::Update {
        id: id.to_string(),
        version,
        status: state.status,
        state: serde_json::to_string(state).expect("the saga state serialises"),
        at,
        by: Some(engine.host.clone()),
    }
}

pub(super) async fn commit(engine: &EngineInner, change: SagaChange) -> Result<(), StoreError> {
    let commit = Commit { saga: Some(change), ..Commit::default() };
    engine.invoker.commit(commit).await
}

fn finished(engine: &EngineInner, run: &Run, status: SagaStatus) {
    let now = engine.clock.now_ms();
    let rate = match status {
        SagaStatus::Completed => Some(Rate::Completed),
        SagaStatus::Compensated => Some(Rate::Compensated),
        SagaStatus::Stuck => Some(Rate::Stuck),
        SagaStatus::Running | SagaStatus::Compensating => None,
    };
    if let Some(rate) = rate {
        rates().count(rate, now);
    }
    let took = (now - run.started_at).max(0) as f64 / 1000.0;
    metrics()
        .saga_seconds
        .get_or_create(&labels(&[("saga", &run.def.name), ("status", status.as_str())]))
        .observe(took);
    match status {
        SagaStatus::Stuck => engine.alerter.raise(Alert {
            kind: "saga_stuck",
            saga_id: run.id.to_string(),
            saga: run.def.name.clone(),
            step: None,
            reason: format!(
                "{reason}; an operator decides: retry once the cause is fixed (POST /v1/sagas/{id}/retry), \
                 compensate while the pivot has not committed (.../compensate), or resolve the stuck step \
                 by hand (.../resolve)",
                reason = run.state.stuck.as_deref().unwrap_or("stuck"),
                id = run.id
            ),
            at: engine.clock.now_ms(),
        }),
        SagaStatus::Compensated => tracing::info!(
            saga = %run.id, reason = run.state.reason.as_deref().unwrap_or(""), "saga compensated"
        ),
        _ => tracing::debug!(saga = %run.id, status = status.as_str(), "saga finished"),
    }
}
