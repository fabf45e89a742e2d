//! The command line (clap). Exit codes: 0 success; 2 user error (bad config, data or
//! arguments, a plan that does not fit the GPU, a run directory another process writes); 3 a
//! non-finite loss; 130 stopped by a signal after a checkpoint; 131 stopped at once by a second
//! interrupt; 1 internal, device or disk error.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config;
use crate::diag::Errors;
use crate::graph;

#[derive(Parser)]
#[command(name = "trainer", version, about = "Train neural networks described in one TOML file", long_about = None)]
pub struct Cli {
    /// Override a config value: --set optimizer.lr=0.05 (repeatable; applied in order).
    #[arg(long = "set", global = true, value_name = "KEY.PATH=VALUE")]
    pub set: Vec<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Validate a config and print each layer's output shape, parameters and FLOPs.
    Check(CheckArgs),
    /// Print the forward graph as Graphviz DOT or JSON.
    Graph(GraphArgs),
    /// Plan one training step: launches, FLOPs, memory, recomputation
    Plan(PlanArgs),
    /// Time full training steps on synthetic data, or the data loader alone (--loader)
    Bench(BenchArgs),
    /// Train a config: data, validation every epoch, TensorBoard and CSV logs, checkpoints
    Fit(FitArgs),
    /// Continue a run from its latest checkpoint, bit for bit, with the run's own config
    Resume(ResumeArgs),
    /// Evaluate a checkpoint: loss, accuracy, per-class accuracy, confusion matrix
    Eval(EvalArgs),
    /// Classify inputs (IDX image files, PNG or JPEG images) with a checkpoint
    Predict(PredictArgs),
    /// Sample text from a language model's checkpoint, reproducibly by seed
    ///
    /// By default a key/value cache keeps each token's keys and values on the device, so a new
    /// token costs one position, not the whole window. A learned position table ends at the
    /// model's block_size: when the context outgrows it, the cache is refilled from the last
    /// block_size/2 tokens (a context shift) and sampling goes on. Up to block_size tokens the
    /// text is the uncached model's; past it, the uncached model (--no-cache) slides its window
    /// by one token every token (nanoGPT's generate), so the two texts may differ from there.
    /// Models without causal attention run uncached.
    Generate(GenerateArgs),
    /// List the GPU adapters wgpu can see: name, backend, driver, limits, features
    Devices(DevicesArgs),
}

// The arguments of each subcommand. These structs carry no doc comment: a subcommand's help
// is the doc comment on its `Command` variant.
#[derive(Args)]
pub struct CheckArgs {
    pub config: PathBuf,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    /// Batch size for the graph (default: data.batch_size).
    #[arg(long, value_parser = batch_size)]
    pub batch: Option<usize>,
}

#[derive(Args)]
pub struct GraphArgs {
    pub config: PathBuf,
    #[arg(long, value_enum, default_value_t = GraphFormat::Dot)]
    pub format: GraphFormat,
    /// Batch size for the graph (default: data.batch_size).
    #[arg(long, value_parser = batch_size)]
    pub batch: Option<usize>,
    /// The whole training step: forward, backward and optimizer updates
    #[arg(long)]
    pub backward: bool,
}

#[derive(Args)]
pub struct PlanArgs {
    pub config: PathBuf,
    /// Machine-readable output
    #[arg(long)]
    pub json: bool,
    /// Every launch, one a line: op, layer, phase, shapes, memory slots
    #[arg(long, conflicts_with = "json")]
    pub launches: bool,
    /// Batch size (default: data.batch_size)
    #[arg(long, value_parser = batch_size)]
    pub batch: Option<usize>,
}

