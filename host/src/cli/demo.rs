//! `wasaga demo`: the article's online store in one binary: the order, inventory,
//! payment and notification services and the `place-order` saga are built in, with
//! seed data, a dashboard, and optional generated traffic.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use rand::Rng;
use serde_json::{Value, json};

use super::RuntimeArgs;
use super::serve::{ServeArgs, run_with};
use super::tokens::ServerTokens;
use crate::http::AppState;
use crate::invoke::{Caller, Request};

/// The demo's services, built into this binary.
const SERVICES: &[(&str, &[u8])] = &[
    ("order", include_bytes!(concat!(env!("WASAGA_GUEST_DIR"), "/services/order.wasm"))),
    ("inventory", include_bytes!(concat!(env!("WASAGA_GUEST_DIR"), "/services/inventory.wasm"))),
    ("payment", include_bytes!(concat!(env!("WASAGA_GUEST_DIR"), "/services/payment.wasm"))),
    ("notification", include_bytes!(concat!(env!("WASAGA_GUEST_DIR"), "/services/notification.wasm"))),
];
const PLACE_ORDER: &str = include_str!("../../../plugins/sagas/place-order.toml");

/// Products (SKU, stock) and customers (name, balance in cents) the demo starts with.
const PRODUCTS: &[(&str, u64)] = &[("lamp", 500), ("desk", 200), ("chair", 1000), ("mug", 5000)];
const CUSTOMERS: &[(&str, i64)] = &[
    ("ada", 10_000_000),
    ("grace", 10_000_000),
    ("linus", 10_000_000),
    ("margaret", 10_000_000),
    ("poor-paul", 500),
];

/// Run the demo: an online store, with its dashboard at http://ADDR/.
///
/// Four services (order, inventory, payment, notification) and the place-order saga,
/// all built into this binary, on SQLite in a fresh temporary directory (or --data,
/// where a second start resumes where the first stopped and seeds nothing again), or
/// on PostgreSQL with --database.
/// Prints the URL and a few curl lines to try. --traffic generates orders, some
/// declined and some with a flaky mail server, so that the dashboard shows life.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Keep the demo's data here (default: a fresh temporary directory).
    #[arg(long, env = "WASAGA_DATA")]
    data: Option<PathBuf>,

    /// Keep the demo's data in PostgreSQL instead (a connection string; see `wasaga
    /// serve --help`). A second start on it resumes and seeds nothing again.
    #[arg(long, env = "WASAGA_DATABASE", hide_env_values = true)]
    database: Option<String>,

    /// Address to listen on; port 0 picks a free port.
    #[arg(long, env = "WASAGA_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,

    /// Orders per second to generate (off unless given).
    #[arg(long)]
    traffic: Option<f64>,

    /// Share of generated orders from a customer too poor to pay (declined, then
    /// compensated).
    #[arg(long, default_value_t = 0.2)]
    declined_share: f64,

    /// Share of generated orders whose confirmation mail fails twice first (retried
    /// after the pivot).
    #[arg(long, default_value_t = 0.2)]
    flaky_share: f64,

    /// Serve this component for one of the demo's services instead of the built-in
    /// one (repeatable), e.g. `--service payment=payment.wasm` for the payment written
    /// in JavaScript (plugins/js/payment; see the README's "Writing a plugin").
    #[arg(long = "service", value_name = "NAME=FILE", value_parser = parse_service)]
    services: Vec<(String, PathBuf)>,

    /// Keep the money in the payment service itself, instead of charging a card
    /// processor (by default the demo runs one, `wasaga provider`, as a process of its
    /// own on loopback, its ledger in the data directory; the payment service calls it
    /// over HTTP through the host's policy). Implied by `--service payment=...`.
    #[arg(long)]
    no_provider: bool,

    /// POST alerts (a saga stuck, a step out of retries) as JSON to this URL.
    #[arg(long, env = "WASAGA_ALERT_WEBHOOK")]
    alert_webhook: Option<String>,

    /// Export OpenTelemetry traces over OTLP/HTTP to this collector (e.g.
    /// http://localhost:4318; or OTEL_EXPORTER_OTLP_ENDPOINT: see `wasaga serve --help`).
    #[arg(long)]
    otlp_endpoint: Option<String>,

    /// The demo makes up an admin token and prints it, unless one is given here (or
    /// in WASAGA_ADMIN_TOKEN).
    #[command(flatten)]
    tokens: ServerTokens,

    #[command(flatten)]
    runtime: RuntimeArgs,
}

