//! Closed and failing output streams, driven as a user meets them: `trainer fit ... 2>&1 |
//! head -1`, a log pipe or an ssh session that went away, a redirect onto a full disk. A run
//! whose stdout or stderr is gone still trains to its end, with its checkpoints and metrics;
//! a command whose reader left exits without a panic (never 101 or 134). All printing goes
//! through src/output.rs, which is checked here too.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_trainer");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// configs/mlp.toml, 20 steps of 32: a metrics row every 2 steps, a checkpoint every 5, and
/// a progress line after every step, so most writes happen after the stream has closed.
fn fit(dir: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.current_dir(ROOT)
        .env("TRAINER_PROGRESS_SECS", "0")
        .args(["fit", "configs/mlp.toml", "--device", "cpu", "--run-dir"])
        .arg(dir)
        .args([
            "--set",
            "data.train_limit=640",
            "--set",
            "data.val_limit=128",
            "--set",
            "data.batch_size=32",
            "--set",
            "train.epochs=1",
            "--set",
            "log.every_steps=2",
            "--set",
            "train.save_every=\"5 steps\"",
        ]);
    c
}

fn read_all(r: Option<impl Read>) -> String {
    let mut s = String::new();
    if let Some(mut r) = r {
        let _ = r.read_to_string(&mut s);
    }
    s
}

/// The run finished as if nothing had happened: a metrics.csv row at every log step, the
/// last checkpoint named by `latest`, and `eval` accepts it.
fn assert_complete(dir: &Path, what: &str) {
    let csv = std::fs::read_to_string(dir.join("metrics.csv")).expect("metrics.csv");
    let steps: Vec<&str> = csv
        .lines()
        .skip(1)
        .filter_map(|l| l.split(',').next())
        .collect();
    let expected: Vec<String> = (1..=10).map(|i| (2 * i).to_string()).collect();
    assert_eq!(steps, expected, "{what}: metrics.csv\n{csv}");
    let latest = std::fs::read_to_string(dir.join("checkpoints/latest")).expect("latest");
    assert_eq!(latest.trim(), "step-000000020", "{what}");
    let eval = Command::new(BIN)
        .current_dir(ROOT)
        .args([
            "eval",
            "configs/mlp.toml",
            "--device",
            "cpu",
            "--checkpoint",
        ])
        .arg(dir)
        .output()
        .expect("run eval");
    assert_eq!(
        eval.status.code(),
        Some(0),
        "{what}: eval of the last checkpoint\n{}",
        String::from_utf8_lossy(&eval.stderr)
    );
}

fn wait_ok(mut child: Child, what: &str, stderr: String) {
    let status = child.wait().expect("wait for trainer");
    assert_eq!(status.code(), Some(0), "{what}: {status}\n{stderr}");
}

#[test]
fn fit_with_stderr_closed_trains_to_the_end() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let mut child = fit(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn trainer");
    drop(child.stderr.take()); // the reader is gone: every write to stderr fails (EPIPE)
    let out = read_all(child.stdout.take());
    wait_ok(child, "stderr closed", out);
    assert_complete(&dir, "stderr closed");
}

#[test]
fn fit_with_stdout_closed_trains_to_the_end() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let mut child = fit(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn trainer");
    drop(child.stdout.take());
    let err = read_all(child.stderr.take());
    assert!(err.contains("done after 20 steps"), "{err}");
    wait_ok(child, "stdout closed", err);
    assert_complete(&dir, "stdout closed");
}

/// `trainer fit ... 2>&1 | head -1`: both streams into one pipe whose reader exits after the
/// first line.
#[test]
fn fit_into_head_1_trains_to_the_end() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let (reader, writer) = std::io::pipe().expect("a pipe");
    let mut head = Command::new("head")
        .args(["-n", "1"])
        .stdin(reader)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn head");
    let child = fit(&dir)
        .stdout(writer.try_clone().expect("dup the pipe"))
        .stderr(writer)
        .spawn()
        .expect("spawn trainer");
    let first = read_all(head.stdout.take());
    assert!(head.wait().expect("head").success());
    assert!(first.starts_with("training mlp-fashion"), "{first}");
    wait_ok(child, "2>&1 | head -1", first);
    assert_complete(&dir, "2>&1 | head -1");
}

