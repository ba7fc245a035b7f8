//! Transactions over lists (Elle's list-append): each reads some keys' lists and
//! appends values to some, every value unique. Because a list keeps every value
//! appended to its key in order, the longest read of a key gives the order of its
//! writes, and every other read says how far into that order it saw. That is all the
//! checker needs to draw the dependencies between transactions ([`super::graph`]).

use std::collections::{HashMap, HashSet};

use super::graph::{Dep, Graph};
use super::{Anomaly, Kind, Outcome};

/// One operation inside a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MicroOp {
    /// A read of a key's list: `None` until the transaction is acknowledged.
    Read {
        key: u64,
        list: Option<Vec<u64>>,
    },
    Append {
        key: u64,
        value: u64,
    },
}

/// One transaction as its client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Txn {
    pub ops: Vec<MicroOp>,
    pub outcome: Outcome,
}

/// What a history held, and what was wrong with it.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Checked {
    pub transactions: usize,
    pub acknowledged: usize,
    pub unknown: usize,
    pub failed: usize,
    pub reads: usize,
    pub appends: usize,
    pub keys: usize,
    pub edges: usize,
    pub anomalies: Vec<Anomaly>,
}

/// Checks a history of list-append transactions. The last read of every key must come
/// after every other transaction ended (the run's final reads), so that an
/// acknowledged append missing from it is lost rather than not yet read.
pub fn check(history: &[Txn]) -> Checked {
    let mut checked = Checked { transactions: history.len(), ..Checked::default() };
    let mut anomalies = Vec::new();
    // Who wrote each (key, value), and which of a transaction's appends to a key is
    // its last.
    let mut writer: HashMap<(u64, u64), usize> = HashMap::new();
    let mut last_append: HashMap<(usize, u64), u64> = HashMap::new();
    for (t, txn) in history.iter().enumerate() {
        match txn.outcome {
            Outcome::Ok => checked.acknowledged += 1,
            Outcome::Unknown => checked.unknown += 1,
            Outcome::Failed => checked.failed += 1,
        }
        for op in &txn.ops {
            match op {
                MicroOp::Append { key, value } => {
                    checked.appends += 1;
                    writer.insert((*key, *value), t);
                    last_append.insert((t, *key), *value);
                }
                MicroOp::Read { list: Some(_), .. } => checked.reads += 1,
                MicroOp::Read { list: None, .. } => {}
            }
        }
    }
    let name = |t: usize| describe(t, &history[t]);

    // Each key's order of writes: its longest read, which every other read must be a
    // prefix of.
    let mut order: HashMap<u64, &Vec<u64>> = HashMap::new();
    for txn in history {
        for op in &txn.ops {
            if let MicroOp::Read { key, list: Some(list) } = op
                && order.get(key).is_none_or(|longest| longest.len() < list.len())
            {
                order.insert(*key, list);
            }
        }
    }
    checked.keys = order.len();
    for (t, txn) in history.iter().enumerate() {
        for op in &txn.ops {
            let MicroOp::Read { key, list: Some(list) } = op else { continue };
            let longest = order[key];
            if !longest.starts_with(list) {
                anomalies.push(Anomaly::new(
                    Kind::IncompatibleOrder,
                    format!("key {key}: {} read {list:?}, which is not a prefix of {longest:?}", name(t)),
                ));
            }
            let mut seen = HashSet::new();
            for value in list {
                if !seen.insert(value) {
                    anomalies.push(Anomaly::new(
                        Kind::Duplicated,
                        format!("key {key}: {value} is in the list twice, read by {}: {list:?}", name(t)),
                    ));
                    break;
                }
                match writer.get(&(*key, *value)) {
                    None => anomalies.push(Anomaly::new(
                        Kind::GarbageRead,
                        format!("key {key}: {} read {value}, which no transaction appended", name(t)),
                    )),
                    Some(&w) if history[w].outcome == Outcome::Failed => anomalies.push(Anomaly::new(
                        Kind::G1a,
                        format!("key {key}: {} read {value}, appended by {}, which failed", name(t), name(w)),
                    )),
                    Some(_) => {}
                }
            }
            // The last value read was the writer's last to that key, unless the reader
            // is the writer itself.
            if let Some(value) = list.last()
                && let Some(&w) = writer.get(&(*key, *value))
                && w != t
                && last_append.get(&(w, *key)) != Some(value)
            {
                anomalies.push(Anomaly::new(
                    Kind::G1b,
                    format!(
                        "key {key}: {} read {list:?}, ending at an intermediate append of {}",
                        name(t),
                        name(w)
                    ),
                ));
            }
        }
        internal(t, txn, &name, &mut anomalies);
    }
    // Acknowledged appends are in the final reads.
    for (t, txn) in history.iter().enumerate() {
        if txn.outcome != Outcome::Ok {
            continue;
        }
        for op in &txn.ops {
            if let MicroOp::Append { key, value } = op
                && !order.get(key).is_some_and(|longest| longest.contains(value))
            {
                anomalies.push(Anomaly::new(
                    Kind::LostWrite,
                    format!("key {key}: {value}, appended by {} (acknowledged), is in no read", name(t)),
                ));
            }
        }
    }

    let graph = dependencies(history, &order, &writer);
    checked.edges = graph.edges();
    for cycle in graph.cycles() {
        anomalies.push(Anomaly::new(cycle.kind, cycle.describe(name)));
    }
    checked.anomalies = anomalies;
    checked
}

