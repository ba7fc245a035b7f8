//! The attacks of "safe to expose", each performed against a real `wasaga serve`:
//! every test here failed on the host before the fix it names, and must keep failing
//! to break it. docs/security.md maps every route to who may call it and to these
//! tests.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::Server;

const SHOP: &[&str] = &["order", "inventory", "payment", "notification"];

/// Stock and two accounts, as an operator.
async fn seed(server: &Server, client: &reqwest::Client) {
    let calls = [
        ("inventory/restock", "restock-lamp", json!({"sku": "lamp", "qty": 10})),
        ("payment/open-account", "open-ada", json!({"customer": "ada", "balance": 10_000})),
        ("payment/open-account", "open-poor", json!({"customer": "poor", "balance": 100})),
    ];
    for (path, key, body) in calls {
        let response = server.invoke(client, path, key, &body).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}: {}", response.text().await.unwrap());
    }
}

async fn get(client: &reqwest::Client, url: String) -> Value {
    client.get(url).send().await.unwrap().json().await.unwrap()
}

/// Polls the saga until it is finished or stuck (at most 20 s).
async fn settled(server: &Server, client: &reqwest::Client, id: &str) -> Value {
    for _ in 0..400 {
        let saga = get(client, format!("{}/v1/sagas/{id}", server.url)).await;
        if ["completed", "compensated", "stuck"].contains(&saga["status"].as_str().unwrap()) {
            return saga;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("saga {id} did not settle");
}

/// Key hijack, saga: the key a stuck saga's retry will use (`saga/<id>/<step>/undo/
/// retry-1`) is sent first by a caller allowed to call the operation, with another
/// input. The saga's own key lives in a space of its own: the retry still releases the
/// stock and the saga ends compensated. (Before: the planted outcome refused the key,
/// and the saga stayed stuck.)
#[tokio::test]
async fn a_client_key_cannot_pre_empt_a_saga_step() {
    let server = Server::with_sagas(&[]);
    let client = Server::client();
    seed(&server, &client).await;
    let input = json!({"order": "o-1", "customer": "poor", "sku": "lamp", "qty": 2, "amount": 2_500,
                       "release_transient_failures": 3});
    let started = client
        .post(format!("{}/v1/sagas/place-order?wait=20s", server.url))
        .header("Idempotency-Key", "order-1")
        .json(&input)
        .send()
        .await
        .unwrap();
    let saga: Value = started.json().await.unwrap();
    assert_eq!(saga["status"], "stuck", "{saga}");
    let id = saga["id"].as_str().unwrap();

    let planted_key = format!("saga/{id}/reserve-stock/undo/retry-1");
    let planted = server.invoke(&client, "inventory/release", &planted_key, &json!({"order": "elsewhere"}));
    assert_eq!(planted.send().await.unwrap().status(), 200);

    let retried = client.post(format!("{}/v1/sagas/{id}/retry", server.url)).send().await.unwrap();
    assert_eq!(retried.status(), 202);
    let done = settled(&server, &client, id).await;
    assert_eq!(done["status"], "compensated", "{done}");
    assert_eq!(
        server.record(&client, "inventory", "stock/lamp").await.unwrap(),
        json!({"available": 10, "reserved": 0}),
        "the saga's own release ran"
    );
}

/// Key hijack, events: the keys the deliveries of the next events will use
/// (`event/<id>/<subscriber>`, ids are sequential) are sent first, with other inputs.
/// Deliveries keep their keys in a space of their own: the order flow completes. (Before:
/// each planted key refused its delivery until it went dead.)
#[tokio::test]
async fn a_client_key_cannot_pre_empt_an_event_delivery() {
    let server = Server::with_plugins(SHOP);
    let client = Server::client();
    seed(&server, &client).await;
    for id in 1..=8 {
        // Refused by the plugin (not an order), so the plant publishes no event of its own.
        let bogus = json!({"not": "an order"});
        for (path, subscriber) in
            [("inventory/reserve-placed", "inventory"), ("payment/charge-placed", "payment")]
        {
            let key = format!("event/{id}/{subscriber}");
            let response = server.invoke(&client, path, &key, &bogus).send().await.unwrap();
            assert_eq!(response.status(), 422, "planting {key}: {}", response.text().await.unwrap());
        }
    }
    let order = json!({"order": "o-2", "customer": "ada", "sku": "lamp", "qty": 1, "amount": 500});
    let placed = server.invoke(&client, "order/place", "place-o-2", &order).send().await.unwrap();
    assert_eq!(placed.status(), 200);
    for _ in 0..400 {
        if server.record(&client, "order", "order/o-2").await.unwrap()["status"] == "completed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(server.record(&client, "order", "order/o-2").await.unwrap()["status"], "completed");
    assert_eq!(server.record(&client, "payment", "account/ada").await.unwrap(), json!({"balance": 9_500}));
    let dead = get(&client, format!("{}/v1/events/dead", server.url)).await;
    assert_eq!(dead, json!([]), "no delivery went dead");
}
