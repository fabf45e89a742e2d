//! Vision transformers with ViT's class token, through the binary: a tiny one
//! (tests/configs/good/vit_tiny.toml: class token, position table, an encoder block, `slice`
//! of the class token into the head) trains to the same loss curve on the CPU and the GPU
//! backend (lavapipe in CI) and saves its token as `cls_token.weight`; configs/vit.toml trains
//! on the CPU and its loss falls.

mod common;

use common::{gpu_or_skip, trainer};

/// `trainer fit CONFIG --device DEVICE` into a temporary run directory: the directory and
/// metrics.csv's train/loss column.
fn fit(config: &str, device: &str, sets: &[&str]) -> (tempfile::TempDir, Vec<f64>) {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let mut args = vec![
        "fit",
        config,
        "--device",
        device,
        "--run-dir",
        run.to_str().unwrap(),
    ];
    for s in sets {
        args.extend(["--set", s]);
    }
    let out = trainer(&args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let csv = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    let c = header.iter().position(|h| *h == "train/loss").unwrap();
    let loss = csv
        .lines()
        .skip(1)
        .filter_map(|l| l.split(',').nth(c)?.parse().ok())
        .collect();
    (dir, loss)
}

#[test]
fn a_tiny_vit_trains_alike_on_the_cpu_and_the_gpu() {
    let config = "tests/configs/good/vit_tiny.toml";
    let (dir, cpu) = fit(config, "cpu", &[]);
    assert_eq!(cpu.len(), 10, "{cpu:?}");
    assert!(cpu[9] < cpu[0] - 0.1, "the loss falls: {cpu:?}");
    // The class token is a parameter of its own, saved under its layer's name.
    let run = dir.path().join("run");
    let latest = std::fs::read_to_string(run.join("checkpoints/latest")).unwrap();
    let ckpt = trainer::checkpoint::load(&run.join("checkpoints").join(latest.trim())).unwrap();
    let token = ckpt
        .weights
        .iter()
        .find(|t| t.name == "cls_token.weight")
        .expect("cls_token.weight in the checkpoint");
    assert_eq!(token.shape, [1, 8]);
    if !gpu_or_skip() {
        return;
    }
    let (_gpu_dir, gpu) = fit(config, "gpu", &[]);
    for (g, c) in gpu.iter().zip(&cpu) {
        assert!((g - c).abs() < 1e-4, "gpu {gpu:?}, cpu {cpu:?}");
    }
}

#[test]
fn the_shipped_vit_learns_on_the_cpu() {
    // 20 steps at full learning rate (its one-epoch warmup would start near 0) on small
    // batches, validated on a few hundred images: the loss of the last 5 steps is below the
    // first 5's.
    let (_dir, loss) = fit(
        "configs/vit.toml",
        "cpu",
        &[
            "train.max_steps=20",
            "schedule.warmup_epochs=0",
            "data.batch_size=32",
            "data.val_limit=256",
            "log.every_steps=5",
        ],
    );
    assert_eq!(loss.len(), 4, "{loss:?}");
    assert!(loss[3] < loss[0] - 0.1, "the loss falls: {loss:?}");
}
