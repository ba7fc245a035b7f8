//! Choreography through a real `wasaga serve`: the transactional outbox, delivery to
//! subscribers, the event chain, dead letters and redelivery, ordering, crashes.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{Server, plugins_dir, seed_shop};

const SHOP: &[&str] = &["order", "inventory", "payment", "notification"];

async fn seed(server: &Server, client: &reqwest::Client) {
    seed_shop(server, client, 100, 1_000_000).await;
}

/// Places an order through the choreographed flow (`order.place`, which names the
/// chain by the order id: no `Correlation-Id` header needed).
async fn place(server: &Server, client: &reqwest::Client, order: &str, customer: &str, extra: Value) {
    let mut input = json!({"order": order, "customer": customer, "sku": "lamp", "qty": 2, "amount": 2_500});
    input.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    let response =
        server.invoke(client, "order/place", &format!("place-{order}"), &input).send().await.unwrap();
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
}

async fn chain(server: &Server, client: &reqwest::Client, correlation: &str) -> Vec<Value> {
    let url = format!("{}/v1/events?correlation={correlation}&limit=1000", server.url);
    let page: Value = client.get(url).send().await.unwrap().json().await.unwrap();
    page["events"].as_array().unwrap().clone()
}

/// Waits (up to 20 s) until the chain has every topic in `topics`, every event's
/// deliveries are made, and none is pending. (An event not dispatched yet has no
/// deliveries at all: it is not settled, though nothing in it is pending.)
async fn settled_chain(
    server: &Server,
    client: &reqwest::Client,
    correlation: &str,
    topics: &[&str],
) -> Vec<Value> {
    for _ in 0..400 {
        let events = chain(server, client, correlation).await;
        let seen: Vec<&str> = events.iter().map(|e| e["topic"].as_str().unwrap()).collect();
        let pending =
            events.iter().flat_map(|e| e["deliveries"].as_array().unwrap()).any(|d| d["status"] == "pending");
        let dispatched = events.iter().all(|e| e["dispatched"] == true);
        if topics.iter().all(|t| seen.contains(t)) && dispatched && !pending {
            return events;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "the chain of {correlation} never settled with {topics:?}: {:#?}",
        chain(server, client, correlation).await
    );
}

/// The happy path: order-placed → stock-reserved → payment-completed → order-completed,
/// each delivered once; the services' records agree, and the chain shows it all.
#[tokio::test]
async fn a_choreographed_order_completes_and_its_chain_shows_how() {
    let server = Server::with_plugins(SHOP);
    let client = Server::client();
    seed(&server, &client).await;
    place(&server, &client, "o-1", "ada", json!({})).await;
    let topics = ["order-placed", "stock-reserved", "payment-completed", "order-completed"];
    let events = settled_chain(&server, &client, "o-1", &topics).await;
    let seen: Vec<&str> = events.iter().map(|e| e["topic"].as_str().unwrap()).collect();
    assert_eq!(seen, topics, "in causal order");
    assert_eq!(events[0]["publisher"], "order");
    assert_eq!(events[0]["payload"]["amount"], 2_500);
    // Who receives each event was fixed when it was published.
    assert_eq!(events[0]["subscribers"], json!([{"service": "inventory", "operation": "reserve-placed"}]));
    assert_eq!(
        events[3]["subscribers"],
        json!([{"service": "notification", "operation": "send-confirmation"}])
    );
    let delivery = &events[1]["deliveries"][0];
    assert_eq!(
        (delivery["subscriber"].as_str(), delivery["status"].as_str(), delivery["outcome"].as_str()),
        (Some("payment"), Some("delivered"), Some("ok"))
    );

    let record = |service: &'static str, key: &'static str| server.record(&client, service, key);
    assert_eq!(record("order", "order/o-1").await.unwrap()["status"], "completed");
    assert_eq!(record("inventory", "stock/lamp").await.unwrap(), json!({"available": 98, "reserved": 2}));
    assert_eq!(record("payment", "account/ada").await.unwrap(), json!({"balance": 997_500}));
    assert_eq!(record("notification", "sent/o-1").await.unwrap(), json!({"count": 1}));
}

/// The failure path: the payment is declined, so the stock is released and the order
/// cancelled with the reason; nothing is charged or sent.
#[tokio::test]
async fn a_declined_choreographed_order_releases_and_cancels() {
    let server = Server::with_plugins(SHOP);
    let client = Server::client();
    seed(&server, &client).await;
    place(&server, &client, "o-2", "poor", json!({})).await;
    settled_chain(
        &server,
        &client,
        "o-2",
        &["order-placed", "stock-reserved", "payment-declined", "stock-released"],
    )
    .await;
    let order = server.record(&client, "order", "order/o-2").await.unwrap();
    assert_eq!(order["status"], "cancelled");
    assert_eq!(order["reason"], "declined: insufficient funds");
    assert_eq!(
        server.record(&client, "inventory", "stock/lamp").await.unwrap(),
        json!({"available": 100, "reserved": 0})
    );
    assert_eq!(server.record(&client, "payment", "account/poor").await.unwrap(), json!({"balance": 100}));
    assert_eq!(server.record(&client, "notification", "sent/o-2").await, None);
}

/// An event exists only if its invocation committed: a refusal after publishing leaves
/// no event; a committed publish does.
#[tokio::test]
async fn a_refused_invocation_publishes_nothing() {
    let server = Server::with_plugins(&["echo"]);
    let client = Server::client();
    let body = json!({"topic": "audit", "payload": {"x": 1}});
    let refused = server
        .invoke(&client, "echo/publish-then-refuse", "r-1", &body)
        .header("Correlation-Id", "c-1")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 422);
    let committed = server
        .invoke(&client, "echo/publish", "p-1", &body)
        .header("Correlation-Id", "c-2")
        .send()
        .await
        .unwrap();
    assert_eq!(committed.status(), 200);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(chain(&server, &client, "c-1").await.is_empty(), "the refused invocation's event exists");
    let events = chain(&server, &client, "c-2").await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["payload"], json!({"x": 1}));
}

