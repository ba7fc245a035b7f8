use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering};

use serde_json::json;

use super::*;

/// A clock whose sleeps return at once and move its time on by what they asked.
#[derive(Default)]
struct ManualClock {
    now: AtomicI64,
    slept: Mutex<Vec<Duration>>,
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.now.load(Ordering::SeqCst)
    }

    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        self.slept.lock().unwrap().push(duration);
        self.now.fetch_add(duration.as_millis() as i64, Ordering::SeqCst);
        Box::pin(tokio::task::yield_now())
    }
}

/// One step whose retries wait an hour each (full jitter: up to an hour).
const HOURLY: &str = r#"
    name = "notify-hourly"
    [[step]]
    name = "send"
    service = "notification"
    action = "send-confirmation"
    retry = { max_attempts = 10, initial_backoff = "1h", max_backoff = "1h" }
"#;

/// The driver waits between attempts on the engine's clock, never on the wall
/// clock: three planned failures an hour apart finish at once here, the clock saw
/// the three waits (each at most the policy's hour), and the step's times are the
/// clock's.
#[tokio::test]
async fn retries_wait_on_the_injected_clock() {
    let (invoker, manifests) = crate::app::scratch_invoker(&["notification"]).await;
    let store = invoker.store().clone();
    let clock = Arc::new(ManualClock::default());
    let engine = SagaEngine::new(invoker, store, clock.clone(), 4, Alerter::none(), "host-1".into());
    let def = SagaDef::parse(Path::new("notify-hourly.toml"), HOURLY, |_| Some(&manifests[0])).unwrap();
    engine.add_definition(def).await.unwrap();

    let input = json!({"order": "o-1", "notification_transient_failures": 3});
    let (started, _) = engine.start("notify-hourly", "key-1", input).await.unwrap();
    let done = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let record = engine.get(&started.row.id).await.unwrap();
            if record.state.status.is_terminal() {
                return record;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the saga finished without waiting hours");

    assert_eq!(done.state.status, SagaStatus::Completed);
    let step = &done.state.steps[0];
    assert_eq!(step.attempts, 4, "three failures, then the call that succeeded");
    let slept = clock.slept.lock().unwrap().clone();
    assert_eq!(slept.len(), 3, "one wait before each retry: {slept:?}");
    assert!(slept.iter().all(|wait| *wait <= Duration::from_secs(3600)), "{slept:?}");
    let waited: i64 = slept.iter().map(|d| d.as_millis() as i64).sum();
    let (began, ended) = (step.started_at.unwrap(), step.finished_at.unwrap());
    assert_eq!(ended - began, waited, "the step's time is the clock's: its waits, nothing else");
}

/// A saga whose stored state this host cannot read (here: not JSON, until it is
/// repaired) does not stop the takeover of the others, nor stay running with
/// nobody driving it: its driver says so (an alert) and starts again from the
/// stored saga until it can drive it, and then the saga finishes. (Before, the
/// takeover failed on it, and every saga claimed with it was owned by this host
/// and driven by none.)
#[tokio::test]
async fn a_saga_its_driver_cannot_read_is_driven_once_it_can() {
    let (invoker, manifests) = crate::app::scratch_invoker(&["notification"]).await;
    let store = invoker.store().clone();
    let clock = Arc::new(ManualClock::default());
    let engine = SagaEngine::new(invoker, store.clone(), clock, 4, Alerter::none(), "host-1".into());
    let def = SagaDef::parse(Path::new("notify-hourly.toml"), HOURLY, |_| Some(&manifests[0])).unwrap();
    engine.add_definition(def.clone()).await.unwrap();
    let mut state = SagaState::new(&def);
    apply(&def, &mut state, Event::Started { at: 1 });
    let good = serde_json::to_string(&state).unwrap();
    let row = |id: &str, state: &str| SagaRow {
        id: id.into(),
        name: "notify-hourly".into(),
        status: SagaStatus::Running,
        input: br#"{"order": "o-1"}"#.to_vec(),
        state: state.into(),
        version: 1,
        key: id.into(),
        fingerprint: [0; 32],
        created_at: 1,
        updated_at: 1,
        owner: None,
    };
    for saga in [row("a-unreadable", "not JSON"), row("b-fine", &good)] {
        store.commit(Commit { saga: Some(SagaChange::Create(saga)), ..Commit::default() }).await.unwrap();
    }
    let alerts = || {
        crate::metrics::metrics()
            .alerts
            .get_or_create(&crate::metrics::labels(&[("kind", "saga_driver_failed")]))
            .get()
    };
    let alerted = alerts();

    assert_eq!(engine.take_over().await.unwrap(), 2, "both are driven");
    let finished = |id: &'static str| {
        let engine = engine.clone();
        async move {
            tokio::time::timeout(Duration::from_secs(20), async {
                loop {
                    if engine.get(id).await.is_ok_and(|r| r.state.status.is_terminal()) {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
            .await
            .is_ok()
        }
    };
    assert!(finished("b-fine").await, "the readable saga finishes");
    for _ in 0..400 {
        if alerts() > alerted {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(alerts() > alerted, "the unreadable one raised an alert");
    let repair = SagaChange::Update {
        id: "a-unreadable".into(),
        version: 1,
        status: SagaStatus::Running,
        state: good.clone(),
        at: 2,
        by: Some("host-1".into()),
    };
    store.commit(Commit { saga: Some(repair), ..Commit::default() }).await.unwrap();
    assert!(finished("a-unreadable").await, "repaired, it is driven to its end");
}

/// A wait for a saga another host drives leaves nothing behind, whether it runs out
/// of time or its client goes away mid-wait (its request dropped).
#[tokio::test]
async fn waits_for_sagas_driven_elsewhere_leave_no_entry() {
    let (invoker, _) = crate::app::scratch_invoker(&[]).await;
    let store = invoker.store().clone();
    let engine = SagaEngine::new(
        invoker,
        store.clone(),
        Arc::new(ManualClock::default()),
        4,
        Alerter::none(),
        "here".into(),
    );
    let row = SagaRow {
        id: "elsewhere-1".into(),
        name: "n".into(),
        status: SagaStatus::Running,
        input: b"{}".to_vec(),
        state: serde_json::to_string(&SagaState::new(&SagaDef::parse_stored("d", HOURLY).unwrap())).unwrap(),
        version: 1,
        key: "k".into(),
        fingerprint: [0; 32],
        created_at: 1,
        updated_at: 1,
        owner: Some("there".into()),
    };
    store.commit(Commit { saga: Some(SagaChange::Create(row)), ..Commit::default() }).await.unwrap();
    let entries = || engine.inner.waiters.lock().unwrap().len();
    let _ = engine.wait("elsewhere-1", Duration::from_millis(300)).await;
    assert_eq!(entries(), 0, "after a wait that ran out");
    let waiting = tokio::spawn({
        let engine = engine.clone();
        async move { engine.wait("elsewhere-1", Duration::from_secs(60)).await.map(drop) }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(entries(), 1, "while it waits");
    waiting.abort();
    let _ = waiting.await;
    assert_eq!(entries(), 0, "after its client went away");
}
