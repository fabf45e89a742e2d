//! Stopping a run with signals, sent as GNU `timeout`, a terminal and `kill -- -PGID` send
//! them: to the process and to its group, so one stop arrives twice. Signals that arrive
//! together are one stop (the run finishes its step, saves a checkpoint, exits 130); a second
//! interrupt after a pause exits at once, without a checkpoint, with exit 131, and says so.
//!
//! `TRAINER_TEST_SLOW_STEP_MS` makes every step take that long, so a signal lands in the
//! middle of one, as it does in a real run whose steps take seconds.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_trainer");

/// A small run on synthetic data that takes minutes unless stopped.
const TINY: &str = r#"
[run]
name = "tiny"
seed = 1

[data]
dataset = "synthetic"
samples = 256
classes = 4
batch_size = 16

[model]
input = { shape = [1, 8, 8] }

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

[train]
epochs = 100
save_every = "1000 steps"
"#;

/// A fit in its own process group (pgid = its pid), as `timeout` and shells start one.
struct Run {
    child: Child,
    config: PathBuf,
    dir: PathBuf,
    stderr: JoinHandle<String>,
}

/// Starts the fit and returns once it trains (its "training ..." line is printed after the
/// signal handler is installed).
fn start(tmp: &Path, slow_step_ms: u64) -> Run {
    let config = tmp.join("tiny.toml");
    std::fs::write(&config, TINY).unwrap();
    let dir = tmp.join("run");
    let mut child = Command::new(BIN)
        .args(["fit", "--device", "cpu", "--run-dir"])
        .arg(&dir)
        .arg(&config)
        .env("TRAINER_TEST_SLOW_STEP_MS", slow_step_ms.to_string())
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn trainer");
    let err = child.stderr.take().unwrap();
    let (training, started) = mpsc::channel();
    let stderr = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if line.starts_with("training ") {
                let _ = training.send(());
            }
            all += &line;
            all.push('\n');
        }
        all
    });
    let run = Run {
        child,
        config,
        dir,
        stderr,
    };
    if started.recv_timeout(Duration::from_secs(120)).is_err() {
        let (status, err) = run.finish();
        panic!("the run never started training: {status}\n{err}");
    }
    run
}

impl Run {
    fn pid(&self) -> String {
        self.child.id().to_string()
    }

    /// The process group, for `kill -- -PGID`.
    fn group(&self) -> String {
        format!("-{}", self.child.id())
    }

    /// Waits for the exit (killing the run after a minute: a signal was lost) and returns the
    /// status and everything it printed.
    fn finish(mut self) -> (ExitStatus, String) {
        let t0 = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                break s;
            }
            if t0.elapsed() > Duration::from_secs(60) {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "trainer still ran a minute after the signals:\n{}",
                    self.stderr.join().unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        (status, self.stderr.join().unwrap_or_default())
    }
}

/// `kill -s SIG -- TARGETS...`: one command, so the signals leave microseconds apart.
fn kill(signal: &str, targets: &[&str]) {
    let status = Command::new("kill")
        .args(["-s", signal, "--"])
        .args(targets)
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -s {signal} -- {targets:?}");
}

/// The run stopped after its step with a checkpoint that `eval` accepts, exit 130, and told
/// how to resume it.
fn assert_checkpointed(run: Run) {
    let (config, dir) = (run.config.clone(), run.dir.clone());
    let (status, err) = run.finish();
    assert_eq!(status.code(), Some(130), "{status}\n{err}");
    assert!(
        err.contains("checkpoint saved")
            && err.contains(&format!("trainer resume {}", dir.display())),
        "{err}"
    );
    assert_eq!(err.matches("interrupted").count(), 1, "{err}");
    let latest = std::fs::read_to_string(dir.join("checkpoints/latest")).expect("latest");
    assert!(latest.trim().starts_with("step-"), "{latest}");
    let eval = Command::new(BIN)
        .args(["eval", "--device", "cpu", "--checkpoint"])
        .arg(&dir)
        .arg(&config)
        .output()
        .expect("run eval");
    assert_eq!(
        eval.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&eval.stderr)
    );
}

/// What `timeout -s INT` does: SIGINT to the process, then to its group.
#[test]
fn sigint_to_process_and_group_at_once_is_one_stop() {
    let tmp = tempfile::tempdir().unwrap();
    let run = start(tmp.path(), 500);
    kill("INT", &[&run.pid(), &run.group()]);
    assert_checkpointed(run);
}

#[test]
fn sigint_then_sigterm_10ms_apart_is_one_stop() {
    let tmp = tempfile::tempdir().unwrap();
    let run = start(tmp.path(), 500);
    kill("INT", &[&run.pid()]);
    std::thread::sleep(Duration::from_millis(10));
    kill("TERM", &[&run.group()]);
    assert_checkpointed(run);
}

/// A stop that arrived twice, then, two seconds later, a deliberate interrupt in a step that
/// would take half a minute: exit at once, 131, without a checkpoint, and say so.
#[test]
fn a_second_interrupt_after_a_pause_exits_at_once_without_a_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let run = start(tmp.path(), 30_000);
    let dir = run.dir.clone();
    kill("INT", &[&run.pid(), &run.group()]);
    std::thread::sleep(Duration::from_secs(2));
    let second = Instant::now();
    kill("INT", &[&run.group()]);
    let (status, err) = run.finish();
    assert_eq!(status.code(), Some(131), "{status}\n{err}");
    assert!(
        second.elapsed() < Duration::from_secs(10),
        "it waited for the step"
    );
    assert!(
        err.contains("exiting now without saving a checkpoint")
            && err.contains("has no checkpoint to resume from"),
        "{err}"
    );
    assert!(!dir.join("checkpoints/latest").exists());
}

/// A stderr that nobody reads fills up, and the run blocks writing its progress (a stalled
/// terminal or log reader). A second interrupt must still exit at once: the handler never
/// waits for its message to be written.
#[test]
fn a_second_interrupt_exits_even_while_stderr_is_stuck() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("tiny.toml");
    std::fs::write(&config, TINY).unwrap();
    let dir = tmp.path().join("run");
    let mut child = Command::new(BIN)
        .args([
            "fit",
            "--device",
            "cpu",
            "--set",
            "log.every_steps=1",
            "--run-dir",
        ])
        .arg(&dir)
        .arg(&config)
        .env("TRAINER_PROGRESS_SECS", "0")
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn trainer");
    let unread = child.stderr.take();
    // A progress line per step fills the pipe within a few hundred steps; then the loop,
    // blocked, logs no more rows.
    let csv = dir.join("metrics.csv");
    let size = || std::fs::metadata(&csv).map_or(0, |m| m.len());
    let (t0, mut last, mut since) = (Instant::now(), 0, Instant::now());
    while last == 0 || since.elapsed() < Duration::from_secs(1) {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the run never blocked"
        );
        assert!(child.try_wait().unwrap().is_none(), "the run ended");
        std::thread::sleep(Duration::from_millis(50));
        if size() != last {
            (last, since) = (size(), Instant::now());
        }
    }
    let run = Run {
        child,
        config,
        dir,
        stderr: std::thread::spawn(String::new),
    };
    kill("INT", &[&run.pid(), &run.group()]);
    std::thread::sleep(Duration::from_secs(2));
    let second = Instant::now();
    kill("INT", &[&run.group()]);
    let (status, _) = run.finish();
    drop(unread);
    assert_eq!(status.code(), Some(131), "{status}");
    assert!(second.elapsed() < Duration::from_secs(10));
}
