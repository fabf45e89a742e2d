//! `Plan`: what the passes decide, as the backends and `trainer plan` read it: the launches in
//! order over planned slots, and the figures (`Stats`) of one step.

use std::collections::BTreeMap;

use serde::Serialize;

use super::memory::{Layout, Region, Slot};
use crate::config::sections::Checkpointing;
use crate::config::values::human;
use crate::graph::{Graph, Phase};
use crate::tensor::{NodeId, TensorId};

/// One kernel launch: a node and where its inputs and outputs live.
#[derive(Clone, Debug)]
pub struct Launch {
    pub node: NodeId,
    pub inputs: Vec<Slot>,
    pub outputs: Vec<Slot>,
    /// The GPU kernels' workspace (`Bind::Scratch`), alive during this launch only.
    pub workspace: Option<Slot>,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Flops {
    pub forward: u64,
    pub backward: u64,
    pub recompute: u64,
    pub update: u64,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Bytes {
    /// Trainable parameters.
    pub params: u64,
    /// Persistent untrained state (batchnorm running statistics).
    pub buffers: u64,
    pub grads: u64,
    pub optimizer: u64,
    /// The fed batch (features and labels).
    pub inputs: u64,
    /// The arena: every activation and backward intermediate, packed by lifetime, and the
    /// kernels' workspace.
    pub activations_peak: u64,
    /// The largest workspace one launch takes (split-K partial sums), inside the arena.
    pub workspace: u64,
    pub total_peak: u64,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Stats {
    pub batch: usize,
    pub checkpointing: String,
    pub launches: usize,
    /// Launches the step would take without fusion (equal to `launches` when it is off).
    pub launches_unfused: usize,
    /// GPU kernel dispatches per step (an op may take several), and without fusion.
    pub dispatches: usize,
    pub dispatches_unfused: usize,
    pub in_place: usize,
    pub recomputed_ops: usize,
    pub flops: Flops,
    pub bytes: Bytes,
}

pub struct Plan {
    /// The graph the launches index (after checkpointing added its clones).
    pub graph: Graph,
    pub launches: Vec<Launch>,
    /// Elements per region.
    pub sizes: BTreeMap<Region, usize>,
    /// Each parameter's slot in `State`.
    pub params: Vec<Slot>,
    pub slots: BTreeMap<TensorId, Slot>,
    pub stats: Stats,
}

impl Plan {
    /// The plan of `graph` run in `order` over `layout`: each launch's slots, and the figures.
    pub(super) fn new(
        graph: Graph,
        order: &[NodeId],
        layout: Layout,
        policy: &Checkpointing,
        unfused: usize,
    ) -> Plan {
        let launches: Vec<Launch> = order
            .iter()
            .map(|&id| {
                let n = &graph.dag[id];
                Launch {
                    node: id,
                    inputs: n.inputs.iter().map(|t| layout.slots[t]).collect(),
                    outputs: graph.outputs(id).iter().map(|t| layout.slots[t]).collect(),
                    workspace: layout.workspaces.get(&id).copied(),
                }
            })
            .collect();
        let mut stats = stats(&graph, &launches, &layout, policy);
        // Every node is a launch: fusion took away the difference.
        stats.launches_unfused = launches.len() + unfused.saturating_sub(graph.dag.node_count());
        Plan {
            graph,
            launches,
            sizes: layout.sizes,
            params: layout.params,
            slots: layout.slots,
            stats,
        }
    }

    /// Arena bytes in use at each launch: every slot holding a tensor that was written and is
    /// still to be read (an in-place chain counts once), and the launch's workspace. Its maximum is the activation peak
    /// when the arena packs without gaps.
    pub fn live_bytes(&self) -> Vec<u64> {
        let n = self.launches.len();
        let mut span: BTreeMap<TensorId, (usize, usize)> = BTreeMap::new();
        for (i, l) in self.launches.iter().enumerate() {
            for (k, s) in l.outputs.iter().enumerate() {
                if s.region == Region::Arena {
                    span.insert(TensorId::of(l.node, k), (i, i));
                }
            }
            for t in &self.graph.dag[l.node].inputs {
                if let Some(sp) = span.get_mut(t) {
                    sp.1 = i;
                }
            }
        }
        for t in [self.graph.loss, self.graph.output] {
            if let Some(sp) = span.get_mut(&t) {
                sp.1 = n.saturating_sub(1);
            }
        }
        // Per slot, the union of its tensors' spans: an in-place write continues its input.
        let mut by_slot: BTreeMap<(usize, usize), Vec<(usize, usize)>> = BTreeMap::new();
        for (t, sp) in span {
            let s = self.slots[&t];
            by_slot.entry((s.offset, s.len)).or_default().push(sp);
        }
        let mut delta = vec![0i64; n + 1];
        for ((_, len), mut spans) in by_slot {
            spans.sort();
            let mut merged: Vec<(usize, usize)> = Vec::new();
            for (a, b) in spans {
                match merged.last_mut() {
                    Some(m) if a <= m.1 => m.1 = m.1.max(b),
                    _ => merged.push((a, b)),
                }
            }
            for (a, b) in merged {
                delta[a] += len as i64 * 4;
                delta[b + 1] -= len as i64 * 4;
            }
        }
        for (i, l) in self.launches.iter().enumerate() {
            if let Some(w) = l.workspace {
                delta[i] += w.len as i64 * 4;
                delta[i + 1] -= w.len as i64 * 4;
            }
        }
        let mut live = 0i64;
        delta[..n]
            .iter()
            .map(|d| {
                live += d;
                live as u64
            })
            .collect()
    }

    /// How many launches run at the activation peak: fewer means the peak is closer to
    /// falling (a search tie-break).
    pub(super) fn launches_at_peak(&self) -> usize {
        let live = self.live_bytes();
        let max = live.iter().copied().max().unwrap_or(0);
        live.iter().filter(|&&b| b == max).count()
    }
}

fn stats(g: &Graph, launches: &[Launch], layout: &Layout, policy: &Checkpointing) -> Stats {
    let mut flops = Flops::default();
    let mut recomputed_ops = 0;
    for l in launches {
        let f = g.flops(l.node);
        match g.dag[l.node].phase {
            Phase::Forward => flops.forward += f,
            Phase::Backward => flops.backward += f,
            Phase::Recompute => {
                flops.recompute += f;
                recomputed_ops += 1;
            }
            Phase::Update => flops.update += f,
        }
    }
    let mut bytes = Bytes::default();
    for (p, slot) in g.params.iter().zip(&layout.params) {
        let b = slot.len as u64 * 4;
        match (p.trainable, p.optimizer_of) {
            (_, Some(_)) => bytes.optimizer += b,
            (true, None) => bytes.params += b,
            (false, None) => bytes.buffers += b,
        }
    }
    let region = |r| layout.sizes.get(&r).copied().unwrap_or(0) as u64 * 4;
    bytes.grads = region(Region::Grads);
    bytes.inputs = region(Region::Inputs);
    bytes.activations_peak = region(Region::Arena);
    bytes.workspace = launches
        .iter()
        .filter_map(|l| l.workspace)
        .map(|w| w.len as u64 * 4)
        .max()
        .unwrap_or(0);
    bytes.total_peak = region(Region::State) + bytes.grads + bytes.inputs + bytes.activations_peak;
    Stats {
        batch: g.batch,
        checkpointing: match policy {
            Checkpointing::None => "none".into(),
            Checkpointing::Blocks => "blocks".into(),
            Checkpointing::Sqrt => "sqrt".into(),
            Checkpointing::MemoryBudget(b) => format!("memory_budget {}", human(b.0)),
        },
        launches: launches.len(),
        launches_unfused: launches.len(),
        // Set by `schedule::plan` for the plan it returns.
        dispatches: 0,
        dispatches_unfused: 0,
        in_place: layout.in_place,
        recomputed_ops,
        flops,
        bytes,
    }
}
