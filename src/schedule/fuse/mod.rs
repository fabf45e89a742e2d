//! Fusion: fewer, larger launches for the same arithmetic. Runs after recompute (on the graph
//! with its clones) and before order and memory. Switched by `Options::fuse` (`run.fusion` in
//! the config: all passes, none, or a list); a fused plan does the same arithmetic as an
//! unfused one, rounded at the same points: the same bits (tests/fusion.rs). A fused kernel
//! passes each value the unfused launches would have stored through common.wgsl's `stored`,
//! so a driver free to contract `a·b + c` into an fma (Vulkan allows it, NVIDIA's does) cannot
//! do it across a launch boundary that fusion removed.
//!
//! Epilogues first: batchnorm + add + relu at a residual block's end, where the batchnorm's
//! output and the sum each have one reader, becomes one `BatchNormRelu { residual }` in the
//! relu's place; then an activation whose input nothing else reads joins the op that made it
//! (`Primitive::with_epilogue`: batchnorm + relu), in the activation's place. In the backward
//! pass, relu's gradient (and a gradient sum before it) joins the batchnorm gradient it feeds
//! (`bn_grad.rs`).
//!
//! A linear layer's bias add and activation next join its matmul (`gemm_epilogue.rs`:
//! `MatMulBias`). Elementwise chains then (`chains.rs`): unary and binary ops whose
//! intermediates only the next op reads, as one `Chain` launch.
//!
//! Multi-tensor updates: every op that has a multi-tensor form (`Primitive::foreach`: SGD,
//! Adam, batchnorm's running statistics and counter), whose outputs nothing reads, joins the others equal to it
//! (same op, same attributes) in one `Foreach` node, placed where the last of them was, so its
//! inputs all exist. The node's inputs and outputs are the members', member after member, so
//! liveness, memory and the in-place updates (`Graph::updates`) still see every tensor.

mod bn_grad;
mod chains;
mod gemm_epilogue;
mod rewrite;
#[cfg(test)]
mod test_graphs;

use std::collections::{BTreeMap, BTreeSet};

use crate::config::sections::{Fusion, FusionPass};
use crate::graph::Graph;
use crate::kernel::gpu::KernelArgs;
use crate::ops::{BatchNormRelu, Binary, BinaryFn, Foreach, OpKind, Unary, UnaryFn, UnaryGrad};
use crate::tensor::{NodeId, TensorId, TensorType};
use rewrite::{readers, rebuild, returned};

/// `g` with its fusable ops fused by the passes `on` asks for, in a fixed order (a copy of `g`
/// where there is nothing to fuse).
pub fn fuse(g: &Graph, on: Fusion) -> Graph {
    type Pass = fn(&Graph) -> Graph;
    let passes: [(FusionPass, Pass); 6] = [
        (FusionPass::Residual, residuals),
        (FusionPass::Activation, epilogues),
        (FusionPass::NormGrad, bn_grad::relu_grads),
        (FusionPass::MatmulBias, gemm_epilogue::gemm_epilogues),
        (FusionPass::Chains, chains::chains),
        (FusionPass::MultiTensor, foreach),
    ];
    let mut g = g.clone();
    for (pass, run) in passes {
        if on.has(pass) {
            g = run(&g);
        }
    }
    g
}

