//! One writer per run directory, driven through the CLI: while a `fit` trains, a second `fit`
//! into its directory, a `resume` and a `fit --resume` are refused (exit 2) with the holder's
//! pid, `eval` still reads it, and the first run goes on unharmed; once the holder is killed
//! (SIGKILL: no clean-up of any kind), the lock is free and `resume` continues the run.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A long run of configs/mlp.toml on a slice of Fashion-MNIST: 100 epochs of 32 steps,
/// a checkpoint every 16 steps. The tests kill it long before it ends.
const LONG: [&str; 12] = [
    "--set",
    "data.train_limit=512",
    "--set",
    "data.val_limit=32",
    "--set",
    "data.batch_size=16",
    "--set",
    "train.epochs=100",
    "--set",
    "train.save_every=\"16 steps\"",
    "--device",
    "cpu",
];

fn trainer(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_trainer"));
    c.args(args).current_dir(env!("CARGO_MANIFEST_DIR"));
    c
}

fn run(args: &[&str]) -> Output {
    trainer(args).output().expect("run trainer")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The step `latest` names, if any.
fn latest_step(run: &Path) -> Option<u64> {
    let name = std::fs::read_to_string(run.join("checkpoints/latest")).ok()?;
    name.trim().strip_prefix("step-")?.parse().ok()
}

/// Polls `ready` until it holds, failing if `child` ends first or a minute passes.
fn wait_until(child: &mut Child, what: &str, ready: impl Fn() -> bool) {
    let start = Instant::now();
    while !ready() {
        if let Some(status) = child.try_wait().expect("try_wait") {
            panic!("the first run ended ({status}) before {what}");
        }
        assert!(start.elapsed() < Duration::from_secs(120), "no {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn refused_with_pid(out: &Output, pid: u32, run: &Path, what: &str) {
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{what}:\n{err}");
    let holder = format!(
        "error: {} is in use by another trainer process (pid {pid}), which holds its lock {}",
        run.display(),
        run.join("run.lock").display()
    );
    assert!(err.contains(&holder), "{what}: {holder:?} not in:\n{err}");
    assert!(err.lines().count() < 10, "{what}:\n{err}");
}

/// metrics.csv's step column.
fn logged_steps(run: &Path) -> Vec<u64> {
    let csv = std::fs::read_to_string(run.join("metrics.csv")).expect("metrics.csv");
    csv.lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap().parse().expect("step"))
        .collect()
}

fn event_files(run: &Path) -> usize {
    std::fs::read_dir(run)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("events.out.tfevents")
        })
        .count()
}

#[test]
fn a_second_writer_is_refused_with_the_holders_pid_until_the_holder_dies() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let d = dir.to_str().unwrap();
    let log = tmp.path().join("first.log");
    let fit = [&["fit", "configs/mlp.toml", "--run-dir", d][..], &LONG].concat();
    let mut first = trainer(&fit)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("spawn the first run");
    let pid = first.id();
    let lock = dir.join("run.lock");
    wait_until(&mut first, "a checkpoint", || {
        latest_step(&dir).is_some()
            && std::fs::read_to_string(&lock).is_ok_and(|s| s == format!("{pid}\n"))
    });

    // Every kind of second writer, while the first trains.
    refused_with_pid(&run(&fit), pid, &dir, "a second fit into the directory");
    refused_with_pid(&run(&["resume", d, "--device", "cpu"]), pid, &dir, "resume");
    let fit_resume = [&["fit", "configs/mlp.toml", "--resume", d][..], &LONG].concat();
    refused_with_pid(&run(&fit_resume), pid, &dir, "fit --resume");
    // A reader needs no lock.
    let out = run(&[
        "eval",
        "configs/mlp.toml",
        "--checkpoint",
        d,
        "--device",
        "cpu",
        "--split",
        "val",
        "--set",
        "data.val_limit=32",
    ]);
    assert_eq!(out.status.code(), Some(0), "eval:\n{}", text(&out.stderr));

    // The first run goes on: it saves again, and then dies by SIGKILL.
    let seen = latest_step(&dir).unwrap();
    wait_until(&mut first, "a later checkpoint", || {
        latest_step(&dir).is_some_and(|s| s > seen)
    });
    first.kill().expect("SIGKILL");
    first.wait().unwrap();
    let first_log = std::fs::read_to_string(&log).unwrap();
    assert!(!first_log.contains("error"), "{first_log}");
    assert_eq!(event_files(&dir), 1, "one writer, one event file");
    let steps = logged_steps(&dir);
    assert!(
        steps.windows(2).all(|w| w[0] < w[1]),
        "metrics.csv rows from two writers: {steps:?}"
    );
    // The killed process's pid is still in the file, but the lock died with it.
    assert_eq!(std::fs::read_to_string(&lock).unwrap(), format!("{pid}\n"));
    let at = latest_step(&dir).unwrap();
    let stop = format!("train.max_steps={}", at + 4);
    let out = run(&["resume", d, "--device", "cpu", "--force", "--set", &stop]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "resume after the kill:\n{err}");
    assert!(
        err.contains(&format!("resuming {d} at step {at} ")),
        "{err}"
    );
    assert_eq!(latest_step(&dir), Some(at + 4));
    // A clean exit leaves the file empty: no holder.
    assert_eq!(std::fs::read_to_string(&lock).unwrap(), "");
    assert_eq!(event_files(&dir), 2, "one event file per process");
}

/// Runs without --run-dir pick `<log.dir>/<name>/<time>`; two started in the same second
/// must still get a directory each (the name is claimed by creating it), and both finish.
#[test]
fn runs_started_together_get_a_directory_each() {
    let tmp = tempfile::tempdir().unwrap();
    let log_dir = format!("log.dir=\"{}\"", tmp.path().display());
    let args = [
        "fit",
        "configs/mlp.toml",
        "--device",
        "cpu",
        "--set",
        &log_dir,
        "--set",
        "data.train_limit=64",
        "--set",
        "data.val_limit=16",
        "--set",
        "data.batch_size=16",
        "--set",
        "train.epochs=1",
    ];
    let children: Vec<Child> = (0..3)
        .map(|_| {
            trainer(&args)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn")
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    }
    let runs: Vec<PathBuf> = std::fs::read_dir(tmp.path().join("mlp-fashion"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(runs.len(), 3, "{runs:?}");
    for run in runs {
        assert_eq!(event_files(&run), 1, "{}", run.display());
        assert_eq!(latest_step(&run), Some(4), "{}", run.display());
    }
}
