//! One idempotent, optimistic invocation of one plugin operation.
//!
//! 1. The key is claimed in this process, so that one key runs once at a time; a
//!    duplicate that arrives meanwhile waits for the first and gets its outcome.
//! 2. A stored outcome for (service, key) is replayed; a stored outcome of a different
//!    request (operation + input) refuses the key.
//! 3. The plugin runs on fresh reads (a snapshot, or what the backend keeps: see
//!    `Store::invocation_reads`); its reads, writes, events and outcome are
//!    committed together. When a read changed underneath, nothing is written and the
//!    plugin runs again (bounded, with jittered backoff). After a few conflicts the
//!    run becomes exclusive for its service, so that a hot record cannot starve it.
//!
//! `ok` and `rejected` outcomes are stored and replayed until they expire; a
//! rejection's writes and events are discarded (a refusal changes nothing). Transient
//! failures, traps and limit overruns store nothing: the key may be retried.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use sha2::{Digest, Sha256};
use tokio::sync::{RwLock, watch};

use crate::clock::now_ms;
use crate::metrics::{labels, metrics};
use crate::outbound::{Journal, Outbound};
use crate::runtime::{CallError, Outcome, Plugin, Registry};
use crate::service::{Failure, Invocation, PluginDigest, Visibility};
use crate::store::{
    ChangeSet, Commit, Conflict, DeliveryChange, IdempotencyKey, KeySpace, SagaChange, Snapshot, Store,
    StoreError, StoredOutcome, Transaction, TxLimits,
};
use crate::trace::{Kind, Span, TraceContext};

/// Settings of the invocation path.
#[derive(Debug, Clone, Copy)]
pub struct InvokeOptions {
    /// How long an outcome is kept and replayed.
    pub retention: Duration,
    /// How many times one invocation may run before a conflict is final.
    pub max_runs: u32,
    /// How long a duplicate waits for the first call of its key before giving up (409).
    pub in_flight_wait: Duration,
    pub tx_limits: TxLimits,
}

impl Default for InvokeOptions {
    fn default() -> Self {
        InvokeOptions {
            retention: Duration::from_secs(24 * 3600),
            max_runs: 20,
            in_flight_wait: Duration::from_secs(10),
            tx_limits: TxLimits::default(),
        }
    }
}

/// Who asks for an invocation. It decides which operations it may call (a client
/// only public ones) and where its idempotency key lives (the host's own calls keep
/// their keys apart from everything a client can send).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// A client over HTTP: public operations only.
    Client,
    /// An operator (the admin token), or the host acting as one (the demo's seed data):
    /// any operation, with keys in the clients' space.
    Operator,
    /// A saga step.
    Saga,
    /// An event's delivery to a subscriber.
    Delivery,
}

impl Caller {
    fn key_space(self) -> KeySpace {
        match self {
            Caller::Client | Caller::Operator => KeySpace::Client,
            Caller::Saga => KeySpace::Saga,
            Caller::Delivery => KeySpace::Event,
        }
    }

    fn may_call(self, visibility: Visibility) -> bool {
        visibility == Visibility::Public || self != Caller::Client
    }

    /// Whether a stored outcome of its key is looked for before running: for clients and
    /// operators, whose retries are what keys are for; not for the host's own steps and
    /// deliveries, whose keys are new but after a crash or a takeover.
    fn replays_first(self) -> bool {
        matches!(self, Caller::Client | Caller::Operator)
    }
}

/// A request to run one operation.
#[derive(Debug, Clone)]
pub struct Request {
    pub caller: Caller,
    pub service: String,
    pub operation: String,
    pub input: Vec<u8>,
    pub key: String,
    /// The chain the call belongs to (a saga's id, an event's chain, the client's
    /// `Correlation-Id`); [`Request::new`] makes up a fresh one.
    pub correlation_id: String,
    /// The attempt number the plugin sees on the first run (a saga step's retries
    /// count up from here); re-runs after a conflict add to it.
    pub attempt: u32,
    /// The span the call is part of (an HTTP request's, a saga step's, a delivery's):
    /// the parent of the invocation's span, whose context the events it publishes keep.
    pub trace: Option<TraceContext>,
}

