//! The policy and the transport against real servers on loopback: each bypass refused,
//! each limit holding, secrets where they belong and nowhere else.

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;

/// What the test server does with a connection once it read a request.
#[derive(Clone, Copy)]
enum Behaviour {
    /// 200, echoing the request's head and body.
    Echo,
    /// Reads the request and never answers.
    Silent,
    /// Headers without end.
    EndlessHeaders,
    /// A body without end.
    EndlessBody,
    /// 302 to another place.
    Redirect,
}

struct Server {
    port: u16,
    requests: Arc<AtomicUsize>,
}

async fn server(behaviour: Behaviour) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let requests = Arc::new(AtomicUsize::new(0));
    let counted = requests.clone();
    tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            let counted = counted.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0; 4096];
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                counted.fetch_add(1, Ordering::SeqCst);
                let text = String::from_utf8_lossy(&seen).into_owned();
                let _ = match behaviour {
                    Behaviour::Echo => {
                        let reply = format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nx-echo: {}\r\n\r\n{text}",
                            text.len(),
                            text.lines().find(|l| l.starts_with("authorization")).unwrap_or("")
                        );
                        socket.write_all(reply.as_bytes()).await
                    }
                    Behaviour::Silent => {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        Ok(())
                    }
                    Behaviour::EndlessHeaders => {
                        let _ = socket.write_all(b"HTTP/1.1 200 OK\r\n").await;
                        loop {
                            if socket.write_all(b"x-filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n").await.is_err() {
                                break Ok(());
                            }
                        }
                    }
                    Behaviour::EndlessBody => {
                        let _ = socket.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n").await;
                        loop {
                            if socket.write_all(b"4000\r\n").await.is_err()
                                || socket.write_all(&[b'a'; 0x4000]).await.is_err()
                                || socket.write_all(b"\r\n").await.is_err()
                            {
                                break Ok(());
                            }
                        }
                    }
                    Behaviour::Redirect => {
                        socket
                            .write_all(b"HTTP/1.1 302 Found\r\nlocation: http://169.254.169.254/\r\ncontent-length: 0\r\n\r\n")
                            .await
                    }
                };
            });
        }
    });
    Server { port, requests }
}

fn env(name: &str) -> Option<String> {
    (name == "KEY").then(|| "sk_live_SECRET".to_owned())
}

fn outbound(grants: &str) -> Outbound {
    Outbound::new(Grants::parse(grants, &env).unwrap())
}

fn declared(urls: &[&str]) -> Arc<[Destination]> {
    urls.iter().map(|u| Destination::parse(u, &[]).unwrap()).collect()
}

fn call(outbound: &Outbound, declared: Arc<[Destination]>, journal: Arc<Journal>) -> Call {
    outbound.call(
        "payment".into(),
        declared,
        "key-1".into(),
        journal,
        Instant::now() + Duration::from_secs(30),
        None,
    )
}

fn request(method: &str, url: &str) -> Request {
    Request {
        method: method.parse().unwrap(),
        uri: url.parse().unwrap(),
        headers: http::HeaderMap::new(),
        body: Bytes::from_static(b"{}"),
    }
}

async fn send(call: &Call, request: Request) -> Result<Answer, SendError> {
    call.send(call.next_position(), request).await
}

fn grant(port: u16, extra: &str) -> String {
    format!("[[services.payment.destinations]]\nurl = \"http://127.0.0.1:{port}/v1/\"\n{extra}\n")
}

#[tokio::test]
async fn a_request_needs_both_the_manifest_and_the_operator() {
    let s = server(Behaviour::Echo).await;
    let url = format!("http://127.0.0.1:{}/v1/charges", s.port);
    let both = outbound(&grant(s.port, ""));
    let declared_here = declared(&[&format!("http://127.0.0.1:{}/v1/", s.port)]);

    let c = call(&both, declared_here.clone(), Arc::default());
    assert_eq!(send(&c, request("POST", &url)).await.unwrap().status, 200);

    let undeclared = call(&both, declared(&["http://127.0.0.1:1/"]), Arc::default());
    let err = send(&undeclared, request("POST", &url)).await.unwrap_err();
    assert!(matches!(&err, SendError::Refused(m) if m.contains("manifest")), "{err}");

    let ungranted = call(&outbound(""), declared_here.clone(), Arc::default());
    let err = send(&ungranted, request("POST", &url)).await.unwrap_err();
    assert!(matches!(&err, SendError::Refused(m) if m.contains("operator")), "{err}");

    let outside = format!("http://127.0.0.1:{}/admin", s.port);
    assert!(
        matches!(send(&c, request("POST", &outside)).await, Err(SendError::Refused(_))),
        "path outside the prefix"
    );
    let methods = outbound(&grant(s.port, "methods = [\"GET\"]"));
    let c = call(&methods, declared_here, Arc::default());
    assert!(
        matches!(send(&c, request("POST", &url)).await, Err(SendError::Refused(_))),
        "method not granted"
    );
    assert_eq!(s.requests.load(Ordering::SeqCst), 1, "only the allowed request reached the server");
}

