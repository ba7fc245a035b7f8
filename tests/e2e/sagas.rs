//! The `place-order` saga through a real `wasaga serve`, its SQLite file and the demo's
//! services: completed, compensated, retried, stuck and resumed.

use serde_json::{Value, json};

use crate::support::{Server, seed_shop, wait_settled};

/// Stock, an account with enough money, and one too poor.
async fn seed(server: &Server, client: &reqwest::Client) {
    seed_shop(server, client, 10, 10_000).await;
}

fn order(order: &str, customer: &str, extra: Value) -> Value {
    let mut input = json!({"order": order, "customer": customer, "sku": "lamp", "qty": 2, "amount": 2_500});
    input.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    input
}

/// Starts `place-order` and waits (up to 20 s) for it to finish or get stuck.
async fn place(server: &Server, client: &reqwest::Client, key: &str, input: &Value) -> (u16, Value) {
    let response = client
        .post(format!("{}/v1/sagas/place-order?wait=20s", server.url))
        .header("Idempotency-Key", key)
        .json(input)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

fn step<'a>(saga: &'a Value, name: &str) -> &'a Value {
    saga["steps"].as_array().unwrap().iter().find(|s| s["name"] == name).unwrap()
}

/// Every step succeeds: the order is completed, the stock held, the customer charged
/// and notified once; every step shows its attempts, output, digest and timings.
#[tokio::test]
async fn a_good_order_completes() {
    let server = Server::with_sagas(&[]);
    let client = Server::client();
    seed(&server, &client).await;
    let (status, saga) = place(&server, &client, "order-1", &order("o-1", "ada", json!({}))).await;
    assert_eq!(status, 200, "{saga}");
    assert_eq!(saga["status"], "completed");
    for name in ["create-order", "reserve-stock", "charge", "complete-order", "send-confirmation"] {
        let s = step(&saga, name);
        assert_eq!((s["status"].as_str(), s["attempts"].as_u64()), (Some("done"), Some(1)), "{name}: {s}");
        assert!(s["digest"].as_str().unwrap().starts_with("sha256:"));
        assert!(s["duration_ms"].as_i64().unwrap() >= 0);
    }
    assert_eq!(step(&saga, "charge")["output"], json!({"order": "o-1", "charged": 2_500}));
    assert_eq!(
        step(&saga, "reserve-stock")["touched"],
        json!(["reservation/o-1", "stock/lamp"]),
        "what it wrote"
    );

    let record = |service: &'static str, key: &'static str| server.record(&client, service, key);
    assert_eq!(record("order", "order/o-1").await.unwrap()["status"], "completed");
    assert_eq!(record("inventory", "stock/lamp").await.unwrap(), json!({"available": 8, "reserved": 2}));
    assert_eq!(record("payment", "account/ada").await.unwrap(), json!({"balance": 7_500}));
    assert_eq!(record("notification", "sent/o-1").await.unwrap(), json!({"count": 1}));
}

/// The payment is declined: the stock is released, the order cancelled with the
/// reason, and the saga ends compensated.
#[tokio::test]
async fn a_declined_payment_is_compensated() {
    let server = Server::with_sagas(&[]);
    let client = Server::client();
    seed(&server, &client).await;
    let (status, saga) = place(&server, &client, "order-2", &order("o-2", "poor", json!({}))).await;
    assert_eq!(status, 200);
    assert_eq!(saga["status"], "compensated", "{saga}");
    assert_eq!(saga["reason"], "step `charge` was refused: declined: insufficient funds");
    assert_eq!(step(&saga, "charge")["status"], "failed");
    assert_eq!(step(&saga, "reserve-stock")["status"], "compensated");
    assert_eq!(step(&saga, "create-order")["status"], "compensated");
    assert_eq!(step(&saga, "complete-order")["status"], "pending");

    let cancelled = server.record(&client, "order", "order/o-2").await.unwrap();
    assert_eq!(cancelled["status"], "cancelled");
    assert_eq!(cancelled["reason"], "step `charge` was refused: declined: insufficient funds");
    assert_eq!(
        server.record(&client, "inventory", "stock/lamp").await.unwrap(),
        json!({"available": 10, "reserved": 0})
    );
    assert_eq!(server.record(&client, "payment", "account/poor").await.unwrap(), json!({"balance": 100}));
    assert_eq!(server.record(&client, "notification", "sent/o-2").await, None);
}

