//! Fusion: fewer, larger launches for the same arithmetic. Runs after recompute (on the graph
//! with its clones) and before order and memory. Switched by `Options::fuse` (`run.fusion` in
//! the config); a fused plan gives the same bits as an unfused one (tests/fusion.rs).
//!
//! Multi-tensor updates: every op that has a multi-tensor form (`Primitive::foreach`: SGD,
//! Adam, batchnorm's running statistics and counter), whose outputs nothing reads, joins the others equal to it
//! (same op, same attributes) in one `Foreach` node, placed where the last of them was, so its
//! inputs all exist. The node's inputs and outputs are the members', member after member, so
//! liveness, memory and the in-place updates (`Graph::updates`) still see every tensor.

use crate::graph::Graph;
use crate::kernel::gpu::KernelArgs;
use crate::ops::{Foreach, OpKind};
use crate::tensor::{NodeId, TensorId, TensorType};

/// `g` with its fusable ops fused (a copy of `g` where there is nothing to fuse).
pub fn fuse(g: &Graph) -> Graph {
    let groups = foreach_groups(g);
    if groups.is_empty() {
        return g.clone();
    }
    // For each member: its group, and where its outputs start among the group's.
    let mut member: Vec<Option<(usize, usize)>> = vec![None; g.dag.node_count()];
    for (k, (_, ids)) in groups.iter().enumerate() {
        let mut base = 0;
        for &id in ids {
            member[id.index()] = Some((k, base));
            base += g.dag[id].outputs.len();
        }
    }
    let mut out = g.clone();
    out.dag.clear();
    // Each old node's new node and where its outputs start there.
    let mut map: Vec<Option<(NodeId, usize)>> = vec![None; g.dag.node_count()];
    for id in g.dag.node_indices() {
        let n = &g.dag[id];
        let remap = |map: &[Option<(NodeId, usize)>], t: TensorId| remap(map, t);
        let Some((k, _)) = member[id.index()] else {
            let inputs: Vec<TensorId> = n.inputs.iter().map(|&t| remap(&map, t)).collect();
            let new = out
                .add_node(n.op.clone(), &inputs, n.layer, n.phase)
                .expect("a copied node keeps its types");
            map[id.index()] = Some((new, 0));
            continue;
        };
        let (op, ids) = &groups[k];
        if ids.last() != Some(&id) {
            continue;
        }
        let inputs: Vec<TensorId> = ids
            .iter()
            .flat_map(|&m| g.dag[m].inputs.iter().map(|&t| remap(&map, t)))
            .collect();
        let fused = OpKind::Foreach(Foreach {
            inner: Box::new(op.clone()),
            groups: ids.len(),
        });
        let first = &g.dag[ids[0]];
        let new = out
            .add_node(fused, &inputs, first.layer, first.phase)
            .expect("a multi-tensor op takes its members' types");
        for &m in ids {
            let (_, base) = member[m.index()].expect("a member");
            map[m.index()] = Some((new, base));
        }
    }
    out.features = remap(&map, g.features);
    out.labels = remap(&map, g.labels);
    out.output = remap(&map, g.output);
    out.loss = remap(&map, g.loss);
    for (_, t) in out.grads.iter_mut().chain(out.updates.iter_mut()) {
        *t = remap(&map, *t);
    }
    for layer in &mut out.layers {
        layer.output = layer.output.map(|t| remap(&map, t));
    }
    for p in &mut out.params {
        p.node = p.node.map(|n| map[n.index()].expect("mapped").0);
    }
    out
}

/// Ops with a multi-tensor form and no readers, grouped with the ops equal to them, in
/// creation order; groups of one are left alone.
fn foreach_groups(g: &Graph) -> Vec<(OpKind, Vec<NodeId>)> {
    let mut groups: Vec<(OpKind, Vec<NodeId>)> = Vec::new();
    for id in g.dag.node_indices() {
        let n = &g.dag[id];
        let unread = g.dag.neighbors(id).next().is_none();
        if n.op.primitive().foreach().is_none() || !unread {
            continue;
        }
        match groups.iter_mut().find(|(op, _)| *op == n.op) {
            Some((_, ids)) => ids.push(id),
            None => groups.push((n.op.clone(), vec![id])),
        }
    }
    groups.retain(|(_, ids)| ids.len() > 1);
    groups
}

/// GPU dispatches per step of `g`'s ops, and how many they would be unfused (each member of a
/// `Foreach` with its own kernels). Ops without a GPU kernel, or with a tensor too large for
/// one (a CPU-only plan), count none.
pub fn dispatches(g: &Graph) -> (usize, usize) {
    let count = |op: &OpKind, inputs: &[&TensorType], outputs: &[TensorType]| {
        let too_large = |t: &TensorType| t.numel() > u32::MAX as usize;
        if inputs.iter().copied().chain(outputs).any(too_large) {
            return 0;
        }
        let args = KernelArgs { inputs, outputs };
        op.primitive().gpu(&args).map_or(0, |ds| ds.len())
    };
    let (mut fused, mut unfused) = (0, 0);
    for n in g.dag.node_weights() {
        if matches!(n.op, OpKind::Parameter(_) | OpKind::Input(_)) {
            continue;
        }
        let inputs: Vec<&TensorType> = n.inputs.iter().map(|&t| g.ty(t)).collect();
        let here = count(&n.op, &inputs, &n.outputs);
        fused += here;
        unfused += match &n.op {
            OpKind::Foreach(f) => {
                let a = inputs.len() / f.groups;
                let b = n.outputs.len() / f.groups;
                (0..f.groups)
                    .map(|k| {
                        let ins = &inputs[k * a..(k + 1) * a];
                        count(&f.inner, ins, &n.outputs[k * b..(k + 1) * b])
                    })
                    .sum()
            }
            _ => here,
        };
    }
    (fused, unfused)
}

fn remap(map: &[Option<(NodeId, usize)>], t: TensorId) -> TensorId {
    let (node, base) = map[t.node as usize].expect("inputs come first");
    TensorId::of(node, base + t.output as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ResNet-20's step: every SGD update, every batchnorm counter, the running statistics of
    /// each stage become one launch each, and every update still writes over its own state.
    #[test]
    fn updates_of_one_kind_become_one_node() {
        let cfg = crate::config::load(
            std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/configs/resnet.toml")),
            &[],
        )
        .result
        .unwrap();
        let forward = crate::nn::build(&cfg).unwrap();
        let g = crate::training::training_graph(&forward, &cfg.optimizer).unwrap();
        let fused = fuse(&g);
        fused.verify().unwrap();
        let count = |g: &Graph, name: &str| {
            g.dag
                .node_weights()
                .filter(|n| n.op.primitive().name() == name)
                .count()
        };
        let sgd = count(&g, "sgd_step");
        assert!(sgd > 10);
        assert_eq!(count(&fused, "sgd_step"), 0);
        assert_eq!(count(&fused, "sgd_step_multi"), 1);
        assert_eq!(count(&fused, "count_up_multi"), 1);
        // One per batch size the statistics were taken over: a stage each.
        assert_eq!(count(&fused, "batchnorm_running_stats_multi"), 3);
        let stats = count(&g, "batchnorm_running_stats");
        assert_eq!(
            fused.dag.node_count(),
            g.dag.node_count() - sgd + 1 - count(&g, "count_up") + 1 - stats + 3
        );
        assert_eq!(fused.updates.len(), g.updates.len());
        for (&(i, old), &(j, new)) in g.updates.iter().zip(&fused.updates) {
            assert_eq!(i, j);
            assert_eq!(g.ty(old), fused.ty(new));
        }
    }
}
