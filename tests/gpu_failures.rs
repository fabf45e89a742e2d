//! Device failures through the binary, on lavapipe: a lost device, an error mid-step, a region
//! that cannot be allocated and a hung wait each end the run with a clear message naming what
//! happened, a non-zero exit and no panic, within a time limit (a hang fails the test), and a
//! fit keeps the checkpoint it wrote before. The failures are real wgpu failures made on
//! purpose by the `TRAINER_GPU_FAULT` testing hook (src/backend/gpu/fault.rs), since no test
//! machine can run out of memory or lose its GPU on demand. Also: a step cut into several
//! submits (the GPU watchdog) computes exactly what one submit does.

mod common;

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use trainer::backend::gpu::{GpuExec, test_gpu};
use trainer::tensor::StepCtx;

/// A run that takes longer than this has hung.
const LIMIT: Duration = Duration::from_secs(120);

struct Ended {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs the binary with `env`, killing it (and failing the test) after `LIMIT`.
fn trainer(args: &[&str], env: &[(&str, &str)]) -> Ended {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_trainer"));
    cmd.args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("TRAINER_PROGRESS_SECS", "1")
        .env_remove("TRAINER_GPU_FAULT")
        .env_remove("TRAINER_GPU_TIMEOUT_SECS")
        .env_remove("TRAINER_GPU_SUBMIT_MS")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn trainer");
    let pipe = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut r) = r {
                let _ = r.read_to_string(&mut s);
            }
            s
        })
    };
    let out = pipe(child.stdout.take().map(|p| Box::new(p) as _));
    let err = pipe(child.stderr.take().map(|p| Box::new(p) as _));
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break Some(s);
        }
        if t0.elapsed() > LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let ended = Ended {
        code: status.and_then(|s| s.code()),
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    };
    assert!(
        status.is_some(),
        "trainer {args:?} with {env:?} hung: killed after {LIMIT:?}\n{}",
        ended.stderr
    );
    ended
}

/// Exits with `code`, says every one of `needles`, and does not panic.
fn fails_clearly(e: &Ended, code: i32, needles: &[&str]) {
    assert_eq!(e.code, Some(code), "{}", e.stderr);
    for n in needles {
        assert!(e.stderr.contains(n), "no {n:?} in:\n{}", e.stderr);
    }
    for bad in ["panicked", "internal error", "RUST_BACKTRACE"] {
        assert!(!e.stderr.contains(bad), "{bad:?} in:\n{}", e.stderr);
    }
}

const BENCH: &[&str] = &[
    "bench",
    "configs/mlp.toml",
    "--device",
    "gpu",
    "--batch",
    "8",
    "--steps",
    "4",
];

/// configs/mlp.toml on a slice of Fashion-MNIST: 16 steps of 16, a checkpoint every 2.
fn fit_args(run: &Path) -> Vec<String> {
    let mut a: Vec<String> = ["fit", "configs/mlp.toml", "--device", "gpu", "--run-dir"]
        .map(String::from)
        .to_vec();
    a.push(run.display().to_string());
    for s in [
        "data.batch_size=16",
        "data.train_limit=256",
        "data.val_limit=64",
        "train.epochs=1",
        "train.save_every=\"2 steps\"",
        "train.keep=2",
        "log.every_steps=2",
    ] {
        a.extend(["--set".to_string(), s.to_string()]);
    }
    a
}

fn fit(run: &Path, env: &[(&str, &str)]) -> Ended {
    let args = fit_args(run);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    trainer(&args, env)
}

