//! Crash safety with a real process: `wasaga serve` is killed with SIGKILL while
//! clients are invoking it, and restarted on the same data directory.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use serde_json::{Value, json};

use crate::support::{ADMIN_TOKEN, Server, plugins_dir};

const STOCK: u64 = 1_000_000;
const KILLS: usize = 5;
const CLIENTS: usize = 16;

/// What the clients saw: the body of every acknowledged reservation, and every order
/// that was sent (acknowledged or not).
#[derive(Default)]
struct Seen {
    acked: BTreeMap<u64, String>,
    sent: Vec<u64>,
}

/// The server is killed with SIGKILL under 16 concurrent clients, 5 times, and
/// restarted each time. Afterwards every acknowledged reservation is present exactly
/// once with the answer the client got, no invocation is half-applied (the stock's
/// `reserved` equals the reservations that exist), and retrying every request that was
/// sent applies each order exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_nothing_and_applies_nothing_twice() {
    let plugins = plugins_dir(&["inventory"]);
    let data = tempfile::tempdir().unwrap();
    let client = Server::client();
    let mut server = Server::start_in(plugins.path(), data.path(), &[]);
    let restock =
        server.invoke(&client, "inventory/restock", "restock", &json!({"sku": "bolt", "qty": STOCK}));
    assert_eq!(restock.send().await.unwrap().status(), 200);

    let next_order = Arc::new(AtomicU64::new(0));
    let seen = Arc::new(Mutex::new(Seen::default()));
    for _ in 0..KILLS {
        let url = Arc::new(server.url.clone());
        let clients: Vec<_> = (0..CLIENTS)
            .map(|_| tokio::spawn(reserve_until_refused(url.clone(), next_order.clone(), seen.clone())))
            .collect();
        let pause = rand::rng().random_range(200..800);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        server.kill();
        for client in clients {
            client.await.unwrap();
        }
        server = Server::start_in(plugins.path(), data.path(), &[]);
    }
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    eprintln!(
        "{} reservations sent, {} acknowledged, across {KILLS} kills",
        seen.sent.len(),
        seen.acked.len()
    );
    assert!(seen.acked.len() > 100, "the load was too light to mean anything: {}", seen.acked.len());

    // Nothing lost, nothing half-applied.
    let mut existing = 0;
    for order in &seen.sent {
        let reservation = server.record(&client, "inventory", &format!("reservation/o-{order}")).await;
        match reservation {
            Some(r) => {
                assert_eq!(r, json!({"sku": "bolt", "qty": 1, "released": false}));
                existing += 1;
            }
            None => assert!(!seen.acked.contains_key(order), "acknowledged order o-{order} was lost"),
        }
    }
    let stock = server.record(&client, "inventory", "stock/bolt").await.unwrap();
    assert_eq!(stock["reserved"], existing, "reserved stock and reservations disagree: {stock}");
    assert_eq!(stock["available"].as_u64().unwrap() + existing, STOCK);

    // Retrying every request: the acknowledged ones replay their exact answer, the
    // others are applied now, and each order is held exactly once.
    for order in &seen.sent {
        let response = reserve(&server, &client, *order).await;
        assert_eq!(response.status(), 200);
        let replayed = response.headers()["idempotent-replayed"] == "true";
        let body = response.text().await.unwrap();
        if let Some(acked) = seen.acked.get(order) {
            assert!(replayed, "o-{order} ran again after being acknowledged");
            assert_eq!(&body, acked);
        }
    }
    let stock = server.record(&client, "inventory", "stock/bolt").await.unwrap();
    let sent = seen.sent.len() as u64;
    assert_eq!(stock, json!({"available": STOCK - sent, "reserved": sent}));
}

async fn reserve(server: &Server, client: &reqwest::Client, order: u64) -> reqwest::Response {
    let body = json!({"sku": "bolt", "qty": 1, "order": format!("o-{order}")});
    server.invoke(client, "inventory/reserve", &format!("reserve-{order}"), &body).send().await.unwrap()
}

/// Sends reservations of new orders until the server stops answering.
async fn reserve_until_refused(url: Arc<String>, next_order: Arc<AtomicU64>, seen: Arc<Mutex<Seen>>) {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    loop {
        let order = next_order.fetch_add(1, Ordering::SeqCst);
        seen.lock().unwrap().sent.push(order);
        let body = json!({"sku": "bolt", "qty": 1, "order": format!("o-{order}")});
        let sent = client
            .post(format!("{url}/v1/services/inventory/reserve"))
            .bearer_auth(ADMIN_TOKEN)
            .header("Idempotency-Key", format!("reserve-{order}"))
            .body(body.to_string())
            .send()
            .await;
        let Ok(response) = sent else { return };
        let status = response.status();
        let Ok(text) = response.text().await else { return };
        assert_eq!(status, 200, "o-{order}: {text}");
        let _: Value = serde_json::from_str(&text).unwrap();
        seen.lock().unwrap().acked.insert(order, text);
    }
}
