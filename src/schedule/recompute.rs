//! Checkpointing (rematerialisation): which forward activations the backward pass keeps, and
//! clones of forward ops (phase `Recompute`) that bring the others back just before their
//! first backward use. Every kernel is deterministic, so a clone reproduces its original bit
//! for bit: gradients do not depend on the policy. This is the mechanism and the fixed
//! policies' drop sets (`blocks`, a `sqrt` segmentation, "save dots"); `search` chooses
//! among them.
//!
//! `saved` lists the forward activations the backward pass reads. A policy's [`Remat`] says
//! which of them to drop and, since *when* a clone lives matters as much as *whether* it is
//! kept, how long each clone lives. [`rematerialize`] clones the producers of dropped
//! activations as `Phase::Recompute` nodes inserted just before the backward op that first
//! needs them, so creation order stays a valid and memory-friendly order. A clone restarts
//! only from leaves and the activations the policy kept: a forward tensor no backward op reads
//! (a batchnorm output that relu overwrote in place) is gone after the forward pass, so it is
//! recomputed too. A clone is shared by every later backward reader, except
//! - `per_use` ops, rebuilt for each backward op that needs them (a conv output needed first to
//!   rebuild the next conv's input and much later by its batchnorm's gradient would otherwise
//!   live across the whole block's backward);
//! - with `cheap_chains_per_use`, memory-bound clones made only to rebuild another clone (a
//!   residual stream rebuilt from a kept block output), which die with that backward op.
//!
//! A clone's inputs are rebuilt longest chain first (Sethi–Ullman), so a short chain's result
//! is not held while a long one is built.

use std::collections::{BTreeMap, BTreeSet};

use crate::graph::{Graph, Phase};

use crate::ops::{Cost, OpKind};
use crate::tensor::{NodeId, TensorId};

/// True for parameters and inputs: they live for the whole step anyway.
pub fn is_leaf(g: &Graph, t: TensorId) -> bool {
    matches!(g.dag[t.node()].op, OpKind::Parameter(_) | OpKind::Input(_))
}

/// Forward activations the backward pass reads, split into those a policy may drop and those
/// it must keep (read by the updates, or the loss and logits the step returns).
pub struct Saved {
    pub droppable: Vec<TensorId>,
    pub pinned: BTreeSet<TensorId>,
}

pub fn saved(g: &Graph) -> Saved {
    let mut pinned: BTreeSet<TensorId> = [g.loss, g.output].into_iter().collect();
    pinned.extend(forward_reads_by(g, |p| p == Phase::Update));
    let droppable = backward_reads(g)
        .into_iter()
        .filter(|t| !pinned.contains(t))
        .collect();
    Saved { droppable, pinned }
}

/// Forward activations (not leaves) that a backward or recompute op reads.
fn backward_reads(g: &Graph) -> BTreeSet<TensorId> {
    forward_reads_by(g, |p| matches!(p, Phase::Backward | Phase::Recompute))
}

/// Forward activations (not leaves) read by an op whose phase passes `reader`, plus the ones
/// the step returns.
fn forward_reads_by(g: &Graph, reader: impl Fn(Phase) -> bool) -> BTreeSet<TensorId> {
    let mut out = BTreeSet::new();
    for id in g.dag.node_indices() {
        let n = &g.dag[id];
        if !reader(n.phase) {
            continue;
        }
        for &t in &n.inputs {
            if g.dag[t.node()].phase == Phase::Forward && !is_leaf(g, t) {
                out.insert(t);
            }
        }
    }
    out
}

/// The forward activations (not leaves) still there when the backward pass starts under
/// `drop`: those a backward op reads, less the dropped ones.
pub fn kept(g: &Graph, drop: &BTreeSet<TensorId>) -> BTreeSet<TensorId> {
    backward_reads(g)
        .into_iter()
        .filter(|t| !drop.contains(t))
        .collect()
}

