//! How `resume`, `eval` and `predict` find a checkpoint, driven through the CLI: one rule for
//! all three (`latest`, else the newest checkpoint that verifies and fits the model, else an
//! error listing every candidate and why). Each class of broken run gets every variant:
//! a broken `latest` pointer (deleted, empty, junk, outside the run, a directory, 1 MB, a FIFO),
//! a newest checkpoint whose checksums pass but whose tensors do not fit (transposed, missing,
//! renamed), another model's checkpoint, nothing valid at all, and FIFOs in place of files.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use trainer::checkpoint::{self, NamedTensor, Store};

/// What every command here gets: a small slice of Fashion-MNIST on the CPU.
const DATA: [&str; 6] = [
    "--set",
    "data.train_limit=128",
    "--set",
    "data.val_limit=32",
    "--set",
    "data.batch_size=16",
];

/// A run of configs/mlp.toml: 8 steps, a checkpoint every 2, all kept.
fn trained_run(dir: &Path) -> PathBuf {
    let run = dir.join("pristine");
    let r = run.to_str().unwrap();
    let args = [
        &["fit", "configs/mlp.toml", "--device", "cpu", "--run-dir", r][..],
        &DATA,
        &[
            "--set",
            "train.epochs=1",
            "--set",
            "train.save_every=\"2 steps\"",
            "--set",
            "train.keep=10",
        ],
    ]
    .concat();
    let out = within(&args, 120);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    run
}

