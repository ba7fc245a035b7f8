use super::*;

#[test]
fn fingerprints_separate_operation_from_input() {
    assert_ne!(fingerprint("ab", b"c"), fingerprint("a", b"bc"));
    assert_eq!(fingerprint("a", b"x"), fingerprint("a", b"x"));
}

/// An invoker over `echo` on a scratch store.
async fn echo() -> (Invoker, Arc<dyn Store>) {
    let (invoker, _) = crate::app::scratch_invoker(&["echo"]).await;
    let store = invoker.store().clone();
    (invoker, store)
}

/// An output larger than a call may answer ends the call (over its limits), and
/// nothing is stored: the key may be used again.
#[tokio::test]
async fn an_output_past_its_limit_is_not_stored() {
    let (invoker, store) = echo().await;
    let big = vec![b'x'; MAX_OUTPUT + 1];
    let request = Request::new(Caller::Client, "echo", "echo", big, "big".into());
    let result = invoker.invoke(request.clone()).await;
    match result {
        Err(InvokeError::Call(CallError::OverLimit { message, .. })) => {
            assert!(message.contains(&format!("{} bytes", MAX_OUTPUT + 1)), "{message}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(store.outcome(&request.idempotency_key(), now_ms()).await.unwrap(), None);
    let fits = Request::new(Caller::Client, "echo", "echo", vec![b'x'; MAX_OUTPUT], "fits".into());
    assert_eq!(invoker.invoke(fits).await.unwrap().result.map(|o| o.len()), Ok(MAX_OUTPUT));
}

/// A commit refused by its saga's fence (the saga moved on: another host took it
/// over) ends the invocation at once: no run again can change where the saga is,
/// and re-runs past the third would each hold the service's exclusive turn.
#[tokio::test]
async fn a_commit_the_saga_fence_refuses_is_not_run_again() {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use crate::store::{SagaRow, SagaStatus};

    let (invoker, store) = echo().await;
    let saga = SagaRow {
        id: "s".into(),
        name: "n".into(),
        status: SagaStatus::Running,
        input: b"{}".to_vec(),
        state: "{}".into(),
        version: 3,
        key: "k".into(),
        fingerprint: [0; 32],
        created_at: 1,
        updated_at: 1,
        owner: Some("elsewhere".into()),
    };
    store.commit(Commit { saga: Some(SagaChange::Create(saga)), ..Commit::default() }).await.unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let counted = runs.clone();
    let attach: Attach = Arc::new(move |_| {
        counted.fetch_add(1, Ordering::SeqCst);
        let stale = SagaChange::Update {
            id: "s".into(),
            version: 1,
            status: SagaStatus::Running,
            state: "{}".into(),
            at: 2,
            by: Some("here".into()),
        };
        Attached { saga: Some(stale), ..Attached::default() }
    });
    let input = br#"{"key": "effect", "value": 1}"#.to_vec();
    let request = Request::new(Caller::Saga, "echo", "set", input, "saga/s/step/do".into());
    let result = invoker.invoke_with(request, attach).await;
    assert!(matches!(result, Err(InvokeError::Store(StoreError::Moved(_)))), "{result:?}");
    assert_eq!(runs.load(Ordering::SeqCst), 1, "run once");
    let mut reads = store.snapshot("echo").unwrap();
    assert_eq!(reads.get("effect").await.unwrap().version, 0, "nothing written");
}

/// A reason is cut at a character, and says how long it was; a short one stays.
#[test]
fn long_reasons_are_cut() {
    let mut short = "declined".to_owned();
    cut(&mut short, 10);
    assert_eq!(short, "declined");
    let mut long = "é".repeat(10); // 20 bytes
    cut(&mut long, 5);
    assert_eq!(long, "éé… (20 bytes in all)");
}

#[test]
fn backoff_grows_and_is_capped() {
    for run in 1..30 {
        let ceiling = Duration::from_millis(1u64 << run.min(6)).min(Duration::from_millis(50));
        assert!(backoff(run) <= ceiling);
    }
}
