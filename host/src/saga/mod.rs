//! Sagas: multi-service operations declared as steps with compensations.
//!
//! - `definition.rs`: the TOML definitions and their checks against the services.
//! - `machine.rs`: the pure state machine, `apply(state, event) -> actions`.
//! - `driver.rs`: performs the actions, one driver per saga, each transition committed
//!   with the step invocation that caused it.
//! - `catalog.rs`: the engine's definitions, loaded and reloaded from their directory,
//!   and the versions running sagas still use.
//! - `verify.rs`: `wasaga saga verify`, the machine and the driver's calls under every
//!   single and pairwise fault.
//! - [`SagaEngine`] (here): starts sagas, resumes the unfinished ones after a restart,
//!   answers queries, waits for outcomes, and retries stuck sagas.

mod catalog;
pub mod definition;
mod driver;
pub mod machine;
pub mod verify;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use tokio::sync::{Semaphore, watch};

pub use definition::{DefinitionError, RetryPolicy, SagaDef, StepDef};
pub use machine::{Happened, HistoryEntry, OperatorAction, OperatorNote, SagaState, StepState, StepStatus};

use crate::alert::Alerter;
use crate::clock::Clock;
use crate::invoke::Invoker;
use crate::store::{Commit, PAGE_BYTES, SagaChange, SagaRow, SagaStatus, Store, StoreError};
use driver::Run;
use machine::{Event, apply, resume};

/// How many sagas one claim takes over (more go in further claims).
const CLAIM_PAGE: usize = 500;

/// How often a wait for a saga that no driver here drives reads it again.
const LOOK_ELSEWHERE: Duration = Duration::from_millis(250);

/// A saga's id: a UUID v7, so that ids sort by creation time.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SagaId(String);

impl SagaId {
    fn new() -> Self {
        SagaId(uuid::Uuid::now_v7().to_string())
    }
}

impl fmt::Display for SagaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a saga request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SagaError {
    #[error("no saga definition `{0}` is loaded")]
    UnknownDefinition(String),
    #[error("no saga `{0}`")]
    NotFound(String),
    #[error("a saga's input must be a JSON object")]
    InputNotObject,
    #[error(
        "idempotency key `{key}` already started saga {id} with a different input; use a new key for a new saga"
    )]
    KeyReused { key: String, id: String },
    #[error("saga {0} is being driven right now; retry in a moment")]
    Busy(String),
    #[error("saga {id} is {status}, not stuck: only a stuck saga can be retried, compensated or resolved")]
    NotStuck { id: String, status: String },
    #[error(
        "saga {id} is past its pivot `{pivot}`, which committed: it can only go forward (retry or resolve)"
    )]
    PastThePivot { id: String, pivot: String },
    #[error("saga {id} is stuck on step `{stuck}`, not `{asked}`: only the stuck step can be resolved")]
    NotTheStuckStep { id: String, stuck: String, asked: String },
    #[error("the definition saga {id} started with (a version of `{name}`) is not in the store")]
    DefinitionGone { id: String, name: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A saga as stored, with its state decoded.
#[derive(Debug, Clone)]
pub struct SagaRecord {
    pub row: SagaRow,
    pub state: SagaState,
    pub def: Option<Arc<SagaDef>>,
}

/// Runs sagas. Cheap to clone.
#[derive(Clone)]
pub struct SagaEngine {
    inner: Arc<EngineInner>,
}

impl fmt::Debug for SagaEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SagaEngine").finish_non_exhaustive()
    }
}

pub(crate) struct EngineInner {
    invoker: Invoker,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    /// The definition of each name that new sagas use.
    definitions: RwLock<HashMap<String, Arc<SagaDef>>>,
    /// Every definition version seen, by digest: the one a saga started with drives it
    /// to its end, whatever happens to its file. Also kept in the store, and read from
    /// there after a restart.
    versions: RwLock<HashMap<String, Arc<SagaDef>>>,
    /// Sagas with a driver in this process: one driver per saga.
    running: Mutex<HashSet<SagaId>>,
    /// Woken when a saga finishes or gets stuck.
    waiters: Mutex<HashMap<SagaId, watch::Sender<()>>>,
    /// Bounds the drivers running at once.
    permits: Arc<Semaphore>,
    alerter: Alerter,
    /// This host's id: the owner recorded on the sagas it drives (see `cluster.rs`).
    host: String,
}

