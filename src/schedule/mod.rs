//! Planning: everything about a step decided before step 1. `plan` runs recompute
//! (checkpointing) → order → memory and returns a `Plan`: a flat list of launches over
//! planned slots, and the figures `trainer plan` prints. Allocates no device memory.

pub mod memory;
pub mod recompute;
pub mod report;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

use serde::Serialize;

pub use memory::{Region, Slot};
pub use recompute::Remat;

use crate::config::sections::Checkpointing;
use crate::diag::Diagnostic;
use crate::graph::{Graph, NodeId, Phase, TensorId};
use crate::ops::OpKind;

/// One kernel launch: a node and where its inputs and outputs live.
#[derive(Clone, Debug)]
pub struct Launch {
    pub node: NodeId,
    pub inputs: Vec<Slot>,
    pub outputs: Vec<Slot>,
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
    /// The arena: every activation and backward intermediate, packed by lifetime.
    pub activations_peak: u64,
    pub total_peak: u64,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Stats {
    pub batch: usize,
    pub checkpointing: String,
    pub launches: usize,
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
    /// Arena bytes in use at each launch: every slot holding a tensor that was written and is
    /// still to be read (an in-place chain counts once). Its maximum is the activation peak
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
    fn launches_at_peak(&self) -> usize {
        let live = self.live_bytes();
        let max = live.iter().copied().max().unwrap_or(0);
        live.iter().filter(|&&b| b == max).count()
    }
}

/// Switches for the passes, so a test can show each changes no bits.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    pub in_place: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options { in_place: true }
    }
}

/// Plans a training graph (or any graph) under a checkpointing policy.
pub fn plan(g: &Graph, policy: &Checkpointing, options: Options) -> Result<Plan, Diagnostic> {
    let saved = recompute::saved(g);
    let drop: BTreeSet<TensorId> = match policy {
        Checkpointing::None => BTreeSet::new(),
        Checkpointing::Blocks => recompute::blocks(g, &saved),
        Checkpointing::Sqrt => {
            let best = sqrt_plans(g, &saved, policy, options)
                .into_iter()
                .min_by_key(|p| (p.stats.bytes.activations_peak, p.stats.flops.recompute))
                .expect("at least one segment count");
            return Ok(best);
        }
        Checkpointing::MemoryBudget(budget) => {
            return fit_budget(g, &saved, budget.0, policy, options);
        }
    };
    Ok(build(g, &Remat::dropping(drop), policy, options))
}

/// The least recomputation whose activation peak fits `budget` bytes. Starting points: the
/// shortest prefix of `budget_order` that fits (binary search), once over every droppable
/// activation and once keeping the articulation cuts (dropping a cut makes later
/// recomputations restart further back); "save dots" (drop every memory-bound activation,
/// keep convolution and matmul outputs); and the `sqrt` segmentations. Each is then refined
/// by local search: drop or keep one activation, or recompute one op per use, while the plan
/// improves: first its peak until it fits, then its recomputation while it still fits.
fn fit_budget(
    g: &Graph,
    saved: &recompute::Saved,
    budget: u64,
    policy: &Checkpointing,
    options: Options,
) -> Result<Plan, Diagnostic> {
    let fits = |p: &Plan| p.stats.bytes.activations_peak <= budget;
    let none = build(g, &Remat::default(), policy, options);
    if fits(&none) {
        return Ok(none);
    }
    let all = recompute::budget_order(g, saved);
    let cuts = recompute::cuts(g);
    let inner: Vec<TensorId> = all.iter().filter(|t| !cuts.contains(t)).copied().collect();
    let all_dropped: BTreeSet<TensorId> = saved.droppable.iter().copied().collect();
    let ops = recompute::recomputable(g, &all_dropped);
    let lowest = |p: &Plan| {
        (
            p.stats.bytes.activations_peak,
            p.launches_at_peak() as u64,
            p.stats.flops.recompute,
        )
    };
    // A drop set, with the ops recomputed per use that lower its peak most.
    let shaped = |drop: BTreeSet<TensorId>, cheap_chains_per_use: bool| {
        let remat = Remat {
            drop,
            per_use: BTreeSet::new(),
            cheap_chains_per_use,
        };
        let first = build(g, &remat, policy, options);
        improve(g, remat, first, &[], &ops, lowest, policy, options)
    };
    let mut starts: Vec<Remat> = Vec::new();
    for (order, cheap_chains_per_use) in
        [(&all, false), (&inner, false), (&all, true), (&inner, true)]
    {
        let prefix = |n: usize| shaped(order[..n].iter().copied().collect(), cheap_chains_per_use);
        let full = prefix(order.len());
        if !fits(&full.1) {
            starts.push(full.0);
            continue;
        }
        let (mut lo, mut hi, mut best) = (0, order.len(), full.0);
        while hi - lo > 1 {
            let mid = (lo + hi) / 2;
            let (remat, p) = prefix(mid);
            match fits(&p) {
                true => (hi, best) = (mid, remat),
                false => lo = mid,
            }
        }
        starts.push(best);
    }
    for cheap_chains_per_use in [false, true] {
        starts.push(Remat {
            cheap_chains_per_use,
            ..Remat::dropping(recompute::cheap(g, saved))
        });
    }
    let key = |p: &Plan| match fits(p) {
        true => (
            false,
            p.stats.flops.recompute,
            p.stats.bytes.activations_peak,
            0,
        ),
        false => (
            true,
            p.stats.bytes.activations_peak,
            p.launches_at_peak() as u64,
            p.stats.flops.recompute,
        ),
    };
    let droppable = &saved.droppable;
    let all_dropped: BTreeSet<TensorId> = droppable.iter().copied().collect();
    let ops = recompute::recomputable(g, &all_dropped);
    let mut candidates = sqrt_plans(g, saved, policy, options);
    for start in starts {
        let first = build(g, &start, policy, options);
        candidates.push(improve(g, start, first, droppable, &ops, key, policy, options).1);
    }
    let least = candidates
        .iter()
        .map(|p| p.stats.bytes.activations_peak)
        .min()
        .unwrap_or(none.stats.bytes.activations_peak);
    candidates
        .into_iter()
        .filter(fits)
        .min_by_key(|p| (p.stats.flops.recompute, p.stats.bytes.activations_peak))
        .ok_or_else(|| {
            Diagnostic::new(format!(
                "no checkpointing fits the memory budget of {}: the least activation peak any recomputation reaches is {} ({} without checkpointing)",
                human(budget),
                human(least),
                human(none.stats.bytes.activations_peak),
            ))
            .note("what remains is the working set of the largest layers (inputs, outputs and gradients at once); raise the budget or lower data.batch_size")
        })
}

