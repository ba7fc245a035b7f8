//! Sagas: every saga started ends, and what its steps did, read back from the records
//! they leave, is each of its steps and compensations exactly once, in the order its
//! outcome calls for: all its steps when it completes; when a step up to the pivot is
//! refused, the steps before it, then their compensations in reverse.

use super::{Anomaly, Kind};

/// One step of the definition: its action and, up to the pivot, its compensation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub action: String,
    pub compensation: Option<String>,
}

/// One saga started, and what became of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    pub id: String,
    /// The step whose action refuses (by its index), if one does.
    pub refused: Option<usize>,
    /// Its status at the end (`None`: not found).
    pub status: Option<String>,
    /// The effects its calls left, in the order they happened.
    pub effects: Vec<String>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Checked {
    pub sagas: usize,
    pub completed: usize,
    pub compensated: usize,
    pub steps: usize,
    pub anomalies: Vec<Anomaly>,
}

/// What a saga of `steps` ends as, and the effects it leaves, when the action of step
/// `refused` is refused (none: it completes). Refusals after the pivot (which leave a
/// saga stuck) are not expected here.
pub fn expected(steps: &[Step], refused: Option<usize>) -> (&'static str, Vec<String>) {
    match refused {
        None => ("completed", steps.iter().map(|s| s.action.clone()).collect()),
        Some(at) => {
            let done = &steps[..at];
            let mut effects: Vec<String> = done.iter().map(|s| s.action.clone()).collect();
            effects.extend(done.iter().rev().filter_map(|s| s.compensation.clone()));
            ("compensated", effects)
        }
    }
}

pub fn check(steps: &[Step], runs: &[Run]) -> Checked {
    let mut checked = Checked { sagas: runs.len(), ..Checked::default() };
    for run in runs {
        checked.steps += run.effects.len();
        let (status, effects) = expected(steps, run.refused);
        match run.status.as_deref() {
            Some("completed") => checked.completed += 1,
            Some("compensated") => checked.compensated += 1,
            _ => {}
        }
        if run.status.as_deref() != Some(status) {
            let kind = match run.status.as_deref() {
                Some("completed" | "compensated") => Kind::SagaSteps,
                _ => Kind::SagaUnfinished,
            };
            checked.anomalies.push(Anomaly::new(
                kind,
                format!(
                    "saga {}: {:?} at the end, expected {status}; its steps did {:?}",
                    run.id, run.status, run.effects
                ),
            ));
        } else if run.effects != effects {
            checked.anomalies.push(Anomaly::new(
                Kind::SagaSteps,
                format!("saga {} ({status}): its steps did {:?}, expected {effects:?}", run.id, run.effects),
            ));
        }
    }
    checked
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steps() -> Vec<Step> {
        let step = |action: &str, compensation: Option<&str>| Step {
            action: action.into(),
            compensation: compensation.map(str::to_owned),
        };
        vec![step("a", Some("undo-a")), step("b", Some("undo-b")), step("c", None), step("d", None)]
    }

    fn run(refused: Option<usize>, status: &str, effects: &[&str]) -> Run {
        Run {
            id: "s".into(),
            refused,
            status: Some(status.into()),
            effects: effects.iter().map(|e| e.to_string()).collect(),
        }
    }

    /// A completed saga did each step once; a compensated one undid what it did, in
    /// reverse; anything else is an anomaly, and so is a saga that did not end.
    #[test]
    fn each_step_once_and_compensations_in_reverse() {
        let kinds =
            |runs: &[Run]| -> Vec<Kind> { check(&steps(), runs).anomalies.iter().map(|a| a.kind).collect() };
        assert_eq!(kinds(&[run(None, "completed", &["a", "b", "c", "d"])]), []);
        assert_eq!(kinds(&[run(Some(2), "compensated", &["a", "b", "undo-b", "undo-a"])]), []);
        assert_eq!(kinds(&[run(Some(0), "compensated", &[])]), []);
        assert_eq!(kinds(&[run(None, "completed", &["a", "b", "b", "c", "d"])]), [Kind::SagaSteps]);
        assert_eq!(kinds(&[run(Some(2), "compensated", &["a", "b", "undo-a", "undo-b"])]), [Kind::SagaSteps]);
        assert_eq!(kinds(&[run(None, "compensated", &["a"])]), [Kind::SagaSteps]);
        assert_eq!(kinds(&[run(None, "running", &["a"])]), [Kind::SagaUnfinished]);
    }
}
