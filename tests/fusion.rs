//! The fusion pass (`run.fusion`) through the CLI, as a user switches it: `trainer fit` with and
//! without it ends with the same weights and optimizer state, byte for byte, on the CPU and
//! on the GPU (lavapipe); `trainer plan` shows fewer launches with it.

mod common;

use std::path::Path;

use common::{gpu_or_skip, ok_stdout, trainer};

/// The final checkpoint's weights and optimizer state after `trainer fit config` for a few
/// steps on `device`, with `extra` settings.
fn fit(config: &str, device: &str, extra: &[&str], dir: &Path) -> (Vec<u8>, Vec<u8>) {
    let d = dir.to_str().unwrap();
    let mut args = vec!["fit", config, "--device", device, "--run-dir", d];
    for set in [
        "data.batch_size=8",
        "data.train_limit=32",
        "data.val_limit=16",
        "train.max_steps=3",
        "train.save_every=\"3 steps\"",
    ]
    .iter()
    .chain(extra)
    {
        args.extend(["--set", set]);
    }
    let out = trainer(&args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "trainer {args:?}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let latest = std::fs::read_to_string(dir.join("checkpoints/latest")).expect("latest");
    let ckpt = dir.join("checkpoints").join(latest.trim());
    assert!(ckpt.ends_with("step-000000003"), "{}", ckpt.display());
    (
        std::fs::read(ckpt.join("model.safetensors")).unwrap(),
        std::fs::read(ckpt.join("optimizer.safetensors")).unwrap(),
    )
}

/// Adam (mlp.toml, with and without gradient clipping), SGD with momentum and batchnorm
/// counters (a two-block ResNet), and elementwise chains forward and backward (an MLP with
/// biases, gelu, tanh, a sigmoid gate, a skip and leaky relu): fused and unfused runs give the
/// same bytes.
fn same_bytes_with_and_without_fusion(device: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let cases: [(&str, &[&str]); 4] = [
        ("configs/mlp.toml", &[]),
        ("configs/mlp.toml", &["optimizer.clip_grad_norm=0.5"]),
        ("tests/configs/good/resnet_tiny.toml", &["data.samples=32"]),
        ("tests/configs/good/mlp_chains.toml", &["data.samples=32"]),
    ];
    for (i, (config, sets)) in cases.iter().enumerate() {
        let mut plan = vec!["plan", config];
        plan.extend(sets.iter().flat_map(|s| ["--set", s]));
        assert!(
            ok_stdout(&plan).contains("before fusion"),
            "{config}: nothing fused"
        );
        // The ResNet's backward: relu's gradient joins its batchnorm's (the stem's with the
        // gradient sum of its two readers), so both fused forms are among the bytes compared.
        if config.contains("resnet") {
            plan.push("--launches");
            let launches = ok_stdout(&plan);
            for op in [" batchnorm_relu_grad ", " batchnorm_relu_grad_add "] {
                assert!(launches.contains(op), "{config}: no{op}in {launches}");
            }
        }
        let fused = fit(config, device, sets, &tmp.path().join(format!("{i}-fused")));
        let mut off = sets.to_vec();
        off.push("run.fusion=false");
        let unfused = fit(
            config,
            device,
            &off,
            &tmp.path().join(format!("{i}-unfused")),
        );
        assert!(
            fused.0 == unfused.0,
            "{config} {sets:?} on {device}: fused weights differ"
        );
        assert!(
            fused.1 == unfused.1,
            "{config} {sets:?} on {device}: fused optimizer state differs"
        );
    }
}

#[test]
fn fusion_changes_no_bits_on_the_cpu() {
    same_bytes_with_and_without_fusion("cpu");
}

#[test]
fn fusion_changes_no_bits_on_lavapipe() {
    if gpu_or_skip() {
        same_bytes_with_and_without_fusion("gpu");
    }
}

/// `trainer plan configs/resnet.toml`: ResNet-20's updates become five launches and relus join
/// their batchnorms; the text says how many launches and dispatches there were before, and
/// `run.fusion=false` plans them all.
#[test]
fn plan_shows_launches_before_and_after_fusion() {
    let figures = |sets: &[&str]| -> [u64; 4] {
        let mut args = vec!["plan", "configs/resnet.toml", "--json"];
        for s in sets {
            args.extend(["--set", s]);
        }
        let v: serde_json::Value = serde_json::from_str(&ok_stdout(&args)).expect("json");
        let get = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("{k} in {v}"));
        [
            "launches",
            "launches_unfused",
            "dispatches",
            "dispatches_unfused",
        ]
        .map(get)
    };
    let [fused, before, dispatches, dispatches_before] = figures(&[]);
    let [
        unfused,
        unfused_before,
        unfused_dispatches,
        unfused_dispatches_before,
    ] = figures(&["run.fusion=false"]);
    assert_eq!(
        (unfused, unfused_dispatches),
        (unfused_before, unfused_dispatches_before)
    );
    assert_eq!((before, dispatches_before), (unfused, unfused_dispatches));
    // 65 SGD updates, 21 counters, 21 running statistics of three batch sizes (one per stage:
    // 32², 16² and 8² pixels) become 1 + 1 + 3 launches of one dispatch each; the 10 relus
    // right after a batchnorm (the stem's, each block's first) join it, and each of the 9
    // blocks' second batchnorm takes the shortcut's add and the relu after it. Backward, those
    // 10 relus' gradients join their batchnorms' gradients, the stem's with the add of its
    // two readers' gradients; 8 other relu gradients and the sums they read become a chain
    // each; the classifier's bias add joins its matmul.
    let fewer = (65 + 21 + 21) - 5 + 10 + 2 * 9 + 10 + 1 + 8 + 1;
    assert_eq!(fused, unfused - fewer, "{fused} of {unfused}");
    assert_eq!(dispatches, unfused_dispatches - fewer);
    // A list runs only the passes it names.
    let [updates, ..] = figures(&["run.fusion=[\"multi_tensor\"]"]);
    assert_eq!(updates, unfused - (65 + 21 + 21) + 5);
    let text = ok_stdout(&["plan", "configs/resnet.toml"]);
    for line in [
        format!("launches          {fused} ({unfused} before fusion;"),
        format!("GPU dispatches    {dispatches} ({unfused_dispatches} before fusion)"),
    ] {
        assert!(text.contains(&line), "{line} in {text}");
    }
    let text = ok_stdout(&["plan", "configs/resnet.toml", "--set", "run.fusion=false"]);
    assert!(!text.contains("before fusion"), "{text}");
}
