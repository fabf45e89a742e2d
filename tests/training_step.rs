//! The training step through the library, the way an embedding program drives it: a shipped
//! config → forward graph → training graph → plan → CPU executor.

use std::collections::BTreeMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use trainer::backend::cpu::{CpuExec, Feeds, interpret};
use trainer::config::sections::Checkpointing;
use trainer::config::values::Bytes;
use trainer::config::{self, Config};
use trainer::graph::Graph;
use trainer::kernel::cpu::Real;
use trainer::nn;
use trainer::schedule::{self, Options, Plan};
use trainer::tensor::DType;
use trainer::tensor::StepCtx;
use trainer::training;

fn load(path: &str, sets: &[&str]) -> Config {
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    let loaded = config::load(std::path::Path::new(path), &sets);
    match loaded.result {
        Ok(c) => c,
        Err(e) => panic!("{}", e.render(&loaded.sources)),
    }
}

fn train_graph(cfg: &Config, batch: usize) -> Graph {
    let g = nn::build_with_batch(cfg, batch).expect("builds");
    training::training_graph(&g, &cfg.optimizer).expect("differentiates")
}

/// A random batch for a graph: features in [-1, 1], labels in range.
fn batch<T: Real>(g: &Graph, seed: u64) -> (Vec<T>, Vec<T>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let x = (0..g.ty(g.features).numel())
        .map(|_| T::of(rng.random_range(-1.0..1.0)))
        .collect();
    let classes = *g.ty(g.output).shape.last().unwrap();
    let lt = g.ty(g.labels);
    let y = (0..lt.numel())
        .map(|_| match lt.dtype {
            DType::I32 => T::of(rng.random_range(0..classes) as f64),
            DType::F32 => T::of(rng.random_range(-1.0..1.0)),
        })
        .collect();
    (x, y)
}

/// One step; returns the loss and every gradient, by parameter index.
fn step<T: Real>(plan: Plan, seed: u64) -> (T, BTreeMap<usize, Vec<T>>) {
    let (x, y) = batch::<T>(&plan.graph, 7);
    let (f, l, loss) = (plan.graph.features, plan.graph.labels, plan.graph.loss);
    let grads = plan.graph.grads.clone();
    let mut exec: CpuExec<T> = CpuExec::new(plan, seed).unwrap();
    exec.feed(f, &x).unwrap();
    exec.feed(l, &y).unwrap();
    exec.step(StepCtx {
        lr: 0.1,
        step: 1,
        seed,
    });
    let gs = grads
        .iter()
        .map(|&(i, t)| (i, exec.read(t).to_vec()))
        .collect();
    (exec.read(loss)[0], gs)
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn checkpointing_in_place_and_fusion_change_no_bits() {
    let cfg = load("configs/resnet.toml", &[]);
    let g = train_graph(&cfg, 3);
    let base = schedule::plan(
        &g,
        &Checkpointing::None,
        Options {
            in_place: false,
            fuse: trainer::config::sections::Fusion::NONE,
        },
    )
    .unwrap();
    let peak = base.stats.bytes.activations_peak;
    let (loss, grads) = step::<f32>(base, 5);
    assert!(loss.is_finite());
    let policies = [
        Checkpointing::None,
        Checkpointing::Blocks,
        Checkpointing::Sqrt,
        Checkpointing::MemoryBudget(Bytes(peak / 2)),
    ];
    for policy in policies {
        let plan = schedule::plan(&g, &policy, Options::default()).unwrap();
        let recomputed = plan.stats.recomputed_ops;
        assert_eq!(policy == Checkpointing::None, recomputed == 0, "{policy:?}");
        let (l2, g2) = step::<f32>(plan, 5);
        assert_eq!(loss.to_bits(), l2.to_bits(), "{policy:?}");
        assert_eq!(grads.len(), g2.len());
        for (i, v) in &grads {
            assert_eq!(bits(v), bits(&g2[i]), "{policy:?}: gradient {i} differs");
        }
    }
}

#[test]
fn planned_executor_matches_the_interpreter() {
    for path in [
        "configs/mlp.toml",
        "configs/lenet.toml",
        "configs/resnet.toml",
    ] {
        let cfg = load(path, &[]);
        let g = train_graph(&cfg, 2);
        let plan = schedule::plan(&g, &Checkpointing::Sqrt, Options::default()).unwrap();
        let (x, y) = batch::<f32>(&g, 7);
        let mut feeds = Feeds::default();
        for p in &g.params {
            feeds.params.push(p.init.values(3, &p.name, p.ty.numel()));
        }
        let input = |t: trainer::tensor::TensorId| match &g.dag[t.node()].op {
            trainer::ops::OpKind::Input(i) => i.name.clone(),
            _ => unreachable!(),
        };
        feeds.inputs.insert(input(g.features), x);
        feeds.inputs.insert(input(g.labels), y);
        let ctx = StepCtx {
            lr: 0.1,
            step: 1,
            seed: 3,
        };
        let want = interpret(&g, &feeds, ctx).unwrap();
        let (loss, grads) = step::<f32>(plan, 3);
        assert_eq!(loss.to_bits(), want.get(g.loss)[0].to_bits(), "{path}");
        for (i, t) in &g.grads {
            assert_eq!(bits(&grads[i]), bits(want.get(*t)), "{path}: grad {i}");
        }
    }
}
