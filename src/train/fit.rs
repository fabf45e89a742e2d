//! `trainer fit`: the training loop. Everything a step needs is prepared before step 1 (the
//! planned training step, the evaluation model, the data loader thread); each step feeds a batch,
//! sets the learning rate the schedule gives for that step, runs the plan and captures the loss
//! and logits, which are read back without waiting and accounted for in step order when they
//! arrive (`Loop::run` says when it waits). Epoch ends validate, log and checkpoint.
//!
//! Asynchronous accounting: each step's host facts (step number, epoch, batch index and size,
//! labels, LR) go on a FIFO (`Queued`) when the step is launched. Captures are flushed at each
//! log point and polled every step; each one that arrives is matched with its FIFO entry and
//! accounted for by `Loop::complete` exactly as a read right after the step would have been:
//! metrics, the non-finite policy, progress, and log rows at the step's own number. The loop
//! drains (waits for every pending capture) only where the weights of the step just run are
//! needed or the run ends: an epoch end (validation), a due checkpoint (`train.save_every`), a
//! signal, the last step. A non-finite loss stops the run (exit 3) naming its step; since every
//! save follows a drain, no checkpoint is written after a bad step, though later steps may have
//! run. `train.on_nonfinite = "skip_step"` undoes the step instead, which needs its loss before
//! the next step, so that mode drains after every step: `Exec::save_state` copies the State
//! region aside (on the device) before each step and `restore_state` puts it back.
//!
//! Bit-exact resume follows from what is a pure function of what: data order and augmentation
//! of (seed, epoch, position), the learning rate of the step count, dropout of (seed, step), and
//! everything else lives in the saved tensors (weights, running statistics, optimizer moments).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::backend::gpu::Gpu;
use crate::backend::{Exec, PrepareError};
use crate::checkpoint::{Checkpoint, FORMAT_VERSION, NamedTensor, Part, Store, TrainState};
use crate::config::{Config, OnNonfinite, parse_every};
use crate::data::{self, Batch, Loader, Splits};
use crate::graph::Mode;
use crate::nn::build_for;
use crate::tensor::{StepCtx, TensorId};
use crate::train::evaluate::{EvalModel, check_fits, load_named, named_tensors};
use crate::train::logger::Logger;
use crate::train::metrics::{Evaluation, Running};
use crate::train::progress::Progress;
use crate::train::run_dir::{self, Manifest, RunDir};
use crate::train::schedule::LrSchedule;
use crate::train::signals;
use crate::training::training_graph;

/// How a fit is started, beyond its config.
#[derive(Clone, Debug, Default)]
pub struct FitOptions {
    /// Where the config came from (relative `data.path` resolves against its directory).
    pub config_path: PathBuf,
    /// Write the run here instead of `<log.dir>/<run.name>/<time>`.
    pub run_dir: Option<PathBuf>,
    /// Continue the run in this directory from its latest checkpoint.
    pub resume: Option<PathBuf>,
    /// Resume even though the config differs from the run's.
    pub force: bool,
    /// The command line, for the manifest.
    pub command: Vec<String>,
}

/// Why a fit did not finish.
#[derive(Debug, thiserror::Error)]
pub enum FitError {
    /// Bad input: config, data, run directory, a refused resume (exit 2).
    #[error("{0}")]
    User(String),
    /// The model cannot be built or planned: a diagnostic that points into the config (exit 2).
    #[error("{}", .0.message)]
    Config(Box<crate::diag::Diagnostic>),
    /// The loss became NaN or infinite (exit 3).
    #[error("{0}")]
    NonFinite(String),
    /// The device or the file system failed under us (exit 1).
    #[error("{0}")]
    Runtime(String),
}

