//! Versioned records and idempotent invocations over real HTTP, against a real
//! `wasaga serve` with its SQLite file and real plugins: the article's failure modes.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use std::time::Duration;

use wasaga::invoke::InvokeOptions;
use wasaga::runtime::Limits;

use crate::support::{Server, load, runtime, serve_in_process};

fn server() -> Server {
    Server::with_plugins(&["echo", "inventory", "payment", "profile"])
}

/// Lost update, through the API: two clients read version 1 and both write with
/// `If-Match: "1"`. One succeeds, the other gets 412 with the current version, and the
/// record holds the winner's value.
#[tokio::test]
async fn two_writers_from_one_version_one_gets_412_and_nothing_is_lost() {
    let server = server();
    let client = Server::client();
    let url = format!("{}/v1/services/echo/records/doc/1", server.url);
    let created =
        client.put(&url).header("If-None-Match", "*").body(r#"{"by":"nobody"}"#).send().await.unwrap();
    assert_eq!(created.status(), 201);
    assert_eq!(created.headers()["etag"], "\"1\"");

    let read = client.get(&url).send().await.unwrap();
    assert_eq!(read.headers()["etag"], "\"1\"");
    let write = |by: &'static str| {
        client.put(&url).header("If-Match", "\"1\"").body(json!({ "by": by }).to_string()).send()
    };
    let (a, b) = tokio::join!(write("a"), write("b"));
    let (a, b) = (a.unwrap(), b.unwrap());
    let mut statuses = [a.status().as_u16(), b.status().as_u16()];
    statuses.sort();
    assert_eq!(statuses, [200, 412]);
    let (winner, loser) = if a.status() == 200 { ("a", b) } else { ("b", a) };
    assert_eq!(loser.headers()["etag"], "\"2\"", "the 412 tells the current version");
    assert_eq!(loser.headers()["content-type"], "application/problem+json");

    let now = client.get(&url).send().await.unwrap();
    assert_eq!(now.headers()["etag"], "\"2\"");
    assert_eq!(now.json::<Value>().await.unwrap(), json!({ "by": winner }));
}

/// Writes must say what they replace (428 otherwise); deletes take a version too; a
/// record created again after a delete never reuses a version.
#[tokio::test]
async fn record_writes_need_preconditions_and_versions_never_go_back() {
    let server = server();
    let client = Server::client();
    let url = format!("{}/v1/services/echo/records/k", server.url);
    let bare = client.put(&url).body("1").send().await.unwrap();
    assert_eq!(bare.status(), 428);
    assert!(bare.text().await.unwrap().contains("If-None-Match: *"));
    assert_eq!(client.put(&url).header("If-None-Match", "*").body("1").send().await.unwrap().status(), 201);
    let again = client.put(&url).header("If-None-Match", "*").body("2").send().await.unwrap();
    assert_eq!(again.status(), 412, "create-only on an existing record");
    assert_eq!(client.put(&url).header("If-Match", "\"1\"").body("2").send().await.unwrap().status(), 200);
    assert_eq!(client.delete(&url).send().await.unwrap().status(), 428);
    assert_eq!(client.delete(&url).header("If-Match", "\"1\"").send().await.unwrap().status(), 412);
    assert_eq!(client.delete(&url).header("If-Match", "\"2\"").send().await.unwrap().status(), 204);
    assert_eq!(client.get(&url).send().await.unwrap().status(), 404);
    let recreated = client.put(&url).header("If-None-Match", "*").body("3").send().await.unwrap();
    assert_eq!(recreated.headers()["etag"], "\"4\"", "create 1, update 2, delete 3, create 4");
    let stale = client.put(&url).header("If-Match", "\"1\"").body("5").send().await.unwrap();
    assert_eq!(stale.status(), 412, "an old version never matches again");
    let bad = client.put(&url).header("If-Match", "\"4\"").body("{oops").send().await.unwrap();
    assert_eq!(bad.status(), 400);
    let weak = client.put(&url).header("If-Match", "W/\"4\"").body("6").send().await.unwrap();
    assert_eq!(weak.status(), 412, "If-Match compares strongly: a weak tag never matches");
    let listed = client.put(&url).header("If-Match", "\"1\", \"4\"").body("6").send().await.unwrap();
    assert_eq!(listed.status(), 200, "any version of the list");
    let any = client.put(&url).header("If-Match", "*").body("7").send().await.unwrap();
    assert_eq!((any.status().as_u16(), any.headers()["etag"].to_str().unwrap()), (200, "\"6\""));
    let wrong_method = client.post(&url).body("1").send().await.unwrap();
    assert_eq!(wrong_method.status(), 405);
    assert_eq!(wrong_method.headers()["content-type"], "application/problem+json");
}

