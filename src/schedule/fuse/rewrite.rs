//! The graph rewriting the fusions share: who reads a tensor, whether the step hands it out,
//! and `rebuild`, which copies a graph node by node with fused nodes in place.

use std::collections::BTreeMap;

use petgraph::visit::EdgeRef;

use crate::graph::Graph;
use crate::tensor::{NodeId, TensorId};

/// Whether the step hands `t` out (so no fusion may make it disappear).
pub(super) fn returned(g: &Graph, t: TensorId) -> bool {
    [g.features, g.labels, g.output, g.loss].contains(&t)
        || g.grads.iter().chain(&g.updates).any(|&(_, u)| u == t)
}

/// Readers of `t`'s producer as (reader, the producer's output it reads), one per edge.
pub(super) fn readers(g: &Graph, producer: NodeId) -> Vec<(NodeId, u32)> {
    g.dag
        .edges(producer)
        .map(|e| (e.target(), e.weight().output))
        .collect()
}

/// A copy of `g` rewritten node by node in creation order: `fuse(out, id, map)` either adds
/// what stands for old node `id` itself, returning where old outputs (node, output) went
/// (possibly none yet, for a node fused into a later one), or returns None to have the node
/// copied. `map` gives the new tensor of an old one already placed. An old tensor that no
/// node took (a fused intermediate) must have no reader left.
pub(super) fn rebuild(
    g: &Graph,
    mut fuse: impl FnMut(
        &mut Graph,
        NodeId,
        &dyn Fn(TensorId) -> TensorId,
    ) -> Option<Vec<(NodeId, usize, TensorId)>>,
) -> Graph {
    let mut out = g.clone();
    out.dag.clear();
    let mut map: BTreeMap<TensorId, TensorId> = BTreeMap::new();
    for id in g.dag.node_indices() {
        let n = &g.dag[id];
        let lookup = |t: TensorId| *map.get(&t).expect("inputs come first");
        match fuse(&mut out, id, &lookup) {
            Some(placed) => {
                for (node, k, t) in placed {
                    map.insert(TensorId::of(node, k), t);
                }
            }
            None => {
                let inputs: Vec<TensorId> = n.inputs.iter().map(|&t| lookup(t)).collect();
                let new = out
                    .add_node(n.op.clone(), &inputs, n.layer, n.phase)
                    .expect("a copied node keeps its types");
                for k in 0..n.outputs.len() {
                    map.insert(TensorId::of(id, k), TensorId::of(new, k));
                }
            }
        }
    }
    let get = |t: TensorId| *map.get(&t).expect("a tensor the step returns is kept");
    out.features = get(g.features);
    out.labels = get(g.labels);
    out.output = get(g.output);
    out.loss = get(g.loss);
    for (_, t) in out.grads.iter_mut().chain(out.updates.iter_mut()) {
        *t = get(*t);
    }
    // A fused intermediate was some layer's output: that layer's output is now its reader's.
    for layer in &mut out.layers {
        layer.output = layer.output.and_then(|t| map.get(&t).copied());
    }
    for p in &mut out.params {
        p.node = p.node.map(|n| map[&TensorId::of(n, 0)].node());
    }
    out
}