/// One epoch's (or the final partial epoch's) figures.
#[derive(Clone, Debug, serde::Serialize)]
pub struct EpochRecord {
    pub epoch: u64,
    pub step: u64,
    pub train_loss: f64,
    /// Classification losses only (cross-entropy), like the validation figures.
    pub train_accuracy: Option<f64>,
    pub val_loss: Option<f64>,
    pub val_accuracy: Option<f64>,
    pub lr: f64,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct FitReport {
    pub run_dir: PathBuf,
    /// False when a signal stopped the run (a checkpoint was saved first).
    pub finished: bool,
    pub steps: u64,
    pub history: Vec<EpochRecord>,
    pub best_val_accuracy: Option<f64>,
    pub best_epoch: Option<u64>,
    pub device: String,
}

/// Trains `cfg` on `gpu` (or the CPU), writing the run directory; see the module doc.
pub fn fit(cfg: &Config, gpu: Option<&Gpu>, opts: &FitOptions) -> Result<FitReport, FitError> {
    let started = Instant::now();
    let resumed = opts.resume.is_some();
    let Prepared {
        steps,
        run,
        mut models,
        mut state,
        mut startup,
    } = prepare(cfg, gpu, opts)?;
    signals::install().map_err(FitError::Runtime)?;
    let _watching = signals::watch(&run.path, &run.checkpoints());
    let mut sinks = steps.open_sinks(&run, &state, &models.exec.device(), resumed)?;
    let mut loader = steps.loader_at(&state)?;
    startup.total = started.elapsed().as_secs_f64();
    sinks.progress.message(&startup.line(gpu));
    let result = steps.run(&mut models, &mut loader, &mut state, &mut sinks);
    let history = sinks.close();
    let finished = result?;
    Ok(FitReport {
        run_dir: run.path,
        finished,
        steps: state.step,
        history,
        best_val_accuracy: state.best_metric,
        best_epoch: state.best_epoch,
        device: models.exec.device(),
    })
}

/// Everything a run holds before step 1.
struct Prepared<'a, 'g> {
    /// What the step loop reads.
    steps: Loop<'a>,
    run: RunDir,
    models: Models<'g>,
    /// Step 0, or where the checkpoint a resume starts from left off.
    state: TrainState,
    startup: Startup,
}

/// Seconds each part of a start took, for the line `fit` prints before step 1.
#[derive(Default)]
struct Startup {
    /// From `fit` to step 1 (the device was opened before).
    total: f64,
    data: f64,
    /// The forward graph, its gradients and the planned step.
    plan: f64,
    /// The step's executor: buffers, pipelines, bind groups, initial weights.
    executor: f64,
    /// The evaluation model: its graph, plan and executor.
    eval: f64,
}

impl Startup {
    /// "ready for step 1 in 1.84 s: device 0.21 s, data 0.95 s, plan 0.12 s, executor
    /// 0.40 s, eval model 0.10 s; kernels: 61 pipelines in 0.42 s (naga 0.05 s, driver
    /// 0.37 s), pipeline cache loaded (1.2 MiB)"; the parts need not add up to the whole
    /// (the run directory, a checkpoint to resume from, the loader thread).
    fn line(&self, gpu: Option<&Gpu>) -> String {
        let device = gpu.map_or(0.0, |g| g.opened_in.as_secs_f64());
        let mut line = format!(
            "ready for step 1 in {:.2} s: {}data {:.2} s, plan {:.2} s, executor {:.2} s, eval model {:.2} s",
            device + self.total,
            match gpu {
                Some(_) => format!("device {device:.2} s, "),
                None => String::new(),
            },
            self.data,
            self.plan,
            self.executor,
            self.eval,
        );
        if let Some(g) = gpu {
            line += &format!("; kernels: {}", g.pipeline_stats().summary());
        }
        line
    }
}

/// Decides and opens everything before step 1: the run (new or resumed), the data, the planned
/// step on its executor, the schedule, the run directory and the state to start from. The
/// run directory is made only after everything before it was checked, so a config or data
/// error leaves no directory.
fn prepare<'a, 'g>(
    cfg: &'a Config,
    gpu: Option<&'g Gpu>,
    opts: &FitOptions,
) -> Result<Prepared<'a, 'g>, FitError> {
    let origin = RunOrigin::of(cfg, gpu, opts)?;
    let mut startup = Startup::default();
    let t = Instant::now();
    let (splits, steps_per_epoch) = open_data(cfg, &origin.manifest.config_dir)?;
    startup.data = t.elapsed().as_secs_f64();
    let data = DataFit {
        vocab: splits.vocab.as_deref(),
        labels_per_sample: splits.train.labels_per_sample(),
        source: &splits.source,
    };
    let (mut models, tensors) = build_models(cfg, gpu, &mut startup, data)?;
    let Timeline {
        total_steps,
        schedule,
        save_every,
    } = timeline(cfg, steps_per_epoch)?;
    let run = origin.into_run_dir(cfg, opts)?;
    if let Some(v) = &splits.vocab {
        keep_vocab(&run.path, v)?;
    }
    let store = Store::new(&run.checkpoints(), cfg.train.keep.0);
    let state = match opts.resume {
        Some(_) => resume_state(&store, &run, &mut models.exec)?,
        None => first_state(cfg, &run, &schedule),
    };
    let steps = Loop {
        cfg,
        run_dir: run.path.clone(),
        splits,
        store,
        schedule,
        tensors,
        steps_per_epoch: steps_per_epoch as u64,
        total_steps,
        save_every,
        classify: cfg.loss.kind == crate::config::LossKind::CrossEntropy,
    };
    Ok(Prepared {
        steps,
        run,
        models,
        state,
        startup,
    })
}

/// Where a run comes from: the run being resumed (whose config must match) or the manifest of
/// a new one, whose directory `into_run_dir` makes.
struct RunOrigin {
    /// The config with every default filled in, as config.resolved.toml holds it.
    resolved: String,
    resumed: Option<RunDir>,
    manifest: Manifest,
}

impl RunOrigin {
    fn of(cfg: &Config, gpu: Option<&Gpu>, opts: &FitOptions) -> Result<RunOrigin, FitError> {
        let resolved = cfg.resolved_toml().map_err(FitError::User)?;
        let (resumed, manifest) = match &opts.resume {
            Some(dir) => {
                let (run, manifest) = resume_dir(dir, &resolved, opts.force)?;
                (Some(run), manifest)
            }
            None => (None, new_manifest(cfg, gpu, opts, &resolved)),
        };
        if manifest.device != device_name(gpu) {
            crate::errln!(
                "warning: this run started on {} and continues on {}: it stays correct but is no longer bit-identical to an uninterrupted run",
                manifest.device,
                device_name(gpu)
            );
        }
        Ok(RunOrigin {
            resolved,
            resumed,
            manifest,
        })
    }