/// A transaction's reads show its own appends: each read of a key after the
/// transaction appended to it ends with those appends, in order.
fn internal(t: usize, txn: &Txn, name: &impl Fn(usize) -> String, anomalies: &mut Vec<Anomaly>) {
    let mut own: HashMap<u64, Vec<u64>> = HashMap::new();
    for op in &txn.ops {
        match op {
            MicroOp::Append { key, value } => own.entry(*key).or_default().push(*value),
            MicroOp::Read { key, list: Some(list) } => {
                if let Some(appended) = own.get(key)
                    && !list.ends_with(appended)
                {
                    anomalies.push(Anomaly::new(
                        Kind::Internal,
                        format!("key {key}: {} read {list:?} after appending {appended:?}", name(t)),
                    ));
                }
            }
            MicroOp::Read { list: None, .. } => {}
        }
    }
}

/// The dependency graph: for each key, its order gives a write–write edge between the
/// writers of consecutive values; each read, a write–read edge from the writer of the
/// last value it saw and a read–write edge to the writer of the next value.
/// Transactions that failed, and unknown ones none of whose appends anyone saw, took
/// no part.
fn dependencies(
    history: &[Txn],
    order: &HashMap<u64, &Vec<u64>>,
    writer: &HashMap<(u64, u64), usize>,
) -> Graph {
    let mut graph = Graph::new(history.len());
    let writer_of = |key: u64, value: u64| writer.get(&(key, value)).copied();
    for (key, list) in order {
        for pair in list.windows(2) {
            if let (Some(a), Some(b)) = (writer_of(*key, pair[0]), writer_of(*key, pair[1])) {
                graph.add(a, b, Dep::Ww);
            }
        }
    }
    for (t, txn) in history.iter().enumerate() {
        if txn.outcome == Outcome::Failed {
            continue;
        }
        for op in &txn.ops {
            let MicroOp::Read { key, list: Some(list) } = op else { continue };
            if !order[key].starts_with(list) {
                continue; // an incompatible order, reported as such: no position to draw from
            }
            // What it read of others: its own appends at the end say nothing of them.
            let mut seen = list.as_slice();
            while let Some((last, rest)) = seen.split_last()
                && writer_of(*key, *last) == Some(t)
            {
                seen = rest;
            }
            if let Some(w) = seen.last().and_then(|value| writer_of(*key, *value)) {
                graph.add(w, t, Dep::Wr);
            }
            if let Some(next) = order[key].get(seen.len()).and_then(|value| writer_of(*key, *value)) {
                graph.add(t, next, Dep::Rw);
            }
        }
    }
    graph
}

