//! Elementwise chains: unary, unary-gradient and binary ops whose intermediates only the next
//! op reads become one `ops::Chain` launch in the last op's place.
//!
//! An elementwise op joins the op reading its output when that reader is elementwise too, in
//! the same phase, reads the output through one edge, nothing else reads it, and the step
//! does not return it. Such ops form trees (an add of two fusable activations is one), built
//! in creation order: an op takes each fusable producer's tree, input by input, while the
//! merged tree stays within `Chain::MAX_INPUTS` distinct inputs (the output's binding makes 8,
//! WebGPU's guaranteed storage buffers per stage) and `Chain::MAX_LINKS` links; a producer
//! that would not fit stays a chain of its own. Trees of one op are left as they are.
//!
//! Runs after the other fusions (it sees only the elementwise ops they left alone), before
//! the multi-tensor updates.

use std::collections::BTreeMap;

use super::rewrite::{readers, rebuild, returned};
use crate::graph::Graph;
use crate::ops::{Chain, ElementwiseFn, Link, OpKind, Operand};
use crate::tensor::{NodeId, TensorId};

/// One tree: its ops in creation order (the root, whose output is the chain's, last) and its
/// inputs, each tensor once, in the order the root's evaluation first reads them.
struct Tree {
    members: Vec<NodeId>,
    inputs: Vec<TensorId>,
}

/// `g` with its elementwise chains fused (a copy where there are none).
pub(super) fn chains(g: &Graph) -> Graph {
    let trees = trees(g);
    if trees.is_empty() {
        return g.clone();
    }
    // Member → the root of its tree.
    let root_of: BTreeMap<NodeId, NodeId> = trees
        .iter()
        .flat_map(|(&root, t)| t.members.iter().map(move |&m| (m, root)))
        .collect();
    rebuild(g, |out, id, map| {
        let &root = root_of.get(&id)?;
        if id != root {
            return Some(Vec::new());
        }
        let tree = &trees[&root];
        let chain = chain_of(g, tree);
        let inputs: Vec<TensorId> = tree.inputs.iter().map(|&t| map(t)).collect();
        let n = &g.dag[root];
        let new = out
            .add_node(OpKind::Chain(chain), &inputs, n.layer, n.phase)
            .expect("a chain takes its ops' types");
        Some(vec![(root, 0, TensorId::of(new, 0))])
    })
}

/// The trees of two or more ops, by root.
fn trees(g: &Graph) -> BTreeMap<NodeId, Tree> {
    let mut trees: BTreeMap<NodeId, Tree> = BTreeMap::new();
    for id in g.dag.node_indices() {
        let n = &g.dag[id];
        if ElementwiseFn::of(&n.op).is_none() {
            continue;
        }
        let mut tree = Tree {
            members: Vec::new(),
            inputs: Vec::new(),
        };
        for &t in &n.inputs {
            if !tree.inputs.contains(&t) {
                tree.inputs.push(t);
            }
        }
        for &t in &n.inputs {
            let producer = t.node();
            if !joins(g, t, id) {
                continue;
            }
            let Some(sub) = trees.get(&producer) else {
                continue;
            };
            // t's place in the inputs goes to the producer's inputs.
            let mut inputs = Vec::new();
            for &u in &tree.inputs {
                let with = if u == t {
                    &sub.inputs[..]
                } else {
                    std::slice::from_ref(&u)
                };
                for &v in with {
                    if !inputs.contains(&v) {
                        inputs.push(v);
                    }
                }
            }
            let links = tree.members.len() + sub.members.len() + 1;
            if inputs.len() <= Chain::MAX_INPUTS && links <= Chain::MAX_LINKS {
                let sub = trees.remove(&producer).expect("found above");
                tree.members.extend(sub.members);
                tree.inputs = inputs;
            }
        }
        tree.members.sort();
        tree.members.push(id);
        trees.insert(id, tree);
    }
    trees.retain(|_, t| t.members.len() > 1);
    trees
}

/// Whether `reader` may take in the op making `t`: both elementwise in one phase, the one
/// edge from `t` to `reader` the only read of it, and the step not returning it.
fn joins(g: &Graph, t: TensorId, reader: NodeId) -> bool {
    let producer = &g.dag[t.node()];
    let reads = readers(g, t.node());
    ElementwiseFn::of(&producer.op).is_some()
        && t.output == 0
        && reads.len() == 1
        && reads[0].0 == reader
        && producer.phase == g.dag[reader].phase
        && !returned(g, t)
}

/// The chain of a tree: a link per member, in creation order, reading the tree's inputs or
/// earlier links.
fn chain_of(g: &Graph, tree: &Tree) -> Chain {
    let links = tree
        .members
        .iter()
        .map(|&m| {
            let n = &g.dag[m];
            let args = n
                .inputs
                .iter()
                .map(|t| match tree.members.iter().position(|&p| p == t.node()) {
                    Some(j) => Operand::Link(j),
                    None => Operand::Input(
                        tree.inputs
                            .iter()
                            .position(|u| u == t)
                            .expect("a read from outside the tree is an input"),
                    ),
                })
                .collect();
            Link {
                f: ElementwiseFn::of(&n.op).expect("members are elementwise"),
                args,
            }
        })
        .collect();
    Chain { links }
}

