//! One invocation's exchanges, by position: what each request was (its fingerprint)
//! and what came back. It lives across the runs of one invocation, so that a re-run
//! after a version conflict replays the responses instead of sending again; a request
//! at a position whose recorded one differs is refused, as the plugin did not run the
//! same way twice.

use std::collections::BTreeMap;
use std::sync::Mutex;

use bytes::Bytes;
use sha2::{Digest, Sha256};

/// A request that was answered (with any status) and its response.
#[derive(Debug, Clone)]
pub struct Exchange {
    /// 0 for the invocation's first request, 1 for its second…
    pub position: u32,
    pub fingerprint: [u8; 32],
    pub method: String,
    pub url: String,
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

/// The exchanges of one invocation, kept across its runs.
#[derive(Debug, Default)]
pub struct Journal {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    recorded: BTreeMap<u32, Exchange>,
    /// The position the run's next request takes.
    next: u32,
    diverged: Option<String>,
}

/// What the journal holds for a position.
#[derive(Debug)]
pub enum Recorded {
    /// Nothing: send the request.
    Nothing,
    /// The same request was answered in an earlier run: its response.
    Same(Box<Exchange>),
    /// Another request was made at this position in an earlier run.
    Different { method: String, url: String },
}

impl Journal {
    /// A run starts: its requests take positions from 0 again.
    pub fn begin_run(&self) {
        let mut state = self.state.lock().expect("journal poisoned");
        state.next = 0;
        state.diverged = None;
    }

    /// The position of the run's next request, in the order the plugin makes them.
    pub fn next_position(&self) -> u32 {
        let mut state = self.state.lock().expect("journal poisoned");
        let position = state.next;
        state.next += 1;
        position
    }

    pub fn lookup(&self, position: u32, fingerprint: &[u8; 32]) -> Recorded {
        let state = self.state.lock().expect("journal poisoned");
        match state.recorded.get(&position) {
            None => Recorded::Nothing,
            Some(exchange) if exchange.fingerprint == *fingerprint => {
                Recorded::Same(Box::new(exchange.clone()))
            }
            Some(exchange) => {
                Recorded::Different { method: exchange.method.clone(), url: exchange.url.clone() }
            }
        }
    }

    pub fn record(&self, exchange: Exchange) {
        self.state.lock().expect("journal poisoned").recorded.insert(exchange.position, exchange);
    }

    /// Marks the run as not the one recorded: the invocation fails with `why`.
    pub fn diverge(&self, why: String) {
        self.state.lock().expect("journal poisoned").diverged.get_or_insert(why);
    }

    /// Why this run is not the recorded one, if it is not.
    pub fn diverged(&self) -> Option<String> {
        self.state.lock().expect("journal poisoned").diverged.clone()
    }

    /// Every exchange recorded so far, in order.
    pub fn exchanges(&self) -> Vec<Exchange> {
        self.state.lock().expect("journal poisoned").recorded.values().cloned().collect()
    }
}

/// The idempotency key of the request at `position` of the invocation `key` of
/// `service`: the same on every run and retry of that invocation, different for any
/// other (a saga step's compensation is another invocation). Hashed, so that it fits
/// the 255 characters processors allow, whatever the length of the invocation's key.
pub fn idempotency_key(service: &str, key: &str, position: u32) -> String {
    let mut hash = Sha256::new();
    for part in [service.as_bytes(), key.as_bytes(), position.to_string().as_bytes()] {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part);
    }
    format!("wasaga-{}", &hex::encode(hash.finalize())[..40])
}

/// What identifies a request: method, URL, headers (as the plugin wrote them, secret
/// placeholders unexpanded) and body.
pub fn fingerprint(method: &str, url: &str, headers: &http::HeaderMap, body: &[u8]) -> [u8; 32] {
    let mut hash = Sha256::new();
    let mut part = |bytes: &[u8]| {
        hash.update((bytes.len() as u64).to_be_bytes());
        hash.update(bytes);
    };
    part(method.as_bytes());
    part(url.as_bytes());
    for (name, value) in headers {
        part(name.as_str().as_bytes());
        part(value.as_bytes());
    }
    part(body);
    hash.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exchange(position: u32, fingerprint: [u8; 32]) -> Exchange {
        Exchange {
            position,
            fingerprint,
            method: "POST".into(),
            url: "http://x/".into(),
            status: 200,
            headers: http::HeaderMap::new(),
            body: Bytes::from_static(b"ok"),
        }
    }

    #[test]
    fn a_rerun_finds_the_same_request_at_its_position_and_a_different_one_is_named() {
        let journal = Journal::default();
        let (a, b) = ([1; 32], [2; 32]);
        assert_eq!(journal.next_position(), 0);
        journal.record(exchange(0, a));
        journal.begin_run();
        let position = journal.next_position();
        assert!(matches!(journal.lookup(position, &a), Recorded::Same(e) if e.body == "ok"));
        assert!(matches!(journal.lookup(position, &b), Recorded::Different { .. }));
        assert!(
            matches!(journal.lookup(journal.next_position(), &a), Recorded::Nothing),
            "position 1 is new"
        );
    }

    #[test]
    fn keys_differ_by_service_invocation_and_position_and_fingerprints_by_any_part() {
        let k = idempotency_key("payment", "saga/1/charge/do", 0);
        assert_eq!(k, idempotency_key("payment", "saga/1/charge/do", 0), "stable");
        assert!(k.len() < 64 && k.starts_with("wasaga-"));
        for other in [
            idempotency_key("order", "saga/1/charge/do", 0),
            idempotency_key("payment", "saga/1/charge/undo", 0),
            idempotency_key("payment", "saga/1/charge/do", 1),
        ] {
            assert_ne!(k, other);
        }
        let h = http::HeaderMap::new();
        let f = fingerprint("POST", "http://x/", &h, b"{}");
        assert_ne!(f, fingerprint("POST", "http://x/", &h, b"{ }"));
        assert_ne!(f, fingerprint("PUT", "http://x/", &h, b"{}"));
        let mut h2 = http::HeaderMap::new();
        h2.insert("x-a", "1".parse().unwrap());
        assert_ne!(f, fingerprint("POST", "http://x/", &h2, b"{}"));
    }
}
