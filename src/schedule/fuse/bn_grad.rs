//! Relu's gradient into the batchnorm gradient it feeds: `BatchNormGrad` whose dy is a relu
//! `UnaryGrad` (from relu's output y) read by nothing else becomes one `BatchNormReluGrad`
//! that makes dy = relu'(y)·g as it reads it; where g is autodiff's sum of two gradients
//! (an add of equal shapes) that only the relu gradient reads, the add joins too. The fused
//! node takes the batchnorm gradient's place: its inputs (x, weight, statistics, y, g or the
//! add's two inputs) all come before the relu gradient and the add, so they exist there.

use std::collections::{BTreeMap, BTreeSet};

use super::rewrite::{readers, rebuild, returned};
use crate::graph::Graph;
use crate::ops::{BatchNormReluGrad, Binary, BinaryFn, OpKind, UnaryFn, UnaryGrad};
use crate::tensor::{NodeId, TensorId};

/// What joins one batchnorm gradient.
struct Fused {
    relu_grad: NodeId,
    add: Option<NodeId>,
    /// y, then g or the add's two inputs.
    sources: Vec<TensorId>,
}

/// `g` with each batchnorm gradient fed by relu's gradient (and a gradient sum before it)
/// fused (see the module doc).
pub(super) fn relu_grads(g: &Graph) -> Graph {
    let mut fused: BTreeMap<NodeId, Fused> = BTreeMap::new();
    for id in g.dag.node_indices() {
        let n = &g.dag[id];
        let OpKind::BatchNormGrad(_) = n.op else {
            continue;
        };
        let dy = *n.inputs.last().expect("batchnorm_grad reads dy");
        let relu_grad = &g.dag[dy.node()];
        let relu = OpKind::UnaryGrad(UnaryGrad {
            f: UnaryFn::Relu,
            from_output: true,
        });
        if relu_grad.op != relu || relu_grad.phase != n.phase || !only_reader(g, dy, id) {
            continue;
        }
        let [y, grad] = [relu_grad.inputs[0], relu_grad.inputs[1]];
        let add = &g.dag[grad.node()];
        let sums = add.op == OpKind::Binary(Binary { f: BinaryFn::Add })
            && add.phase == n.phase
            && add.inputs.iter().all(|&t| g.ty(t) == g.ty(grad))
            && only_reader(g, grad, dy.node());
        let mut sources = vec![y];
        match sums {
            true => sources.extend(&add.inputs),
            false => sources.push(grad),
        }
        let add = sums.then(|| grad.node());
        let relu_grad = dy.node();
        fused.insert(
            id,
            Fused {
                relu_grad,
                add,
                sources,
            },
        );
    }
    if fused.is_empty() {
        return g.clone();
    }
    let gone: BTreeSet<NodeId> = fused
        .values()
        .flat_map(|f| std::iter::once(f.relu_grad).chain(f.add))
        .collect();
    rebuild(g, |out, id, map| {
        if gone.contains(&id) {
            return Some(Vec::new());
        }
        let f = fused.get(&id)?;
        let n = &g.dag[id];
        let OpKind::BatchNormGrad(bn) = &n.op else {
            unreachable!("checked above")
        };
        let stats = &n.inputs[..n.inputs.len() - 1];
        let inputs: Vec<TensorId> = stats.iter().chain(&f.sources).map(|&t| map(t)).collect();
        let op = OpKind::BatchNormReluGrad(BatchNormReluGrad {
            bn: bn.clone(),
            adds: f.add.is_some(),
        });
        let new = out
            .add_node(op, &inputs, n.layer, n.phase)
            .expect("a fused op takes its members' types");
        Some(
            (0..n.outputs.len())
                .map(|k| (id, k, TensorId::of(new, k)))
                .collect(),
        )
    })
}

