//! `trainer fit`, `resume`, `eval` and `predict` driven through the CLI as a user drives them,
//! on real configs and the shipped Fashion-MNIST: the loss falls, the run directory is
//! complete and readable by TensorBoard and safetensors, a run killed with SIGKILL and resumed
//! ends with the same bytes as one that never stopped (CPU and lavapipe).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::python;

fn trainer(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_trainer"));
    c.args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("TRAINER_PROGRESS_SECS", "1");
    c
}

fn run(args: &[&str]) -> Output {
    trainer(args).output().expect("run trainer")
}

fn ok(args: &[&str]) -> Output {
    let out = run(args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "trainer {args:?}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// metrics.csv as (header, rows).
fn csv(run: &Path) -> (Vec<String>, Vec<Vec<String>>) {
    let t = std::fs::read_to_string(run.join("metrics.csv")).expect("metrics.csv");
    let mut lines = t.lines().map(|l| l.split(',').map(String::from).collect());
    let header = lines.next().expect("a header");
    (header, lines.collect())
}

fn column(header: &[String], rows: &[Vec<String>], name: &str) -> Vec<f64> {
    let i = header
        .iter()
        .position(|h| h == name)
        .unwrap_or_else(|| panic!("no column {name} in {header:?}"));
    rows.iter()
        .filter_map(|r| r.get(i).and_then(|v| v.parse().ok()))
        .collect()
}

fn latest(run: &Path) -> PathBuf {
    let name = std::fs::read_to_string(run.join("checkpoints/latest")).expect("latest");
    run.join("checkpoints").join(name.trim())
}

/// Names and shapes of torchvision's resnet20 state_dict (tests/data/state_dicts.txt).
fn torch_names() -> Vec<(String, Vec<u64>)> {
    include_str!("data/state_dicts.txt")
        .split("\n# ")
        .find_map(|b| b.trim_start_matches("# ").strip_prefix("resnet20"))
        .expect("resnet20 in state_dicts.txt")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (n, s) = l.split_once(' ').expect("name shape");
            (n.to_string(), serde_json::from_str(s).expect("shape"))
        })
        .collect()
}

