//! `wasaga serve` as a real process, over real HTTP on loopback.

use crate::support::{Server, plugins_dir};

/// The server loads the good plugins, reports the bad file, and answers on loopback.
#[tokio::test]
async fn serve_lists_plugins_and_refused_files() {
    let dir = plugins_dir(&["echo", "trap"]);
    std::fs::write(dir.path().join("broken.wasm"), "garbage").unwrap();
    let server = Server::start(dir.path());
    let client = Server::client();

    let health = client.get(format!("{}/healthz", server.url)).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(health.text().await.unwrap(), "ok\n");

    let list: serde_json::Value =
        client.get(format!("{}/v1/plugins", server.url)).send().await.unwrap().json().await.unwrap();
    let services: Vec<&str> =
        list["plugins"].as_array().unwrap().iter().map(|p| p["service"].as_str().unwrap()).collect();
    assert_eq!(services, ["echo", "trap"]);
    let echo = &list["plugins"][0];
    let digest = wasaga::runtime::PluginDigest::of(&std::fs::read(dir.path().join("echo.wasm")).unwrap());
    assert_eq!(echo["digest"], digest.to_string());
    assert_eq!(echo["memory_limit_bytes"], 64 << 20);
    let refused = list["refused"].as_array().unwrap();
    assert_eq!(refused.len(), 1);
    assert!(refused[0]["file"].as_str().unwrap().ends_with("broken.wasm"));
    assert!(refused[0]["error"].as_str().unwrap().contains("not a WebAssembly file"), "{refused:?}");
}

/// Unknown paths answer 404 as problem+json.
#[tokio::test]
async fn unknown_routes_are_problem_json_404() {
    let dir = plugins_dir(&[]);
    let server = Server::start(dir.path());
    let response = Server::client().get(format!("{}/v2/nothing", server.url)).send().await.unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(response.headers()["content-type"], "application/problem+json");
    let problem: serde_json::Value = response.json().await.unwrap();
    assert_eq!(problem["status"], 404);
    assert_eq!(problem["detail"], "no route for /v2/nothing");
}

/// SIGTERM stops the server cleanly (exit 0).
#[test]
fn sigterm_stops_the_server_cleanly() {
    let dir = plugins_dir(&["echo"]);
    let mut server = Server::start(dir.path());
    let status =
        std::process::Command::new("kill").args(["-TERM", &server.child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let exit = server.child.wait().unwrap();
    assert!(exit.success(), "{exit:?}");
}

/// The server runs with transparent huge pages off unless `--huge-pages` (or
/// `WASAGA_HUGE_PAGES`) keeps them: with them, the kernel folded mimalloc's sparse 2 MiB
/// ranges into whole huge pages about eleven minutes into a run, and RSS stepped up by
/// 8–30 MiB with the live heap unchanged (docs/benchmarks.md, "Runs for months").
#[cfg(target_os = "linux")]
#[test]
fn the_server_runs_without_transparent_huge_pages_unless_asked() {
    let dir = plugins_dir(&["echo"]);
    let thp_enabled = |env: Option<&str>, args: &[&str]| {
        let data = tempfile::tempdir().unwrap();
        let mut command = crate::support::wasaga();
        command.env_remove("WASAGA_HUGE_PAGES");
        if let Some(value) = env {
            command.env("WASAGA_HUGE_PAGES", value);
        }
        let server = Server::start_with(command, dir.path(), data.path(), args);
        let status = std::fs::read_to_string(format!("/proc/{}/status", server.child.id())).unwrap();
        status
            .lines()
            .find_map(|line| line.strip_prefix("THP_enabled:"))
            .expect("/proc/<pid>/status has THP_enabled (Linux 5.0 and later)")
            .trim()
            .to_owned()
    };
    assert_eq!(thp_enabled(None, &[]), "0", "transparent huge pages are still allowed for the server");
    assert_eq!(thp_enabled(None, &["--huge-pages"]), "1", "--huge-pages did not keep them");
    assert_eq!(thp_enabled(Some("yes"), &[]), "1", "WASAGA_HUGE_PAGES=yes did not keep them");
    assert_eq!(thp_enabled(Some("0"), &[]), "0", "WASAGA_HUGE_PAGES=0 kept them");
}

/// Calls of made-up services and operations are counted without their names: /metrics
/// does not grow with what clients invent (300 made-up names once grew it to 2.4 MB).
#[tokio::test]
async fn made_up_names_do_not_grow_the_metrics() {
    let server = Server::with_plugins(&["echo"]);
    let client = Server::client();
    let metrics =
        async || client.get(format!("{}/metrics", server.url)).send().await.unwrap().text().await.unwrap();
    let before = metrics().await.len();
    for n in 0..100 {
        for path in [format!("made-up-{n}/op"), format!("echo/made-up-{n}")] {
            let response = server
                .invoke(&client, &path, &format!("k-{n}"), &serde_json::json!({}))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 404);
        }
    }
    let after = metrics().await;
    assert!(!after.contains("made-up"), "a made-up name became a label");
    assert!(after.contains("wasaga_unknown_calls_total 200"), "{after}");
    assert!(after.len() < before + 1024, "grew from {before} to {} bytes", after.len());
}

/// A client that sends a request's head a byte at a time, never finishing it, is cut
/// off after the header timeout (10 s) instead of holding its connection for ever.
#[test]
fn a_request_head_that_never_ends_is_cut_off() {
    use std::io::{Read, Write};
    let server = Server::with_plugins(&["echo"]);
    let address = server.url.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ").unwrap();
    let began = std::time::Instant::now();
    let mut answer = Vec::new();
    let read = stream.read_to_end(&mut answer);
    let took = began.elapsed();
    assert!(read.is_ok(), "the server closes the connection: {read:?}");
    assert!(
        took >= std::time::Duration::from_secs(8) && took < std::time::Duration::from_secs(25),
        "{took:?}"
    );
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 408"), "{answer}");
}

/// With `--max-connections 2`, a third client waits while two connections are open,
/// and is served as soon as one closes.
#[tokio::test]
async fn connections_past_the_bound_wait_for_a_place() {
    let plugins = plugins_dir(&["echo"]);
    let data = tempfile::tempdir().unwrap();
    let server = Server::start_in(plugins.path(), data.path(), &["--max-connections", "2"]);
    let address = server.url.trim_start_matches("http://").to_owned();
    let first = tokio::net::TcpStream::connect(&address).await.unwrap();
    let _second = tokio::net::TcpStream::connect(&address).await.unwrap();
    let client = reqwest::Client::new();
    let third = tokio::spawn({
        let url = server.url.clone();
        async move { client.get(format!("{url}/healthz")).send().await.map(|r| r.status()) }
    });
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    assert!(!third.is_finished(), "the third connection waits");
    drop(first);
    let status =
        tokio::time::timeout(std::time::Duration::from_secs(5), third).await.unwrap().unwrap().unwrap();
    assert_eq!(status, 200);
}
