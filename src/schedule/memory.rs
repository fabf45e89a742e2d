//! Memory planning: every tensor gets a slot before step 1. Parameters, buffers and optimizer
//! state live in `State`, final gradients in `Grads`, fed batches in `Inputs`; everything else
//! shares one arena, packed by lifetime (greedy by size, as TFLite's arena planner) so memory
//! is reused once a tensor is dead, and an elementwise op writes over its input in place when
//! that input dies there.

use std::cell::RefCell;
use std::collections::BTreeMap;

use serde::Serialize;

use super::recompute::is_leaf;
use crate::graph::Graph;
use crate::ops::OpKind;
use crate::tensor::{NodeId, TensorId};

/// Offsets are aligned to 256 bytes (wgpu's storage offset alignment), in 4-byte elements.
pub const ALIGN: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Region {
    State,
    Grads,
    Inputs,
    Arena,
}

/// Where a tensor lives: `len` elements from `offset` in `region`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Slot {
    pub region: Region,
    pub offset: usize,
    pub len: usize,
}

impl Slot {
    pub fn overlaps(&self, other: &Slot) -> bool {
        self.region == other.region
            && self.offset < other.offset + other.len
            && other.offset < self.offset + self.len
    }
}

pub struct Layout {
    pub slots: BTreeMap<TensorId, Slot>,
    /// Elements per region.
    pub sizes: BTreeMap<Region, usize>,
    /// Each parameter's slot in `State`, by index.
    pub params: Vec<Slot>,
    /// Launches whose output 0 overwrites an input in place.
    pub in_place: usize,
    /// Each launch's GPU workspace (`kernel::gpu::Bind::Scratch`), where it asks for one: an
    /// arena slot alive during that launch only.
    pub workspaces: BTreeMap<NodeId, Slot>,
}

fn align(n: usize) -> usize {
    n.div_ceil(ALIGN) * ALIGN
}

/// A stretch of arena memory: one tensor, or a chain of in-place writes over it.
struct Block {
    len: usize,
    first: usize,
    last: usize,
    offset: usize,
}

/// Words of GPU workspace each launch asks for (`OpKind::gpu_workspace`), remembered per op
/// and input types: a checkpointing search plans many candidates of one graph, and asking
/// means planning the op's kernels.
#[derive(Default)]
pub struct Workspaces(RefCell<BTreeMap<String, usize>>);

impl Workspaces {
    fn of(&self, g: &Graph, id: NodeId) -> usize {
        let n = &g.dag[id];
        let in_types: Vec<_> = n.inputs.iter().map(|&t| g.ty(t)).collect();
        let key = format!("{:?} {in_types:?}", n.op);
        if let Some(&words) = self.0.borrow().get(&key) {
            return words;
        }
        let words = n.op.gpu_workspace(&in_types, &n.outputs);
        self.0.borrow_mut().insert(key, words);
        words
    }
}

