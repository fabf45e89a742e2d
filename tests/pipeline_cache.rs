//! The persistent GPU pipeline cache through the binary, on lavapipe: a first `trainer fit`
//! writes the cache file, a second one loads it and trains to the same bits; a corrupt file
//! is ignored (and replaced), a directory that cannot be written costs one warning, never
//! the run.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

/// A small conv net with batchnorm on synthetic data: 4 steps and a validation.
const CONFIG: &str = r#"
[run]
name = "cache"
seed = 3

[data]
dataset = "synthetic"
samples = 64
classes = 4
batch_size = 16

[model]
input = { shape = [1, 6, 6] }

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

[train]
epochs = 1

[log]
every_steps = 1
"#;

/// Runs `trainer fit` on `CONFIG` into `dir/<name>` with `TRAINER_CACHE_DIR=cache`; asserts
/// exit 0 and returns stderr.
fn fit(dir: &Path, name: &str, cache: &Path) -> String {
    let config = dir.join("cache.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args([
            "fit",
            config.to_str().unwrap(),
            "--device",
            "gpu",
            "--run-dir",
        ])
        .arg(dir.join(name))
        .env("TRAINER_CACHE_DIR", cache)
        .output()
        .expect("runs");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(0), "{err}");
    err
}

/// The `ready for step 1` line.
fn ready(err: &str) -> &str {
    err.lines()
        .find(|l| l.starts_with("ready for step 1 in "))
        .unwrap_or_else(|| panic!("no start line in:\n{err}"))
}

/// The final weights and metrics.csv without its wall-clock column (`img_per_s`).
fn results(run: &Path) -> (Vec<u8>, Vec<Vec<String>>) {
    let ckpt = std::fs::read_to_string(run.join("checkpoints/latest")).unwrap();
    let weights = std::fs::read(
        run.join("checkpoints")
            .join(ckpt.trim())
            .join("model.safetensors"),
    );
    let csv = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    let timing = header.iter().position(|h| *h == "img_per_s");
    let rows = csv
        .lines()
        .map(|l| {
            let mut row: Vec<String> = l.split(',').map(String::from).collect();
            if let Some(t) = timing.filter(|&t| t < row.len()) {
                row.remove(t);
            }
            row
        })
        .collect();
    (weights.unwrap(), rows)
}

/// The one cache file in `dir`.
fn cache_file(dir: &Path) -> PathBuf {
    let files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(
        files[0].to_string_lossy().ends_with(".pipelines"),
        "{files:?}"
    );
    files[0].clone()
}

const MAGIC: &[u8] = b"trainer-pipes-1\n";

#[test]
fn a_second_fit_loads_the_pipeline_cache_and_trains_to_the_same_bits() {
    if !common::gpu_or_skip() {
        return;
    }
    let gpu = trainer::backend::gpu::test_gpu().unwrap();
    if !gpu.features.contains(wgpu::Features::PIPELINE_CACHE) {
        eprintln!("NOTICE: skipping: the adapter has no PIPELINE_CACHE");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");

    let first = fit(tmp.path(), "first", &cache);
    assert!(ready(&first).contains("pipeline cache empty"), "{first}");
    let file = cache_file(&cache);
    assert!(std::fs::read(&file).unwrap().starts_with(MAGIC));

    let second = fit(tmp.path(), "second", &cache);
    assert!(ready(&second).contains("pipeline cache loaded"), "{second}");
    let expected = results(&tmp.path().join("first"));
    assert_eq!(expected.1.len(), 1 + 4, "a header and a row per step");
    assert!(
        results(&tmp.path().join("second")) == expected,
        "a run from the cache differs"
    );

    std::fs::write(&file, b"\x00garbage").unwrap();
    let third = fit(tmp.path(), "third", &cache);
    assert!(
        ready(&third).contains("pipeline cache ignored") && ready(&third).contains("is corrupt"),
        "{third}"
    );
    assert!(
        results(&tmp.path().join("third")) == expected,
        "a run past a corrupt cache differs"
    );
    assert!(
        std::fs::read(cache_file(&cache))
            .unwrap()
            .starts_with(MAGIC),
        "the corrupt file was not replaced"
    );
}

#[test]
fn a_cache_directory_that_cannot_be_written_costs_one_warning() {
    if !common::gpu_or_skip() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    // Below a regular file: no directory can be made there, whoever runs the test.
    let blocker = tmp.path().join("file");
    std::fs::write(&blocker, b"").unwrap();
    let err = fit(tmp.path(), "run", &blocker.join("cache"));
    let warnings = err
        .lines()
        .filter(|l| l.contains("pipeline cache cannot be written"))
        .count();
    let gpu = trainer::backend::gpu::test_gpu().unwrap();
    let expected = usize::from(gpu.features.contains(wgpu::Features::PIPELINE_CACHE));
    assert_eq!(warnings, expected, "{err}");
}
