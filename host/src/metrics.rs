//! Prometheus metrics, served as text at `GET /metrics`: OpenMetrics to a scraper that
//! asks for it (Prometheus does), the Prometheus text format (0.0.4) otherwise.
//!
//! One process-wide set ([`metrics()`]): the places that count (the invocation path,
//! the writer, the saga driver, the registry) reach it directly rather than through
//! every constructor. Names are prefixed `wasaga_`.

use std::sync::OnceLock;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;
type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

/// Every metric wasaga keeps.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Invocations by service, operation and outcome (`ok`, `rejected`, `replayed`,
    /// `transient`, `failed`), for loaded services and their declared operations only.
    pub invocations: Family<Labels, Counter>,
    /// Calls of a service or operation that does not exist: counted without labels, as
    /// their names come from whoever calls (300 made-up names once grew /metrics to
    /// 2.4 MB).
    pub unknown_calls: Counter,
    /// Commits refused by a version check (each one re-runs the invocation).
    pub conflicts: Family<Labels, Counter>,
    /// Invocations answered from a stored outcome.
    pub replays: Family<Labels, Counter>,
    /// Commits per write transaction (group commit).
    pub commit_batch: Histogram,
    /// An invocation's record reads answered from the PostgreSQL store's cache, and
    /// those that went to the database.
    pub cache_hits: Counter,
    pub cache_misses: Counter,
    /// The WAL's size, after the last batch.
    pub wal_bytes: Gauge,
    /// 1 while the store cannot write (disk full, I/O errors), else 0.
    pub store_failing: Gauge,
    /// Checkpoints that restart the WAL, in seconds: the time commits waited.
    pub wal_checkpoint: Histogram,
    /// Saga step calls, by saga, step, direction (`do`, `undo`) and outcome, in seconds.
    pub step_seconds: HistogramFamily,
    /// Whole sagas, start to end, by saga and final status, in seconds.
    pub saga_seconds: HistogramFamily,
    /// Sagas by status, refreshed at each scrape.
    pub sagas: Family<Labels, Gauge>,
    /// Stuck sagas, refreshed at each scrape.
    pub stuck: Gauge,
    /// Plugin versions replaced (file changes and uploads).
    pub reloads: Counter,
    /// Plugin versions refused at load or reload.
    pub refused: Counter,
    /// Components loaded, by where their code came from (`compilation`, `cache`).
    pub plugin_loads: Family<Labels, Counter>,
    /// Event delivery attempts by subscriber and result (`delivered`, `pending`: failed
    /// and to be retried, `dead`).
    pub deliveries: Family<Labels, Counter>,
    /// What retention forgot, by kind (`idempotency_records`, `sagas`, `events`,
    /// `tombstones`).
    pub pruned: Family<Labels, Counter>,
    /// Plugins' HTTP requests by service, destination (the grant's URL, `none` when no
    /// grant matched) and result (`2xx`…`5xx`, `replayed`, `refused`, `failed`).
    pub outbound_requests: Family<Labels, Counter>,
    /// Plugins' HTTP requests sent, by service and destination, in seconds.
    pub outbound_seconds: HistogramFamily,
    /// Alerts raised, by kind; and webhook deliveries that failed for good.
    pub alerts: Family<Labels, Counter>,
    pub alert_failures: Counter,
}