#[derive(Args)]
pub struct BenchArgs {
    pub config: PathBuf,
    /// Backend (default: the config's run.device)
    #[arg(long, value_enum)]
    pub device: Option<Device>,
    /// Timed steps after two warm-up steps (default 10; with --loader, batches: one epoch)
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100000))]
    pub steps: Option<u32>,
    /// Batch size (default: data.batch_size)
    #[arg(long, value_parser = batch_size)]
    pub batch: Option<usize>,
    /// Machine-readable output
    #[arg(long)]
    pub json: bool,
    /// GPU: time every kernel of `--steps` steps (timestamp queries), grouped by op and shape
    #[arg(long)]
    pub profile: bool,
    /// The data path alone (no model): the training loader with the config's augmentation,
    /// then one validation pass, in images/s
    #[arg(long, conflicts_with_all = ["profile", "device"])]
    pub loader: bool,
}

#[derive(Args)]
pub struct FitArgs {
    pub config: PathBuf,
    /// Write the run here instead of <log.dir>/<run.name>/<YYYYmmdd-HHMMSS>
    #[arg(long, value_name = "DIR")]
    pub run_dir: Option<PathBuf>,
    /// Continue the run in RUN_DIR from its latest checkpoint
    #[arg(long, value_name = "RUN_DIR", conflicts_with = "run_dir")]
    pub resume: Option<PathBuf>,
    /// With --resume: continue even though the config differs from the run's
    #[arg(long, requires = "resume")]
    pub force: bool,
    /// Backend (default: the config's run.device)
    #[arg(long, value_enum)]
    pub device: Option<Device>,
}

#[derive(Args)]
pub struct ResumeArgs {
    pub run_dir: PathBuf,
    /// Continue even though --set makes the config differ from the run's
    #[arg(long)]
    pub force: bool,
    /// Backend (default: the config's run.device)
    #[arg(long, value_enum)]
    pub device: Option<Device>,
}

