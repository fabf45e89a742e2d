//! The checkpointing policies that search: which `Remat` to plan with. `sqrt` looks for the
//! segmentation with the least activation peak within Chen et al.'s bound of one extra
//! forward pass; a `memory_budget` for the least recomputation whose peak fits. Both score
//! candidates by the plans the whole pipeline makes of them (`build`), since only the memory
//! planner knows a candidate's real peak; `recompute` is the mechanism they drive.
//!
//! `sqrt` ([`sqrt`]): the best of Chen et al. 2016's even splits into about √n segments at
//! saved articulation cuts, then local search (toggle one kept cut or one `per_use` op, with
//! memory-bound chains shared and per use) on (peak, launches at the peak, recomputation),
//! staying within one extra forward pass of recomputation. A `memory_budget` ([`fit_budget`])
//! starts from the shortest fitting prefix of `budget_order` (cheap memory-bound ops first,
//! convolutions and matmuls last; every activation, or all but the cuts), from "save dots" and
//! from the `sqrt` plans; local search (toggle one drop or one `per_use` op) then lowers the
//! peak until it fits and the recomputation while it fits. The least recomputation that fits
//! wins; when nothing fits, the error gives the least peak reached. A plan costs 1–2 ms, so a
//! budget search on ResNet-18 takes a few seconds, once per run.

use std::collections::{BTreeMap, BTreeSet};

use super::Plan;
use super::recompute::{self, Remat, Saved, is_leaf};
use crate::config::values::human;
use crate::diag::Diagnostic;
use crate::graph::{Graph, Phase};
use crate::ops::Cost;
use crate::tensor::{NodeId, TensorId};

/// `sqrt`: the best of the segmentations `sqrt_plans` tries, least activation peak first,
/// then least recomputation.
pub(super) fn sqrt(g: &Graph, saved: &Saved, build: &impl Fn(&Remat) -> Plan) -> Plan {
    sqrt_plans(g, saved, build)
        .into_iter()
        .min_by_key(|p| (p.stats.bytes.activations_peak, p.stats.flops.recompute))
        .expect("at least one segment count")
}

