//! Outbound HTTP from a served plugin (the `caller` fixture) to real servers on
//! loopback: the host's policy, its idempotency keys, its secrets, replays after a
//! conflict, and waiting that holds no thread.

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Mutex;

use crate::support::{Server, plugins_dir, wasaga};

const SECRET: &str = "sk_live_4eC39HqLyjWDarjtT1zdp7dc";

/// A loopback HTTP server that answers 200 with a JSON echo of each request, keeps
/// every request it got, and may wait before answering.
struct Provider {
    port: u16,
    requests: Arc<Mutex<Vec<String>>>,
    in_flight: Arc<AtomicUsize>,
    most_in_flight: Arc<AtomicUsize>,
}

async fn provider(delay: Duration) -> Provider {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let requests = Arc::new(Mutex::new(Vec::new()));
    let (in_flight, most_in_flight) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (kept, now, most) = (requests.clone(), in_flight.clone(), most_in_flight.clone());
    tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            let (kept, now, most) = (kept.clone(), now.clone(), most.clone());
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0; 4096];
                loop {
                    if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&seen[..end]).to_ascii_lowercase();
                        let length = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length: "))
                            .and_then(|n| n.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        if seen.len() >= end + 4 + length {
                            break;
                        }
                    }
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let request = String::from_utf8_lossy(&seen).into_owned();
                kept.lock().await.push(request.clone());
                let inside = now.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(inside, Ordering::SeqCst);
                tokio::time::sleep(delay).await;
                now.fetch_sub(1, Ordering::SeqCst);
                let body = json!({ "request": request }).to_string();
                let reply = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(reply.as_bytes()).await;
            });
        }
    });
    Provider { port, requests, in_flight, most_in_flight }
}

/// `wasaga serve` over the `caller` fixture with `grants` as its --outbound file, its
/// log at debug level in a file, and [`SECRET`] in its environment.
fn serve(grants: &str) -> (Server, tempfile::TempDir) {
    let plugins = plugins_dir(&["caller"]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("outbound.toml");
    std::fs::write(&file, grants).unwrap();
    let log = std::fs::File::create(dir.path().join("log")).unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut command = wasaga();
    command.env("WASAGA_LOG", "debug").env("PROVIDER_KEY", SECRET);
    let mut server = Server::start_logging(
        command,
        plugins.path(),
        data.path(),
        &["--outbound", file.to_str().unwrap()],
        Stdio::from(log),
    );
    server.keep(plugins, data);
    (server, dir)
}

fn grant(port: u16) -> String {
    format!(
        "[[services.caller.destinations]]\nurl = \"http://127.0.0.1:{port}/v1/\"\n\
         [services.caller.secrets.provider-key]\nenv = \"PROVIDER_KEY\"\ndestinations = [\"http://127.0.0.1:{port}/v1/\"]\n"
    )
}

async fn call(server: &Server, key: &str, input: Value) -> (u16, Value) {
    let response = server.invoke(&Server::client(), "caller/call", key, &input).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// The idempotency key the host sends for the request at `position` of a client's
/// invocation keyed `key` (outbound/journal.rs, `idempotency_key`).
fn expected_key(key: &str, position: u32) -> String {
    wasaga::outbound::idempotency_key("caller", &format!("client:{key}"), position)
}

#[tokio::test]
async fn a_granted_request_carries_its_key_and_a_secret_the_plugin_never_sees() {
    let p = provider(Duration::ZERO).await;
    let (server, dir) = serve(&grant(p.port));
    let input = json!({
        "method": "POST",
        "url": format!("http://127.0.0.1:{}/v1/charges", p.port),
        "headers": { "authorization": "Bearer {{secret.provider-key}}" },
        "body": "{\"amount\":100}",
    });
    let (status, answer) = call(&server, "charge-1", input.clone()).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["status"], 200);

    let seen = p.requests.lock().await.clone();
    assert_eq!(seen.len(), 1);
    let head = seen[0].to_ascii_lowercase();
    assert!(head.contains(&format!("authorization: bearer {}", SECRET.to_ascii_lowercase())), "{head}");
    assert!(head.contains(&format!("idempotency-key: {}", expected_key("charge-1", 0))), "{head}");
    assert!(seen[0].ends_with("{\"amount\":100}"), "the body went as written: {}", seen[0]);
    // The provider echoed the request: the plugin got the echo with the secret masked.
    let echoed = answer["body"].as_str().unwrap();
    assert!(echoed.contains("Bearer [secret provider-key]") && !echoed.contains(SECRET), "{echoed}");

    // The client's retry is the stored outcome: the provider hears nothing more.
    let (again, replayed) = call(&server, "charge-1", input).await;
    assert_eq!((again, &replayed), (200, &answer));
    assert_eq!(p.requests.lock().await.len(), 1);

    // Nowhere the host writes: its answers, its listings, its log, its files.
    let client = Server::client();
    for path in ["/v1/plugins", "/metrics", "/v1/services/caller/records"] {
        let text = client.get(format!("{}{path}", server.url)).send().await.unwrap().text().await.unwrap();
        assert!(!text.contains(SECRET), "{path} shows the secret");
    }
    let log = std::fs::read_to_string(dir.path().join("log")).unwrap();
    assert!(!log.contains(SECRET), "the log shows the secret");
    assert!(log.lines().count() > 5, "the log was written at debug level: {log}");
    drop(server);
    let mut found = Vec::new();
    for entry in walk(dir.path()) {
        let bytes = std::fs::read(&entry).unwrap();
        if bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()) {
            found.push(entry);
        }
    }
    assert!(found.is_empty(), "files hold the secret: {found:?}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() { files.extend(walk(&path)) } else { files.push(path) }
    }
    files
}