impl EngineInner {
    fn notify(&self, id: &SagaId) {
        if let Some(waiters) = self.waiters.lock().expect("waiters mutex poisoned").remove(id) {
            let _ = waiters.send(());
        }
    }
}

impl SagaEngine {
    /// `max_running`: how many sagas are driven at once; more wait their turn. `host`:
    /// this host's id, recorded as the owner of the sagas it drives.
    pub fn new(
        invoker: Invoker,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        max_running: usize,
        alerter: Alerter,
        host: String,
    ) -> Self {
        SagaEngine {
            inner: Arc::new(EngineInner {
                invoker,
                store,
                clock,
                definitions: RwLock::default(),
                versions: RwLock::default(),
                running: Mutex::default(),
                waiters: Mutex::default(),
                permits: Arc::new(Semaphore::new(max_running.max(1))),
                alerter,
                host,
            }),
        }
    }

    /// Running, compensating and stuck sagas.
    async fn unfinished_rows(&self) -> Result<Vec<SagaRow>, SagaError> {
        let mut rows = self.inner.store.unfinished_sagas().await?;
        rows.extend(
            self.inner.store.sagas(Some(SagaStatus::Stuck), None, 10_000, false, usize::MAX).await?.sagas,
        );
        Ok(rows)
    }

    /// Starts saga `name` with `input`, once per idempotency key: the same key gives
    /// the same saga (`false`: it existed already).
    pub async fn start(&self, name: &str, key: &str, input: Value) -> Result<(SagaRecord, bool), SagaError> {
        self.start_traced(name, key, input, None).await
    }

    /// [`SagaEngine::start`], its steps' spans children of `trace` (`trace.rs`).
    pub async fn start_traced(
        &self,
        name: &str,
        key: &str,
        input: Value,
        trace: Option<crate::trace::TraceContext>,
    ) -> Result<(SagaRecord, bool), SagaError> {
        let def = self.definition(name).ok_or_else(|| SagaError::UnknownDefinition(name.into()))?;
        let Value::Object(input) = input else { return Err(SagaError::InputNotObject) };
        let bytes = serde_json::to_vec(&input).expect("JSON values serialise");
        let fingerprint: [u8; 32] = Sha256::digest(&bytes).into();
        // No look-up of the key first: the store refuses a second saga of the same
        // name and key, and a repeat (rare) is answered from the first then.
        let id = SagaId::new();
        let at = self.inner.clock.now_ms();
        let mut state = SagaState::new(&def);
        state.traceparent = trace.map(|t| t.header());
        let actions = apply(&def, &mut state, Event::Started { at });
        let row = SagaRow {
            id: id.to_string(),
            name: name.into(),
            status: state.status,
            input: bytes,
            state: serde_json::to_string(&state).expect("the saga state serialises"),
            version: 1,
            key: key.into(),
            fingerprint,
            created_at: at,
            updated_at: at,
            owner: Some(self.inner.host.clone()),
        };
        let commit = Commit { saga: Some(SagaChange::Create(row.clone())), ..Commit::default() };
        match self.inner.invoker.commit(commit).await {
            Ok(()) => {}
            // The key started a saga before (or a concurrent start won): that saga
            // is the one.
            Err(StoreError::Duplicate(_)) => {
                let existing = self.existing(name, key, &fingerprint).await?;
                return existing.map(|e| (e, false)).ok_or_else(|| SagaError::NotFound(key.into()));
            }
            Err(error) => return Err(error.into()),
        }
        tracing::debug!(saga = %id, name, "saga started");
        let run = Run { def: def.clone(), id, input, state: state.clone(), version: 1, started_at: at };
        self.spawn(run, actions);
        Ok((SagaRecord { row, state, def: Some(def) }, true))
    }