/// Whether `reader` alone reads `t`, once, and the step does not hand `t` out.
fn only_reader(g: &Graph, t: TensorId, reader: NodeId) -> bool {
    let of_t: Vec<NodeId> = readers(g, t.node())
        .into_iter()
        .filter(|&(_, o)| o == t.output)
        .map(|(r, _)| r)
        .collect();
    of_t == [reader] && !returned(g, t)
}

#[cfg(test)]
mod tests {
    use super::super::test_graphs::{count, resnet20_step};
    use super::*;

    /// ResNet-20's step: the relu after each block's first batchnorm has one reader (conv2),
    /// so its gradient alone is that batchnorm gradient's dy; the stem's relu feeds layer1.0's
    /// conv1 and its identity shortcut, so autodiff sums two gradients first. A relu that ends
    /// a block has its gradient read twice (bn2's gradient and the shortcut's): left alone.
    #[test]
    fn resnet20s_relu_gradients_join_their_batchnorm_gradients() {
        let g = resnet20_step();
        let fused = relu_grads(&g);
        fused.verify().unwrap();
        let (bn_grads, unary_grads) = (count(&g, "batchnorm_grad"), count(&g, "unary_grad"));
        assert_eq!((bn_grads, unary_grads), (21, 19));
        assert_eq!(count(&fused, "batchnorm_relu_grad"), 9);
        assert_eq!(count(&fused, "batchnorm_relu_grad_add"), 1);
        assert_eq!(count(&fused, "batchnorm_grad"), bn_grads - 10);
        assert_eq!(count(&fused, "unary_grad"), unary_grads - 10);
        assert_eq!(count(&fused, "add"), count(&g, "add") - 1);
        assert_eq!(fused.dag.node_count(), g.dag.node_count() - 11);
        // Each fused node reads relu's output y (a relu in the forward pass) and its gradient
        // source(s), with batchnorm_grad's other inputs first.
        for n in fused.dag.node_weights() {
            let OpKind::BatchNormReluGrad(f) = &n.op else {
                continue;
            };
            let y = n.inputs[n.inputs.len() - 2 - f.adds as usize];
            let relu = &fused.dag[y.node()];
            assert_eq!(relu.op.primitive().name(), "relu");
            assert_eq!(n.inputs[0], fused.dag[relu.inputs[0].node()].inputs[0]);
        }
        // A second pass finds nothing more.
        assert_eq!(relu_grads(&fused).dag.node_count(), fused.dag.node_count());
    }

    /// A relu gradient the step hands out, or one a second op reads, stays.
    #[test]
    fn a_relu_gradient_read_elsewhere_stays() {
        let mut g = resnet20_step();
        // Relu gradients only a batchnorm gradient reads, in creation order.
        let fusable: Vec<NodeId> = g
            .dag
            .node_indices()
            .filter(|&id| matches!(g.dag[id].op, OpKind::UnaryGrad(_)))
            .filter(|&id| {
                let rs = readers(&g, id);
                rs.len() == 1 && matches!(g.dag[rs[0].0].op, OpKind::BatchNormGrad(_))
            })
            .collect();
        assert_eq!(fusable.len(), 10);
        // The step's output: as if the caller asked for the first of them.
        g.output = TensorId::of(fusable[0], 0);
        let fused = relu_grads(&g);
        fused.verify().unwrap();
        assert_eq!(count(&fused, "unary_grad"), count(&g, "unary_grad") - 9);
        // A second reader: the second one's gradient also read by a copy of the first's add.
        let (second, bn) = (fusable[1], readers(&g, fusable[1])[0].0);
        let layer = g.dag[second].layer;
        let t = TensorId::of(second, 0);
        let add = OpKind::Binary(Binary { f: BinaryFn::Add });
        let phase = g.dag[bn].phase;
        g.add_node(add, &[t, t], layer, phase).unwrap();
        let fused = relu_grads(&g);
        fused.verify().unwrap();
        assert_eq!(count(&fused, "unary_grad"), count(&g, "unary_grad") - 8);
    }
}
