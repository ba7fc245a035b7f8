//! The attacks of "safe to expose", each performed against a real `wasaga serve`:
//! every test here failed on the host before the fix it names, and must keep failing
//! to break it. docs/security.md maps every route to who may call it and to these
//! tests.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{ADMIN_TOKEN, Server, plugins_dir, seed_shop, wait_settled, wasaga};

const SHOP: &[&str] = &["order", "inventory", "payment", "notification"];

/// Stock and two accounts, as an operator.
async fn seed(server: &Server, client: &reqwest::Client) {
    seed_shop(server, client, 10, 10_000).await;
}

async fn get(client: &reqwest::Client, url: String) -> Value {
    client.get(url).send().await.unwrap().json().await.unwrap()
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
    let done = wait_settled(&server, &client, id).await;
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

/// The API token of the servers in the tests below that require one.
const API_TOKEN: &str = "test-api-token-0123456789";

/// A server over the shop's services and saga, with the API token required.
fn server_with_api_token() -> Server {
    let plugins = plugins_dir(SHOP);
    let data = tempfile::tempdir().unwrap();
    let mut command = wasaga();
    command.env("WASAGA_API_TOKEN", API_TOKEN);
    let sagas = crate::support::SAGAS;
    let mut server = Server::start_with(command, plugins.path(), data.path(), &["--sagas", sagas]);
    server.keep(plugins, data);
    server
}

fn with_token(request: reqwest::RequestBuilder, token: Option<&str>) -> reqwest::RequestBuilder {
    match token {
        Some(token) => request.bearer_auth(token),
        None => request,
    }
}

/// Rewriting a record: `PUT` with the current ETag set a balance to 999999999999
/// without any token. Record writes and deletes are operator actions: refused without
/// a token (401) and with the API token (403); the balance is untouched; the admin
/// token may.
#[tokio::test]
async fn records_cannot_be_rewritten_without_the_admin_token() {
    let server = server_with_api_token();
    let operator = Server::client();
    seed(&server, &operator).await;
    let url = format!("{}/v1/services/payment/records/account/ada", server.url);
    let anyone = Server::anonymous();
    for (token, status) in [(None, 401), (Some(API_TOKEN), 403)] {
        let put = with_token(anyone.put(&url), token)
            .header("If-Match", "\"1\"")
            .body(r#"{"balance": 999999999999}"#);
        let response = put.send().await.unwrap();
        assert_eq!(response.status(), status);
        let problem: Value = response.json().await.unwrap();
        assert!(problem["detail"].as_str().unwrap().contains("operator action"), "{problem}");
        let delete = with_token(anyone.delete(&url), token).header("If-Match", "\"1\"");
        assert_eq!(delete.send().await.unwrap().status(), status);
    }
    assert_eq!(server.record(&operator, "payment", "account/ada").await.unwrap(), json!({"balance": 10_000}));
    let fixed = operator.put(&url).header("If-Match", "\"1\"").body(r#"{"balance": 10001}"#);
    assert_eq!(fixed.send().await.unwrap().status(), 200, "an operator may");
}

/// Calling a compensation or a subscription handler straight over HTTP: a client that
/// may call public operations is refused internal ones (403, saying who may), and
/// nothing happens; the public `order.place` works; an operator may call both.
#[tokio::test]
async fn internal_operations_are_refused_to_clients() {
    let server = server_with_api_token();
    let operator = Server::client();
    seed(&server, &operator).await;
    let client = Server::anonymous();
    let call = |path: &str, key: &str, body: Value| {
        client
            .post(format!("{}/v1/services/{path}", server.url))
            .bearer_auth(API_TOKEN)
            .header("Idempotency-Key", key)
            .body(body.to_string())
    };
    let order = json!({"order": "o-1", "customer": "ada", "sku": "lamp", "qty": 1, "amount": 500});
    let internal = [
        ("payment/refund", json!({"order": "o-1"})),
        ("inventory/release", json!({"order": "o-1"})),
        ("inventory/reserve-placed", order.clone()),
        ("payment/charge", json!({"customer": "ada", "amount": 500, "order": "o-1"})),
        ("order/complete", json!({"order": "o-1"})),
        ("inventory/restock", json!({"sku": "lamp", "qty": 1000})),
    ];
    for (path, body) in &internal {
        let response = call(path, &format!("k-{path}"), body.clone()).send().await.unwrap();
        assert_eq!(response.status(), 403, "{path}");
        let problem: Value = response.json().await.unwrap();
        let detail = problem["detail"].as_str().unwrap();
        assert!(detail.contains("is internal: only sagas, event deliveries and operators"), "{detail}");
    }
    assert_eq!(
        server.record(&operator, "inventory", "stock/lamp").await.unwrap(),
        json!({"available": 10, "reserved": 0})
    );
    assert_eq!(server.record(&operator, "payment", "account/ada").await.unwrap(), json!({"balance": 10_000}));

    let placed = call("order/place", "place-o-1", order).send().await.unwrap();
    assert_eq!(placed.status(), 200, "a public operation");
    let restock =
        server.invoke(&operator, "inventory/restock", "k-restock", &json!({"sku": "mug", "qty": 1}));
    assert_eq!(restock.send().await.unwrap().status(), 200, "an operator may call internal operations");
}

/// Every operator action, tried without a token (401), with the API token (403), and
/// on a server without an admin token (403, saying how to enable them): none changes
/// anything.
#[tokio::test]
async fn every_operator_action_needs_the_admin_token() {
    let server = server_with_api_token();
    let operator = Server::client();
    seed(&server, &operator).await;
    let input = json!({"order": "o-1", "customer": "poor", "sku": "lamp", "qty": 1, "amount": 500,
                       "release_transient_failures": 3});
    let saga: Value = operator
        .post(format!("{}/v1/sagas/place-order?wait=20s", server.url))
        .header("Idempotency-Key", "order-1")
        .json(&input)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(saga["status"], "stuck");
    let id = saga["id"].as_str().unwrap();
    let url = &server.url;
    let actions = |client: &reqwest::Client, token: Option<&str>| {
        let wasm = std::fs::read(crate::support::guest("inventory")).unwrap();
        vec![
            with_token(client.put(format!("{url}/v1/services/inventory/records/stock/lamp")), token)
                .header("If-Match", "\"1\"")
                .body("{}"),
            with_token(client.delete(format!("{url}/v1/services/inventory/records/stock/lamp")), token)
                .header("If-Match", "\"1\""),
            with_token(client.post(format!("{url}/v1/sagas/{id}/retry")), token),
            with_token(client.post(format!("{url}/v1/sagas/{id}/compensate")), token),
            with_token(client.post(format!("{url}/v1/sagas/{id}/resolve")), token).body(r#"{"output": 1}"#),
            with_token(client.post(format!("{url}/v1/events/1/redeliver?subscriber=inventory")), token),
            with_token(client.delete(format!("{url}/v1/plugins/notification")), token),
            // Last: the server closes the connection of a body it refuses to read.
            with_token(client.put(format!("{url}/v1/plugins/inventory")), token).body(wasm),
        ]
    };
    for (token, status) in [(None, 401), (Some(API_TOKEN), 403)] {
        for request in actions(&Server::anonymous(), token) {
            let response = request.send().await.unwrap();
            let path = response.url().path().to_owned();
            assert_eq!(response.status(), status, "{path} with {token:?}");
        }
    }
    let after = get(&operator, format!("{url}/v1/sagas/{id}")).await;
    assert_eq!(after["status"], "stuck", "not retried");
    let plugins = get(&operator, format!("{url}/v1/plugins")).await;
    assert_eq!(plugins["plugins"].as_array().unwrap().len(), 4, "nothing removed");
    assert_eq!(plugins["reloads"], 0, "nothing uploaded");

    // A server without an admin token refuses them all, and says how to allow them.
    let plugins = plugins_dir(SHOP);
    let data = tempfile::tempdir().unwrap();
    let mut command = wasaga();
    command.env_remove("WASAGA_ADMIN_TOKEN");
    let closed = Server::start_with(command, plugins.path(), data.path(), &[]);
    let url = &closed.url;
    let wasm = std::fs::read(crate::support::guest("inventory")).unwrap();
    let requests = [
        Server::client()
            .put(format!("{url}/v1/services/inventory/records/stock/lamp"))
            .header("If-None-Match", "*")
            .body("{}"),
        Server::client().post(format!("{url}/v1/sagas/{id}/retry")),
        Server::client().put(format!("{url}/v1/plugins/inventory")).body(wasm),
    ];
    for request in requests {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 403);
        let problem: Value = response.json().await.unwrap();
        assert!(
            problem["detail"]
                .as_str()
                .unwrap()
                .contains("start it with the admin token in WASAGA_ADMIN_TOKEN"),
            "{problem}"
        );
    }
}

/// With an API token, every read and public call needs it (or the admin token); health
/// checks and the dashboard's page (which holds no data) do not.
#[tokio::test]
async fn with_an_api_token_reads_and_calls_need_it() {
    let server = server_with_api_token();
    let url = &server.url;
    let reads = [
        "/v1/services/inventory/records/stock/lamp",
        "/v1/services/inventory/records?prefix=stock/",
        "/v1/sagas",
        "/v1/sagas/01a2",
        "/v1/overview",
        "/v1/events?correlation=o-1",
        "/v1/events/dead",
        "/v1/plugins",
        "/metrics",
    ];
    let anyone = Server::anonymous();
    for path in reads {
        let response = anyone.get(format!("{url}{path}")).send().await.unwrap();
        assert_eq!(response.status(), 401, "{path}");
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
        let with_api = anyone.get(format!("{url}{path}")).bearer_auth(API_TOKEN).send().await.unwrap();
        assert_ne!(with_api.status(), 401, "{path}");
        let wrong =
            anyone.get(format!("{url}{path}")).bearer_auth("not-the-token-at-all").send().await.unwrap();
        assert_eq!(wrong.status(), 401, "{path}");
    }
    let order = json!({"order": "o-1", "customer": "ada", "sku": "lamp", "qty": 1, "amount": 500});
    let calls = [
        anyone
            .post(format!("{url}/v1/services/order/place"))
            .header("Idempotency-Key", "p-1")
            .body(order.to_string()),
        anyone
            .post(format!("{url}/v1/sagas/place-order"))
            .header("Idempotency-Key", "s-1")
            .body(order.to_string()),
    ];
    for call in calls {
        assert_eq!(call.send().await.unwrap().status(), 401);
    }
    assert_eq!(
        get(&Server::client(), format!("{url}/v1/overview")).await["sagas"]["running"],
        0,
        "no saga started"
    );
    for path in ["/healthz", "/readyz", "/", "/openapi.json"] {
        assert_eq!(anyone.get(format!("{url}{path}")).send().await.unwrap().status(), 200, "{path}");
    }
}

/// What a page on another site can make a browser send: a form POST (no custom header,
/// a form content type) to every route that changes state, and a CORS preflight for a
/// script that would add headers. Every form request is refused before anything
/// happens (no order, no saga, no retry), and no preflight is granted.
#[tokio::test]
async fn no_state_change_from_a_cross_site_browser() {
    let server = Server::with_sagas(&[]);
    let operator = Server::client();
    seed(&server, &operator).await;
    let url = &server.url;
    let form = "order=o-1&customer=ada&sku=lamp&qty=1&amount=500";
    let browser = Server::anonymous();
    for path in [
        "/v1/services/order/place",
        "/v1/sagas/place-order",
        "/v1/sagas/01a2/retry",
        "/v1/sagas/01a2/compensate",
        "/v1/sagas/01a2/resolve",
        "/v1/events/1/redeliver?subscriber=inventory",
    ] {
        let response = browser
            .post(format!("{url}{path}"))
            .header("Origin", "https://evil.example")
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(form)
            .send()
            .await
            .unwrap();
        assert!(response.status().is_client_error(), "{path}: {}", response.status());
        assert!(response.headers().get("access-control-allow-origin").is_none(), "{path}");

        let preflight = browser
            .request(reqwest::Method::OPTIONS, format!("{url}{path}"))
            .header("Origin", "https://evil.example")
            .header("Access-Control-Request-Method", "POST")
            .header("Access-Control-Request-Headers", "authorization, idempotency-key")
            .send()
            .await
            .unwrap();
        assert!(
            preflight.headers().get("access-control-allow-origin").is_none(),
            "{path}: preflight granted"
        );
        assert!(preflight.headers().get("access-control-allow-headers").is_none(), "{path}");
    }
    assert_eq!(server.record(&operator, "order", "order/o-1").await, None, "no order placed");
    let overview = get(&operator, format!("{url}/v1/overview")).await;
    assert_eq!(
        overview["sagas"]["running"].as_u64().unwrap() + overview["sagas"]["completed"].as_u64().unwrap(),
        0
    );
}

/// DNS rebinding: a page on `evil.example` rebinds its name to 127.0.0.1, and its
/// requests reach the server with `Host: evil.example`. A server on loopback refuses
/// them (421) before anything happens; loopback names are served.
#[tokio::test]
async fn a_loopback_server_refuses_foreign_host_names() {
    let server = Server::with_sagas(&[]);
    let operator = Server::client();
    seed(&server, &operator).await;
    let order = json!({"order": "o-1", "customer": "ada", "sku": "lamp", "qty": 1, "amount": 500});
    let port = server.url.rsplit(':').next().unwrap().to_owned();
    for (host, status) in
        [("evil.example", 421), (&*format!("evil.example:{port}"), 421), (&*format!("localhost:{port}"), 200)]
    {
        let response = Server::anonymous()
            .post(format!("{}/v1/services/order/place", server.url))
            .header("Host", host)
            .header("Idempotency-Key", format!("place-{host}"))
            .body(order.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "Host: {host}");
        if status == 421 {
            assert_eq!(server.record(&operator, "order", "order/o-1").await, None, "nothing happened");
            let problem: Value = response.json().await.unwrap();
            assert!(
                problem["detail"].as_str().unwrap().contains("answers requests for localhost"),
                "{problem}"
            );
        }
    }
}

/// The same off loopback when no API token guards the server (a container published on
/// 127.0.0.1, a dev box listening on 0.0.0.0): a rebound name is refused, the address
/// written as an IP and a name given with `--allow-host` are served.
#[tokio::test]
async fn a_server_without_an_api_token_refuses_names_it_was_not_given() {
    let plugins = plugins_dir(&["echo"]);
    let data = tempfile::tempdir().unwrap();
    let mut child = wasaga()
        .args(["serve", "--listen", "0.0.0.0:0", "--allow-host", "wasaga.internal", "--plugins"])
        .arg(plugins.path())
        .arg("--data")
        .arg(data.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line)
        .unwrap();
    let port = line.trim().rsplit(':').next().unwrap().to_owned();
    let url = format!("http://127.0.0.1:{port}");
    for (host, status) in [
        (format!("evil.example:{port}"), 421),
        (format!("10.1.2.3:{port}"), 200),
        (format!("wasaga.internal:{port}"), 200),
        (format!("localhost:{port}"), 200),
    ] {
        let response = Server::anonymous()
            .post(format!("{url}/v1/services/echo/echo"))
            .header("Host", &host)
            .header("Idempotency-Key", format!("echo-{host}"))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "Host: {host}");
        if status == 421 {
            let problem: Value = response.json().await.unwrap();
            assert!(problem["detail"].as_str().unwrap().contains("--allow-host"), "{problem}");
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A token on the command line is visible to every user in the process list: the
/// flags are refused with the reason; short tokens are refused; a token file works, and
/// a command that needs the admin token says how to give it.
#[tokio::test]
async fn tokens_come_from_the_environment_or_a_file_never_a_flag() {
    let plugins = plugins_dir(&["echo"]);
    let data = tempfile::tempdir().unwrap();
    let serve = |args: &[&str], env: &[(&str, &str)]| {
        let mut command = wasaga();
        command.env_remove("WASAGA_ADMIN_TOKEN").args(["serve", "--listen", "127.0.0.1:0", "--plugins"]);
        command.arg(plugins.path()).arg("--data").arg(data.path()).args(args);
        command.envs(env.iter().copied()).output().unwrap()
    };
    let refused = serve(&["--admin-token", "flag-token-0123456789"], &[]);
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("--admin-token is not accepted: a flag's value is visible to every user"),
        "{stderr}"
    );
    assert!(stderr.contains("WASAGA_ADMIN_TOKEN") && stderr.contains("--admin-token-file"), "{stderr}");
    let short = serve(&[], &[("WASAGA_ADMIN_TOKEN", "short")]);
    assert!(
        String::from_utf8_lossy(&short.stderr).contains("at least 16"),
        "{}",
        String::from_utf8_lossy(&short.stderr)
    );
    let same = serve(&[], &[("WASAGA_ADMIN_TOKEN", API_TOKEN), ("WASAGA_API_TOKEN", API_TOKEN)]);
    assert!(String::from_utf8_lossy(&same.stderr).contains("must differ from the admin token"));

    let token_file = data.path().join("admin-token");
    std::fs::write(&token_file, "file-admin-token-0123456789\n").unwrap();
    let mut command = wasaga();
    command.env_remove("WASAGA_ADMIN_TOKEN");
    let file_arg = token_file.to_string_lossy().into_owned();
    let server = Server::start_with(command, plugins.path(), data.path(), &["--admin-token-file", &file_arg]);
    let url = format!("{}/v1/services/echo/records/k", server.url);
    let put = |token: &str| {
        Server::anonymous().put(&url).bearer_auth(token).header("If-None-Match", "*").body("1").send()
    };
    assert_eq!(put(ADMIN_TOKEN).await.unwrap().status(), 401, "not the environment's token");
    assert_eq!(put("file-admin-token-0123456789").await.unwrap().status(), 201, "the file's token");

    let push = wasaga()
        .env_remove("WASAGA_ADMIN_TOKEN")
        .args(["plugin", "push", "--service", "echo", "--server", &server.url])
        .arg(crate::support::guest("echo"))
        .output()
        .unwrap();
    assert_eq!(push.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&push.stderr);
    assert!(
        stderr.contains("operator command: give the server's admin token in WASAGA_ADMIN_TOKEN"),
        "{stderr}"
    );
    let push = wasaga()
        .env_remove("WASAGA_ADMIN_TOKEN")
        .args([
            "plugin",
            "push",
            "--service",
            "echo",
            "--admin-token-file",
            &file_arg,
            "--server",
            &server.url,
        ])
        .arg(crate::support::guest("echo"))
        .output()
        .unwrap();
    assert!(push.status.success(), "{}", String::from_utf8_lossy(&push.stderr));
}

/// A server on a non-loopback address without an API token says so at start.
#[test]
fn an_exposed_server_without_an_api_token_warns() {
    use std::io::{BufRead, BufReader};
    let plugins = plugins_dir(&["echo"]);
    let data = tempfile::tempdir().unwrap();
    let mut child = wasaga()
        .env("WASAGA_LOG", "warn")
        .args(["serve", "--listen", "0.0.0.0:0", "--plugins"])
        .arg(plugins.path())
        .arg("--data")
        .arg(data.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert!(line.starts_with("listening on"), "{line}");
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("listening on a non-loopback address without an API token"), "{stderr}");
    assert!(stderr.contains("WASAGA_API_TOKEN"), "{stderr}");
    assert!(!stderr.contains('\x1b'), "logs to a pipe carry no colour codes: {stderr:?}");
}