#[derive(Args)]
pub struct EvalArgs {
    pub config: PathBuf,
    /// A checkpoint directory, a run directory (its latest valid checkpoint) or a .safetensors file
    #[arg(long, value_name = "PATH")]
    pub checkpoint: PathBuf,
    /// Which split to evaluate
    #[arg(long, value_enum, default_value_t = SplitName::Test)]
    pub split: SplitName,
    /// Backend (default: the config's run.device)
    #[arg(long, value_enum)]
    pub device: Option<Device>,
    /// Machine-readable output
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct PredictArgs {
    pub config: PathBuf,
    /// A checkpoint directory, a run directory (its latest valid checkpoint) or a .safetensors file
    #[arg(long, value_name = "PATH")]
    pub checkpoint: PathBuf,
    /// IDX image files or PNG/JPEG images
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// How many classes to show per input
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub top_k: u32,
    /// Backend (default: the config's run.device)
    #[arg(long, value_enum)]
    pub device: Option<Device>,
    /// Machine-readable output
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct GenerateArgs {
    pub config: PathBuf,
    /// A checkpoint directory, a run directory (its latest valid checkpoint) or a .safetensors file
    #[arg(long, value_name = "PATH")]
    pub checkpoint: PathBuf,
    /// The text to continue (default: a newline)
    #[arg(long, default_value = "")]
    pub prompt: String,
    /// How many tokens to sample
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub tokens: u32,
    /// Divides the logits: below 1 sharper, above 1 flatter, 0 always the most likely token
    #[arg(long, default_value_t = 0.8, value_parser = temperature)]
    pub temperature: f64,
    /// Draw only from the k most likely tokens (default: all)
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub top_k: Option<u32>,
    /// Seeds the sampling: the same seed gives the same text
    #[arg(long, default_value_t = 1337)]
    pub seed: u64,
    /// Run the whole window for every token, without the key/value cache (nanoGPT's generate:
    /// past block_size tokens the window slides by one token instead of a context shift)
    #[arg(long)]
    pub no_cache: bool,
    /// Backend (default: the config's run.device)
    #[arg(long, value_enum)]
    pub device: Option<Device>,
    /// Machine-readable output
    #[arg(long)]
    pub json: bool,
}

fn temperature(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(t) if t.is_finite() && (0.0..=100.0).contains(&t) => Ok(t),
        _ => Err(format!("`{s}` is not a temperature in [0, 100]")),
    }
}

#[derive(Args)]
pub struct DevicesArgs {
    /// Machine-readable output
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
pub enum SplitName {
    Test,
    Val,
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
pub enum Device {
    Auto,
    Cpu,
    Gpu,
}

/// The backend a run gets: `auto` takes a GPU where one opens, else the CPU with a notice.
enum Backend {
    Cpu,
    Gpu(Box<crate::backend::gpu::Gpu>),
}

fn open_backend(device: Device) -> Result<Backend, u8> {
    match device {
        Device::Cpu => Ok(Backend::Cpu),
        Device::Gpu => match crate::backend::gpu::Gpu::new() {
            Ok(g) => Ok(Backend::Gpu(Box::new(g))),
            Err(e) => {
                crate::errln!("error: --device gpu: {e}");
                Err(2)
            }
        },
        Device::Auto => match crate::backend::gpu::Gpu::new() {
            // A software adapter (Mesa's lavapipe) is a CPU too, and slower than ours.
            Ok(g) if g.adapter.device_type == "Cpu" => {
                crate::errln!(
                    "note: running on the CPU: the only GPU adapter is a software one ({}); --device gpu forces it",
                    g.adapter.name
                );
                Ok(Backend::Cpu)
            }
            Ok(g) => Ok(Backend::Gpu(Box::new(g))),
            // A misspelled WGPU_BACKEND is the user's to fix, not a machine without a GPU.
            Err(e @ crate::backend::gpu::GpuError::Setting(_)) => {
                crate::errln!("error: {e}");
                Err(e.exit_code())
            }
            Err(e) => {
                crate::errln!("note: running on the CPU: {e}");
                Ok(Backend::Cpu)
            }
        },
    }
}

fn batch_size(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=i32::MAX as usize).contains(&n) => Ok(n),
        _ => Err("expected an integer from 1 to 2147483647".into()),
    }
}

#[derive(Clone, Copy, ValueEnum)]
pub enum GraphFormat {
    Dot,
    Json,
}

/// Runs the CLI; returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(code) => ExitCode::from(code),
    }
}

/// Runs the subcommand given.
fn run(cli: Cli) -> Result<(), u8> {
    let sets = &cli.set;
    match cli.command {
        Command::Check(args) => check(args, sets),
        Command::Graph(args) => print_graph(args, sets),
        Command::Plan(args) => print_plan(args, sets),
        Command::Bench(args) => bench(args, sets),
        Command::Fit(args) => fit(args, sets),
        Command::Resume(args) => resume(args, sets),
        Command::Eval(args) => eval(args, sets),
        Command::Predict(args) => predict(args, sets),
        Command::Generate(args) => generate(args, sets),
        Command::Devices(args) => devices(args, sets),
    }
}

/// `trainer check`: the layer table, or its JSON.
fn check(args: CheckArgs, sets: &[String]) -> Result<(), u8> {
    let CheckArgs {
        config,
        json,
        batch,
    } = args;
    let (g, sources) = build_graph(&config, sets, batch);
    let g = match g {
        Ok(g) => g,
        // Scripts read the errors as JSON on stdout; a person still sees them on stderr.
        Err(e) if json => {
            let errors: Vec<serde_json::Value> = e.0.iter().map(|d| d.to_json(&sources)).collect();
            let v = serde_json::json!({
                "config": config.display().to_string(),
                "ok": false,
                "errors": errors,
            });
            print_out(&(serde_json::to_string_pretty(&v).map_err(internal)? + "\n"))?;
            return Err(user_error(&e, &sources));
        }
        Err(e) => return Err(user_error(&e, &sources)),
    };
    let summary = graph::summary::summarize(&g, &sources);
    if json {
        let v = serde_json::to_value(&summary).map_err(internal)?;
        let mut obj = serde_json::Map::new();
        obj.insert("config".into(), config.display().to_string().into());
        obj.insert("ok".into(), true.into());
        obj.insert("batch".into(), g.batch.into());
        if let serde_json::Value::Object(m) = v {
            obj.extend(m);
        }
        print_out(&(serde_json::to_string_pretty(&obj).map_err(internal)? + "\n"))
    } else {
        print_out(&format!("{}: ok\n{}", config.display(), summary.table()))
    }
}

