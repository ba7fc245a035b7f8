//! The dependency graph of a history and its cycles (Adya's direct serialization
//! graph): transactions are nodes, an edge says which must come first. A serializable
//! history has none: every cycle is an anomaly, named by the edges it needs.

use std::collections::{HashMap, VecDeque};

use super::Kind;

/// What an edge says about its two transactions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dep {
    /// The first wrote a version the second overwrote.
    Ww,
    /// The second read what the first wrote.
    Wr,
    /// The first read a version the second overwrote (an anti-dependency).
    Rw,
}

impl Dep {
    fn name(self) -> &'static str {
        match self {
            Dep::Ww => "ww",
            Dep::Wr => "wr",
            Dep::Rw => "rw",
        }
    }
}

/// Transactions `0..n` and the dependencies between them.
#[derive(Debug, Default)]
pub struct Graph {
    /// For each node, its out-edges (target, kind); one per (target, kind).
    out: Vec<Vec<(usize, Dep)>>,
}

/// A cycle found: its nodes in order (the last depends on the first again) and the
/// kind of each edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cycle {
    pub kind: Kind,
    pub steps: Vec<(usize, Dep)>,
}

impl Cycle {
    /// `T1 -ww-> T2 -rw-> T1`, with each node named by `name`.
    pub fn describe(&self, name: impl Fn(usize) -> String) -> String {
        let mut text = String::new();
        for (node, dep) in &self.steps {
            text += &format!("{} -{}-> ", name(*node), dep.name());
        }
        if let Some((first, _)) = self.steps.first() {
            text += &name(*first);
        }
        text
    }
}

impl Graph {
    pub fn new(nodes: usize) -> Graph {
        Graph { out: vec![Vec::new(); nodes] }
    }

    pub fn nodes(&self) -> usize {
        self.out.len()
    }

    pub fn edges(&self) -> usize {
        self.out.iter().map(Vec::len).sum()
    }

    /// Adds `from -kind-> to` (a self-loop says nothing, and is left out).
    pub fn add(&mut self, from: usize, to: usize, kind: Dep) {
        if from != to && !self.out[from].contains(&(to, kind)) {
            self.out[from].push((to, kind));
        }
    }

    /// One cycle for each strongly connected component that has any, of the strongest
    /// kind the component holds: G0 if its write edges alone make a cycle, else G1c
    /// if its write and read edges do, else G-single if a cycle needs only one
    /// anti-dependency, else G2.
    pub fn cycles(&self) -> Vec<Cycle> {
        self.components().into_iter().filter(|c| c.len() > 1).filter_map(|c| self.classify(&c)).collect()
    }

    /// The strongest cycle of one component, found in a graph of its own nodes.
    fn classify(&self, component: &[usize]) -> Option<Cycle> {
        let local: HashMap<usize, usize> = component.iter().enumerate().map(|(i, &n)| (n, i)).collect();
        let only = |kinds: &[Dep]| Graph {
            out: component
                .iter()
                .map(|&n| {
                    self.out[n]
                        .iter()
                        .filter(|(_, kind)| kinds.contains(kind))
                        .filter_map(|&(to, kind)| Some((*local.get(&to)?, kind)))
                        .collect()
                })
                .collect(),
        };
        let named = |kind: Kind, steps: Vec<(usize, Dep)>| Cycle {
            kind,
            steps: steps.into_iter().map(|(i, dep)| (component[i], dep)).collect(),
        };
        if let Some(steps) = only(&[Dep::Ww]).any_cycle() {
            return Some(named(Kind::G0, steps));
        }
        let flows = only(&[Dep::Ww, Dep::Wr]);
        if let Some(steps) = flows.any_cycle() {
            return Some(named(Kind::G1c, steps));
        }
        // The write and read edges alone make no cycle here: a cycle with one
        // anti-dependency `a -rw-> b` is a path from `b` back to `a` over them. Tried
        // for the first few hundred such edges (a search each): in a component that
        // large, which cycle is named matters less than that there is one.
        let all = only(&[Dep::Ww, Dep::Wr, Dep::Rw]);
        let anti = (0..all.out.len())
            .flat_map(|a| all.out[a].iter().filter(|(_, kind)| *kind == Dep::Rw).map(move |&(b, _)| (a, b)));
        for (a, b) in anti.take(500) {
            if let Some(back) = flows.path(b, a) {
                let mut steps = vec![(a, Dep::Rw)];
                steps.extend(back);
                return Some(named(Kind::GSingle, steps));
            }
        }
        all.any_cycle().map(|steps| named(Kind::G2, steps))
    }

    /// Some cycle of this graph, if it has one.
    fn any_cycle(&self) -> Option<Vec<(usize, Dep)>> {
        let component = self.components().into_iter().find(|c| c.len() > 1)?;
        let start = component[0];
        let &(next, dep) = self.out[start].iter().find(|(to, _)| component.contains(to))?;
        let mut steps = vec![(start, dep)];
        steps.extend(self.path(next, start)?);
        Some(steps)
    }

