//! The demo's saga with its charge made by a real card processor (`wasaga provider`,
//! another process on loopback) while the host is killed with SIGKILL again and again:
//! judged by the processor's own ledger, every order is charged once or not at all
//! (and then refunded), never twice.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rand::Rng;
use serde_json::{Value, json};

use crate::support::{Provider, SAGAS, Server, plugins_dir, settled_sagas, start_until_accepted, wasaga};

const SAGAS_TO_RUN: usize = 150;
const CLIENTS: usize = 12;
const KILLS: usize = 50;
const CUSTOMERS: usize = 6;
const API_KEY: &str = "pk_test_wasaga_0123456789";

/// Every third customer has nothing: their orders are declined and compensated.
fn opening_balance(customer: usize) -> i64 {
    if customer.is_multiple_of(3) { 0 } else { 1_000_000 }
}

/// Every fifth order is refused at completion, after its charge: compensated by a
/// refund.
fn order(i: usize) -> Value {
    let mut input = json!({
        "order": format!("o-{i}"),
        "customer": format!("c-{}", i % CUSTOMERS),
        "sku": "lamp",
        "qty": 1,
        "amount": 100 + (i % 7) as i64 * 10,
    });
    if i % 5 == 1 {
        input["refuse_completion"] = json!("the warehouse lost the goods");
    }
    input
}

/// `wasaga serve` over the demo's services and sagas, on `data`, its payment granted
/// the provider and its key.
fn host(plugins: &std::path::Path, data: &std::path::Path, grants: &std::path::Path) -> Server {
    let mut command = wasaga();
    command.env("PROVIDER_KEY", API_KEY);
    let args = ["--sagas", SAGAS, "--outbound", grants.to_str().unwrap()];
    Server::start_logging(command, plugins, data, &args, Stdio::inherit())
}

/// 150 sagas through the processor (a 20 ms answer each: most kills land while a
/// charge or a refund is in its hands, or after it answered and before the host
/// committed) while the host is killed 50 times and started again on its data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_order_is_charged_once_or_not_at_all_across_sigkills() {
    let provider = Provider::start(API_KEY, "20ms");
    let plugins = plugins_dir(&["inventory", "payment", "order", "notification"]);
    let data = tempfile::tempdir().unwrap();
    let grants = data.path().join("outbound.toml");
    std::fs::write(
        &grants,
        format!(
            "[[services.payment.destinations]]\nurl = \"{url}/v1/\"\n\
             [services.payment.secrets.provider-key]\nenv = \"PROVIDER_KEY\"\ndestinations = [\"{url}/v1/\"]\n",
            url = provider.url
        ),
    )
    .unwrap();
    let mut server = host(plugins.path(), data.path(), &grants);
    let client = Server::client();
    let settings = json!({"provider": provider.url});
    let configured =
        server.invoke(&client, "payment/configure", "configure", &settings).send().await.unwrap();
    assert_eq!(configured.status(), 200, "{}", configured.text().await.unwrap());
    let restock = json!({"sku": "lamp", "qty": 100_000});
    let status =
        server.invoke(&client, "inventory/restock", "restock", &restock).send().await.unwrap().status();
    assert_eq!(status, 200);
    for c in 0..CUSTOMERS {
        let body = json!({"customer": format!("c-{c}"), "balance": opening_balance(c)});
        let response =
            server.invoke(&client, "payment/open-account", &format!("open-{c}"), &body).send().await.unwrap();
        assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    }

    let url = Arc::new(RwLock::new(server.url.clone()));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|worker| {
            let url = url.clone();
            tokio::spawn(async move {
                let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
                for i in (worker..SAGAS_TO_RUN).step_by(CLIENTS) {
                    let base = || url.read().unwrap().clone();
                    start_until_accepted(&client, base, &format!("order-{i}"), &order(i)).await;
                }
            })
        })
        .collect();
    for _ in 0..KILLS {
        let pause = rand::rng().random_range(50..300);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        server.kill();
        server = host(plugins.path(), data.path(), &grants);
        *url.write().unwrap() = server.url.clone();
    }
    for client in clients {
        client.await.unwrap();
    }

    let sagas = settled_sagas(&server, &client).await;
    assert_eq!(sagas.len(), SAGAS_TO_RUN, "one saga per key");

    // The processor's ledger, against what each saga says.
    let ledger = provider.ledger().await;
    let mut charges: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for charge in ledger["charges"].as_array().unwrap() {
        charges.entry(charge["order"].as_str().unwrap().to_owned()).or_default().push(charge);
    }
    let mut spent: BTreeMap<String, i64> = BTreeMap::new();
    let (mut completed, mut compensated, mut refunded) = (0, 0, 0);
    for saga in &sagas {
        let input = &saga["input"];
        let id = input["order"].as_str().unwrap();
        let made = charges.remove(id).unwrap_or_default();
        assert!(made.len() <= 1, "{id} charged {} times: {made:?}", made.len());
        match saga["status"].as_str().unwrap() {
            "completed" => {
                completed += 1;
                assert_eq!(made.len(), 1, "{id} completed without a charge");
                assert_eq!(made[0]["refunded"], false, "{id} completed and refunded");
                assert_eq!(made[0]["amount"], input["amount"], "{id}");
                *spent.entry(input["customer"].as_str().unwrap().to_owned()).or_default() +=
                    input["amount"].as_i64().unwrap();
            }
            "compensated" => {
                compensated += 1;
                assert!(
                    made.iter().all(|c| c["refunded"] == true),
                    "{id} compensated, its charge kept: {made:?}"
                );
                refunded += made.len();
            }
            other => panic!("{id} ended {other}: {saga}"),
        }
    }
    assert!(charges.is_empty(), "charges for orders no saga made: {charges:?}");
    for c in 0..CUSTOMERS {
        let customer = format!("c-{c}");
        let expected = opening_balance(c) - spent.get(&customer).copied().unwrap_or(0);
        assert_eq!(ledger["customers"][&customer], expected, "{customer}'s balance at the processor");
    }
    assert!(
        completed > 0 && refunded > 0,
        "{completed} completed, {compensated} compensated, {refunded} refunded"
    );
    assert_eq!(ledger["refunds"].as_array().unwrap().len(), refunded, "one refund per refunded charge");
    let replayed = ledger["replayed"].as_u64().unwrap();
    eprintln!(
        "{completed} completed, {compensated} compensated ({refunded} refunded), {KILLS} kills; the processor answered \
         {} requests, {replayed} of them replays of a key it had answered",
        ledger["requests"]
    );
    assert!(replayed > 0, "no kill fell between a request and its commit: the test proved nothing");
}

