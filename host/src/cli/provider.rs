//! `wasaga provider`: a card processor on loopback, for the demo and the tests, with
//! the parts of a real one that make exactly-once hard: idempotency keys replayed for
//! a day (the same key with other parameters refused, a key still in flight 409),
//! declines, and a ledger of its own to check the host against.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use clap::Args;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::clock::now_ms;
use crate::config::parse_duration;

/// Run a card processor on loopback, Stripe-like, for the demo and the tests.
///
/// `POST /v1/customers {id, balance}` opens or sets an account (cents);
/// `POST /v1/charges {customer, amount, order}` charges it (402 `card_declined` past
/// its balance); `POST /v1/refunds {charge}` refunds a charge once; `GET /v1/ledger`
/// is everything it did. Every POST needs an `Idempotency-Key`: the same key and
/// parameters replay the first answer for `--replay-window` (with
/// `Idempotent-Replayed: true`), other parameters are refused (400), a key still in
/// flight is 409. Prints `listening on http://ADDR` once ready.
#[derive(Debug, Args)]
pub struct ProviderArgs {
    /// Where to listen (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,

    /// The API key callers send as `Authorization: Bearer KEY`; none: no check.
    #[arg(long, env = "WASAGA_PROVIDER_KEY", hide_env_values = true)]
    api_key: Option<String>,

    /// How long each request takes before it is answered (a slow processor).
    #[arg(long, default_value = "0ms", value_parser = parse_wait)]
    delay: Duration,

    /// How long an idempotency key's answer is replayed.
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    replay_window: Duration,

    /// Keep the ledger (accounts, charges, refunds, answered keys) in this JSON file,
    /// read at start and rewritten after each change; without it, in memory only.
    #[arg(long)]
    data: Option<PathBuf>,

    /// Stop when the process that started this one stops (the demo's own processor).
    #[arg(long)]
    die_with_parent: bool,
}