fn toggle<T: Ord>(set: &mut BTreeSet<T>, x: T) {
    if !set.remove(&x) {
        set.insert(x);
    }
}

/// Local search from `remat`: toggle one activation between kept and dropped, or one op
/// between recomputed once and per use, in a fixed order, pass after pass, keeping each
/// toggle that lowers `key`. Each plan takes a millisecond or two.
#[allow(clippy::too_many_arguments)]
fn improve<K: Ord>(
    g: &Graph,
    mut remat: Remat,
    mut best: Plan,
    droppable: &[TensorId],
    ops: &[NodeId],
    key: impl Fn(&Plan) -> K,
    policy: &Checkpointing,
    options: Options,
) -> (Remat, Plan) {
    loop {
        let mut improved = false;
        for i in 0..droppable.len() + ops.len() {
            let mut trial = remat.clone();
            match droppable.get(i) {
                Some(t) => toggle(&mut trial.drop, *t),
                None => toggle(&mut trial.per_use, ops[i - droppable.len()]),
            }
            let p = build(g, &trial, policy, options);
            if key(&p) < key(&best) {
                (remat, best, improved) = (trial, p, true);
            }
        }
        if !improved {
            return (remat, best);
        }
    }
}

/// `sqrt` segmentations. Chen et al.'s even split into about sqrt(n) segments, for every
/// count between sqrt(n)/2 and 2 sqrt(n) (articulation points fall unevenly), and then the best
/// of those refined by local search: toggle one cut at a time while the real planner's peak
/// (then recompute) improves. Equal bytes per segment is only a proxy: in a ResNet the early,
/// wide stages dominate, and the planner's figure is what counts. Each plan takes about a
/// millisecond, so the search costs little next to a training step.
fn sqrt_plans(
    g: &Graph,
    saved: &recompute::Saved,
    policy: &Checkpointing,
    options: Options,
) -> Vec<Plan> {
    let cuts = recompute::saved_cuts(g, saved);
    let root = (recompute::forward_launches(g) as f64).sqrt();
    let (lo, hi) = (
        (root / 2.0).floor().max(1.0) as usize,
        (2.0 * root).ceil() as usize,
    );
    let score = |p: &Plan| (p.stats.bytes.activations_peak, p.stats.flops.recompute);
    let attempt = |kept: &BTreeSet<TensorId>| {
        build(
            g,
            &Remat::dropping(recompute::segmented(saved, kept)),
            policy,
            options,
        )
    };
    let mut plans: Vec<(BTreeSet<TensorId>, Plan)> = (lo..=hi)
        .map(|k| {
            let kept = recompute::even_segments(g, &cuts, k);
            let p = attempt(&kept);
            (kept, p)
        })
        .collect();
    let Some(start) = plans
        .iter()
        .min_by_key(|(_, p)| score(p))
        .map(|(k, _)| k.clone())
    else {
        return Vec::new();
    };
    // Local search, within Chen's bound of one extra forward pass: toggle one kept cut, or
    // one op between recomputed once (shared) and per use, while the plan improves; once
    // with memory-bound rebuilds shared, once per use.
    let within = |p: &Plan| p.stats.flops.recompute <= p.stats.flops.forward;
    let score = |p: &Plan| {
        (
            p.stats.bytes.activations_peak,
            p.launches_at_peak(),
            p.stats.flops.recompute,
        )
    };
    let all: BTreeSet<TensorId> = saved.droppable.iter().copied().collect();
    let ops = recompute::recomputable(g, &all);
    for cheap_chains_per_use in [false, true] {
        let remat = |kept: &BTreeSet<TensorId>, per_use: &BTreeSet<NodeId>| Remat {
            drop: recompute::segmented(saved, kept),
            per_use: per_use.clone(),
            cheap_chains_per_use,
        };
        let mut kept = start.clone();
        let mut per_use: BTreeSet<NodeId> = BTreeSet::new();
        let mut best = build(g, &remat(&kept, &per_use), policy, options);
        loop {
            let mut improved = false;
            for &c in &cuts {
                let mut trial = kept.clone();
                toggle(&mut trial, c);
                let p = build(g, &remat(&trial, &per_use), policy, options);
                if within(&p) && score(&p) < score(&best) {
                    (kept, best, improved) = (trial, p, true);
                }
            }
            for &op in &ops {
                let mut trial = per_use.clone();
                toggle(&mut trial, op);
                let p = build(g, &remat(&kept, &trial), policy, options);
                if within(&p) && score(&p) < score(&best) {
                    (per_use, best, improved) = (trial, p, true);
                }
            }
            if !improved {
                break;
            }
        }
        plans.push((kept, best));
    }
    plans.into_iter().map(|(_, p)| p).collect()
}