impl Request {
    /// What identifies the call: its key, in its caller's key space.
    fn idempotency_key(&self) -> IdempotencyKey {
        IdempotencyKey {
            service: self.service.clone(),
            space: self.caller.key_space(),
            key: self.key.clone(),
        }
    }

    /// A request of one first attempt, in a chain of its own.
    pub fn new(caller: Caller, service: &str, operation: &str, input: Vec<u8>, key: String) -> Self {
        Request {
            caller,
            service: service.into(),
            operation: operation.into(),
            input,
            key,
            correlation_id: new_correlation_id(),
            attempt: 1,
            trace: None,
        }
    }
}

/// What an invocation produced, for what is committed with it.
#[derive(Debug, Clone, Copy)]
pub struct Produced<'a> {
    /// The output, or the rejection reason.
    pub result: &'a Result<Vec<u8>, String>,
    /// The plugin version that produced it.
    pub digest: &'a PluginDigest,
    /// The keys of the records it writes (none for a rejection).
    pub written: &'a [String],
}

/// What is committed together with an invocation's outcome, in the same transaction:
/// the saga transition it causes, the delivery it completes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attached {
    pub saga: Option<SagaChange>,
    pub deliveries: Vec<DeliveryChange>,
}

/// Computes what to commit with an invocation's outcome, from that outcome.
pub type Attach = Arc<dyn Fn(&Produced<'_>) -> Attached + Send + Sync>;

/// What an invocation answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invoked {
    /// The output, or the rejection reason.
    pub result: Result<Vec<u8>, String>,
    /// True when this is the stored outcome of an earlier call.
    pub replayed: bool,
    /// The plugin version that produced the outcome.
    pub digest: PluginDigest,
    /// The chain the call belongs to: the first call's, for a replay.
    pub correlation_id: String,
    /// Unix ms after which the key is forgotten.
    pub expires_at: i64,
    /// How many times the plugin ran for this call (0 for a replay).
    pub runs: u32,
    /// The keys of the records it wrote (not known for a replay: empty).
    pub written: Vec<String>,
}

/// Why there is no outcome. Nothing was stored: the same key may be retried.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvokeError {
    #[error("no service `{0}` is loaded")]
    UnknownService(String),
    #[error("service `{service}` has no operation `{operation}`")]
    UnknownOperation { service: String, operation: String },
    #[error(
        "operation `{operation}` of `{service}` is internal: only sagas, event deliveries and operators \
         (with the admin token) may call it"
    )]
    Internal { service: String, operation: String },
    #[error(
        "idempotency key `{key}` was already used for a different request ({operation} with other input); \
         use a new key for a new request"
    )]
    KeyReused { key: String, operation: String },
    #[error("a request with idempotency key `{key}` is still running; retry later")]
    InFlight { key: String },
    #[error("gave up after {runs} runs: the records kept changing underneath ({conflict})")]
    Conflict { runs: u32, conflict: Conflict },
    #[error("service `{service}` failed temporarily: {reason}")]
    Transient { service: String, reason: String },
    #[error(transparent)]
    Call(#[from] CallError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl InvokeError {
    /// Every instance of the plugin was busy: nothing ran, and nothing is wrong with
    /// the request. Sagas and deliveries wait and call again without spending an
    /// attempt; HTTP callers get 503 with `Retry-After`.
    pub fn is_busy(&self) -> bool {
        matches!(self, InvokeError::Call(CallError::Busy { .. }))
    }
}

/// Runs invocations. Cheap to clone.
#[derive(Clone)]
pub struct Invoker {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    store: Arc<dyn Store>,
    options: InvokeOptions,
    outbound: Outbound,
    /// Keys running in this process; a watcher learns when the key is released.
    running: Mutex<HashMap<IdempotencyKey, watch::Receiver<()>>>,
    /// Per service: optimistic runs share it, escalated runs take it alone.
    turns: Mutex<HashMap<String, Arc<RwLock<()>>>>,
}

/// Runs that conflict this many times run again alone for their service. Under heavy
/// contention on one record (16 clients reserving one SKU), optimistic re-runs alone
/// starved an unlucky invocation past 20 runs; an exclusive run always gets through.
const OPTIMISTIC_RUNS: u32 = 3;

impl std::fmt::Debug for Invoker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Invoker").field("options", &self.inner.options).finish_non_exhaustive()
    }
}

