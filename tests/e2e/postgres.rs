//! `wasaga serve --database postgres…`: the place-order saga through a real server on a
//! real PostgreSQL (the test server of `store::postgres_testing`: a private cluster, or
//! WASAGA_TEST_POSTGRES), its data kept across a restart, one host per database.

use std::io::Read;

use serde_json::{Value, json};
use wasaga::store::postgres_testing::{self, PrivateServer};

use crate::support::{SAGAS, Server, plugins_dir, seed_shop, start_saga, wait_settled, wasaga};

/// A server of the demo's services and sagas on the PostgreSQL schema `database`.
fn server_on(database: &str, plugins: &std::path::Path, data: &std::path::Path) -> Server {
    Server::start_in(plugins, data, &["--sagas", SAGAS, "--database", database])
}

/// Starts `place-order` for `customer` and waits for it to settle; returns the saga.
async fn place(server: &Server, client: &reqwest::Client, key: &str, order: &str, customer: &str) -> Value {
    let input = json!({"order": order, "customer": customer, "sku": "lamp", "qty": 2, "amount": 2_500});
    let id = start_saga(server, client, key, &input).await;
    wait_settled(server, client, &id).await
}

/// The saga completes and compensates on PostgreSQL as on SQLite; after a restart the
/// same store answers: the records, the saga by its key, the replay of a step's key.
#[tokio::test]
async fn sagas_run_on_postgres_and_outlive_a_restart() {
    let database = postgres_testing::scratch().await;
    let (plugins, data) =
        (plugins_dir(&["inventory", "payment", "order", "notification"]), tempfile::tempdir().unwrap());
    let mut server = server_on(&database, plugins.path(), data.path());
    let client = Server::client();
    seed_shop(&server, &client, 10, 10_000).await;

    let good = place(&server, &client, "order-1", "o-1", "ada").await;
    assert_eq!(good["status"], "completed", "{good}");
    let declined = place(&server, &client, "order-2", "o-2", "poor").await;
    assert_eq!(declined["status"], "compensated", "{declined}");
    assert_eq!(
        server.record(&client, "inventory", "stock/lamp").await.unwrap(),
        json!({"available": 8, "reserved": 2})
    );

    server.kill();
    let server = server_on(&database, plugins.path(), data.path());
    assert_eq!(server.record(&client, "payment", "account/ada").await.unwrap(), json!({"balance": 7_500}));
    let again = place(&server, &client, "order-1", "o-1", "ada").await;
    assert_eq!(again["id"], good["id"], "the same key finds the same saga");
    assert_eq!(again["status"], "completed");
    assert_eq!(
        server.record(&client, "inventory", "stock/lamp").await.unwrap(),
        json!({"available": 8, "reserved": 2})
    );
}

/// Until sagas and deliveries are shared by leases, a second host on the same database
/// is refused at start with the reason, and the first goes on serving.
#[tokio::test]
async fn a_second_host_on_the_same_database_is_refused() {
    let database = postgres_testing::scratch().await;
    let (plugins, data) = (plugins_dir(&["inventory"]), tempfile::tempdir().unwrap());
    let first = Server::start_in(plugins.path(), data.path(), &["--database", &database]);
    let other_data = tempfile::tempdir().unwrap();
    let mut second = wasaga()
        .args(["serve", "--listen", "127.0.0.1:0", "--plugins"])
        .arg(plugins.path())
        .arg("--data")
        .arg(other_data.path())
        .args(["--database", &database])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = second.wait().unwrap();
    let mut stderr = String::new();
    second.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert!(!status.success());
    assert!(stderr.contains("another wasaga host uses this database"), "{stderr}");
    let health = reqwest::get(format!("{}/readyz", first.url)).await.unwrap();
    assert_eq!(health.status(), 200, "the first host still serves");
}

/// A connection string that is not one is refused at start, saying so.
#[test]
fn a_bad_connection_string_is_refused() {
    let plugins = plugins_dir(&["inventory"]);
    let output = wasaga()
        .args(["serve", "--listen", "127.0.0.1:0", "--plugins"])
        .arg(plugins.path())
        .args(["--database", "postgres://wasaga@[::1/nope"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("not a PostgreSQL connection string"), "{stderr}");
}

/// PostgreSQL stopped under a serving host: writes answer 503 and `/readyz` says why
/// while it is down; once it is back the host serves again by itself, what was
/// acknowledged before is there, and it holds the one-host lock again (a server of
/// its own: the other tests share one).
#[tokio::test]
async fn a_database_restart_is_weathered() {
    // Blocking calls of a few hundred milliseconds: the host under test is a process.
    let database = PrivateServer::start().unwrap();
    let (plugins, data) = (plugins_dir(&["inventory"]), tempfile::tempdir().unwrap());
    let server = Server::start_in(plugins.path(), data.path(), &["--database", &database.url()]);
    let client = Server::client();
    let restock = async |key: &str| {
        let body = json!({"sku": "lamp", "qty": 5});
        server.invoke(&client, "inventory/restock", key, &body).send().await.unwrap().status().as_u16()
    };
    let readyz = async || {
        let response = client.get(format!("{}/readyz", server.url)).send().await.unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    };
    assert_eq!(restock("before").await, 200);

    database.stop().unwrap();
    assert_eq!(restock("while-down").await, 503, "a write while the database is down");
    let mut down = (0, String::new());
    for _ in 0..100 {
        down = readyz().await;
        if down.0 == 503 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(down.0, 503, "{down:?}");
    assert!(down.1.contains("PostgreSQL"), "/readyz says why: {}", down.1);

    database.launch().unwrap();
    let mut back = 0;
    for _ in 0..100 {
        back = restock("after").await;
        if back == 200 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(back, 200, "writes are taken again");
    assert_eq!(readyz().await.0, 200);
    assert_eq!(
        server.record(&client, "inventory", "stock/lamp").await.unwrap(),
        json!({"available": 10, "reserved": 0})
    );

    // The one-host lock went with the old connections: the host took it again.
    let other_data = tempfile::tempdir().unwrap();
    let second = wasaga()
        .args(["serve", "--listen", "127.0.0.1:0", "--plugins"])
        .arg(plugins.path())
        .arg("--data")
        .arg(other_data.path())
        .args(["--database", &database.url()])
        .output()
        .unwrap();
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("another wasaga host uses this database"), "{stderr}");
}