    /// The resumed run's directory, or a new one with its config and manifest written.
    fn into_run_dir(self, cfg: &Config, opts: &FitOptions) -> Result<RunDir, FitError> {
        match self.resumed {
            Some(run) => Ok(run),
            None => {
                let path =
                    run_dir::new_path(cfg, opts.run_dir.as_deref()).map_err(FitError::User)?;
                run_dir::create(&path, &self.resolved, &self.manifest).map_err(FitError::User)
            }
        }
    }
}

fn new_manifest(cfg: &Config, gpu: Option<&Gpu>, opts: &FitOptions, resolved: &str) -> Manifest {
    let config_dir = opts
        .config_path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let config_dir = std::fs::canonicalize(&config_dir).unwrap_or(config_dir);
    Manifest {
        trainer_version: env!("CARGO_PKG_VERSION").into(),
        git_commit: run_dir::git_commit(),
        config: opts.config_path.display().to_string(),
        config_dir,
        config_hash: run_dir::hash(resolved),
        seed: cfg.run.seed,
        device: device_name(gpu),
        adapter: gpu.map(|g| g.adapter.clone()),
        command: opts.command.clone(),
        started: chrono::Local::now().to_rfc3339(),
    }
}

/// The dataset's splits (relative paths resolve against `config_dir`) and the training steps
/// in one epoch, at least one.
fn open_data(cfg: &Config, config_dir: &Path) -> Result<(Splits, usize), FitError> {
    let splits = data::open_for(&cfg.data, config_dir, &cfg.model.input, cfg.run.seed)
        .map_err(|e| FitError::User(e.to_string()))?;
    let batch = cfg.data.batch_size.0;
    let steps_per_epoch = data::batches_per_epoch(splits.train.per_epoch(), batch);
    if steps_per_epoch == 0 {
        return Err(FitError::User(format!(
            "the training split has {} {} an epoch, fewer than one batch of {batch}; lower data.batch_size",
            splits.train.per_epoch(),
            if splits.vocab.is_some() {
                "windows"
            } else {
                "samples"
            }
        )));
    }
    Ok((splits, steps_per_epoch))
}

/// A text run's vocabulary in its directory (vocab.json): written by a new run; a resumed
/// run's must equal the text's, or its ids would mean other characters.
fn keep_vocab(run: &Path, vocab: &data::Vocab) -> Result<(), FitError> {
    let path = run.join(data::VOCAB_FILE);
    if path.exists() {
        let old = data::Vocab::load(&path).map_err(|e| FitError::User(e.to_string()))?;
        if &old != vocab {
            return Err(FitError::User(format!(
                "{}: the run's vocabulary ({} ids) differs from the text's ({} ids): the text \
                 has changed since the run started, and the model's ids would mean other symbols",
                path.display(),
                old.len(),
                vocab.len()
            )));
        }
        return Ok(());
    }
    vocab.save(&path).map_err(FitError::Runtime)
}

/// What the model must fit in its data: a text's vocabulary, the labels each sample has, and
/// where the data came from (for messages).
struct DataFit<'a> {
    vocab: Option<&'a data::Vocab>,
    labels_per_sample: usize,
    source: &'a str,
}

/// The loss's labels a sample against the data's: a loss over every position of a sequence
/// needs a dataset that labels every position (`text`), not one label a sample.
fn check_labels(g: &crate::graph::Graph, data: &DataFit) -> Result<(), crate::diag::Diagnostic> {
    let labels = g.ty(g.labels);
    let want = labels.numel() / g.batch.max(1);
    if want == data.labels_per_sample {
        return Ok(());
    }
    let layer = &g.layers[g.dag[g.loss.node()].layer];
    let per_sample = crate::tensor::fmt_shape(&labels.shape[1..]);
    let fix = match data.labels_per_sample {
        1 => {
            "a language model trains on dataset = \"text\" (a label at every position); a \
              classifier pools the positions before its last layer"
        }
        _ => "the model's output must give one prediction a label",
    };
    Err(crate::diag::Diagnostic::new(format!(
        "the loss takes {want} labels a sample ({per_sample}), but {} gives {} a sample",
        data.source, data.labels_per_sample
    ))
    .at(layer.loc, "this loss")
    .note(fix))
}