impl Invoker {
    /// An invoker whose plugins' HTTP requests go through `outbound`
    /// (`Outbound::default()` grants none).
    pub fn new(
        registry: Registry,
        store: Arc<dyn Store>,
        options: InvokeOptions,
        outbound: Outbound,
    ) -> Self {
        Invoker {
            inner: Arc::new(Inner {
                registry,
                store,
                options,
                outbound,
                running: Mutex::default(),
                turns: Mutex::default(),
            }),
        }
    }

    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// What plugins may call over HTTP.
    pub fn outbound(&self) -> &Outbound {
        &self.inner.outbound
    }

    pub fn options(&self) -> &InvokeOptions {
        &self.inner.options
    }

    /// Runs `request` at most once in effect per (service, key).
    pub async fn invoke(&self, request: Request) -> Result<Invoked, InvokeError> {
        self.invoke_with(request, Arc::new(|_| Attached::default())).await
    }

    /// Like [`Invoker::invoke`], and commits what `attach` returns in the same
    /// transaction as the outcome. A replayed outcome commits nothing: the caller sees
    /// `replayed` and commits its own change.
    pub async fn invoke_with(&self, mut request: Request, attach: Attach) -> Result<Invoked, InvokeError> {
        let (service, operation) = (request.service.clone(), request.operation.clone());
        let mut span =
            Span::start(|| format!("invoke {service}/{operation}"), request.trace.as_ref(), Kind::Internal);
        request.trace = span.context().or(request.trace);
        span.set("wasaga.service", service.as_str());
        span.set("wasaga.operation", operation.as_str());
        span.set("wasaga.attempt", request.attempt);
        let result = self.invoke_uncounted(request, attach).await;
        match &result {
            Ok(_) if !span.recording() => {}
            Ok(invoked) => {
                span.set("wasaga.plugin.digest", invoked.digest.to_string());
                span.set("wasaga.replayed", invoked.replayed);
                // Runs past the first: re-runs after a conflict.
                span.set("wasaga.reruns", invoked.runs.saturating_sub(1));
                if let Err(reason) = &invoked.result {
                    span.set("wasaga.rejected", reason.as_str());
                }
            }
            Err(error) => span.fail(error),
        }
        if let Err(InvokeError::UnknownService(_) | InvokeError::UnknownOperation { .. }) = &result {
            metrics().unknown_calls.inc();
            return result;
        }
        let outcome = match &result {
            Ok(invoked) if invoked.replayed => "replayed",
            Ok(invoked) if invoked.result.is_ok() => "ok",
            Ok(_) => "rejected",
            Err(InvokeError::Transient { .. }) => "transient",
            Err(_) => "failed",
        };
        let m = metrics();
        m.invocations
            .get_or_create(&labels(&[("service", &service), ("operation", &operation), ("outcome", outcome)]))
            .inc();
        if outcome == "replayed" {
            m.replays.get_or_create(&labels(&[("service", &service)])).inc();
        }
        result
    }

    async fn invoke_uncounted(&self, request: Request, attach: Attach) -> Result<Invoked, InvokeError> {
        let plugin = self
            .inner
            .registry
            .get(&request.service)
            .ok_or_else(|| InvokeError::UnknownService(request.service.clone()))?;
        let Some(operation) = plugin.manifest().operation(&request.operation) else {
            return Err(InvokeError::UnknownOperation {
                service: request.service.clone(),
                operation: request.operation.clone(),
            });
        };
        if !request.caller.may_call(operation.visibility) {
            return Err(InvokeError::Internal {
                service: request.service.clone(),
                operation: request.operation.clone(),
            });
        }
        let fingerprint = fingerprint(&request.operation, &request.input);
        let give_up_waiting = Instant::now() + self.inner.options.in_flight_wait;
        let claim = loop {
            match self.claim(&request) {
                Ok(claim) => break claim,
                Err(mut released) => {
                    let wait = give_up_waiting.saturating_duration_since(Instant::now());
                    if tokio::time::timeout(wait, released.changed()).await.is_err() {
                        return Err(InvokeError::InFlight { key: request.key.clone() });
                    }
                }
            }
        };
        // Looked up while the key is claimed, so that no other call of this key can
        // commit between the look-up and the run. A saga step's or a delivery's key is
        // not looked up first: it is new but after a crash or a takeover, and a stored
        // outcome refuses the run's commit anyway (`Duplicate`, checked before anything
        // else), which then replays it (`run_claimed`): the same answer, and one query
        // less for every step and delivery (a plugin's only effects are its commit).
        if request.caller.replays_first()
            && let Some(stored) = self.replay(&request, &fingerprint).await?
        {
            return Ok(stored);
        }

        // Once claimed, the invocation runs to its end in a task of its own: a client
        // that goes away must not leave a commit in flight with its key released (a
        // duplicate would then run beside it).
        let invoker = self.clone();
        tokio::spawn(async move { invoker.run_claimed(plugin, request, fingerprint, attach, claim).await })
            .await
            .unwrap_or_else(|failed| {
                // Cancelled: the runtime is stopping. Nothing was answered, the key may
                // be retried. (A panic in the call goes on as a panic: the request's
                // panic guard answers 500.)
                match failed.try_into_panic() {
                    Ok(panic) => std::panic::resume_unwind(panic),
                    Err(_) => Err(StoreError::Unavailable("the server is stopping".into()).into()),
                }
            })
    }

