//! OpenTelemetry traces, exported over OTLP/HTTP (JSON) when an endpoint is configured
//! (`--otlp-endpoint`, or the standard `OTEL_EXPORTER_OTLP_ENDPOINT`).
//!
//! A span per HTTP request, invocation, saga step and event delivery. The W3C
//! `traceparent` of a client's request is the parent of its request's span; a saga
//! keeps the context of the request that started it (in its state), and every event
//! the context of the invocation that published it (in the outbox), so a saga's steps
//! and a choreographed flow's deliveries are one trace with the request, across hosts
//! and restarts.
//!
//! Not configured, nothing is recorded: [`Span::start`] returns an empty span without
//! reading the clock or making ids. Configured, a finished span goes to a bounded queue
//! (full: it is dropped and counted, the request never waits) that one task sends in
//! batches. Hand-written rather than the `opentelemetry` crates: the part wasaga needs
//! is ids, a clock and a JSON body (the OTLP/JSON encoding of the protobuf messages),
//! and it costs nothing when off.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tokio::sync::mpsc;

/// Where a span sits in a trace: what a `traceparent` carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// The caller's decision to record the trace (the `sampled` flag).
    pub sampled: bool,
}

impl TraceContext {
    /// Reads a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`); `None` for anything
    /// else (and for the all-zero ids the spec forbids), as the spec says: a bad header
    /// starts a new trace.
    pub fn parse(header: &str) -> Option<TraceContext> {
        let mut parts = header.trim().split('-');
        let (version, trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        // Every field is lowercase hex of its length; version 00 has exactly four
        // fields, later versions may add some.
        let hex = |s: &str, len| s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !(hex(version, 2) && hex(trace, 32) && hex(span, 16) && hex(flags, 2)) {
            return None;
        }
        if version == "ff" || (version == "00" && parts.next().is_some()) {
            return None;
        }
        let mut trace_id = [0; 16];
        let mut span_id = [0; 8];
        hex::decode_to_slice(trace, &mut trace_id).ok()?;
        hex::decode_to_slice(span, &mut span_id).ok()?;
        let flags = u8::from_str_radix(flags, 16).ok()?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(TraceContext { trace_id, span_id, sampled: flags & 1 == 1 })
    }

    /// The `traceparent` header of this context.
    pub fn header(&self) -> String {
        format!("00-{}-{}-0{}", hex::encode(self.trace_id), hex::encode(self.span_id), u8::from(self.sampled))
    }
}

/// What a span stands for (OTLP's `SpanKind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Internal = 1,
    Server = 2,
    Client = 3,
    Consumer = 5,
}

/// A span being timed: sent when dropped. Empty when traces are off; when the trace's
/// caller asked not to record it, it records nothing but hands the caller's context
/// (unsampled) on, so that nothing under it is recorded either.
#[derive(Debug, Default)]
pub struct Span(Option<Box<Recording>>, Option<TraceContext>);

#[derive(Debug)]
struct Recording {
    context: TraceContext,
    parent: Option<[u8; 8]>,
    name: String,
    kind: Kind,
    start_ns: u64,
    attributes: Vec<(&'static str, Value)>,
    error: Option<String>,
}

impl Span {
    /// A span named `name()`, a child of `parent` (or the root of a new trace).
    pub fn start(name: impl FnOnce() -> String, parent: Option<&TraceContext>, kind: Kind) -> Span {
        if EXPORTER.get().is_none() {
            return Span(None, None);
        }
        if let Some(parent) = parent.filter(|p| !p.sampled) {
            return Span(None, Some(*parent));
        }
        let context = TraceContext {
            trace_id: parent.map_or_else(|| nonzero(rand::random()), |p| p.trace_id),
            span_id: nonzero(rand::random()),
            sampled: true,
        };
        Span(
            Some(Box::new(Recording {
                context,
                parent: parent.map(|p| p.span_id),
                name: name(),
                kind,
                start_ns: now_ns(),
                attributes: Vec::new(),
                error: None,
            })),
            None,
        )
    }