/// The planned training step on its executor and the evaluation model (see `Models`), with
/// the tensors of the step the loop feeds and reads; notes the seconds each took. The model is
/// first checked against its data: a text's vocabulary, the labels a sample gives.
fn build_models<'g>(
    cfg: &Config,
    gpu: Option<&'g Gpu>,
    startup: &mut Startup,
    data: DataFit,
) -> Result<(Models<'g>, StepTensors), FitError> {
    let t = Instant::now();
    let batch = cfg.data.batch_size.0;
    let eval_batch = cfg.data.eval_batch_size.map_or(batch, |b| b.0);
    let diag = |d: crate::diag::Diagnostic| FitError::Config(Box::new(d));
    let forward = build_for(cfg, batch, Mode::Train).map_err(diag)?;
    if let Some(v) = data.vocab {
        data::text::check_model(&forward, v, data.source).map_err(diag)?;
    }
    check_labels(&forward, &data).map_err(diag)?;
    let train_graph = training_graph(&forward, &cfg.optimizer).map_err(diag)?;
    let plan = crate::schedule::plan(
        &train_graph,
        &cfg.train.checkpointing,
        crate::schedule::Options::of(cfg),
    )
    .map_err(diag)?;
    // The planned graph's ids: fusion renumbers the nodes after a fused one.
    let tensors = StepTensors {
        features: plan.graph.features,
        labels: plan.graph.labels,
        loss: plan.graph.loss,
        output: plan.graph.output,
    };
    startup.plan = t.elapsed().as_secs_f64();
    let t = Instant::now();
    // A plan the device cannot hold (out of memory, above a limit) is the config's to fix.
    let exec = Exec::new(gpu, plan, cfg.run.seed).map_err(|e| match e {
        PrepareError::DoesNotFit(m) => FitError::User(m),
        PrepareError::Failed(m) => FitError::Runtime(m),
    })?;
    startup.executor = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let eval = EvalModel::new(cfg, gpu, eval_batch).map_err(diag)?;
    startup.eval = t.elapsed().as_secs_f64();
    Ok((Models { exec, eval }, tensors))
}

/// How long a run is, its learning rate at each step and when it saves.
struct Timeline {
    total_steps: u64,
    schedule: LrSchedule,
    /// (N, whether N counts epochs rather than steps).
    save_every: (u64, bool),
}

fn timeline(cfg: &Config, steps_per_epoch: usize) -> Result<Timeline, FitError> {
    let user = FitError::User;
    let epochs = cfg.train.epochs.0 as u64;
    let total_steps = {
        let all = epochs * steps_per_epoch as u64;
        cfg.train.max_steps.map_or(all, |m| all.min(m.0 as u64))
    };
    let base_lr = cfg.optimizer.lr();
    let schedule = LrSchedule::new(
        &cfg.schedule,
        base_lr,
        steps_per_epoch,
        total_steps as usize,
    )
    .map_err(user)?;
    let save_every = parse_every(&cfg.train.save_every).ok_or_else(|| {
        user(format!(
            "train.save_every = \"{}\": expected \"N epochs\" or \"N steps\"",
            cfg.train.save_every
        ))
    })?;
    Ok(Timeline {
        total_steps,
        schedule,
        save_every,
    })
}

/// The state of a new run: step 0.
fn first_state(cfg: &Config, run: &RunDir, schedule: &LrSchedule) -> TrainState {
    TrainState {
        format_version: FORMAT_VERSION,
        step: 0,
        epoch: 0,
        batch_in_epoch: 0,
        seed: cfg.run.seed,
        config_hash: run.config_hash.clone(),
        best_metric: None,
        best_epoch: None,
        lr: schedule.lr_at(0),
        trainer_version: env!("CARGO_PKG_VERSION").into(),
    }
}

/// Loads the checkpoint of `run` to continue from into `exec` (weights, buffers and optimizer
/// state: every tensor of the training plan) and returns its state: `latest`, else the newest
/// checkpoint that verifies and fits the plan (`Store::resolve`), with a warning for each one
/// passed over.
fn resume_state(store: &Store, run: &RunDir, exec: &mut Exec) -> Result<TrainState, FitError> {
    let found = store
        .resolve(Part::Whole, &mut |c| {
            check_fits(&exec.plan().graph.params, c)
        })
        .map_err(|e| FitError::User(e.to_string()))?;
    for w in &found.warnings {
        crate::errln!("warning: {w}");
    }
    let ckpt = found.checkpoint;
    let saved: Vec<&NamedTensor> = ckpt.weights.iter().chain(&ckpt.optimizer).collect();
    load_named(exec, &saved)
        .map_err(|e| FitError::User(format!("{}: {e}", found.path.display())))?;
    let state = TrainState {
        config_hash: run.config_hash.clone(),
        ..ckpt.state
    };
    crate::errln!(
        "resuming {} at step {} (epoch {}, batch {}) from {}",
        run.path.display(),
        state.step,
        state.epoch + 1,
        state.batch_in_epoch,
        found.path.display()
    );
    Ok(state)
}

