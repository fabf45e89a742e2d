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