/// Lost update, through plugins: 50 concurrent read-modify-writes of one profile, each
/// setting its own field. The host re-runs the ones that conflict: all 50 fields stay.
#[tokio::test]
async fn concurrent_read_modify_writes_lose_no_field() {
    let server = server();
    let client = Server::client();
    let updates = (0..50).map(|i| {
        let body = json!({"user": "ada", "fields": { format!("field{i:02}"): i }});
        server.invoke(&client, "profile/update", &format!("update-{i}"), &body).send()
    });
    for response in join_all(updates).await {
        let response = response.unwrap();
        assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    }
    let profile = server.record(&client, "profile", "profile/ada").await.unwrap();
    let fields: BTreeSet<&String> = profile.as_object().unwrap().keys().collect();
    assert_eq!(fields.len(), 50, "lost fields: {profile}");
}

/// Oversell: 200 concurrent reservations of 1 unit against a stock of 50. Exactly 50
/// succeed, 150 are refused, and the stock ends at 0 available, 50 reserved.
#[tokio::test]
async fn concurrent_reservations_never_oversell() {
    let server = server();
    let client = Server::client();
    let restock = server.invoke(&client, "inventory/restock", "restock", &json!({"sku": "lamp", "qty": 50}));
    assert_eq!(restock.send().await.unwrap().status(), 200);
    let reservations = (0..200).map(|i| {
        let body = json!({"sku": "lamp", "qty": 1, "order": format!("order-{i}")});
        server.invoke(&client, "inventory/reserve", &format!("reserve-{i}"), &body).send()
    });
    let (mut reserved, mut refused) = (0, 0);
    for response in join_all(reservations).await {
        let response = response.unwrap();
        match response.status().as_u16() {
            200 => reserved += 1,
            422 => {
                let problem: Value = response.json().await.unwrap();
                assert_eq!(problem["detail"], "insufficient stock");
                refused += 1;
            }
            other => panic!("unexpected {other}: {}", response.text().await.unwrap()),
        }
    }
    assert_eq!((reserved, refused), (50, 150));
    let stock = server.record(&client, "inventory", "stock/lamp").await.unwrap();
    assert_eq!(stock, json!({"available": 0, "reserved": 50}));
}

/// Duplicate delivery: one charge with one key, sent 100 times at once and then 10 times
/// one by one: one effect, identical bodies, every repeat marked as replayed. The same
/// key with another body is refused (422).
#[tokio::test]
async fn one_key_sent_many_times_charges_once() {
    let server = server();
    let client = Server::client();
    let open = json!({"customer": "bob", "balance": 10_000});
    assert_eq!(
        server.invoke(&client, "payment/open-account", "open-bob", &open).send().await.unwrap().status(),
        200
    );

    let charge = json!({"customer": "bob", "amount": 2_500, "order": "o-1"});
    let burst = (0..100).map(|_| server.invoke(&client, "payment/charge", "charge-o-1", &charge).send());
    let mut bodies = BTreeSet::new();
    let mut fresh = 0;
    for response in join_all(burst).await {
        let response = response.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["idempotency-retention"], "86400");
        if response.headers()["idempotent-replayed"] == "false" {
            fresh += 1;
        }
        bodies.insert(response.text().await.unwrap());
    }
    for _ in 0..10 {
        let response = server.invoke(&client, "payment/charge", "charge-o-1", &charge).send().await.unwrap();
        assert_eq!(response.headers()["idempotent-replayed"], "true");
        bodies.insert(response.text().await.unwrap());
    }
    assert_eq!(fresh, 1, "exactly one request ran");
    assert_eq!(bodies.len(), 1, "every answer is the same: {bodies:?}");
    assert_eq!(server.record(&client, "payment", "account/bob").await.unwrap(), json!({"balance": 7_500}));

    let other = json!({"customer": "bob", "amount": 9_999, "order": "o-1"});
    let reused = server.invoke(&client, "payment/charge", "charge-o-1", &other).send().await.unwrap();
    assert_eq!(reused.status(), 422);
    let problem: Value = reused.json().await.unwrap();
    assert!(
        problem["detail"].as_str().unwrap().contains("already used for a different request"),
        "{problem}"
    );
    assert_eq!(server.record(&client, "payment", "account/bob").await.unwrap(), json!({"balance": 7_500}));
}

