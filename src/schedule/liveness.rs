//! Liveness: how long each tensor lives in a launch order, which is what lets the memory pass
//! reuse a tensor's bytes once it is dead.

use std::collections::BTreeMap;

use crate::graph::Graph;

use crate::tensor::{NodeId, TensorId};

/// The position in `order` of the last launch that reads each tensor. The loss and the output
/// (logits) are read after the step, so they live to `order.len()`. A tensor no launch reads
/// is absent: it dies where it is written.
pub fn last_reads(g: &Graph, order: &[NodeId]) -> BTreeMap<TensorId, usize> {
    let end = order.len();
    let mut last: BTreeMap<TensorId, usize> = BTreeMap::new();
    for (i, &id) in order.iter().enumerate() {
        for &t in &g.dag[id].inputs {
            last.insert(t, i);
        }
    }
    for t in [g.loss, g.output] {
        last.insert(t, end);
    }
    last
}