/// `trainer graph`: the forward graph (or with `backward` the whole training step) as DOT or
/// JSON.
fn print_graph(args: GraphArgs, sets: &[String]) -> Result<(), u8> {
    let GraphArgs {
        config,
        format,
        batch,
        backward,
    } = args;
    let (g, sources) = load_graph(&config, sets, batch)?;
    let g = match backward {
        false => g,
        true => {
            let cfg = load_config(&config, sets)?;
            crate::training::training_graph(&g, &cfg.optimizer)
                .map_err(|d| user_error(&d.into(), &sources))?
        }
    };
    let text = match format {
        GraphFormat::Dot => graph::export::dot(&g),
        GraphFormat::Json => {
            serde_json::to_string_pretty(&graph::export::json(&g)).map_err(internal)? + "\n"
        }
    };
    print_out(&text)
}

/// `trainer plan`: the planned training step's statistics, as text or JSON, or its launches.
fn print_plan(args: PlanArgs, sets: &[String]) -> Result<(), u8> {
    let PlanArgs {
        config,
        json,
        launches,
        batch,
    } = args;
    let (plan, _) = plan_step(&config, sets, batch)?;
    let stats = &plan.stats;
    if launches {
        print_out(&crate::schedule::report::launches(
            &config.display().to_string(),
            &plan,
        ))
    } else if json {
        let mut v = serde_json::to_value(stats).map_err(internal)?;
        v["config"] = config.display().to_string().into();
        print_out(&(serde_json::to_string_pretty(&v).map_err(internal)? + "\n"))
    } else {
        print_out(&format!(
            "{}\n",
            crate::schedule::report(&config.display().to_string(), stats)
        ))
    }
}

/// `trainer bench`: times training steps on the chosen backend.
fn bench(args: BenchArgs, sets: &[String]) -> Result<(), u8> {
    let BenchArgs {
        config,
        device,
        steps,
        batch,
        json,
        profile,
        loader,
    } = args;
    if loader {
        return bench_loader(&config, sets, batch, steps.map(|s| s as usize), json);
    }
    let (plan, cfg) = plan_step(&config, sets, batch)?;
    let device = device_of(device, &cfg);
    let (seed, steps) = (cfg.run.seed, steps.map_or(10, |s| s as usize));
    let unit = cfg.data.throughput();
    if profile {
        let Backend::Gpu(gpu) = open_backend(device)? else {
            crate::errln!("error: --profile times GPU kernels: pass --device gpu");
            return Err(2);
        };
        let result = crate::bench::profile_gpu(&gpu, plan, seed, steps).map_err(|e| {
            crate::errln!("error: {e}");
            e.exit_code()
        })?;
        return if json {
            print_out(&(serde_json::to_string_pretty(&result).map_err(internal)? + "\n"))
        } else {
            print_out(&crate::bench::profile_table(
                &config.display().to_string(),
                &result,
            ))
        };
    }
    let result = match open_backend(device)? {
        Backend::Cpu => crate::bench::run(plan, seed, steps),
        Backend::Gpu(gpu) => crate::bench::run_gpu(&gpu, plan, seed, steps),
    }
    .map_err(|e| {
        crate::errln!("error: {e}");
        e.exit_code()
    })?;
    if json {
        print_out(&(serde_json::to_string_pretty(&result).map_err(internal)? + "\n"))
    } else {
        let submits = match result.submits_per_step {
            Some(n) => format!(", {n} submit{} a step", if n == 1 { "" } else { "s" }),
            None => String::new(),
        };
        print_out(&format!(
            "{}: {} at batch {}: {:.1} ms/step ({} steps{submits}), {:.0} {}\n{}\n",
            config.display(),
            result.device,
            result.batch,
            result.step_ms,
            result.steps,
            unit.of(result.img_per_s),
            unit.long,
            result.startup.line(),
        ))
    }
}