/// The card processor fails twice, then accepts: the charge is retried and the order
/// completes, charged once.
#[tokio::test]
async fn a_transient_payment_failure_is_retried() {
    let server = Server::with_sagas(&[]);
    let client = Server::client();
    seed(&server, &client).await;
    let input = order("o-3", "ada", json!({"payment_transient_failures": 2}));
    let (_, saga) = place(&server, &client, "order-3", &input).await;
    assert_eq!(saga["status"], "completed", "{saga}");
    assert_eq!(step(&saga, "charge")["attempts"], 3);
    assert_eq!(server.record(&client, "payment", "account/ada").await.unwrap(), json!({"balance": 7_500}));
}

/// After the pivot the saga only goes forward: a notification that fails 4 times (more
/// than the step's 3 attempts) is retried until it is sent, once.
#[tokio::test]
async fn a_failing_notification_after_the_pivot_is_retried_until_sent() {
    let server = Server::with_sagas(&[]);
    let client = Server::client();
    seed(&server, &client).await;
    let input = order("o-4", "ada", json!({"notification_transient_failures": 4}));
    let (_, saga) = place(&server, &client, "order-4", &input).await;
    assert_eq!(saga["status"], "completed", "{saga}");
    assert_eq!(step(&saga, "send-confirmation")["attempts"], 5);
    assert_eq!(server.record(&client, "notification", "sent/o-4").await.unwrap(), json!({"count": 1}));
    assert_eq!(server.record(&client, "order", "order/o-4").await.unwrap()["status"], "completed");
}