fn parse_wait(text: &str) -> anyhow::Result<Duration> {
    if text.trim_start_matches('0').trim_end_matches("ms").is_empty() {
        return Ok(Duration::ZERO);
    }
    parse_duration(text)
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Ledger {
    customers: HashMap<String, i64>,
    charges: Vec<Charge>,
    refunds: Vec<Refund>,
    keys: HashMap<String, Key>,
    /// Requests answered (replays included), by route; and the replays alone.
    #[serde(skip)]
    requests: HashMap<&'static str, u64>,
    #[serde(skip)]
    replayed: u64,
}

#[derive(Debug, Serialize, Deserialize)]
enum Key {
    InFlight,
    /// Answered at `at` (unix ms) with `status` and `body`.
    Done {
        fingerprint: String,
        status: u16,
        body: Value,
        at: i64,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Charge {
    id: String,
    customer: String,
    order: String,
    amount: i64,
    refunded: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Refund {
    id: String,
    charge: String,
    amount: i64,
}

struct Provider {
    ledger: Mutex<Ledger>,
    api_key: Option<String>,
    delay: Duration,
    replay_window: Duration,
    data: Option<PathBuf>,
}

impl Provider {
    /// Writes the ledger to its file, if it has one (whole, then renamed into place).
    fn save(&self, ledger: &Ledger) {
        let Some(file) = &self.data else { return };
        let temporary = file.with_extension("tmp");
        let written = serde_json::to_vec(ledger)
            .map_err(std::io::Error::other)
            .and_then(|bytes| std::fs::write(&temporary, bytes))
            .and_then(|()| std::fs::rename(&temporary, file));
        if let Err(error) = written {
            tracing::error!("the provider's ledger could not be saved to {}: {error}", file.display());
        }
    }
}

type Shared = State<Arc<Provider>>;

pub async fn run(args: ProviderArgs) -> anyhow::Result<std::process::ExitCode> {
    if args.die_with_parent {
        die_with_parent()?;
    }
    let ledger = match &args.data {
        Some(file) if file.exists() => {
            let mut ledger: Ledger = serde_json::from_slice(&std::fs::read(file)?)
                .map_err(|e| anyhow::anyhow!("{} is not a provider's ledger: {e}", file.display()))?;
            // A request cut short by the last stop was never answered: its key is free.
            ledger.keys.retain(|_, key| matches!(key, Key::Done { .. }));
            ledger
        }
        _ => Ledger::default(),
    };
    let provider = Arc::new(Provider {
        ledger: Mutex::new(ledger),
        api_key: args.api_key,
        delay: args.delay,
        replay_window: args.replay_window,
        data: args.data,
    });
    let app = Router::new()
        .route("/v1/customers", post(customers))
        .route("/v1/charges", post(charges))
        .route("/v1/refunds", post(refunds))
        .route("/v1/ledger", get(show_ledger))
        .with_state(provider);
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    super::say(&format!("listening on http://{}", listener.local_addr()?));
    axum::serve(listener, app).await?;
    Ok(std::process::ExitCode::SUCCESS)
}

fn error(status: StatusCode, code: &str, message: &str) -> (StatusCode, Value) {
    (status, json!({ "error": { "code": code, "message": message } }))
}

type Operation = fn(&mut Ledger, Value) -> (StatusCode, Value);

/// The idempotency and authentication every POST goes through, around `operate`.
/// Once a key is taken, the request is carried out to its end in a task of its own,
/// as a real processor does: a caller that goes away (or is killed) meanwhile leaves a
/// charge made, and its retry with the same key gets that charge's answer.
async fn idempotent(
    provider: Arc<Provider>,
    route: &'static str,
    headers: HeaderMap,
    body: Bytes,
    operate: Operation,
) -> Response {
    if let Some(key) = &provider.api_key {
        let sent = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        if sent != Some(format!("Bearer {key}").as_str()) {
            return answer(
                error(StatusCode::UNAUTHORIZED, "unauthorized", "a wrong or missing API key"),
                false,
            );
        }
    }
    let Some(key) = headers.get("idempotency-key").and_then(|v| v.to_str().ok()).map(str::to_owned) else {
        return answer(
            error(StatusCode::BAD_REQUEST, "missing_idempotency_key", "send an Idempotency-Key"),
            false,
        );
    };
    let fingerprint = hex::encode(Sha256::new().chain_update(route).chain_update(&body).finalize());
    let window = i64::try_from(provider.replay_window.as_millis()).unwrap_or(i64::MAX);
    {
        let mut ledger = provider.ledger.lock().expect("ledger poisoned");
        *ledger.requests.entry(route).or_default() += 1;
        match ledger.keys.get(&key) {
            Some(Key::InFlight) => {
                return answer(
                    error(
                        StatusCode::CONFLICT,
                        "idempotency_key_in_use",
                        "a request with this key is in flight",
                    ),
                    false,
                );
            }
            Some(Key::Done { fingerprint: seen, status, body, at }) if now_ms() - at < window => {
                if *seen != fingerprint {
                    let message = "this key was used with other parameters";
                    return answer(error(StatusCode::BAD_REQUEST, "idempotency_error", message), false);
                }
                let replay = (StatusCode::from_u16(*status).unwrap_or(StatusCode::OK), body.clone());
                ledger.replayed += 1;
                return answer(replay, true);
            }
            _ => {}
        }
        ledger.keys.insert(key.clone(), Key::InFlight);
    }
    let done = tokio::spawn(async move {
        if !provider.delay.is_zero() {
            tokio::time::sleep(provider.delay).await;
        }
        let mut ledger = provider.ledger.lock().expect("ledger poisoned");
        let (status, body) = match serde_json::from_slice::<Value>(&body) {
            Ok(input) => operate(&mut ledger, input),
            Err(e) => error(StatusCode::BAD_REQUEST, "invalid_json", &e.to_string()),
        };
        let now = now_ms();
        let done = Key::Done { fingerprint, status: status.as_u16(), body: body.clone(), at: now };
        ledger.keys.insert(key, done);
        // Keys past the window are answered anew: forgotten, so that they hold no memory.
        ledger.keys.retain(|_, key| !matches!(key, Key::Done { at, .. } if now - *at >= window));
        provider.save(&ledger);
        (status, body)
    });
    answer(done.await.expect("an operation never panics"), false)
}

#[cfg(target_os = "linux")]
fn die_with_parent() -> anyhow::Result<()> {
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::TERM))?;
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn die_with_parent() -> anyhow::Result<()> {
    Ok(())
}

fn answer((status, body): (StatusCode, Value), replayed: bool) -> Response {
    let mut response = (status, axum::Json(body)).into_response();
    if replayed {
        response.headers_mut().insert("idempotent-replayed", header::HeaderValue::from_static("true"));
    }
    response
}

#[derive(Deserialize)]
struct CustomerForm {
    id: String,
    balance: i64,
}

async fn customers(State(p): Shared, headers: HeaderMap, body: Bytes) -> Response {
    idempotent(p, "customers", headers, body, |ledger, input| {
        let Ok(form) = serde_json::from_value::<CustomerForm>(input) else {
            return error(StatusCode::BAD_REQUEST, "invalid_request", "expected {id, balance}");
        };
        ledger.customers.insert(form.id.clone(), form.balance);
        (StatusCode::OK, json!({ "id": form.id, "balance": form.balance }))
    })
    .await
}

#[derive(Deserialize)]
struct ChargeForm {
    customer: String,
    amount: i64,
    order: String,
}

async fn charges(State(p): Shared, headers: HeaderMap, body: Bytes) -> Response {
    idempotent(p, "charges", headers, body, |ledger, input| {
        let Ok(form) = serde_json::from_value::<ChargeForm>(input) else {
            return error(StatusCode::BAD_REQUEST, "invalid_request", "expected {customer, amount, order}");
        };
        if form.amount <= 0 {
            return error(StatusCode::BAD_REQUEST, "invalid_amount", "the amount must be positive");
        }
        let Some(balance) = ledger.customers.get_mut(&form.customer) else {
            return error(StatusCode::PAYMENT_REQUIRED, "card_declined", "no such customer");
        };
        if *balance < form.amount {
            return error(StatusCode::PAYMENT_REQUIRED, "card_declined", "insufficient funds");
        }
        *balance -= form.amount;
        let charge = Charge {
            id: format!("ch_{}", ledger.charges.len() + 1),
            customer: form.customer,
            order: form.order,
            amount: form.amount,
            refunded: false,
        };
        ledger.charges.push(charge.clone());
        (StatusCode::OK, serde_json::to_value(charge).expect("a charge is JSON"))
    })
    .await
}

#[derive(Deserialize)]
struct RefundForm {
    charge: String,
}

async fn refunds(State(p): Shared, headers: HeaderMap, body: Bytes) -> Response {
    idempotent(p, "refunds", headers, body, |ledger, input| {
        let Ok(form) = serde_json::from_value::<RefundForm>(input) else {
            return error(StatusCode::BAD_REQUEST, "invalid_request", "expected {charge}");
        };
        let Some(charge) = ledger.charges.iter_mut().find(|c| c.id == form.charge) else {
            return error(StatusCode::NOT_FOUND, "no_such_charge", "no such charge");
        };
        if charge.refunded {
            return error(
                StatusCode::BAD_REQUEST,
                "charge_already_refunded",
                "the charge was refunded already",
            );
        }
        charge.refunded = true;
        let (customer, amount) = (charge.customer.clone(), charge.amount);
        *ledger.customers.entry(customer).or_default() += amount;
        let refund = Refund { id: format!("re_{}", ledger.refunds.len() + 1), charge: form.charge, amount };
        ledger.refunds.push(refund.clone());
        (StatusCode::OK, serde_json::to_value(refund).expect("a refund is JSON"))
    })
    .await
}

async fn show_ledger(State(p): Shared) -> axum::Json<Value> {
    let ledger = p.ledger.lock().expect("ledger poisoned");
    axum::Json(json!({
        "customers": ledger.customers,
        "charges": ledger.charges,
        "refunds": ledger.refunds,
        "requests": ledger.requests,
        "replayed": ledger.replayed,
    }))
}

/// A card processor for the demo and the benchmarks: `wasaga provider` in a process of
/// its own, with an API key made up for this run, its ledger in `ledger` if given;
/// stopped when dropped (and by the kernel if this process dies first).
pub(super) struct Processor {
    child: std::process::Child,
    pub(super) url: String,
    api_key: String,
}

impl Processor {
    pub(super) fn start(ledger: Option<&std::path::Path>) -> anyhow::Result<Processor> {
        use std::io::BufRead;
        let api_key = super::tokens::generate();
        let mut command = std::process::Command::new(std::env::current_exe()?);
        command.args(["provider", "--die-with-parent"]).env("WASAGA_PROVIDER_KEY", &api_key);
        if let Some(file) = ledger {
            command.arg("--data").arg(file);
        }
        let mut child = command
            .stdout(std::process::Stdio::piped())
            .spawn()
            .context("starting a card processor (wasaga provider)")?;
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line)?;
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .with_context(|| format!("the card processor did not start: {line:?}"))?
            .to_owned();
        Ok(Processor { child, url, api_key })
    }

    /// The payment service's grant: the processor's `/v1/` (a loopback address, so
    /// named), and its API key as the secret `provider-key`.
    pub(super) fn grants(&self) -> anyhow::Result<crate::outbound::Outbound> {
        let text = format!(
            "[[services.payment.destinations]]\nurl = \"{url}/v1/\"\nmethods = [\"POST\"]\n\
             [services.payment.secrets.provider-key]\nenv = \"KEY\"\ndestinations = [\"{url}/v1/\"]\n",
            url = self.url
        );
        let grants = crate::outbound::Grants::parse(&text, &|_| Some(self.api_key.clone()))?;
        Ok(crate::outbound::Outbound::new(grants))
    }

    /// The CPU time its process used so far.
    pub(super) fn cpu_time(&self) -> Duration {
        super::bench::process_cpu_time(self.child.id())
    }
}

impl Drop for Processor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
