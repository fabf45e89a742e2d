//! The library trains: configs/mlp.toml on synthetic, separable data for 200 steps on the CPU
//! backend, and the loss falls below 10% of where it started.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use trainer::backend::cpu::CpuExec;
use trainer::config;
use trainer::config::Optimizer;
use trainer::nn;
use trainer::schedule::{self, Options};
use trainer::tensor::StepCtx;
use trainer::training;

#[test]
fn mlp_learns_separable_data_in_200_steps() {
    let loaded = config::load(std::path::Path::new("configs/mlp.toml"), &[]);
    let Ok(cfg) = loaded.result else {
        panic!("mlp.toml loads")
    };
    let batch = 64;
    let g = nn::build_with_batch(&cfg, batch).unwrap();
    let g = training::training_graph(&g, &cfg.optimizer).unwrap();
    let plan = schedule::plan(&g, &cfg.train.checkpointing, Options::default()).unwrap();
    let lr = match &cfg.optimizer {
        Optimizer::Adam(a) => a.lr.0,
        other => panic!("mlp.toml uses adam, got {other:?}"),
    };
    // Fusion renumbers nodes: the plan's graph names the tensors to feed and read.
    let (features, labels, loss) = (plan.graph.features, plan.graph.labels, plan.graph.loss);
    let dim = plan.graph.ty(features).numel() / batch;
    let classes = *plan.graph.ty(plan.graph.output).shape.last().unwrap();

    // Ten Gaussian clusters around random prototypes.
    let mut rng = ChaCha8Rng::seed_from_u64(42);
    let prototypes: Vec<f32> = (0..classes * dim)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    let samples = 640;
    let ys: Vec<usize> = (0..samples).map(|i| i % classes).collect();
    let xs: Vec<f32> = ys
        .iter()
        .flat_map(|&y| {
            let p = prototypes[y * dim..(y + 1) * dim].to_vec();
            p.into_iter()
                .map(|v| v + 0.5 * rng.random_range(-1.0f32..1.0))
                .collect::<Vec<_>>()
        })
        .collect();

    let mut exec: CpuExec<f32> = CpuExec::new(plan, cfg.run.seed).unwrap();
    let mut losses = Vec::new();
    for step in 0..200 {
        let start = (step * batch) % samples;
        exec.feed(features, &xs[start * dim..(start + batch) * dim])
            .unwrap();
        let y: Vec<f32> = ys[start..start + batch].iter().map(|&y| y as f32).collect();
        exec.feed(labels, &y).unwrap();
        exec.step(StepCtx {
            lr,
            step: step as u64 + 1,
            seed: cfg.run.seed,
        });
        losses.push(exec.read(loss)[0]);
    }
    let first = losses[0];
    let last: f32 = losses[190..].iter().sum::<f32>() / 10.0;
    assert!(first > 1.5, "starts near ln(10): {first}");
    assert!(last < 0.1 * first, "loss {first} -> {last}: {losses:?}");
}