/// A copy of `from` at `to` (a run directory: files and directories only).
fn copy_run(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_run(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A copy of the pristine run as a run interrupted after step 6 (its step 8 gone), so that a
/// resume has steps left to run and a checkpoint to save.
fn interrupted_copy(pristine: &Path, to: &Path) -> PathBuf {
    copy_run(pristine, to);
    std::fs::remove_dir_all(to.join("checkpoints/step-000000008")).unwrap();
    std::fs::write(to.join("checkpoints/latest"), "step-000000006\n").unwrap();
    to.to_path_buf()
}

/// Runs trainer, failing the test if it has not ended after `secs` (a blocked read).
fn within(args: &[&str], secs: u64) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn trainer");
    let start = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if start.elapsed() > Duration::from_secs(secs) {
            child.kill().expect("kill");
            panic!("trainer {args:?} still running after {secs} s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn eval(config: &str, checkpoint: &Path) -> Output {
    let c = checkpoint.to_str().unwrap();
    let args = [
        &["eval", config, "--checkpoint", c, "--device", "cpu"][..],
        &["--split", "val", "--json"],
        &DATA,
    ]
    .concat();
    within(&args, 60)
}

fn predict(checkpoint: &Path, image: &Path) -> Output {
    let (c, i) = (checkpoint.to_str().unwrap(), image.to_str().unwrap());
    let args = [
        &["predict", "configs/mlp.toml", "--checkpoint", c][..],
        &["--device", "cpu", "--json", i],
        &DATA,
    ]
    .concat();
    within(&args, 60)
}

fn resume(run: &Path) -> Output {
    within(&["resume", run.to_str().unwrap(), "--device", "cpu"], 120)
}

/// An uncompressed IDX file of two 28x28 images.
fn idx_images(dir: &Path) -> PathBuf {
    let mut bytes = vec![0, 0, 8, 3];
    for d in [2u32, 28, 28] {
        bytes.extend(d.to_be_bytes());
    }
    bytes.extend((0..2 * 784).map(|i| (i % 256) as u8));
    let path = dir.join("two-images-idx3-ubyte");
    std::fs::write(&path, bytes).unwrap();
    path
}

fn mkfifo(path: &Path) {
    let _ = std::fs::remove_file(path);
    let made = Command::new("mkfifo").arg(path).status().expect("mkfifo");
    assert!(made.success(), "mkfifo {}", path.display());
}

/// Exit code, and that stderr holds every needle and stays on one screen.
fn expect(out: &Output, code: i32, needles: &[&str], what: &str) {
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{what}:\n{err}");
    for needle in needles {
        assert!(err.contains(needle), "{what}: {needle:?} not in:\n{err}");
    }
    assert!(
        err.len() < 3000 && err.lines().count() < 25 && err.lines().all(|l| l.len() < 500),
        "{what}: more than a screen:\n{err}"
    );
}

/// The checkpoint eval's JSON report says it used.
fn evaluated(out: &Output) -> String {
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("eval JSON");
    report["checkpoint"]
        .as_str()
        .expect("checkpoint")
        .to_string()
}

#[test]
fn every_broken_latest_resolves_to_the_newest_valid_checkpoint_in_eval_predict_and_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let pristine = trained_run(tmp.path());
    let image = idx_images(tmp.path());
    type Break = fn(&Path);
    let cases: [(&str, Break, &str); 8] = [
        (
            "deleted",
            |p| std::fs::remove_file(p).unwrap(),
            "latest is missing",
        ),
        (
            "empty",
            |p| std::fs::write(p, "").unwrap(),
            "latest is empty",
        ),
        (
            "junk",
            |p| std::fs::write(p, b"\x1b[2J\x00\xffrm -rf\n").unwrap(),
            "latest names `\\x1b[2J\\x00\\xffrm -rf`, which is not a checkpoint directory of this run",
        ),
        (
            "outside the run",
            |p| std::fs::write(p, "../../pristine/checkpoints/step-000000008\n").unwrap(),
            "latest names `../../pristine/checkpoints/step-000000008`, which is not a checkpoint directory of this run",
        ),
        (
            "a directory",
            |p| {
                std::fs::remove_file(p).unwrap();
                std::fs::create_dir(p).unwrap();
            },
            "latest: is a directory, not a regular file",
        ),
        (
            "a 1 MB junk file",
            |p| std::fs::write(p, (0..1 << 20).map(|i| i as u8).collect::<Vec<u8>>()).unwrap(),
            "latest is 1048576 bytes long, not a checkpoint name (it starts with `\\x00\\x01\\x02",
        ),
        (
            "a FIFO",
            mkfifo,
            "latest: is a FIFO (named pipe), not a regular file",
        ),
        (
            "a dangling name",
            |p| std::fs::write(p, "step-000000999\n").unwrap(),
            "checkpoint step-000000999 is unusable: reading ",
        ),
    ];
    for (i, (case, break_latest, problem)) in cases.into_iter().enumerate() {
        let run = interrupted_copy(&pristine, &tmp.path().join(format!("run{i}")));
        break_latest(&run.join("checkpoints/latest"));
        let newest = run.join("checkpoints/step-000000006");
        let warning = [problem, "step-000000006", "warning: "];

        let out = eval("configs/mlp.toml", &run);
        expect(&out, 0, &warning, &format!("eval, latest {case}"));
        assert_eq!(evaluated(&out), newest.to_str().unwrap(), "{case}");

        let out = predict(&run, &image);
        expect(&out, 0, &warning, &format!("predict, latest {case}"));

        let out = resume(&run);
        expect(
            &out,
            0,
            &[
                &warning[..],
                &["at step 6 (epoch 1, batch 6)", "done after 8 steps"],
            ]
            .concat(),
            &format!("resume, latest {case}"),
        );
        // The save at the end replaced the broken pointer.
        assert_eq!(
            std::fs::read_to_string(run.join("checkpoints/latest")).unwrap(),
            "step-000000008\n",
            "{case}"
        );
    }
}

/// Rewrites the newest checkpoint (step 8) of `run` with `change` applied to its weights,
/// through the library's own save, so every checksum matches.
fn rewrite_newest(run: &Path, change: impl Fn(&mut Vec<NamedTensor>)) {
    let dir = run.join("checkpoints");
    let mut ckpt = checkpoint::load(&dir.join("step-000000008")).expect("load");
    change(&mut ckpt.weights);
    Store::new(&dir, 10).save(&ckpt, false).expect("save");
}

fn transpose(t: &mut NamedTensor) {
    let (rows, cols) = (t.shape[0], t.shape[1]);
    t.data = (0..rows * cols)
        .map(|i| t.data[(i % rows) * cols + i / rows])
        .collect();
    t.shape = vec![cols, rows];
}

fn named<'a>(weights: &'a mut [NamedTensor], name: &str) -> &'a mut NamedTensor {
    weights.iter_mut().find(|t| t.name == name).expect(name)
}