/// The acceptance run: configs/resnet.toml for 200 steps on a slice of Fashion-MNIST, then
/// everything a user would look at: the loss fell, the directory is complete, TensorBoard reads
/// the scalars, a PyTorch-free safetensors reader finds every torchvision name and shape, and
/// `eval` and `predict` use the checkpoint.
#[test]
fn resnet_fits_for_200_steps_and_leaves_a_complete_run() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let d = dir.to_str().unwrap();
    let out = ok(&[
        "fit",
        "configs/resnet.toml",
        "--device",
        "cpu",
        "--run-dir",
        d,
        "--set",
        "data.batch_size=32",
        "--set",
        "data.train_limit=6400",
        "--set",
        "data.val_limit=500",
        "--set",
        "train.epochs=1",
        "--set",
        "log.every_steps=20",
        "--set",
        "train.save_every=\"100 steps\"",
    ]);
    let err = text(&out.stderr);
    // Headless (stderr is a pipe): plain progress lines, no bar escape codes.
    assert!(err.contains("step ") && !err.contains('\u{1b}'), "{err}");
    assert!(err.contains("done after 200 steps"), "{err}");

    for f in ["config.resolved.toml", "manifest.json", "metrics.csv"] {
        assert!(dir.join(f).is_file(), "{f} missing");
    }
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["seed"], 42);
    assert_eq!(manifest["device"], "cpu");
    assert_eq!(manifest["config_hash"].as_str().unwrap().len(), 64);
    let (header, rows) = csv(&dir);
    let loss = column(&header, &rows, "train/loss");
    assert!(loss.len() >= 10, "{header:?} {rows:?}");
    let (first, last) = (loss[0], loss[loss.len() - 1]);
    assert!(last < 0.75 * first, "train loss {first} → {last}");
    let acc = column(&header, &rows, "val/accuracy");
    assert!(acc.last().is_some_and(|&a| a > 0.5), "val accuracy {acc:?}");

    let ckpt = latest(&dir);
    assert!(ckpt.ends_with("step-000000200"), "{}", ckpt.display());
    // Steps 100 and 200 are kept; `best` points at the one with the best validation.
    let kept = std::fs::read_dir(dir.join("checkpoints")).unwrap().count();
    assert!(kept >= 3, "checkpoints/ holds {kept} entries");

    if let Some(py) = python(&["tensorboard"]) {
        let script = r#"
import sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
ea = EventAccumulator(sys.argv[1]); ea.Reload()
tags = ea.Tags()["scalars"]
for t in ["train/loss", "train/accuracy", "val/loss", "val/accuracy", "lr", "img_per_s"]:
    assert t in tags, (t, tags)
loss = [e.value for e in ea.Scalars("train/loss")]
steps = [e.step for e in ea.Scalars("train/loss")]
assert steps[0] == 20 and steps[-1] == 200, steps
assert loss[-1] < loss[0], loss
print(len(steps))
"#;
        let out = Command::new(&py)
            .args(["-c", script, d])
            .output()
            .expect("python");
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_eq!(text(&out.stdout).trim(), "10");
    }
    if let Some(py) = python(&["safetensors", "numpy"]) {
        let script = r#"
import sys
from safetensors.numpy import load_file
t = load_file(sys.argv[1])
for k in sorted(t):
    print(k, list(t[k].shape), t[k].dtype)
"#;
        let file = ckpt.join("model.safetensors");
        let out = Command::new(&py)
            .args(["-c", script, file.to_str().unwrap()])
            .output()
            .expect("python");
        assert!(out.status.success(), "{}", text(&out.stderr));
        let listed = text(&out.stdout);
        let mut want: Vec<String> = torch_names()
            .into_iter()
            .map(|(n, s)| {
                let dtype = if n.ends_with("num_batches_tracked") {
                    "int64"
                } else {
                    "float32"
                };
                format!("{n} {s:?} {dtype}")
            })
            .collect();
        want.sort();
        assert_eq!(listed.lines().collect::<Vec<_>>(), want);
    }

    // eval: the checkpoint on the test split, with per-class accuracy and a confusion matrix.
    let out = ok(&[
        "eval",
        "configs/resnet.toml",
        "--checkpoint",
        d,
        "--device",
        "cpu",
        "--json",
        "--set",
        "data.val_limit=500",
    ]);
    let e: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(e["samples"], 10000);
    assert!(e["accuracy"].as_f64().unwrap() > 0.5, "{e}");
    let confusion = e["confusion"].as_array().unwrap();
    assert_eq!(confusion.len(), 10);
    let total: u64 = confusion
        .iter()
        .flat_map(|r| r.as_array().unwrap())
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(total, 10000);
    assert_eq!(e["per_class"][0]["class"], "T-shirt/top");

    // predict: the test images file, top-2 with probabilities.
    let images = "datasets/fashion-mnist/t10k-images-idx3-ubyte.gz";
    let out = ok(&[
        "predict",
        "configs/resnet.toml",
        "--checkpoint",
        d,
        "--device",
        "cpu",
        "--top-k",
        "2",
        "--json",
        images,
    ]);
    let p: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let p = p.as_array().unwrap();
    assert_eq!(p.len(), 10000);
    let top = p[0]["top"].as_array().unwrap();
    assert_eq!(top.len(), 2);
    let (p0, p1) = (top[0][1].as_f64().unwrap(), top[1][1].as_f64().unwrap());
    assert!(p0 >= p1 && p0 <= 1.0 && p1 >= 0.0, "{top:?}");
}

/// A tiny conv net with batchnorm and dropout on synthetic data: every kind of state a resume
/// must carry (weights, running statistics, momentum, the data cursor, dropout's stream).
const TINY: &str = r#"
[run]
name = "tiny"
seed = 7

[data]
dataset = "synthetic"
samples = 512
classes = 4
batch_size = 16
augment = ["hflip"]

[model]
input = { shape = [1, 8, 8] }

[[model.layers]]
name = "conv"
op = "conv2d"
out = 4
kernel = 3
padding = 1

[[model.layers]]
name = "bn"
op = "batchnorm"

[[model.layers]]
op = "relu"

[[model.layers]]
op = "dropout"
p = 0.2

[[model.layers]]
op = "flatten"

[[model.layers]]
name = "fc"
op = "linear"
out = 4

[loss]
kind = "cross_entropy"

[optimizer]
kind = "sgd"
lr = 0.05
momentum = 0.9
nesterov = true
weight_decay = 1e-4

