//! `trainer bench`: full training steps on synthetic data, timed after a warm-up. Speed is
//! measured here, never in tests. The start is timed too (`Startup`: opening the device,
//! preparing the executor, the first step), with the pipelines built and whether the
//! persistent pipeline cache was loaded (`backend::gpu::pipeline_cache`).
//!
//! `--profile` (GPU) says where a step's time goes: after the warm-up, `--steps` steps are run
//! with every dispatch timed by GPU timestamp queries (`backend::gpu::profile`), and the
//! dispatches are grouped by op and input shapes: count per step, total and mean µs per step,
//! share of the step's kernel time, achieved GFLOP/s (the op's `Primitive::flops`) and GB/s
//! (the bytes its dispatches bind), largest total first; then the sum of kernel times against
//! the step's wall time (the gap is launch and submit overhead). A second table sums the time
//! by layer op, forward and backward (`attention` fused or decomposed, whatever its ops). An
//! adapter without
//! TIMESTAMP_QUERY is refused (exit 2).
//!
//! `--loader` times the data path alone (no model, no device): the training `Loader` over the
//! config's dataset with its augmentation, then one validation pass, in batches and images
//! per second, to check that the loader outruns the step (issue 15: at least 3×).

use std::collections::BTreeMap;
use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::backend::cpu::CpuExec;

use crate::backend::PrepareError;
use crate::backend::gpu::{Gpu, GpuExec, PipelineStats, Timestamps};
use crate::data::{self, DataError, Loader};
use crate::graph::Phase;
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
    pub startup: Startup,
}

/// How long the bench took to start, in seconds.
#[derive(Debug, Serialize)]
pub struct Startup {
    /// Opening the GPU device (0 on the CPU).
    pub device_s: f64,
    /// Preparing the executor: buffers, pipelines, bind groups, initial weights.
    pub prepare_s: f64,
    /// The first step, until its results were there.
    pub first_step_s: f64,
    /// GPU: the pipelines built and the pipeline cache's state.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pipelines: Option<PipelineStats>,
}

impl Startup {
    /// "start 0.52 s: device 0.10 s, prepare 0.30 s, first step 0.12 s; kernels: ...".
    pub fn line(&self) -> String {
        let device = match self.pipelines {
            Some(_) => format!("device {:.2} s, ", self.device_s),
            None => String::new(),
        };
        let mut line = format!(
            "start {:.2} s: {device}prepare {:.2} s, first step {:.2} s",
            self.device_s + self.prepare_s + self.first_step_s,
            self.prepare_s,
            self.first_step_s
        );
        if let Some(p) = &self.pipelines {
            line += &format!("; kernels: {}", p.summary());
        }
        line
    }
}

pub const WARMUP: usize = 2;

/// A synthetic batch for a plan: features uniform in [-1, 1) (integer ids: uniform over the
/// rows of the smallest embedding that reads them, else over the classes), labels uniform
/// over the classes.
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
    let classes = g.ty(g.output).shape.last().copied().unwrap_or(1);
    let mut x: Vec<f32> = host_memory::try_reserved(features).map_err(fallible)?;
    match g.ty(g.features).dtype {
        DType::F32 => x.extend((0..features).map(|_| rng.random_range(-1.0f32..1.0))),
        DType::I32 => {
            let ids = id_range(g).unwrap_or(classes).max(1);
            x.extend((0..features).map(|_| rng.random_range(0..ids) as f32));
        }
    }
    let mut y: Vec<f32> = host_memory::try_reserved(labels).map_err(fallible)?;
    y.extend((0..labels).map(|_| match labels_ty.dtype {
        DType::I32 => rng.random_range(0..classes) as f32,
        DType::F32 => rng.random_range(-1.0..1.0),
    }));
    Ok((x, y))
}

