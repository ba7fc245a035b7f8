//! The history checker: what `wasaga bench check` (and its test) find wrong in the
//! whole history of a run, in the manner of Jepsen's Elle.
//!
//! A run records every operation a client attempted and what it was told; the
//! checker then reads the history back from the records the operations left, and
//! judges it as a whole rather than one request at a time:
//!
//! - [`append`]: transactions of reads and appends over a few lists (Elle's
//!   list-append workload). A list gives the order of its key's writes, so every
//!   read says which writes it saw; from those, the dependencies between
//!   transactions (write–write, write–read, read–write, Adya's `ww`, `wr`, `rw`), and
//!   [`graph`] finds their cycles: G0 (write cycles), G1c (cyclic information flow),
//!   G-single and G2 (anti-dependency cycles: write skew, lost updates); besides
//!   cycles, G1a (an aborted write read), G1b (an intermediate write read), values
//!   read twice in a list (an effect applied twice), acknowledged writes missing from
//!   the final reads (lost), reads whose orders disagree.
//! - [`deliveries`]: each published event delivered exactly once to its subscriber,
//!   in publication order within its chain, and no event of a refused call delivered.
//! - [`sagas`]: each saga started ends, having run each of its steps and
//!   compensations exactly once, in the order its outcome calls for.
//!
//! The checker trusts nothing the host says about versions or statuses: only what
//! clients were told and what the records hold.

pub mod append;
pub mod deliveries;
pub mod graph;
pub mod sagas;

use std::fmt;

/// What a client was told of an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Acknowledged: it took effect.
    Ok,
    /// Refused (a rejection, a bad request): it took no effect.
    Failed,
    /// No answer that says (a timeout, a lost connection, a host killed): it may or
    /// may not have taken effect.
    Unknown,
}

/// One thing wrong with a history.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Anomaly {
    pub kind: Kind,
    /// What was seen, with the operations involved, for a person to follow.
    pub detail: String,
}

/// The kinds of anomaly, by the names of Adya's and Elle's papers where they have one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum Kind {
    /// A cycle of write dependencies only.
    G0,
    /// A value written by a transaction that failed was read.
    G1a,
    /// A transaction's intermediate value (not its last write to the key) was read.
    G1b,
    /// A cycle of write and read dependencies.
    G1c,
    /// A cycle with exactly one anti-dependency (read–write) edge: read skew, lost update.
    #[serde(rename = "G-single")]
    GSingle,
    /// A cycle with several anti-dependency edges: write skew.
    G2,
    /// A value that no operation wrote.
    #[serde(rename = "garbage-read")]
    GarbageRead,
    /// A value twice in one list: an effect applied twice.
    #[serde(rename = "duplicated")]
    Duplicated,
    /// Two reads of a key whose lists are not one the prefix of the other.
    #[serde(rename = "incompatible-order")]
    IncompatibleOrder,
    /// A transaction's read that does not show its own earlier writes.
    #[serde(rename = "internal")]
    Internal,
    /// An acknowledged write missing from the final read of its key.
    #[serde(rename = "lost-write")]
    LostWrite,
    /// An acknowledged event never delivered to its subscriber.
    #[serde(rename = "lost-event")]
    LostEvent,
    /// An event delivered more than once.
    #[serde(rename = "duplicated-delivery")]
    DuplicatedDelivery,
    /// An event delivered that no acknowledged-or-unknown publication made.
    #[serde(rename = "phantom-event")]
    PhantomEvent,
    /// Events of one chain delivered out of their publication order.
    #[serde(rename = "out-of-order")]
    OutOfOrder,
    /// A saga that did not end.
    #[serde(rename = "saga-unfinished")]
    SagaUnfinished,
    /// A saga whose steps ran other than once each, in its outcome's order.
    #[serde(rename = "saga-steps")]
    SagaSteps,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = serde_json::to_value(self).ok().and_then(|v| v.as_str().map(str::to_owned));
        f.write_str(name.as_deref().unwrap_or("?"))
    }
}

impl Anomaly {
    pub fn new(kind: Kind, detail: impl Into<String>) -> Anomaly {
        Anomaly { kind, detail: detail.into() }
    }
}