[schedule]
kind = "cosine"
warmup_epochs = 0.5

[train]
epochs = 4
save_every = "4 steps"
keep = 2
"#;

fn tiny(dir: &Path) -> PathBuf {
    let p = dir.join("tiny.toml");
    std::fs::write(&p, TINY).unwrap();
    p
}

fn start(args: &[&str]) -> Child {
    trainer(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn trainer")
}

/// Polls until the run has a checkpoint at or past `step`.
fn wait_for_checkpoint(run: &Path, step: u64, child: &mut Child) {
    let t0 = Instant::now();
    loop {
        if let Ok(name) = std::fs::read_to_string(run.join("checkpoints/latest")) {
            let n: u64 = name.trim().trim_start_matches("step-").parse().unwrap_or(0);
            if n >= step {
                return;
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("trainer ended ({status}) before step {step}");
        }
        assert!(t0.elapsed() < Duration::from_secs(300), "no checkpoint");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn final_bytes(run: &Path) -> (Vec<u8>, Vec<u8>) {
    let c = latest(run);
    assert!(c.ends_with("step-000000128"), "{}", c.display());
    (
        std::fs::read(c.join("model.safetensors")).unwrap(),
        std::fs::read(c.join("optimizer.safetensors")).unwrap(),
    )
}

fn kill_and_resume_matches_straight_run(device: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let config = tiny(tmp.path());
    let c = config.to_str().unwrap();
    let straight = tmp.path().join("straight");
    ok(&[
        "fit",
        c,
        "--device",
        device,
        "--run-dir",
        straight.to_str().unwrap(),
    ]);

    let killed = tmp.path().join("killed");
    let k = killed.to_str().unwrap();
    let mut child = start(&["fit", c, "--device", device, "--run-dir", k]);
    wait_for_checkpoint(&killed, 40, &mut child);
    child.kill().expect("SIGKILL"); // Child::kill sends SIGKILL on Unix
    let status = child.wait().unwrap();
    assert!(!status.success(), "the run finished before the kill");
    let at = latest(&killed);
    assert!(
        !at.ends_with("step-000000128"),
        "killed too late: {}",
        at.display()
    );
    let out = ok(&["resume", k, "--device", device]);
    assert!(
        text(&out.stderr).contains("resuming"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        final_bytes(&straight) == final_bytes(&killed),
        "resumed weights differ"
    );
    // The log continues without repeating its header, and without the rows the killed process
    // wrote after its last checkpoint: one row per step logged, as in the straight run. (The
    // values of a log window that spans the kill differ: the window restarts on resume.)
    let steps = |run: &Path| {
        csv(run)
            .1
            .into_iter()
            .map(|r| r[0].clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(steps(&killed), steps(&straight));
}

#[test]
fn kill_and_resume_is_bit_identical_on_the_cpu() {
    kill_and_resume_matches_straight_run("cpu");
}

#[test]
fn kill_and_resume_is_bit_identical_on_lavapipe() {
    if common::gpu_or_skip() {
        kill_and_resume_matches_straight_run("gpu");
    }
}

#[test]
fn resume_refuses_a_different_config_unless_forced() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tiny(tmp.path());
    let c = config.to_str().unwrap();
    let dir = tmp.path().join("run");
    let d = dir.to_str().unwrap();
    let short = ["--set", "train.max_steps=8"];
    ok(&[&["fit", c, "--device", "cpu", "--run-dir", d][..], &short].concat());
    let out = run(&[
        "fit",
        c,
        "--device",
        "cpu",
        "--resume",
        d,
        "--set",
        "train.max_steps=8",
        "--set",
        "optimizer.lr=0.01",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("optimizer.lr: 0.05 → 0.01"), "{err}");
    assert!(err.contains("--force"), "{err}");
    let out = ok(&[
        "fit",
        c,
        "--device",
        "cpu",
        "--resume",
        d,
        "--force",
        "--set",
        "train.max_steps=12",
    ]);
    assert!(text(&out.stderr).contains("train.max_steps: 8 → 12"));
    assert!(latest(&dir).ends_with("step-000000012"));
}

#[test]
fn sigint_checkpoints_and_exits_130() {
    stop_with_signal("-INT");
}

#[test]
fn sigterm_checkpoints_and_exits_130() {
    stop_with_signal("-TERM");
}

fn stop_with_signal(signal: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let config = tiny(tmp.path());
    let dir = tmp.path().join("run");
    let d = dir.to_str().unwrap();
    let child = start(&[
        "fit",
        config.to_str().unwrap(),
        "--device",
        "cpu",
        "--run-dir",
        d,
        "--set",
        "train.epochs=400",
        "--set",
        "train.save_every=\"1000 steps\"",
    ]);
    // Wait until it trains (its first log line), then interrupt it politely.
    let t0 = Instant::now();
    while !dir.join("metrics.csv").exists() {
        assert!(t0.elapsed() < Duration::from_secs(120), "never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args([signal, &pid])
            .status()
            .unwrap()
            .success()
    );
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", text(&out.stderr));
    let at = latest(&dir);
    assert!(at.join("model.safetensors").is_file(), "{}", at.display());
}

/// The tiny run at a learning rate of 1e30, which makes the loss infinite or NaN within steps.
fn diverge(extra: &[&str]) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let config = tiny(tmp.path());
    let dir = tmp.path().join("run");
    let mut args = vec![
        "fit",
        config.to_str().unwrap(),
        "--device",
        "cpu",
        "--run-dir",
        dir.to_str().unwrap(),
        "--set",
        "optimizer.lr=1e30",
        "--set",
        "schedule.warmup_epochs=0.0",
    ];
    args.extend(extra);
    let out = run(&args);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    text(&out.stderr)
}

#[test]
fn a_diverging_run_stops_with_the_step_and_exit_3() {
    let err = diverge(&[]);
    assert!(
        err.contains("the loss is") && err.contains("at step"),
        "{err}"
    );
}

#[test]
fn skip_step_skips_bad_steps_then_stops_when_they_never_end() {
    let err = diverge(&["--set", "train.on_nonfinite=\"skip_step\""]);
    assert_eq!(err.matches("step skipped").count(), 19, "{err}");
    assert!(
        err.contains("stopping after skipping the 19 steps before it too"),
        "{err}"
    );
}

/// Bad data is found before anything is written: a clear error naming the file, exit 2, and no
/// run directory left behind (so the same --run-dir works once the data is fixed).
#[test]
fn missing_or_corrupt_data_is_named_and_leaves_no_run_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("datasets/fashion-mnist");
    for f in [
        "train-images-idx3-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ] {
        std::fs::copy(shipped.join(f), data.join(f)).unwrap();
    }
    let dir = tmp.path().join("run");
    let fit = |extra: &[&str]| {
        let mut args = vec![
            "fit",
            "configs/lenet.toml",
            "--device",
            "cpu",
            "--run-dir",
            dir.to_str().unwrap(),
        ];
        args.extend(extra);
        run(&args)
    };
    let path = format!("data.path=\"{}\"", data.display());
    let out = fit(&["--set", &path]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("train-labels-idx1-ubyte"), "{err}");
    assert!(!dir.exists(), "a failed start left {}", dir.display());

    // A truncated labels file: named, with what the header promised.
    let labels = std::fs::read(shipped.join("train-labels-idx1-ubyte.gz")).unwrap();
    std::fs::write(
        data.join("train-labels-idx1-ubyte.gz"),
        &labels[..labels.len() / 2],
    )
    .unwrap();
    let out = fit(&["--set", &path]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("train-labels-idx1-ubyte.gz"),
        "{}",
        text(&out.stderr)
    );
    assert!(!dir.exists());
}

/// metrics.csv rows without `img_per_s` (a wall-clock figure), as text.
fn rows_without_timing(run: &Path) -> Vec<Vec<String>> {
    let (header, rows) = csv(run);
    let t = header
        .iter()
        .position(|h| h == "img_per_s")
        .expect("img_per_s");
    let mut all = vec![header];
    all.extend(rows);
    for r in &mut all {
        if t < r.len() {
            r.remove(t);
        }
    }
    all
}

/// On the GPU the loop reads the loss back without waiting (log every 3 steps: readbacks
/// that straddle epoch ends and checkpoints); with `skip_step` it reads it synchronously after
/// every step. Without a bad step both must log the same rows, value for value, and end with
/// the same weights.
#[test]
fn the_async_loop_logs_what_the_synchronous_one_logs_on_lavapipe() {
    if !common::gpu_or_skip() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let config = tiny(tmp.path());
    let fit = |name: &str, mode: &str| {
        let dir = tmp.path().join(name);
        let policy = format!("train.on_nonfinite=\"{mode}\"");
        ok(&[
            "fit",
            config.to_str().unwrap(),
            "--device",
            "gpu",
            "--run-dir",
            dir.to_str().unwrap(),
            "--set",
            "log.every_steps=3",
            "--set",
            "train.save_every=\"10 steps\"",
            "--set",
            &policy,
        ]);
        dir
    };
    let (fast, sync) = (fit("async", "stop"), fit("sync", "skip_step"));
    let rows = rows_without_timing(&fast);
    // A header, then a row per log point and per epoch end (32 steps; one row when both).
    let logged = (1..=128).filter(|s| s % 3 == 0 || s % 32 == 0).count();
    assert_eq!(rows.len(), 1 + logged, "{rows:?}");
    assert_eq!(rows, rows_without_timing(&sync));
    assert!(final_bytes(&fast) == final_bytes(&sync), "weights differ");
}

/// A run whose learning rate jumps to 5e28 after the first epoch (StepLR, gamma 1e30) has a
/// NaN loss a few steps into epoch 2. On lavapipe, where the loss is read back
/// asynchronously, it must stop (exit 3) naming the first bad step, which the synchronous
/// `skip_step` loop on the same device reports as its first skipped step; its metrics.csv
/// holds the rows of the steps before it, as the CPU loop's does; no checkpoint is written
/// after it even though later steps had already been queued.
#[test]
fn a_diverging_run_on_lavapipe_stops_at_the_first_bad_step() {
    if !common::gpu_or_skip() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let config = tiny(tmp.path());
    let fit = |name: &str, device: &str, mode: &str| {
        let dir = tmp.path().join(name);
        let policy = format!("train.on_nonfinite=\"{mode}\"");
        let out = run(&[
            "fit",
            config.to_str().unwrap(),
            "--device",
            device,
            "--run-dir",
            dir.to_str().unwrap(),
            "--set",
            "schedule.kind=\"step\"",
            "--set",
            "schedule.step_size=1",
            "--set",
            "schedule.gamma=1e30",
            "--set",
            "schedule.warmup_epochs=0.0",
            "--set",
            "log.every_steps=4",
            "--set",
            "train.save_every=\"10 steps\"",
            "--set",
            &policy,
        ]);
        assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
        (dir, text(&out.stderr))
    };
    let step_after = |err: &str, what: &str| -> u64 {
        let at = err
            .find(what)
            .unwrap_or_else(|| panic!("no `{what}` in {err}"));
        let digits: String = err[at + what.len()..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().unwrap()
    };
    let (gpu, err) = fit("gpu", "gpu", "stop");
    let bad = step_after(&err, " at step ");
    assert!(
        err.contains("the loss is") && err.contains("stopping"),
        "{err}"
    );
    let (_, skipping) = fit("gpu-sync", "gpu", "skip_step");
    let first_skipped = step_after(&skipping, " at step ");
    assert!(skipping.contains(&format!("at step {first_skipped}: step skipped")));
    assert_eq!(bad, first_skipped, "async and synchronous loops disagree");
    assert!(
        bad > 32,
        "diverged at step {bad}, before the LR jump: the test no longer tests the async path"
    );

    let steps =
        |run: &Path| -> Vec<u64> { csv(run).1.iter().map(|r| r[0].parse().unwrap()).collect() };
    let want: Vec<u64> = (1..bad).filter(|s| s % 4 == 0 || s % 32 == 0).collect();
    assert_eq!(steps(&gpu), want);
    let (cpu, cpu_err) = fit("cpu", "cpu", "stop");
    if step_after(&cpu_err, " at step ") == bad {
        assert_eq!(steps(&cpu), steps(&gpu));
    }
    // The last checkpoint is the last one due before the bad step, never one after it.
    let last_due = (bad - 1) / 10 * 10;
    assert!(
        latest(&gpu).ends_with(format!("step-{last_due:09}")),
        "{}",
        latest(&gpu).display()
    );
    assert!(err.contains(&format!("step-{last_due:09}")), "{err}");
}