/// A compensation that keeps failing makes the saga stuck: it is listed, a retry of a
/// saga that is not stuck is refused, and once the cause is gone the operator's retry
/// finishes the compensation, releasing the stock once. Throughout, the saga's reason
/// and the cancelled order's stay the business one (declined), apart from why it was
/// stuck; the history has each failed attempt and the retry.
#[tokio::test]
async fn a_stuck_compensation_is_listed_and_a_retry_finishes_it() {
    let server = Server::with_sagas(&[]);
    let client = Server::client();
    seed(&server, &client).await;
    // release fails on its first 3 attempts; the step allows 3: stuck.
    let input = order("o-5", "poor", json!({"release_transient_failures": 3}));
    let (_, saga) = place(&server, &client, "order-5", &input).await;
    assert_eq!(saga["status"], "stuck", "{saga}");
    assert_eq!(step(&saga, "reserve-stock")["status"], "compensation_failed");
    assert_eq!(step(&saga, "reserve-stock")["compensation_attempts"], 3);
    let stuck_reason = saga["stuck_reason"].as_str().unwrap();
    assert!(stuck_reason.contains("the compensation of step `reserve-stock` failed 3 times"), "{saga}");
    assert_eq!(saga["reason"], "step `charge` was refused: declined: insufficient funds");
    assert_eq!(
        server.record(&client, "inventory", "stock/lamp").await.unwrap(),
        json!({"available": 8, "reserved": 2})
    );

    let stuck: Value = client
        .get(format!("{}/v1/sagas?status=stuck", server.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&Value> = stuck["sagas"].as_array().unwrap().iter().map(|s| &s["id"]).collect();
    assert_eq!(ids, [&saga["id"]]);

    let id = saga["id"].as_str().unwrap();
    let retried = client.post(format!("{}/v1/sagas/{id}/retry", server.url)).send().await.unwrap();
    assert_eq!(retried.status(), 202);
    let done = wait_settled(&server, &client, id).await;
    assert_eq!(done["status"], "compensated", "{done}");
    assert_eq!(step(&done, "reserve-stock")["compensation_attempts"], 4);
    assert_eq!(
        server.record(&client, "inventory", "stock/lamp").await.unwrap(),
        json!({"available": 10, "reserved": 0})
    );
    let cancelled = server.record(&client, "order", "order/o-5").await.unwrap();
    assert_eq!(cancelled["status"], "cancelled");
    assert_eq!(cancelled["reason"], "step `charge` was refused: declined: insufficient funds");
    assert_eq!(done["reason"], "step `charge` was refused: declined: insufficient funds");
    assert_eq!(done["stuck_reason"], Value::Null);
    let kinds: Vec<&str> =
        done["history"].as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap()).collect();
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
    // The step's duration is its reservation's, not the reservation plus three failed
    // releases and an operator's retry.
    let reserve = step(&done, "reserve-stock");
    let forward = reserve["finished_at"].as_i64().unwrap() - reserve["started_at"].as_i64().unwrap();
    assert_eq!(reserve["duration_ms"].as_i64(), Some(forward));
    assert!(reserve["finished_at"].as_i64() <= reserve["compensation_started_at"].as_i64(), "{reserve}");
    assert!(reserve["compensation_ms"].as_i64().unwrap() >= 0);

    let again = client.post(format!("{}/v1/sagas/{id}/retry", server.url)).send().await.unwrap();
    assert_eq!(again.status(), 409);
}

/// The same key starts the same saga once; the key with another input is refused;
/// bad requests get precise errors.
#[tokio::test]
async fn starting_is_idempotent_and_bad_requests_are_refused() {
    let server = Server::with_sagas(&[]);
    let client = Server::client();
    seed(&server, &client).await;
    let input = order("o-6", "ada", json!({}));
    let start = || {
        client
            .post(format!("{}/v1/sagas/place-order", server.url))
            .header("Idempotency-Key", "order-6")
            .json(&input)
    };
    let first = start().send().await.unwrap();
    assert_eq!(first.status(), 202);
    let location = first.headers()["location"].to_str().unwrap().to_owned();
    assert_eq!(first.headers()["idempotent-replayed"], "false");
    let second = start().send().await.unwrap();
    assert_eq!(second.headers()["location"].to_str().unwrap(), location, "the same saga");
    assert_eq!(second.headers()["idempotent-replayed"], "true");
    let id = location.trim_start_matches("/v1/sagas/").to_owned();
    let done = wait_settled(&server, &client, &id).await;
    assert_eq!(done["status"], "completed");
    assert_eq!(server.record(&client, "payment", "account/ada").await.unwrap(), json!({"balance": 7_500}));

    let post = |path: &str| client.post(format!("{}/v1/sagas/{path}", server.url));
    let cases = [
        (
            post("place-order").header("Idempotency-Key", "order-6").json(&order("o-7", "ada", json!({}))),
            422,
            "already started saga",
        ),
        (post("place-order").json(&input), 400, "Idempotency-Key header is required"),
        (
            post("place-order").header("Idempotency-Key", "k").json(&json!([1, 2])),
            400,
            "must be a JSON object",
        ),
        (post("ship-it").header("Idempotency-Key", "k").json(&input), 404, "no saga definition `ship-it`"),
        // Each of these once dropped the connection with a panic.
        (
            post("place-order").header("Idempotency-Key", "k").body(r#"{"x":1e400}"#),
            400,
            "number out of range",
        ),
        (
            post("place-order").header("Idempotency-Key", "k").body(format!(
                "{}{}",
                "[".repeat(300),
                "]".repeat(300)
            )),
            400,
            "recursion limit exceeded",
        ),
        (
            post("place-order?wait=99999999999999999999s").header("Idempotency-Key", "k").json(&input),
            400,
            "too long a duration",
        ),
        (client.get(format!("{}/v1/sagas/nope", server.url)), 404, "no saga `nope`"),
        (client.get(format!("{}/v1/sagas?status=lost", server.url)), 400, "unknown status `lost`"),
    ];
    for (request, status, detail) in cases {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), status);
        let problem: Value = response.json().await.unwrap();
        assert!(problem["detail"].as_str().unwrap().contains(detail), "expected {detail:?} in {problem}");
    }
}

