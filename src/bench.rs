//! `trainer bench`: full training steps on synthetic data, timed after a warm-up. Speed is
//! measured here, never in tests.

use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::backend::cpu::CpuExec;

use crate::backend::PrepareError;
use crate::backend::gpu::{Gpu, GpuExec};
use crate::host_memory::{self, MemoryError};
use crate::schedule::Plan;
use crate::tensor::DType;
use crate::tensor::StepCtx;

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
    /// GPU only: how many submits one step is cut into (so that no command buffer runs long
    /// enough for a GPU watchdog to stop it; `TRAINER_GPU_SUBMIT_MS`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub submits_per_step: Option<usize>,
}

pub const WARMUP: usize = 2;

/// A synthetic batch for a plan: features uniform in [-1, 1), labels uniform over the classes.
/// Host memory like the plan's own: refused with the numbers when the machine lacks it.
fn synthetic_batch(plan: &Plan, seed: u64) -> Result<(Vec<f32>, Vec<f32>), PrepareError> {
    let g = &plan.graph;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let labels_ty = g.ty(g.labels).clone();
    let (features, labels) = (g.ty(g.features).numel(), labels_ty.numel());
    let short = |e: MemoryError| match e {
        MemoryError::Short(s) => PrepareError::DoesNotFit(format!(
            "not enough host memory for a synthetic batch of {}: {s}\nto fit: lower data.batch_size or pass --batch",
            g.batch
        )),
        MemoryError::Setting(s) => PrepareError::DoesNotFit(s),
    };
    host_memory::check((features as u64 + labels as u64) * 4).map_err(short)?;
    let fallible = |e| short(MemoryError::Short(e));
    let mut x: Vec<f32> = host_memory::try_reserved(features).map_err(fallible)?;
    x.extend((0..features).map(|_| rng.random_range(-1.0f32..1.0)));
    let classes = g.ty(g.output).shape.last().copied().unwrap_or(1);
    let mut y: Vec<f32> = host_memory::try_reserved(labels).map_err(fallible)?;
    y.extend((0..labels).map(|_| match labels_ty.dtype {
        DType::I32 => rng.random_range(0..classes) as f32,
        DType::F32 => rng.random_range(-1.0..1.0),
    }));
    Ok((x, y))
}

fn ctx(step: usize, seed: u64) -> StepCtx {
    StepCtx {
        lr: 0.01,
        step: step as u64 + 1,
        seed,
    }
}

/// The median of `WARMUP + steps` CPU steps, warm-up excluded. A plan (or its synthetic
/// batch) the host cannot hold is `PrepareError::DoesNotFit`.
pub fn run(plan: Plan, seed: u64, steps: usize) -> Result<BenchResult, PrepareError> {
    let batch = plan.graph.batch;
    let (features, labels, loss_t) = (plan.graph.features, plan.graph.labels, plan.graph.loss);
    // The executor first: its check covers the whole plan, the batch's only the batch.
    let mut exec: CpuExec<f32> = CpuExec::new(plan, seed)?;
    let (x, y) = synthetic_batch(&exec.plan, seed)?;
    exec.feed(features, &x).map_err(PrepareError::Failed)?;
    exec.feed(labels, &y).map_err(PrepareError::Failed)?;
    let mut times = Vec::with_capacity(steps);
    for step in 0..WARMUP + steps {
        let t0 = Instant::now();
        exec.step(ctx(step, seed));
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
        submits_per_step: None,
    })
}

/// GPU steps are queued back to back as in training (nothing waits between them), so the
/// step time is the wall time of `steps` steps, after warm-up, divided by `steps`.
pub fn run_gpu(
    gpu: &Gpu,
    plan: Plan,
    seed: u64,
    steps: usize,
) -> Result<BenchResult, PrepareError> {
    let batch = plan.graph.batch;
    let (features, labels, loss_t) = (plan.graph.features, plan.graph.labels, plan.graph.loss);
    let mut exec = GpuExec::new(gpu, plan, seed)?;
    let (x, y) = synthetic_batch(&exec.plan, seed)?;
    exec.feed(features, &x)?;
    exec.feed(labels, &y)?;
    for step in 0..WARMUP {
        exec.step(ctx(step, seed))?;
    }
    gpu.wait()?;
    let t0 = Instant::now();
    for step in WARMUP..WARMUP + steps {
        exec.step(ctx(step, seed))?;
    }
    gpu.wait()?;
    let step_ms = t0.elapsed().as_secs_f64() * 1e3 / steps as f64;
    Ok(BenchResult {
        device: format!("gpu ({}, {})", gpu.adapter.name, gpu.adapter.backend),
        batch,
        step_ms,
        img_per_s: batch as f64 / (step_ms / 1e3),
        steps,
        warmup: WARMUP,
        threads: 0,
        loss: exec.read(loss_t)?[0] as f64,
        submits_per_step: Some(exec.submits_per_step()),
    })
}