/// A business rejection is 422 with the reason, stored and replayed like a success,
/// and changes nothing.
#[tokio::test]
async fn a_rejection_is_stored_and_replayed() {
    let server = server();
    let client = Server::client();
    let open = json!({"customer": "poor", "balance": 100});
    server.invoke(&client, "payment/open-account", "open-poor", &open).send().await.unwrap();
    let charge = json!({"customer": "poor", "amount": 500, "order": "o-9"});
    for replayed in ["false", "true"] {
        let response = server.invoke(&client, "payment/charge", "charge-o-9", &charge).send().await.unwrap();
        assert_eq!(response.status(), 422);
        assert_eq!(response.headers()["idempotent-replayed"], replayed);
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["detail"], "declined: insufficient funds");
    }
    assert_eq!(server.record(&client, "payment", "account/poor").await.unwrap(), json!({"balance": 100}));
    assert_eq!(server.record(&client, "payment", "charge/o-9").await, None);
}

/// A duplicate of a request that is still running waits for it; when it runs longer
/// than the wait, the duplicate gets 409 with Retry-After, and the first request is not
/// disturbed. (On a single-threaded runtime, where the spinning plugin shares the only
/// thread with the server's timers.)
#[tokio::test]
async fn a_duplicate_of_a_running_request_gets_409() {
    let spin =
        load(&runtime(), "spin", Limits { deadline: Duration::from_secs(2), ..Limits::default() }).await;
    let options = InvokeOptions { in_flight_wait: Duration::from_millis(200), ..InvokeOptions::default() };
    let data = tempfile::tempdir().unwrap();
    let url = serve_in_process(vec![spin], options, data.path()).await;
    let client = Server::client();
    let send = || {
        client
            .post(format!("{url}/v1/services/spin/forever"))
            .header("Idempotency-Key", "slow")
            .body("{}")
            .send()
    };
    let first = tokio::spawn(send());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = send().await.unwrap();
    let (status, retry_after) = (second.status(), second.headers().get("retry-after").cloned());
    let problem: Value = second.json().await.unwrap();
    assert_eq!(status, 409, "{problem}");
    assert_eq!(retry_after.unwrap(), "1");
    assert_eq!(problem["detail"], "a request with idempotency key `slow` is still running; retry later");
    let first = first.await.unwrap().unwrap();
    assert_eq!(first.status(), 504, "the first ends at its deadline");
    let problem: Value = first.json().await.unwrap();
    assert_eq!(problem["detail"], "plugin `spin` ran past its deadline of 2000ms");
}

/// Runs the futures concurrently and returns their outputs in order.
async fn join_all<F>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let tasks: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut outputs = Vec::with_capacity(tasks.len());
    for task in tasks {
        outputs.push(task.await.unwrap());
    }
    outputs
}

/// The demo's services keep their numbers whole and their ids unique: a restock that
/// would wrap the count around is refused (the stock unchanged), and an order id
/// created again with other details is refused rather than reused (the same details
/// answer the order as it is).
#[tokio::test]
async fn the_demo_services_refuse_overflows_and_reused_order_ids() {
    let server = Server::with_plugins(&["inventory", "order"]);
    let client = Server::client();
    let call = |path: &'static str, key: &'static str, body: Value| {
        let request = server.invoke(&client, path, key, &body);
        async move {
            let response = request.send().await.unwrap();
            (response.status().as_u16(), response.json::<Value>().await.unwrap())
        }
    };
    assert_eq!(call("inventory/restock", "r-1", json!({"sku": "lamp", "qty": 5})).await.0, 200);
    let (status, problem) = call("inventory/restock", "r-2", json!({"sku": "lamp", "qty": u64::MAX})).await;
    assert_eq!(status, 422);
    assert!(problem["detail"].as_str().unwrap().contains("would overflow the stock count"), "{problem}");
    let stock = server.record(&client, "inventory", "stock/lamp").await.unwrap();
    assert_eq!(stock, json!({"available": 5, "reserved": 0}), "unchanged");

    let order = json!({"order": "o-1", "customer": "ada", "sku": "lamp", "qty": 1, "amount": 500});
    assert_eq!(
        call("order/create", "c-1", order.clone()).await,
        (200, json!({"order": "o-1", "status": "pending"}))
    );
    let (status, problem) = call(
        "order/create",
        "c-2",
        json!({"order": "o-1", "customer": "eve", "sku": "lamp", "qty": 1, "amount": 1}),
    )
    .await;
    assert_eq!(status, 422);
    assert!(problem["detail"].as_str().unwrap().contains("already exists with other details"), "{problem}");
    assert_eq!(server.record(&client, "order", "order/o-1").await.unwrap()["customer"], "ada");
    assert_eq!(call("order/create", "c-3", order).await, (200, json!({"order": "o-1", "status": "pending"})));
}