/// `on_nonfinite = "skip_step"` stops the run when this many steps in a row were not finite:
/// the weights themselves have gone bad, and skipping cannot recover them.
const MAX_SKIPPED_IN_A_ROW: usize = 20;

/// What the loop reads but never changes.
struct Loop<'a> {
    cfg: &'a Config,
    /// For messages: where the run is, to resume it.
    run_dir: PathBuf,
    splits: Splits,
    store: Store,
    schedule: LrSchedule,
    tensors: StepTensors,
    steps_per_epoch: u64,
    total_steps: u64,
    save_every: (u64, bool),
    /// Cross-entropy: accuracy and validation make sense.
    classify: bool,
}

/// The tensors of the training step that the loop feeds (a batch) and reads back.
struct StepTensors {
    features: TensorId,
    labels: TensorId,
    loss: TensorId,
    output: TensorId,
}

/// The two executors of a run: the planned training step and the evaluation model, which
/// copies the step's weights to validate.
struct Models<'g> {
    exec: Exec<'g>,
    eval: EvalModel<'g>,
}

/// Where the loop's results go: the log files, the terminal, the epoch history.
struct Sinks {
    logger: Logger,
    progress: Progress,
    history: Vec<EpochRecord>,
}

impl Sinks {
    /// Ends the progress display, writes what the logger still holds (printing its
    /// warnings) and returns the epoch history.
    fn close(self) -> Vec<EpochRecord> {
        let Sinks {
            logger,
            mut progress,
            history,
        } = self;
        progress.finish();
        for w in logger.finish() {
            crate::errln!("warning: {w}");
        }
        history
    }
}

/// A step the loop has queued on the executor and whose loss has not been read back yet: what
/// accounting for it needs, kept in order until its capture arrives.
struct Queued {
    /// 1-based, as logged.
    step: u64,
    epoch: u64,
    index: usize,
    len: usize,
    /// Only for accuracy (cross-entropy); empty otherwise.
    labels: Vec<f32>,
    /// Labels a sample: 1, or T for text (accuracy and loss count positions).
    labels_per_sample: usize,
    lr: f64,
}

/// A queued step whose capture arrived.
struct Arrived {
    queued: Queued,
    /// The captured loss (and logits, when classifying).
    values: Vec<Vec<f32>>,
    /// No step was queued after it, so the executor holds its weights (validation and undoing
    /// a step need that; the loop drains at those steps).
    current: bool,
}

/// Figures kept between log points and epoch ends.
struct Books {
    window: Running,
    epoch: Running,
    window_start: Instant,
    window_images: usize,
    skipped_in_a_row: usize,
}

