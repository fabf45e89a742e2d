//! Whole training steps on the GPU backend against the CPU backend, through the library the
//! way an embedding program drives it: config → training graph → plan → executor.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use trainer::backend::cpu::CpuExec;
use trainer::backend::gpu::{GpuExec, test_gpu};
use trainer::config::{self, Config};
use trainer::graph::Graph;
use trainer::nn;
use trainer::schedule::{self, Plan};
use trainer::tensor::DType;
use trainer::tensor::StepCtx;
use trainer::training;

fn load(path: &str) -> Config {
    let loaded = config::load(std::path::Path::new(path), &[]);
    match loaded.result {
        Ok(c) => c,
        Err(e) => panic!("{}", e.render(&loaded.sources)),
    }
}

fn plan(path: &str, batch: usize) -> Plan {
    let cfg = load(path);
    let g = nn::build_with_batch(&cfg, batch).expect("builds");
    let t = training::training_graph(&g, &cfg.optimizer).expect("differentiates");
    schedule::plan(&t, &cfg.train.checkpointing, Default::default()).expect("plans")
}

fn batch(g: &Graph, seed: u64) -> (Vec<f32>, Vec<f32>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let x = (0..g.ty(g.features).numel())
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    let classes = *g.ty(g.output).shape.last().unwrap();
    let lt = g.ty(g.labels);
    let y = (0..lt.numel())
        .map(|_| match lt.dtype {
            DType::I32 => rng.random_range(0..classes) as f32,
            DType::F32 => rng.random_range(-1.0..1.0),
        })
        .collect();
    (x, y)
}

fn ctx(step: u64) -> StepCtx {
    StepCtx {
        lr: 0.05,
        step,
        seed: 11,
    }
}

fn relative(a: &[f32], b: &[f32]) -> f64 {
    let (mut d, mut n) = (0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        d += (x as f64 - y as f64).powi(2);
        n += (y as f64).powi(2);
    }
    if n == 0.0 { d.sqrt() } else { (d / n).sqrt() }
}

#[test]
fn a_resnet_step_on_the_gpu_matches_the_cpu() {
    let Some(gpu) = test_gpu() else { return };
    let p = plan("configs/resnet.toml", 4);
    let (x, y) = batch(&p.graph, 3);
    let (f, l, loss) = (p.graph.features, p.graph.labels, p.graph.loss);
    let grads = p.graph.grads.clone();
    let names: Vec<String> = p.graph.params.iter().map(|q| q.name.clone()).collect();
    let mut cpu: CpuExec<f32> = CpuExec::new(plan("configs/resnet.toml", 4), 5).unwrap();
    let mut dev = GpuExec::new(gpu, p, 5).unwrap();
    cpu.feed(f, &x).unwrap();
    cpu.feed(l, &y).unwrap();
    dev.feed(f, &x).unwrap();
    dev.feed(l, &y).unwrap();
    cpu.step(ctx(1));
    dev.step(ctx(1)).unwrap();
    let (lc, lg) = (cpu.read(loss)[0], dev.read(loss).unwrap()[0]);
    assert!(((lc - lg) / lc).abs() < 1e-4, "loss: cpu {lc}, gpu {lg}");
    for &(i, t) in &grads {
        let e = relative(&dev.read(t).unwrap(), cpu.read(t));
        assert!(e < 1e-4, "gradient of {}: relative error {e}", names[i]);
    }
    // The updated parameters, optimizer state and running statistics too.
    for (i, name) in names.iter().enumerate() {
        let e = relative(&dev.param(i).unwrap(), cpu.param(i));
        assert!(e < 1e-4, "{name} after the step: relative error {e}");
    }
}

#[test]
fn ten_mlp_steps_give_the_same_bits_on_two_gpu_runs() {
    let Some(gpu) = test_gpu() else { return };
    let run = || {
        let p = plan("configs/mlp.toml", 16);
        let (x, y) = batch(&p.graph, 9);
        let (f, l, loss) = (p.graph.features, p.graph.labels, p.graph.loss);
        let mut dev = GpuExec::new(gpu, p, 2).unwrap();
        dev.feed(f, &x).unwrap();
        dev.feed(l, &y).unwrap();
        (1..=10)
            .map(|s| {
                dev.step(ctx(s)).unwrap();
                dev.read(loss).unwrap()[0].to_bits()
            })
            .collect::<Vec<u32>>()
    };
    let (a, b) = (run(), run());
    assert_eq!(a, b);
    assert!(
        f32::from_bits(a[9]) < f32::from_bits(a[0]),
        "the loss falls"
    );
}