/// The rows of the smallest embedding table that reads the input ids, if any.
fn id_range(g: &crate::graph::Graph) -> Option<usize> {
    g.dag
        .node_indices()
        .map(|id| g.node(id))
        .filter(|n| matches!(n.op, crate::ops::OpKind::Gather(_)))
        .filter(|n| n.inputs.get(1) == Some(&g.features))
        .map(|n| g.ty(n.inputs[0]).shape[0])
        .min()
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
    let t0 = Instant::now();
    let mut exec: CpuExec<f32> = CpuExec::new(plan, seed)?;
    let prepare_s = t0.elapsed().as_secs_f64();
    let (x, y) = synthetic_batch(&exec.plan, seed)?;
    exec.feed(features, &x).map_err(PrepareError::Failed)?;
    exec.feed(labels, &y).map_err(PrepareError::Failed)?;
    let mut times = Vec::with_capacity(steps);
    let mut first_step_s = 0.0;
    for step in 0..WARMUP + steps {
        let t0 = Instant::now();
        exec.step(ctx(step, seed));
        if step == 0 {
            first_step_s = t0.elapsed().as_secs_f64();
        }
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
        startup: Startup {
            device_s: 0.0,
            prepare_s,
            first_step_s,
            pipelines: None,
        },
    })
}

/// `plan` prepared on the GPU, fed one synthetic batch, after `WARMUP` steps (the first one
/// waited for, to time the start).
fn warmed_up<'g>(
    gpu: &'g Gpu,
    plan: Plan,
    seed: u64,
) -> Result<(GpuExec<'g>, Startup), PrepareError> {
    let (features, labels) = (plan.graph.features, plan.graph.labels);
    let t0 = Instant::now();
    let mut exec = GpuExec::new(gpu, plan, seed)?;
    let prepare_s = t0.elapsed().as_secs_f64();
    let (x, y) = synthetic_batch(&exec.plan, seed)?;
    let t0 = Instant::now();
    exec.feed(features, &x)?;
    exec.feed(labels, &y)?;
    exec.step(ctx(0, seed))?;
    gpu.wait()?;
    let first_step_s = t0.elapsed().as_secs_f64();
    for step in 1..WARMUP {
        exec.step(ctx(step, seed))?;
    }
    let startup = Startup {
        device_s: gpu.opened_in.as_secs_f64(),
        prepare_s,
        first_step_s,
        pipelines: Some(gpu.pipeline_stats()),
    };
    Ok((exec, startup))
}

/// GPU steps are queued back to back as in training (nothing waits between them), so the
/// step time is the wall time of `steps` steps, after warm-up, divided by `steps`.
pub fn run_gpu(
    gpu: &Gpu,
    plan: Plan,
    seed: u64,
    steps: usize,
) -> Result<BenchResult, PrepareError> {
    let (batch, loss_t) = (plan.graph.batch, plan.graph.loss);
    let (mut exec, startup) = warmed_up(gpu, plan, seed)?;
    gpu.wait()?;
    let t0 = Instant::now();
    for step in WARMUP..WARMUP + steps {
        exec.step(ctx(step, seed))?;
    }
    gpu.wait()?;
    let step_ms = t0.elapsed().as_secs_f64() * 1e3 / steps as f64;
    Ok(BenchResult {
        device: format!("gpu ({})", gpu.describe()),
        batch,
        step_ms,
        img_per_s: batch as f64 / (step_ms / 1e3),
        steps,
        warmup: WARMUP,
        threads: 0,
        loss: exec.read(loss_t)?[0] as f64,
        submits_per_step: Some(exec.submits_per_step()),
        startup,
    })
}

/// One group of a profiled step's dispatches: the same op on the same input shapes.
#[derive(Debug, Serialize)]
pub struct ProfileRow {
    pub op: String,
    /// The op's input shapes, e.g. `[8,784] [128,784]`.
    pub shapes: String,
    /// Dispatches per step.
    pub count: usize,
    /// GPU time per step, in microseconds.
    pub total_us: f64,
    pub mean_us: f64,
    /// Of the step's summed kernel time.
    pub share: f64,
    pub gflop_s: f64,
    pub gb_s: f64,
}

