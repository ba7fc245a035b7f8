//! `wasaga saga verify`: a saga run against its real plugin components once per failure
//! schedule, each on a scratch store seeded alike, and its end checked.
//!
//! The state machine is the one that drives sagas (`machine::apply`), the calls are
//! made through the real invocation path (`Invoker`, with the keys and inputs the
//! driver uses), and faults are injected between the two: a call refused or failing
//! transiently without reaching its plugin, made twice with its key (a crash after its
//! commit, or a duplicate delivery, both answered by the stored outcome), or a step
//! marked done without its call (an operator's `resolve`), so that its compensation
//! runs for a step that never committed. Delays are skipped. Verdicts:
//! - a saga that ends `compensated` leaves every record as it found it, but for the
//!   definition's `audit` keys;
//! - a saga that ends `completed` leaves the records of the run without faults;
//! - a saga ends `stuck` only when a compensation, or a step after the pivot, was made
//!   to fail for good;
//! - the definition's invariants (operations answering a JSON array of violations),
//!   called at the end of every run, find none.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde_json::{Map, Value};

use super::SagaId;
use super::definition::SagaDef;
use super::driver::{Run, outcome_event, step_request};
use super::machine::{Action, Direction, Event, SagaState, StepStatus, apply};
use crate::invoke::{Caller, Invoker, Produced, Request};
use crate::store::SagaStatus;
use crate::store::{ChangeSet, Commit, Store, Write};

/// What is done to one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    /// Refused, without reaching the plugin.
    Refused,
    /// Failing transiently once, then made.
    TransientOnce,
    /// Failing transiently at every attempt but the last its retry policy allows.
    TransientToLimit,
    /// Failing transiently at every attempt its retry policy allows (a step after the
    /// pivot, which retries for ever, is then made).
    TransientPastLimit,
    /// Made, then made again with its key (a crash after its commit; a duplicate).
    Twice,
    /// Marked done without being made (an operator resolved it by hand): its
    /// compensation may then run for a step that never committed.
    Skipped,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Fault::Refused => "refused",
            Fault::TransientOnce => "transient once",
            Fault::TransientToLimit => "transient up to its limit",
            Fault::TransientPastLimit => "transient past its limit",
            Fault::Twice => "made twice",
            Fault::Skipped => "done without its call",
        })
    }
}

/// One fault on one call: a step's (`Do`) or its compensation's (`Undo`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Injection {
    pub step: usize,
    pub undo: bool,
    pub fault: Fault,
}

/// The faults of one run: none, one, or two on different calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule(pub Vec<Injection>);

impl Schedule {
    fn fault(&self, step: usize, direction: Direction) -> Option<Fault> {
        let undo = direction == Direction::Undo;
        self.0.iter().find(|i| i.step == step && i.undo == undo).map(|i| i.fault)
    }

    /// Whether the schedule may leave the saga stuck: a compensation, or a step after
    /// the pivot, made to fail for good.
    fn may_stick(&self, def: &SagaDef) -> bool {
        self.0.iter().any(|i| match (i.undo, i.fault) {
            (true, Fault::Refused | Fault::TransientPastLimit) => true,
            (false, Fault::Refused) => i.step > def.pivot,
            _ => false,
        })
    }

    /// Written with the definition's step names.
    pub fn describe(&self, def: &SagaDef) -> String {
        if self.0.is_empty() {
            return "no fault".into();
        }
        let one = |i: &Injection| {
            let call = if i.undo { "undo" } else { "do" };
            format!("{} {call}: {}", def.steps[i.step].name, i.fault)
        };
        self.0.iter().map(one).collect::<Vec<_>>().join(" + ")
    }
}

/// Every schedule: no fault, each fault on each call alone, and each pair on two calls.
pub fn schedules(def: &SagaDef) -> Vec<Schedule> {
    let mut single = Vec::new();
    for (step, step_def) in def.steps.iter().enumerate() {
        let undoable = step_def.compensation.is_some();
        for undo in [false, true] {
            if undo && !undoable {
                continue;
            }
            let faults = [
                Fault::Refused,
                Fault::TransientOnce,
                Fault::TransientToLimit,
                Fault::TransientPastLimit,
                Fault::Twice,
            ];
            for fault in faults {
                single.push(Injection { step, undo, fault });
            }
            // Only a compensable step's skipping can be undone, which is what it tests.
            if !undo && undoable {
                single.push(Injection { step, undo, fault: Fault::Skipped });
            }
        }
    }
    let mut all = vec![Schedule(Vec::new())];
    all.extend(single.iter().map(|i| Schedule(vec![*i])));
    for (n, a) in single.iter().enumerate() {
        for b in &single[n + 1..] {
            if (a.step, a.undo) != (b.step, b.undo) {
                all.push(Schedule(vec![*a, *b]));
            }
        }
    }
    all
}

/// Records, by service and key: their values as JSON text.
pub type Records = BTreeMap<(String, String), Vec<u8>>;

