//! The order pass: when each launch runs.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};

use crate::graph::{Graph, Phase};

use crate::ops::OpKind;
use crate::tensor::NodeId;

/// A deterministic topological order of the launches (parameters and inputs are not
/// launched): Kahn's algorithm, phases in order, ties broken by creation index.
pub fn order(g: &Graph) -> Vec<NodeId> {
    let launched = |id: NodeId| !matches!(g.dag[id].op, OpKind::Parameter(_) | OpKind::Input(_));
    let rank = |id: NodeId| match g.dag[id].phase {
        Phase::Forward => 0,
        Phase::Backward | Phase::Recompute => 1,
        Phase::Update => 2,
    };
    let mut waiting: Vec<usize> = vec![0; g.dag.node_count()];
    let mut users: Vec<Vec<NodeId>> = vec![Vec::new(); g.dag.node_count()];
    for id in g.dag.node_indices() {
        let deps: BTreeSet<NodeId> = g.dag[id]
            .inputs
            .iter()
            .map(|t| t.node())
            .filter(|&n| launched(n))
            .collect();
        waiting[id.index()] = deps.len();
        for d in deps {
            users[d.index()].push(id);
        }
    }
    let mut ready: BinaryHeap<Reverse<(u8, NodeId)>> = g
        .dag
        .node_indices()
        .filter(|&id| launched(id) && waiting[id.index()] == 0)
        .map(|id| Reverse((rank(id), id)))
        .collect();
    let mut out = Vec::new();
    while let Some(Reverse((_, id))) = ready.pop() {
        out.push(id);
        for &u in &users[id.index()] {
            waiting[u.index()] -= 1;
            if waiting[u.index()] == 0 {
                ready.push(Reverse((rank(u), u)));
            }
        }
    }
    out
}
