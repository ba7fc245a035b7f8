//! HTTP requests plugins make (through `wasi:http/outgoing-handler`), owned by the host:
//! every request passes the policy, takes its place in the invocation's journal, and
//! goes out within its limits.
//!
//! - `rules.rs`: destinations (declared by a manifest, granted by the operator) and the
//!   target of a request; `address.rs`: which addresses are special.
//! - `grants.rs`: the operator's grants file, with the secrets.
//! - `journal.rs`: an invocation's exchanges by position, its requests' idempotency keys.
//! - `send.rs`: resolve, check, connect, send, read a bounded response.
//!
//! The runtime adapts a plugin's `wasi:http` request to [`Call::send`]
//! (`runtime/outbound.rs`); nothing here names a wasmtime type.

mod address;
mod grants;
mod journal;
mod rules;
mod send;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use tokio::sync::Semaphore;

pub use grants::{Grant, Grants, ServiceGrants};
pub use journal::{Exchange, Journal, idempotency_key};
pub use rules::Destination;
pub use send::Answer;

use crate::metrics::{labels, metrics};
use crate::trace::{Kind, Span, TraceContext};
use journal::Recorded;
use rules::Target;

/// How a secret is named in a header value: `{{secret.NAME}}`.
const PLACEHOLDER: &str = "{{secret.";

/// Why a request was not answered. The runtime turns each into the `wasi:http` error
/// code that says it; the log says it in words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The policy refuses it (not declared, not granted, a secret not granted for it).
    #[error("refused: {0}")]
    Refused(String),
    /// The destination's address is special and not granted.
    #[error("refused: {0}")]
    AddressProhibited(String),
    #[error("more than {0} requests in one invocation")]
    TooMany(u32),
    /// This run's request at a position differs from the one an earlier run made.
    #[error("{0}")]
    Diverged(String),
    #[error("name lookup failed: {0}")]
    Dns(String),
    #[error("connecting failed: {0}")]
    Connect(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("the response body is over {0} bytes")]
    ResponseTooLarge(u64),
    #[error("the response's headers are over {0} bytes")]
    HeadersTooLarge(usize),
    #[error("HTTP error: {0}")]
    Protocol(String),
}

/// A request as the plugin made it.
#[derive(Debug)]
pub struct Request {
    pub method: http::Method,
    pub uri: http::Uri,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

/// The most a request body may carry.
pub const MAX_REQUEST_BODY: u64 = 1 << 20;

/// The host's outbound side: the grants, and the connections open per destination.
/// Clone it freely.
#[derive(Debug, Clone, Default)]
pub struct Outbound {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    grants: Grants,
    /// Per `scheme://host:port`: connections that may be open at once.
    connections: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl Outbound {
    pub fn new(grants: Grants) -> Outbound {
        Outbound { inner: Arc::new(Inner { grants, connections: Mutex::default() }) }
    }

    /// What `service` is granted, for `wasaga plugin check` and the dashboard.
    pub fn grants_of(&self, service: &str) -> Option<&ServiceGrants> {
        self.inner.grants.of(service)
    }

    /// The outbound side of one run of an invocation of `service` (keyed `key`), whose
    /// manifest declares `declared`, that must end by `deadline`; its requests' spans
    /// are children of `trace`.
    pub fn call(
        &self,
        service: Arc<str>,
        declared: Arc<[Destination]>,
        key: String,
        journal: Arc<Journal>,
        deadline: Instant,
        trace: Option<TraceContext>,
    ) -> Call {
        journal.begin_run();
        Call { outbound: self.clone(), service, declared, key, journal, deadline, trace }
    }

    fn permits(&self, target: &Target, grant: &Grant) -> Arc<Semaphore> {
        let key = format!("{}://{}:{}", target.scheme.as_str(), target.host, target.port);
        let mut map = self.inner.connections.lock().expect("connections poisoned");
        map.entry(key).or_insert_with(|| Arc::new(Semaphore::new(grant.connections))).clone()
    }
}

/// One run of one invocation, as far as its requests go.
#[derive(Debug, Clone)]
pub struct Call {
    outbound: Outbound,
    service: Arc<str>,
    declared: Arc<[Destination]>,
    key: String,
    journal: Arc<Journal>,
    deadline: Instant,
    trace: Option<TraceContext>,
}

/// What became of one request, for its metrics.
#[derive(Default)]
struct Seen {
    /// The grant it matched.
    destination: Option<String>,
    replayed: bool,
    /// How long it took, when it was sent.
    sent_for: Option<Duration>,
}

impl Call {
    /// The place of the plugin's next request, taken when it makes it (before its body
    /// is read): requests are numbered in the order the plugin makes them.
    pub fn next_position(&self) -> u32 {
        self.journal.next_position()
    }