fn latency_histogram() -> Histogram {
    // 0.5 ms to ~16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("wasaga");
        let metrics = Metrics {
            invocations: Family::default(),
            unknown_calls: Counter::default(),
            conflicts: Family::default(),
            replays: Family::default(),
            commit_batch: Histogram::new(exponential_buckets(1.0, 2.0, 10)),
            cache_hits: Counter::default(),
            cache_misses: Counter::default(),
            wal_bytes: Gauge::default(),
            store_failing: Gauge::default(),
            wal_checkpoint: latency_histogram(),
            step_seconds: Family::new_with_constructor(latency_histogram),
            saga_seconds: Family::new_with_constructor(latency_histogram),
            sagas: Family::default(),
            stuck: Gauge::default(),
            reloads: Counter::default(),
            refused: Counter::default(),
            plugin_loads: Family::default(),
            deliveries: Family::default(),
            pruned: Family::default(),
            outbound_requests: Family::default(),
            outbound_seconds: Family::new_with_constructor(latency_histogram),
            alerts: Family::default(),
            alert_failures: Counter::default(),
            registry: Registry::default(),
        };
        registry.register(
            "invocations",
            "Invocations by service, operation and outcome",
            metrics.invocations.clone(),
        );
        registry.register(
            "unknown_calls",
            "Calls of a service or operation that is not loaded",
            metrics.unknown_calls.clone(),
        );
        registry.register(
            "occ_conflicts",
            "Commits refused by a version check, each re-run",
            metrics.conflicts.clone(),
        );
        registry.register(
            "idempotent_replays",
            "Invocations answered from a stored outcome",
            metrics.replays.clone(),
        );
        registry.register(
            "commit_batch_size",
            "Commits per write transaction (group commit)",
            metrics.commit_batch.clone(),
        );
        registry.register(
            "record_cache_hits",
            "Record reads of invocations answered from memory (PostgreSQL store)",
            metrics.cache_hits.clone(),
        );
        registry.register(
            "record_cache_misses",
            "Record reads of invocations that went to the database (PostgreSQL store)",
            metrics.cache_misses.clone(),
        );
        registry.register("wal_bytes", "The SQLite WAL's size, in bytes", metrics.wal_bytes.clone());
        registry.register(
            "store_failing",
            "1 while the store cannot write (disk full, I/O errors): writes are refused",
            metrics.store_failing.clone(),
        );
        registry.register(
            "wal_checkpoint_seconds",
            "Checkpoints that restart the WAL, in seconds (commits wait meanwhile)",
            metrics.wal_checkpoint.clone(),
        );
        registry.register("saga_step_seconds", "Saga step calls, in seconds", metrics.step_seconds.clone());
        registry.register(
            "outbound_requests",
            "Plugins' HTTP requests by service, destination and result",
            metrics.outbound_requests.clone(),
        );
        registry.register(
            "outbound_request_seconds",
            "Plugins' HTTP requests sent, by service and destination, in seconds",
            metrics.outbound_seconds.clone(),
        );
        registry.register(
            "saga_seconds",
            "Sagas from start to end, in seconds",
            metrics.saga_seconds.clone(),
        );
        registry.register(
            "sagas",
            "Sagas in the store, by status (finished ones leave after the saga retention)",
            metrics.sagas.clone(),
        );
        registry.register("sagas_stuck", "Sagas stuck and waiting for an operator", metrics.stuck.clone());
        registry.register("plugin_reloads", "Plugin versions replaced", metrics.reloads.clone());
        registry.register("plugin_refusals", "Plugin versions refused", metrics.refused.clone());
        registry.register(
            "plugin_loads",
            "Components loaded, by where their code came from (compilation, or the cache of compiled components)",
            metrics.plugin_loads.clone(),
        );
        registry.register(
            "event_deliveries",
            "Event delivery attempts by subscriber and result",
            metrics.deliveries.clone(),
        );
        registry.register("pruned", "What retention forgot, by kind", metrics.pruned.clone());
        registry.register("alerts", "Alerts raised, by kind", metrics.alerts.clone());
        registry.register(
            "alert_webhook_failures",
            "Alert webhook deliveries that failed for good",
            metrics.alert_failures.clone(),
        );
        Metrics { registry, ..metrics }
    }

    /// Every metric, as OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }

    /// The Prometheus text format (0.0.4), for what does not ask for OpenMetrics
    /// (promtool, curl, older scrapers): the same samples, but a counter's `# HELP` and
    /// `# TYPE` name it with its `_total` (OpenMetrics names the family without), and
    /// there is no `# UNIT` and no `# EOF`.
    pub fn encode_text(&self) -> String {
        text_format(&self.encode())
    }
}

fn text_format(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut text = String::with_capacity(openmetrics.len() + 16 * counters.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let comment = ["# HELP ", "# TYPE "].into_iter().find(|c| line.starts_with(c));
        if let Some(comment) = comment {
            let rest = &line[comment.len()..];
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            if counters.contains(name) {
                text.push_str(&format!("{comment}{name}_total {tail}\n"));
                continue;
            }
        }
        text.push_str(line);
        text.push('\n');
    }
    text
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// Label helper: `labels(&[("service", "inventory")])`.
pub fn labels(pairs: &[(&'static str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect()
}

pub fn seconds(d: Duration) -> f64 {
    d.as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// promtool reads a counter's help under its `_total` name; nothing else changes.
    #[test]
    fn the_text_format_names_counters_with_their_total() {
        let openmetrics = "# HELP wasaga_x Calls.\n# TYPE wasaga_x counter\nwasaga_x_total{a=\"b\"} 3\n\
            # HELP wasaga_y_bytes Size.\n# TYPE wasaga_y_bytes gauge\n# UNIT wasaga_y_bytes bytes\nwasaga_y_bytes 7\n# EOF\n";
        assert_eq!(
            text_format(openmetrics),
            "# HELP wasaga_x_total Calls.\n# TYPE wasaga_x_total counter\nwasaga_x_total{a=\"b\"} 3\n\
             # HELP wasaga_y_bytes Size.\n# TYPE wasaga_y_bytes gauge\nwasaga_y_bytes 7\n"
        );
    }
}
