//! Alerts: when a saga cannot finish by itself (stuck) or a step used up its retries.
//! Each alert is an ERROR log line and a metric, and, when a webhook is configured,
//! a JSON POST to it, retried with backoff.

use std::time::Duration;

use serde::Serialize;

use crate::metrics::{labels, metrics};

/// What an alert says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Alert {
    /// `saga_stuck` or `step_retries_exhausted`.
    pub kind: &'static str,
    pub saga_id: String,
    pub saga: String,
    pub step: Option<String>,
    pub reason: String,
    /// Unix ms.
    pub at: i64,
}

/// Raises alerts. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Alerter {
    webhook: Option<String>,
    client: reqwest::Client,
}

/// Webhook deliveries are tried this many times.
const ATTEMPTS: u32 = 5;

impl Alerter {
    /// Alerts to the log and metrics only.
    pub fn none() -> Self {
        Alerter::default()
    }

    /// Alerts to the log and metrics, and POSTed as JSON to `url`.
    pub fn with_webhook(url: String) -> Self {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap_or_default();
        Alerter { webhook: Some(url), client }
    }

    pub fn raise(&self, alert: Alert) {
        tracing::error!(
            kind = alert.kind,
            saga = %alert.saga_id,
            name = %alert.saga,
            step = alert.step.as_deref().unwrap_or(""),
            reason = %crate::text::printable(&alert.reason),
            "ALERT"
        );
        metrics().alerts.get_or_create(&labels(&[("kind", alert.kind)])).inc();
        let Some(url) = self.webhook.clone() else { return };
        let client = self.client.clone();
        tokio::spawn(async move {
            for attempt in 1..=ATTEMPTS {
                match client.post(&url).json(&alert).send().await {
                    Ok(response) if response.status().is_success() => return,
                    Ok(response) => {
                        tracing::warn!(attempt, status = %response.status(), "alert webhook refused the alert")
                    }
                    Err(error) => tracing::warn!(attempt, "alert webhook unreachable: {error}"),
                }
                tokio::time::sleep(Duration::from_millis(250) * 2u32.pow(attempt - 1)).await;
            }
            metrics().alert_failures.inc();
            tracing::error!(saga = %alert.saga_id, "the alert webhook failed {ATTEMPTS} times; the alert is only in the log");
        });
    }
}