#[tokio::test]
async fn what_is_not_declared_and_granted_is_refused_before_anything_is_sent() {
    let p = provider(Duration::ZERO).await;
    let grants = format!(
        "{}[[services.caller.destinations]]\nurl = \"http://localhost:{}/\"\n",
        grant(p.port),
        p.port
    );
    let (server, dir) = serve(&grants);
    for (url, says) in [
        // Granted, but not under the granted prefix.
        (format!("http://127.0.0.1:{}/admin", p.port), "refused by the host's policy"),
        // Not granted at all (another port), and not declared (the metadata service).
        (format!("http://127.0.0.1:{}/v1/", p.port + 1), "refused by the host's policy"),
        ("http://169.254.169.254/latest/meta-data/".into(), "refused by the host's policy"),
        // Granted by a name that resolves to loopback, which the grant does not name.
        (format!("http://localhost:{}/x", p.port), "address is not granted"),
        // The granted address in other spellings.
        (format!("http://2130706433:{}/v1/", p.port), "refused by the host's policy"),
        (format!("http://[::ffff:127.0.0.1]:{}/v1/", p.port), "refused by the host's policy"),
    ] {
        let (status, answer) =
            call(&server, &format!("k-{url}"), json!({ "method": "GET", "url": url })).await;
        assert_eq!(status, 422, "{url}: {answer}");
        assert!(answer.to_string().contains(says), "{url}: {answer}");
    }
    // A secret named for a destination it is not granted to is not sent there.
    let (status, answer) = call(
        &server,
        "k-secret",
        json!({
            "method": "GET",
            "url": format!("http://localhost:{}/", p.port),
            "headers": { "authorization": "{{secret.provider-key}}" },
        }),
    )
    .await;
    assert_eq!(status, 422, "{answer}");
    assert!(p.requests.lock().await.is_empty(), "nothing reached the server");
    let log = std::fs::read_to_string(dir.path().join("log")).unwrap();
    assert!(log.contains("is not granted to `caller` by the operator"), "the log says why: {log}");
    assert!(log.contains("the secret `provider-key` may not be sent to"), "{log}");
}