    /// Runs, commits, and re-runs on conflict, while `_claim` holds the key.
    async fn run_claimed(
        &self,
        plugin: Arc<Plugin>,
        request: Request,
        fingerprint: [u8; 32],
        attach: Attach,
        _claim: Claim,
    ) -> Result<Invoked, InvokeError> {
        let options = &self.inner.options;
        let turns = self.turns(&request.service);
        let mut last_conflict = None;
        // The plugin's HTTP exchanges, kept across its runs: a re-run replays them.
        let journal = Arc::new(Journal::default());
        for run in 1..=options.max_runs {
            let outcome = {
                // Held for the run and its commit, released before any backoff.
                let (_shared, _exclusive) = if run <= OPTIMISTIC_RUNS {
                    (Some(turns.read().await), None)
                } else {
                    (None, Some(turns.write().await))
                };
                match self.run_once(&plugin, &request, fingerprint, &attach, run, &journal).await {
                    Ok(outcome) => outcome,
                    // A run that failed before its commit (transient, trapped, out of
                    // time) says nothing of an outcome stored before: for a key not
                    // looked up first, look now, so that a step that committed before
                    // a crash is replayed, not failed.
                    Err(error) if !request.caller.replays_first() => {
                        return match self.replay(&request, &fingerprint).await? {
                            Some(stored) => Ok(stored),
                            None => Err(error),
                        };
                    }
                    Err(error) => return Err(error),
                }
            };
            match outcome {
                Ok(invoked) => return Ok(invoked),
                Err(StoreError::Conflict(conflict)) => {
                    metrics().conflicts.get_or_create(&labels(&[("service", &request.service)])).inc();
                    last_conflict = Some(conflict);
                    tokio::time::sleep(backoff(run)).await;
                }
                // Another process committed this key first: its outcome stands.
                Err(StoreError::Duplicate(_)) => {
                    return self.replay(&request, &fingerprint).await?.ok_or_else(|| {
                        StoreError::Unavailable("a stored outcome vanished while being read".into()).into()
                    });
                }
                Err(error) => return Err(error.into()),
            }
        }
        Err(InvokeError::Conflict {
            runs: options.max_runs,
            conflict: last_conflict.expect("a conflict ended every run"),
        })
    }