/// The processor itself: what it refuses (no key, a wrong API key, a key reused with
/// other parameters, a key still in flight), what it declines, and what it replays.
#[tokio::test]
async fn the_provider_replays_refuses_and_declines_as_a_processor_does() {
    let provider = Provider::start(API_KEY, "300ms");
    let client = reqwest::Client::new();
    let post = |path: &str, key: Option<&str>, body: Value| {
        let mut request = client.post(format!("{}{path}", provider.url)).bearer_auth(API_KEY).json(&body);
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        request.send()
    };
    let open = post("/v1/customers", Some("open"), json!({"id": "ada", "balance": 500})).await.unwrap();
    assert_eq!(open.status(), 200);

    let charge = json!({"customer": "ada", "amount": 300, "order": "o-1"});
    let (first, in_flight) = tokio::join!(post("/v1/charges", Some("k1"), charge.clone()), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        post("/v1/charges", Some("k1"), charge.clone()).await
    });
    let first = first.unwrap();
    assert_eq!(first.status(), 200);
    assert_eq!(in_flight.unwrap().status(), 409, "a key in flight");
    let first: Value = first.json().await.unwrap();
    let again = post("/v1/charges", Some("k1"), charge.clone()).await.unwrap();
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.json::<Value>().await.unwrap(), first, "the same answer");
    let other = post("/v1/charges", Some("k1"), json!({"customer": "ada", "amount": 1, "order": "o-1"}))
        .await
        .unwrap();
    assert_eq!(other.status(), 400, "a key reused with other parameters");
    let declined = post("/v1/charges", Some("k2"), json!({"customer": "ada", "amount": 300, "order": "o-2"}))
        .await
        .unwrap();
    assert_eq!(declined.status(), 402, "past the balance");
    assert_eq!(post("/v1/charges", None, charge.clone()).await.unwrap().status(), 400, "no key");
    let wrong = client
        .post(format!("{}/v1/charges", provider.url))
        .bearer_auth("nope")
        .header("Idempotency-Key", "k3");
    assert_eq!(wrong.json(&charge).send().await.unwrap().status(), 401);

    let refund = post("/v1/refunds", Some("r1"), json!({"charge": first["id"]})).await.unwrap();
    assert_eq!(refund.status(), 200);
    let twice = post("/v1/refunds", Some("r2"), json!({"charge": first["id"]})).await.unwrap();
    assert_eq!(twice.status(), 400, "a charge is refunded once");
    let ledger = provider.ledger().await;
    assert_eq!(ledger["customers"]["ada"], 500);
    assert_eq!(ledger["charges"].as_array().unwrap().len(), 1);
    assert_eq!(ledger["refunds"].as_array().unwrap().len(), 1);
}