/// Every call belongs to a chain: without a `Correlation-Id` header the host makes one
/// up and answers it, a replay answers the first call's, and the events of the call
/// are found under it. `order.place` names its chain by the order id instead.
#[tokio::test]
async fn every_call_has_a_chain_and_a_replay_answers_the_first_one() {
    let server = Server::with_plugins(&["echo"]);
    let client = Server::client();
    let body = json!({"topic": "audit", "payload": {"x": 1}});
    let first = server.invoke(&client, "echo/publish", "p-1", &body).send().await.unwrap();
    assert_eq!(first.status(), 200);
    let chain_id = first.headers()["correlation-id"].to_str().unwrap().to_owned();
    assert_eq!(chain_id.len(), 36, "a UUID: {chain_id}");
    let replay = server
        .invoke(&client, "echo/publish", "p-1", &body)
        .header("Correlation-Id", "another-chain")
        .send()
        .await
        .unwrap();
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(replay.headers()["correlation-id"], chain_id.as_str(), "the first call's chain");
    let events = settled_chain(&server, &client, &chain_id, &["audit"]).await;
    assert_eq!(events.len(), 1);

    let given = server.invoke(&client, "echo/publish", "p-2", &body).header("Correlation-Id", "mine");
    assert_eq!(given.send().await.unwrap().headers()["correlation-id"], "mine");
    let bad = server.invoke(&client, "echo/publish", "p-3", &body).header("Correlation-Id", "two words");
    let bad = bad.send().await.unwrap();
    assert_eq!(bad.status(), 400);
    assert!(bad.text().await.unwrap().contains("Correlation-Id header: a correlation id must be 1 to 255"));

    let shop = Server::with_plugins(SHOP);
    seed(&shop, &client).await;
    let placed = shop
        .invoke(
            &client,
            "order/place",
            "place-o-9",
            &json!({"order": "o-9", "customer": "ada", "sku": "lamp", "qty": 1, "amount": 10}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(placed.status(), 200);
    let events = settled_chain(&shop, &client, "o-9", &["order-placed", "order-completed"]).await;
    assert!(events.iter().all(|e| e["correlation_id"] == "o-9"), "{events:#?}");
}

/// A long chain comes in pages of at most 100 events (by default), in publication
/// order, `next` leading to the rest: 250 events, none skipped or repeated.
#[tokio::test]
async fn a_long_chain_comes_in_pages() {
    let server = Server::with_plugins(&["echo"]);
    let client = Server::client();
    for n in 0..250 {
        let body = json!({"topic": "audit", "payload": {"n": n}});
        let sent =
            server.invoke(&client, "echo/publish", &format!("p-{n}"), &body).header("Correlation-Id", "long");
        assert_eq!(sent.send().await.unwrap().status(), 200);
    }
    let mut seen = Vec::new();
    let mut after = 0;
    let mut pages = 0;
    loop {
        let url = format!("{}/v1/events?correlation=long&after={after}", server.url);
        let page: Value = client.get(url).send().await.unwrap().json().await.unwrap();
        pages += 1;
        seen.extend(page["events"].as_array().unwrap().iter().map(|e| e["payload"]["n"].as_u64().unwrap()));
        match page["next"].as_i64() {
            Some(next) => after = next,
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, (0..250).collect::<Vec<u64>>());
}

/// A delivery that fails every attempt is dead-lettered (listed, with the error); an
/// operator's redelivery then delivers it, once.
#[tokio::test]
async fn a_dead_letter_can_be_redelivered() {
    let server = Server::with_plugins(SHOP);
    let client = Server::client();
    seed(&server, &client).await;
    // The confirmation mail fails on its first 5 attempts: all the attempts a delivery gets.
    place(&server, &client, "o-3", "ada", json!({"notification_transient_failures": 5})).await;
    let mut dead = Vec::new();
    for _ in 0..400 {
        dead = client
            .get(format!("{}/v1/events/dead", server.url))
            .send()
            .await
            .unwrap()
            .json::<Vec<Value>>()
            .await
            .unwrap();
        if !dead.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(
        (dead[0]["subscriber"].as_str(), dead[0]["attempts"].as_u64()),
        (Some("notification"), Some(5))
    );
    assert!(dead[0]["last_error"].as_str().unwrap().contains("mail server unavailable"));
    assert_eq!(server.record(&client, "notification", "sent/o-3").await, None);

    // The operator's view and action, with the CLI.
    let cli = |args: &[&str]| {
        crate::support::wasaga().arg("events").args(args).args(["--server", &server.url]).output().unwrap()
    };
    let out = cli(&["dead"]);
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(listed.contains("notification") && listed.contains("mail server unavailable"), "{listed}");
    let event = dead[0]["event_id"].to_string();
    let out = cli(&["redeliver", &event, "--subscriber", "notification"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    settled_chain(&server, &client, "o-3", &["order-completed"]).await;
    let out = cli(&["chain", "o-3"]);
    let chain = String::from_utf8_lossy(&out.stdout);
    assert!(
        chain.contains("order-placed") && chain.contains("notification.send-confirmation: delivered (ok) ×6"),
        "{chain}"
    );
    assert_eq!(String::from_utf8_lossy(&cli(&["dead"]).stdout), "no dead letter\n");
    let url = format!("{}/v1/events/{}/redeliver?subscriber=notification", server.url, dead[0]["event_id"]);
    assert_eq!(server.record(&client, "notification", "sent/o-3").await.unwrap(), json!({"count": 1}));
    assert_eq!(client.post(&url).send().await.unwrap().status(), 409, "no longer dead");
}

/// Within a correlation id a subscriber gets the events in publication order, also
/// when they were published concurrently with other correlations' events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_keep_the_order_of_each_correlation() {
    let server = Server::with_plugins(&["echo"]);
    journals_are_delivered_once_in_order(&[&server]).await;
}

/// Publishes ten `journal` events on each of four chains at once, through `hosts` in
/// turn, and checks that `echo`'s journal of each chain is exactly its events: each
/// delivered once, in the order of the chain (the order of the events' ids).
pub(crate) async fn journals_are_delivered_once_in_order(hosts: &[&Server]) {
    let client = Server::client();
    let mut sends = Vec::new();
    for n in 0..10 {
        for c in 0..4 {
            let (client, url) = (client.clone(), hosts[(n + c) % hosts.len()].url.clone());
            sends.push(tokio::spawn(async move {
                client
                    .post(format!("{url}/v1/services/echo/publish"))
                    .header("Idempotency-Key", format!("j-{c}-{n}"))
                    .header("Correlation-Id", format!("c-{c}"))
                    .body(json!({"topic": "journal", "payload": {"n": n}}).to_string())
                    .send()
                    .await
                    .unwrap()
                    .status()
            }));
        }
    }
    for send in sends {
        assert_eq!(send.await.unwrap(), 200);
    }
    for c in 0..4 {
        let correlation = format!("c-{c}");
        let events = settled_chain(hosts[hosts.len() - 1], &client, &correlation, &["journal"]).await;
        assert_eq!(events.len(), 10);
        for event in &events {
            let deliveries = event["deliveries"].as_array().unwrap();
            assert_eq!(deliveries.len(), 1, "{event}");
            assert_eq!(
                (&deliveries[0]["status"], &deliveries[0]["attempts"]),
                (&json!("delivered"), &json!(1))
            );
        }
        let published: Vec<Value> = events.iter().map(|e| e["payload"]["n"].clone()).collect();
        let journal = hosts[0].record(&client, "echo", &format!("journal/{correlation}")).await.unwrap();
        assert_eq!(journal, Value::Array(published), "{correlation}: each once, in order");
    }
}

/// Killed with SIGKILL while the flow is under way, twice: every order ends completed
/// or cancelled, each charged, released and notified at most once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_happen_once_across_sigkills() {
    once_across_sigkills(plugins_dir(SHOP).path(), &[], Duration::ZERO).await;
}

/// The same, with idempotency records kept for one second and each restart 1.5 s after
/// the kill: a delivery whose effect committed but whose mark did not would find no
/// stored outcome and apply its effect again. The mark commits with the effect, so
/// nothing is applied twice however long the restart takes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_happen_once_even_when_their_keys_expired_before_the_restart() {
    once_across_sigkills(
        plugins_dir(SHOP).path(),
        &["--idempotency-retention", "1s"],
        Duration::from_millis(1500),
    )
    .await;
}

/// The flow through a server over `plugins` (the shop's four services), killed with
/// SIGKILL three times, `pause` before each restart; then the invariants.
pub(crate) async fn once_across_sigkills(plugins: &std::path::Path, args: &[&str], pause: Duration) {
    let data = tempfile::tempdir().unwrap();
    let mut server = Server::start_in(plugins, data.path(), args);
    let client = Server::client();
    seed(&server, &client).await;
    const ORDERS: usize = 30;
    for round in 0..3 {
        for i in (round * ORDERS / 3)..((round + 1) * ORDERS / 3) {
            let customer = if i % 3 == 0 { "poor" } else { "ada" };
            // 150 is more than the poor customer's 100: declined every time.
            place(&server, &client, &format!("k-{i}"), customer, json!({"qty": 1, "amount": 150})).await;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
        server.kill();
        tokio::time::sleep(pause).await;
        server = Server::start_in(plugins, data.path(), args);
    }
    let mut completed = 0;
    for i in 0..ORDERS {
        let order = format!("k-{i}");
        let declined = i % 3 == 0;
        let last = if declined { "stock-released" } else { "order-completed" };
        settled_chain(&server, &client, &order, &[last]).await;
        let record = server.record(&client, "order", &format!("order/{order}")).await.unwrap();
        if declined {
            assert_eq!(record["status"], "cancelled", "{order}");
            assert_eq!(server.record(&client, "notification", &format!("sent/{order}")).await, None);
        } else {
            completed += 1;
            assert_eq!(record["status"], "completed", "{order}");
            let sent = server.record(&client, "notification", &format!("sent/{order}")).await;
            assert_eq!(
                sent,
                Some(json!({"count": 1})),
                "{order}: {:#?}",
                chain(&server, &client, &order).await
            );
        }
    }
    let balance = server.record(&client, "payment", "account/ada").await.unwrap();
    assert_eq!(balance, json!({"balance": 1_000_000 - 150 * completed}), "each completed order charged once");
    let stock = server.record(&client, "inventory", "stock/lamp").await.unwrap();
    assert_eq!(
        stock,
        json!({"available": 100 - completed, "reserved": completed}),
        "declined orders released once"
    );
}