/// relu(batchnorm(x) + r) as one `BatchNormRelu { residual: true }` in the relu's place, where
/// the add alone reads the batchnorm's output 0, the relu alone reads the sum, r has the sum's
/// shape (no broadcasting), and every other reader of the batchnorm comes after the relu.
fn residuals(g: &Graph) -> Graph {
    // Relu → (its batchnorm, the add, the add's other input).
    let mut fused: BTreeMap<NodeId, (NodeId, NodeId, TensorId)> = BTreeMap::new();
    for id in g.dag.node_indices() {
        let n = &g.dag[id];
        if n.op != OpKind::Unary(Unary { f: UnaryFn::Relu }) {
            continue;
        }
        let sum = n.inputs[0];
        let add = &g.dag[sum.node()];
        let only = |t: TensorId, reader: NodeId| {
            let rs = readers(g, t.node());
            let of_t: Vec<_> = rs.iter().filter(|&&(_, o)| o == t.output).collect();
            of_t.len() == 1 && of_t[0].0 == reader && !returned(g, t)
        };
        if add.op != OpKind::Binary(Binary { f: BinaryFn::Add }) || !only(sum, id) {
            continue;
        }
        let [a, b] = [add.inputs[0], add.inputs[1]];
        for (y, r) in [(a, b), (b, a)] {
            let bn = &g.dag[y.node()];
            let later = readers(g, y.node())
                .iter()
                .all(|&(reader, o)| o == 0 || reader > id);
            let fits = matches!(bn.op, OpKind::BatchNorm(_))
                && y.output == 0
                && y != r
                && g.ty(r) == g.ty(y)
                && only(y, sum.node())
                && later
                && bn.phase == n.phase
                && add.phase == n.phase;
            if fits {
                fused.insert(id, (y.node(), sum.node(), r));
                break;
            }
        }
    }
    if fused.is_empty() {
        return g.clone();
    }
    let gone: BTreeSet<NodeId> = fused.values().flat_map(|&(bn, add, _)| [bn, add]).collect();
    rebuild(g, |out, id, map| {
        if gone.contains(&id) {
            return Some(Vec::new());
        }
        let &(bn, _, r) = fused.get(&id)?;
        let p = &g.dag[bn];
        let OpKind::BatchNorm(op) = &p.op else {
            unreachable!("checked above")
        };
        let mut inputs: Vec<TensorId> = p.inputs.iter().map(|&t| map(t)).collect();
        inputs.push(map(r));
        let fused = OpKind::BatchNormRelu(BatchNormRelu {
            bn: op.clone(),
            residual: true,
        });
        let new = out
            .add_node(fused, &inputs, p.layer, p.phase)
            .expect("a fused op takes its producer's types");
        let mut outs = vec![(id, 0, TensorId::of(new, 0))];
        outs.extend((1..p.outputs.len()).map(|k| (bn, k, TensorId::of(new, k))));
        Some(outs)
    })
}

/// Activations fused into the op before them (`Primitive::with_epilogue`: batchnorm + relu)
/// where nothing else reads that op's output 0, and every other reader of its outputs comes
/// after the activation (the fused node takes the activation's place).
fn epilogues(g: &Graph) -> Graph {
    // Producer → (its activation, the fused op).
    let mut fused: BTreeMap<NodeId, (NodeId, OpKind)> = BTreeMap::new();
    for id in g.dag.node_indices() {
        let n = &g.dag[id];
        let OpKind::Unary(Unary { f }) = &n.op else {
            continue;
        };
        let t = n.inputs[0];
        let producer = t.node();
        let Some(op) = g.dag[producer].op.primitive().with_epilogue(*f) else {
            continue;
        };
        let readers = readers(g, producer);
        let only_reader = readers.iter().filter(|&&(_, o)| o == 0).count() == 1;
        let later = readers.iter().all(|&(r, o)| o == 0 || r > id);
        let same_phase = g.dag[producer].phase == n.phase;
        if t.output == 0 && only_reader && later && same_phase && !returned(g, t) {
            fused.insert(producer, (id, op));
        }
    }
    if fused.is_empty() {
        return g.clone();
    }
    let at: BTreeMap<NodeId, NodeId> = fused.iter().map(|(&p, &(a, _))| (a, p)).collect();
    rebuild(g, |out, id, map| {
        if fused.contains_key(&id) {
            return Some(Vec::new());
        }
        let &producer = at.get(&id)?;
        let (_, op) = &fused[&producer];
        let p = &g.dag[producer];
        let inputs: Vec<TensorId> = p.inputs.iter().map(|&t| map(t)).collect();
        let new = out
            .add_node(op.clone(), &inputs, p.layer, p.phase)
            .expect("a fused op takes its producer's types");
        // The activation's output is the fused op's output 0; the producer's others follow.
        let mut outs = vec![(id, 0, TensorId::of(new, 0))];
        outs.extend((1..p.outputs.len()).map(|k| (producer, k, TensorId::of(new, k))));
        Some(outs)
    })
}