    async fn existing(
        &self,
        name: &str,
        key: &str,
        fingerprint: &[u8; 32],
    ) -> Result<Option<SagaRecord>, SagaError> {
        let Some(row) = self.inner.store.saga_by_key(name, key).await? else { return Ok(None) };
        if &row.fingerprint != fingerprint {
            return Err(SagaError::KeyReused { key: key.into(), id: row.id });
        }
        Ok(Some(self.decode(row).await?))
    }

    /// The saga with this id.
    pub async fn get(&self, id: &str) -> Result<SagaRecord, SagaError> {
        let row = self.inner.store.saga(id).await?.ok_or_else(|| SagaError::NotFound(id.into()))?;
        self.decode(row).await
    }

    /// Sagas in creation order (or newest first), of one status if given, after the
    /// id `after` in that order: a page of at most `limit` and [`PAGE_BYTES`] of
    /// inputs and states, and whether more may follow.
    pub async fn list(
        &self,
        status: Option<SagaStatus>,
        after: Option<&str>,
        limit: usize,
        newest_first: bool,
    ) -> Result<(Vec<SagaRecord>, bool), SagaError> {
        let page = self.inner.store.sagas(status, after, limit, newest_first, PAGE_BYTES).await?;
        Ok((self.decode_all(page.sagas).await?, page.more))
    }

    /// Sagas an operator may be looking for by `text` (see [`Store::search_sagas`]),
    /// newest first.
    pub async fn search(&self, text: &str, limit: usize) -> Result<Vec<SagaRecord>, SagaError> {
        let rows = self.inner.store.search_sagas(text, limit).await?;
        self.decode_all(rows).await
    }

    /// How many sagas are in each status.
    pub async fn counts(&self) -> Result<Vec<(SagaStatus, u64)>, SagaError> {
        Ok(self.inner.store.saga_counts().await?)
    }

    /// Resumes a stuck saga: its stuck call is made again, under a new key.
    pub async fn retry(&self, id: &str, by: OperatorNote) -> Result<SagaRecord, SagaError> {
        self.operate(id, |_, _, at| Ok(Event::RetryRequested { at, by })).await
    }

    /// Undoes what a stuck saga did, while its pivot has not committed.
    pub async fn compensate(&self, id: &str, by: OperatorNote) -> Result<SagaRecord, SagaError> {
        self.operate(id, |def, state, at| {
            if state.past_the_pivot(def) {
                let pivot = def.steps.get(def.pivot).map(|s| s.name.clone()).unwrap_or_default();
                return Err(SagaError::PastThePivot { id: id.into(), pivot });
            }
            Ok(Event::CompensateRequested { at, by })
        })
        .await
    }

    /// Marks a stuck saga's stuck step done with `output` (a compensation: compensated),
    /// as an operator who did its work by hand; the saga goes on from there. `step`, if
    /// given, must name the stuck step.
    pub async fn resolve(
        &self,
        id: &str,
        step: Option<&str>,
        output: Value,
        by: OperatorNote,
    ) -> Result<SagaRecord, SagaError> {
        self.operate(id, |def, state, at| {
            let stuck = state
                .stuck_step()
                .ok_or_else(|| SagaError::NotStuck { id: id.into(), status: state.status.as_str().into() })?;
            // A state whose steps are not its definition's (corrupt, or from before
            // definitions had digests) has no step to resolve.
            let name = &def
                .steps
                .get(stuck)
                .ok_or_else(|| SagaError::DefinitionGone { id: id.into(), name: def.name.clone() })?
                .name;
            if let Some(asked) = step.filter(|asked| asked != name) {
                return Err(SagaError::NotTheStuckStep {
                    id: id.into(),
                    stuck: name.clone(),
                    asked: asked.into(),
                });
            }
            Ok(Event::Resolved { step: stuck, output, at, by })
        })
        .await
    }