/// `trainer bench --loader`: the training data path's pace, and a validation pass's.
fn bench_loader(
    config: &std::path::Path,
    sets: &[String],
    batch: Option<usize>,
    steps: Option<usize>,
    json: bool,
) -> Result<(), u8> {
    let cfg = load_config(config, sets)?;
    let dir = config.parent().unwrap_or(std::path::Path::new("."));
    let batch = batch.unwrap_or(cfg.data.batch_size.0);
    let result = crate::bench::run_loader(&cfg, dir, batch, steps).map_err(|e| {
        crate::errln!("error: {e}");
        2
    })?;
    if json {
        print_out(&(serde_json::to_string_pretty(&result).map_err(internal)? + "\n"))
    } else {
        print_out(&crate::bench::loader_text(
            &config.display().to_string(),
            &result,
            cfg.data.throughput(),
        ))
    }
}

/// `trainer fit`: a new run, or with `resume` the continuation of one under this config.
fn fit(args: FitArgs, sets: &[String]) -> Result<(), u8> {
    let FitArgs {
        config,
        run_dir,
        resume,
        force,
        device,
    } = args;
    let opts = crate::train::fit::FitOptions {
        config_path: config,
        run_dir,
        resume,
        force,
        command: std::env::args().collect(),
    };
    train(sets, device, &opts)
}

/// `trainer resume`: continues a run with the config it saved.
fn resume(args: ResumeArgs, sets: &[String]) -> Result<(), u8> {
    let ResumeArgs {
        run_dir,
        force,
        device,
    } = args;
    let resolved = run_dir.join(crate::train::run_dir::RESOLVED);
    // is_file, not exists: config loading would block forever on a FIFO.
    if !resolved.is_file() {
        crate::errln!(
            "error: {} is not a run directory (it has no {} file)",
            run_dir.display(),
            crate::train::run_dir::RESOLVED
        );
        return Err(2);
    }
    let opts = crate::train::fit::FitOptions {
        config_path: resolved,
        run_dir: None,
        resume: Some(run_dir),
        force,
        command: std::env::args().collect(),
    };
    train(sets, device, &opts)
}

/// `trainer eval`: a checkpoint's loss and accuracy on the test or validation split.
fn eval(args: EvalArgs, sets: &[String]) -> Result<(), u8> {
    let EvalArgs {
        config,
        checkpoint,
        split,
        device,
        json,
    } = args;
    let cfg = load_config(&config, sets)?;
    let backend = open_backend(device_of(device, &cfg))?;
    let result = crate::train::inference::evaluate(
        &cfg,
        &config,
        gpu_of(&backend),
        &checkpoint,
        split == SplitName::Val,
    );
    report(result, json, |r| r.table())
}

/// `trainer predict`: the top classes of each input under a checkpoint.
fn predict(args: PredictArgs, sets: &[String]) -> Result<(), u8> {
    let PredictArgs {
        config,
        checkpoint,
        inputs,
        top_k,
        device,
        json,
    } = args;
    let cfg = load_config(&config, sets)?;
    let backend = open_backend(device_of(device, &cfg))?;
    let result = crate::train::inference::predict(
        &cfg,
        &config,
        gpu_of(&backend),
        &checkpoint,
        &inputs,
        top_k as usize,
    );
    report(result, json, |r| {
        crate::train::inference::predictions_table(r)
    })
}

