//! `trainer bench --profile`: per-kernel GPU times from timestamp queries, through the binary
//! as a user runs it, and a profiled step computing the same bits as a normal one.

use std::collections::BTreeSet;
use std::process::Command;

use trainer::backend::gpu::{GpuExec, Timestamps, test_gpu};
use trainer::config;
use trainer::nn;
use trainer::schedule::{self, Plan};
use trainer::tensor::StepCtx;
use trainer::training;

fn trainer(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(args)
        .output()
        .expect("runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn plan(path: &str, batch: usize) -> Plan {
    let loaded = config::load(std::path::Path::new(path), &[]);
    let cfg = match loaded.result {
        Ok(c) => c,
        Err(e) => panic!("{}", e.render(&loaded.sources)),
    };
    let g = nn::build_with_batch(&cfg, batch).expect("builds");
    let t = training::training_graph(&g, &cfg.optimizer).expect("differentiates");
    schedule::plan(&t, &cfg.train.checkpointing, Default::default()).expect("plans")
}

fn ctx(step: u64) -> StepCtx {
    StepCtx {
        lr: 0.01,
        step,
        seed: 7,
    }
}

/// The op kinds the plan launches (parameters and inputs launch no kernel).
fn launched_ops(p: &Plan) -> BTreeSet<String> {
    p.launches
        .iter()
        .map(|l| &p.graph.dag[l.node].op)
        .map(|op| op.primitive().name().to_string())
        .filter(|name| !matches!(name.as_str(), "parameter" | "input"))
        .collect()
}

#[test]
fn profile_json_covers_every_launched_kernel() {
    let Some(gpu) = test_gpu() else { return };
    if gpu.timestamps().is_err() {
        let (code, _, err) = trainer(&[
            "bench",
            "configs/mlp.toml",
            "--device",
            "gpu",
            "--profile",
            "--steps",
            "1",
        ]);
        assert_eq!(code, 2, "{err}");
        assert!(err.contains("TIMESTAMP_QUERY"), "{err}");
        return;
    }
    let (code, out, err) = trainer(&[
        "bench",
        "configs/mlp.toml",
        "--device",
        "gpu",
        "--profile",
        "--json",
        "--batch",
        "8",
        "--steps",
        "1",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    let rows = v["rows"].as_array().expect("rows");
    let p = plan("configs/mlp.toml", 8);
    let dispatches = GpuExec::new(gpu, plan("configs/mlp.toml", 8), 1)
        .expect("prepares")
        .dispatch_count();
    assert_eq!(v["dispatches_per_step"], dispatches);

    let ops: BTreeSet<String> = rows
        .iter()
        .map(|r| r["op"].as_str().expect("op").to_string())
        .collect();
    assert_eq!(ops, launched_ops(&p));
    let count: u64 = rows
        .iter()
        .map(|r| r["count"].as_u64().expect("count"))
        .sum();
    assert_eq!(count, dispatches as u64);
    let mut share = 0.0;
    let mut previous = f64::INFINITY;
    for r in rows {
        for key in ["total_us", "mean_us", "share", "gflop_s", "gb_s"] {
            let x = r[key].as_f64().unwrap_or(f64::NAN);
            assert!(x.is_finite() && x >= 0.0, "{key} in {r}");
        }
        let total = r["total_us"].as_f64().unwrap();
        assert!(total <= previous, "rows not sorted by total: {rows:?}");
        previous = total;
        share += r["share"].as_f64().unwrap();
    }
    assert!((share - 1.0).abs() < 1e-6, "shares sum to {share}");
    let kernel_ms = v["kernel_ms"].as_f64().unwrap();
    let total_ms: f64 = rows
        .iter()
        .map(|r| r["total_us"].as_f64().unwrap())
        .sum::<f64>()
        / 1e3;
    assert!(
        (kernel_ms - total_ms).abs() <= 1e-9 * kernel_ms.max(1.0),
        "{v}"
    );
    assert!(
        kernel_ms > 0.0 && v["step_ms"].as_f64().unwrap() > 0.0,
        "{v}"
    );
    // By layer op: every layer kind that launches, the optimizer's updates apart, the same sum.
    let layer_ops = v["layer_ops"].as_array().expect("layer_ops");
    let kinds: BTreeSet<&str> = layer_ops
        .iter()
        .map(|r| r["op"].as_str().unwrap())
        .collect();
    let mut want: BTreeSet<&str> = p
        .launches
        .iter()
        .map(|l| &p.graph.dag[l.node])
        .filter(|n| !matches!(n.op.primitive().name(), "parameter" | "input"))
        .map(|n| match n.phase {
            trainer::graph::Phase::Update => "update",
            _ => p.graph.layers[n.layer].op.as_str(),
        })
        .collect();
    want.insert("update");
    assert_eq!(kinds, want);
    let by_layer_ms: f64 = layer_ops
        .iter()
        .map(|r| r["forward_us"].as_f64().unwrap() + r["backward_us"].as_f64().unwrap())
        .sum::<f64>()
        / 1e3;
    assert!(
        (by_layer_ms - kernel_ms).abs() <= 1e-9 * kernel_ms.max(1.0),
        "{v}"
    );
    assert!(
        layer_ops
            .iter()
            .any(|r| r["backward_us"].as_f64().unwrap() > 0.0),
        "{v}"
    );

    // The table names the same groups and the kernel sum against the wall time.
    let (code, table, err) = trainer(&[
        "bench",
        "configs/mlp.toml",
        "--device",
        "gpu",
        "--profile",
        "--batch",
        "8",
        "--steps",
        "1",
    ]);
    assert_eq!(code, 0, "{err}");
    for op in ops.iter().map(String::as_str).chain(kinds) {
        assert!(table.contains(op), "{op} missing in\n{table}");
    }
    assert!(table.contains("layer op"), "{table}");
    assert!(table.contains("ms step"), "{table}");
}

#[test]
fn profile_needs_the_gpu_backend() {
    let (code, _, err) = trainer(&[
        "bench",
        "configs/mlp.toml",
        "--device",
        "cpu",
        "--profile",
        "--steps",
        "1",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--device gpu"), "{err}");
}

/// Timestamps only observe: a profiled step, either way of writing them, leaves the same
/// parameters, bit for bit, as a normal step.
#[test]
fn a_profiled_step_computes_what_a_normal_step_does() {
    let Some(gpu) = test_gpu() else { return };
    let Ok(best) = gpu.timestamps() else { return };
    let ways: Vec<Timestamps> = match best {
        Timestamps::InsidePasses => vec![Timestamps::InsidePasses, Timestamps::PassPerDispatch],
        Timestamps::PassPerDispatch => vec![Timestamps::PassPerDispatch],
    };
    let p = plan("configs/mlp.toml", 4);
    let (f, l) = (p.graph.features, p.graph.labels);
    let x: Vec<f32> = (0..p.graph.ty(f).numel())
        .map(|i| (i % 17) as f32 / 8.0 - 1.0)
        .collect();
    let y: Vec<f32> = (0..p.graph.ty(l).numel())
        .map(|i| (i % 10) as f32)
        .collect();
    let run = |profiled: Option<Timestamps>| {
        let mut exec = GpuExec::new(gpu, plan("configs/mlp.toml", 4), 3).expect("prepares");
        exec.feed(f, &x).unwrap();
        exec.feed(l, &y).unwrap();
        exec.step(ctx(1)).unwrap();
        if let Some(way) = profiled {
            let profile = exec.profile_step_with(ctx(2), way).expect("profiles");
            assert_eq!(profile.timestamps, way);
            assert_eq!(profile.dispatches.len(), exec.dispatch_count());
            assert!(
                profile
                    .dispatches
                    .iter()
                    .all(|d| d.seconds.is_finite() && d.seconds >= 0.0)
            );
            assert!(profile.dispatches.iter().any(|d| d.seconds > 0.0));
        } else {
            exec.step(ctx(2)).unwrap();
        }
        exec.params().unwrap()
    };
    let normal = run(None);
    for way in ways {
        let profiled = run(Some(way));
        for (i, (a, b)) in normal.iter().zip(&profiled).enumerate() {
            let same = a.iter().zip(b).all(|(p, q)| p.to_bits() == q.to_bits());
            assert!(same, "parameter {i} differs after a step profiled {way:?}");
        }
    }
}