    /// The context children of this span take (and events and sagas keep); `None`
    /// when traces are off.
    pub fn context(&self) -> Option<TraceContext> {
        self.0.as_ref().map(|r| r.context).or(self.1)
    }

    /// Whether the span is recorded: attributes that cost something to make are made
    /// only then.
    pub fn recording(&self) -> bool {
        self.0.is_some()
    }

    /// An attribute: a string, an integer or a boolean (converted only when recorded).
    pub fn set(&mut self, key: &'static str, value: impl Into<Value>) {
        if let Some(recording) = &mut self.0 {
            recording.attributes.push((key, value.into()));
        }
    }

    /// Marks the span failed, with why.
    pub fn fail(&mut self, message: impl std::fmt::Display) {
        if let Some(recording) = &mut self.0 {
            recording.error = Some(message.to_string());
        }
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        let (Some(recording), Some(exporter)) = (self.0.take(), EXPORTER.get()) else { return };
        let span = encode(&recording, now_ns());
        if exporter.queue.try_send(Queued::Span(span)).is_err() {
            exporter.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Where traces go.
#[derive(Debug, Clone)]
pub struct OtlpConfig {
    /// The full URL spans are POSTed to (`…/v1/traces`).
    pub url: String,
    /// Extra request headers (`OTEL_EXPORTER_OTLP_HEADERS`: a backend's API key).
    pub headers: Vec<(String, String)>,
    /// `service.name` of the resource.
    pub service_name: String,
    /// `service.instance.id`: this host.
    pub instance: String,
}

impl OtlpConfig {
    /// From `--otlp-endpoint` (or `OTEL_EXPORTER_OTLP_ENDPOINT`, a base URL to which
    /// `/v1/traces` is added) and the other standard variables:
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (the full URL), `OTEL_EXPORTER_OTLP_HEADERS`,
    /// `OTEL_SERVICE_NAME`, and `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`
    /// to turn it off. `None`: traces are off.
    pub fn from_env(endpoint: Option<&str>, instance: &str) -> anyhow::Result<Option<OtlpConfig>> {
        Self::from_vars(endpoint, instance, |name| std::env::var(name).ok())
    }

    /// [`OtlpConfig::from_env`], the variables read by `var`.
    fn from_vars(
        endpoint: Option<&str>,
        instance: &str,
        var: impl Fn(&str) -> Option<String>,
    ) -> anyhow::Result<Option<OtlpConfig>> {
        let var = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        if var("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
            || var("OTEL_TRACES_EXPORTER").is_some_and(|v| v.trim() == "none")
        {
            return Ok(None);
        }
        // The flag, then the traces' own variable (a full URL), then the general one (a
        // base URL), as OpenTelemetry's specification orders them.
        let base = |base: &str| format!("{}/v1/traces", base.trim().trim_end_matches('/'));
        let url = match endpoint.filter(|e| !e.trim().is_empty()) {
            Some(flag) => base(flag),
            None => match (var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"), var("OTEL_EXPORTER_OTLP_ENDPOINT")) {
                (Some(full), _) => full.trim().to_owned(),
                (None, Some(general)) => base(&general),
                (None, None) => return Ok(None),
            },
        };
        anyhow::ensure!(
            url.starts_with("http://") || url.starts_with("https://"),
            "the OTLP endpoint `{url}` is not an http:// or https:// URL (wasaga sends OTLP/HTTP, port 4318 by convention)"
        );
        if let Some(protocol) =
            var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL").or_else(|| var("OTEL_EXPORTER_OTLP_PROTOCOL"))
            && protocol.trim() != "http/json"
        {
            tracing::warn!(
                "OTEL_EXPORTER_OTLP_PROTOCOL is `{protocol}`: wasaga sends OTLP/HTTP with JSON bodies (http/json), \
                 which OpenTelemetry collectors accept on the same port"
            );
        }
        let mut headers = Vec::new();
        for pair in
            var("OTEL_EXPORTER_OTLP_HEADERS").unwrap_or_default().split(',').filter(|p| !p.trim().is_empty())
        {
            let (name, value) = pair.split_once('=').ok_or_else(|| {
                anyhow::anyhow!(
                    "OTEL_EXPORTER_OTLP_HEADERS: `{pair}` is not name=value (pairs are separated by commas)"
                )
            })?;
            // The W3C Baggage format: values are percent-encoded (`Basic%20…`).
            let (name, value) = (name.trim(), value.trim());
            let value = percent_decode(value).ok_or_else(|| {
                anyhow::anyhow!(
                    "OTEL_EXPORTER_OTLP_HEADERS: the value of `{name}` is not percent-encoded UTF-8"
                )
            })?;
            let valid = reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_ok()
                && reqwest::header::HeaderValue::from_str(&value).is_ok();
            anyhow::ensure!(valid, "OTEL_EXPORTER_OTLP_HEADERS: `{name}` is not a valid HTTP header");
            headers.push((name.to_owned(), value));
        }
        let service_name = var("OTEL_SERVICE_NAME").unwrap_or_else(|| "wasaga".into());
        Ok(Some(OtlpConfig { url, headers, service_name, instance: instance.to_owned() }))
    }
}

/// What the exporter's task is sent.
enum Queued {
    Span(Value),
    /// Send what is held now, then say so.
    Flush(tokio::sync::oneshot::Sender<()>),
}

struct Exporter {
    queue: mpsc::Sender<Queued>,
    /// Spans dropped because the queue was full (the backend is slow or down).
    dropped: AtomicU64,
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exporter").finish_non_exhaustive()
    }
}

static EXPORTER: OnceLock<Exporter> = OnceLock::new();

/// Spans held for the exporter; past this, new spans are dropped.
const QUEUE: usize = 8192;
/// The most spans one request carries.
const BATCH: usize = 512;
/// How long a span waits for its batch to fill.
const LINGER: Duration = Duration::from_millis(500);

/// Starts exporting to `config` for the rest of the process (a second call changes
/// nothing): must run inside the tokio runtime.
pub fn start(config: OtlpConfig) {
    let (queue, spans) = mpsc::channel(QUEUE);
    if EXPORTER.set(Exporter { queue, dropped: AtomicU64::new(0) }).is_ok() {
        tracing::info!(url = %config.url, "exporting traces over OTLP/HTTP");
        tokio::spawn(send_batches(config, spans));
    }
}

/// Whether traces are exported.
pub fn enabled() -> bool {
    EXPORTER.get().is_some()
}

/// Sends the spans held (at shutdown: the last requests' spans would wait for their
/// batch otherwise), waiting at most `timeout`.
pub async fn flush(timeout: Duration) {
    let Some(exporter) = EXPORTER.get() else { return };
    let (done, sent) = tokio::sync::oneshot::channel();
    let sent = async {
        if exporter.queue.send(Queued::Flush(done)).await.is_ok() {
            let _ = sent.await;
        }
    };
    let _ = tokio::time::timeout(timeout, sent).await;
}

async fn send_batches(config: OtlpConfig, mut queue: mpsc::Receiver<Queued>) {
    let client =
        reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("a client builds");
    let resource = json!({"attributes": [
        attribute("service.name", &json!(config.service_name)),
        attribute("service.version", &json!(env!("CARGO_PKG_VERSION"))),
        attribute("service.instance.id", &json!(config.instance)),
    ]});
    let scope = json!({"name": "wasaga", "version": env!("CARGO_PKG_VERSION")});
    let mut failures_said = 0u32;
    let (mut dropped_said, mut said_at) = (0, None::<tokio::time::Instant>);
    let mut flushed = None;
    while let Some(first) = queue.recv().await {
        let mut batch = Vec::new();
        match first {
            Queued::Span(span) => batch.push(span),
            Queued::Flush(done) => flushed = Some(done),
        }
        let deadline = tokio::time::Instant::now() + LINGER;
        while batch.len() < BATCH && flushed.is_none() {
            match tokio::time::timeout_at(deadline, queue.recv()).await {
                Ok(Some(Queued::Span(span))) => batch.push(span),
                Ok(Some(Queued::Flush(done))) => flushed = Some(done),
                _ => break,
            }
        }
        if batch.is_empty() {
            if let Some(done) = flushed.take() {
                let _ = done.send(());
            }
            continue;
        }
        let n = batch.len();
        let body = json!({"resourceSpans": [{"resource": resource, "scopeSpans": [{"scope": scope, "spans": batch}]}]});
        let mut request = client.post(&config.url).json(&body);
        for (name, value) in &config.headers {
            request = request.header(name, value);
        }
        let failure = match request.send().await {
            Ok(response) if response.status().is_success() => None,
            Ok(response) => Some(format!("answered {}", response.status())),
            Err(error) => Some(error.to_string()),
        };
        // Said once, then once in a hundred: a backend that is down must not flood the log.
        if let Some(failure) = failure {
            if failures_said.is_multiple_of(100) {
                let dropped = EXPORTER.get().map_or(0, |e| e.dropped.load(Ordering::Relaxed));
                tracing::warn!(url = %config.url, "sending {n} spans failed: {failure} ({dropped} dropped so far)");
            }
            failures_said = failures_said.wrapping_add(1);
        }
        // Spans dropped because the queue was full: said at most once a minute.
        let dropped = EXPORTER.get().map_or(0, |e| e.dropped.load(Ordering::Relaxed));
        if dropped > dropped_said && said_at.is_none_or(|at| at.elapsed() >= Duration::from_secs(60)) {
            tracing::warn!(url = %config.url, "{} spans dropped: the collector does not keep up", dropped - dropped_said);
            (dropped_said, said_at) = (dropped, Some(tokio::time::Instant::now()));
        }
        if let Some(done) = flushed.take() {
            let _ = done.send(());
        }
    }
}

/// A finished span in OTLP/JSON (ids in hex, times in unix nanoseconds).
fn encode(span: &Recording, end_ns: u64) -> Value {
    let mut encoded = json!({
        "traceId": hex::encode(span.context.trace_id),
        "spanId": hex::encode(span.context.span_id),
        "name": span.name,
        "kind": span.kind as u8,
        "startTimeUnixNano": span.start_ns.to_string(),
        "endTimeUnixNano": end_ns.to_string(),
        "attributes": span.attributes.iter().map(|(k, v)| attribute(k, v)).collect::<Vec<_>>(),
    });
    if let Some(parent) = span.parent {
        encoded["parentSpanId"] = json!(hex::encode(parent));
    }
    if let Some(message) = &span.error {
        encoded["status"] = json!({"code": 2, "message": message});
    }
    encoded
}

fn attribute(key: &str, value: &Value) -> Value {
    let value = match value {
        Value::Bool(b) => json!({"boolValue": b}),
        Value::Number(n) if n.is_i64() || n.is_u64() => json!({"intValue": n.to_string()}),
        Value::Number(n) => json!({"doubleValue": n}),
        Value::String(s) => json!({"stringValue": s}),
        other => json!({"stringValue": other.to_string()}),
    };
    json!({"key": key, "value": value})
}

/// `%XX` sequences decoded; `None` if one is malformed or the result is not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(text.len());
    let mut rest = text.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        if b == b'%' {
            let hex = tail.get(..2).filter(|h| h.iter().all(u8::is_ascii_hexdigit))?;
            bytes.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            rest = &tail[2..];
        } else {
            bytes.push(b);
            rest = tail;
        }
    }
    String::from_utf8(bytes).ok()
}

fn nonzero<const N: usize>(mut id: [u8; N]) -> [u8; N] {
    if id == [0; N] {
        id[N - 1] = 1;
    }
    id
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparents_are_read_and_written_as_w3c_says() {
        let header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let context = TraceContext::parse(header).unwrap();
        assert!(context.sampled);
        assert_eq!(context.header(), header);
        let unsampled =
            TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap();
        assert!(!unsampled.sampled);
        // A later version may carry more fields; the first four are read.
        assert!(
            TraceContext::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra").is_some()
        );
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-+1",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0A",
            "0A-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceContext::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_span_is_encoded_as_otlp_json() {
        let context = TraceContext { trace_id: [1; 16], span_id: [2; 8], sampled: true };
        let span = Recording {
            context,
            parent: Some([3; 8]),
            name: "invoke payment/charge".into(),
            kind: Kind::Internal,
            start_ns: 5,
            attributes: vec![("wasaga.attempt", json!(2)), ("wasaga.replayed", json!(false))],
            error: Some("refused".into()),
        };
        let encoded = encode(&span, 9);
        assert_eq!(encoded["traceId"], "01010101010101010101010101010101");
        assert_eq!(encoded["parentSpanId"], "0303030303030303");
        assert_eq!(
            (encoded["startTimeUnixNano"].as_str(), encoded["endTimeUnixNano"].as_str()),
            (Some("5"), Some("9"))
        );
        assert_eq!(encoded["attributes"][0], json!({"key": "wasaga.attempt", "value": {"intValue": "2"}}));
        assert_eq!(encoded["attributes"][1]["value"], json!({"boolValue": false}));
        assert_eq!(encoded["status"], json!({"code": 2, "message": "refused"}));
    }

    /// The flag wins, then the traces' own variable (a full URL), then the general one
    /// (a base URL); header values are percent-decoded, and bad ones refused.
    #[test]
    fn the_otlp_settings_follow_the_specification() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| pairs.iter().find(|(n, _)| *n == name).map(|(_, v)| (*v).to_owned())
        };
        let url =
            |flag: Option<&str>, pairs| OtlpConfig::from_vars(flag, "i", vars(pairs)).unwrap().map(|c| c.url);
        let both: &[(&str, &str)] = &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://general:4318/"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://traces:4318/custom"),
        ];
        assert_eq!(url(Some("http://flag:4318"), both).as_deref(), Some("http://flag:4318/v1/traces"));
        assert_eq!(url(None, both).as_deref(), Some("http://traces:4318/custom"));
        assert_eq!(url(None, &both[..1]).as_deref(), Some("http://general:4318/v1/traces"));
        assert_eq!(url(None, &[]), None);
        assert_eq!(
            url(None, &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://x"), ("OTEL_SDK_DISABLED", "true")]),
            None
        );

        let headers = &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://x"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "Authorization=Basic%20YWJj, x-team = blue"),
        ];
        let config = OtlpConfig::from_vars(None, "i", vars(headers)).unwrap().unwrap();
        let expected =
            [("Authorization".to_owned(), "Basic YWJj".to_owned()), ("x-team".to_owned(), "blue".to_owned())];
        assert_eq!(config.headers, expected);
        for bad in ["api-key", "bad name=1", "k=%zz", "k=%0a"] {
            let pairs: &'static [(&str, &str)] = Box::leak(Box::new([
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://x"),
                ("OTEL_EXPORTER_OTLP_HEADERS", bad),
            ]));
            assert!(OtlpConfig::from_vars(None, "i", vars(pairs)).is_err(), "{bad}");
        }
    }

    /// Off (no exporter in the unit tests), a span records nothing and has no context.
    #[test]
    fn spans_cost_nothing_when_traces_are_off() {
        let mut span = Span::start(|| unreachable!("the name is not even made"), None, Kind::Internal);
        span.set("k", "v");
        assert!(span.context().is_none());
    }
}