    /// An operator's action on a stuck saga: `event` decides it from the definition and
    /// the state (or refuses); the transition is committed, then a driver goes on.
    async fn operate(
        &self,
        id: &str,
        event: impl FnOnce(&SagaDef, &SagaState, i64) -> Result<Event, SagaError>,
    ) -> Result<SagaRecord, SagaError> {
        let saga_id = SagaId(id.to_owned());
        // Claimed before anything is written: a driver still finishing (or another
        // operator action) answers 409 rather than leaving the saga without a driver.
        let Some(claim) = self.claim(&saga_id) else {
            return Err(SagaError::Busy(id.into()));
        };
        let record = self.get(id).await?;
        if record.state.status != SagaStatus::Stuck {
            return Err(SagaError::NotStuck { id: id.into(), status: record.row.status.as_str().into() });
        }
        let def = record
            .def
            .clone()
            .ok_or_else(|| SagaError::DefinitionGone { id: id.into(), name: record.row.name.clone() })?;
        let mut state = record.state.clone();
        let at = self.inner.clock.now_ms();
        let event = event(&def, &state, at)?;
        let actions = apply(&def, &mut state, event);
        // The saga becomes this host's, whichever drove it to where it stuck.
        let update = driver::update(&self.inner, &saga_id, record.row.version, &state, at);
        driver::commit(&self.inner, update).await?;
        if let Some(HistoryEntry { what: Happened::Operator { action, by, .. }, .. }) = state.history.last() {
            let by = crate::text::printable(by);
            tracing::info!(saga = %saga_id, ?action, %by, "operator action on a stuck saga");
        }
        let input = input_object(&record.row.input);
        let run = Run {
            def,
            id: saga_id,
            input,
            state,
            version: record.row.version + 1,
            started_at: record.row.created_at,
        };
        self.drive_claimed(claim, Start::Run(run, actions));
        self.get(id).await
    }

    /// Waits until the saga is finished or stuck, or `timeout` passes; returns it.
    pub async fn wait(&self, id: &str, timeout: Duration) -> Result<SagaRecord, SagaError> {
        let until = Instant::now() + timeout;
        let saga_id = SagaId(id.to_owned());
        loop {
            let mut woken = {
                let mut waiters = self.inner.waiters.lock().expect("waiters mutex poisoned");
                let receiver =
                    waiters.entry(saga_id.clone()).or_insert_with(|| watch::channel(()).0).subscribe();
                Waiting { engine: &self.inner, id: &saga_id, receiver: Some(receiver) }
            };
            let left = until.saturating_duration_since(Instant::now());
            // A saga with a driver here is not settled, and its driver wakes us when it
            // ends (it leaves `running` before it notifies): no need to read it now.
            let driven = self.inner.running.lock().expect("running mutex poisoned").contains(&saga_id);
            if driven && !left.is_zero() {
                let _ = tokio::time::timeout(left, woken.changed()).await;
                continue;
            }
            drop(woken);
            let record = self.get(id).await;
            let settled = record
                .as_ref()
                .map_or(true, |r| r.state.status.is_terminal() || r.state.status == SagaStatus::Stuck);
            let left = until.saturating_duration_since(Instant::now());
            if settled || left.is_zero() {
                return record;
            }
            // Not driven here: another host may be driving it, and nobody here would say
            // when it ends. Read it again now and then.
            let mut woken = {
                let mut waiters = self.inner.waiters.lock().expect("waiters mutex poisoned");
                let receiver =
                    waiters.entry(saga_id.clone()).or_insert_with(|| watch::channel(()).0).subscribe();
                Waiting { engine: &self.inner, id: &saga_id, receiver: Some(receiver) }
            };
            let _ = tokio::time::timeout(left.min(LOOK_ELSEWHERE), woken.changed()).await;
        }
    }

    /// Ids of the sagas not yet finished (running, compensating or stuck) whose
    /// definition (the version each started with) uses `service`.
    pub async fn unfinished_using(&self, service: &str) -> Result<Vec<String>, SagaError> {
        let mut ids = Vec::new();
        for row in self.unfinished_rows().await? {
            let record = self.decode(row).await?;
            if record.def.is_some_and(|d| d.steps.iter().any(|s| s.service == service)) {
                ids.push(record.row.id);
            }
        }
        Ok(ids)
    }

