//! Saga definitions: TOML files, checked against the services that are loaded.
//!
//! ```toml
//! name = "place-order"
//! [[step]]
//! name = "reserve-stock"
//! service = "inventory"
//! action = "reserve"
//! compensation = "release"
//! retry = { max_attempts = 5, initial_backoff = "100ms", max_backoff = "5s" }
//! ```
//!
//! The pivot is the first step without a compensation: the last step that may still
//! fail. Steps before it are compensable; when a step up to the pivot fails, the
//! steps before it are undone. Steps after it must have no compensation and are
//! retried until they succeed (their retry policy then only bounds the backoff); a
//! refusal there makes the saga stuck, for an operator.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::config::parse_duration;
use crate::service::Manifest;

/// How a step is retried after a transient failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all (the first included) before a compensable step counts as failed,
    /// or a compensation as stuck.
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// The longest wait before attempt `attempt + 1`: exponential from the initial
    /// backoff, capped. The driver waits a random time up to it (full jitter).
    pub fn backoff_ceiling(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(20));
        self.initial_backoff.saturating_mul(factor).min(self.max_backoff)
    }
}

/// One step of a saga.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepDef {
    pub name: String,
    pub service: String,
    pub action: String,
    pub compensation: Option<String>,
    pub retry: RetryPolicy,
}

impl StepDef {
    /// The operation this step calls that `manifest` (its service's) lacks: the action,
    /// else the compensation (`true`). The one place where "a step's service has the
    /// operations it calls" is checked: when a definition loads, and when a plugin
    /// version that sagas use is about to serve.
    pub fn missing_operation(&self, manifest: &Manifest) -> Option<(&str, bool)> {
        let lacks = |name: &str| manifest.operation(name).is_none();
        if lacks(&self.action) {
            return Some((&self.action, false));
        }
        self.compensation.as_deref().filter(|undo| lacks(undo)).map(|undo| (undo, true))
    }
}

