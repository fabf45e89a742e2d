//! The training step's bits, pinned across refactors: a few steps of configs/mlp.toml and
//! configs/resnet.toml through `trainer fit` at a small batch, on the CPU and on the GPU
//! adapter (lavapipe in CI), reduced to one SHA-256 of every checkpoint tensor (weights,
//! running statistics, optimizer state) and the logged losses. tests/data/step_digests.txt
//! holds the digests made before a structural change; a change that moves code must not move
//! a bit. Digests depend on the machine (CPU kernel set, GPU adapter), so each is stored with
//! that key; on a machine with no stored digest the run is checked against a second run. On
//! an adapter with subgroups the GPU runs twice, with the subgroup reductions and with the
//! portable ones (`TRAINER_NO_SUBGROUPS=1`), each pinned under its own key.

mod common;

use std::path::Path;
use std::process::Command;

use safetensors::SafeTensors;
use sha2::{Digest, Sha256};

const DIGESTS: &str = include_str!("data/step_digests.txt");

/// (config, extra settings): a few steps each, every one a full training step.
const RUNS: [(&str, &[&str]); 2] = [
    (
        "configs/mlp.toml",
        &["data.batch_size=16", "data.train_limit=64"],
    ),
    (
        "configs/resnet.toml",
        &["data.batch_size=4", "data.train_limit=12"],
    ),
];

/// Trains (`portable`: with `TRAINER_NO_SUBGROUPS=1`), then hashes what the run left behind;
/// also returns the GPU adapter's name, with " with subgroups" where its reductions used them.
fn digest(
    config: &str,
    settings: &[&str],
    device: &str,
    portable: bool,
) -> (String, Option<String>) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let mut args = vec![
        "fit".to_string(),
        config.to_string(),
        "--device".into(),
        device.into(),
        "--run-dir".into(),
        dir.to_str().unwrap().into(),
    ];
    let common = ["data.val_limit=8", "train.epochs=1", "log.every_steps=1"];
    for s in settings.iter().chain(&common) {
        args.push("--set".into());
        args.push(s.to_string());
    }
    let mut trainer = Command::new(env!("CARGO_BIN_EXE_trainer"));
    if portable {
        trainer.env("TRAINER_NO_SUBGROUPS", "1");
    } else {
        trainer.env_remove("TRAINER_NO_SUBGROUPS");
    }
    let out = trainer
        .args(&args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run trainer");
    assert!(
        out.status.success(),
        "trainer {args:?}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut h = Sha256::new();
    let latest = std::fs::read_to_string(dir.join("checkpoints/latest")).expect("latest");
    let ckpt = dir.join("checkpoints").join(latest.trim());
    for file in ["model.safetensors", "optimizer.safetensors"] {
        hash_tensors(&mut h, &ckpt.join(file));
    }
    // The loss of every step, as logged.
    let csv = std::fs::read_to_string(dir.join("metrics.csv")).expect("metrics.csv");
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().expect("header").split(',').collect();
    let col = header
        .iter()
        .position(|c| *c == "train/loss")
        .expect("train/loss");
    for line in lines {
        h.update(line.split(',').nth(col).unwrap_or("").as_bytes());
        h.update(b"\n");
    }
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    let subgroups = !portable
        && manifest["adapter"]["features"]
            .as_array()
            .is_some_and(|f| f.iter().any(|f| f == "SUBGROUP"));
    let adapter = manifest["adapter"]["name"]
        .as_str()
        .map(|name| format!("{name}{}", if subgroups { " with subgroups" } else { "" }));
    let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    (hex, adapter)
}

/// Every tensor of a safetensors file, by name: name, dtype, shape, then the raw bytes.
fn hash_tensors(h: &mut Sha256, file: &Path) {
    let bytes = std::fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let st = SafeTensors::deserialize(&bytes).expect("safetensors");
    let mut names = st.names();
    names.sort();
    for name in names {
        let t = st.tensor(name).unwrap();
        h.update(format!("{name} {:?} {:?}\n", t.dtype(), t.shape()).as_bytes());
        h.update(t.data());
    }
}

/// The CPU kernels a step runs depend on the instruction set (src/kernel/cpu/conv_simd.rs).
fn cpu_key() -> String {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            return "x86_64-avx512".into();
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            return "x86_64-avx2".into();
        }
    }
    std::env::consts::ARCH.to_string()
}

/// The stored digest for (config, device, machine key), if this machine has one.
fn stored(config: &str, device: &str, key: &str) -> Option<&'static str> {
    DIGESTS
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .find_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f.len() == 4 && f[0] == config && f[1] == device && f[2] == key).then_some(f[3])
        })
}

fn check(device: &str, portable: bool) {
    for (config, settings) in RUNS {
        let (got, adapter) = digest(config, settings, device, portable);
        let key = match device {
            "cpu" => cpu_key(),
            _ => format!(
                "{} on {}",
                adapter.expect("a GPU run names its adapter"),
                cpu_key()
            ),
        };
        match stored(config, device, &key) {
            Some(want) => assert_eq!(
                got, want,
                "{config} on {device} ({key}): the training bits changed"
            ),
            None => {
                eprintln!(
                    "NOTICE: no stored digest for this machine; comparing two runs. The line to \
                     store:\n{config}\t{device}\t{key}\t{got}"
                );
                assert_eq!(
                    got,
                    digest(config, settings, device, portable).0,
                    "{config} on {device}"
                );
            }
        }
    }
}

#[test]
fn cpu_steps_keep_their_stored_bits() {
    check("cpu", false);
}

#[test]
fn gpu_steps_keep_their_stored_bits() {
    if !common::gpu_or_skip() {
        return;
    }
    check("gpu", false);
}

#[test]
fn gpu_steps_with_portable_reductions_keep_their_stored_bits() {
    if !common::gpu_or_skip() {
        return;
    }
    check("gpu", true);
}