/// How one schedule ended.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub schedule: Schedule,
    pub status: Option<SagaStatus>,
    /// The records that differ from the ones it started with.
    pub changed: Vec<(String, String)>,
    /// What is wrong; empty when nothing is.
    pub findings: Vec<String>,
}

/// Makes an invoker over the saga's plugins on a scratch store of its own, empty: one
/// for each run. The caller (the command line) chooses the plugins and the store.
pub type Scratch = Box<dyn Fn() -> anyhow::Result<Invoker> + Send + Sync>;

/// What a verification needs: the definition, the saga's input, the records the
/// plugins start with, the services whose records are compared, and where each run
/// is made.
pub struct Verification {
    pub def: Arc<SagaDef>,
    pub input: Map<String, Value>,
    pub seed: Records,
    pub services: Vec<String>,
    pub scratch: Scratch,
}

impl fmt::Debug for Verification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verification").field("def", &self.def.name).field("services", &self.services).finish()
    }
}

/// The most calls a run may make before it is called endless.
const MAX_CALLS: usize = 200;

impl Verification {
    /// Runs every schedule; the verdicts in [`schedules`]' order.
    pub async fn run(&self) -> anyhow::Result<Vec<Verdict>> {
        let schedules = schedules(&self.def);
        // One saga id for every run (each on its own store): a plugin that writes it
        // writes the same in all.
        let id = SagaId::new();
        let baseline = self.run_one(&schedules[0], &id).await?;
        let completed = (baseline.status == Some(SagaStatus::Completed)).then(|| baseline.records.clone());
        let mut verdicts = Vec::with_capacity(schedules.len());
        for schedule in schedules {
            let end =
                if schedule.0.is_empty() { baseline.clone() } else { self.run_one(&schedule, &id).await? };
            verdicts.push(self.judge(schedule, &end, completed.as_ref()));
        }
        Ok(verdicts)
    }

    fn judge(&self, schedule: Schedule, end: &End, completed: Option<&Records>) -> Verdict {
        let (status, records) = (end.status, &end.records);
        let changed = differences(&self.seed, records);
        let mut findings = Vec::new();
        let skipped = schedule.0.iter().any(|i| i.fault == Fault::Skipped);
        match status {
            Some(SagaStatus::Compensated) => {
                let kept: Vec<String> = changed
                    .iter()
                    .filter(|(_, key)| !self.def.audit.iter().any(|pattern| matches(pattern, key)))
                    .map(|(service, key)| format!("{service}:{key}"))
                    .collect();
                if !kept.is_empty() {
                    findings
                        .push(format!("compensated, but records are not as they were: {}", kept.join(", ")));
                }
            }
            // A step done by hand changed nothing of its service's records.
            Some(SagaStatus::Completed) if skipped => {}
            Some(SagaStatus::Completed) => {
                if let Some(expected) = completed {
                    let off: Vec<String> = differences(expected, records)
                        .iter()
                        .map(|(service, key)| format!("{service}:{key}"))
                        .collect();
                    if !off.is_empty() {
                        findings.push(format!(
                            "completed, but records differ from the run without faults: {}",
                            off.join(", ")
                        ));
                    }
                }
            }
            // After a step done by hand, a later step may refuse for the want of what it
            // would have written: not the saga's fault. A compensation may not.
            Some(SagaStatus::Stuck) if skipped && !end.compensation_failed => {}
            Some(SagaStatus::Stuck) if !schedule.may_stick(&self.def) => {
                let finding = if end.compensation_failed {
                    "stuck: a compensation failed that no fault was put on"
                } else {
                    "stuck, though no compensation and no step after the pivot was made to fail"
                };
                findings.push(finding.into());
            }
            Some(_) => {}
            None => findings.push(format!("did not end within {MAX_CALLS} calls")),
        }
        findings.extend(end.violations.iter().cloned());
        Verdict { schedule, status, changed, findings }
    }