/// A validated saga definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SagaDef {
    pub name: String,
    pub steps: Vec<StepDef>,
    /// Index of the pivot: the first step without a compensation (`steps.len()` if
    /// every step has one).
    pub pivot: usize,
    /// The file it came from.
    pub source: PathBuf,
    /// sha256 of what drives a saga: its name and its steps (names, services,
    /// operations, retry policies). A saga records the digest of the definition it
    /// started with, and is never driven by a different one: an edited retry policy is
    /// a new version, not a change under the sagas already running.
    pub digest: String,
    /// The TOML it was parsed from, kept in the store for the sagas that use it.
    pub text: String,
    /// Records a compensated saga may leave behind, its audit trail (a key, or a
    /// prefix ending in `*`, in any service: `order/*` keeps a cancelled order):
    /// `wasaga saga verify` does not count them as left undone.
    pub audit: Vec<String>,
    /// The user's invariants, checked by `wasaga saga verify` at the end of every
    /// schedule: operations (service, operation) that answer a JSON array of
    /// violations, empty when all is well.
    pub invariants: Vec<(String, String)>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SagaFile {
    name: String,
    #[serde(default)]
    audit: Vec<String>,
    #[serde(default)]
    invariant: Vec<InvariantFile>,
    #[serde(default)]
    step: Vec<StepFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InvariantFile {
    service: String,
    operation: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StepFile {
    name: String,
    service: String,
    action: String,
    compensation: Option<String>,
    retry: Option<RetryFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetryFile {
    max_attempts: Option<u32>,
    initial_backoff: Option<String>,
    max_backoff: Option<String>,
}

/// Why a definition is refused: the file, the step (if one) and the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{}: {problem}", file.display(), step.as_ref().map(|s| format!(", step `{s}`")).unwrap_or_default())]
pub struct DefinitionError {
    pub file: PathBuf,
    pub step: Option<String>,
    pub problem: String,
}

impl SagaDef {
    /// Parses and checks one definition. `manifest` finds a loaded service's manifest.
    pub fn parse<'m>(
        file: &Path,
        text: &str,
        manifest: impl Fn(&str) -> Option<&'m Manifest>,
    ) -> Result<SagaDef, DefinitionError> {
        Self::parse_with(file, text, Some(&manifest))
    }

    /// Parses a definition kept in the store for the sagas that started with it. Its
    /// services are not checked against the ones loaded now: they were when it was
    /// loaded, and a step whose service changed since fails (transiently) when called.
    /// A saga of a wasaga from before the digest covered the name and the retry
    /// policies records the digest of its steps alone: that one is accepted too.
    pub fn parse_stored(digest: &str, text: &str) -> Result<SagaDef, DefinitionError> {
        let source = PathBuf::from(format!("stored definition {digest}"));
        let mut def = Self::parse_with(&source, text, None::<&fn(&str) -> Option<&'static Manifest>>)?;
        if digest == steps_digest(&def.steps) {
            def.digest = digest.to_owned();
        }
        Ok(def)
    }

    fn parse_with<'m>(
        file: &Path,
        text: &str,
        manifest: Option<&impl Fn(&str) -> Option<&'m Manifest>>,
    ) -> Result<SagaDef, DefinitionError> {
        let error = |step: Option<&str>, problem: String| DefinitionError {
            file: file.to_owned(),
            step: step.map(Into::into),
            problem,
        };
        let parsed: SagaFile = toml::from_str(text).map_err(|e| error(None, e.to_string()))?;
        crate::service::validate_service_name(&parsed.name).map_err(|_| {
            error(None, format!("`{}` is not a valid saga name (a-z, 0-9, `-`)", parsed.name))
        })?;
        if parsed.step.is_empty() {
            return Err(error(None, "a saga needs at least one [[step]]".into()));
        }
        let mut names = HashSet::new();
        let mut steps = Vec::new();
        let mut pivot = None;
        for (i, step) in parsed.step.into_iter().enumerate() {
            let at = Some(step.name.as_str());
            if !names.insert(step.name.clone()) {
                return Err(error(at, "a step of this name comes earlier; step names must be unique".into()));
            }
            let retry = parse_retry(step.retry).map_err(|problem| error(at, problem))?;
            let step = StepDef {
                name: step.name,
                service: step.service,
                action: step.action,
                compensation: step.compensation,
                retry,
            };
            let at = Some(step.name.as_str());
            if let Some(manifest) = manifest {
                let Some(manifest) = manifest(&step.service) else {
                    return Err(error(at, format!("no service `{}` is loaded", step.service)));
                };
                if let Some((operation, undo)) = step.missing_operation(manifest) {
                    let which = if undo { " (the compensation)" } else { "" };
                    let problem = format!("service `{}` has no operation `{operation}`{which}", step.service);
                    return Err(error(at, problem));
                }
            }
            match (&step.compensation, pivot) {
                (Some(_), Some(pivot_index)) => {
                    let pivot_name: &StepDef = &steps[pivot_index];
                    return Err(error(
                        at,
                        format!(
                            "a compensable step after the pivot `{}`: steps after the first step \
                             without a compensation only go forward and cannot have one",
                            pivot_name.name
                        ),
                    ));
                }
                (None, None) => pivot = Some(i),
                _ => {}
            }
            steps.push(step);
        }
        let pivot = pivot.unwrap_or(steps.len());
        let digest = definition_digest(&parsed.name, &steps);
        let text = text.to_owned();
        let mut invariants = Vec::new();
        for invariant in parsed.invariant {
            if let Some(manifest) = manifest {
                let known = manifest(&invariant.service).and_then(|m| m.operation(&invariant.operation));
                if known.is_none() {
                    let problem = format!(
                        "the invariant `{}.{}`: no such service and operation is loaded",
                        invariant.service, invariant.operation
                    );
                    return Err(error(None, problem));
                }
            }
            invariants.push((invariant.service, invariant.operation));
        }
        let audit = parsed.audit;
        Ok(SagaDef {
            name: parsed.name,
            steps,
            pivot,
            source: file.to_owned(),
            digest,
            text,
            audit,
            invariants,
        })
    }

    /// Whether a step can be undone (it comes before the pivot).
    pub fn compensable(&self, step: usize) -> bool {
        step < self.pivot
    }
}

/// The digest of a definition: its name, and each step with its retry policy. (It was
/// the steps' alone, [`steps_digest`]: two definitions of the same steps shared one
/// stored row, and an edited retry policy changed the running sagas' after a restart.)
fn definition_digest(name: &str, steps: &[StepDef]) -> String {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    hash.update(b"wasaga saga definition 2\0");
    hash.update(name.as_bytes());
    hash.update([0]);
    for step in steps {
        for part in [&step.name, &step.service, &step.action, step.compensation.as_deref().unwrap_or("")] {
            hash.update(part.as_bytes());
            hash.update([0]);
        }
        let retry = &step.retry;
        for n in [
            u64::from(retry.max_attempts),
            retry.initial_backoff.as_millis() as u64,
            retry.max_backoff.as_millis() as u64,
        ] {
            hash.update(n.to_le_bytes());
        }
    }
    hex::encode(hash.finalize())
}

/// The digest older wasagas recorded: the steps' names, services and operations.
fn steps_digest(steps: &[StepDef]) -> String {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    for step in steps {
        for part in [&step.name, &step.service, &step.action, step.compensation.as_deref().unwrap_or("")] {
            hash.update(part.as_bytes());
            hash.update([0]);
        }
    }
    hex::encode(hash.finalize())
}

fn parse_retry(retry: Option<RetryFile>) -> Result<RetryPolicy, String> {
    let mut policy = RetryPolicy::default();
    let Some(retry) = retry else { return Ok(policy) };
    if let Some(max) = retry.max_attempts {
        if max == 0 {
            return Err("retry.max_attempts must be at least 1".into());
        }
        policy.max_attempts = max;
    }
    if let Some(text) = &retry.initial_backoff {
        policy.initial_backoff = parse_duration(text).map_err(|e| format!("retry.initial_backoff: {e}"))?;
    }
    if let Some(text) = &retry.max_backoff {
        policy.max_backoff = parse_duration(text).map_err(|e| format!("retry.max_backoff: {e}"))?;
    }
    if policy.max_backoff < policy.initial_backoff {
        return Err("retry.max_backoff is shorter than retry.initial_backoff".into());
    }
    Ok(policy)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::{OperationInfo, Visibility};

    fn manifests() -> Vec<Manifest> {
        let m = |name: &str, ops: &[&str]| Manifest {
            name: name.into(),
            operations: ops
                .iter()
                .map(|op| OperationInfo {
                    name: (*op).into(),
                    compensated_by: None,
                    description: String::new(),
                    visibility: Visibility::Public,
                })
                .collect(),
            subscriptions: vec![],
            destinations: vec![],
        };
        vec![m("inventory", &["reserve", "release"]), m("order", &["create", "cancel", "complete"])]
    }

    fn parse(text: &str) -> Result<SagaDef, DefinitionError> {
        let manifests = manifests();
        SagaDef::parse(Path::new("sagas/s.toml"), text, |name| manifests.iter().find(|m| m.name == name))
    }

    const GOOD: &str = r#"
        name = "s"
        [[step]]
        name = "create"
        service = "order"
        action = "create"
        compensation = "cancel"
        [[step]]
        name = "reserve"
        service = "inventory"
        action = "reserve"
        compensation = "release"
        retry = { max_attempts = 5, initial_backoff = "10ms", max_backoff = "1s" }
        [[step]]
        name = "complete"
        service = "order"
        action = "complete"
    "#;

    #[test]
    fn a_good_definition_finds_its_pivot_and_policies() {
        let def = parse(GOOD).unwrap();
        assert_eq!(def.pivot, 2);
        assert!(def.compensable(1) && !def.compensable(2));
        assert_eq!(def.steps[1].retry.max_attempts, 5);
        assert_eq!(def.steps[1].retry.backoff_ceiling(1), Duration::from_millis(10));
        assert_eq!(def.steps[1].retry.backoff_ceiling(3), Duration::from_millis(40));
        assert_eq!(def.steps[1].retry.backoff_ceiling(30), Duration::from_secs(1));
        assert_eq!(def.steps[0].retry, RetryPolicy::default());
    }

    /// `audit` and `[[invariant]]` (for `saga verify`) are read, an invariant checked
    /// against the loaded services, and neither changes the digest.
    #[test]
    fn audit_and_invariants_are_read_and_checked() {
        let with = format!(
            "audit = [\"order/*\"]\n{GOOD}\n[[invariant]]\nservice = \"order\"\noperation = \"complete\"\n"
        );
        let def = parse(&with).unwrap();
        assert_eq!(def.audit, ["order/*"]);
        assert_eq!(def.invariants, [("order".to_owned(), "complete".to_owned())]);
        assert_eq!(def.digest, parse(GOOD).unwrap().digest);
        let error = parse(&with.replace("operation = \"complete\"", "operation = \"audit\"")).unwrap_err();
        assert!(error.to_string().contains("the invariant `order.audit`"), "{error}");
    }

    /// The digest changes with the steps, their retry policies and the saga's name;
    /// a stored definition of an older wasaga is still found by the digest of its steps
    /// its sagas recorded.
    #[test]
    fn the_digest_changes_with_the_steps_their_retries_and_the_name() {
        let def = parse(GOOD).unwrap();
        for changed in [
            GOOD.replace("max_attempts = 5", "max_attempts = 7"),
            GOOD.replace("name = \"complete\"", "name = \"finish\""),
            GOOD.replacen("name = \"s\"", "name = \"s-2\"", 1),
        ] {
            assert_ne!(parse(&changed).unwrap().digest, def.digest, "{changed}");
        }
        assert_eq!(parse(&format!("# a comment\n{GOOD}")).unwrap().digest, def.digest);
        let legacy = steps_digest(&def.steps);
        assert_eq!(SagaDef::parse_stored(&legacy, &def.text).unwrap().digest, legacy);
    }

    /// A stored version parses without the services (they may have changed since), and
    /// keeps its digest; the rules of the definition itself still hold.
    #[test]
    fn a_stored_definition_parses_without_the_services() {
        let def = parse(GOOD).unwrap();
        let stored = SagaDef::parse_stored(&def.digest, &def.text).unwrap();
        assert_eq!((stored.digest, stored.pivot, stored.steps), (def.digest.clone(), def.pivot, def.steps));
        let unknown = GOOD.replace("service = \"inventory\"", "service = \"gone\"");
        assert!(SagaDef::parse_stored("x", &unknown).is_ok(), "services are not checked");
        let late = format!(
            "{GOOD}\n[[step]]\nname = \"late\"\nservice = \"order\"\naction = \"cancel\"\ncompensation = \"create\"\n"
        );
        let error = SagaDef::parse_stored(&def.digest, &late).unwrap_err().to_string();
        assert!(error.contains("stored definition") && error.contains("after the pivot"), "{error}");
    }

    #[test]
    fn each_broken_rule_is_named_with_file_and_step() {
        let cases = [
            (
                GOOD.replace("action = \"reserve\"", "action = \"hold\""),
                "step `reserve`: service `inventory` has no operation `hold`",
            ),
            (
                GOOD.replace("service = \"inventory\"", "service = \"stock\""),
                "step `reserve`: no service `stock` is loaded",
            ),
            (
                GOOD.replace("compensation = \"release\"", "compensation = \"unhold\""),
                "step `reserve`: service `inventory` has no operation `unhold` (the compensation)",
            ),
            (
                GOOD.replace("name = \"complete\"", "name = \"create\""),
                "step `create`: a step of this name comes earlier",
            ),
            (
                format!(
                    "{GOOD}\n[[step]]\nname = \"late\"\nservice = \"order\"\naction = \"cancel\"\ncompensation = \"create\"\n"
                ),
                "step `late`: a compensable step after the pivot `complete`",
            ),
            (
                GOOD.replace("max_attempts = 5", "max_attempts = 0"),
                "step `reserve`: retry.max_attempts must be at least 1",
            ),
            ("name = \"s\"\n".to_string(), "needs at least one [[step]]"),
            (GOOD.replace("action = \"create\"", "acton = \"create\""), "unknown field `acton`"),
        ];
        for (text, expected) in cases {
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.starts_with("sagas/s.toml"), "{err}");
            assert!(err.contains(expected), "expected {expected:?} in {err:?}");
        }
    }
}