    /// Whether the run made a request that differs from the one recorded at its place.
    pub fn diverged(&self) -> Option<String> {
        self.journal.diverged()
    }

    /// Sends the plugin's request at `position`, or replays its recorded answer; in a
    /// span of its own (whose context goes to the destination as `traceparent`),
    /// counted by destination and result.
    pub async fn send(&self, position: u32, request: Request) -> Result<Answer, SendError> {
        let host = request.uri.host().unwrap_or_default().to_owned();
        let mut span =
            Span::start(|| format!("{} {host}", request.method), self.trace.as_ref(), Kind::Client);
        if span.recording() {
            span.set("http.request.method", request.method.as_str());
            span.set("url.full", request.uri.to_string());
            span.set("wasaga.outbound.position", position);
        }
        let mut seen = Seen::default();
        let traceparent = span.context().or(self.trace);
        let result = self.try_send(position, request, traceparent, &mut seen).await;
        let result_label = match &result {
            Ok(_) if seen.replayed => "replayed",
            Ok(answer) => match answer.status.as_u16() {
                200..=299 => "2xx",
                300..=399 => "3xx",
                400..=499 => "4xx",
                _ => "5xx",
            },
            Err(
                SendError::Refused(_)
                | SendError::AddressProhibited(_)
                | SendError::TooMany(_)
                | SendError::Diverged(_),
            ) => "refused",
            Err(_) => "failed",
        };
        let destination = seen.destination.as_deref().unwrap_or("none");
        let pairs = [("service", &*self.service), ("destination", destination), ("result", result_label)];
        metrics().outbound_requests.get_or_create(&labels(&pairs)).inc();
        if let Some(took) = seen.sent_for {
            metrics().outbound_seconds.get_or_create(&labels(&pairs[..2])).observe(took.as_secs_f64());
        }
        match &result {
            Ok(answer) => {
                span.set("http.response.status_code", i64::from(answer.status.as_u16()));
                span.set("wasaga.outbound.replayed", seen.replayed);
            }
            Err(error) => {
                span.fail(error);
                tracing::warn!(target: "wasaga::outbound", service = %self.service, position, "request not answered: {error}");
            }
        }
        result
    }