#[cfg(test)]
mod tests {
    use super::super::test_graphs::{input, op};
    use super::*;
    use crate::graph::Phase;
    use crate::ops::{Binary, BinaryFn, Primitive, Unary, UnaryFn};

    fn unary(f: UnaryFn) -> OpKind {
        OpKind::Unary(Unary { f })
    }

    fn binary(f: BinaryFn) -> OpKind {
        OpKind::Binary(Binary { f })
    }

    fn chains_in(g: &Graph) -> Vec<(String, usize)> {
        g.dag
            .node_weights()
            .filter_map(|n| match &n.op {
                OpKind::Chain(c) => Some((c.attrs()[0].1.clone(), n.inputs.len())),
                _ => None,
            })
            .collect()
    }

    /// tanh(relu(x + b) * s): one chain; the relu's output read twice (by a mul and by the
    /// step) stops a chain there; nothing fuses across phases.
    #[test]
    fn single_reader_intermediates_become_one_chain() {
        let mut g = Graph::scratch("chains");
        let x = input(&mut g, "x", &[3, 5]);
        let b = input(&mut g, "b", &[5]);
        let s = input(&mut g, "s", &[3, 1]);
        let sum = op(&mut g, binary(BinaryFn::Add), &[x, b]);
        let act = op(&mut g, unary(UnaryFn::Relu), &[sum]);
        let scaled = op(&mut g, binary(BinaryFn::Mul), &[act, s]);
        let y = op(&mut g, unary(UnaryFn::Tanh), &[scaled]);
        g.output = y;
        g.features = x;
        g.labels = x;
        g.loss = y;
        let fused = chains(&g);
        fused.verify().unwrap();
        assert_eq!(
            chains_in(&fused),
            vec![("tanh(mul(relu(add(x0, x1)), x2))".to_string(), 3)]
        );
        assert_eq!(fused.dag.node_count(), 3 + 1);
        assert_eq!(fused.ty(fused.output), g.ty(y));

        // The relu's output also returned: the chain stops at it.
        let mut two = g.clone();
        two.output = act;
        let fused = chains(&two);
        assert_eq!(
            chains_in(&fused),
            vec![
                ("relu(add(x0, x1))".to_string(), 2),
                ("tanh(mul(x0, x1))".to_string(), 2)
            ]
        );

        // A backward op reading a forward one: separate chains.
        let mut phases = Graph::scratch("phases");
        let x = input(&mut phases, "x", &[4]);
        let a = op(&mut phases, unary(UnaryFn::Sigmoid), &[x]);
        let c = op(&mut phases, unary(UnaryFn::Relu), &[a]);
        let bw = phases
            .add_node(unary(UnaryFn::Tanh), &[c], 0, Phase::Backward)
            .unwrap();
        let silu = unary(UnaryFn::Silu);
        let d = phases
            .add_node(silu, &[TensorId::of(bw, 0)], 0, Phase::Backward)
            .unwrap();
        let d = TensorId::of(d, 0);
        phases.output = d;
        phases.features = x;
        phases.labels = x;
        phases.loss = d;
        let fused = chains(&phases);
        assert_eq!(
            chains_in(&fused),
            vec![
                ("relu(sigmoid(x0))".to_string(), 1),
                ("silu(tanh(x0))".to_string(), 1)
            ]
        );
    }

    /// A tree of eight inputs does not fit one kernel's bindings: the root takes what fits, input
    /// by input (here its second branch), and the branch that would not fit stays a chain of
    /// its own.
    #[test]
    fn a_chain_stops_at_eight_bindings() {
        let mut g = Graph::scratch("wide");
        let xs: Vec<TensorId> = (0..8)
            .map(|k| input(&mut g, &format!("x{k}"), &[6]))
            .collect();
        let mut acc = op(&mut g, unary(UnaryFn::Relu), &[xs[0]]);
        for &x in &xs[1..7] {
            acc = op(&mut g, binary(BinaryFn::Add), &[acc, x]);
        }
        let last = op(&mut g, unary(UnaryFn::Sigmoid), &[xs[7]]);
        let last = op(&mut g, unary(UnaryFn::Tanh), &[last]);
        let y = op(&mut g, binary(BinaryFn::Mul), &[acc, last]);
        g.output = y;
        g.features = xs[0];
        g.labels = xs[0];
        g.loss = y;
        let fused = chains(&g);
        fused.verify().unwrap();
        let found = chains_in(&fused);
        let sum = "add(add(add(add(add(add(relu(x0), x1), x2), x3), x4), x5), x6)";
        assert_eq!(
            found,
            vec![
                (sum.to_string(), 7),
                ("mul(x0, tanh(sigmoid(x1)))".to_string(), 2)
            ]
        );
    }
}