fn checkpoint_names(run: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(run.join("checkpoints"))
        .expect("checkpoints/")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn a_lost_device_stops_fit_naming_the_step_and_keeps_the_last_checkpoint() {
    if !common::gpu_or_skip() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let e = fit(&run, &[("TRAINER_GPU_FAULT", "lost@5")]);
    fails_clearly(&e, 1, &["TRAINER_GPU_FAULT=lost@5", "trainer resume"]);
    // The loop does not wait for a step before submitting the next, so the loss is noticed
    // once step 5 or the step after it was submitted.
    assert!(
        ["5", "6"].iter().any(|n| e.stderr.contains(&format!(
            "error: the GPU device was lost after step {n} was submitted"
        ))),
        "{}",
        e.stderr
    );
    // The checkpoint of step 4 is the latest, whole (its checksums verify), and nothing was
    // left half-written.
    let latest = std::fs::read_to_string(run.join("checkpoints/latest")).expect("latest");
    assert_eq!(latest.trim(), "step-000000004");
    let ckpt = trainer::checkpoint::load(&run.join("checkpoints/step-000000004"))
        .expect("the last checkpoint loads and its checksums verify");
    assert_eq!(ckpt.state.step, 4);
    assert!(ckpt.weights.iter().any(|t| t.name == "fc1.weight"));
    assert_eq!(
        checkpoint_names(&run),
        ["latest", "step-000000002", "step-000000004"],
        "stray files in checkpoints/"
    );
    // And the run goes on from there once the device is back.
    let r = trainer(&["resume", run.to_str().unwrap(), "--device", "gpu"], &[]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(r.stderr.contains("resuming") && r.stderr.contains("at step 4"));
}

#[test]
fn a_lost_device_stops_bench() {
    if !common::gpu_or_skip() {
        return;
    }
    let e = trainer(BENCH, &[("TRAINER_GPU_FAULT", "lost@3")]);
    fails_clearly(
        &e,
        1,
        &[
            "error: the GPU device was lost after step",
            "destroyed by the test hook TRAINER_GPU_FAULT=lost@3",
        ],
    );
    assert!(e.stdout.is_empty(), "{}", e.stdout);
}

/// An error the uncaptured handler gets mid-step (the way an out-of-memory error during a
/// step arrives) stops the run at that step.
#[test]
fn an_error_during_a_step_surfaces_at_that_step() {
    if !common::gpu_or_skip() {
        return;
    }
    let e = trainer(BENCH, &[("TRAINER_GPU_FAULT", "error@2")]);
    fails_clearly(
        &e,
        1,
        &["error: the GPU reported an error: after step 2 was submitted: "],
    );
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let e = fit(&run, &[("TRAINER_GPU_FAULT", "error@3")]);
    fails_clearly(&e, 1, &["after step 3 was submitted"]);
    assert_eq!(
        std::fs::read_to_string(run.join("checkpoints/latest"))
            .unwrap()
            .trim(),
        "step-000000002"
    );
}

/// A region the device refuses is named with what it holds, the bytes asked and what to
/// change; the config has to change, so exit 2, and fit leaves no run directory behind.
#[test]
fn a_region_that_cannot_be_allocated_is_named_with_advice() {
    if !common::gpu_or_skip() {
        return;
    }
    let e = trainer(BENCH, &[("TRAINER_GPU_FAULT", "alloc@arena")]);
    fails_clearly(
        &e,
        2,
        &[
            "allocating the Arena region (activations and temporaries of one step)",
            "asked",
            "the plan needs",
            "lower data.batch_size",
            "train.checkpointing",
            "TRAINER_GPU_FAULT=alloc@arena",
        ],
    );
    assert!(
        e.stderr.lines().count() <= 6,
        "more than a screen:\n{}",
        e.stderr
    );
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let e = fit(&run, &[("TRAINER_GPU_FAULT", "alloc@state")]);
    fails_clearly(
        &e,
        2,
        &["allocating the State region (parameters, running statistics and optimizer state)"],
    );
    assert!(!run.exists(), "a run directory was left behind");
}

/// A wait past `TRAINER_GPU_TIMEOUT_SECS` is an error, not a hang: here two resnet steps
/// against a 1 µs limit, which no device meets.
#[test]
fn a_wait_past_the_timeout_is_an_error() {
    if !common::gpu_or_skip() {
        return;
    }
    let e = trainer(
        &[
            "bench",
            "configs/resnet.toml",
            "--device",
            "gpu",
            "--batch",
            "4",
            "--steps",
            "1",
        ],
        &[("TRAINER_GPU_TIMEOUT_SECS", "1e-6")],
    );
    fails_clearly(
        &e,
        1,
        &[
            "error: the GPU did not finish its work within 0.000001 s after step 1 was submitted",
            "TRAINER_GPU_TIMEOUT_SECS",
        ],
    );
}

#[test]
fn bad_settings_are_refused() {
    if !common::gpu_or_skip() {
        return;
    }
    for (k, v) in [
        ("TRAINER_GPU_FAULT", "oom@3"),
        ("TRAINER_GPU_TIMEOUT_SECS", "never"),
        ("TRAINER_GPU_SUBMIT_MS", "0"),
    ] {
        let e = trainer(BENCH, &[(k, v)]);
        fails_clearly(&e, 2, &[&format!("{k}={v}: expected")]);
    }
}

fn plan(path: &str, batch: usize) -> trainer::schedule::Plan {
    let loaded = trainer::config::load(Path::new(path), &[]);
    let cfg = loaded
        .result
        .unwrap_or_else(|e| panic!("{}", e.render(&loaded.sources)));
    let g = trainer::nn::build_with_batch(&cfg, batch).expect("builds");
    let t = trainer::training::training_graph(&g, &cfg.optimizer).expect("trains");
    trainer::schedule::plan(&t, &cfg.train.checkpointing, Default::default()).expect("plans")
}

/// Two steps of configs/resnet.toml at batch 2 with the step cut into many submits give the
/// same bits as with one submit: loss, every parameter and optimizer state.
#[test]
fn a_step_cut_into_submits_is_bit_identical_to_one_submit() {
    let Some(gpu) = test_gpu() else { return };
    let run = |budget: f64| {
        let p = plan("configs/resnet.toml", 2);
        let (f, l, loss) = (p.graph.features, p.graph.labels, p.graph.loss);
        let x: Vec<f32> = (0..p.graph.ty(f).numel())
            .map(|i| ((i * 7919 % 255) as f32 / 127.0) - 1.0)
            .collect();
        let mut exec = GpuExec::new(gpu, p, 9).expect("prepares");
        exec.set_submit_budget(budget);
        exec.feed(f, &x).unwrap();
        exec.feed(l, &[3.0, 7.0]).unwrap();
        let mut losses = Vec::new();
        for step in 1..=2 {
            exec.step(StepCtx {
                lr: 0.1,
                step,
                seed: 4,
            })
            .unwrap();
            losses.push(exec.read(loss).unwrap()[0].to_bits());
        }
        let params: Vec<Vec<u32>> = exec
            .params()
            .unwrap()
            .iter()
            .map(|v| v.iter().map(|x| x.to_bits()).collect())
            .collect();
        (
            exec.submits_per_step(),
            exec.dispatch_count(),
            losses,
            params,
        )
    };
    let (one, dispatches, loss1, params1) = run(f64::INFINITY);
    // 1 ms on lavapipe's estimate: a few dispatches a submit.
    let (many, _, loss2, params2) = run(1e-3);
    assert_eq!(one, 1);
    assert!(
        many > 5 && many < dispatches,
        "{many} submits, {dispatches} dispatches"
    );
    assert_eq!(loss1, loss2, "loss bits differ");
    assert!(params1 == params2, "parameters differ");
}

#[test]
fn bench_reports_submits_per_step_and_warns_about_long_kernels() {
    if !common::gpu_or_skip() {
        return;
    }
    let json = |env: &[(&str, &str)]| {
        let e = trainer(&[BENCH, &["--json"]].concat(), env);
        assert_eq!(e.code, Some(0), "{}", e.stderr);
        let v: serde_json::Value = serde_json::from_str(&e.stdout).expect("json");
        (
            v["submits_per_step"].as_u64().expect("submits_per_step"),
            e.stderr,
        )
    };
    let (one, err) = json(&[("TRAINER_GPU_SUBMIT_MS", "inf")]);
    assert_eq!(one, 1);
    assert!(!err.contains("warning"), "{err}");
    let (many, err) = json(&[("TRAINER_GPU_SUBMIT_MS", "0.001")]);
    assert!(many > 1, "{many}");
    assert_eq!(err.matches("warning: ").count(), 1, "{err}");
    assert!(
        err.contains(
            "a kernel estimated from the timed first step above the 0.001 ms a submit may take"
        ) && err.contains("layer `fc1` (about "),
        "{err}"
    );
    let cpu = trainer(
        &[
            "bench",
            "configs/mlp.toml",
            "--device",
            "cpu",
            "--steps",
            "1",
            "--json",
        ],
        &[],
    );
    assert!(!cpu.stdout.contains("submits_per_step"), "{}", cpu.stdout);
}