/// The records list pages by count and by bytes: six values of 900 KiB come four to
/// the first page (4 MiB at most) and two to the next, following `next`; nothing is
/// skipped or repeated.
#[tokio::test]
async fn the_records_list_pages_within_a_byte_budget() {
    let server = server();
    let client = Server::client();
    let big = serde_json::to_string(&"x".repeat(900 << 10)).unwrap();
    for n in 1..=6 {
        let url = format!("{}/v1/services/echo/records/big/{n}", server.url);
        let created = client.put(url).header("If-None-Match", "*").body(big.clone()).send().await.unwrap();
        assert_eq!(created.status(), 201);
    }
    let page = async |after: Option<&str>| -> Value {
        let mut url = format!("{}/v1/services/echo/records?prefix=big/&limit=1000", server.url);
        if let Some(after) = after {
            url.push_str(&format!("&after={after}"));
        }
        client.get(url).send().await.unwrap().json().await.unwrap()
    };
    let keys = |page: &Value| -> Vec<String> {
        page["records"].as_array().unwrap().iter().map(|r| r["key"].as_str().unwrap().to_owned()).collect()
    };
    let first = page(None).await;
    assert_eq!(keys(&first), ["big/1", "big/2", "big/3", "big/4"]);
    assert_eq!(first["next"], "big/4");
    let second = page(Some("big/4")).await;
    assert_eq!(keys(&second), ["big/5", "big/6"]);
    assert_eq!(second["next"], Value::Null, "the last page");
}

/// A saga step's key is not looked up before its run (it is new but after a crash or a
/// takeover). When its outcome was stored before (a step that committed just before a
/// crash) and the run now fails transiently, the step still gets the stored outcome: a
/// replay, not a failure that would spend its retries or compensate the saga.
#[tokio::test]
async fn a_step_stored_before_is_replayed_even_when_its_run_fails() {
    use wasaga::invoke::{Caller, Request};
    let data = tempfile::tempdir().unwrap();
    let plugin = load(&runtime(), "notification", Limits::default()).await;
    let state = crate::support::app_state(vec![plugin], InvokeOptions::default(), data.path()).await;
    // The mail fails on attempt 1 and goes through from attempt 2 on.
    let input = json!({"order": "o-1", "notification_transient_failures": 1}).to_string().into_bytes();
    let step = |attempt| {
        let mut request = Request::new(
            Caller::Saga,
            "notification",
            "send-confirmation",
            input.clone(),
            "s-1/step-4".into(),
        );
        request.attempt = attempt;
        request
    };
    let first = state.invoker.invoke(step(2)).await.unwrap();
    assert!(!first.replayed && first.result.is_ok(), "{:?}", first.result);
    let again = state.invoker.invoke(step(1)).await.unwrap();
    assert!(again.replayed, "the stored outcome, though this run failed");
    assert_eq!(again.result, first.result);
}

