//! `wasaga demo`, the real binary, driven over HTTP.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};

use serde_json::{Value, json};

use crate::support::{Server, wasaga};

/// The demo on a free port with its data in `data`, and the URL of its card processor
/// (none with `--no-provider`); killed when dropped.
pub struct Demo(Child, pub String, pub Option<String>);

impl Demo {
    pub fn start(data: &Path, extra: &[&str]) -> Demo {
        let mut child = wasaga()
            .args(["demo", "--listen", "127.0.0.1:0", "--data"])
            .arg(data)
            .args(extra)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let line = lines.next().unwrap().unwrap();
        let url = line.trim().strip_prefix("listening on ").unwrap().to_owned();
        // The welcome's `payments` line names the processor.
        let processor = lines
            .map_while(Result::ok)
            .take(10)
            .find_map(|l| l.trim().strip_prefix("payments")?.trim().to_owned().into())
            .and_then(|l: String| {
                Some(l.strip_prefix("a card processor at ")?.split(' ').next()?.to_owned())
            });
        Demo(child, url, processor)
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn place(client: &reqwest::Client, url: &str, key: &str, input: Value) -> Value {
    let response = client
        .post(format!("{url}/v1/sagas/place-order?wait=20s"))
        .header("Idempotency-Key", key)
        .json(&input)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// The built-in store: seeded, an order completes and one is compensated, /metrics
/// counts them, the dashboard is served; started again on the same data it resumes
/// and seeds nothing twice.
#[tokio::test]
async fn the_demo_runs_the_store_and_resumes_on_its_data() {
    let data = tempfile::tempdir().unwrap();
    let client = Server::client();
    let stock = async |url: &str| -> Value {
        client
            .get(format!("{url}/v1/services/inventory/records/stock/lamp"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    };
    {
        let demo = Demo::start(data.path(), &[]);
        let url = &demo.1;
        let processor = demo.2.clone().expect("the demo runs a card processor");
        // The seed opens the last customer's account last, at the processor.
        for _ in 0..200 {
            if ledger(&processor).await["customers"]["poor-paul"] == 500 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert_eq!(ledger(&processor).await["customers"]["poor-paul"], 500, "seeded at the processor");
        assert_eq!(stock(url).await, json!({"available": 500, "reserved": 0}), "seeded");

        let ok = place(
            &client,
            url,
            "o-1",
            json!({"order": "o-1", "customer": "ada", "sku": "lamp", "qty": 2, "amount": 2500}),
        )
        .await;
        assert_eq!(ok["status"], "completed", "{ok}");
        let declined = place(
            &client,
            url,
            "o-2",
            json!({"order": "o-2", "customer": "poor-paul", "sku": "lamp", "qty": 1, "amount": 9900}),
        )
        .await;
        assert_eq!(declined["status"], "compensated", "{declined}");
        assert_eq!(stock(url).await, json!({"available": 498, "reserved": 2}));
        // The money moved at the processor: one charge, for the completed order.
        let money = ledger(&processor).await;
        let charges = money["charges"].as_array().unwrap();
        assert_eq!(charges.len(), 1, "{money}");
        assert_eq!((&charges[0]["order"], &charges[0]["amount"]), (&json!("o-1"), &json!(2500)));
        assert_eq!(money["customers"]["ada"], 10_000_000 - 2500);

        let metrics = client.get(format!("{url}/metrics")).send().await.unwrap().text().await.unwrap();
        assert!(metrics.contains("wasaga_sagas{status=\"completed\"} 1"), "{metrics}");
        assert!(metrics.contains("wasaga_sagas{status=\"compensated\"} 1"), "{metrics}");
        assert!(
            metrics.contains("wasaga_saga_seconds_count{saga=\"place-order\",status=\"completed\"} 1"),
            "{metrics}"
        );
        let page = client.get(format!("{url}/")).send().await.unwrap();
        assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
        assert!(page.text().await.unwrap().contains("Dead letters"), "the dashboard's page");
    }
    let demo = Demo::start(data.path(), &[]);
    let overview: Value =
        client.get(format!("{}/v1/overview", demo.1)).send().await.unwrap().json().await.unwrap();
    assert_eq!(overview["sagas"]["completed"], 1, "the sagas of the first run are still there");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(stock(&demo.1).await, json!({"available": 498, "reserved": 2}), "not seeded twice");
    // The processor's ledger is kept in the data directory too, whatever its new port.
    let money = ledger(demo.2.as_deref().unwrap()).await;
    assert_eq!(money["charges"].as_array().unwrap().len(), 1, "{money}");
    assert_eq!(money["customers"]["ada"], 10_000_000 - 2500);
    let ok = place(
        &client,
        &demo.1,
        "o-3",
        json!({"order": "o-3", "customer": "ada", "sku": "lamp", "qty": 1, "amount": 100}),
    )
    .await;
    assert_eq!(ok["status"], "completed", "charged through the processor's new address: {ok}");
}

async fn ledger(processor: &str) -> Value {
    reqwest::get(format!("{processor}/v1/ledger")).await.unwrap().json().await.unwrap()
}

/// `--traffic` generates orders; both outcomes appear.
#[tokio::test]
async fn demo_traffic_generates_completed_and_compensated_orders() {
    let data = tempfile::tempdir().unwrap();
    let demo = Demo::start(data.path(), &["--traffic", "50", "--declined-share", "0.5"]);
    let client = Server::client();
    for _ in 0..200 {
        let overview: Value =
            client.get(format!("{}/v1/overview", demo.1)).send().await.unwrap().json().await.unwrap();
        if overview["sagas"]["completed"].as_u64() > Some(3)
            && overview["sagas"]["compensated"].as_u64() > Some(3)
        {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the generated traffic did not both complete and compensate orders");
}

/// Without a token given, the demo makes up an admin token and prints it: operator
/// actions work with it, and are refused without it.
#[tokio::test]
async fn the_demo_makes_up_an_admin_token_and_prints_it() {
    let data = tempfile::tempdir().unwrap();
    let mut child = wasaga()
        .env_remove("WASAGA_ADMIN_TOKEN")
        .args(["demo", "--listen", "127.0.0.1:0", "--data"])
        .arg(data.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let url = lines.next().unwrap().unwrap().strip_prefix("listening on ").unwrap().to_owned();
    let token = lines
        .map(Result::unwrap)
        .find_map(|line| line.trim().strip_prefix("admin token").map(|t| t.trim().to_owned()))
        .expect("the welcome prints the admin token");
    let demo = Demo(child, url.clone(), None);
    assert_eq!(token.len(), 64, "{token}");
    let record = format!("{url}/v1/services/inventory/records/note/from-demo-test");
    let put = |token: Option<&str>| {
        let request = reqwest::Client::new().put(&record).header("If-None-Match", "*").body("1");
        match token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
        .send()
    };
    assert_eq!(put(None).await.unwrap().status(), 401);
    assert_eq!(put(Some(&token)).await.unwrap().status(), 201);
    drop(demo);
}

/// `--database`: the demo keeps its store in PostgreSQL; started again on the same
/// database (with a fresh data directory) it finds the store seeded and its sagas there.
#[tokio::test]
async fn the_demo_runs_on_postgres_and_resumes_on_it() {
    let database = wasaga::store::postgres::testing::scratch().await;
    let client = Server::client();
    let record = async |url: &str, path: &str| {
        let response = client.get(format!("{url}/v1/services/{path}")).send().await.unwrap();
        (response.status().as_u16(), response.json::<Value>().await.unwrap_or_default())
    };
    {
        let data = tempfile::tempdir().unwrap();
        let demo = Demo::start(data.path(), &["--database", &database]);
        // The seed opens the last customer's account last.
        for _ in 0..200 {
            if record(&demo.1, "payment/records/account/poor-paul").await.0 == 200 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let input = json!({"order": "o-1", "customer": "ada", "sku": "lamp", "qty": 2, "amount": 2500});
        let ok = place(&client, &demo.1, "o-1", input).await;
        assert_eq!(ok["status"], "completed", "{ok}");
    }
    let data = tempfile::tempdir().unwrap();
    let demo = Demo::start(data.path(), &["--database", &database]);
    let overview: Value =
        client.get(format!("{}/v1/overview", demo.1)).send().await.unwrap().json().await.unwrap();
    assert_eq!(overview["sagas"]["completed"], 1, "the first run's saga is in the database");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let stock = record(&demo.1, "inventory/records/stock/lamp").await.1;
    assert_eq!(stock, json!({"available": 498, "reserved": 2}), "not seeded twice");
}

/// With `--no-provider` the demo runs no card processor: the money is the payment
/// service's own records, and orders still complete.
#[tokio::test]
async fn without_a_provider_the_money_stays_in_the_payment_service() {
    let data = tempfile::tempdir().unwrap();
    let demo = Demo::start(data.path(), &["--no-provider"]);
    assert_eq!(demo.2, None, "no processor is announced");
    let client = Server::client();
    let account = async |customer: &str| -> Option<Value> {
        let response = client
            .get(format!("{}/v1/services/payment/records/account/{customer}", demo.1))
            .send()
            .await
            .unwrap();
        (response.status() == 200).then_some(response.json().await.unwrap())
    };
    for _ in 0..200 {
        if account("poor-paul").await.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let order = json!({"order": "o-1", "customer": "ada", "sku": "lamp", "qty": 1, "amount": 2500});
    assert_eq!(place(&client, &demo.1, "o-1", order).await["status"], "completed");
    assert_eq!(account("ada").await, Some(json!({"balance": 10_000_000 - 2500})));
}
