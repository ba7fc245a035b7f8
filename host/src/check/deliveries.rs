//! Events: each published event is delivered exactly once to its subscriber, within
//! its chain in the order it was published, and no event of a refused call is
//! delivered at all. The subscriber of the run appends each event's number to a list
//! per chain, which the checker reads back at the end.

use std::collections::{HashMap, HashSet};

use super::{Anomaly, Kind, Outcome};

/// One publication, as its client saw it. A chain's publications come from one
/// client, each sent after the one before was answered, in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publication {
    pub chain: String,
    pub n: u64,
    pub outcome: Outcome,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Checked {
    pub published: usize,
    pub acknowledged: usize,
    pub unknown: usize,
    pub failed: usize,
    pub delivered: usize,
    pub chains: usize,
    pub anomalies: Vec<Anomaly>,
}

/// Checks the publications against what was delivered, per chain (the subscriber's
/// list of the numbers it got, in the order it got them).
pub fn check(published: &[Publication], delivered: &HashMap<String, Vec<u64>>) -> Checked {
    let mut checked = Checked { published: published.len(), chains: delivered.len(), ..Checked::default() };
    let mut by_chain: HashMap<&str, Vec<&Publication>> = HashMap::new();
    for publication in published {
        match publication.outcome {
            Outcome::Ok => checked.acknowledged += 1,
            Outcome::Unknown => checked.unknown += 1,
            Outcome::Failed => checked.failed += 1,
        }
        by_chain.entry(&publication.chain).or_default().push(publication);
    }
    let mut anomalies = Vec::new();
    let empty = Vec::new();
    let mut chains: Vec<&str> =
        by_chain.keys().copied().chain(delivered.keys().map(String::as_str)).collect();
    chains.sort_unstable();
    chains.dedup();
    for chain in chains {
        let publications = by_chain.get(chain).unwrap_or(&empty);
        let got = delivered.get(chain).map_or(&[][..], Vec::as_slice);
        checked.delivered += got.len();
        // Where each number stands among its chain's publications.
        let position: HashMap<u64, (usize, Outcome)> =
            publications.iter().enumerate().map(|(i, p)| (p.n, (i, p.outcome))).collect();
        let mut seen = HashSet::new();
        let mut last_acknowledged: Option<(usize, u64)> = None;
        for &n in got {
            if !seen.insert(n) {
                anomalies.push(Anomaly::new(
                    Kind::DuplicatedDelivery,
                    format!("chain {chain}: event {n} delivered more than once: {got:?}"),
                ));
                continue;
            }
            match position.get(&n) {
                None | Some((_, Outcome::Failed)) => anomalies.push(Anomaly::new(
                    Kind::PhantomEvent,
                    format!("chain {chain}: event {n} was delivered, but no publication of it took effect"),
                )),
                Some(&(at, Outcome::Ok)) => {
                    if let Some((before, m)) = last_acknowledged
                        && before > at
                    {
                        anomalies.push(Anomaly::new(
                            Kind::OutOfOrder,
                            format!(
                                "chain {chain}: event {n} delivered after {m}, which was published after it"
                            ),
                        ));
                    }
                    last_acknowledged = Some((at, n));
                }
                // A publication whose answer was lost may have committed late: its
                // place in the order is unknown.
                Some((_, Outcome::Unknown)) => {}
            }
        }
        for publication in publications {
            if publication.outcome == Outcome::Ok && !seen.contains(&publication.n) {
                anomalies.push(Anomaly::new(
                    Kind::LostEvent,
                    format!("chain {chain}: event {} was acknowledged and never delivered", publication.n),
                ));
            }
        }
    }
    checked.anomalies = anomalies;
    checked
}

#[cfg(test)]
mod tests {
    use super::*;

    fn published(chain: &str, outcomes: &[(u64, Outcome)]) -> Vec<Publication> {
        outcomes.iter().map(|&(n, outcome)| Publication { chain: chain.into(), n, outcome }).collect()
    }

    fn kinds(published: &[Publication], delivered: &[(&str, &[u64])]) -> Vec<Kind> {
        let delivered = delivered.iter().map(|(c, l)| (c.to_string(), l.to_vec())).collect();
        check(published, &delivered).anomalies.into_iter().map(|a| a.kind).collect()
    }

    /// Every acknowledged event once, in order; an unknown one delivered or not; a
    /// refused one not: clean. Then each way it can go wrong.
    #[test]
    fn each_event_once_in_order_and_nothing_else() {
        use Outcome::*;
        let history = published("c", &[(1, Ok), (2, Unknown), (3, Ok), (4, Failed), (5, Unknown)]);
        assert_eq!(kinds(&history, &[("c", &[1, 2, 3])]), []);
        assert_eq!(kinds(&history, &[("c", &[1, 3])]), []);
        assert_eq!(kinds(&history, &[("c", &[1])]), [Kind::LostEvent]);
        assert_eq!(kinds(&history, &[("c", &[1, 3, 3])]), [Kind::DuplicatedDelivery]);
        assert_eq!(kinds(&history, &[("c", &[1, 3, 4])]), [Kind::PhantomEvent]);
        assert_eq!(kinds(&history, &[("c", &[3, 1])]), [Kind::OutOfOrder]);
        assert_eq!(kinds(&history, &[("c", &[1, 3]), ("d", &[1])]), [Kind::PhantomEvent]);
    }
}
