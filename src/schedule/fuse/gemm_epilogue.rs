//! A linear layer's bias add and activation into its matmul's epilogue: `matmul` → `add` of a
//! bias of shape [cols] (broadcast over the rows) → optionally a unary activation becomes one
//! `ops::MatMulBias` in the last op's place (named after the matmul's layer), where each
//! intermediate has that next op as its only reader, is not returned by the step, and all are
//! in one phase. An activation whose
//! gradient needs its input (gelu, silu) keeps the sum alive for the backward pass: then only
//! the bias joins.
//!
//! Runs before the elementwise chains, which would otherwise take the add and activation.

use std::collections::BTreeMap;

use super::rewrite::{readers, rebuild, returned};
use crate::graph::Graph;
use crate::ops::{Binary, BinaryFn, MatMulBias, OpKind, Unary};
use crate::tensor::{NodeId, TensorId};

/// One fusion: the matmul, its add, the bias, the activation if any.
struct Fused {
    matmul: NodeId,
    add: NodeId,
    bias: TensorId,
    act: Option<NodeId>,
}

impl Fused {
    /// The node whose place the fused op takes (its output is the fused op's).
    fn last(&self) -> NodeId {
        self.act.unwrap_or(self.add)
    }
}

/// `g` with its linear layers' epilogues fused (a copy where there are none).
pub(super) fn gemm_epilogues(g: &Graph) -> Graph {
    let found = find(g);
    if found.is_empty() {
        return g.clone();
    }
    let at: BTreeMap<NodeId, &Fused> = found.iter().map(|f| (f.last(), f)).collect();
    let gone: Vec<NodeId> = found
        .iter()
        .flat_map(|f| [f.matmul, f.add])
        .filter(|id| !at.contains_key(id))
        .collect();
    rebuild(g, |out, id, map| {
        if gone.contains(&id) {
            return Some(Vec::new());
        }
        let f = at.get(&id)?;
        let mm = &g.dag[f.matmul];
        let inputs = [map(mm.inputs[0]), map(mm.inputs[1]), map(f.bias)];
        let act = f.act.map(|a| match &g.dag[a].op {
            OpKind::Unary(Unary { f }) => *f,
            _ => unreachable!("checked in find"),
        });
        // Named after the linear layer (the matmul's), as plans and profiles show it.
        let new = out
            .add_node(
                OpKind::MatMulBias(MatMulBias { act }),
                &inputs,
                mm.layer,
                mm.phase,
            )
            .expect("a fused linear takes its ops' types");
        Some(vec![(id, 0, TensorId::of(new, 0))])
    })
}

/// Every matmul → bias add (→ activation) that may fuse, in creation order of the adds.
fn find(g: &Graph) -> Vec<Fused> {
    // The one reader of `t` (through one edge) where the step does not return it.
    let only_reader = |t: TensorId| -> Option<NodeId> {
        let rs = readers(g, t.node());
        (t.output == 0 && rs.len() == 1 && !returned(g, t)).then(|| rs[0].0)
    };
    let mut found = Vec::new();
    for add in g.dag.node_indices() {
        let n = &g.dag[add];
        if n.op != OpKind::Binary(Binary { f: BinaryFn::Add }) {
            continue;
        }
        let [a, b] = [n.inputs[0], n.inputs[1]];
        for (y, bias) in [(a, b), (b, a)] {
            let mm = &g.dag[y.node()];
            let cols = g.ty(y).shape.last().copied();
            let fits = mm.op == OpKind::MatMul(crate::ops::MatMul)
                && mm.phase == n.phase
                && only_reader(y) == Some(add)
                && y != bias
                && cols.is_some_and(|c| g.ty(bias).shape == [c]);
            if !fits {
                continue;
            }
            let sum = TensorId::of(add, 0);
            let act = only_reader(sum)
                .filter(|&r| matches!(g.dag[r].op, OpKind::Unary(_)) && g.dag[r].phase == n.phase);
            found.push(Fused {
                matmul: y.node(),
                add,
                bias,
                act,
            });
            break;
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::super::test_graphs::{input, op};
    use super::*;
    use crate::ops::{MatMul, UnaryFn};

    fn fused_ops(g: &Graph) -> Vec<String> {
        g.dag
            .node_weights()
            .filter(|n| !matches!(n.op, OpKind::Input(_)))
            .map(|n| n.op.primitive().name().to_string())
            .collect()
    }

    /// x·wᵀ + b then tanh: one op; with the sum read twice (a gelu, whose gradient reads it,
    /// stands for that here by a second reader), only the bias joins; a bias of the wrong
    /// shape (a [rows, cols] addend) or a matmul output read elsewhere fuses nothing.
    #[test]
    fn a_linear_layer_becomes_one_gemm() {
        let build = |second_reader: bool, bias_shape: &[usize], act: bool| {
            let mut g = Graph::scratch("linear");
            let x = input(&mut g, "x", &[4, 6]);
            let w = input(&mut g, "w", &[3, 6]);
            let b = input(&mut g, "b", bias_shape);
            let y = op(&mut g, OpKind::MatMul(MatMul), &[x, w]);
            let sum = op(&mut g, OpKind::Binary(Binary { f: BinaryFn::Add }), &[b, y]);
            let mut out = sum;
            if act {
                out = op(&mut g, OpKind::Unary(Unary { f: UnaryFn::Tanh }), &[sum]);
            }
            if second_reader {
                out = op(
                    &mut g,
                    OpKind::Binary(Binary { f: BinaryFn::Mul }),
                    &[out, sum],
                );
            }
            (g.output, g.features, g.labels, g.loss) = (out, x, x, out);
            g
        };
        let g = build(false, &[3], true);
        let fused = gemm_epilogues(&g);
        fused.verify().unwrap();
        assert_eq!(fused_ops(&fused), ["matmul_bias_act"]);
        assert_eq!(fused.ty(fused.output), g.ty(g.output));
        assert_eq!(
            fused_ops(&gemm_epilogues(&build(false, &[3], false))),
            ["matmul_bias"]
        );
        assert_eq!(
            fused_ops(&gemm_epilogues(&build(true, &[3], true))),
            ["matmul_bias", "tanh", "mul"]
        );
        assert_eq!(
            fused_ops(&gemm_epilogues(&build(false, &[4, 3], true))),
            ["matmul", "add", "tanh"]
        );
    }
}
