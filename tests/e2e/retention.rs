//! Retention through a real `wasaga serve` with retentions of a second: what is
//! finished and old is forgotten; what an operator or a guarantee still needs stays.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{SAGAS, Server, plugins_dir, seed_shop, start_saga, wait_settled};

const SHORT: &[&str] = &[
    "--idempotency-retention",
    "1s",
    "--saga-retention",
    "1s",
    "--event-retention",
    "1s",
    "--tombstone-retention",
    "1s",
    "--prune-interval",
    "200ms",
];

async fn get(client: &reqwest::Client, url: String) -> (u16, Value) {
    let response = client.get(url).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn echo(server: &Server, client: &reqwest::Client, op: &str, key: &str, body: Value) -> Value {
    let response = server.invoke(client, &format!("echo/{op}"), key, &body).send().await.unwrap();
    assert_eq!(response.status(), 200, "echo/{op}: {}", response.text().await.unwrap());
    response.json().await.unwrap()
}

/// With every retention at a second: completed and compensated sagas, delivered
/// events, expired keys and tombstones go; a stuck saga and a dead letter (with its
/// event) stay; a key used again after its record went is executed again; a record
/// created again after its tombstone went starts above its forgotten version.
#[tokio::test]
async fn finished_things_are_forgotten_and_what_is_needed_stays() {
    let plugins = plugins_dir(&["inventory", "payment", "order", "notification", "echo"]);
    let data = tempfile::tempdir().unwrap();
    let mut args = vec!["--sagas", SAGAS];
    args.extend_from_slice(SHORT);
    let mut server = Server::start_in(plugins.path(), data.path(), &args);
    server.keep(plugins, data);
    let client = Server::client();
    seed_shop(&server, &client, 10, 10_000).await;

    let order = |id: &str, customer: &str, extra: Value| {
        let mut input = json!({"order": id, "customer": customer, "sku": "lamp", "qty": 1, "amount": 100});
        input.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        input
    };
    let completed = start_saga(&server, &client, "s-1", &order("o-1", "ada", json!({}))).await;
    let compensated =
        start_saga(&server, &client, "s-2", &order("o-2", "poor", json!({"amount": 5_000}))).await;
    // The release fails on all its 3 attempts: stuck.
    let stuck_input = order("o-3", "poor", json!({"amount": 5_000, "release_transient_failures": 3}));
    let stuck = start_saga(&server, &client, "s-3", &stuck_input).await;
    for id in [&completed, &compensated, &stuck] {
        wait_settled(&server, &client, id).await;
    }
    // A choreographed order whose confirmation mail fails all 5 attempts: dead letter.
    let place = json!({"order": "o-4", "customer": "ada", "sku": "lamp", "qty": 1, "amount": 100,
                       "notification_transient_failures": 5});
    let response = server.invoke(&client, "order/place", "place-o-4", &place).send().await.unwrap();
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    // A record written twice (versions 1, 2), then deleted: its tombstone is version 3.
    echo(&server, &client, "put", "put-1", json!({"key": "k", "value": 1})).await;
    echo(&server, &client, "put", "put-2", json!({"key": "k", "value": 2, "expected": 1})).await;
    echo(&server, &client, "delete", "delete-k", json!({"key": "k", "expected": 2})).await;

    let saga_url = |id: &str| format!("{}/v1/sagas/{id}", server.url);
    let topics = |chain: &Value| -> Vec<String> {
        chain["events"].as_array().unwrap().iter().map(|e| e["topic"].as_str().unwrap().to_owned()).collect()
    };
    let chain_url = |correlation: &str| format!("{}/v1/events?correlation={correlation}", server.url);
    // Wait (up to 30 s) until everything old enough is forgotten.
    let mut left = String::new();
    for _ in 0..150 {
        let metrics =
            client.get(format!("{}/metrics", server.url)).send().await.unwrap().text().await.unwrap();
        let pruned = |kind: &str| metrics.contains(&format!("wasaga_pruned_total{{kind=\"{kind}\"}}"));
        let dead_chain = topics(&get(&client, chain_url("o-4")).await.1);
        let saga_chain = topics(&get(&client, chain_url("o-1")).await.1);
        let sagas =
            (get(&client, saga_url(&completed)).await.0, get(&client, saga_url(&compensated)).await.0);
        // The mail's five attempts take a while (backoffs): its dead letter must be there.
        let dead = get(&client, format!("{}/v1/events/dead", server.url)).await.1;
        if sagas == (404, 404)
            && dead.as_array().is_some_and(|d| d.len() == 1)
            && pruned("tombstones")
            && pruned("idempotency_records")
            && dead_chain == ["order-completed"]
            && saga_chain.is_empty()
        {
            left.clear();
            break;
        }
        left = format!(
            "sagas {sagas:?}, chain o-4 {dead_chain:?}, chain o-1 {saga_chain:?}, dead {dead}\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(left.is_empty(), "not forgotten after 30 s: {left}");
    assert!(
        client
            .get(format!("{}/metrics", server.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
            .contains("wasaga_pruned_total{kind=\"tombstones\"} 1"),
        "the one tombstone"
    );

    let (status, saga) = get(&client, saga_url(&stuck)).await;
    assert_eq!((status, saga["status"].as_str()), (200, Some("stuck")), "a stuck saga stays: {saga}");
    let (_, dead) = get(&client, format!("{}/v1/events/dead", server.url)).await;
    assert_eq!(dead.as_array().unwrap().len(), 1, "the dead letter stays, redeliverable: {dead}");

    // The key of the first put expired and went: the same key is a new call.
    let again =
        server.invoke(&client, "echo/put", "put-1", &json!({"key": "k", "value": 3})).send().await.unwrap();
    assert_eq!(again.headers()["idempotent-replayed"], "false");
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["version"], 4, "created again above its forgotten tombstone: {again}");
}

/// A saga must outlive the key that started it: a saga retention shorter than the
/// idempotency retention is refused at start, saying why.
#[test]
fn a_saga_retention_shorter_than_the_key_retention_is_refused() {
    let plugins = plugins_dir(&[]);
    let data = tempfile::tempdir().unwrap();
    let out = crate::support::wasaga()
        .args(["serve", "--listen", "127.0.0.1:0", "--plugins"])
        .arg(plugins.path())
        .arg("--data")
        .arg(data.path())
        .args(["--idempotency-retention", "2d", "--saga-retention", "1d"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("the saga retention (86400s) must be at least the idempotency retention (172800s)"),
        "{stderr}"
    );
}

/// `wasaga bench soak` drives sagas over HTTP against a server of its own and reports
/// a row per period, with sizes, and what retention forgot (here within seconds).
#[test]
fn the_soak_benchmark_reports_each_period() {
    let out = crate::support::wasaga()
        .args(["bench", "soak", "--duration", "3s", "--every", "1s", "--concurrency", "4", "--"])
        .args(SHORT)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let rows: Vec<Vec<&str>> = stdout
        .lines()
        .filter(|l| l.starts_with("| 0:"))
        .map(|l| l.trim_matches('|').split('|').map(str::trim).collect())
        .collect();
    assert_eq!(rows.len(), 3, "{stdout}");
    for row in &rows {
        let sagas: f64 = row[1].parse().unwrap();
        assert!(sagas > 0.0, "sagas finished in every period: {stdout}");
        assert_eq!(row[4], "0", "none failed: {stdout}");
        assert!(row[5].ends_with("MiB") && row[7].ends_with("MiB"), "{stdout}");
        assert!(row[8].parse::<u32>().unwrap() > 0, "open fds: {stdout}");
    }
    assert!(stdout.contains("retention forgot: "), "{stdout}");
}