    /// Takes over the running and compensating sagas that no live host drives (all the
    /// unfinished ones of the process before, after a restart on SQLite) and starts a
    /// driver for each; returns how many.
    pub async fn take_over(&self) -> Result<usize, SagaError> {
        // Every page is claimed before any driver starts: drivers started page by page
        // competed with the claims for the CPU and the database, and the last of
        // 10,000 sagas was claimed 5.9 s after its host's lease ended (0.5 s now).
        // What was claimed is driven even if a later page fails.
        let mut claimed = Vec::new();
        let failed = loop {
            let now = self.inner.clock.now_ms();
            match self.inner.store.claim_sagas(&self.inner.host, now, CLAIM_PAGE).await {
                Ok(rows) => {
                    let last_page = rows.len() < CLAIM_PAGE;
                    claimed.extend(rows);
                    if last_page {
                        break None;
                    }
                }
                Err(error) => break Some(error),
            }
        };
        let resumed = self.resume(claimed).await?;
        if resumed > 0 {
            tracing::info!(sagas = resumed, "took over unfinished sagas");
        }
        match failed {
            Some(error) => Err(error.into()),
            None => Ok(resumed),
        }
    }

    /// Starts a driver for each of `rows` (sagas this host owns now); returns how many.
    /// One that cannot be read or driven does not keep the others from theirs: its
    /// supervisor says so and tries again (before, one unreadable saga failed the whole
    /// takeover, and the sagas claimed with it were owned by this host and driven by
    /// none).
    async fn resume(&self, rows: Vec<SagaRow>) -> Result<usize, SagaError> {
        let mut resumed = 0;
        for row in rows {
            let id = SagaId(row.id.clone());
            if let Some(claim) = self.claim(&id) {
                self.drive_claimed(claim, Start::Stored(row));
                resumed += 1;
            }
        }
        Ok(resumed)
    }

    fn spawn(&self, run: Run, actions: Vec<machine::Action>) {
        if let Some(claim) = self.claim(&run.id) {
            self.drive_claimed(claim, Start::Run(run, actions));
        }
    }

    /// Takes the saga's driver slot in this process, if it is free.
    fn claim(&self, id: &SagaId) -> Option<Driving> {
        let claimed = self.inner.running.lock().expect("running mutex poisoned").insert(id.clone());
        claimed.then(|| Driving { engine: self.inner.clone(), id: id.clone() })
    }

    fn drive_claimed(&self, claim: Driving, start: Start) {
        let engine = self.clone();
        tokio::spawn(async move { engine.supervise(claim, start).await });
    }

    /// Drives a saga while it needs a driver here: until it finishes, gets stuck, or
    /// another host owns it. A driver that stops on an error it does not wait out (the
    /// store failing while it reads the saga back after a conflict, a state it cannot
    /// read, a definition not found) or that panics is started again from the stored
    /// saga after a second, then at most every 30 s, making the call in progress again
    /// with its key (so its effect happens once); the first failure raises an alert
    /// (`saga_driver_failed`). Before, such a saga stayed `running` with this live host
    /// as its owner: no other host took it over, an operator could not act on a saga
    /// that was not stuck, and nothing said so.
    async fn supervise(&self, claim: Driving, start: Start) {
        let id = claim.id.clone();
        let mut next = Some(start);
        let mut failures: u32 = 0;
        loop {
            let drove = async {
                let (run, actions) = match next.take() {
                    Some(Start::Run(run, actions)) => (run, actions),
                    Some(Start::Stored(row)) => match self.to_drive(row).await? {
                        Some(driving) => driving,
                        None => return Ok(()),
                    },
                    None => match self.inner.store.saga(&id.to_string()).await? {
                        Some(row) => match self.to_drive(row).await? {
                            Some(driving) => driving,
                            None => return Ok(()),
                        },
                        None => return Ok(()),
                    },
                };
                match tokio::spawn(driver::drive(self.inner.clone(), run, actions)).await {
                    Ok(result) => Ok(result?),
                    // The runtime is shutting down: nothing to drive any more.
                    Err(failed) if failed.is_cancelled() => Ok(()),
                    Err(failed) => Err(SagaError::Store(StoreError::Unavailable(panic_message(failed)))),
                }
            };
            let error = match drove.await {
                Ok(()) => return drop(claim),
                Err(error) => error,
            };
            failures += 1;
            let wait = Duration::from_secs(1 << (failures - 1).min(5)).min(Duration::from_secs(30));
            if failures == 1 {
                self.inner.alerter.raise(crate::alert::Alert {
                    kind: "saga_driver_failed",
                    saga_id: id.to_string(),
                    saga: String::new(),
                    step: None,
                    reason: format!("its driver stopped ({error}); it is started again from the stored saga"),
                    at: self.inner.clock.now_ms(),
                });
            }
            tracing::error!(saga = %id, failures, "the saga's driver stopped ({error}); starting it again in {wait:?}");
            self.inner.clock.sleep(wait).await;
        }
    }