    /// Strongly connected components (Tarjan's, without recursion: a history has
    /// hundreds of thousands of transactions).
    fn components(&self) -> Vec<Vec<usize>> {
        let n = self.out.len();
        let (mut index, mut low) = (vec![usize::MAX; n], vec![0; n]);
        let mut on_stack = vec![false; n];
        let (mut stack, mut components, mut next) = (Vec::new(), Vec::new(), 0);
        for root in 0..n {
            if index[root] != usize::MAX {
                continue;
            }
            // (node, the next out-edge of it to look at)
            let mut work = vec![(root, 0)];
            while let Some(&mut (node, ref mut edge)) = work.last_mut() {
                if *edge == 0 && index[node] == usize::MAX {
                    index[node] = next;
                    low[node] = next;
                    next += 1;
                    stack.push(node);
                    on_stack[node] = true;
                }
                if let Some(&(to, _)) = self.out[node].get(*edge) {
                    *edge += 1;
                    if index[to] == usize::MAX {
                        work.push((to, 0));
                    } else if on_stack[to] {
                        low[node] = low[node].min(index[to]);
                    }
                    continue;
                }
                work.pop();
                if let Some(&(parent, _)) = work.last() {
                    low[parent] = low[parent].min(low[node]);
                }
                if low[node] == index[node] {
                    let mut component = Vec::new();
                    while let Some(member) = stack.pop() {
                        on_stack[member] = false;
                        component.push(member);
                        if member == node {
                            break;
                        }
                    }
                    components.push(component);
                }
            }
        }
        components
    }

    /// The shortest path `from` → `to` (breadth first), as the steps it takes (each
    /// node with the edge leaving it), or `None`.
    fn path(&self, from: usize, to: usize) -> Option<Vec<(usize, Dep)>> {
        let mut came: HashMap<usize, (usize, Dep)> = HashMap::new();
        let mut queue = VecDeque::from([from]);
        let mut seen = std::collections::HashSet::from([from]);
        while let Some(node) = queue.pop_front() {
            if node == to {
                let mut steps = Vec::new();
                let mut at = to;
                while at != from {
                    let (prev, dep) = came[&at];
                    steps.push((prev, dep));
                    at = prev;
                }
                steps.reverse();
                return Some(steps);
            }
            for &(next, dep) in &self.out[node] {
                if seen.insert(next) {
                    came.insert(next, (node, dep));
                    queue.push_back(next);
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(edges: &[(usize, usize, Dep)]) -> Graph {
        let n = edges.iter().map(|(a, b, _)| a.max(b) + 1).max().unwrap_or(0);
        let mut graph = Graph::new(n);
        for &(a, b, kind) in edges {
            graph.add(a, b, kind);
        }
        graph
    }

    fn kinds(graph: &Graph) -> Vec<Kind> {
        graph.cycles().into_iter().map(|c| c.kind).collect()
    }

    /// Each cycle is named by the weakest edges it needs, and a graph without cycles
    /// has none, however many edges it has.
    #[test]
    fn cycles_are_named_by_the_edges_they_need() {
        use Dep::*;
        assert_eq!(kinds(&graph(&[(0, 1, Ww), (1, 2, Wr), (0, 2, Rw), (2, 3, Ww)])), []);
        assert_eq!(kinds(&graph(&[(0, 1, Ww), (1, 0, Ww)])), [Kind::G0]);
        assert_eq!(kinds(&graph(&[(0, 1, Ww), (1, 2, Wr), (2, 0, Wr)])), [Kind::G1c]);
        assert_eq!(kinds(&graph(&[(0, 1, Rw), (1, 0, Wr)])), [Kind::GSingle]);
        assert_eq!(kinds(&graph(&[(0, 1, Rw), (1, 0, Rw)])), [Kind::G2]);
        // Two components, each with its cycle; a write cycle beside an rw edge is still G0.
        let both = graph(&[(0, 1, Ww), (1, 0, Ww), (0, 1, Rw), (2, 3, Rw), (3, 2, Rw)]);
        let mut found = kinds(&both);
        found.sort();
        assert_eq!(found, [Kind::G0, Kind::G2]);
    }

    /// A cycle found is a real one: each step's edge is in the graph and leads to the
    /// next step's node, the last back to the first.
    #[test]
    fn a_cycle_found_follows_the_graph_s_edges() {
        use Dep::*;
        let g = graph(&[(0, 1, Wr), (1, 2, Rw), (2, 3, Wr), (3, 4, Rw), (4, 0, Ww), (4, 5, Ww)]);
        let cycles = g.cycles();
        assert_eq!(cycles.len(), 1);
        let steps = &cycles[0].steps;
        for (i, (node, dep)) in steps.iter().enumerate() {
            let next = steps[(i + 1) % steps.len()].0;
            assert!(g.out[*node].contains(&(next, *dep)), "{node} -{dep:?}-> {next} is not an edge");
        }
        assert_eq!(cycles[0].kind, Kind::G2);
        assert_eq!(cycles[0].describe(|n| format!("T{n}")).matches("-rw->").count(), 2);
    }

    /// A long chain does not overflow the stack.
    #[test]
    fn a_history_of_a_million_transactions_is_walked_without_recursion() {
        let mut g = Graph::new(1_000_000);
        for i in 1..1_000_000 {
            g.add(i - 1, i, Dep::Ww);
        }
        assert!(g.cycles().is_empty());
        g.add(999_999, 0, Dep::Rw);
        assert_eq!(kinds(&g), [Kind::GSingle]);
    }
}