/// Bytes as people read them: 1.5 GiB, 512 MiB.
pub fn human(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

fn build(g: &Graph, remat: &Remat, policy: &Checkpointing, options: Options) -> Plan {
    let graph = recompute::rematerialize(g, remat);
    let order = order(&graph);
    let layout = memory::plan(&graph, &order, options.in_place);
    let launches: Vec<Launch> = order
        .iter()
        .map(|&id| {
            let n = &graph.dag[id];
            Launch {
                node: id,
                inputs: n.inputs.iter().map(|t| layout.slots[t]).collect(),
                outputs: graph.outputs(id).iter().map(|t| layout.slots[t]).collect(),
            }
        })
        .collect();
    let stats = stats(&graph, &launches, &layout, policy);
    Plan {
        graph,
        launches,
        sizes: layout.sizes,
        params: layout.params,
        slots: layout.slots,
        stats,
    }
}

/// A deterministic topological order of the launches (parameters and inputs are not
/// launched): Kahn's algorithm, phases in order, ties broken by creation index.
pub fn order(g: &Graph) -> Vec<NodeId> {
    let launched = |id: NodeId| !matches!(g.dag[id].op, OpKind::Parameter(_) | OpKind::Input(_));
    let rank = |id: NodeId| match g.dag[id].phase {
        Phase::Forward => 0,
        Phase::Backward | Phase::Recompute => 1,
        Phase::Update => 2,
    };
    let mut waiting: Vec<usize> = vec![0; g.dag.node_count()];
    let mut users: Vec<Vec<NodeId>> = vec![Vec::new(); g.dag.node_count()];
    for id in g.dag.node_indices() {
        let deps: BTreeSet<NodeId> = g.dag[id]
            .inputs
            .iter()
            .map(|t| t.node())
            .filter(|&n| launched(n))
            .collect();
        waiting[id.index()] = deps.len();
        for d in deps {
            users[d.index()].push(id);
        }
    }
    let mut ready: BinaryHeap<Reverse<(u8, NodeId)>> = g
        .dag
        .node_indices()
        .filter(|&id| launched(id) && waiting[id.index()] == 0)
        .map(|id| Reverse((rank(id), id)))
        .collect();
    let mut out = Vec::new();
    while let Some(Reverse((_, id))) = ready.pop() {
        out.push(id);
        for &u in &users[id.index()] {
            waiting[u.index()] -= 1;
            if waiting[u.index()] == 0 {
                ready.push(Reverse((rank(u), u)));
            }
        }
    }
    out
}

fn stats(g: &Graph, launches: &[Launch], layout: &memory::Layout, policy: &Checkpointing) -> Stats {
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
        in_place: layout.in_place,
        recomputed_ops,
        flops,
        bytes,
    }
}

/// The text `trainer plan` prints.
pub fn report(name: &str, s: &Stats) -> String {
    let g = |f: u64| format!("{:.2} GFLOP", f as f64 / 1e9);
    let b = &s.bytes;
    let lines = [
        format!(
            "{name}: one training step at batch {}, checkpointing {}",
            s.batch, s.checkpointing
        ),
        format!(
            "  launches          {} ({} in place, {} recomputed)",
            s.launches, s.in_place, s.recomputed_ops
        ),
        format!(
            "  FLOPs             forward {}, backward {}, recompute {}, update {}",
            g(s.flops.forward),
            g(s.flops.backward),
            g(s.flops.recompute),
            g(s.flops.update)
        ),
        format!(
            "  memory            params {}, buffers {}, grads {}, optimizer {}, inputs {}",
            human(b.params),
            human(b.buffers),
            human(b.grads),
            human(b.optimizer),
            human(b.inputs)
        ),
        format!("  activations peak  {}", human(b.activations_peak)),
        format!("  total peak        {}", human(b.total_peak)),
    ];
    lines.join("\n")
}