/// `T12 [r 3 [1 2], append 4 7] ok`.
fn describe(t: usize, txn: &Txn) -> String {
    let ops: Vec<String> = txn
        .ops
        .iter()
        .map(|op| match op {
            MicroOp::Read { key, list: Some(list) } if list.len() > 3 => {
                format!(
                    "r {key} [… {}, {}] ({} values)",
                    list[list.len() - 2],
                    list[list.len() - 1],
                    list.len()
                )
            }
            MicroOp::Read { key, list: Some(list) } => format!("r {key} {list:?}"),
            MicroOp::Read { key, list: None } => format!("r {key} ?"),
            MicroOp::Append { key, value } => format!("append {key} {value}"),
        })
        .collect();
    let outcome = match txn.outcome {
        Outcome::Ok => "ok",
        Outcome::Failed => "failed",
        Outcome::Unknown => "unknown",
    };
    format!("T{t} [{}] {outcome}", ops.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(key: u64, list: &[u64]) -> MicroOp {
        MicroOp::Read { key, list: Some(list.to_vec()) }
    }

    fn a(key: u64, value: u64) -> MicroOp {
        MicroOp::Append { key, value }
    }

    fn ok(ops: Vec<MicroOp>) -> Txn {
        Txn { ops, outcome: Outcome::Ok }
    }

    fn kinds(history: &[Txn]) -> Vec<Kind> {
        let mut kinds: Vec<Kind> = check(history).anomalies.into_iter().map(|a| a.kind).collect();
        kinds.sort();
        kinds
    }

    /// A serial history, with reads, appends, a failed and an unknown transaction, is
    /// clean.
    #[test]
    fn a_serializable_history_has_no_anomaly() {
        let history = [
            ok(vec![a(1, 1), a(2, 1)]),
            ok(vec![r(1, &[1]), a(1, 2), r(1, &[1, 2])]),
            Txn { ops: vec![a(1, 9)], outcome: Outcome::Failed },
            Txn { ops: vec![a(2, 2), MicroOp::Read { key: 1, list: None }], outcome: Outcome::Unknown },
            ok(vec![r(2, &[1, 2]), a(1, 3)]),
            ok(vec![r(1, &[1, 2, 3]), r(2, &[1, 2])]),
        ];
        let checked = check(&history);
        assert_eq!(checked.anomalies, []);
        assert_eq!((checked.acknowledged, checked.failed, checked.unknown), (4, 1, 1));
        assert!(checked.edges >= 4, "{checked:?}");
    }

    /// Write skew: each read what the other overwrote, and both committed (what two
    /// PostgreSQL hosts did before their read sets were locked).
    #[test]
    fn write_skew_is_g2() {
        let history = [
            ok(vec![a(1, 1), a(2, 1)]),
            ok(vec![r(1, &[1]), a(2, 2)]),
            ok(vec![r(2, &[1]), a(1, 2)]),
            ok(vec![r(1, &[1, 2]), r(2, &[1, 2])]),
        ];
        assert_eq!(kinds(&history), [Kind::G2]);
    }

    /// A lost update: both read 1, both appended, each read–write edge closed by a
    /// write–write one: one anti-dependency in the cycle.
    #[test]
    fn a_lost_update_is_g_single() {
        let history = [
            ok(vec![a(1, 1)]),
            ok(vec![r(1, &[1]), a(1, 2)]),
            ok(vec![r(1, &[1]), a(1, 3)]),
            ok(vec![r(1, &[1, 2, 3])]),
        ];
        assert_eq!(kinds(&history), [Kind::GSingle]);
    }

    /// Two transactions whose appends to two keys land in opposite orders: G0.
    #[test]
    fn crossed_writes_are_g0() {
        let history =
            [ok(vec![a(1, 1), a(2, 1)]), ok(vec![a(1, 2), a(2, 2)]), ok(vec![r(1, &[1, 2]), r(2, &[2, 1])])];
        assert_eq!(kinds(&history), [Kind::G0]);
    }

    /// Each read the other's write: circular information flow.
    #[test]
    fn reads_of_each_other_are_g1c() {
        let history = [ok(vec![r(1, &[2]), a(2, 1)]), ok(vec![r(2, &[1]), a(1, 2)])];
        assert_eq!(kinds(&history), [Kind::G1c]);
    }

    /// What a refused transaction appended must never be read, nor a transaction's
    /// value that it later overwrote in the same key.
    #[test]
    fn aborted_and_intermediate_reads_are_g1a_and_g1b() {
        let aborted = [Txn { ops: vec![a(1, 1)], outcome: Outcome::Failed }, ok(vec![r(1, &[1])])];
        assert_eq!(kinds(&aborted), [Kind::G1a]);
        // (The reader then also read what the writer overwrote: a cycle as well.)
        let intermediate = [ok(vec![a(1, 1), a(1, 2)]), ok(vec![r(1, &[1])]), ok(vec![r(1, &[1, 2])])];
        assert_eq!(kinds(&intermediate), [Kind::G1b, Kind::GSingle]);
    }

    /// An effect twice, a write lost, a value from nowhere, reads that disagree, a
    /// transaction blind to its own write.
    #[test]
    fn the_other_anomalies_each_have_their_kind() {
        assert!(kinds(&[ok(vec![a(1, 1)]), ok(vec![r(1, &[1, 1])])]).contains(&Kind::Duplicated));
        assert_eq!(kinds(&[ok(vec![a(1, 1)]), ok(vec![a(1, 2)]), ok(vec![r(1, &[1])])]), [Kind::LostWrite]);
        assert_eq!(kinds(&[ok(vec![r(1, &[5])])]), [Kind::GarbageRead]);
        let disagree = [ok(vec![a(1, 1)]), ok(vec![a(1, 2)]), ok(vec![r(1, &[1, 2])]), ok(vec![r(1, &[2])])];
        assert_eq!(kinds(&disagree), [Kind::IncompatibleOrder]);
        assert_eq!(kinds(&[ok(vec![a(1, 1), r(1, &[])])]), [Kind::Internal, Kind::LostWrite]);
    }
}