#[test]
fn a_newest_checkpoint_that_does_not_fit_is_passed_over_and_named() {
    let tmp = tempfile::tempdir().unwrap();
    let pristine = trained_run(tmp.path());
    type Change = fn(&mut Vec<NamedTensor>);
    let cases: [(&str, Change, &[&str]); 3] = [
        (
            "transposed",
            |w| transpose(named(w, "fc1.weight")),
            &["`fc1.weight` has shape [784, 256] in the checkpoint but [256, 784] in the model"],
        ),
        (
            "missing",
            |w| w.retain(|t| t.name != "fc2.bias"),
            &["it has no `fc2.bias`"],
        ),
        (
            "renamed",
            |w| named(w, "fc3.weight").name = "head.weight".into(),
            &["it has no `fc3.weight`; it has `head.weight`, which the model does not"],
        ),
    ];
    for (i, (case, change, reason)) in cases.into_iter().enumerate() {
        let run = tmp.path().join(format!("run{i}"));
        copy_run(&pristine, &run);
        rewrite_newest(&run, change);
        let bad = run.join("checkpoints/step-000000008");
        let skipped = [
            &["warning: checkpoint step-000000008 is unusable: does not fit this model: "][..],
            reason,
            &["; loaded step-000000006 instead"],
        ]
        .concat();

        // Named explicitly, the checkpoint is an error that names it.
        let out = eval("configs/mlp.toml", &bad);
        let named = format!("error: {}: does not fit this model: ", bad.display());
        expect(&out, 2, &[&[named.as_str()][..], reason].concat(), case);

        // Through the run, eval falls back with a warning...
        let out = eval("configs/mlp.toml", &run);
        expect(&out, 0, &skipped, &format!("eval, {case}"));
        assert!(evaluated(&out).ends_with("step-000000006"), "{case}");

        // ... and so does resume, which then runs steps 7 and 8 again.
        let out = resume(&run);
        expect(
            &out,
            0,
            &[
                &skipped[..],
                &["at step 6 (epoch 1, batch 6)", "done after 8 steps"],
            ]
            .concat(),
            &format!("resume, {case}"),
        );
        let out = eval("configs/mlp.toml", &bad);
        expect(&out, 0, &[], &format!("eval after the resume, {case}"));
    }
}

#[test]
fn another_models_checkpoint_is_called_that_with_both_sizes() {
    let tmp = tempfile::tempdir().unwrap();
    let run = trained_run(tmp.path());
    let step = run.join("checkpoints/step-000000008");
    for config in ["configs/lenet.toml", "configs/resnet.toml"] {
        let out = eval(config, &step);
        expect(
            &out,
            2,
            &[
                &format!(
                    "error: {}: belongs to a different model: it holds 6 tensors (235,146 parameters), this model ",
                    step.display()
                ),
                "it has no `conv1.weight`",
            ],
            config,
        );
        // Through the run: every checkpoint on one line, not one line each.
        let out = eval(config, &run);
        expect(
            &out,
            2,
            &[
                "no valid checkpoint in ",
                "  step-000000008, step-000000006, step-000000004 and 1 more: belongs to a different model",
            ],
            config,
        );
    }
    let out = eval("configs/lenet.toml", &step);
    expect(&out, 2, &["this model 10 (61,706)"], "lenet's size");
}

