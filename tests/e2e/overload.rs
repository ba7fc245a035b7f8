//! Overload is backpressure, not failure: with every plugin instance busy, HTTP callers
//! get 503 with `Retry-After`, while saga steps and event deliveries wait for capacity
//! without spending their attempts.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{SAGAS, Server, plugins_dir, seed_shop, start_saga, wait_settled};

/// Three instances in the pool, and 24 clients keeping them busy with slow calls: the
/// clients that find no instance get 503 with `Retry-After: 1`. Twenty sagas and ten
/// choreographed orders run through it: every saga completes (none compensates, as a
/// failing step would after its three attempts) and every delivery is made (none dead,
/// as after five failed attempts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_instance_pool_delays_sagas_and_deliveries_but_fails_none() {
    let plugins = plugins_dir(&["echo", "order", "inventory", "payment", "notification"]);
    let data = tempfile::tempdir().unwrap();
    let args = ["--sagas", SAGAS, "--max-concurrent-calls", "3"];
    let server = Server::start_in(plugins.path(), data.path(), &args);
    let client = Server::client();
    seed_shop(&server, &client, 1_000, 1_000_000).await;

    let stop = Arc::new(AtomicBool::new(false));
    let (served, refused) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let burners: Vec<_> = (0..24)
        .map(|worker| {
            let (client, url, stop) = (client.clone(), server.url.clone(), stop.clone());
            let (served, refused) = (served.clone(), refused.clone());
            tokio::spawn(async move {
                for n in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let response = client
                        .post(format!("{url}/v1/services/echo/burn"))
                        .header("Idempotency-Key", format!("burn-{worker}-{n}"))
                        .body(r#"{"ms": 150}"#)
                        .send()
                        .await
                        .unwrap();
                    match response.status().as_u16() {
                        200 => served.fetch_add(1, Ordering::Relaxed),
                        503 => {
                            assert_eq!(response.headers()["retry-after"], "1");
                            let problem: Value = response.json().await.unwrap();
                            assert!(
                                problem["detail"].as_str().unwrap().contains("could not start"),
                                "{problem}"
                            );
                            tokio::time::sleep(Duration::from_millis(5)).await;
                            refused.fetch_add(1, Ordering::Relaxed)
                        }
                        other => panic!("a busy server answered {other}"),
                    };
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut sagas = Vec::new();
    for n in 0..20 {
        let input =
            json!({"order": format!("o-{n}"), "customer": "ada", "sku": "lamp", "qty": 1, "amount": 100});
        sagas.push(start_saga(&server, &client, &format!("order-{n}"), &input).await);
    }
    for n in 0..10 {
        let input =
            json!({"order": format!("c-{n}"), "customer": "ada", "sku": "lamp", "qty": 1, "amount": 100});
        let placed =
            server.invoke(&client, "order/place", &format!("place-{n}"), &input).send().await.unwrap();
        assert!(placed.status() == 200 || placed.status() == 503, "{}", placed.status());
        if placed.status() == 503 {
            // A client's call is refused when busy: it retries, with the same key.
            let again =
                async || server.invoke(&client, "order/place", &format!("place-{n}"), &input).send().await;
            let mut status = 503;
            for _ in 0..200 {
                status = again().await.unwrap().status().as_u16();
                if status == 200 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert_eq!(status, 200);
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    for burner in burners {
        burner.await.unwrap();
    }
    assert!(refused.load(Ordering::Relaxed) > 0, "the pool was never full: the test proves nothing");
    assert!(served.load(Ordering::Relaxed) > 0);

    for id in &sagas {
        let saga = wait_settled(&server, &client, id).await;
        assert_eq!(saga["status"], "completed", "{saga}");
    }
    for n in 0..10 {
        let order = format!("c-{n}");
        let mut status = Value::Null;
        for _ in 0..400 {
            status =
                server.record(&client, "notification", &format!("sent/{order}")).await.unwrap_or(Value::Null);
            if status == json!({"count": 1}) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(status, json!({"count": 1}), "{order} was confirmed once");
    }
    let dead: Value =
        client.get(format!("{}/v1/events/dead", server.url)).send().await.unwrap().json().await.unwrap();
    assert_eq!(dead, json!([]), "no delivery went dead for want of an instance");
}