/// The `wasaga saga` commands drive a running server: start (and wait), list, show,
/// and a refused retry with its reason and exit code 1.
#[tokio::test]
async fn the_saga_commands_drive_a_running_server() {
    let server = Server::with_sagas(&[]);
    let client = Server::client();
    seed(&server, &client).await;
    let url = server.url.clone();
    let run = move |args: Vec<String>| {
        let url = url.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                crate::support::wasaga().arg("saga").args(&args).arg("--server").arg(&url).output().unwrap()
            })
            .await
            .unwrap()
        }
    };
    let input = order("o-8", "ada", json!({})).to_string();
    let args = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let start = ["start", "place-order", "--input", &input, "--key", "cli-8", "--wait", "20s", "--json"];
    let out = run(args(&start)).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let saga: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(saga["status"], "completed");
    let id = saga["id"].as_str().unwrap().to_owned();

    let out = run(args(&["list", "--status", "completed"])).await;
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(listed.starts_with("ID") && listed.contains(&id) && listed.contains("place-order"), "{listed}");
    let out = run(args(&["list", "--status", "stuck"])).await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "no saga\n", "an empty list says so");

    let out = run(args(&["show", &id, "--json"])).await;
    let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["steps"].as_array().unwrap().len(), 5);
    let out = run(args(&["show", &id])).await;
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains(&format!("saga      {id}  place-order  completed")), "{table}");
    for row in ["create-order", "order.create", "send-confirmation", "notification.send-confirmation"] {
        assert!(table.contains(row), "`{row}` missing from the table:\n{table}");
    }

    let out = run(args(&["retry", &id])).await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is completed, not stuck") && stderr.contains("409"), "{stderr}");
}

/// A stuck saga's alert reaches a webhook receiver on loopback (as JSON, with the saga,
/// the kind and the reason), and /metrics counts the sagas, the alert and the calls.
#[tokio::test]
async fn a_stuck_saga_alerts_the_webhook_and_metrics_count_it() {
    let (hook, received) = crate::support::alert_receiver().await;
    let server = Server::with_sagas(&["--alert-webhook", &hook]);
    let client = Server::client();
    seed(&server, &client).await;
    let (_, done) = place(&server, &client, "order-ok", &order("o-ok", "ada", json!({}))).await;
    assert_eq!(done["status"], "completed");
    let input = order("o-stuck", "poor", json!({"release_transient_failures": 3}));
    let (_, stuck) = place(&server, &client, "order-stuck", &input).await;
    assert_eq!(stuck["status"], "stuck");

    let mut alerts = Vec::new();
    for _ in 0..200 {
        alerts = received.lock().unwrap().clone();
        if !alerts.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0]["kind"], "saga_stuck");
    assert_eq!(alerts[0]["saga_id"], stuck["id"]);
    assert_eq!(alerts[0]["saga"], "place-order");
    assert!(
        alerts[0]["reason"]
            .as_str()
            .unwrap()
            .contains("the compensation of step `reserve-stock` failed 3 times")
    );

    let metrics = client.get(format!("{}/metrics", server.url)).send().await.unwrap().text().await.unwrap();
    for line in [
        "wasaga_sagas{status=\"completed\"} 1",
        "wasaga_sagas{status=\"stuck\"} 1",
        "wasaga_sagas_stuck 1",
        "wasaga_alerts_total{kind=\"saga_stuck\"} 1",
        "wasaga_invocations_total{service=\"payment\",operation=\"charge\",outcome=\"ok\"} 1",
        "wasaga_invocations_total{service=\"payment\",operation=\"charge\",outcome=\"rejected\"} 1",
        "wasaga_invocations_total{service=\"inventory\",operation=\"release\",outcome=\"transient\"} 3",
    ] {
        assert!(metrics.contains(line), "`{line}` missing from /metrics:\n{metrics}");
    }
    assert!(metrics.contains("wasaga_saga_step_seconds_bucket"), "step latencies");
    assert!(metrics.contains("wasaga_commit_batch_size_count"), "batch sizes");
    let ready = client.get(format!("{}/readyz", server.url)).send().await.unwrap();
    assert_eq!(ready.status(), 200);
}