/// Slots for every tensor of `g` run in `order`, arena tensors packed by `last_reads`
/// (`liveness`).
pub fn plan(
    g: &Graph,
    order: &[NodeId],
    last_reads: &BTreeMap<TensorId, usize>,
    in_place: bool,
    workspaces: &Workspaces,
) -> Layout {
    let mut slots = BTreeMap::new();
    let mut sizes: BTreeMap<Region, usize> = BTreeMap::new();
    let place = |sizes: &mut BTreeMap<Region, usize>, region, len| {
        let at = sizes.entry(region).or_insert(0);
        let slot = Slot {
            region,
            offset: *at,
            len,
        };
        *at += align(len);
        slot
    };
    let params: Vec<Slot> = g
        .params
        .iter()
        .map(|p| place(&mut sizes, Region::State, p.ty.numel()))
        .collect();
    for p in &g.params {
        if let Some(n) = p.node {
            let OpKind::Parameter(op) = &g.dag[n].op else {
                unreachable!("a parameter's node reads it")
            };
            slots.insert(TensorId::of(n, 0), params[op.index]);
        }
    }
    for id in g.dag.node_indices() {
        if let OpKind::Input(_) = g.dag[id].op {
            let t = TensorId::of(id, 0);
            slots.insert(t, place(&mut sizes, Region::Inputs, g.ty(t).numel()));
        }
    }
    for &(_, t) in &g.grads {
        slots.insert(t, place(&mut sizes, Region::Grads, g.ty(t).numel()));
    }
    for &(i, t) in &g.updates {
        slots.insert(t, params[i]);
    }

    let mut blocks: Vec<Block> = Vec::new();
    let mut block_of: BTreeMap<TensorId, usize> = BTreeMap::new();
    let mut in_place_count = 0;
    let mut workspace_of: BTreeMap<NodeId, (usize, usize)> = BTreeMap::new();
    for (i, &id) in order.iter().enumerate() {
        let n = &g.dag[id];
        let words = workspaces.of(g, id);
        if words > 0 {
            blocks.push(Block {
                len: align(words),
                first: i,
                last: i,
                offset: 0,
            });
            workspace_of.insert(id, (blocks.len() - 1, words));
        }
        for (k, ty) in n.outputs.iter().enumerate() {
            let t = TensorId::of(id, k);
            if slots.contains_key(&t) {
                continue;
            }
            let t_last = last_reads.get(&t).copied().unwrap_or(i);
            let reuse = (k == 0 && in_place)
                .then(|| n.op.primitive().inplace())
                .flatten()
                .map(|j| n.inputs[j])
                .filter(|u| {
                    block_of.contains_key(u)
                        && last_reads.get(u) == Some(&i)
                        && g.ty(*u).numel() == ty.numel()
                        && !is_leaf(g, *u)
                });
            match reuse {
                Some(u) => {
                    let b = block_of[&u];
                    blocks[b].last = blocks[b].last.max(t_last);
                    block_of.insert(t, b);
                    in_place_count += 1;
                }
                None => {
                    blocks.push(Block {
                        len: align(ty.numel()),
                        first: i,
                        last: t_last,
                        offset: 0,
                    });
                    block_of.insert(t, blocks.len() - 1);
                }
            }
        }
    }
    let arena = pack(&mut blocks);
    sizes.insert(Region::Arena, arena);
    for (t, b) in block_of {
        slots.insert(
            t,
            Slot {
                region: Region::Arena,
                offset: blocks[b].offset,
                len: g.ty(t).numel(),
            },
        );
    }
    let workspaces = workspace_of
        .into_iter()
        .map(|(id, (b, len))| {
            let slot = Slot {
                region: Region::Arena,
                offset: blocks[b].offset,
                len,
            };
            (id, slot)
        })
        .collect();
    Layout {
        slots,
        sizes,
        params,
        in_place: in_place_count,
        workspaces,
    }
}

/// Greedy by size: the largest blocks first, each at the lowest offset free for its lifetime.
/// Returns the arena's size.
fn pack(blocks: &mut [Block]) -> usize {
    let mut by_size: Vec<usize> = (0..blocks.len()).collect();
    by_size.sort_by_key(|&b| (std::cmp::Reverse(blocks[b].len), blocks[b].first, b));
    let mut placed: Vec<usize> = Vec::new();
    let mut size = 0;
    for b in by_size {
        let (first, last, len) = (blocks[b].first, blocks[b].last, blocks[b].len);
        let mut busy: Vec<(usize, usize)> = placed
            .iter()
            .filter(|&&p| blocks[p].first <= last && first <= blocks[p].last)
            .map(|&p| (blocks[p].offset, blocks[p].offset + blocks[p].len))
            .collect();
        busy.sort();
        let mut offset = 0;
        for (start, stop) in busy {
            if start >= offset + len {
                break;
            }
            offset = offset.max(stop);
        }
        blocks[b].offset = offset;
        size = size.max(offset + len);
        placed.push(b);
    }
    size
}