/// What a checkpointing policy decides: which saved activations the backward pass drops, and
/// which forward ops are recomputed afresh for each backward op that needs them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Remat {
    /// Saved activations not kept from the forward pass: recomputed before their first use.
    pub drop: BTreeSet<TensorId>,
    /// Forward ops whose clone is not shared across backward ops: each backward op that needs
    /// one (directly or through other clones) gets its own, which dies with that use. Costs
    /// FLOPs, saves memory where one clone would live across a long stretch of backward (a
    /// conv output needed first to recompute the next conv, then much later by its batchnorm's
    /// gradient).
    pub per_use: BTreeSet<NodeId>,
    /// A memory-bound op's clone made only to rebuild another clone lives only within the
    /// current backward op (a residual stream rebuilt from a kept block output would otherwise
    /// stay alive from its first use to its last); later readers rebuild it.
    pub cheap_chains_per_use: bool,
}

impl Remat {
    pub fn dropping(drop: BTreeSet<TensorId>) -> Remat {
        Remat {
            drop,
            ..Remat::default()
        }
    }
}

/// A copy of `g` where every backward read of a forward activation in `remat.drop` reads a
/// clone instead. Clones are inserted just before the backward op that first needs them, so
/// creation order stays a topological order and the order pass runs each clone as late as
/// possible. A clone is shared by every later reader, except clones of `remat.per_use` ops,
/// which are shared only within the backward op they were made for.
pub fn rematerialize(g: &Graph, remat: &Remat) -> Graph {
    let drop = &remat.drop;
    if drop.is_empty() {
        return g.clone();
    }
    let mut out = g.clone();
    out.dag.clear();
    let mut map: Vec<Option<NodeId>> = vec![None; g.dag.node_count()];
    let mut clones: BTreeMap<NodeId, NodeId> = BTreeMap::new();
    // What the forward pass leaves behind: leaves, and the saved activations not dropped. A
    // forward tensor no backward op reads (a batchnorm output that relu overwrote in place)
    // is gone by then, so a clone that needs it recomputes it too.
    let kept = kept(g, drop);
    let keep = |t: TensorId| is_leaf(g, t) || kept.contains(&t);
    for id in g.dag.node_indices() {
        let n = &g.dag[id];
        let mut memo = Memo {
            g,
            remat,
            shared: &mut clones,
            local: BTreeMap::new(),
        };
        let inputs: Vec<TensorId> = n
            .inputs
            .iter()
            .map(|&t| {
                let from_forward = g.dag[t.node()].phase == Phase::Forward;
                if n.phase != Phase::Forward && from_forward && !keep(t) {
                    let c = clone(g, &mut out, &map, &mut memo, t.node(), false, &keep);
                    TensorId::of(c, t.output as usize)
                } else {
                    remap(&map, t)
                }
            })
            .collect();
        let new = out
            .add_node(n.op.clone(), &inputs, n.layer, n.phase)
            .expect("a copied node keeps its types");
        map[id.index()] = Some(new);
    }
    out.features = remap(&map, g.features);
    out.labels = remap(&map, g.labels);
    out.output = remap(&map, g.output);
    out.loss = remap(&map, g.loss);
    for (_, t) in out.grads.iter_mut().chain(out.updates.iter_mut()) {
        *t = remap(&map, *t);
    }
    for p in &mut out.params {
        p.node = p.node.map(|n| map[n.index()].expect("mapped"));
    }
    out
}

fn remap(map: &[Option<NodeId>], t: TensorId) -> TensorId {
    TensorId::of(
        map[t.node as usize].expect("inputs come first"),
        t.output as usize,
    )
}

/// The clones made so far: shared by every later backward op, or only within the current one
/// (`Remat::per_use` ops, and with `cheap_chains_per_use` memory-bound clones made to rebuild
/// other clones).
struct Memo<'a> {
    g: &'a Graph,
    remat: &'a Remat,
    shared: &'a mut BTreeMap<NodeId, NodeId>,
    local: BTreeMap<NodeId, NodeId>,
}