/// A profiled step's kernel time by the config op of the layer each launch belongs to (a
/// vjp's ops count toward their forward layer; a fused launch toward its first op's layer),
/// optimizer updates apart: what one layer kind costs, however many ops it lowers to.
#[derive(Debug, Serialize)]
pub struct LayerOpRow {
    /// The layer op (`attention`, `linear`, ...), or `update` for the optimizer's launches.
    pub op: String,
    /// Forward (recomputation included) and backward GPU time per step, in microseconds.
    pub forward_us: f64,
    pub backward_us: f64,
    /// Of the step's summed kernel time.
    pub share: f64,
}

#[derive(Debug, Serialize)]
pub struct ProfileResult {
    pub device: String,
    pub batch: usize,
    /// Profiled steps (after the warm-up); the times are their mean.
    pub steps: usize,
    pub warmup: usize,
    pub timestamps: Timestamps,
    pub dispatches_per_step: usize,
    /// Mean wall time of a profiled step, in milliseconds (timestamps add some of it).
    pub step_ms: f64,
    /// Mean sum of a profiled step's kernel times, in milliseconds.
    pub kernel_ms: f64,
    /// Largest total first.
    pub rows: Vec<ProfileRow>,
    /// Largest total first.
    pub layer_ops: Vec<LayerOpRow>,
}

#[derive(Default)]
struct Group {
    dispatches: usize,
    seconds: f64,
    flops: f64,
    bytes: f64,
}

/// `trainer bench --profile`: `WARMUP` normal steps, then `steps` profiled ones, grouped.
pub fn profile_gpu(
    gpu: &Gpu,
    plan: Plan,
    seed: u64,
    steps: usize,
) -> Result<ProfileResult, PrepareError> {
    // Refused before anything is built.
    let timestamps = gpu.timestamps()?;
    let batch = plan.graph.batch;
    let (exec, _) = warmed_up(gpu, plan, seed)?;
    let g = &exec.plan.graph;
    let mut groups: BTreeMap<(String, String), Group> = BTreeMap::new();
    // (forward, backward) seconds by layer op.
    let mut layer_ops: BTreeMap<&str, [f64; 2]> = BTreeMap::new();
    let mut wall = 0.0;
    for step in WARMUP..WARMUP + steps {
        let profile = exec.profile_step(ctx(step, seed))?;
        wall += profile.wall_seconds;
        let mut per_launch: BTreeMap<usize, usize> = BTreeMap::new();
        for d in &profile.dispatches {
            *per_launch.entry(d.launch).or_default() += 1;
        }
        for d in &profile.dispatches {
            let node = &g.dag[exec.plan.launches[d.launch].node];
            let shapes: Vec<String> = node
                .inputs
                .iter()
                .map(|&t| crate::tensor::fmt_shape(&g.ty(t).shape))
                .collect();
            let key = (node.op.primitive().name().to_string(), shapes.join(" "));
            let group = groups.entry(key).or_default();
            group.dispatches += 1;
            group.seconds += d.seconds;
            // An op's FLOPs, shared evenly by its dispatches.
            let node_id = exec.plan.launches[d.launch].node;
            group.flops += g.flops(node_id) as f64 / per_launch[&d.launch] as f64;
            group.bytes += d.bytes as f64;
            let (op, side) = match node.phase {
                Phase::Update => ("update", 0),
                Phase::Backward => (g.layers[node.layer].op.as_str(), 1),
                Phase::Forward | Phase::Recompute => (g.layers[node.layer].op.as_str(), 0),
            };
            layer_ops.entry(op).or_default()[side] += d.seconds;
        }
    }
    let steps_f = steps as f64;
    let kernel_seconds: f64 = groups.values().map(|gr| gr.seconds).sum::<f64>() / steps_f;
    let per_second = |amount: f64, seconds: f64| {
        if seconds > 0.0 { amount / seconds } else { 0.0 }
    };
    let mut rows: Vec<ProfileRow> = groups
        .into_iter()
        .map(|((op, shapes), gr)| {
            let seconds = gr.seconds / steps_f;
            let count = gr.dispatches / steps;
            ProfileRow {
                op,
                shapes,
                count,
                total_us: seconds * 1e6,
                mean_us: seconds * 1e6 / count as f64,
                share: per_second(seconds, kernel_seconds),
                gflop_s: per_second(gr.flops, gr.seconds) / 1e9,
                gb_s: per_second(gr.bytes, gr.seconds) / 1e9,
            }
        })
        .collect();
    rows.sort_by(|a, b| b.total_us.total_cmp(&a.total_us));
    let mut layer_ops: Vec<LayerOpRow> = layer_ops
        .into_iter()
        .map(|(op, [fwd, bwd])| LayerOpRow {
            op: op.to_string(),
            forward_us: fwd / steps_f * 1e6,
            backward_us: bwd / steps_f * 1e6,
            share: per_second((fwd + bwd) / steps_f, kernel_seconds),
        })
        .collect();
    layer_ops
        .sort_by(|a, b| (b.forward_us + b.backward_us).total_cmp(&(a.forward_us + a.backward_us)));
    Ok(ProfileResult {
        device: format!("gpu ({})", gpu.describe()),
        batch,
        steps,
        warmup: WARMUP,
        timestamps,
        dispatches_per_step: exec.dispatch_count(),
        step_ms: wall / steps_f * 1e3,
        kernel_ms: kernel_seconds * 1e3,
        rows,
        layer_ops,
    })
}