pub async fn run(args: DemoArgs) -> anyhow::Result<std::process::ExitCode> {
    let mut tokens = args.tokens.resolve()?;
    let admin_token = tokens.admin.get_or_insert_with(super::tokens::generate).clone();
    let (data, _temporary) = match &args.data {
        Some(dir) => (dir.clone(), None),
        None => {
            let dir = tempfile::Builder::new().prefix("wasaga-demo-").tempdir()?;
            (dir.path().to_owned(), Some(dir))
        }
    };
    let plugins = data.join("demo").join("plugins");
    let sagas = data.join("demo").join("sagas");
    install(&plugins, &sagas)
        .with_context(|| format!("writing the demo's plugins under {}", data.display()))?;
    for (service, file) in &args.services {
        let wasm = std::fs::read(file)
            .with_context(|| format!("--service {service}: reading {}", file.display()))?;
        write_if_changed(&plugins.join(format!("{service}.wasm")), &wasm)
            .with_context(|| format!("writing the demo's plugins under {}", data.display()))?;
    }
    // The card processor, unless the money stays in the payment service (a payment
    // of one's own may not speak to it).
    let own_payment = args.services.iter().any(|(service, _)| service == "payment");
    let processor = match args.no_provider || own_payment {
        true => None,
        false => Some(super::provider::Processor::start(Some(&data.join("demo").join("provider.json")))?),
    };
    let granted = processor.as_ref().map(super::provider::Processor::grants).transpose()?;
    let provider_url = processor.as_ref().map(|p| p.url.clone());
    let (traffic, declined, flaky) = (args.traffic, args.declined_share, args.flaky_share);
    let stored_in = match &args.database {
        Some(_) => "PostgreSQL (--database)".to_owned(),
        None => data.display().to_string(),
    };
    let server = ServeArgs::demo(plugins, sagas, data.clone(), args.database, args.listen, args.runtime)?
        .alert_webhook(args.alert_webhook)
        .otlp_endpoint(args.otlp_endpoint)
        .granted(granted);
    let shown_provider = provider_url.clone();
    let served = run_with(server, tokens, move |state, addr| {
        print_welcome(addr, &stored_in, &admin_token, shown_provider.as_deref());
        tokio::spawn(async move {
            let mut tries = 0;
            while let Err(error) = seed(&state, provider_url.as_deref()).await {
                tries += 1;
                tracing::error!("seeding the demo failed ({tries} of 10): {error:#}");
                if tries == 10 {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            if let Some(rate) = traffic {
                generate(state, rate, declined, flaky).await;
            }
        });
    })
    .await;
    drop(processor);
    served
}

/// Writes the built-in plugins and saga definition where the server loads them (only
/// when they differ, so that a restart does not count as a reload).
pub(super) fn install(plugins: &Path, sagas: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(plugins)?;
    std::fs::create_dir_all(sagas)?;
    for (name, wasm) in SERVICES {
        write_if_changed(&plugins.join(format!("{name}.wasm")), wasm)?;
    }
    write_if_changed(&sagas.join("place-order.toml"), PLACE_ORDER.as_bytes())
}

/// `NAME=FILE` of `--service`: NAME one of the demo's services.
fn parse_service(text: &str) -> Result<(String, PathBuf), String> {
    let (name, file) = text.split_once('=').ok_or("expected NAME=FILE, e.g. payment=payment.wasm")?;
    if !SERVICES.iter().any(|(service, _)| *service == name) {
        let names: Vec<&str> = SERVICES.iter().map(|(service, _)| *service).collect();
        return Err(format!("`{name}` is not one of the demo's services ({})", names.join(", ")));
    }
    Ok((name.to_owned(), PathBuf::from(file)))
}

fn write_if_changed(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if std::fs::read(path).ok().as_deref() != Some(bytes) {
        std::fs::write(path, bytes)?;
    }
    Ok(())
}

/// Where payment keeps the money (at every start: the processor's port changes), then
/// stock and accounts, once per store: the last product stocked says it was done.
async fn seed(state: &AppState, provider: Option<&str>) -> anyhow::Result<()> {
    let call = async |service: &str, operation: &str, key: String, input: Value| -> anyhow::Result<()> {
        let request = Request::new(Caller::Operator, service, operation, input.to_string().into_bytes(), key);
        let invoked = state.invoker.invoke(request).await?;
        invoked
            .result
            .map(|_| ())
            .map_err(|reason| anyhow::anyhow!("{service}.{operation} refused: {reason}"))
    };
    if state.invoker.registry().get("payment").is_some_and(|p| p.manifest().operation("configure").is_some())
    {
        let key = format!("demo-configure-{}", provider.unwrap_or("here"));
        call("payment", "configure", key, json!({ "provider": provider })).await?;
    }
    let (last, _) = PRODUCTS[PRODUCTS.len() - 1];
    if state.store.snapshot("inventory")?.get(&format!("stock/{last}")).await?.value.is_some() {
        tracing::info!("demo data already seeded");
        return Ok(());
    }
    for (sku, qty) in PRODUCTS {
        call("inventory", "restock", format!("demo-restock-{sku}"), json!({"sku": sku, "qty": qty})).await?;
    }
    for (customer, balance) in CUSTOMERS {
        let input = json!({"customer": customer, "balance": balance});
        call("payment", "open-account", format!("demo-open-{customer}"), input).await?;
    }
    tracing::info!(products = PRODUCTS.len(), customers = CUSTOMERS.len(), "demo data seeded");
    Ok(())
}

/// Starts `rate` orders a second until the process ends, restocking now and then so
/// that the store does not run dry.
async fn generate(state: AppState, rate: f64, declined: f64, flaky: f64) {
    let every = Duration::from_secs_f64(1.0 / rate.max(0.01));
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut since_restock = 0u64;
    loop {
        ticker.tick().await;
        since_restock += 1;
        if since_restock >= 100 {
            since_restock = 0;
            for (sku, qty) in PRODUCTS {
                let key = format!("demo-restock-{sku}-{}", uuid::Uuid::now_v7().simple());
                let input = json!({"sku": sku, "qty": qty / 2}).to_string().into_bytes();
                if let Err(error) = state
                    .invoker
                    .invoke(Request::new(Caller::Operator, "inventory", "restock", input, key))
                    .await
                {
                    tracing::warn!("demo restock failed: {error}");
                }
            }
        }
        let input = {
            let mut rng = rand::rng();
            let id = uuid::Uuid::now_v7().simple().to_string();
            let customer = if rng.random_bool(declined.clamp(0.0, 1.0)) {
                "poor-paul"
            } else {
                CUSTOMERS[rng.random_range(0..CUSTOMERS.len() - 1)].0
            };
            let (sku, _) = PRODUCTS[rng.random_range(0..PRODUCTS.len())];
            let mut input = json!({
                // The random tail of a UUID v7: 48 random bits.
                "order": format!("o-{}", &id[20..]),
                "customer": customer,
                "sku": sku,
                "qty": rng.random_range(1..3),
                "amount": rng.random_range(5..120) * 100,
            });
            if rng.random_bool(flaky.clamp(0.0, 1.0)) {
                input["notification_transient_failures"] = json!(2);
            }
            input
        };
        let key = format!("demo-{}", input["order"].as_str().unwrap_or_default());
        // The root of the order's trace, as a client's request would be.
        let mut root = crate::trace::Span::start(|| "demo order".into(), None, crate::trace::Kind::Internal);
        root.set("wasaga.saga.key", key.as_str());
        if let Err(error) = state.sagas.start_traced("place-order", &key, input, root.context()).await {
            tracing::warn!("generated order not started: {error}");
        }
    }
}

fn print_welcome(addr: SocketAddr, data: &str, admin_token: &str, provider: Option<&str>) {
    let url = format!("http://{addr}");
    let money = match provider {
        Some(processor) => {
            format!("a card processor at {processor} (wasaga provider; its ledger: {processor}/v1/ledger)")
        }
        None => "the payment service's own records (--no-provider)".to_owned(),
    };
    super::say(&format!("listening on {url}"));
    super::say(&format!(
        r#"
wasaga demo: an online store (order, inventory, payment, notification + the place-order saga)

  dashboard    {url}/
  data         {}
  payments     {money}
  metrics      {url}/metrics
  admin token  {admin_token}
               (operator actions need it: the dashboard asks for it; for the CLI and curl:
                export WASAGA_ADMIN_TOKEN={admin_token})

Place an order (it completes):
  curl -s '{url}/v1/sagas/place-order?wait=10s' -H 'Idempotency-Key: order-1' \
       -d '{{"order": "o-1", "customer": "ada", "sku": "lamp", "qty": 1, "amount": 2500}}'

One that is declined (stock released, order cancelled with the reason):
  curl -s '{url}/v1/sagas/place-order?wait=10s' -H 'Idempotency-Key: order-2' \
       -d '{{"order": "o-2", "customer": "poor-paul", "sku": "lamp", "qty": 1, "amount": 2500}}'

One that gets stuck (releasing the stock keeps failing), then an operator finishes it:
  curl -s '{url}/v1/sagas/place-order?wait=10s' -H 'Idempotency-Key: order-3' \
       -d '{{"order": "o-3", "customer": "poor-paul", "sku": "desk", "qty": 1, "amount": 9900, "release_transient_failures": 3}}'
  curl -s -X POST {url}/v1/sagas/<id>/retry -H "Authorization: Bearer $WASAGA_ADMIN_TOKEN"

Look at a record:
  curl -s {url}/v1/services/inventory/records/stock/lamp
"#,
        data
    ));
}