impl Memo<'_> {
    fn is_local(&self, node: NodeId, chain: bool) -> bool {
        self.remat.per_use.contains(&node)
            || (self.remat.cheap_chains_per_use
                && chain
                && self.g.dag[node].op.primitive().cost() == Cost::Cheap)
    }
    fn get(&self, node: NodeId, chain: bool) -> Option<NodeId> {
        match self.is_local(node, chain) {
            true => self.local.get(&node).copied(),
            false => self.shared.get(&node).copied(),
        }
    }
    fn insert(&mut self, node: NodeId, chain: bool, clone: NodeId) {
        match self.is_local(node, chain) {
            true => self.local.insert(node, clone),
            false => self.shared.insert(node, clone),
        };
    }
}

fn clone(
    g: &Graph,
    out: &mut Graph,
    map: &[Option<NodeId>],
    clones: &mut Memo<'_>,
    node: NodeId,
    chain: bool,
    keep: &impl Fn(TensorId) -> bool,
) -> NodeId {
    if let Some(c) = clones.get(node, chain) {
        return c;
    }
    let n = &g.dag[node];
    // Rebuild the longest chain first (Sethi–Ullman): its intermediates die along the way,
    // while a short one built first would stay alive through it.
    let mut todo: Vec<usize> = (0..n.inputs.len())
        .filter(|&k| !keep(n.inputs[k]))
        .collect();
    todo.sort_by_key(|&k| std::cmp::Reverse(chain_len(g, n.inputs[k].node(), keep)));
    let mut made: BTreeMap<usize, NodeId> = BTreeMap::new();
    for k in todo {
        made.insert(
            k,
            clone(g, out, map, clones, n.inputs[k].node(), true, keep),
        );
    }
    let inputs: Vec<TensorId> = n
        .inputs
        .iter()
        .enumerate()
        .map(|(k, &t)| match made.get(&k) {
            Some(&c) => TensorId::of(c, t.output as usize),
            None => remap(map, t),
        })
        .collect();
    let c = out
        .add_node(n.op.clone(), &inputs, n.layer, Phase::Recompute)
        .expect("a clone keeps its types");
    clones.insert(node, chain, c);
    c
}

/// How many ops rebuilding `node` recomputes, back to what the forward pass kept.
fn chain_len(g: &Graph, node: NodeId, keep: &impl Fn(TensorId) -> bool) -> usize {
    let mut seen = BTreeSet::new();
    let mut stack = vec![node];
    while let Some(id) = stack.pop() {
        if seen.insert(id) {
            stack.extend(
                g.dag[id]
                    .inputs
                    .iter()
                    .filter(|&&t| !keep(t))
                    .map(|t| t.node()),
            );
        }
    }
    seen.len()
}

/// `blocks`: keep what crosses a block instance's boundary; recompute inside each block.
pub fn blocks(g: &Graph, saved: &Saved) -> BTreeSet<TensorId> {
    let segment = |id: NodeId| {
        let layer = &g.layers[g.dag[id].layer];
        layer.block.clone().unwrap_or_else(|| layer.name.clone())
    };
    let mut boundary = BTreeSet::new();
    for id in g.dag.node_indices() {
        let n = &g.dag[id];
        if n.phase != Phase::Forward {
            continue;
        }
        for &t in &n.inputs {
            if segment(t.node()) != segment(id) {
                boundary.insert(t);
            }
        }
    }
    saved
        .droppable
        .iter()
        .filter(|t| !boundary.contains(t))
        .copied()
        .collect()
}

/// The drop set of a segmentation: keep the `kept` cuts and everything after the last one
/// (the backward pass needs the last segment at once); recompute the rest.
pub fn segmented(saved: &Saved, kept: &BTreeSet<TensorId>) -> BTreeSet<TensorId> {
    let Some(last) = kept.iter().map(|t| t.node()).max() else {
        return BTreeSet::new();
    };
    saved
        .droppable
        .iter()
        .filter(|t| !kept.contains(t) && t.node() < last)
        .copied()
        .collect()
}

/// "Save dots": the droppable activations of memory-bound ops (batchnorm, activations,
/// adds); convolution and matmul outputs are kept.
pub fn cheap(g: &Graph, saved: &Saved) -> BTreeSet<TensorId> {
    saved
        .droppable
        .iter()
        .filter(|t| g.dag[t.node()].op.primitive().cost() != Cost::Compute)
        .copied()
        .collect()
}