/// The profile as a table, for `trainer bench --profile` without `--json`.
pub fn profile_table(config: &str, p: &ProfileResult) -> String {
    let mut out = format!(
        "{config}: {} at batch {}: {} dispatches a step, timestamps {}, mean of {} step{}\n",
        p.device,
        p.batch,
        p.dispatches_per_step,
        match p.timestamps {
            Timestamps::InsidePasses => "inside passes",
            Timestamps::PassPerDispatch => "per pass (one pass per dispatch)",
        },
        p.steps,
        if p.steps == 1 { "" } else { "s" },
    );
    let op_width = p.rows.iter().map(|r| r.op.len()).max().unwrap_or(2).max(2);
    out += &format!(
        "{:<op_width$}  {:>5}  {:>11}  {:>10}  {:>6}  {:>9}  {:>8}  shapes\n",
        "op", "count", "total µs", "mean µs", "share", "GFLOP/s", "GB/s"
    );
    for r in &p.rows {
        out += &format!(
            "{:<op_width$}  {:>5}  {:>11.1}  {:>10.2}  {:>5.1}%  {:>9.2}  {:>8.2}  {}\n",
            r.op,
            r.count,
            r.total_us,
            r.mean_us,
            r.share * 100.0,
            r.gflop_s,
            r.gb_s,
            if r.shapes.is_empty() { "-" } else { &r.shapes }
        );
    }
    let width = p
        .layer_ops
        .iter()
        .map(|r| r.op.len())
        .max()
        .unwrap_or(8)
        .max(8);
    out += &format!(
        "\n{:<width$}  {:>11}  {:>11}  {:>11}  {:>6}\n",
        "layer op", "forward µs", "backward µs", "total µs", "share"
    );
    for r in &p.layer_ops {
        out += &format!(
            "{:<width$}  {:>11.1}  {:>11.1}  {:>11.1}  {:>5.1}%\n",
            r.op,
            r.forward_us,
            r.backward_us,
            r.forward_us + r.backward_us,
            r.share * 100.0
        );
    }
    out += &format!(
        "kernels {:.3} ms of a {:.3} ms step ({:.0}%)\n",
        p.kernel_ms,
        p.step_ms,
        if p.step_ms > 0.0 {
            p.kernel_ms / p.step_ms * 100.0
        } else {
            0.0
        }
    );
    out
}

/// `trainer bench --loader`: one loader's pace, measured from the consumer's side.
#[derive(Debug, Serialize)]
pub struct LoaderRate {
    pub batches: usize,
    /// Real samples (an evaluation pass's last batch is padded; padding is not counted).
    pub images: usize,
    pub seconds: f64,
    pub ms_per_batch: f64,
    pub img_per_s: f64,
}