#[test]
fn when_nothing_is_valid_the_error_lists_every_candidate_and_why() {
    let tmp = tempfile::tempdir().unwrap();
    let run = trained_run(tmp.path());
    let ckpts = run.join("checkpoints");
    std::fs::write(ckpts.join("latest"), "garbage").unwrap();
    std::fs::write(ckpts.join("step-000000008/checksums.json"), "{").unwrap();
    rewrite_step(&ckpts, 6, |w| transpose(named(w, "fc2.weight")));
    mkfifo(&ckpts.join("step-000000004/model.safetensors"));
    let model = ckpts.join("step-000000002/model.safetensors");
    let mut bytes = std::fs::read(&model).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&model, bytes).unwrap();
    let listed = [
        "no valid checkpoint in ",
        "; tried:\n  ",
        "latest names `garbage`",
        "  step-000000008: ",
        "step-000000008/checksums.json: EOF while parsing",
        "  step-000000006: does not fit this model: `fc2.weight` has shape [256, 128] in the checkpoint but [128, 256] in the model",
        "  step-000000004: ",
        "step-000000004/model.safetensors: is a FIFO (named pipe), not a regular file",
        "  step-000000002: ",
        "step-000000002/model.safetensors: checksum mismatch",
    ];
    expect(&eval("configs/mlp.toml", &run), 2, &listed, "eval");
    expect(&resume(&run), 2, &listed, "resume");

    // No checkpoint at all is not "none valid": the run has not saved one yet.
    std::fs::remove_dir_all(&ckpts).unwrap();
    std::fs::create_dir(&ckpts).unwrap();
    let none = format!("error: no checkpoint in {} yet", ckpts.display());
    expect(
        &eval("configs/mlp.toml", &run),
        2,
        &[&none],
        "eval, no checkpoint",
    );
    expect(&resume(&run), 2, &[&none], "resume, no checkpoint");
}

/// `rewrite_newest` for any step (the store's `latest` then names it).
fn rewrite_step(dir: &Path, step: u64, change: impl Fn(&mut Vec<NamedTensor>)) {
    let mut ckpt = checkpoint::load(&dir.join(format!("step-{step:09}"))).expect("load");
    change(&mut ckpt.weights);
    let latest = std::fs::read(dir.join("latest")).unwrap();
    Store::new(dir, 10).save(&ckpt, false).expect("save");
    std::fs::write(dir.join("latest"), latest).unwrap();
}

/// A FIFO in place of any file a command reads is an error (or a passed-over checkpoint)
/// naming it within seconds, never a hang.
#[test]
fn a_fifo_in_place_of_a_file_is_named_not_waited_on() {
    let tmp = tempfile::tempdir().unwrap();
    let pristine = trained_run(tmp.path());
    let image = idx_images(tmp.path());
    for file in [
        "model.safetensors",
        "checksums.json",
        "state.json",
        "optimizer.safetensors",
    ] {
        let run = tmp.path().join(format!("run-{file}"));
        copy_run(&pristine, &run);
        let fifo = run.join("checkpoints/step-000000008").join(file);
        mkfifo(&fifo);
        let problem = format!(
            "{}: is a FIFO (named pipe), not a regular file",
            fifo.display()
        );
        let fell_back = [problem.as_str(), "step-000000006"];
        expect(&resume(&run), 0, &fell_back, &format!("resume, {file}"));
        mkfifo(&fifo);
        // Eval reads only the weights and their checksums.
        let weights = matches!(file, "model.safetensors" | "checksums.json");
        let out = eval("configs/mlp.toml", &run);
        match weights {
            true => expect(&out, 0, &fell_back, &format!("eval, {file}")),
            false => expect(&out, 0, &[], &format!("eval, {file}")),
        }
        let out = eval("configs/mlp.toml", &run.join("checkpoints/step-000000008"));
        match weights {
            true => expect(
                &out,
                2,
                &[&format!("error: {problem}")],
                &format!("eval step 8, {file}"),
            ),
            false => expect(&out, 0, &[], &format!("eval step 8, {file}")),
        }
        if file == "model.safetensors" {
            let out = predict(&fifo, &image);
            expect(
                &out,
                2,
                &[&format!("error: {problem}")],
                "predict on a FIFO",
            );
        }
    }
    // The run's own files, which resume reads before any checkpoint.
    for file in ["config.resolved.toml", "manifest.json"] {
        let run = tmp.path().join(format!("run-{file}"));
        copy_run(&pristine, &run);
        mkfifo(&run.join(file));
        let out = resume(&run);
        expect(
            &out,
            2,
            &[&format!("{} is not a run directory", run.display()), file],
            file,
        );
    }
}