/// The rows of docs/idempotency.md that only this test proves: a key is its bytes
/// (quotes included), scoped by service, fingerprinted with the operation and the body
/// as sent (a saga start: its input, whatever its formatting); concurrent starts with
/// one key start one saga; a reused key's 422 is told from a plugin's 422 by
/// `Idempotent-Replayed`.
#[tokio::test]
async fn idempotency_keys_as_the_draft_reads_them() {
    let server = Server::with_sagas(&[]);
    let client = Server::client();
    let call = |path: &str, key: &str, body: &str| {
        post_as_written(client.clone(), format!("{}/v1/services/{path}", server.url), key.into(), body.into())
    };
    let restock = r#"{"sku": "quoted", "qty": 1}"#;
    let replayed = |answer: &(u16, Option<String>, String)| (answer.0, answer.1.clone());

    // §2.1: the field's text is the key, quotes and all.
    assert_eq!(replayed(&call("inventory/restock", "\"q-1\"", restock).await), (200, Some("false".into())));
    assert_eq!(replayed(&call("inventory/restock", "\"q-1\"", restock).await), (200, Some("true".into())));
    assert_eq!(replayed(&call("inventory/restock", "q-1", restock).await), (200, Some("false".into())));
    assert_eq!(server.record(&client, "inventory", "stock/quoted").await.unwrap()["available"], 2);
    assert_eq!(call("inventory/restock", "\"a b\"", restock).await.0, 400);

    // §2.2: one key in two services is two keys; in two operations of one, a reuse.
    let open = r#"{"customer": "scoped", "balance": 1}"#;
    assert_eq!(replayed(&call("inventory/restock", "scope-1", restock).await), (200, Some("false".into())));
    assert_eq!(replayed(&call("payment/open-account", "scope-1", open).await), (200, Some("false".into())));
    let reused = call("inventory/release", "scope-1", r#"{"order": "o"}"#).await;
    assert_eq!(reused.0, 422, "{}", reused.2);
    assert!(reused.2.contains("already used for a different request"), "{}", reused.2);
    // A reuse is not an outcome: no Idempotent-Replayed; a plugin's refusal is one.
    assert_eq!(reused.1, None);
    let refused = call("inventory/release", "refused-1", "{}").await;
    assert_eq!(replayed(&refused), (422, Some("false".into())), "{}", refused.2);
    assert_eq!(replayed(&call("inventory/release", "refused-1", "{}").await), (422, Some("true".into())));

    // §2.4: a call's fingerprint is its body as sent: the same JSON written otherwise
    // is another request.
    let open = r#"{"customer": "fp", "balance": 5}"#;
    assert_eq!(call("payment/open-account", "fp-1", open).await.0, 200);
    let reordered = call("payment/open-account", "fp-1", r#"{"balance": 5, "customer": "fp"}"#).await;
    assert_eq!(reordered.0, 422, "{}", reordered.2);

    // A saga start's is its input: formatting does not matter.
    let input = r#"{"order": "o-fp", "customer": "fp", "sku": "quoted", "qty": 1, "amount": 1}"#;
    let (first, fresh) = start_as_written(server.url.clone(), client.clone(), "saga-fp", input).await;
    let reformatted = r#"{ "amount":1,"qty":1, "sku":"quoted","customer":"fp","order":"o-fp" }"#;
    let (again, replay) = start_as_written(server.url.clone(), client.clone(), "saga-fp", reformatted).await;
    assert_eq!((first.as_str(), fresh.as_str(), replay.as_str()), (again.as_str(), "false", "true"));

    // §2.6: twenty starts with one key at once start one saga.
    let input = r#"{"order": "o-many", "customer": "fp", "sku": "quoted", "qty": 1, "amount": 1}"#;
    let starts = (0..20).map(|_| start_as_written(server.url.clone(), client.clone(), "saga-many", input));
    let answers = join_all(starts).await;
    let ids: BTreeSet<&str> = answers.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids.len(), 1, "{answers:?}");
    assert_eq!(answers.iter().filter(|(_, replayed)| replayed == "false").count(), 1, "{answers:?}");
}

/// POSTs `body` as written (not re-serialised) under `key`; returns the status,
/// `Idempotent-Replayed` (if answered) and the body.
async fn post_as_written(
    client: reqwest::Client,
    url: String,
    key: String,
    body: String,
) -> (u16, Option<String>, String) {
    let response = client
        .post(url)
        .header("Idempotency-Key", key)
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let replayed = response.headers().get("idempotent-replayed").map(|v| v.to_str().unwrap().to_owned());
    (response.status().as_u16(), replayed, response.text().await.unwrap())
}

/// Starts `place-order` with `body` as written; returns the saga's id and
/// `Idempotent-Replayed`.
async fn start_as_written(url: String, client: reqwest::Client, key: &str, body: &str) -> (String, String) {
    let (_, replayed, text) =
        post_as_written(client, format!("{url}/v1/sagas/place-order"), key.into(), body.into()).await;
    let saga: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    (saga["id"].as_str().unwrap().to_owned(), replayed.expect("a saga start says whether it replayed"))
}