impl LoaderRate {
    fn new(batches: usize, images: usize, seconds: f64) -> LoaderRate {
        let seconds = seconds.max(1e-9);
        LoaderRate {
            batches,
            images,
            seconds,
            ms_per_batch: seconds * 1e3 / batches.max(1) as f64,
            img_per_s: images as f64 / seconds,
        }
    }
}

/// The data path alone: the training `Loader` `fit` uses (the config's dataset, order and
/// augmentation) and one validation pass, with no model.
#[derive(Debug, Serialize)]
pub struct LoaderResult {
    /// The dataset, as `fit` names it.
    pub data: String,
    /// Reading and checking the dataset (once per run).
    pub open_s: f64,
    /// rayon threads the loader assembles each batch on (`RAYON_NUM_THREADS`).
    pub threads: usize,
    pub batch: usize,
    pub eval_batch: usize,
    /// Training batches taken before the timed ones (the thread starting, its queue filling).
    pub warmup: usize,
    pub train: LoaderRate,
    /// One whole pass over the validation split, as each epoch end runs it (thread start
    /// included).
    pub validation: LoaderRate,
}

/// Takes `WARMUP` training batches, then times `steps` more (default: one epoch), then one
/// validation pass. Every batch is made exactly as `fit` makes it.
pub fn run_loader(
    cfg: &crate::config::Config,
    config_dir: &std::path::Path,
    batch: usize,
    steps: Option<usize>,
) -> Result<LoaderResult, DataError> {
    let t0 = Instant::now();
    let splits = data::open_for(&cfg.data, config_dir, &cfg.model.input, cfg.run.seed)?;
    let open_s = t0.elapsed().as_secs_f64();
    let (train_len, seed) = (splits.train.per_epoch(), cfg.run.seed);
    let steps = steps.unwrap_or_else(|| data::batches_per_epoch(train_len, batch).max(1));
    let mut loader = Loader::train(splits.train.clone(), &cfg.data, batch, seed, 0, 0)?;
    let mut next = || match loader.next() {
        Some(b) => b,
        None => Err(DataError::Config("the data loader stopped".into())),
    };
    for _ in 0..WARMUP {
        next()?;
    }
    let t0 = Instant::now();
    for _ in 0..steps {
        next()?;
    }
    let train = LoaderRate::new(steps, steps * batch, t0.elapsed().as_secs_f64());
    drop(loader);

    let eval_batch = cfg.data.eval_batch_size.map_or(batch, |b| b.0);
    let t0 = Instant::now();
    let mut loader = Loader::eval(splits.val.clone(), &cfg.data, eval_batch)?;
    let (mut batches, mut images) = (0, 0);
    while let Some(b) = loader.next() {
        images += b?.len;
        batches += 1;
    }
    let validation = LoaderRate::new(batches, images, t0.elapsed().as_secs_f64());
    Ok(LoaderResult {
        data: splits.source,
        open_s,
        threads: rayon::current_num_threads(),
        batch,
        eval_batch,
        warmup: WARMUP,
        train,
        validation,
    })
}

/// The loader's rates as text, for `trainer bench --loader` without `--json`, in `unit`
/// (images, or a text's tokens).
pub fn loader_text(config: &str, r: &LoaderResult, unit: crate::config::Throughput) -> String {
    let rate = |what: &str, size: usize, l: &LoaderRate| {
        format!(
            "{what}: {} batches of {size} in {:.3} s: {:.3} ms/batch, {:.0} {}\n",
            l.batches,
            l.seconds,
            l.ms_per_batch,
            unit.of(l.img_per_s),
            unit.long
        )
    };
    format!(
        "{config}: data path alone, {} thread{}: {} (opened in {:.2} s)\n{}{}",
        r.threads,
        if r.threads == 1 { "" } else { "s" },
        r.data,
        r.open_s,
        rate(
            &format!("train (after {} warm-up batches)", r.warmup),
            r.batch,
            &r.train
        ),
        rate("validation pass", r.eval_batch, &r.validation),
    )
}
