//! `wasaga serve --database postgres…`: the place-order saga through a real server on a
//! real PostgreSQL (the test server of `store::postgres_testing`: a private cluster, or
//! WASAGA_TEST_POSTGRES), its data kept across a restart, and several hosts on one
//! database: keys and sagas shared, a paused host's sagas taken over and fenced, plugin
//! uploads and removals followed.

use serde_json::{Value, json};
use wasaga::store::postgres::testing::{self as postgres_testing, PrivateServer};

use crate::support::{SAGAS, Server, guest, plugins_dir, seed_shop, start_saga, wait_settled, wasaga};

/// A server of the demo's services and sagas on the PostgreSQL schema `database`.
fn server_on(database: &str, plugins: &std::path::Path, data: &std::path::Path) -> Server {
    Server::start_in(plugins, data, &["--sagas", SAGAS, "--database", database])
}

/// A server of `echo` alone on the PostgreSQL schema `database`, with directories of
/// its own.
fn echo_host(database: &str) -> Server {
    let (plugins, data) = (plugins_dir(&["echo"]), tempfile::tempdir().unwrap());
    let mut server = Server::start_in(plugins.path(), data.path(), &["--database", database]);
    server.keep(plugins, data);
    server
}

/// A sagas directory with the demo's `place-order`, whose last step (the confirmation
/// mail) retries after a random wait of up to `backoff`.
fn sagas_with_mail_retry_after(backoff: &str) -> tempfile::TempDir {
    let sagas = tempfile::tempdir().unwrap();
    let definition = std::fs::read_to_string(format!("{SAGAS}/place-order.toml")).unwrap()
        + &format!(
            "retry = {{ max_attempts = 5, initial_backoff = \"{backoff}\", max_backoff = \"{backoff}\" }}\n"
        );
    std::fs::write(sagas.path().join("place-order.toml"), definition).unwrap();
    sagas
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

/// The same idempotency key sent to two hosts at once runs once: for each of 40 keys,
/// a restock of one lamp goes to both hosts together; both answer the same, and the
/// stock grew by exactly 40. A saga started on one host is found, by id and by its key,
/// on the other.
#[tokio::test]
async fn two_hosts_share_keys_and_sagas() {
    let database = postgres_testing::scratch().await;
    let plugins = plugins_dir(&["inventory", "payment", "order", "notification"]);
    let (data_a, data_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = server_on(&database, plugins.path(), data_a.path());
    let b = server_on(&database, plugins.path(), data_b.path());
    let client = Server::client();
    seed_shop(&a, &client, 10, 10_000).await;

    for i in 0..40 {
        let (key, body) = (format!("restock-{i}"), json!({"sku": "lamp", "qty": 1}));
        let (on_a, on_b) = tokio::join!(
            a.invoke(&client, "inventory/restock", &key, &body).send(),
            b.invoke(&client, "inventory/restock", &key, &body).send()
        );
        let (on_a, on_b) = (on_a.unwrap(), on_b.unwrap());
        assert_eq!((on_a.status().as_u16(), on_b.status().as_u16()), (200, 200), "{key}");
        assert_eq!(on_a.text().await.unwrap(), on_b.text().await.unwrap(), "{key}: one outcome, replayed");
    }
    assert_eq!(
        b.record(&client, "inventory", "stock/lamp").await.unwrap(),
        json!({"available": 50, "reserved": 0}),
        "10 seeded + 40 restocks, each once"
    );

    let on_a = place(&a, &client, "order-1", "o-1", "ada").await;
    assert_eq!(on_a["status"], "completed", "{on_a}");
    let on_b = place(&b, &client, "order-1", "o-1", "ada").await;
    assert_eq!(on_b["id"], on_a["id"], "the key finds the same saga on the other host");
    assert_eq!(b.record(&client, "payment", "account/ada").await.unwrap(), json!({"balance": 7_500}));
}

/// Each host keeps the records its invocations read and wrote in memory, and another
/// host's write makes them stale: a call that reads one stale record and one fresh one
/// sees them disagree. A failure commits nothing, so nothing would check those reads:
/// the host runs such a call again on a snapshot, and answers what that run answers.
#[tokio::test]
async fn a_call_that_failed_on_a_stale_read_runs_again_on_a_snapshot() {
    let database = postgres_testing::scratch().await;
    let (a, b) = (echo_host(&database), echo_host(&database));
    let client = Server::client();
    let call = async |server: &Server, operation: &str, key: &str, body: Value| {
        let response = server.invoke(&client, &format!("echo/{operation}"), key, &body).send().await.unwrap();
        (response.status().as_u16(), response.json::<Value>().await.unwrap())
    };
    assert_eq!(call(&a, "set", "a-x", json!({"key": "x", "value": 1})).await.0, 200, "x = 1, kept by a");
    assert_eq!(
        call(&b, "set", "b-x", json!({"key": "x", "value": 2})).await.0,
        200,
        "x = 2: a's copy is stale"
    );
    assert_eq!(
        call(&b, "set", "b-y", json!({"key": "y", "value": 2})).await.0,
        200,
        "y = 2, only in the database"
    );

    let (status, body) = call(&a, "agree", "a-agree", json!({"keys": ["x", "y"]})).await;
    assert_eq!((status, &body["value"]), (200, &json!(2)), "x and y agree in the database: {body}");

    assert_eq!(call(&b, "set", "b-y3", json!({"key": "y", "value": 3})).await.0, 200);
    let (status, body) = call(&a, "agree", "a-disagree", json!({"keys": ["x", "y"]})).await;
    assert_eq!(status, 503, "records that do disagree still fail: {body}");
    assert!(body["detail"].as_str().unwrap().contains("the records disagree"), "{body}");
}

/// A host paused (SIGSTOP) past its lease loses its sagas to the other host, which
/// finishes them while it is stopped; resumed (SIGCONT), the paused host neither
/// advances them nor applies any step again: its updates are fenced by version and
/// owner. Each saga's notification step fails once and waits up to 3 s before its
/// retry, so the sagas are in flight when the host stops.
#[tokio::test]
async fn a_paused_host_loses_its_sagas_and_cannot_touch_them_after() {
    const SAGAS_TO_RUN: usize = 20;
    let database = postgres_testing::scratch().await;
    let plugins = plugins_dir(&["inventory", "payment", "order", "notification"]);
    let sagas = sagas_with_mail_retry_after("3s");
    let (data_a, data_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let args = ["--sagas", sagas.path().to_str().unwrap(), "--database", &database, "--host-lease", "1s"];
    let a = Server::start_in(plugins.path(), data_a.path(), &args);
    let b = Server::start_in(plugins.path(), data_b.path(), &args);
    let client = Server::client();
    seed_shop(&a, &client, 100, 1_000_000).await;

    let mut ids = Vec::new();
    for i in 0..SAGAS_TO_RUN {
        let input = json!({"order": format!("o-{i}"), "customer": "ada", "sku": "lamp", "qty": 1,
                           "amount": 100, "notification_transient_failures": 1});
        ids.push(start_saga(&a, &client, &format!("order-{i}"), &input).await);
    }
    signal(&a, "STOP");
    // Where each saga was when the host stopped (within its lease: still its own).
    let mut at_stop: Vec<Value> = Vec::new();
    for id in &ids {
        at_stop
            .push(client.get(format!("{}/v1/sagas/{id}", b.url)).send().await.unwrap().json().await.unwrap());
    }
    let mut finished = Vec::new();
    for id in &ids {
        let saga = wait_settled(&b, &client, id).await;
        assert_eq!(
            saga["status"], "completed",
            "finished by the other host while this one is stopped: {saga}"
        );
        finished.push(saga);
    }
    let stock = b.record(&client, "inventory", "stock/lamp").await.unwrap();
    let balance = b.record(&client, "payment", "account/ada").await.unwrap();

    signal(&a, "CONT");
    // Long enough for every stopped driver to wake from its backoff and try its step.
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    let mut taken_over = 0;
    for (i, (id, before)) in ids.iter().zip(&finished).enumerate() {
        let after: Value =
            client.get(format!("{}/v1/sagas/{id}", b.url)).send().await.unwrap().json().await.unwrap();
        assert_eq!(&after, before, "saga {id} did not move after the resume");
        if at_stop[i]["status"] == "running" {
            assert_ne!(after["host"], at_stop[i]["host"], "saga {id} was running when its host stopped");
            taken_over += 1;
        }
        let sent = b.record(&client, "notification", &format!("sent/o-{i}")).await;
        assert_eq!(sent, Some(json!({"count": 1})), "o-{i} notified exactly once");
    }
    assert!(taken_over >= SAGAS_TO_RUN / 2, "most sagas were in flight when the host stopped: {taken_over}");
    eprintln!("{taken_over} of {SAGAS_TO_RUN} sagas taken over from the paused host");
    assert_eq!(b.record(&client, "inventory", "stock/lamp").await.unwrap(), stock, "nothing reserved again");
    assert_eq!(b.record(&client, "payment", "account/ada").await.unwrap(), balance, "nothing charged again");
    assert_eq!(stock, json!({"available": 100 - SAGAS_TO_RUN, "reserved": SAGAS_TO_RUN}));
    assert_eq!(balance, json!({"balance": 1_000_000 - 100 * SAGAS_TO_RUN as i64}));
}

/// An upload through one host serves on the other within a few seconds, and so does a
/// removal; the removal outlives a restart (the directory's unchanged file does not serve
/// again), and an upload after it serves everywhere again.
#[tokio::test]
async fn uploads_and_removals_through_one_host_reach_the_others() {
    let database = postgres_testing::scratch().await;
    let plugins = plugins_dir(&[]);
    std::fs::copy(guest("hello-v1"), plugins.path().join("hello.wasm")).unwrap();
    let (data_a, data_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let args = ["--database", database.as_str()];
    let mut a = Server::start_in(plugins.path(), data_a.path(), &args);
    let b = Server::start_in(plugins.path(), data_b.path(), &args);
    let client = Server::client();
    let greet = async |server: &Server, key: &str| {
        let response = server.invoke(&client, "hello/greet", key, &json!({})).send().await.unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    };
    // How long until `server` answers the status with a body containing the text; at
    // most 10 s (a host hears of a change at once, and polls every 2 s without hints).
    let reached = async |server: &Server, expected: (u16, &str)| {
        let started = std::time::Instant::now();
        for n in 0.. {
            let got = greet(server, &format!("probe-{}-{n}", started.elapsed().as_nanos())).await;
            if got.0 == expected.0 && got.1.contains(expected.1) {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < std::time::Duration::from_secs(10),
                "still {got:?}, not {expected:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        unreachable!()
    };
    assert_eq!(greet(&b, "before").await, (200, "{\"version\":1}".into()));

    let v2 = std::fs::read(guest("hello-v2")).unwrap();
    let pushed = client.put(format!("{}/v1/plugins/hello", a.url)).body(v2).send().await.unwrap();
    assert_eq!(pushed.status(), 200);
    let upload_took = reached(&b, (200, "{\"version\":2}")).await;

    let removed = client.delete(format!("{}/v1/plugins/hello", b.url)).send().await.unwrap();
    assert_eq!(removed.status(), 204);
    let removal_took = reached(&a, (404, "no service `hello` is loaded")).await;
    eprintln!("an upload reached the other host in {upload_took:?}, a removal in {removal_took:?}");

    a.kill();
    let a = Server::start_in(plugins.path(), data_a.path(), &args);
    assert_eq!(greet(&a, "after-restart").await.0, 404, "the removal outlives a restart");

    let v1 = std::fs::read(guest("hello-v1")).unwrap();
    let pushed = client.put(format!("{}/v1/plugins/hello", a.url)).body(v1).send().await.unwrap();
    assert_eq!(pushed.status(), 201, "a new service again");
    reached(&b, (200, "{\"version\":1}")).await;
}

/// An upload one host keeps but another refuses (it would break a saga definition
/// there) stays refused on that host after a restart: the version serving before
/// serves still, and the definition still loads. (Before, a restart applied every kept
/// upload unchecked: `inventory` without `release` served, and `place-order` was
/// refused at load.)
#[tokio::test]
async fn an_upload_a_host_refused_stays_refused_after_its_restart() {
    let database = postgres_testing::scratch().await;
    let shop = plugins_dir(&["inventory", "payment", "order", "notification"]);
    let (data_a, data_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Server::start_in(shop.path(), data_a.path(), &["--database", database.as_str()]);
    let with_sagas = ["--database", database.as_str(), "--sagas", crate::support::SAGAS];
    let mut b = Server::start_in(shop.path(), data_b.path(), &with_sagas);
    let client = Server::client();
    let state = async |server: &Server| -> Value {
        client.get(format!("{}/v1/plugins", server.url)).send().await.unwrap().json().await.unwrap()
    };
    let digest = |list: &Value| {
        list["plugins"].as_array().unwrap().iter().find(|p| p["service"] == "inventory").unwrap()["digest"]
            .clone()
    };
    let refusal = |list: &Value| {
        list["refused"].as_array().unwrap().iter().find(|r| r["file"] == "upload:inventory").cloned()
    };
    let serving = digest(&state(&b).await);

    let old = std::fs::read(guest("old-inventory")).unwrap();
    let pushed = client.put(format!("{}/v1/plugins/inventory", a.url)).body(old).send().await.unwrap();
    assert_eq!(pushed.status(), 200, "host A has no saga that needs `release`");
    let mut refused = None;
    for _ in 0..200 {
        refused = refusal(&state(&b).await);
        if refused.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let refused = refused.expect("host B refuses the upload");
    assert!(refused["error"].as_str().unwrap().contains("needs operation `release`"), "{refused}");

    b.kill();
    let b = Server::start_in(shop.path(), data_b.path(), &with_sagas);
    let after = state(&b).await;
    assert_eq!(digest(&after), serving, "the version B served before serves after its restart");
    let refused = refusal(&after).expect("the refusal is said again");
    assert!(refused["error"].as_str().unwrap().contains("needs operation `release`"), "{refused}");
    let started = client
        .post(format!("{}/v1/sagas/place-order", b.url))
        .header("Idempotency-Key", "after-restart")
        .json(&json!({"order": "o-1", "customer": "c", "sku": "s", "qty": 1, "amount": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(started.status(), 202, "place-order still loads on B: {}", started.text().await.unwrap());
}

fn signal(server: &Server, signal: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(server.child.id().to_string())
        .status();
    assert!(status.unwrap().success(), "kill -{signal}");
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
/// acknowledged before is there (a server of its own: the other tests share one).
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
}

/// PostgreSQL restarted under two hosts running sagas: while it is down both hosts
/// refuse writes with 503 and say why in `/readyz`; clients that retry with their key
/// (on either host) see every saga finish once it is back; nothing acknowledged is lost
/// and nothing applied twice (the plugins' records add up). The hosts' leases (1 s) run
/// out during the outage, so after it each host may claim the other's sagas while their
/// drivers still run: the fence keeps that to one driver per step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restart_under_load_loses_nothing_on_any_host() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::time::Duration;

    const CLIENTS: usize = 8;
    let database = PrivateServer::start().unwrap();
    let url = database.url();
    let plugins = plugins_dir(&["inventory", "payment", "order", "notification"]);
    let (data_a, data_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let args = ["--sagas", SAGAS, "--database", url.as_str(), "--host-lease", "1s"];
    let hosts = Arc::new([
        Server::start_in(plugins.path(), data_a.path(), &args),
        Server::start_in(plugins.path(), data_b.path(), &args),
    ]);
    let client = Server::client();
    seed_shop(&hosts[0], &client, 100_000, 100_000_000).await;

    let (stop, refused) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|worker| {
            let (hosts, stop, refused, client) =
                (hosts.clone(), stop.clone(), refused.clone(), client.clone());
            tokio::spawn(async move {
                let mut orders = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    let order = format!("o-{worker}-{}", orders.len());
                    let input =
                        json!({"order": order, "customer": "ada", "sku": "lamp", "qty": 1, "amount": 100});
                    // Until the saga is over, on one host then the other, with its key.
                    for attempt in 0.. {
                        let host = &hosts[(orders.len() + attempt) % 2];
                        let sent = client
                            .post(format!("{}/v1/sagas/place-order?wait=5s", host.url))
                            .header("Idempotency-Key", format!("key-{order}"))
                            .json(&input)
                            .send()
                            .await;
                        let answer = match sent {
                            Ok(response) => (response.status().as_u16(), response.json::<Value>().await.ok()),
                            Err(_) => (0, None),
                        };
                        if answer.0 != 200 {
                            refused.fetch_add(1, Ordering::Relaxed);
                        }
                        if let (200, Some(saga)) = &answer {
                            assert_eq!(saga["status"], "completed", "{saga}");
                            break;
                        }
                        assert!(attempt < 600, "{order} never finished: {answer:?}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    orders.push(order);
                }
                orders
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_millis(1500)).await;
    database.stop().unwrap();
    for host in hosts.iter() {
        // A write first: a host whose own work is all waiting finds the outage by it.
        let body = json!({"sku": "probe", "qty": 1});
        let write = host.invoke(&client, "inventory/restock", "probe", &body).send().await.unwrap();
        assert_eq!(write.status(), 503, "a write while the database is down");
        let mut said = String::new();
        for _ in 0..100 {
            let response = client.get(format!("{}/readyz", host.url)).send().await.unwrap();
            if response.status() == 503 {
                said = response.text().await.unwrap();
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            said.contains("PostgreSQL"),
            "each host's /readyz says why while the database is down: {said:?}"
        );
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    database.launch().unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::SeqCst);
    let mut orders = Vec::new();
    for c in clients {
        orders.extend(c.await.unwrap());
    }
    let refused = refused.load(Ordering::Relaxed);
    eprintln!("{} sagas across a database restart; {refused} answers other than 200 meanwhile", orders.len());
    for host in hosts.iter() {
        assert_eq!(client.get(format!("{}/readyz", host.url)).send().await.unwrap().status(), 200);
    }

    let n = orders.len() as i64;
    let b = &hosts[1];
    assert_eq!(
        b.record(&client, "inventory", "stock/lamp").await.unwrap(),
        json!({"available": 100_000 - n, "reserved": n}),
        "each order reserved once"
    );
    assert_eq!(
        b.record(&client, "payment", "account/ada").await.unwrap(),
        json!({"balance": 100_000_000 - 100 * n}),
        "each order charged once"
    );
    for order in &orders {
        let sent = b.record(&client, "notification", &format!("sent/{order}")).await;
        assert_eq!(sent, Some(json!({"count": 1})), "{order} confirmed exactly once");
    }
}

/// A SQLite host's store moved to PostgreSQL with `wasaga export` and `wasaga import`:
/// the host started on the database serves the same records and sagas, replays a key
/// as the SQLite host would have, and finishes the saga the SQLite host was killed in
/// the middle of (its owner is no host there, so it is taken over).
#[tokio::test]
async fn a_sqlite_store_moves_to_postgres() {
    let database = postgres_testing::scratch().await;
    let plugins = plugins_dir(&["inventory", "payment", "order", "notification"]);
    // The confirmation mail's retry waits up to an hour: saga 2 is left unfinished.
    let sagas = sagas_with_mail_retry_after("1h");
    let sagas_dir = sagas.path().to_str().unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut sqlite = Server::start_in(plugins.path(), data.path(), &["--sagas", sagas_dir]);
    let client = Server::client();
    seed_shop(&sqlite, &client, 10, 10_000).await;
    let done = place(&sqlite, &client, "order-1", "o-1", "ada").await;
    assert_eq!(done["status"], "completed", "{done}");
    let input = json!({"order": "o-2", "customer": "ada", "sku": "lamp", "qty": 1, "amount": 100,
                       "notification_transient_failures": 1});
    let unfinished = start_saga(&sqlite, &client, "order-2", &input).await;
    for _ in 0..100 {
        if sqlite.record(&client, "order", "order/o-2").await.is_some_and(|o| o["status"] == "completed") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // The mail's first attempt follows the order's completion at once.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let stock = sqlite.record(&client, "inventory", "stock/lamp").await.unwrap();
    let at_kill: Value = client
        .get(format!("{}/v1/sagas/{unfinished}", sqlite.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(at_kill["status"], "running", "saga 2 waits for its mail's retry: {at_kill}");
    sqlite.kill();

    let file = data.path().join("export.jsonl");
    let exported =
        wasaga().args(["export", "--data"]).arg(data.path()).arg("--output").arg(&file).output().unwrap();
    assert!(exported.status.success(), "{}", String::from_utf8_lossy(&exported.stderr));
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&file).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "the export holds every record: its owner's only");
    let imported = wasaga().args(["import", "--database", &database, "--input"]).arg(&file).output().unwrap();
    let said = String::from_utf8_lossy(&imported.stderr);
    assert!(
        imported.status.success()
            && said.contains("imported into the PostgreSQL database: ")
            && said.contains(" 2 sagas"),
        "{said}"
    );

    let fresh = tempfile::tempdir().unwrap();
    let postgres =
        Server::start_in(plugins.path(), fresh.path(), &["--sagas", sagas_dir, "--database", &database]);
    assert_eq!(postgres.record(&client, "inventory", "stock/lamp").await.unwrap(), stock);
    let again = client
        .post(format!("{}/v1/sagas/place-order", postgres.url))
        .header("Idempotency-Key", "order-1")
        .json(&json!({"order": "o-1", "customer": "ada", "sku": "lamp", "qty": 2, "amount": 2_500}))
        .send()
        .await
        .unwrap();
    let again: Value = again.json().await.unwrap();
    assert_eq!(
        (&again["id"], &again["status"]),
        (&done["id"], &done["status"]),
        "the key finds the same saga"
    );
    let finished = wait_settled(&postgres, &client, &unfinished).await;
    assert_eq!(finished["status"], "completed", "the unfinished saga was taken over: {finished}");
    assert_eq!(postgres.record(&client, "notification", "sent/o-2").await, Some(json!({"count": 1})));
    let restock = postgres
        .invoke(&client, "inventory/restock", "restock-lamp", &json!({"sku": "lamp", "qty": 10}))
        .send()
        .await
        .unwrap();
    assert_eq!(restock.status(), 200, "the seed's key replays");
    let after = postgres.record(&client, "inventory", "stock/lamp").await.unwrap();
    assert_eq!(after["available"], stock["available"], "and changes nothing");
}

/// Events published through two hosts at once, on four chains: only the leader
/// dispatches, each event reaches its subscriber once, and within a chain in the order
/// of the events' ids, which is their commit order across hosts (the subscriber's
/// journal of each chain is exactly the chain's events, in order).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_published_on_both_hosts_are_delivered_once_and_in_order() {
    let database = postgres_testing::scratch().await;
    let (a, b) = (echo_host(&database), echo_host(&database));
    crate::events::journals_are_delivered_once_in_order(&[&a, &b]).await;
}

/// Two hosts with the same alert webhook: a saga that gets stuck on one of them alerts
/// once, not once per host (only the host that drives a saga raises its alerts).
#[tokio::test]
async fn a_stuck_saga_alerts_once_not_once_per_host() {
    let database = postgres_testing::scratch().await;
    let (hook, received) = crate::support::alert_receiver().await;
    let plugins = plugins_dir(&["inventory", "payment", "order", "notification"]);
    let (data_a, data_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let args = ["--sagas", SAGAS, "--database", database.as_str(), "--alert-webhook", hook.as_str()];
    let a = Server::start_in(plugins.path(), data_a.path(), &args);
    let _b = Server::start_in(plugins.path(), data_b.path(), &args);
    let client = Server::client();
    seed_shop(&a, &client, 10, 10_000).await;
    let input = json!({"order": "o-stuck", "customer": "poor", "sku": "lamp", "qty": 2, "amount": 2_500,
                       "release_transient_failures": 3});
    let id = start_saga(&a, &client, "order-stuck", &input).await;
    assert_eq!(wait_settled(&a, &client, &id).await["status"], "stuck");
    // Time for a second alert to arrive, if either host were to send one: the first
    // comes within milliseconds, and each host beats (and claims) at least once.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let alerts = received.lock().unwrap().clone();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!((&alerts[0]["kind"], &alerts[0]["saga_id"]), (&json!("saga_stuck"), &json!(id)));
}

/// Between a host and its database, a TCP proxy that, once armed, forwards the next
/// `COMMIT` and then cuts that connection before the server's answer comes back: the
/// lost answer of a failover or a network cut, at the worst moment.
struct CommitCutter {
    port: u16,
    armed: std::sync::Arc<std::sync::atomic::AtomicBool>,
    cuts: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl CommitCutter {
    /// Listens on loopback and forwards to the Unix socket of the server in `dir`.
    async fn start(dir: std::path::PathBuf) -> CommitCutter {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (armed, cuts) =
            (std::sync::Arc::new(AtomicBool::new(false)), std::sync::Arc::new(AtomicU64::new(0)));
        let (arm, count) = (armed.clone(), cuts.clone());
        tokio::spawn(async move {
            loop {
                let (client, _) = listener.accept().await.unwrap();
                let server = tokio::net::UnixStream::connect(dir.join(".s.PGSQL.5432")).await.unwrap();
                let (mut from_client, mut to_client) = client.into_split();
                let (mut from_server, mut to_server) = server.into_split();
                let severed = std::sync::Arc::new(AtomicBool::new(false));
                let (cut, arm, count) = (severed.clone(), arm.clone(), count.clone());
                tokio::spawn(async move {
                    let mut buffer = vec![0; 64 << 10];
                    while let Ok(n @ 1..) = from_client.read(&mut buffer).await {
                        let chunk = &buffer[..n];
                        // A simple query `COMMIT`: 'Q', its length, the text and a NUL.
                        let commit = chunk.windows(7).any(|w| w == b"COMMIT\0");
                        if commit && arm.swap(false, Ordering::SeqCst) {
                            cut.store(true, Ordering::SeqCst);
                            count.fetch_add(1, Ordering::SeqCst);
                        }
                        if to_server.write_all(chunk).await.is_err() {
                            break;
                        }
                    }
                });
                tokio::spawn(async move {
                    let mut buffer = vec![0; 64 << 10];
                    while let Ok(n @ 1..) = from_server.read(&mut buffer).await {
                        // Once severed, nothing more reaches the client, and it is cut.
                        if severed.load(Ordering::SeqCst) || to_client.write_all(&buffer[..n]).await.is_err()
                        {
                            break;
                        }
                    }
                });
            }
        });
        CommitCutter { port, armed, cuts }
    }
}

/// The connection breaks right after a batch's `COMMIT` is sent, before its answer: the
/// host asks the server (on a new connection) whether that transaction committed, and
/// answers the caller with the truth: here 200, the restock applied once, and its key
/// replays it. (Before: 503 for a write that had committed, and a caller that did not
/// retry never learned it.)
// Two threads: starting the server blocks one, and the proxy must run meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_whose_answer_is_lost_is_answered_as_it_went() {
    use std::sync::atomic::Ordering;
    let database = PrivateServer::start().unwrap();
    let dir = database.url().split_whitespace().find_map(|kv| kv.strip_prefix("host=")).unwrap().to_owned();
    let cutter = CommitCutter::start(dir.into()).await;
    let url = format!("host=127.0.0.1 port={} user=postgres dbname=postgres", cutter.port);
    let (plugins, data) = (plugins_dir(&["inventory"]), tempfile::tempdir().unwrap());
    let server = Server::start_in(plugins.path(), data.path(), &["--database", &url]);
    let client = Server::client();
    let restock = async |key: &str| {
        let body = json!({"sku": "lamp", "qty": 5});
        let response = server.invoke(&client, "inventory/restock", key, &body).send().await.unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    };
    assert_eq!(restock("before").await.0, 200);

    cutter.armed.store(true, Ordering::SeqCst);
    let (status, body) = restock("cut").await;
    assert_eq!(cutter.cuts.load(Ordering::SeqCst), 1, "the COMMIT's answer was cut off");
    assert_eq!(status, 200, "the caller learns that its write committed: {body}");
    assert_eq!(
        server.record(&client, "inventory", "stock/lamp").await.unwrap(),
        json!({"available": 10, "reserved": 0})
    );
    assert_eq!(restock("cut").await, (200, body), "the key replays the same answer");
    assert_eq!(
        server.record(&client, "inventory", "stock/lamp").await.unwrap(),
        json!({"available": 10, "reserved": 0}),
        "and applies nothing again"
    );
}
