//! The options a nanoGPT-style run needs, driven as a user drives them: through the binary on
//! small configs. Warmup and cosine decay by steps (`schedule.warmup_steps`, `train.max_steps`),
//! weight decay by parameter group (`optimizer.decay`, `optimizer.no_decay`) and per-layer
//! initialisation (`init_std`).

use std::path::Path;
use std::process::{Command, Output};

fn trainer(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("TRAINER_PROGRESS_SECS", "1000")
        .output()
        .expect("run trainer")
}

#[track_caller]
fn ok(args: &[&str]) -> Output {
    let out = trainer(args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "trainer {args:?}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A small MLP on synthetic data: 64 samples in batches of 8, 8 steps an epoch.
const MLP: &str = r#"
[run]
seed = 3

[data]
dataset = "synthetic"
samples = 64
classes = 4
batch_size = 8

[model]
input = { shape = [6] }

[[model.layers]]
name = "fc1"
op = "linear"
out = 16

[[model.layers]]
name = "ln"
op = "layernorm"
dims = 1

[[model.layers]]
op = "relu"

[[model.layers]]
name = "head"
op = "linear"
out = 4

[loss]
kind = "cross_entropy"

[optimizer]
kind = "adamw"
lr = 1e-3
weight_decay = 0.1

[schedule]
kind = "cosine"
warmup_steps = 5
min_lr = 1e-4

[train]
epochs = 100
max_steps = 30
save_every = "100 steps"

[log]
every_steps = 1
tensorboard = false
"#;

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}

/// nanoGPT's `get_lr(it)` with `lr_decay_iters = max_iters`.
fn nanogpt_lr(it: usize, lr: f64, min_lr: f64, warmup: usize, decay: usize) -> f64 {
    let (it, warmup, decay) = (it as f64, warmup as f64, decay as f64);
    if it < warmup {
        return lr * (it + 1.0) / (warmup + 1.0);
    }
    if it > decay {
        return min_lr;
    }
    let ratio = (it - warmup) / (decay - warmup);
    min_lr + 0.5 * (1.0 + (std::f64::consts::PI * ratio).cos()) * (lr - min_lr)
}

/// metrics.csv's `lr` of every logged step, by the number of steps done.
fn logged_lrs(run: &Path) -> Vec<(usize, f64)> {
    let text = std::fs::read_to_string(run.join("metrics.csv")).expect("metrics.csv");
    let mut lines = text.lines().map(|l| l.split(',').collect::<Vec<_>>());
    let header = lines.next().expect("a header");
    let lr = header
        .iter()
        .position(|h| *h == "lr")
        .expect("an lr column");
    lines
        .filter(|r| r.get(lr).is_some_and(|v| !v.is_empty()))
        .map(|r| (r[0].parse().unwrap(), r[lr].parse().unwrap()))
        .collect()
}

/// A run defined by steps warms up by steps and ends its cosine at `max_steps`, with
/// nanoGPT's LR at every step, though its epochs would allow 800 steps.
#[test]
fn warmup_steps_and_cosine_to_max_steps_follow_nanogpt() {
    let tmp = tempfile::tempdir().unwrap();
    let config = write(tmp.path(), "mlp.toml", MLP);
    let run = tmp.path().join("run");
    ok(&[
        "fit",
        &config,
        "--device",
        "cpu",
        "--run-dir",
        run.to_str().unwrap(),
    ]);
    let lrs = logged_lrs(&run);
    assert_eq!(lrs.len(), 30, "{lrs:?}");
    for (done, lr) in lrs {
        // The row after `done` steps logs the LR of step `done − 1` (0-based).
        let want = nanogpt_lr(done - 1, 1e-3, 1e-4, 5, 30);
        assert!((lr - want).abs() <= 1e-12, "step {done}: {lr} vs {want}");
    }
    // With the same run given by epochs (4 epochs of 8 steps), the cosine spans 32 steps.
    let run = tmp.path().join("run_epochs");
    let args = ["--set", "train.epochs=4", "--set", "train.max_steps=1000"];
    let mut all = vec![
        "fit",
        &config,
        "--device",
        "cpu",
        "--run-dir",
        run.to_str().unwrap(),
    ];
    all.extend(args);
    ok(&all);
    let lrs = logged_lrs(&run);
    assert_eq!(lrs.len(), 32);
    for (done, lr) in lrs {
        let want = nanogpt_lr(done - 1, 1e-3, 1e-4, 5, 32);
        assert!((lr - want).abs() <= 1e-12, "step {done}: {lr} vs {want}");
    }
}

/// `weight_decay` of every update in the training graph, by (layer, parameter shape).
fn update_decays(config: &str, sets: &[&str]) -> Vec<(String, Vec<u64>, f64)> {
    let mut args = vec!["graph", "--backward", "--format", "json", config];
    for s in sets {
        args.extend(["--set", s]);
    }
    let out = ok(&args);
    let g: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let mut updates = Vec::new();
    for n in g["nodes"].as_array().unwrap() {
        let Some(wd) = n["attrs"].get("weight_decay") else {
            continue;
        };
        let shape = n["outputs"][0]["shape"].as_array().unwrap();
        updates.push((
            n["layer"].as_str().unwrap().to_string(),
            shape.iter().map(|d| d.as_u64().unwrap()).collect(),
            wd.as_str().unwrap().parse().unwrap(),
        ));
    }
    updates
}

/// Weight decay by parameter group reaches each parameter's update op: by default every
/// parameter decays; `decay = "matrices"` leaves out biases and norm weights (nanoGPT's rule);
/// `no_decay` patterns leave out the parameters they name.
#[test]
fn weight_decay_reaches_only_the_parameters_of_its_group() {
    let tmp = tempfile::tempdir().unwrap();
    let config = write(tmp.path(), "mlp.toml", MLP);
    let all = update_decays(&config, &[]);
    assert_eq!(all.len(), 6, "{all:?}"); // weight and bias of fc1, ln, head
    assert!(all.iter().all(|u| u.2 == 0.1), "{all:?}");

    let matrices = update_decays(&config, &["optimizer.decay=\"matrices\""]);
    assert_eq!(matrices.len(), 6);
    for (layer, shape, wd) in &matrices {
        let want = if shape.len() >= 2 { 0.1 } else { 0.0 };
        assert_eq!(*wd, want, "{layer} {shape:?}");
    }
    assert_eq!(matrices.iter().filter(|u| u.2 == 0.1).count(), 2);

    let named = update_decays(&config, &["optimizer.no_decay=[\"fc1.*\", \"*.bias\"]"]);
    let want: Vec<(String, Vec<u64>, f64)> = [
        ("fc1", vec![16, 6], 0.0),
        ("fc1", vec![16], 0.0),
        ("ln", vec![16], 0.1), // ln.weight: the one rank-1 parameter left decaying
        ("ln", vec![16], 0.0),
        ("head", vec![4, 16], 0.1),
        ("head", vec![4], 0.0),
    ]
    .into_iter()
    .map(|(l, s, w)| (l.to_string(), s, w))
    .collect();
    assert_eq!(named, want);

    // SGD's L2 penalty follows the same groups.
    let sgd = update_decays(
        &config,
        &["optimizer={ kind = \"sgd\", lr = 0.1, weight_decay = 0.5, decay = \"matrices\" }"],
    );
    for (layer, shape, wd) in &sgd {
        assert_eq!(*wd, if shape.len() >= 2 { 0.5 } else { 0.0 }, "{layer}");
    }
}

/// A pattern that names no parameter is a located error with a did-you-mean, not a silent
/// no-op.
#[test]
fn a_no_decay_pattern_matching_nothing_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let config = write(tmp.path(), "mlp.toml", MLP);
    let out = trainer(&[
        "check",
        &config,
        "--set",
        "optimizer.no_decay=[\"*.bias\", \"head.bais\"]",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("\"head.bais\" matches no trainable parameter"),
        "{err}"
    );
    assert!(err.contains("--set #1:1:31"), "{err}");
    assert!(err.contains("did you mean `head.bias`"), "{err}");
}

/// An embedding, a linear layer and a block whose projection takes its std as a parameter,
/// all with nanoGPT's init, next to a linear layer with PyTorch's default.
const INIT: &str = r#"
[run]
seed = 11

[data]
dataset = "synthetic"
samples = 16
batch_size = 4

[model]
input = { shape = [8], dtype = "i32" }

[model.blocks.proj]
params = ["std"]
body = [{ name = "c_proj", op = "linear", out = 256, init_std = "$std" }]

[[model.layers]]
name = "wte"
op = "embedding"
vocab = 512
dim = 256
init_std = 0.02

[[model.layers]]
name = "fc"
op = "linear"
out = 512
init_std = 0.02

[[model.layers]]
name = "h"
block = "proj"
with = { std = 0.004 }

[[model.layers]]
name = "plain"
op = "linear"
out = 4

[loss]
kind = "mse"

[optimizer]
kind = "adamw"
lr = 1e-3
"#;

/// The initial value of every parameter, by name, as the CPU executor holds it before step 1.
fn initial_values(config: &str) -> Vec<(String, Vec<f32>)> {
    use trainer::backend::cpu::CpuExec;
    use trainer::tensor::TensorId;
    let loaded = trainer::config::load(Path::new(config), &[]);
    let cfg = match loaded.result {
        Ok(c) => c,
        Err(e) => panic!("{}", e.render(&loaded.sources)),
    };
    let g = trainer::nn::build(&cfg).expect("builds");
    let g = trainer::training::training_graph(&g, &cfg.optimizer).expect("differentiates");
    let plan = trainer::schedule::plan(
        &g,
        &cfg.train.checkpointing,
        trainer::schedule::Options::of(&cfg),
    )
    .expect("plans");
    let params: Vec<_> = (plan.graph.params.iter())
        .filter(|p| p.trainable)
        .map(|p| (p.name.clone(), p.node.expect("read")))
        .collect();
    let exec: CpuExec<f32> = CpuExec::new(plan, cfg.run.seed).unwrap();
    params
        .into_iter()
        .map(|(name, node)| (name, exec.read(TensorId::of(node, 0)).to_vec()))
        .collect()
}

/// `init_std` draws weights from N(0, std²) and zeroes biases: the sample mean and standard
/// deviation of 131,072 draws are within a few standard errors of 0 and std (the tolerances
/// are about 10 standard errors; the seed is fixed, so the test cannot flake), also through a
/// block parameter; the layer without it keeps PyTorch's U(±1/√in).
#[test]
fn init_std_draws_normal_weights_and_zero_biases() {
    let tmp = tempfile::tempdir().unwrap();
    let config = write(tmp.path(), "init.toml", INIT);
    let values = initial_values(&config);
    let get = |name: &str| -> &Vec<f32> {
        let names: Vec<&str> = values.iter().map(|(n, _)| n.as_str()).collect();
        (values.iter().find(|(n, _)| n == name))
            .map(|(_, v)| v)
            .unwrap_or_else(|| panic!("no {name} in {names:?}"))
    };
    for (name, std) in [
        ("wte.weight", 0.02),
        ("fc.weight", 0.02),
        ("h.c_proj.weight", 0.004),
    ] {
        let v = get(name);
        assert_eq!(v.len(), 131_072, "{name}");
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        let sd = (v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
        // Standard errors: std/√n ≈ 0.0028·std for the mean, std/√(2n) ≈ 0.002·std for sd.
        assert!(mean.abs() < 0.03 * std, "{name}: mean {mean}");
        assert!((sd / std - 1.0).abs() < 0.02, "{name}: sd {sd}, want {std}");
        // Normal, not uniform: about 4.6% of draws lie beyond 2 std (a uniform of this sd
        // has none beyond √3 std).
        let tails = v.iter().filter(|&&x| (x as f64).abs() > 2.0 * std).count() as f64 / n;
        assert!(
            (tails - 0.0455).abs() < 0.005,
            "{name}: {tails} beyond 2 std"
        );
    }
    for name in ["fc.bias", "h.c_proj.bias"] {
        assert!(
            get(name).iter().all(|&x| x == 0.0),
            "{name} is not all zeros"
        );
    }
    // The default is untouched: U(±1/√256) for both weight and bias (4 values, none 0).
    let bound = 1.0 / 16.0;
    for name in ["plain.weight", "plain.bias"] {
        let v = get(name);
        assert!(v.iter().all(|&x| x.abs() <= bound && x != 0.0), "{name}");
    }
    assert!(get("plain.weight").iter().any(|&x| x.abs() > 0.99 * bound));
}

/// A negative `init_std` is reported at its value, in a layer and through a block argument.
#[test]
fn a_negative_init_std_is_an_error_at_its_value() {
    let tmp = tempfile::tempdir().unwrap();
    let config = write(tmp.path(), "init.toml", INIT);
    let out = trainer(&["check", &config, "--set", "model.layers.1.init_std=-0.02"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("a number greater than 0"), "{err}");
    assert!(err.contains("--set #1:1:25"), "{err}");
    let out = trainer(&["check", &config, "--set", "model.layers.2.with.std=0"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("a number greater than 0"), "{err}");
}