/// `sqrt` segmentations. Chen et al.'s even split into about sqrt(n) segments, for every
/// count between sqrt(n)/2 and 2 sqrt(n) (articulation points fall unevenly), and then the best
/// of those refined by local search: toggle one cut at a time while the real planner's peak
/// (then recompute) improves. Equal bytes per segment is only a proxy: in a ResNet the early,
/// wide stages dominate, and the planner's figure is what counts. Each plan takes about a
/// millisecond, so the search costs little next to a training step.
fn sqrt_plans(g: &Graph, saved: &Saved, build: &impl Fn(&Remat) -> Plan) -> Vec<Plan> {
    let cuts = saved_cuts(g, saved);
    let root = (forward_launches(g) as f64).sqrt();
    let (lo, hi) = (
        (root / 2.0).floor().max(1.0) as usize,
        (2.0 * root).ceil() as usize,
    );
    let score = |p: &Plan| (p.stats.bytes.activations_peak, p.stats.flops.recompute);
    let attempt =
        |kept: &BTreeSet<TensorId>| build(&Remat::dropping(recompute::segmented(saved, kept)));
    let mut plans: Vec<(BTreeSet<TensorId>, Plan)> = (lo..=hi)
        .map(|k| {
            let kept = even_segments(g, &cuts, k);
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
    let ops = recomputable(g, &all);
    for cheap_chains_per_use in [false, true] {
        let remat = |kept: &BTreeSet<TensorId>, per_use: &BTreeSet<NodeId>| Remat {
            drop: recompute::segmented(saved, kept),
            per_use: per_use.clone(),
            cheap_chains_per_use,
        };
        let mut kept = start.clone();
        let mut per_use: BTreeSet<NodeId> = BTreeSet::new();
        let mut best = build(&remat(&kept, &per_use));
        loop {
            let mut improved = false;
            for &c in &cuts {
                let mut trial = kept.clone();
                toggle(&mut trial, c);
                let p = build(&remat(&trial, &per_use));
                if within(&p) && score(&p) < score(&best) {
                    (kept, best, improved) = (trial, p, true);
                }
            }
            for &op in &ops {
                let mut trial = per_use.clone();
                toggle(&mut trial, op);
                let p = build(&remat(&kept, &trial));
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

/// The least recomputation whose activation peak fits `budget` bytes. Starting points: the
/// shortest prefix of `budget_order` that fits (binary search), once over every droppable
/// activation and once keeping the articulation cuts (dropping a cut makes later
/// recomputations restart further back); "save dots" (drop every memory-bound activation,
/// keep convolution and matmul outputs); and the `sqrt` segmentations. Each is then refined
/// by local search: drop or keep one activation, or recompute one op per use, while the plan
/// improves: first its peak until it fits, then its recomputation while it still fits.
pub(super) fn fit_budget(
    g: &Graph,
    saved: &Saved,
    budget: u64,
    build: &impl Fn(&Remat) -> Plan,
) -> Result<Plan, Diagnostic> {
    let fits = |p: &Plan| p.stats.bytes.activations_peak <= budget;
    let none = build(&Remat::default());
    if fits(&none) {
        return Ok(none);
    }
    let all = budget_order(g, saved);
    let cuts = cuts(g);
    let inner: Vec<TensorId> = all.iter().filter(|t| !cuts.contains(t)).copied().collect();
    let all_dropped: BTreeSet<TensorId> = saved.droppable.iter().copied().collect();
    let ops = recomputable(g, &all_dropped);
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
        let first = build(&remat);
        improve(remat, first, &[], &ops, lowest, build)
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
    let mut candidates = sqrt_plans(g, saved, build);
    for start in starts {
        let first = build(&start);
        candidates.push(improve(start, first, droppable, &ops, key, build).1);
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
fn improve<K: Ord>(
    mut remat: Remat,
    mut best: Plan,
    droppable: &[TensorId],
    ops: &[NodeId],
    key: impl Fn(&Plan) -> K,
    build: &impl Fn(&Remat) -> Plan,
) -> (Remat, Plan) {
    loop {
        let mut improved = false;
        for i in 0..droppable.len() + ops.len() {
            let mut trial = remat.clone();
            match droppable.get(i) {
                Some(t) => toggle(&mut trial.drop, *t),
                None => toggle(&mut trial.per_use, ops[i - droppable.len()]),
            }
            let p = build(&trial);
            if key(&p) < key(&best) {
                (remat, best, improved) = (trial, p, true);
            }
        }
        if !improved {
            return (remat, best);
        }
    }
}

// Candidates the searches start from or toggle.

/// Forward ops a clone may be made of under `drop`: launched ops none of whose outputs the
/// forward pass leaves for the backward pass. The candidates for `Remat::per_use`.
fn recomputable(g: &Graph, drop: &BTreeSet<TensorId>) -> Vec<NodeId> {
    let kept = recompute::kept(g, drop);
    g.dag
        .node_indices()
        .filter(|&id| {
            let n = &g.dag[id];
            n.phase == Phase::Forward
                && !n.inputs.is_empty()
                && g.outputs(id).iter().all(|t| !kept.contains(t))
        })
        .collect()
}

/// The number of forward launches: `sqrt` cuts into about the square root of it.
fn forward_launches(g: &Graph) -> usize {
    g.dag
        .node_indices()
        .filter(|&id| g.dag[id].phase == Phase::Forward && !g.dag[id].inputs.is_empty())
        .count()
}

/// Saved activations that alone cross a cut of the forward chain (block outputs in a
/// ResNet), in forward order: where a `sqrt` segmentation may restart recomputation. One no
/// backward op reads (an add that relu overwrites in place) is not there to restart from.
fn saved_cuts(g: &Graph, saved: &Saved) -> Vec<TensorId> {
    let droppable: BTreeSet<TensorId> = saved.droppable.iter().copied().collect();
    articulation(g)
        .1
        .into_iter()
        .map(|(_, t)| t)
        .filter(|t| droppable.contains(t))
        .collect()
}

/// Chen et al. 2016: of `cuts` (in forward order), those that split the forward chain into
/// about `segments` runs of equal bytes. A segment is recomputed whole, so it is sized by
/// everything it produces.
fn even_segments(g: &Graph, cuts: &[TensorId], segments: usize) -> BTreeSet<TensorId> {
    let bytes = |t: TensorId| (g.ty(t).numel() * 4) as u64;
    let forward: Vec<NodeId> = g
        .dag
        .node_indices()
        .filter(|&id| g.dag[id].phase == Phase::Forward && !g.dag[id].inputs.is_empty())
        .collect();
    let total: u64 = forward
        .iter()
        .flat_map(|&id| g.outputs(id))
        .map(bytes)
        .sum();
    let target = total / segments.max(1) as u64;
    let cut_set: BTreeSet<TensorId> = cuts.iter().copied().collect();
    let mut keep = BTreeSet::new();
    let mut acc = 0u64;
    for &id in &forward {
        for t in g.outputs(id) {
            acc += bytes(t);
            if cut_set.contains(&t) && acc >= target {
                keep.insert(t);
                acc = 0;
            }
        }
    }
    keep
}

/// Activations that alone cross a cut of the forward chain (block outputs in a ResNet).
fn cuts(g: &Graph) -> BTreeSet<TensorId> {
    articulation(g).1.into_iter().map(|(_, t)| t).collect()
}

/// Forward launches in order, and each position after which a single activation is live.
fn articulation(g: &Graph) -> (Vec<NodeId>, Vec<(usize, TensorId)>) {
    let forward: Vec<NodeId> = g
        .dag
        .node_indices()
        .filter(|&id| g.dag[id].phase == Phase::Forward && !g.dag[id].inputs.is_empty())
        .collect();
    // Last forward position reading each activation.
    let mut last: BTreeMap<TensorId, usize> = BTreeMap::new();
    for (i, &id) in forward.iter().enumerate() {
        for &t in &g.dag[id].inputs {
            if !is_leaf(g, t) {
                last.insert(t, i);
            }
        }
    }
    // Sweep: after position i, which activations are still to be read?
    let mut live: BTreeSet<TensorId> = BTreeSet::new();
    let mut cuts: Vec<(usize, TensorId)> = Vec::new();
    for (i, &id) in forward.iter().enumerate() {
        for t in g.outputs(id) {
            if last.get(&t).is_some_and(|&l| l > i) {
                live.insert(t);
            }
        }
        live.retain(|t| last[t] > i);
        if live.len() == 1 {
            cuts.push((i, *live.iter().next().expect("one")));
        }
    }
    (forward, cuts)
}

/// Droppable activations in the order a memory budget gives them up: cheap memory-bound ops
/// first (batchnorm, activations, adds), convolutions and matmuls last ("save dots"); within
/// a class, the fewest FLOPs to recompute per byte freed first.
fn budget_order(g: &Graph, saved: &Saved) -> Vec<TensorId> {
    let mut ranked: Vec<(bool, f64, TensorId)> = saved
        .droppable
        .iter()
        .map(|&t| {
            let n = &g.dag[t.node()];
            let compute = n.op.primitive().cost() == Cost::Compute;
            let bytes = (g.ty(t).numel() * 4).max(1) as f64;
            (compute, g.flops(t.node()) as f64 / bytes, t)
        })
        .collect();
    ranked.sort_by(|a, b| {
        (a.0, a.1)
            .partial_cmp(&(b.0, b.1))
            .expect("finite")
            .then(a.2.cmp(&b.2))
    });
    ranked.into_iter().map(|(_, _, t)| t).collect()
}