    /// One run of the saga under `schedule`, on a scratch store seeded with the seed.
    async fn run_one(&self, schedule: &Schedule, id: &SagaId) -> anyhow::Result<End> {
        let invoker = (self.scratch)()?;
        let store = invoker.store().clone();
        seed(&*store, &self.seed).await?;
        let def = self.def.clone();
        let mut run = Run {
            def: def.clone(),
            id: id.clone(),
            input: self.input.clone(),
            state: SagaState::new(&def),
            version: 1,
            started_at: 0,
        };
        let mut failures: BTreeMap<(usize, bool), u32> = BTreeMap::new();
        let mut actions = apply(&def, &mut run.state, Event::Started { at: 0 });
        let mut status = None;
        for at in 1..=MAX_CALLS as i64 {
            let next = actions.iter().find(|a| matches!(a, Action::Invoke { .. } | Action::Finished(_)));
            let (step, direction) = match next {
                Some(Action::Invoke { step, direction, .. }) => (*step, *direction),
                Some(Action::Finished(finished)) => {
                    status = Some(*finished);
                    break;
                }
                _ => break,
            };
            let undo = direction == Direction::Undo;
            let failed = failures.entry((step, undo)).or_default();
            let limit = def.steps[step].retry.max_attempts;
            let transient = |reason: &str| match direction {
                Direction::Do => Event::Failed { step, reason: reason.into(), transient: true, at },
                Direction::Undo => {
                    Event::CompensationFailed { step, reason: reason.into(), transient: true, at }
                }
            };
            let event = match schedule.fault(step, direction) {
                Some(Fault::Refused) => match direction {
                    Direction::Do => {
                        Event::Failed { step, reason: "refused (verify)".into(), transient: false, at }
                    }
                    Direction::Undo => Event::CompensationFailed {
                        step,
                        reason: "refused (verify)".into(),
                        transient: false,
                        at,
                    },
                },
                Some(Fault::TransientOnce) if *failed < 1 => {
                    *failed += 1;
                    transient("failed once (verify)")
                }
                Some(Fault::TransientToLimit) if *failed + 1 < limit => {
                    *failed += 1;
                    transient("failed at every attempt but the last (verify)")
                }
                Some(Fault::TransientPastLimit) if *failed < limit => {
                    *failed += 1;
                    transient("failed at every attempt (verify)")
                }
                Some(Fault::Skipped) => Event::Succeeded {
                    step,
                    output: Value::Object(Map::new()),
                    digest: "resolved by hand (verify)".into(),
                    touched: Vec::new(),
                    at,
                },
                fault => {
                    let request = step_request(&run, step, direction);
                    let mut answer = invoker.invoke(request.clone()).await;
                    if fault == Some(Fault::Twice) && answer.is_ok() {
                        answer = invoker.invoke(request).await;
                    }
                    match answer {
                        Ok(invoked) => {
                            let produced = Produced {
                                result: &invoked.result,
                                digest: &invoked.digest,
                                written: &invoked.written,
                            };
                            outcome_event(step, direction, &produced, at)
                        }
                        Err(error) => transient(&error.to_string()),
                    }
                }
            };
            actions = apply(&def, &mut run.state, event);
        }
        let compensation_failed = run.state.steps.iter().any(|s| s.status == StepStatus::CompensationFailed);
        let records = records(&*store, &self.services).await?;
        let mut violations = Vec::new();
        for (n, (service, operation)) in def.invariants.iter().enumerate() {
            let key = format!("verify/invariant/{n}");
            let request = Request::new(Caller::Operator, service, operation, b"{}".to_vec(), key);
            let answer = invoker.invoke(request).await;
            let output = match &answer {
                Ok(invoked) => invoked.result.as_ref().map_err(Clone::clone),
                Err(error) => Err(error.to_string()),
            };
            let found = match output.map(|bytes| serde_json::from_slice::<Vec<Value>>(bytes)) {
                Ok(Ok(found)) => {
                    found.iter().map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned)).collect()
                }
                Ok(Err(_)) => vec!["answered something other than a JSON array of violations".to_owned()],
                Err(reason) => vec![format!("could not run: {reason}")],
            };
            violations.extend(found.into_iter().map(|v| format!("invariant {service}.{operation}: {v}")));
        }
        Ok(End { status, records, compensation_failed, violations })
    }
}

/// How a run ended.
#[derive(Debug, Clone)]
struct End {
    /// `None`: it did not within [`MAX_CALLS`].
    status: Option<SagaStatus>,
    records: Records,
    /// A compensation failed for good (what keeps a saga stuck, if it is).
    compensation_failed: bool,
    /// What the definition's invariants found.
    violations: Vec<String>,
}

/// Writes the seed records, each at version 1.
async fn seed(store: &dyn Store, records: &Records) -> anyhow::Result<()> {
    let mut by_service: BTreeMap<&str, Vec<Write>> = BTreeMap::new();
    for ((service, key), value) in records {
        by_service.entry(service).or_default().push(Write {
            key: key.clone(),
            value: Some(value.clone()),
            version: 1,
        });
    }
    for (service, writes) in by_service {
        let changes = ChangeSet { writes, ..ChangeSet::default() };
        store.commit(Commit { service: service.into(), changes, ..Commit::default() }).await?;
    }
    Ok(())
}

/// Every record of the services.
async fn records(store: &dyn Store, services: &[String]) -> anyhow::Result<Records> {
    let mut all = Records::new();
    for service in services {
        let mut after: Option<String> = None;
        loop {
            let mut snapshot = store.snapshot(service)?;
            let page = snapshot.scan("", after.as_deref(), 1000, 64 << 20).await?;
            for (key, entry) in &page.rows {
                all.insert((service.to_owned(), key.clone()), entry.value.clone());
            }
            if page.complete || page.rows.is_empty() {
                break;
            }
            after = page.rows.last().map(|(key, _)| key.clone());
        }
    }
    Ok(all)
}

/// The keys whose values differ between `a` and `b` (present in one only, or changed).
fn differences(a: &Records, b: &Records) -> Vec<(String, String)> {
    let mut keys: Vec<&(String, String)> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter().filter(|k| a.get(*k) != b.get(*k)).cloned().collect()
}

/// An audit pattern: a key, or a prefix ending in `*`.
fn matches(pattern: &str, key: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => key.starts_with(prefix),
        None => key == pattern,
    }
}