/// `trainer generate`: text sampled from a checkpoint (the prompt and its continuation).
fn generate(args: GenerateArgs, sets: &[String]) -> Result<(), u8> {
    let GenerateArgs {
        config,
        checkpoint,
        prompt,
        tokens,
        temperature,
        top_k,
        seed,
        no_cache,
        device,
        json,
    } = args;
    let cfg = load_config(&config, sets)?;
    let backend = open_backend(device_of(device, &cfg))?;
    let sampling = crate::train::generate::Sampling {
        prompt: &prompt,
        tokens: tokens as usize,
        temperature,
        top_k: top_k.map(|k| k as usize),
        seed,
        cache: !no_cache,
    };
    let result = crate::train::generate::generate(&cfg, gpu_of(&backend), &checkpoint, &sampling);
    report(result, json, |g| format!("{}{}\n", g.prompt, g.text))
}

/// `trainer devices`: the GPU adapters wgpu sees.
fn devices(args: DevicesArgs, sets: &[String]) -> Result<(), u8> {
    let DevicesArgs { json } = args;
    if let Some(set) = sets.first() {
        crate::errln!(
            "error: `trainer devices` reads no config: `--set {set}` would change nothing"
        );
        return Err(2);
    }
    let adapters = crate::backend::gpu::adapters().map_err(|e| {
        crate::errln!("error: {e}");
        e.exit_code()
    })?;
    if json {
        return print_out(&(serde_json::to_string_pretty(&adapters).map_err(internal)? + "\n"));
    }
    if adapters.is_empty() {
        return print_out("no GPU adapters found; trainer runs on the CPU\n");
    }
    let mut text = String::new();
    for a in &adapters {
        text += &format!(
            "{} ({}, {})\n  driver: {} {}\n  limits: storage binding {}, buffer {}, {} workgroups per dimension, {} workgroup memory\n  features: {}\n",
            a.name,
            a.backend,
            a.device_type,
            a.driver,
            a.driver_info,
            crate::config::values::human(a.max_storage_buffer_binding_size),
            crate::config::values::human(a.max_buffer_size),
            a.max_compute_workgroups_per_dimension,
            crate::config::values::human(a.max_compute_workgroup_storage_size as u64),
            a.features.join(", ")
        );
    }
    print_out(&text)
}

/// Prints what `eval` or `predict` found, as JSON or as text; their errors are the user's
/// (a missing checkpoint, unreadable inputs): exit 2.
fn report<T: serde::Serialize>(
    result: Result<T, String>,
    json: bool,
    text: impl Fn(&T) -> String,
) -> Result<(), u8> {
    let result = result.map_err(|e| {
        crate::errln!("error: {e}");
        2
    })?;
    if json {
        print_out(&(serde_json::to_string_pretty(&result).map_err(internal)? + "\n"))
    } else {
        print_out(&text(&result))
    }
}

/// The backend a command asked for, else the config's `run.device`.
fn device_of(device: Option<Device>, cfg: &config::Config) -> Device {
    device.unwrap_or(match cfg.run.device {
        config::sections::Device::Auto => Device::Auto,
        config::sections::Device::Gpu => Device::Gpu,
        config::sections::Device::Cpu => Device::Cpu,
    })
}

fn gpu_of(backend: &Backend) -> Option<&crate::backend::gpu::Gpu> {
    match backend {
        Backend::Cpu => None,
        Backend::Gpu(g) => Some(g),
    }
}