#[tokio::test]
async fn a_rerun_after_a_conflict_replays_the_answer_instead_of_sending_again() {
    // Slow answers keep both invocations inside their runs at once: both read
    // `count` at 0, one commits, the other conflicts and runs again.
    let p = provider(Duration::from_millis(300)).await;
    let (server, _dir) = serve(&grant(p.port));
    let client = Server::client();
    let url = format!("http://127.0.0.1:{}/v1/charges", p.port);
    let invoke = |key: &'static str| {
        server.invoke(&client, "caller/count-and-call", key, &json!({ "url": url, "body": key })).send()
    };
    let (a, b) = tokio::join!(invoke("a"), invoke("b"));
    for response in [a.unwrap(), b.unwrap()] {
        let status = response.status().as_u16();
        assert_eq!(status, 200, "{}", response.text().await.unwrap());
    }
    assert_eq!(server.record(&client, "caller", "count").await.unwrap(), 2, "both committed");
    let metrics = client.get(format!("{}/metrics", server.url)).send().await.unwrap().text().await.unwrap();
    let conflicts: f64 = metrics
        .lines()
        .find(|l| l.starts_with("wasaga_occ_conflicts_total{") && l.contains("service=\"caller\""))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0);
    assert!(conflicts >= 1.0, "the two invocations conflicted: {metrics}");
    assert_eq!(p.requests.lock().await.len(), 2, "each invocation's request was sent once");

    // A plugin whose re-run makes another request (its body depends on what it read)
    // is told so, and its run does not commit.
    let (c, d) = tokio::join!(
        server
            .invoke(&client, "caller/count-and-call", "c", &json!({ "url": url, "with_count": true }))
            .send(),
        server
            .invoke(&client, "caller/count-and-call", "d", &json!({ "url": url, "with_count": true }))
            .send(),
    );
    let (c, d) = (c.unwrap(), d.unwrap());
    let statuses = [c.status().as_u16(), d.status().as_u16()];
    let texts = [c.text().await.unwrap(), d.text().await.unwrap()];
    assert!(statuses.contains(&200), "{texts:?}");
    let failed = statuses.iter().position(|s| *s != 200).expect("one re-ran differently");
    assert!(texts[failed].contains("must make the same requests when it runs again"), "{texts:?}");
    assert_eq!(server.record(&client, "caller", "count").await.unwrap(), 3);
}

#[tokio::test]
async fn a_plugin_waiting_for_an_answer_holds_no_thread() {
    // 32 invocations each wait for a slow answer: if a waiting plugin held one of the
    // runtime's threads (two on this machine), at most two would be in flight at once.
    let p = provider(Duration::from_millis(500)).await;
    let (server, _dir) = serve(&grant(p.port).replace("url = ", "connections = 64\nurl = "));
    let client = Server::client();
    let url = format!("http://127.0.0.1:{}/v1/slow", p.port);
    let calls = (0..32).map(|i| {
        server
            .invoke(&client, "caller/call", &format!("slow-{i}"), &json!({ "method": "GET", "url": url }))
            .send()
    });
    for response in futures_util::future::join_all(calls).await {
        assert_eq!(response.unwrap().status(), 200);
    }
    assert_eq!(p.in_flight.load(Ordering::SeqCst), 0);
    let most = p.most_in_flight.load(Ordering::SeqCst);
    assert!(most > 8, "only {most} requests were in flight at once");
}

/// A JavaScript plugin's `fetch` (componentize-js with its default features, an async
/// handler in wasaga's SDK) goes through the host: the grant, the idempotency key.
#[tokio::test]
async fn a_javascript_plugin_fetches_through_the_host() {
    let p = provider(Duration::ZERO).await;
    let plugins = tempfile::tempdir().unwrap();
    std::fs::copy(crate::polyglot::built().join("sdk-check-js.wasm"), plugins.path().join("sdk-check.wasm"))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let grants = dir.path().join("outbound.toml");
    std::fs::write(
        &grants,
        format!("[[services.sdk-check.destinations]]\nurl = \"http://127.0.0.1:{}/v1/\"\n", p.port),
    )
    .unwrap();
    let mut server = Server::start_in(plugins.path(), dir.path(), &["--outbound", grants.to_str().unwrap()]);
    let client = Server::client();
    let url = format!("http://127.0.0.1:{}/v1/js", p.port);
    let response =
        server.invoke(&client, "sdk-check/fetch", "js-1", &json!({ "url": url })).send().await.unwrap();
    let status = response.status().as_u16();
    let answer: Value = response.json().await.unwrap();
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["status"], 200, "{answer}");
    let seen = p.requests.lock().await.clone();
    assert_eq!(seen.len(), 1);
    let key = wasaga::outbound::idempotency_key("sdk-check", "client:js-1", 0);
    assert!(
        seen[0].contains(&format!("idempotency-key: {key}")) && seen[0].ends_with("from js"),
        "{}",
        seen[0]
    );
    assert!(answer["body"].as_str().unwrap().contains("POST /v1/js"), "{answer}");

    // Not granted: fetch rejects, and the handler's failure says so.
    let elsewhere = format!("http://127.0.0.1:{}/v2/", p.port);
    let response =
        server.invoke(&client, "sdk-check/fetch", "js-2", &json!({ "url": elsewhere })).send().await.unwrap();
    assert!(!response.status().is_success(), "{}", response.text().await.unwrap());
    assert_eq!(p.requests.lock().await.len(), 1);
    server.kill();
}