    async fn try_send(
        &self,
        position: u32,
        request: Request,
        traceparent: Option<TraceContext>,
        seen: &mut Seen,
    ) -> Result<Answer, SendError> {
        let grants = self.outbound.grants_of(&self.service);
        let max = grants.map_or(grants::DEFAULT_MAX_REQUESTS, |g| g.max_requests);
        if position >= max {
            return Err(SendError::TooMany(max));
        }
        let target = Target::of(&request.uri).map_err(SendError::Refused)?;
        let method = request.method.as_str();
        if !self.declared.iter().any(|d| d.admits(method, &target)) {
            return Err(SendError::Refused(format!(
                "{method} {target} is not among the destinations the manifest of `{}` declares",
                self.service
            )));
        }
        let grant =
            grants.and_then(|g| g.destinations.iter().find(|d| d.destination.admits(method, &target)));
        let Some(grant) = grant else {
            return Err(SendError::Refused(format!(
                "{method} {target} is not granted to `{}` by the operator (wasaga serve --outbound)",
                self.service
            )));
        };
        seen.destination = Some(grant.destination.url.clone());
        let url = request.uri.to_string();
        let fingerprint = journal::fingerprint(method, &url, &request.headers, &request.body);
        match self.journal.lookup(position, &fingerprint) {
            Recorded::Same(exchange) => {
                seen.replayed = true;
                return Ok(Answer {
                    status: http::StatusCode::from_u16(exchange.status).unwrap_or(http::StatusCode::OK),
                    headers: exchange.headers,
                    body: exchange.body,
                });
            }
            Recorded::Different { method: was, url: was_url } => {
                let why = format!(
                    "request {} of this invocation is {method} {url}, but an earlier run of it made {was} {was_url} \
                     there: a plugin must make the same requests when it runs again",
                    position + 1
                );
                self.journal.diverge(why.clone());
                return Err(SendError::Diverged(why));
            }
            Recorded::Nothing => {}
        }

        let mut headers = request.headers.clone();
        let used = substitute_secrets(&mut headers, grants, method, &target)?;
        if let Some(name) = &grant.idempotency_header
            && !headers.contains_key(name)
        {
            let key = idempotency_key(&self.service, &self.key, position);
            headers.insert(name.clone(), http::HeaderValue::from_str(&key).expect("hex is a header value"));
        }
        let host = http::HeaderValue::from_str(request.uri.authority().map_or("", |a| a.as_str()))
            .map_err(|_| SendError::Refused("the host cannot go in a header".into()))?;
        headers.insert(http::header::HOST, host);
        if let Some(context) = traceparent
            && !headers.contains_key("traceparent")
        {
            let value =
                http::HeaderValue::from_str(&context.header()).expect("a traceparent is a header value");
            headers.insert("traceparent", value);
        }
        let mut wire = http::Request::new(Full::new(request.body.clone()));
        *wire.method_mut() = request.method.clone();
        *wire.uri_mut() =
            request.uri.path_and_query().map_or("/", |p| p.as_str()).parse().expect("a path and query");
        *wire.headers_mut() = headers;

        let timeout = grant.timeout.min(self.deadline.saturating_duration_since(Instant::now()));
        let permits = self.outbound.permits(&target, grant);
        let started = Instant::now();
        let _permit = tokio::time::timeout(timeout, permits.acquire_owned())
            .await
            .map_err(|_| SendError::Timeout(timeout))?
            .expect("the semaphore is never closed");
        let sent = send::send(&target, grant, wire, timeout.saturating_sub(started.elapsed())).await;
        seen.sent_for = Some(started.elapsed());
        let mut answer = sent?;
        for secret in used {
            redact(&mut answer, secret);
        }
        self.journal.record(Exchange {
            position,
            fingerprint,
            method: method.to_owned(),
            url,
            status: answer.status.as_u16(),
            headers: answer.headers.clone(),
            body: answer.body.clone(),
        });
        Ok(answer)
    }
}

/// Puts each secret a header names in its place, if the secret may go to `target`;
/// returns the secrets used.
fn substitute_secrets<'g>(
    headers: &mut http::HeaderMap,
    grants: Option<&'g ServiceGrants>,
    method: &str,
    target: &Target,
) -> Result<Vec<&'g grants::Secret>, SendError> {
    let mut used: Vec<&grants::Secret> = Vec::new();
    for value in headers.values_mut() {
        let Ok(text) = value.to_str() else { continue };
        if !text.contains(PLACEHOLDER) {
            continue;
        }
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(at) = rest.find(PLACEHOLDER) {
            out.push_str(&rest[..at]);
            let after = &rest[at + PLACEHOLDER.len()..];
            let end = after
                .find("}}")
                .ok_or_else(|| SendError::Refused("an unclosed `{{secret.` in a header".into()))?;
            let name = &after[..end];
            let secret = grants.and_then(|g| g.secrets.iter().find(|s| s.name == name)).ok_or_else(|| {
                SendError::Refused(format!("the secret `{name}` is not granted to this service"))
            })?;
            if !secret.destinations.iter().any(|d| d.admits(method, target)) {
                return Err(SendError::Refused(format!("the secret `{name}` may not be sent to {target}")));
            }
            out.push_str(secret.value());
            if !used.iter().any(|s| s.name == secret.name) {
                used.push(secret);
            }
            rest = &after[end + 2..];
        }
        out.push_str(rest);
        let mut filled =
            http::HeaderValue::from_str(&out).expect("a secret's value fits a header (checked at load)");
        filled.set_sensitive(true);
        *value = filled;
    }
    Ok(used)
}

/// Takes a secret's value out of a response (a server that echoes its request back),
/// so that it reaches neither the plugin nor the journal.
fn redact(answer: &mut Answer, secret: &grants::Secret) {
    let needle = secret.value().as_bytes();
    let mask = format!("[secret {}]", secret.name);
    if contains(&answer.body, needle) {
        answer.body = replace(&answer.body, needle, mask.as_bytes()).into();
    }
    for value in answer.headers.values_mut() {
        if contains(value.as_bytes(), needle) {
            let replaced = replace(value.as_bytes(), needle, mask.as_bytes());
            *value = http::HeaderValue::from_bytes(&replaced)
                .unwrap_or(http::HeaderValue::from_static("[redacted]"));
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn replace(haystack: &[u8], needle: &[u8], with: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(haystack.len());
    let mut i = 0;
    while i < haystack.len() {
        if haystack[i..].starts_with(needle) {
            out.extend_from_slice(with);
            i += needle.len();
        } else {
            out.push(haystack[i]);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests;