/// Multi-tensor updates (see the module doc).
fn foreach(g: &Graph) -> Graph {
    let groups = foreach_groups(g);
    if groups.is_empty() {
        return g.clone();
    }
    // Each member's group.
    let mut member: Vec<Option<usize>> = vec![None; g.dag.node_count()];
    for (k, (_, ids)) in groups.iter().enumerate() {
        for &id in ids {
            member[id.index()] = Some(k);
        }
    }
    rebuild(g, |out, id, map| {
        let k = member[id.index()]?;
        let (op, ids) = &groups[k];
        if ids.last() != Some(&id) {
            return Some(Vec::new());
        }
        let inputs: Vec<TensorId> = ids
            .iter()
            .flat_map(|&m| g.dag[m].inputs.iter().map(|&t| map(t)))
            .collect();
        let fused = OpKind::Foreach(Foreach {
            inner: Box::new(op.clone()),
            groups: ids.len(),
        });
        let first = &g.dag[ids[0]];
        let new = out
            .add_node(fused, &inputs, first.layer, first.phase)
            .expect("a multi-tensor op takes its members' types");
        let mut outs = Vec::new();
        for &m in ids {
            for k in 0..g.dag[m].outputs.len() {
                outs.push((m, k, TensorId::of(new, outs.len())));
            }
        }
        Some(outs)
    })
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
/// `Foreach` with its own kernels, a fused activation with its own, a matmul's epilogue as its
/// add and activation, each link of a chain). Ops without a GPU kernel, or with a tensor too
/// large for one (a CPU-only plan), count none.
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
            OpKind::BatchNormRelu(f) => {
                let bn = OpKind::BatchNorm(f.bn.clone());
                let relu = OpKind::Unary(Unary { f: UnaryFn::Relu });
                let add = OpKind::Binary(Binary { f: BinaryFn::Add });
                let (bn_inputs, r) = inputs.split_at(inputs.len() - f.residual as usize);
                let y = &n.outputs[0];
                count(&bn, bn_inputs, &n.outputs)
                    + count(&relu, &[y], &n.outputs[..1])
                    + r.iter()
                        .map(|&r| count(&add, &[y, r], &n.outputs[..1]))
                        .sum::<usize>()
            }
            OpKind::BatchNormReluGrad(f) => {
                // x, [weight], mean, var, y, g (g2): the add, relu's gradient, then batchnorm's.
                let stats = inputs.len() - 2 - f.adds as usize;
                let (y, g) = (inputs[stats], inputs[stats + 1]);
                let dy = std::slice::from_ref(&n.outputs[0]);
                let relu_grad = OpKind::UnaryGrad(UnaryGrad {
                    f: UnaryFn::Relu,
                    from_output: true,
                });
                let add = OpKind::Binary(Binary { f: BinaryFn::Add });
                let mut bn_inputs = inputs[..stats].to_vec();
                bn_inputs.push(g);
                count(&OpKind::BatchNormGrad(f.bn.clone()), &bn_inputs, &n.outputs)
                    + count(&relu_grad, &[y, g], dy)
                    + if f.adds { count(&add, &[g, g], dy) } else { 0 }
            }
            OpKind::MatMulBias(f) => {
                let y = &n.outputs[..1];
                let add = OpKind::Binary(Binary { f: BinaryFn::Add });
                count(&OpKind::MatMul(crate::ops::MatMul), &inputs[..2], y)
                    + count(&add, &[&y[0], inputs[2]], y)
                    + f.act
                        .map_or(0, |f| count(&OpKind::Unary(Unary { f }), &[&y[0]], y))
            }
            OpKind::Chain(c) => c.unfused(&inputs).map_or(0, |links| {
                links
                    .iter()
                    .map(|(op, ins, out)| {
                        let ins: Vec<&TensorType> = ins.iter().collect();
                        count(op, &ins, std::slice::from_ref(out))
                    })
                    .sum()
            }),
            _ => here,
        };
    }
    (fused, unfused)
}

