//! Storage faults under a real `wasaga serve`: fsync failing (EIO injected into its
//! `fdatasync` calls by strace) and a full disk (its data directory on a small tmpfs of
//! its own mount namespace). Either way the server stops acknowledging writes, /readyz
//! says why, nothing acknowledged is lost, and it writes again once the cause is gone.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{Server, plugins_dir, wasaga_under};

/// Puts `value` at `key` in `echo` (a fresh idempotency key each time): its status.
async fn put(server: &Server, client: &reqwest::Client, key: &str, value: &Value) -> u16 {
    let body = json!({"key": key, "value": value});
    let request = server.invoke(client, "echo/put", &format!("put-{key}"), &body);
    request.send().await.map_or(0, |r| r.status().as_u16())
}

async fn readyz(server: &Server, client: &reqwest::Client) -> (u16, String) {
    let response = client.get(format!("{}/readyz", server.url)).send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

/// Writes keys `prefix-0`, `prefix-1`, ... until one is refused (at most `max`);
/// returns the acknowledged ones and the refused one's status.
async fn write_until_refused(
    server: &Server,
    client: &reqwest::Client,
    prefix: &str,
    value: &Value,
    max: usize,
) -> (Vec<String>, u16) {
    let mut acknowledged = Vec::new();
    for n in 0..max {
        let key = format!("{prefix}-{n}");
        match put(server, client, &key, value).await {
            200 => acknowledged.push(key),
            status => return (acknowledged, status),
        }
    }
    panic!("{max} writes and none refused");
}

/// Retries one write every 50 ms (up to 30 s) until it is acknowledged; returns how
/// many were refused first, each with 503.
async fn write_until_acknowledged(server: &Server, client: &reqwest::Client, key: &str) -> usize {
    for refused in 0..600 {
        match put(server, client, key, &json!("after")).await {
            200 => return refused,
            503 => tokio::time::sleep(Duration::from_millis(50)).await,
            other => panic!("a write during the fault answered {other}, not 503"),
        }
    }
    panic!("the store never wrote again");
}

/// Writes `value` under new keys (at most `tries`) until one is refused, and checks the
/// fault's signs: the refusal is a 503, the refused write is not seen, /readyz answers
/// 503 naming `cause`, every acknowledged write is kept. Returns the acknowledged keys.
async fn writes_stop_and_say_why(
    server: &Server,
    client: &reqwest::Client,
    value: &Value,
    tries: usize,
    cause: &str,
) -> Vec<String> {
    let (acknowledged, refused) = write_until_refused(server, client, "k", value, tries).await;
    assert_eq!(refused, 503, "a write the store could not make durable is not acknowledged");
    let unacknowledged = format!("k-{}", acknowledged.len());
    assert_eq!(server.record(client, "echo", &unacknowledged).await, None, "nor seen");
    let (status, why) = readyz(server, client).await;
    assert_eq!(status, 503);
    assert!(why.contains("the store cannot write since") && why.contains(cause), "{why}");
    // Anyone may ask /readyz; only an operator hears the store's own words.
    let (status, said) = readyz(server, &Server::anonymous()).await;
    assert_eq!(status, 503);
    assert!(said.contains("the store cannot write since") && !said.contains(cause), "{said}");
    assert_kept(server, client, &acknowledged, value).await;
    acknowledged
}

async fn assert_kept(server: &Server, client: &reqwest::Client, keys: &[String], value: &Value) {
    assert!(!keys.is_empty(), "some writes were acknowledged before the fault");
    for key in keys {
        assert_eq!(server.record(client, "echo", key).await.as_ref(), Some(value), "{key}");
    }
}

/// fsync fails (EIO) from the server's 40th `fdatasync` to its 70th: the write being
/// committed is refused with 503, /readyz says the store cannot write and why, every
/// write before it is kept, and once fsync works again a write goes through, the server
/// is ready, and a restart finds every acknowledged write.
#[tokio::test]
async fn a_failing_fsync_refuses_writes_until_it_works_again() {
    let plugins = plugins_dir(&["echo"]);
    let data = tempfile::tempdir().unwrap();
    // Starting takes fewer than 40 syncs (one per migration, a few checkpoints).
    let strace = ["-f", "-qq", "-o", "/dev/null", "-e", "trace=fdatasync"];
    let inject = "inject=fdatasync:error=EIO:when=40..70";
    let mut command = wasaga_under("strace", &[&strace[..], &["-e", inject]].concat());
    command.stderr(std::process::Stdio::null());
    let mut server = Server::start_with(command, plugins.path(), data.path(), &["--no-watch"]);
    let client = Server::client();
    assert_eq!(readyz(&server, &client).await.0, 200);

    let value = json!("before");
    let acknowledged = writes_stop_and_say_why(&server, &client, &value, 100, "disk I/O error").await;

    let refused = write_until_acknowledged(&server, &client, "after").await;
    assert!(refused > 0, "writes were refused while fsync failed");
    assert_eq!(readyz(&server, &client).await, (200, "ready\n".to_owned()));
    assert_kept(&server, &client, &acknowledged, &value).await;

    server.kill();
    let server = Server::start_in(plugins.path(), data.path(), &["--no-watch"]);
    assert_kept(&server, &client, &acknowledged, &value).await;
    assert_eq!(server.record(&client, "echo", "after").await, Some(json!("after")));
}

/// The data directory is a 16 MiB tmpfs, filled by a ballast file: writes of 256 KiB
/// values are refused with 503 once the WAL cannot grow, /readyz says the disk is full,
/// every acknowledged write is kept; the ballast removed, writes go through again (even
/// with no client writing, the server's own probe finds out: /readyz turns ready).
#[tokio::test]
async fn a_full_disk_refuses_writes_until_there_is_room() {
    let plugins = plugins_dir(&["echo"]);
    let data = tempfile::tempdir().unwrap();
    // A mount namespace of its own (and a user namespace, so that no root is needed),
    // where the data directory is a small tmpfs; the server runs in it.
    // `sh -c SCRIPT DATA WASAGA serve ...`: the data directory is the script's $0.
    let mount = r#"mount -t tmpfs -o size=16m tmpfs "$0" && exec "$@""#;
    let dir = data.path().to_str().unwrap();
    let unshare =
        ["--user", "--map-root-user", "--mount", "--propagation", "private", "sh", "-c", mount, dir];
    let command = wasaga_under("unshare", &unshare);
    let args = ["--no-watch", "--wal-limit", "1MiB"];
    let server = Server::start_with(command, plugins.path(), data.path(), &args);
    let client = Server::client();
    // The tmpfs as the server sees it, through its process's root.
    let inside = PathBuf::from(format!("/proc/{}/root", server.child.id()))
        .join(data.path().strip_prefix("/").unwrap());
    assert_eq!(readyz(&server, &client).await.0, 200);
    let ballast = inside.join("ballast");
    fill(&ballast, 12 << 20);

    let value = json!("x".repeat(256 << 10));
    let acknowledged = writes_stop_and_say_why(&server, &client, &value, 200, "full").await;

    std::fs::remove_file(&ballast).unwrap();
    // No write meanwhile: the probe finds the room.
    let mut ready = (0, String::new());
    for _ in 0..100 {
        ready = readyz(&server, &client).await;
        if ready.0 == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ready, (200, "ready\n".to_owned()), "ready again within 10 s of the room coming back");
    assert_eq!(put(&server, &client, "after", &json!("after")).await, 200);
    assert_kept(&server, &client, &acknowledged, &value).await;
}

/// Writes `bytes` of zeros to `path`, or as much as fits.
fn fill(path: &Path, bytes: usize) {
    let mut file = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 1 << 20];
    for _ in 0..bytes / chunk.len() {
        if file.write_all(&chunk).is_err() {
            break;
        }
    }
}