    /// One run of the plugin and its commit. The inner error is the commit's.
    async fn run_once(
        &self,
        plugin: &Plugin,
        request: &Request,
        fingerprint: [u8; 32],
        attach: &Attach,
        run: u32,
        journal: &Arc<Journal>,
    ) -> Result<Result<Invoked, StoreError>, InvokeError> {
        let options = &self.inner.options;
        let reads = self.inner.store.invocation_reads(&request.service)?;
        let one_moment = reads.one_moment();
        let outcome = match self.call(plugin, request, run, reads, journal).await {
            // A failure commits nothing, so nothing checks its reads: on reads that were
            // not one moment (PostgreSQL's cache) it may have failed on a view that never
            // existed at once. It runs again on a snapshot, and that run's answer stands.
            outcome if !one_moment && failed(&outcome) => {
                self.call(plugin, request, run, self.inner.store.snapshot(&request.service)?, journal).await
            }
            outcome => outcome,
        }?;
        let outcome = bounded(&request.service, outcome)?;
        let (result, changes) = match outcome.result {
            Ok(output) => (Ok(output), self.with_subscribers(outcome.changes)),
            // A rejection commits no writes or events, but its reads are still
            // validated: a refusal based on stale data is not stored.
            Err(Failure::Rejected(reason)) => {
                (Err(reason), ChangeSet { reads: outcome.changes.reads, ..ChangeSet::default() })
            }
            Err(Failure::Transient(reason)) => {
                return Err(InvokeError::Transient { service: request.service.clone(), reason });
            }
        };
        let now = now_ms();
        let stored = StoredOutcome {
            key: request.idempotency_key(),
            fingerprint,
            operation: request.operation.clone(),
            result: result.clone(),
            digest: plugin.digest(),
            correlation_id: Some(request.correlation_id.clone()),
            created_at: now,
            expires_at: now.saturating_add(i64::try_from(options.retention.as_millis()).unwrap_or(i64::MAX)),
        };
        let written: Vec<String> = changes.writes.iter().map(|w| w.key.clone()).collect();
        let produced = Produced { result: &result, digest: &stored.digest, written: &written };
        let attached = attach(&produced);
        let commit = Commit {
            service: request.service.clone(),
            saga: attached.saga,
            deliveries: attached.deliveries,
            changes,
            correlation_id: Some(request.correlation_id.clone()),
            traceparent: request.trace.map(|t| t.header()),
            outcome: Some(stored.clone()),
            ..Commit::default()
        };
        Ok(self.inner.store.commit(commit).await.map(|()| Invoked {
            result,
            replayed: false,
            digest: stored.digest,
            correlation_id: request.correlation_id.clone(),
            expires_at: stored.expires_at,
            runs: run,
            written,
        }))
    }

    /// Fixes who receives each event the call publishes: the subscribers of its topic
    /// among the services serving now, as it is published. The dispatcher fans an event
    /// out to those, whatever serves when it gets there (a subscriber reloaded, or one
    /// that failed to load on the leader, still gets what was published for it).
    fn with_subscribers(&self, mut changes: ChangeSet) -> ChangeSet {
        for event in &mut changes.events {
            event.subscribers = Some(self.inner.registry.subscribers(&event.topic));
        }
        changes
    }

    /// Calls the plugin on `reads`, as run `run` of the request.
    async fn call(
        &self,
        plugin: &Plugin,
        request: &Request,
        run: u32,
        reads: Box<dyn Snapshot>,
        journal: &Arc<Journal>,
    ) -> Result<Outcome, CallError> {
        let call = Invocation {
            operation: request.operation.clone(),
            input: request.input.clone(),
            idempotency_key: request.key.clone(),
            correlation_id: request.correlation_id.clone(),
            attempt: request.attempt + run - 1,
        };
        // The requests' idempotency keys derive from the key in its caller's space: a
        // client's key never yields a saga step's.
        let key = format!("{}:{}", request.caller.key_space().as_str(), request.key);
        let deadline = Instant::now() + plugin.limits().deadline;
        let outbound = self.inner.outbound.call(
            plugin.service().into(),
            plugin.destinations(),
            key,
            journal.clone(),
            deadline,
            request.trace,
        );
        plugin.invoke(call, Transaction::new(reads, self.inner.options.tx_limits), Some(outbound)).await
    }

    /// Commits a change that is not an invocation (a record written over HTTP, a saga
    /// transition) in its service's shared turn, so that an escalated invocation
    /// really runs alone.
    pub async fn commit(&self, commit: Commit) -> Result<(), StoreError> {
        let turns = self.turns(&commit.service);
        let _shared = turns.read().await;
        self.inner.store.commit(commit).await
    }

    fn turns(&self, service: &str) -> Arc<RwLock<()>> {
        let mut turns = self.inner.turns.lock().expect("turns mutex poisoned");
        turns.entry(service.to_owned()).or_default().clone()
    }