#[cfg(test)]
mod tests {
    use super::test_graphs::{count, resnet20_step};
    use super::*;

    /// ResNet-20's step: every SGD update, every batchnorm counter, the running statistics of
    /// each stage become one launch each, and every update still writes over its own state;
    /// relus whose input only they read join their batchnorm, with the add before them at a
    /// block's end; the gradient sum at a block's input and the relu gradient reading it
    /// become one chain; the classifier's bias joins its matmul.
    #[test]
    fn updates_of_one_kind_become_one_node() {
        let g = resnet20_step();
        let fused = fuse(&g, Fusion::ALL);
        fused.verify().unwrap();
        // Ops of `name`, alone or as links of a chain.
        let ops = |g: &Graph, name: &str| {
            let links = g.dag.node_weights().map(|n| match &n.op {
                OpKind::Chain(c) => c
                    .links
                    .iter()
                    .filter(|l| l.f.op().primitive().name() == name)
                    .count(),
                _ => 0,
            });
            count(g, name) + links.sum::<usize>()
        };
        let chains: Vec<(&crate::ops::Chain, String)> = fused
            .dag
            .node_weights()
            .filter_map(|n| match &n.op {
                OpKind::Chain(c) => Some((c, n.op.primitive().attrs()[0].1.clone())),
                _ => None,
            })
            .collect();
        assert!(!chains.is_empty());
        let links: usize = chains.iter().map(|(c, _)| c.links.len()).sum();
        let sgd = count(&g, "sgd_step");
        assert!(sgd > 10);
        assert_eq!(count(&fused, "sgd_step"), 0);
        assert_eq!(count(&fused, "sgd_step_multi"), 1);
        assert_eq!(count(&fused, "count_up_multi"), 1);
        // One per batch size the statistics were taken over: a stage each.
        assert_eq!(count(&fused, "batchnorm_running_stats_multi"), 3);
        let stats = count(&g, "batchnorm_running_stats");
        // The stem's relu and each block's first follow a batchnorm; the others end a block:
        // relu(batchnorm + shortcut), three nodes made one.
        assert_eq!(count(&fused, "batchnorm_relu"), 10);
        assert_eq!(count(&fused, "batchnorm_add_relu"), 9);
        assert_eq!(ops(&fused, "relu"), count(&g, "relu") - 19);
        // Backward: the stem's relu gradient takes the gradient sum before it (bn_grad.rs).
        // The classifier's bias add joins its matmul.
        assert_eq!(count(&fused, "matmul_bias"), 1);
        assert_eq!(ops(&fused, "add"), count(&g, "add") - 9 - 1 - 1);
        assert_eq!(ops(&fused, "unary_grad"), count(&g, "unary_grad") - 10);
        assert_eq!(
            fused.dag.node_count(),
            g.dag.node_count() - sgd + 1 - count(&g, "count_up") + 1 - stats + 3
                - 10
                - 2 * 9
                - 10
                - (links - chains.len())
                - 1
                - 1
        );
        // The relu gradients bn_grad.rs leaves that read a sum of two paths' gradients.
        assert_eq!(chains.len(), 8);
        for (_, expr) in &chains {
            assert_eq!(expr, "unary_grad[fn=relu,of=y](x0, add(x1, x2))");
        }
        assert_eq!(fused.updates.len(), g.updates.len());
        for (&(i, old), &(j, new)) in g.updates.iter().zip(&fused.updates) {
            assert_eq!(i, j);
            assert_eq!(g.ty(old), fused.ty(new));
        }
    }
}