/// The pivot (`complete-order`) is refused: a refused call writes nothing, so the steps
/// before it are undone and the saga ends compensated: the stock released, the charge
/// refunded, the order cancelled with the reason. (Before: stuck, the customer charged
/// and the stock held, and a retry only repeated the refusal.)
#[tokio::test]
async fn a_refused_pivot_compensates_the_steps_before_it() {
    let server = Server::with_sagas(&[]);
    let client = Server::client();
    seed(&server, &client).await;
    let input = order("o-9", "ada", json!({"refuse_completion": "the warehouse lost the goods"}));
    let (_, saga) = place(&server, &client, "order-9", &input).await;
    assert_eq!(saga["status"], "compensated", "{saga}");
    assert_eq!(saga["reason"], "step `complete-order` was refused: the warehouse lost the goods");
    assert_eq!(step(&saga, "complete-order")["status"], "failed");
    for name in ["create-order", "reserve-stock", "charge"] {
        assert_eq!(step(&saga, name)["status"], "compensated", "{name}");
    }
    assert_eq!(server.record(&client, "payment", "account/ada").await.unwrap(), json!({"balance": 10_000}));
    assert_eq!(
        server.record(&client, "inventory", "stock/lamp").await.unwrap(),
        json!({"available": 10, "reserved": 0})
    );
    let cancelled = server.record(&client, "order", "order/o-9").await.unwrap();
    assert_eq!(cancelled["status"], "cancelled");
    assert_eq!(cancelled["reason"], "step `complete-order` was refused: the warehouse lost the goods");
}

/// Past the pivot a refused step makes the saga stuck, and the operator's ways out:
/// compensating is refused (the pivot committed), resolving a step that is not the
/// stuck one is refused, resolving the stuck one with its output completes the saga;
/// each action is in the saga's history with who did it and why.
#[tokio::test]
async fn an_operator_resolves_a_step_stuck_after_the_pivot() {
    let server = Server::with_sagas(&[]);
    let client = Server::client();
    seed(&server, &client).await;
    let input = order("o-10", "ada", json!({"refuse_notification": "no such address"}));
    let (_, saga) = place(&server, &client, "order-10", &input).await;
    assert_eq!(saga["status"], "stuck", "{saga}");
    let id = saga["id"].as_str().unwrap();
    let act = |verb: &str, body: Value| {
        client.post(format!("{}/v1/sagas/{id}/{verb}", server.url)).json(&body).send()
    };

    let refused = act("compensate", json!({"by": "bob"})).await.unwrap();
    assert_eq!(refused.status(), 409);
    let problem: Value = refused.json().await.unwrap();
    assert!(problem["detail"].as_str().unwrap().contains("past its pivot `complete-order`"), "{problem}");
    let wrong = act("resolve", json!({"step": "charge"})).await.unwrap();
    assert_eq!(wrong.status(), 409);
    let problem: Value = wrong.json().await.unwrap();
    assert!(problem["detail"].as_str().unwrap().contains("stuck on step `send-confirmation`, not `charge`"));
    let bad = act("resolve", json!({"outptu": 1})).await.unwrap();
    assert_eq!(bad.status(), 400, "unknown fields are refused");

    let body = json!({"step": "send-confirmation", "output": {"sent": "by phone"}, "by": "alice", "note": "called the customer"});
    let resolved = act("resolve", body).await.unwrap();
    assert_eq!(resolved.status(), 200, "the last step resolved: the saga completed at once, and says so");
    let done = wait_settled(&server, &client, id).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(step(&done, "send-confirmation")["output"], json!({"sent": "by phone"}));
    let history = done["history"].as_array().unwrap();
    let actions: Vec<&Value> = history.iter().filter(|e| e["kind"] == "operator").collect();
    assert_eq!(actions.len(), 1, "only what was done is recorded: {history:?}");
    assert_eq!(actions[0]["action"], "resolve");
    assert_eq!(actions[0]["by"], "alice");
    assert_eq!(actions[0]["note"], "called the customer");
    assert_eq!(actions[0]["step"], "send-confirmation");
    assert_eq!(server.record(&client, "order", "order/o-10").await.unwrap()["status"], "completed");
}