    /// The stored outcome of this request's key, if any.
    async fn replay(
        &self,
        request: &Request,
        fingerprint: &[u8; 32],
    ) -> Result<Option<Invoked>, InvokeError> {
        let Some(stored) = self.inner.store.outcome(&request.idempotency_key(), now_ms()).await? else {
            return Ok(None);
        };
        if &stored.fingerprint != fingerprint {
            return Err(InvokeError::KeyReused { key: request.key.clone(), operation: stored.operation });
        }
        Ok(Some(Invoked {
            result: stored.result,
            replayed: true,
            digest: stored.digest,
            correlation_id: stored.correlation_id.unwrap_or_else(|| request.correlation_id.clone()),
            expires_at: stored.expires_at,
            runs: 0,
            written: Vec::new(),
        }))
    }

    /// Claims the request's key in this process, or returns a watcher of the claim
    /// that holds it.
    fn claim(&self, request: &Request) -> Result<Claim, watch::Receiver<()>> {
        let id = request.idempotency_key();
        let mut running = self.inner.running.lock().expect("running-keys mutex poisoned");
        if let Some(released) = running.get(&id) {
            return Err(released.clone());
        }
        let (release, released) = watch::channel(());
        running.insert(id.clone(), released);
        Ok(Claim { invoker: self.inner.clone(), id, _release: release })
    }
}

/// A key this process is running. Dropping it frees the key and wakes its waiters.
struct Claim {
    invoker: Arc<Inner>,
    id: IdempotencyKey,
    _release: watch::Sender<()>,
}

impl Drop for Claim {
    fn drop(&mut self) {
        // Remove the entry before the sender is dropped, so that a woken waiter finds
        // the key free.
        self.invoker.running.lock().expect("running-keys mutex poisoned").remove(&self.id);
    }
}

/// A correlation id for a call that came without one: a UUID v7 (unique, and it
/// sorts by time).
pub fn new_correlation_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// The request's identity for key reuse: sha256 of the operation and the input.
pub fn fingerprint(operation: &str, input: &[u8]) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(operation.as_bytes());
    hash.update([0]);
    hash.update(input);
    hash.finalize().into()
}

/// The most bytes of output a call may answer (as much as an input may be).
pub const MAX_OUTPUT: usize = 1 << 20;
/// The most bytes of a refusal's or a transient failure's reason that are kept: the
/// rest is cut, saying how long it was.
pub const MAX_REASON: usize = 4 << 10;

/// A plugin's answer, held to what the host keeps of one: an output is stored with
/// the outcome and copied into a saga's state and history, a reason into the saga's
/// `last_error` and history too, rewritten at every transition (an answer of a GiB made
/// a PostgreSQL batch fail, every commit in it with it). An output past
/// [`MAX_OUTPUT`] ends the call as over its limits (nothing is stored); a reason past
/// [`MAX_REASON`] is cut.
fn bounded(service: &str, mut outcome: Outcome) -> Result<Outcome, InvokeError> {
    match &mut outcome.result {
        Ok(output) if output.len() > MAX_OUTPUT => {
            return Err(InvokeError::Call(CallError::OverLimit {
                service: service.to_owned(),
                message: format!(
                    "its output is {} bytes, more than the {MAX_OUTPUT} a call may answer",
                    output.len()
                ),
            }));
        }
        Ok(_) => {}
        Err(Failure::Rejected(reason) | Failure::Transient(reason)) => cut(reason, MAX_REASON),
    }
    Ok(outcome)
}

/// Cuts `text` to at most `max` bytes (at a character's boundary), saying so.
pub(crate) fn cut(text: &mut String, max: usize) {
    if text.len() <= max {
        return;
    }
    let total = text.len();
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push_str(&format!("… ({total} bytes in all)"));
}

/// A call that failed in a way its reads could have caused: a transient failure the
/// plugin reported, a trap, more asked of the store than a call may. Not a deadline
/// or the memory limit: running those again costs up to their limit once more.
fn failed(outcome: &Result<Outcome, CallError>) -> bool {
    match outcome {
        Ok(outcome) => matches!(outcome.result, Err(Failure::Transient(_))),
        Err(error) => matches!(error, CallError::Trap { .. } | CallError::OverLimit { .. }),
    }
}

/// Exponential backoff with full jitter: up to 2 ms, 4 ms, 8 ms, ... capped at 50 ms.
fn backoff(run: u32) -> Duration {
    let ceiling = Duration::from_millis(1u64 << run.min(6)).min(Duration::from_millis(50));
    ceiling.mul_f64(rand::rng().random::<f64>())
}

#[cfg(test)]
mod tests;