/// Loads the config, opens the backend and trains: `trainer fit` and `trainer resume`. Exit
/// codes: 130 after a signal (checkpoint saved), 3 when the loss stopped being finite, 2 for bad
/// input (a plan the GPU cannot hold included), 1 when the device or disk failed; 131 (a
/// second interrupt, no checkpoint) exits from `train::signals` directly.
fn train(
    sets: &[String],
    device: Option<Device>,
    opts: &crate::train::fit::FitOptions,
) -> Result<(), u8> {
    use crate::train::fit::FitError;
    let loaded = config::load(&opts.config_path, sets);
    let cfg = loaded.result.map_err(|e| user_error(&e, &loaded.sources))?;
    let backend = open_backend(device_of(device, &cfg))?;
    match crate::train::fit::fit(&cfg, gpu_of(&backend), opts) {
        Ok(report) if report.finished => {
            let best = match (report.best_val_accuracy, report.best_epoch) {
                (Some(a), Some(e)) => format!(", best val accuracy {:.2}% (epoch {e})", 100.0 * a),
                _ => String::new(),
            };
            let last = report
                .history
                .last()
                .and_then(|r| r.val_accuracy)
                .map(|a| format!(": val accuracy {:.2}%", 100.0 * a))
                .unwrap_or_default();
            crate::errln!(
                "done after {} steps{last}{best}; run in {}",
                report.steps,
                report.run_dir.display()
            );
            Ok(())
        }
        Ok(_) => Err(crate::train::signals::EXIT_INTERRUPTED),
        Err(FitError::Config(d)) => Err(user_error(&(*d).into(), &loaded.sources)),
        Err(e) => {
            crate::errln!("error: {e}");
            Err(match e {
                FitError::User(_) | FitError::Config(_) => 2,
                FitError::NonFinite(_) => 3,
                FitError::Runtime(_) => 1,
            })
        }
    }
}

/// The planned training step of a config, under its `train.checkpointing`.
fn plan_step(
    path: &std::path::Path,
    sets: &[String],
    batch: Option<usize>,
) -> Result<(crate::schedule::Plan, config::Config), u8> {
    let (g, sources) = load_graph(path, sets, batch)?;
    let cfg = load_config(path, sets)?;
    let train = crate::training::training_graph(&g, &cfg.optimizer)
        .map_err(|d| user_error(&d.into(), &sources))?;
    let plan = crate::schedule::plan(
        &train,
        &cfg.train.checkpointing,
        crate::schedule::Options::of(&cfg),
    )
    .map_err(|d| {
        let d = d.at(cfg.loc(&["train", "checkpointing"]), "this policy");
        user_error(&d.into(), &sources)
    })?;
    Ok((plan, cfg))
}

fn load_config(path: &std::path::Path, sets: &[String]) -> Result<config::Config, u8> {
    let loaded = config::load(path, sets);
    loaded.result.map_err(|e| user_error(&e, &loaded.sources))
}

fn load_graph(
    path: &std::path::Path,
    sets: &[String],
    batch: Option<usize>,
) -> Result<(graph::Graph, crate::diag::Sources), u8> {
    let (g, sources) = build_graph(path, sets, batch);
    match g {
        Ok(g) => Ok((g, sources)),
        Err(e) => Err(user_error(&e, &sources)),
    }
}

/// The forward graph of a config, or the errors that stopped it, with the sources they quote.
fn build_graph(
    path: &std::path::Path,
    sets: &[String],
    batch: Option<usize>,
) -> (Result<graph::Graph, Errors>, crate::diag::Sources) {
    let loaded = config::load(path, sets);
    let g = loaded.result.and_then(|cfg| {
        let batch = batch.unwrap_or(cfg.data.batch_size.0);
        crate::nn::build_with_batch(&cfg, batch).map_err(Errors::from)
    });
    (g, loaded.sources)
}

fn user_error(e: &Errors, sources: &crate::diag::Sources) -> u8 {
    crate::output::stderr(&e.render(sources));
    2
}

fn internal(e: impl std::fmt::Display) -> u8 {
    crate::errln!("internal error: {e}");
    1
}

/// Prints a command's result; a closed pipe is fine (see `output::stdout`), a failed write
/// (a full disk under a redirect) is exit 1 with what failed.
fn print_out(text: &str) -> Result<(), u8> {
    crate::output::stdout(text).map_err(|e| {
        crate::errln!("error: cannot write the output: {e}");
        1
    })
}
