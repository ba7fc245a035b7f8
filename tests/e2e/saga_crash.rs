//! Sagas survive crashes: real `wasaga serve` processes running 300 `place-order` sagas
//! are killed with SIGKILL at random moments and restarted each time: one host on SQLite
//! (10 kills), and three hosts on one PostgreSQL (24 kills, a random host each time).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rand::Rng;
use serde_json::{Value, json};

use crate::support::{SAGAS, Server, plugins_dir, settled_sagas, start_until_accepted};

const SAGAS_TO_RUN: usize = 300;
const CLIENTS: usize = 12;
const SKUS: [&str; 3] = ["lamp", "desk", "chair"];
const STOCK: u64 = 10_000;
const CUSTOMERS: usize = 10;

/// The order of saga `i`: every third customer is too poor (declined, compensated);
/// some orders ask for a flaky card processor or mail server on top.
fn order(i: usize) -> Value {
    let customer = i % CUSTOMERS;
    let mut input = json!({
        "order": format!("o-{i}"),
        "customer": format!("c-{customer}"),
        "sku": SKUS[i % SKUS.len()],
        "qty": 1 + (i % 3) as u64,
        "amount": 100 + (i % 7) as i64 * 10,
    });
    if i.is_multiple_of(5) {
        input["payment_transient_failures"] = json!(1);
    }
    if i.is_multiple_of(4) {
        input["notification_transient_failures"] = json!(1);
    }
    input
}

fn opening_balance(customer: usize) -> i64 {
    if customer.is_multiple_of(3) { 0 } else { 1_000_000 }
}

/// 300 sagas (a mix that completes and that compensates) while the host is killed
/// with SIGKILL 10 times. At the end every saga is finished, and the plugins' own
/// records agree: per SKU, available + reserved = stock and reserved = the quantities
/// of completed orders; per customer, balance = opening − completed amounts; every
/// completed order notified exactly once; nothing charged, refunded or released twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sagas_finish_exactly_once_across_sigkills() {
    let plugins = plugins_dir(&["inventory", "payment", "order", "notification"]);
    let data = tempfile::tempdir().unwrap();
    let start = |_: usize| Server::start_in(plugins.path(), data.path(), &["--sagas", SAGAS]);
    run_with_kills(1, 10, start).await;
}

/// The same on three hosts sharing one PostgreSQL, the clients spread over them: 24
/// times a random host is killed and started again (with a new id: its sagas are taken
/// over by whichever host claims them first once its 1 s lease ran out). The same
/// invariants hold at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sagas_finish_exactly_once_across_sigkills_of_three_hosts() {
    let database = wasaga::store::postgres::testing::scratch().await;
    let plugins = plugins_dir(&["inventory", "payment", "order", "notification"]);
    let data: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let start = |host: usize| {
        let args = ["--sagas", SAGAS, "--database", &database, "--host-lease", "1s"];
        Server::start_in(plugins.path(), data[host].path(), &args)
    };
    run_with_kills(3, 24, start).await;
}

