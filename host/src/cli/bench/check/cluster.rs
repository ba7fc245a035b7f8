//! The hosts under test: each started again after its SIGKILL, and the clients' view
//! of them (requests to any host alive, sent again while the answer does not say).

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use rand::Rng;
use rand::seq::IndexedRandom;
use serde_json::Value;

use super::PATIENCE;
use crate::cli::bench::soak::Server;

/// A host of the run: what it is started with, again after each kill.
pub(super) struct Host {
    pub(super) plugins: PathBuf,
    pub(super) sagas: PathBuf,
    pub(super) data: PathBuf,
    pub(super) serve: Vec<String>,
    pub(super) token: String,
}

impl Host {
    pub(super) async fn start(&self) -> anyhow::Result<Server> {
        Server::start(&self.plugins, &self.sagas, &self.data, &self.serve, &self.token).await
    }
}

/// The hosts alive, as the clients see them.
pub(super) struct Cluster {
    pub(super) client: reqwest::Client,
    /// Each host's URL while it runs (`None` while it is down).
    pub(super) urls: RwLock<Vec<Option<String>>>,
    pub(super) token: String,
    /// The first few answers that refused or did not say, for the report.
    pub(super) notes: Mutex<Vec<String>>,
}

/// What a request came to, once it said.
pub(super) enum Answer {
    Ok(Value),
    /// It took no effect (a refusal, a bad request, a trap).
    Failed(String),
    /// No answer said, within the patience: it may or may not have.
    Unknown(String),
}

impl Cluster {
    pub(super) fn any(&self) -> Option<String> {
        let urls = self.urls.read().unwrap();
        let alive: Vec<&String> = urls.iter().flatten().collect();
        alive.choose(&mut rand::rng()).map(|url| (*url).clone())
    }

    /// POSTs `body` with idempotency key `key` to any host alive, again (to any host
    /// alive) while the answer does not say what happened.
    pub(super) async fn post(&self, path: &str, key: &str, body: &Value) -> Answer {
        let give_up = Instant::now() + PATIENCE;
        let mut last = String::from("no host was up");
        while Instant::now() < give_up {
            if let Some(url) = self.any() {
                let sent = self
                    .client
                    .post(format!("{url}{path}"))
                    .bearer_auth(&self.token)
                    .header("Idempotency-Key", key)
                    .json(body)
                    .send()
                    .await;
                match sent {
                    Ok(response) => {
                        let status = response.status();
                        let text = response.text().await.unwrap_or_default();
                        if status.is_success() {
                            return match serde_json::from_str(&text) {
                                Ok(value) => Answer::Ok(value),
                                Err(e) => {
                                    Answer::Unknown(format!("{status} with a body that is not JSON ({e})"))
                                }
                            };
                        }
                        // Conflicts, overload, a store failing, a deadline: nothing was
                        // stored, or the key replays what was. Anything else is final.
                        if !matches!(status.as_u16(), 409 | 429 | 502 | 503 | 504) {
                            return self.noted(Answer::Failed(format!("{path}: {status}: {text}")));
                        }
                        last = format!("{status}: {text}");
                    }
                    Err(error) => last = error.to_string(),
                }
            }
            let pause = rand::rng().random_range(20..120);
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
        self.noted(Answer::Unknown(format!("{path}: {last}")))
    }

    pub(super) fn noted(&self, answer: Answer) -> Answer {
        if let Answer::Failed(note) | Answer::Unknown(note) = &answer {
            let mut notes = self.notes.lock().unwrap();
            if notes.len() < 5 {
                notes.push(note.clone());
            }
        }
        answer
    }

    /// GETs `path` from any host alive until one answers.
    pub(super) async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let give_up = Instant::now() + PATIENCE;
        loop {
            if let Some(url) = self.any() {
                let response = self.client.get(format!("{url}{path}")).bearer_auth(&self.token).send().await;
                if let Ok(response) = response {
                    let status = response.status();
                    if status.is_success() {
                        return Ok(response.json().await?);
                    }
                    anyhow::ensure!(
                        status.is_server_error() && Instant::now() < give_up,
                        "GET {path}: {status}: {}",
                        response.text().await.unwrap_or_default()
                    );
                }
            }
            anyhow::ensure!(Instant::now() < give_up, "GET {path}: no host answered");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// SIGKILLs a host every `every` and starts it again after `down`, until `end`; then
/// every host is up. Returns the hosts and how many kills it made.
pub(super) async fn nemesis(
    cluster: Arc<Cluster>,
    mut hosts: Vec<(Server, Host)>,
    every: Duration,
    down: Duration,
    end: Instant,
) -> anyhow::Result<(Vec<(Server, Host)>, usize)> {
    let kills = AtomicUsize::new(0);
    if every.is_zero() {
        tokio::time::sleep_until(end.into()).await;
        return Ok((hosts, 0));
    }
    loop {
        let next = Instant::now() + every;
        if next + down >= end {
            tokio::time::sleep_until(end.into()).await;
            return Ok((hosts, kills.into_inner()));
        }
        tokio::time::sleep_until(next.into()).await;
        let victim = rand::rng().random_range(0..hosts.len());
        cluster.urls.write().unwrap()[victim] = None;
        let (server, host) = hosts.swap_remove(victim);
        server.kill();
        kills.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(down).await;
        let server = host.start().await?;
        cluster.urls.write().unwrap()[victim] = Some(server.url.clone());
        hosts.push((server, host));
        let last = hosts.len() - 1;
        hosts.swap(victim, last);
    }
}
