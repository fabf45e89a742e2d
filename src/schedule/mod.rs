//! Planning: everything about a step decided before step 1, and no device memory allocated.
//! `plan` runs the passes in order:
//!
//! verify → recompute (checkpointing) → fuse → order → liveness → memory → `Plan`
//!
//! - `recompute`: which forward activations the backward pass keeps; clones of forward ops
//!   bring the others back. `none` and `blocks` name their drop set; `sqrt` and
//!   `memory_budget` search for one (`search`), planning each candidate to the end, since
//!   only the memory pass knows its real peak.
//! - `fuse`: fewer launches for the same arithmetic (multi-tensor updates). After recompute (a
//!   recomputed cheap op can then fuse into its consumer) and before memory (fusion removes
//!   intermediates). `Options::fuse` switches it, with the same bits either way.
//! - `order`: a deterministic topological order of the launches.
//! - `liveness`: each tensor's last read in that order.
//! - `memory`: a slot for every tensor, the arena packed by lifetime.
//! - `plan` (the type): the launches over their slots and the step's figures; `report` is
//!   their text.

pub mod fuse;
pub mod liveness;
pub mod memory;
pub mod order;
mod plan;
pub mod recompute;
pub mod report;
mod search;

pub use memory::{Region, Slot};
pub use order::order;
pub use plan::{Bytes, Flops, Launch, Plan, Stats};
pub use recompute::Remat;
pub use report::report;

use crate::config::sections::{Checkpointing, Fusion};
use crate::diag::Diagnostic;
use crate::graph::Graph;

/// Switches for the passes, so a test can show each changes no bits.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    pub in_place: bool,
    /// The fusion passes (`fuse`); `run.fusion` in the config.
    pub fuse: Fusion,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            in_place: true,
            fuse: Fusion::ALL,
        }
    }
}

impl Options {
    /// The passes a config asks for (`run.fusion`).
    pub fn of(cfg: &crate::config::Config) -> Options {
        Options {
            fuse: cfg.run.fusion,
            ..Options::default()
        }
    }
}

/// Plans a training graph (or any graph) under a checkpointing policy.
pub fn plan(g: &Graph, policy: &Checkpointing, options: Options) -> Result<Plan, Diagnostic> {
    verified(g, "input");
    let workspaces = memory::Workspaces::default();
    let build = |remat: &Remat| passes(g, remat, policy, options, &workspaces);
    let saved = recompute::saved(g);
    let plan = match policy {
        Checkpointing::None => build(&Remat::default()),
        Checkpointing::Blocks => build(&Remat::dropping(recompute::blocks(g, &saved))),
        Checkpointing::Sqrt => search::sqrt(g, &saved, &build),
        Checkpointing::MemoryBudget(budget) => search::fit_budget(g, &saved, budget.0, &build)?,
    };
    verified(&plan.graph, "planned");
    let mut plan = plan;
    // Once for the chosen plan, not per checkpointing candidate: it plans every kernel.
    (plan.stats.dispatches, plan.stats.dispatches_unfused) = fuse::dispatches(&plan.graph);
    Ok(plan)
}

/// The passes after checkpointing's choice, for one `Remat` (a search runs them for each
/// candidate).
fn passes(
    g: &Graph,
    remat: &Remat,
    policy: &Checkpointing,
    options: Options,
    workspaces: &memory::Workspaces,
) -> Plan {
    let graph = recompute::rematerialize(g, remat);
    let unfused = graph.dag.node_count();
    let graph = if options.fuse.any() {
        fuse::fuse(&graph, options.fuse)
    } else {
        graph
    };
    let order = order::order(&graph);
    let last_reads = liveness::last_reads(&graph, &order);
    let layout = memory::plan(&graph, &order, &last_reads, options.in_place, workspaces);
    Plan::new(graph, &order, layout, policy, unfused)
}

/// In debug builds and tests, a graph that breaks an invariant (`Graph::verify`) is a bug in
/// whatever built or rewrote it: stop there, not with wrong numbers later.
fn verified(g: &Graph, which: &str) {
    if cfg!(debug_assertions)
        && let Err(e) = g.verify()
    {
        panic!("schedule::plan: the {which} graph breaks an invariant: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::{Input, OpKind};
    use crate::tensor::TensorId;
    use crate::tensor::TensorType;

    /// A graph whose node lists an input its edges do not mirror is refused before any pass
    /// runs (debug builds and tests only; release builds trust their callers).
    #[test]
    #[should_panic(expected = "schedule::plan: the input graph breaks an invariant")]
    fn a_broken_graph_is_an_internal_error() {
        let mut g = Graph::scratch("net");
        let input = |name: &str| {
            OpKind::Input(Input {
                name: name.into(),
                ty: TensorType::f32(vec![2]),
            })
        };
        let x = g.add(input("x"), &[], 0).unwrap();
        let y = g.add(input("y"), &[], 0).unwrap();
        // An input slot without its edge, as a faulty rewrite could leave it.
        g.dag[y.node()].inputs.push(TensorId::of(x.node(), 0));
        (g.features, g.labels, g.output, g.loss) = (x, y, x, x);
        let _ = plan(&g, &Checkpointing::None, Options::default());
    }
}