#[tokio::test]
async fn a_name_that_resolves_to_a_special_address_is_refused_unless_the_grant_names_it() {
    let s = server(Behaviour::Echo).await;
    let url = format!("http://localhost:{}/v1/x", s.port);
    let declared_here = declared(&[&format!("http://localhost:{}/", s.port)]);
    let by_name = format!("[[services.payment.destinations]]\nurl = \"http://localhost:{}/\"\n", s.port);
    let c = call(&outbound(&by_name), declared_here.clone(), Arc::default());
    let err = send(&c, request("GET", &url)).await.unwrap_err();
    assert!(matches!(&err, SendError::AddressProhibited(m) if m.contains("loopback")), "{err}");
    assert_eq!(s.requests.load(Ordering::SeqCst), 0, "nothing was sent");

    let named = format!("{by_name}addresses = [\"127.0.0.0/8\", \"::1\"]\n");
    let c = call(&outbound(&named), declared_here, Arc::default());
    assert_eq!(send(&c, request("GET", &url)).await.unwrap().status, 200);
}

#[tokio::test]
async fn ip_literals_in_other_spellings_never_reach_a_granted_address() {
    let s = server(Behaviour::Echo).await;
    // Everything is declared and the operator grants 127.0.0.1 itself: only the
    // canonical spelling of that grant may pass.
    let all = declared(&[&format!("http://127.0.0.1:{}/", s.port), "http://*.example.com/"]);
    let o = outbound(&grant(s.port, ""));
    for host in
        ["2130706433", "0x7f000001", "0177.0.0.1", "127.1", "[::ffff:127.0.0.1]", "[::ffff:7f00:1]", "[::1]"]
    {
        let c = call(&o, all.clone(), Arc::default());
        let url = format!("http://{host}:{}/v1/x", s.port);
        let err = send(&c, request("GET", &url)).await.unwrap_err();
        assert!(matches!(err, SendError::Refused(_) | SendError::AddressProhibited(_)), "{host}: {err}");
    }
    assert_eq!(s.requests.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn redirects_come_back_to_the_plugin_and_are_not_followed() {
    let s = server(Behaviour::Redirect).await;
    let c = call(
        &outbound(&grant(s.port, "")),
        declared(&[&format!("http://127.0.0.1:{}/", s.port)]),
        Arc::default(),
    );
    let answer = send(&c, request("GET", &format!("http://127.0.0.1:{}/v1/x", s.port))).await.unwrap();
    assert_eq!(answer.status, 302);
    assert_eq!(answer.headers["location"], "http://169.254.169.254/");
    // The plugin following it makes a new request, which the policy judges anew.
    let err = send(&c, request("GET", "http://169.254.169.254/")).await.unwrap_err();
    assert!(matches!(err, SendError::Refused(_)), "{err}");
}

#[tokio::test]
async fn a_secret_goes_only_to_its_destinations_and_never_comes_back() {
    let s = server(Behaviour::Echo).await;
    let grants = format!(
        "{}[services.payment.secrets.api-key]\nenv = \"KEY\"\ndestinations = [\"http://127.0.0.1:{}/v1/\"]\n\
         [[services.payment.destinations]]\nurl = \"http://127.0.0.1:{}/other/\"\n",
        grant(s.port, ""),
        s.port,
        s.port
    );
    let o = outbound(&grants);
    let all = declared(&[&format!("http://127.0.0.1:{}/", s.port)]);
    let journal = Arc::new(Journal::default());
    let c = call(&o, all.clone(), journal.clone());
    let mut r = request("POST", &format!("http://127.0.0.1:{}/v1/charges", s.port));
    r.headers.insert("authorization", "Bearer {{secret.api-key}}".parse().unwrap());
    let answer = send(&c, r).await.unwrap();
    let echoed = String::from_utf8_lossy(&answer.body);
    assert!(
        echoed.contains("authorization: Bearer [secret api-key]"),
        "the server got it, the plugin sees a mask: {echoed}"
    );
    assert!(
        !echoed.contains("sk_live_SECRET") && !format!("{:?}", answer.headers).contains("sk_live_SECRET")
    );
    assert!(!format!("{:?}", journal.exchanges()).contains("sk_live_SECRET"), "the journal never holds it");

    let mut elsewhere = request("POST", &format!("http://127.0.0.1:{}/other/x", s.port));
    elsewhere.headers.insert("authorization", "Bearer {{secret.api-key}}".parse().unwrap());
    let err = send(&c, elsewhere).await.unwrap_err();
    assert!(
        matches!(&err, SendError::Refused(m) if m.contains("api-key") && !m.contains("sk_live")),
        "{err}"
    );
    let mut unknown = request("POST", &format!("http://127.0.0.1:{}/v1/x", s.port));
    unknown.headers.insert("authorization", "{{secret.nope}}".parse().unwrap());
    assert!(matches!(send(&c, unknown).await, Err(SendError::Refused(_))));
    assert_eq!(s.requests.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_rerun_replays_the_answer_with_the_same_key_and_a_different_request_is_refused() {
    let s = server(Behaviour::Echo).await;
    let o = outbound(&grant(s.port, ""));
    let all = declared(&[&format!("http://127.0.0.1:{}/", s.port)]);
    let url = format!("http://127.0.0.1:{}/v1/charges", s.port);
    let journal = Arc::new(Journal::default());

    let first = call(&o, all.clone(), journal.clone());
    let answer = send(&first, request("POST", &url)).await.unwrap();
    let key = idempotency_key("payment", "key-1", 0);
    assert!(String::from_utf8_lossy(&answer.body).contains(&format!("idempotency-key: {key}")));

    // A re-run (after a version conflict) makes the same request: no second send.
    let again = call(&o, all.clone(), journal.clone());
    let replayed = send(&again, request("POST", &url)).await.unwrap();
    assert_eq!(replayed.body, answer.body);
    assert_eq!(s.requests.load(Ordering::SeqCst), 1, "replayed, not sent");
    // Its second request is new: sent, with the next position's key.
    let second = send(&again, request("POST", &url)).await.unwrap();
    assert!(String::from_utf8_lossy(&second.body).contains(&idempotency_key("payment", "key-1", 1)));

    let third = call(&o, all, journal.clone());
    let err = send(&third, request("POST", &format!("{url}/other"))).await.unwrap_err();
    assert!(matches!(&err, SendError::Diverged(m) if m.contains("request 1")), "{err}");
    assert!(third.diverged().is_some());
    assert_eq!(s.requests.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_slow_or_hostile_server_costs_a_bounded_amount_and_ends_in_a_clear_error() {
    for (behaviour, extra) in [
        (Behaviour::Silent, "timeout = \"300ms\""),
        (Behaviour::EndlessHeaders, "timeout = \"30s\""),
        (Behaviour::EndlessBody, "timeout = \"30s\"\nmax-response = \"64KiB\""),
    ] {
        let s = server(behaviour).await;
        let c = call(
            &outbound(&grant(s.port, extra)),
            declared(&[&format!("http://127.0.0.1:{}/", s.port)]),
            Arc::default(),
        );
        let err = send(&c, request("GET", &format!("http://127.0.0.1:{}/v1/x", s.port))).await.unwrap_err();
        let expected = match behaviour {
            Behaviour::Silent => matches!(err, SendError::Timeout(_)),
            Behaviour::EndlessHeaders => matches!(err, SendError::HeadersTooLarge(_)),
            _ => matches!(err, SendError::ResponseTooLarge(65536)),
        };
        assert!(expected, "{err}");
    }
}

#[tokio::test]
async fn an_invocation_makes_at_most_its_requests() {
    let s = server(Behaviour::Echo).await;
    let grants = format!("[services.payment]\nmax-requests = 2\n{}", grant(s.port, ""));
    let c = call(&outbound(&grants), declared(&[&format!("http://127.0.0.1:{}/", s.port)]), Arc::default());
    let url = format!("http://127.0.0.1:{}/v1/x", s.port);
    assert!(send(&c, request("GET", &url)).await.is_ok());
    assert!(send(&c, request("GET", &url)).await.is_ok());
    assert_eq!(send(&c, request("GET", &url)).await.unwrap_err(), SendError::TooMany(2));
}

#[test]
fn substitution_fills_every_placeholder_of_a_value() {
    let grants = Grants::parse(
        "[services.payment.secrets.a]\nenv = \"KEY\"\ndestinations = [\"http://x.com/\"]\n",
        &env,
    )
    .unwrap();
    let target = Target::of(&"http://x.com/y".parse().unwrap()).unwrap();
    let mut headers = http::HeaderMap::new();
    headers.insert("x-pair", "{{secret.a}}:{{secret.a}}".parse().unwrap());
    let used = substitute_secrets(&mut headers, grants.of("payment"), "GET", &target).unwrap();
    assert_eq!(used.len(), 1);
    assert_eq!(headers["x-pair"], "sk_live_SECRET:sk_live_SECRET");
    assert!(headers["x-pair"].is_sensitive(), "marked for hyper and tracing");
}