/// A compensation that keeps failing, before the pivot: the operator compensates it
/// (with the CLI), and the saga ends compensated with the action in its history.
#[tokio::test]
async fn an_operator_compensates_a_stuck_saga_with_the_cli() {
    let server = Server::with_sagas(&[]);
    let client = Server::client();
    seed(&server, &client).await;
    let input = order("o-11", "poor", json!({"release_transient_failures": 3}));
    let (_, saga) = place(&server, &client, "order-11", &input).await;
    assert_eq!(saga["status"], "stuck", "{saga}");
    let id = saga["id"].as_str().unwrap().to_owned();
    let url = server.url.clone();
    let out = tokio::task::spawn_blocking(move || {
        crate::support::wasaga()
            .args(["saga", "compensate", &id, "--by", "carol", "--note", "warehouse back", "--server", &url])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let id = saga["id"].as_str().unwrap();
    let done = wait_settled(&server, &client, id).await;
    assert_eq!(done["status"], "compensated", "{done}");
    let action = done["history"].as_array().unwrap().iter().find(|e| e["kind"] == "operator").unwrap();
    assert_eq!((action["action"].as_str(), action["by"].as_str()), (Some("compensate"), Some("carol")));
    assert_eq!(
        server.record(&client, "inventory", "stock/lamp").await.unwrap(),
        json!({"available": 10, "reserved": 0})
    );
}

/// Editing a saga definition strands no saga that started with the old one: every
/// version is kept in the store by digest, and drives its sagas across a restart (a
/// running saga resumes and completes with its original steps; a stuck one is shown
/// with them and can be retried); removing a plugin is checked against the versions
/// unfinished sagas use; removing the file stops new sagas only.
#[tokio::test]
async fn unfinished_sagas_keep_the_definition_they_started_with() {
    let plugins = crate::support::plugins_dir(&["inventory", "payment", "order", "notification"]);
    let sagas = tempfile::tempdir().unwrap();
    let file = sagas.path().join("place-order.toml");
    let original =
        std::fs::read_to_string(std::path::Path::new(crate::support::SAGAS).join("place-order.toml"))
            .unwrap();
    std::fs::write(&file, &original).unwrap();
    let data = tempfile::tempdir().unwrap();
    let sagas_arg = sagas.path().to_string_lossy().into_owned();
    let args = ["--sagas", sagas_arg.as_str()];
    let mut server = Server::start_in(plugins.path(), data.path(), &args);
    let client = Server::client();
    seed(&server, &client).await;

    let (_, stuck) =
        place(&server, &client, "order-s", &order("o-s", "poor", json!({"release_transient_failures": 3})))
            .await;
    assert_eq!(stuck["status"], "stuck");
    let running: Value = client
        .post(format!("{}/v1/sagas/place-order", server.url))
        .header("Idempotency-Key", "order-r")
        .json(&order("o-r", "ada", json!({"notification_transient_failures": 7})))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let (stuck_id, running_id) = (stuck["id"].as_str().unwrap(), running["id"].as_str().unwrap());

    // A new version: `charge` is now `pay`, and nobody is notified any more.
    let edited = original.replace("name = \"charge\"", "name = \"pay\"");
    let edited = &edited[..edited.find("[[step]]\nname = \"send-confirmation\"").unwrap()];
    std::fs::write(&file, edited).unwrap();
    let mut probe = Value::Null;
    for n in 0..200 {
        let input =
            json!({"order": format!("probe-{n}"), "customer": "ada", "sku": "lamp", "qty": 1, "amount": 1});
        probe = place(&server, &client, &format!("probe-{n}"), &input).await.1;
        if probe["steps"].as_array().unwrap().iter().any(|s| s["name"] == "pay") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(probe["steps"].as_array().unwrap().len(), 4, "new sagas use the new version: {probe}");

    let removal = client.delete(format!("{}/v1/plugins/notification", server.url)).send().await.unwrap();
    assert_eq!(removal.status(), 409, "the running saga's version still needs notification");
    let problem: Value = removal.json().await.unwrap();
    assert!(problem["detail"].as_str().unwrap().contains(running_id), "{problem}");

    server.kill();
    let server = Server::start_in(plugins.path(), data.path(), &args);
    let done = wait_settled(&server, &client, running_id).await;
    assert_eq!(done["status"], "completed", "resumed after the restart: {done}");
    assert_eq!(step(&done, "send-confirmation")["status"], "done", "with the steps it started with");
    assert_eq!(step(&done, "charge")["status"], "done");
    assert_eq!(server.record(&client, "notification", "sent/o-r").await.unwrap(), json!({"count": 1}));

    let shown: Value =
        client.get(format!("{}/v1/sagas/{stuck_id}", server.url)).send().await.unwrap().json().await.unwrap();
    assert_eq!(step(&shown, "charge")["status"], "failed", "shown with its own steps");
    let retried = client.post(format!("{}/v1/sagas/{stuck_id}/retry", server.url)).send().await.unwrap();
    assert_eq!(retried.status(), 202, "{}", retried.text().await.unwrap());
    assert_eq!(wait_settled(&server, &client, stuck_id).await["status"], "compensated");

    std::fs::remove_file(&file).unwrap();
    let mut gone = false;
    for n in 0..200 {
        let response = client
            .post(format!("{}/v1/sagas/place-order", server.url))
            .header("Idempotency-Key", format!("after-{n}"))
            .json(&order(&format!("after-{n}"), "ada", json!({})))
            .send()
            .await
            .unwrap();
        if response.status() == 404 {
            gone = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(gone, "a removed definition starts no new saga");
}

/// What an operator looks for: a saga by its id, by its idempotency key or by a value
/// of its input (the order id), and the event chain of an id; the overview's last hour
/// counts the sagas that just ended.
#[tokio::test]
async fn an_operator_finds_a_saga_by_id_key_or_order() {
    let server = Server::with_sagas(&[]);
    let client = Server::client();
    seed(&server, &client).await;
    let (_, saga) = place(&server, &client, "order-12", &order("o-12", "ada", json!({}))).await;
    let (_, declined) = place(&server, &client, "order-13", &order("o-13", "poor", json!({}))).await;
    let id = saga["id"].as_str().unwrap();
    let search = async |q: &str| -> Value {
        let url = format!("{}/v1/search", server.url);
        client.get(url).query(&[("q", q)]).send().await.unwrap().json().await.unwrap()
    };
    for q in [id, "order-12", "o-12"] {
        let found = search(q).await;
        let ids: Vec<&str> =
            found["sagas"].as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap()).collect();
        assert_eq!(ids, [id], "searching {q}");
    }
    let by_customer = search("ada").await;
    assert_eq!(by_customer["sagas"].as_array().unwrap().len(), 1, "the input's fields");
    assert_eq!(search("nothing-like-it").await["sagas"], json!([]));
    assert_eq!(search(id).await["events"], 0, "the saga's steps publish nothing");
    let bad = client.get(format!("{}/v1/search?q=", server.url)).send().await.unwrap();
    assert_eq!(bad.status(), 400);

    let overview: Value =
        client.get(format!("{}/v1/overview", server.url)).send().await.unwrap().json().await.unwrap();
    let rates = &overview["rates"];
    assert_eq!(rates["minutes"].as_array().unwrap().len(), 60);
    let sum = |key: &str| rates[key].as_array().unwrap().iter().map(|n| n.as_u64().unwrap()).sum::<u64>();
    assert_eq!((sum("completed"), sum("compensated")), (1, 1), "{overview}");
    assert!(sum("step_failures") >= 1, "the declined charge");
    assert_eq!(declined["status"], "compensated");
}
