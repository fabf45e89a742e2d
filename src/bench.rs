//! `trainer bench`: full training steps on synthetic data, timed after a warm-up. Speed is
//! measured here, never in tests.

use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::backend::cpu::{CpuExec, StepCtx};
use crate::ops::DType;
use crate::schedule::Plan;

#[derive(Debug, Serialize)]
pub struct BenchResult {
    pub device: String,
    pub batch: usize,
    /// Median wall time of one step, in milliseconds.
    pub step_ms: f64,
    pub img_per_s: f64,
    pub steps: usize,
    pub warmup: usize,
    pub threads: usize,
    pub loss: f64,
}

pub const WARMUP: usize = 2;

pub fn run(plan: Plan, seed: u64, steps: usize) -> Result<BenchResult, String> {
    let batch = plan.graph.batch;
    let (features, labels) = (plan.graph.features, plan.graph.labels);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let x: Vec<f32> = (0..plan.graph.ty(features).numel())
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    let labels_ty = plan.graph.ty(labels).clone();
    let classes = plan
        .graph
        .ty(plan.graph.output)
        .shape
        .last()
        .copied()
        .unwrap_or(1);
    let y: Vec<f32> = (0..labels_ty.numel())
        .map(|_| match labels_ty.dtype {
            DType::I32 => rng.random_range(0..classes) as f32,
            DType::F32 => rng.random_range(-1.0..1.0),
        })
        .collect();
    let loss_t = plan.graph.loss;
    let mut exec: CpuExec<f32> = CpuExec::new(plan, seed)?;
    exec.feed(features, &x)?;
    exec.feed(labels, &y)?;
    let mut times = Vec::with_capacity(steps);
    for step in 0..WARMUP + steps {
        let ctx = StepCtx {
            lr: 0.01,
            step: step as u64 + 1,
            seed,
        };
        let t0 = Instant::now();
        exec.step(ctx);
        if step >= WARMUP {
            times.push(t0.elapsed().as_secs_f64() * 1e3);
        }
    }
    times.sort_by(|a, b| a.partial_cmp(b).expect("finite times"));
    let step_ms = times[times.len() / 2];
    Ok(BenchResult {
        device: "cpu".into(),
        batch,
        step_ms,
        img_per_s: batch as f64 / (step_ms / 1e3),
        steps,
        warmup: WARMUP,
        threads: rayon::current_num_threads(),
        loss: exec.read(loss_t)[0] as f64,
    })
}