/// Runs the sagas through `hosts` servers (`start(i)` starts host `i`), killing a random
/// one `kills` times, then checks that every saga finished and the records agree.
pub(crate) async fn run_with_kills(hosts: usize, kills: usize, start: impl Fn(usize) -> Server) {
    let mut servers: Vec<Server> = (0..hosts).map(&start).collect();
    let server = &servers[0];
    let client = Server::client();
    for sku in SKUS {
        let body = json!({"sku": sku, "qty": STOCK});
        assert_eq!(
            server
                .invoke(&client, "inventory/restock", &format!("restock-{sku}"), &body)
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    for c in 0..CUSTOMERS {
        let body = json!({"customer": format!("c-{c}"), "balance": opening_balance(c)});
        assert_eq!(
            server
                .invoke(&client, "payment/open-account", &format!("open-{c}"), &body)
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }

    let urls = Arc::new(RwLock::new(servers.iter().map(|s| s.url.clone()).collect::<Vec<_>>()));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|worker| {
            let urls = urls.clone();
            tokio::spawn(async move {
                let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
                for i in (worker..SAGAS_TO_RUN).step_by(CLIENTS) {
                    let base = || {
                        let urls = urls.read().unwrap();
                        urls[(worker + i) % urls.len()].clone()
                    };
                    start_until_accepted(&client, base, &format!("order-{i}"), &order(i)).await;
                }
            })
        })
        .collect();
    for _ in 0..kills {
        let pause = rand::rng().random_range(150..600);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        let host = rand::rng().random_range(0..hosts);
        servers[host].kill();
        servers[host] = start(host);
        urls.write().unwrap()[host] = servers[host].url.clone();
    }
    let server = &servers[0];
    for client in clients {
        client.await.unwrap();
    }

    // Every saga finishes.
    let sagas = settled_sagas(server, &client).await;
    assert_eq!(sagas.len(), SAGAS_TO_RUN, "one saga per key");
    let unfinished: Vec<String> = sagas
        .iter()
        .filter(|s| s["status"] != "completed" && s["status"] != "compensated")
        .map(|s| format!("{} {}", s["input"]["order"], s["status"]))
        .collect();
    assert!(
        unfinished.is_empty(),
        "{} unfinished sagas, e.g. {:?}",
        unfinished.len(),
        &unfinished[..unfinished.len().min(5)]
    );

    // The plugins' records agree.
    let record = |service: &'static str, key: String| {
        let (server, client) = (server, &client);
        async move { server.record(client, service, &key).await }
    };
    let mut reserved: BTreeMap<&str, u64> = BTreeMap::new();
    let mut spent: BTreeMap<String, i64> = BTreeMap::new();
    let mut completed = 0;
    for saga in &sagas {
        let input = &saga["input"];
        let id = input["order"].as_str().unwrap().to_owned();
        let order = record("order", format!("order/{id}")).await;
        let sent = record("notification", format!("sent/{id}")).await;
        let charge = record("payment", format!("charge/{id}")).await;
        let reservation = record("inventory", format!("reservation/{id}")).await;
        if saga["status"] == "completed" {
            completed += 1;
            assert_eq!(order.unwrap()["status"], "completed", "{id}");
            assert_eq!(sent, Some(json!({"count": 1})), "{id} notified exactly once");
            assert_eq!(charge.unwrap()["refunded"], false, "{id}");
            assert_eq!(reservation.unwrap()["released"], false, "{id}");
            *reserved.entry(SKUS.iter().find(|s| **s == input["sku"]).unwrap()).or_default() +=
                input["qty"].as_u64().unwrap();
            *spent.entry(input["customer"].as_str().unwrap().to_owned()).or_default() +=
                input["amount"].as_i64().unwrap();
        } else {
            assert_eq!(order.map(|o| o["status"].clone()), Some(json!("cancelled")), "{id}");
            assert_eq!(sent, None, "{id} was compensated and must not be notified");
            assert_eq!(charge, None, "{id} was declined, so never charged");
            if let Some(reservation) = reservation {
                assert_eq!(reservation["released"], true, "{id}");
            }
        }
    }
    assert!(completed > 100 && completed < SAGAS_TO_RUN, "a mix of outcomes: {completed} completed");
    for sku in SKUS {
        let stock = record("inventory", format!("stock/{sku}")).await.unwrap();
        let held = reserved.get(sku).copied().unwrap_or(0);
        assert_eq!(stock, json!({"available": STOCK - held, "reserved": held}), "stock of {sku}");
    }
    for c in 0..CUSTOMERS {
        let customer = format!("c-{c}");
        let account = record("payment", format!("account/{customer}")).await.unwrap();
        let expected = opening_balance(c) - spent.get(&customer).copied().unwrap_or(0);
        assert_eq!(account, json!({"balance": expected}), "balance of {customer}");
    }
    eprintln!("{SAGAS_TO_RUN} sagas, {completed} completed, across {kills} kills of {hosts} host(s)");
}