/// Commands whose result is long, into a reader that left at once: exit 0 (the reader had
/// what it wanted), no panic, no "internal error".
#[test]
fn commands_into_a_closed_stdout_exit_quietly() {
    let commands: &[&[&str]] = &[
        &["check", "configs/mlp.toml"],
        &["check", "configs/resnet.toml", "--json"],
        &["plan", "configs/mlp.toml"],
        &["plan", "configs/resnet.toml", "--launches"],
        &["plan", "configs/mlp.toml", "--json"],
        &["graph", "configs/resnet.toml"],
        &["graph", "configs/mlp.toml", "--backward"],
        &["graph", "configs/resnet.toml", "--format", "json"],
        &["--help"],
        &["plan", "--help"],
    ];
    for args in commands {
        let mut child = Command::new(BIN)
            .current_dir(ROOT)
            .args(*args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn trainer");
        drop(child.stdout.take());
        let err = read_all(child.stderr.take());
        let status = child.wait().expect("wait");
        assert_eq!(status.code(), Some(0), "trainer {args:?}: {status}\n{err}");
        assert!(
            !err.contains("internal error") && !err.contains("panicked"),
            "trainer {args:?}:\n{err}"
        );
    }
}

/// Errors into a closed stderr keep their exit code: the message is lost, not the process.
#[test]
fn errors_into_a_closed_stderr_keep_their_exit_code() {
    let bad = "tests/configs/bad/add_with_one_input.toml";
    let commands: &[(&[&str], i32)] = &[
        (&["check", bad], 2),
        (&["plan", bad, "--launches"], 2),
        (&["fit", bad, "--device", "cpu"], 2),
        (&["fit", "configs/mlp.toml", "--set", "optimizer.lr=-1"], 2),
        (&["resume", "no/such/run"], 2),
        (&["plan", "--batch", "0", "configs/mlp.toml"], 2),
    ];
    for (args, code) in commands {
        let mut child = Command::new(BIN)
            .current_dir(ROOT)
            .args(*args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn trainer");
        drop(child.stderr.take());
        let status = child.wait().expect("wait");
        assert_eq!(status.code(), Some(*code), "trainer {args:?}: {status}");
    }
}

/// A result that cannot be written (a redirect onto a full disk) is an error that says so,
/// exit 1; not a panic, not "internal error".
#[cfg(target_os = "linux")]
#[test]
fn a_full_disk_under_stdout_is_exit_1_with_the_reason() {
    for args in [
        &["check", "configs/mlp.toml"][..],
        &["graph", "configs/mlp.toml"][..],
    ] {
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .expect("/dev/full");
        let out = Command::new(BIN)
            .current_dir(ROOT)
            .args(args)
            .stdout(full)
            .output()
            .expect("run trainer");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "trainer {args:?}:\n{err}");
        assert!(
            err.contains("cannot write the output") && err.contains("No space left"),
            "{err}"
        );
        assert!(!err.contains("internal error"), "{err}");
    }
}

/// Every print in src/ goes through src/output.rs: `print!`, `eprint!` and their `ln`
/// forms panic when the stream is gone. Test modules may use them.
#[test]
fn nothing_in_src_prints_around_output_rs() {
    let mut offenders = Vec::new();
    let mut stack = vec![Path::new(ROOT).join("src")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let name = path.file_name().unwrap_or_default();
            if path.extension().is_none_or(|e| e != "rs")
                || name == "output.rs"
                || name == "tests.rs"
            {
                continue;
            }
            let file = std::fs::File::open(&path).expect("open");
            let mut after_cfg_test = false;
            for (n, line) in BufReader::new(file).lines().enumerate() {
                let line = line.expect("utf-8 source");
                // A test module ends the file, by this crate's layout.
                if after_cfg_test && line.trim_start().starts_with("mod tests") {
                    break;
                }
                after_cfg_test = line.trim() == "#[cfg(test)]";
                let code = line.split("//").next().unwrap_or("");
                if ["print!(", "println!(", "dbg!("]
                    .iter()
                    .any(|m| code.contains(m))
                {
                    offenders.push(format!("{}:{}: {}", path.display(), n + 1, line.trim()));
                }
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "print through trainer::output (errln!, output::stdout) instead:\n{}",
        offenders.join("\n")
    );
}