impl Loop<'_> {
    /// The logger and the progress display. A resumed run first forgets the CSV rows its
    /// interrupted process logged after the checkpoint, and marks the restart for TensorBoard.
    fn open_sinks(
        &self,
        run: &RunDir,
        state: &TrainState,
        device: &str,
        resumed: bool,
    ) -> Result<Sinks, FitError> {
        let cfg = self.cfg;
        if resumed {
            crate::train::logger::forget_rows_after(&run.path, state.step)
                .map_err(FitError::Runtime)?;
        }
        let logger = Logger::start(&run.path, &cfg.log);
        let progress = Progress::new(
            cfg.log.progress,
            self.total_steps as usize,
            self.steps_per_epoch as usize,
            state.step as usize,
            cfg.data.throughput(),
        );
        if resumed {
            logger.session_start(state.step);
        }
        progress.message(&format!(
            "training {} on {}: {}, {} steps of {} ({} per epoch), run dir {}",
            cfg.run.name,
            device,
            self.splits.source,
            self.total_steps,
            cfg.data.batch_size.0,
            self.steps_per_epoch,
            run.path.display()
        ));
        Ok(Sinks {
            logger,
            progress,
            history: Vec::new(),
        })
    }

    /// The training batches from where `state` left off.
    fn loader_at(&self, state: &TrainState) -> Result<Loader, FitError> {
        Loader::train(
            self.splits.train.clone(),
            &self.cfg.data,
            self.cfg.data.batch_size.0,
            self.cfg.run.seed,
            state.epoch,
            state.batch_in_epoch as usize,
        )
        .map_err(|e| FitError::User(e.to_string()))
    }

    /// Steps until done (Ok(true)) or a signal (Ok(false), after a checkpoint).
    ///
    /// The host never waits for a step to feed the next: each step is followed by a capture
    /// of its loss (and logits), read back without blocking and accounted for (`complete`)
    /// when it arrives, at the latest a log interval later (`Exec::flush_captures` at each log
    /// point). The loop waits for every pending result (`Exec::drain_captures`) only where the
    /// weights of the step just run are needed or the run ends: an epoch end (validation), a
    /// checkpoint, a signal, the last step; so a non-finite loss is found before any
    /// checkpoint after it. `on_nonfinite = "skip_step"` waits after every step, since the
    /// step must be undone before the next runs.
    fn run(
        &self,
        models: &mut Models,
        loader: &mut Loader,
        state: &mut TrainState,
        sinks: &mut Sinks,
    ) -> Result<bool, FitError> {
        let rt = FitError::Runtime;
        let every = self.cfg.log.every_steps.0 as u64;
        let skip_bad = self.cfg.train.on_nonfinite == OnNonfinite::SkipStep;
        let reads = match self.classify {
            true => vec![self.tensors.loss, self.tensors.output],
            false => vec![self.tensors.loss],
        };
        let mut books = Books {
            window: Running::new(),
            epoch: Running::new(),
            window_start: Instant::now(),
            window_images: 0,
            skipped_in_a_row: 0,
        };
        let slow_step = signals::test_slow_step().map_err(FitError::User)?;
        let mut queued: VecDeque<Queued> = VecDeque::new();
        // Capture k of this executor is step `first + k + 1`.
        let first = state.step;
        let mut issued = state.step;
        while issued < self.total_steps {
            let batch: Batch = loader
                .next()
                .ok_or_else(|| rt("the data loader stopped".into()))?
                .map_err(|e| FitError::User(e.to_string()))?;
            let lr = self.schedule.lr_at(issued as usize);
            let ctx = StepCtx {
                lr,
                step: issued + 1,
                seed: state.seed,
            };
            self.launch(&mut models.exec, &batch, ctx, &reads)?;
            if let Some(d) = slow_step {
                std::thread::sleep(d);
            }
            issued += 1;
            let epoch_done = batch.index as u64 + 1 == self.steps_per_epoch;
            let last = issued == self.total_steps;
            let (n, epochs) = self.save_every;
            let due = match epochs {
                true => epoch_done && (batch.epoch + 1).is_multiple_of(n),
                false => issued.is_multiple_of(n),
            };
            queued.push_back(Queued {
                step: issued,
                epoch: batch.epoch,
                index: batch.index,
                len: batch.len,
                labels_per_sample: batch.labels_per_sample,
                labels: if self.classify {
                    batch.labels
                } else {
                    Vec::new()
                },
                lr,
            });
            let exec = &mut models.exec;
            if issued.is_multiple_of(every) {
                exec.flush_captures().map_err(rt)?;
            }
            let stop = signals::stop_requested();
            let sync = skip_bad || epoch_done || last || due || stop;
            let arrived = match sync {
                true => exec.drain_captures(),
                false => exec.poll_captures(),
            }
            .map_err(rt)?;
            let mut best = false;
            for c in arrived {
                let q = queued
                    .pop_front()
                    .filter(|q| q.step == first + c.seq + 1)
                    .ok_or_else(|| {
                        rt(format!(
                            "internal error: capture {} arrived out of step order",
                            c.seq
                        ))
                    })?;
                let arrived = Arrived {
                    queued: q,
                    values: c.values,
                    current: sync && queued.is_empty(),
                };
                best = self.complete(arrived, models, state, &mut books, sinks)?;
            }
            if !sync {
                continue;
            }
            if !queued.is_empty() {
                return Err(rt(format!(
                    "internal error: {} steps' losses missing after a drain",
                    queued.len()
                )));
            }
            if due || last || stop {
                self.save(&models.exec, state, best)?;
                sinks.logger.flush();
            }
            if stop {
                sinks.progress.message(&format!(
                    "stopped at step {}: checkpoint saved; continue with `trainer resume {}`",
                    state.step,
                    self.run_dir.display()
                ));
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Runs one training step on `batch` and queues the capture of what the loop reads back
    /// (`reads`). Under `on_nonfinite = "skip_step"` the state is first copied aside, so a
    /// non-finite step can be undone.
    fn launch(
        &self,
        exec: &mut Exec,
        batch: &Batch,
        ctx: StepCtx,
        reads: &[TensorId],
    ) -> Result<(), FitError> {
        let rt = FitError::Runtime;
        exec.feed(self.tensors.features, &batch.features)
            .map_err(rt)?;
        exec.feed(self.tensors.labels, &batch.labels).map_err(rt)?;
        if self.cfg.train.on_nonfinite == OnNonfinite::SkipStep {
            exec.save_state().map_err(rt)?;
        }
        exec.step(ctx).map_err(rt)?;
        exec.capture(reads).map_err(rt)
    }

    /// Accounts for one step whose loss (and logits) arrived, exactly as if it had been read
    /// right after the step: the non-finite policy, metrics, log rows at the step's own number,
    /// the progress bar and, at an epoch end, validation. Returns whether this epoch end was
    /// the best so far.
    fn complete(
        &self,
        arrived: Arrived,
        models: &mut Models,
        state: &mut TrainState,
        books: &mut Books,
        sinks: &mut Sinks,
    ) -> Result<bool, FitError> {
        let Arrived {
            queued: q,
            values,
            current,
        } = arrived;
        let rt = FitError::Runtime;
        let behind = || {
            rt(format!(
                "internal error: step {} accounted for after later steps ran",
                q.step
            ))
        };
        let every = self.cfg.log.every_steps.0 as u64;
        let skip_bad = self.cfg.train.on_nonfinite == OnNonfinite::SkipStep;
        let loss = match values.first().and_then(|v| v.first()) {
            Some(&l) => l as f64,
            None => return Err(rt("internal error: a capture without the loss".into())),
        };
        if loss.is_finite() {
            books.skipped_in_a_row = 0;
            // Per position for text: the loss is the mean over all of them.
            let rows = q.len * q.labels_per_sample;
            let correct = values.get(1).map_or(0, |l| correct(l, &q.labels, rows));
            books.window.add(loss, correct, rows);
            books.epoch.add(loss, correct, rows);
        } else if !skip_bad || books.skipped_in_a_row + 1 >= MAX_SKIPPED_IN_A_ROW {
            return self.non_finite(loss, state, books.skipped_in_a_row);
        } else {
            // The update ran in the same plan as the loss: undo it. The batch and the step
            // number are used up, as PyTorch's scheduler still steps when GradScaler skips.
            if !current {
                return Err(behind());
            }
            models.exec.restore_state().map_err(rt)?;
            books.skipped_in_a_row += 1;
            sinks.progress.message(&format!(
                "warning: the loss is {loss} at step {}: step skipped (weights, statistics and optimizer state unchanged)",
                q.step
            ));
        }
        books.window_images += q.len;
        state.step = q.step;
        state.batch_in_epoch = q.index as u64 + 1;
        state.epoch = q.epoch;
        state.lr = q.lr;
        let lr = q.lr;

        let epoch_done = state.batch_in_epoch == self.steps_per_epoch;
        let last = state.step == self.total_steps;
        // One metrics.csv row per log point and per epoch end (one row when both).
        let mut row: Vec<(&str, f64)> = Vec::new();
        if state.step.is_multiple_of(every) || last {
            let secs = books.window_start.elapsed().as_secs_f64();
            let img_per_s = books.window_images as f64 / secs.max(1e-9);
            row.push(("train/loss", books.window.mean_loss().unwrap_or(loss)));
            if let Some(a) = books.window.accuracy().filter(|_| self.classify) {
                row.push(("train/accuracy", a));
            }
            row.extend([("lr", lr), ("img_per_s", img_per_s)]);
            books.window.reset();
            books.window_start = Instant::now();
            books.window_images = 0;
        }
        sinks.progress.update(
            state.step as usize,
            state.epoch as usize + 1,
            books.epoch.mean_loss().unwrap_or(loss),
            books.epoch.accuracy().filter(|_| self.classify),
            q.len,
        );

        let mut best = false;
        if epoch_done || last {
            if !current {
                return Err(behind());
            }
            let val = match self.classify {
                true => Some(self.validate(&models.exec, &mut models.eval)?),
                false => None,
            };
            let record = EpochRecord {
                epoch: state.epoch + 1,
                step: state.step,
                train_loss: books.epoch.mean_loss().unwrap_or(loss),
                train_accuracy: books.epoch.accuracy().filter(|_| self.classify),
                val_loss: val.as_ref().and_then(Evaluation::loss),
                val_accuracy: val.as_ref().and_then(Evaluation::accuracy),
                lr,
            };
            if let Some(acc) = record.val_accuracy {
                best = state.best_metric.is_none_or(|b| acc > b);
                if best {
                    state.best_metric = Some(acc);
                    state.best_epoch = Some(record.epoch);
                }
            }
            for (tag, v) in [
                ("val/loss", record.val_loss),
                ("val/accuracy", record.val_accuracy),
            ] {
                row.extend(v.map(|v| (tag, v)));
            }
            sinks
                .progress
                .message(&epoch_line(&record, self.cfg.train.epochs.0, best));
            sinks.history.push(record);
            books.epoch.reset();
        }
        if !row.is_empty() {
            for &(tag, v) in &row {
                sinks.logger.scalar(tag, state.step, v);
            }
            let epoch_pos = state.step as f64 / self.steps_per_epoch as f64;
            sinks.logger.row(state.step, epoch_pos, &row);
        }
        if epoch_done {
            state.epoch += 1;
            state.batch_in_epoch = 0;
        }
        Ok(best)
    }
    fn validate(&self, exec: &Exec, eval: &mut EvalModel) -> Result<Evaluation, FitError> {
        eval.copy_from(exec).map_err(FitError::Runtime)?;
        eval.evaluate(self.splits.val.clone(), &self.cfg.data)
            .map_err(FitError::Runtime)
    }

    fn save(&self, exec: &Exec, state: &TrainState, best: bool) -> Result<(), FitError> {
        let mut ckpt = checkpoint_of(exec, state).map_err(FitError::Runtime)?;
        if let Some(v) = &self.splits.vocab {
            ckpt.extra
                .push((data::VOCAB_FILE.into(), v.to_json().into_bytes()));
        }
        self.store
            .save(&ckpt, best)
            .map_err(|e| FitError::Runtime(e.to_string()))?;
        Ok(())
    }

    fn non_finite(&self, loss: f64, state: &TrainState, skipped: usize) -> Result<bool, FitError> {
        let last = match self.store.latest_dir() {
            Some(d) => format!("the last good checkpoint is {}", d.display()),
            None => "no checkpoint was saved before it".into(),
        };
        let what = match self.cfg.train.on_nonfinite {
            OnNonfinite::Stop => "stopping".to_string(),
            OnNonfinite::SkipStep => {
                format!("stopping after skipping the {skipped} steps before it too")
            }
        };
        Err(FitError::NonFinite(format!(
            "the loss is {loss} at step {} (epoch {}): {what}; {last}. Lower optimizer.lr or set optimizer.clip_grad_norm",
            state.step + 1,
            state.epoch + 1
        )))
    }
}

fn epoch_line(r: &EpochRecord, epochs: usize, best: bool) -> String {
    let pct = |v: Option<f64>| {
        v.map(|a| format!(" acc {:.2}%", 100.0 * a))
            .unwrap_or_default()
    };
    let val = match r.val_loss {
        Some(l) => format!(" | val loss {l:.4}{}", pct(r.val_accuracy)),
        None => String::new(),
    };
    format!(
        "epoch {}/{epochs}: train loss {:.4}{}{val}{}",
        r.epoch,
        r.train_loss,
        pct(r.train_accuracy),
        if best { " (best)" } else { "" }
    )
}

/// How many of the first `len` rows' arg-max equal their label (a row: a sample's logits, or
/// one position's for text).
fn correct(logits: &[f32], labels: &[f32], len: usize) -> usize {
    let classes = logits.len() / labels.len().max(1);
    (0..len)
        .filter(|&r| {
            let row = &logits[r * classes..(r + 1) * classes];
            let arg = (0..classes)
                .max_by(|&a, &b| row[a].total_cmp(&row[b]).then(b.cmp(&a)))
                .unwrap_or(0);
            arg as f32 == labels[r]
        })
        .count()
}

fn checkpoint_of(exec: &Exec, state: &TrainState) -> Result<Checkpoint, String> {
    let tensors = named_tensors(exec)?;
    let g = &exec.plan().graph;
    let (mut weights, mut optimizer) = (Vec::new(), Vec::new());
    for (t, p) in tensors.into_iter().zip(&g.params) {
        match p.optimizer_of {
            None => weights.push(t),
            Some(_) => optimizer.push(t),
        }
    }
    // A tied parameter under its second name too (PyTorch's state_dict lists both).
    for (alias, index) in &g.tied {
        let name = &g.params[*index].name;
        if let Some(t) = weights.iter().find(|t| &t.name == name) {
            let copy = NamedTensor {
                name: alias.clone(),
                ..t.clone()
            };
            weights.push(copy);
        }
    }
    Ok(Checkpoint {
        weights,
        optimizer,
        state: state.clone(),
        extra: Vec::new(),
    })
}

fn resume_dir(dir: &Path, resolved: &str, force: bool) -> Result<(RunDir, Manifest), FitError> {
    // Locked first: nothing of the run is read while another process may be writing it.
    let (lock, old, manifest) = run_dir::open(dir).map_err(FitError::User)?;
    let diff = run_dir::differences(&old, resolved).map_err(FitError::User)?;
    if !diff.is_empty() {
        if !force {
            return Err(FitError::User(format!(
                "the config differs from the run's {} in {} key(s):\n  {}\nresume with the run's own config (`trainer resume {}`), or pass --force to continue with the new one",
                dir.join(run_dir::RESOLVED).display(),
                diff.len(),
                diff.join("\n  "),
                dir.display()
            )));
        }
        crate::errln!(
            "warning: --force: continuing with a config that differs in:\n  {}",
            diff.join("\n  ")
        );
    }
    Ok((
        RunDir {
            path: dir.to_path_buf(),
            config_hash: run_dir::hash(resolved),
            lock,
        },
        manifest,
    ))
}

fn device_name(gpu: Option<&Gpu>) -> String {
    match gpu {
        Some(g) => format!("gpu ({}, {})", g.adapter.name, g.adapter.backend),
        None => "cpu".into(),
    }
}