    /// What to drive of a stored saga, from its state: `None` when it needs no driver
    /// here (finished, stuck, or another host's).
    async fn to_drive(&self, row: SagaRow) -> Result<Option<(Run, Vec<machine::Action>)>, SagaError> {
        if row.owner.as_ref().is_some_and(|owner| *owner != self.inner.host) {
            return Ok(None);
        }
        let record = self.decode(row).await?;
        if record.state.status.is_terminal() || record.state.status == SagaStatus::Stuck {
            return Ok(None);
        }
        let Some(def) = record.def else {
            return Err(SagaError::DefinitionGone { id: record.row.id, name: record.row.name });
        };
        let actions = resume(&record.state);
        let run = Run {
            def,
            id: SagaId(record.row.id.clone()),
            input: input_object(&record.row.input),
            state: record.state,
            version: record.row.version,
            started_at: record.row.created_at,
        };
        Ok(Some((run, actions)))
    }

    async fn decode_all(&self, rows: Vec<SagaRow>) -> Result<Vec<SagaRecord>, SagaError> {
        let mut records = Vec::with_capacity(rows.len());
        for row in rows {
            records.push(self.decode(row).await?);
        }
        Ok(records)
    }

    async fn decode(&self, row: SagaRow) -> Result<SagaRecord, SagaError> {
        let state: SagaState = serde_json::from_str(&row.state)
            .map_err(|e| StoreError::Unavailable(format!("saga {} has an unreadable state: {e}", row.id)))?;
        // A saga is only ever driven (and shown) with the definition it started with.
        let def = self.version(&row.name, &state.definition).await?;
        Ok(SagaRecord { row, state, def })
    }
}

/// A saga's driver slot. Dropping it (when the driver ends, even by a panic) frees the
/// saga, then wakes its waiters: a retry they make at once finds no driver.
struct Driving {
    engine: Arc<EngineInner>,
    id: SagaId,
}

impl Drop for Driving {
    fn drop(&mut self) {
        self.engine.running.lock().expect("running mutex poisoned").remove(&self.id);
        self.engine.notify(&self.id);
    }
}

/// One waiter of a saga's end. Dropped, however the wait ends (the saga settled, the
/// time ran out, the client went away and its request was dropped), it takes the
/// saga's entry with it when no one else waits: entries of sagas another host drove,
/// which no local driver removes, stayed for good before.
struct Waiting<'a> {
    engine: &'a EngineInner,
    id: &'a SagaId,
    receiver: Option<watch::Receiver<()>>,
}

impl Waiting<'_> {
    async fn changed(&mut self) {
        if let Some(receiver) = &mut self.receiver {
            let _ = receiver.changed().await;
        }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        drop(self.receiver.take());
        let mut waiters = self.engine.waiters.lock().expect("waiters mutex poisoned");
        if waiters.get(self.id).is_some_and(|w| w.receiver_count() == 0) {
            waiters.remove(self.id);
        }
    }
}

/// How a supervised driver starts: from a state in hand, or from a stored saga.
enum Start {
    Run(Run, Vec<machine::Action>),
    Stored(SagaRow),
}

/// What a task that panicked said.
fn panic_message(failed: tokio::task::JoinError) -> String {
    let Ok(payload) = failed.try_into_panic() else { return "the driver was cancelled".into() };
    let said = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into());
    format!("the driver panicked: {said}")
}

fn input_object(bytes: &[u8]) -> Map<String, Value> {
    serde_json::from_slice(bytes).unwrap_or_default()
}

#[cfg(test)]
mod tests;
