//! Where a CPU training step spends its time: runs a config's step on synthetic data and
//! prints the wall time per op kind (and the slowest launches), summed over timed steps.
//!
//! `cargo bench --bench cpu_ops -- [config] [batch] [steps]`, e.g.
//! `cargo bench --bench cpu_ops -- configs/resnet.toml 128 3`. A profile, not a benchmark:
//! per-launch timing adds a little overhead; `trainer bench` gives the step time.

use std::collections::BTreeMap;

use trainer::backend::cpu::CpuExec;

use trainer::config::{self, sections::Checkpointing};
use trainer::nn;
use trainer::tensor::StepCtx;
use trainer::training;

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let path = args.first().map_or("configs/resnet.toml", |s| s.as_str());
    let batch: usize = args.get(1).map_or(128, |s| s.parse().expect("batch"));
    let steps: usize = args.get(2).map_or(3, |s| s.parse().expect("steps"));
    let loaded = config::load(std::path::Path::new(path), &[]);
    let cfg = match loaded.result {
        Ok(c) => c,
        Err(e) => panic!("{}", e.render(&loaded.sources)),
    };
    let g = nn::build_with_batch(&cfg, batch).expect("builds");
    let g = training::training_graph(&g, &cfg.optimizer).expect("differentiates");
    let plan =
        trainer::schedule::plan(&g, &Checkpointing::None, Default::default()).expect("plans");
    let names: Vec<String> = plan
        .launches
        .iter()
        .map(|l| {
            let node = &plan.graph.dag[l.node];
            let shape = node
                .outputs
                .first()
                .map(|t| format!("{:?}", t.shape))
                .unwrap_or_default();
            format!("{} {}", node.op.primitive().name(), shape)
        })
        .collect();
    let kinds: Vec<&'static str> = plan
        .launches
        .iter()
        .map(|l| plan.graph.dag[l.node].op.primitive().name())
        .collect();
    let features = plan.graph.features;
    let n = plan.graph.ty(features).numel();
    let mut exec: CpuExec<f32> = CpuExec::new(plan, 1).expect("executor");
    let x: Vec<f32> = (0..n)
        .map(|i| ((i * 7919 % 1000) as f32) / 500.0 - 1.0)
        .collect();
    exec.feed(features, &x).expect("feed");
    let ctx = |step: usize| StepCtx {
        lr: 0.01,
        step: step as u64 + 1,
        seed: 1,
    };
    exec.step(ctx(0));
    let mut per_launch = vec![0.0; names.len()];
    let t0 = std::time::Instant::now();
    for s in 0..steps {
        exec.step_timed(ctx(s + 1), |i, t| per_launch[i] += t);
    }
    let wall = t0.elapsed().as_secs_f64() / steps as f64 * 1e3;
    let rows = totals(&per_launch, steps, |i| kinds[i]);
    println!(
        "{path} batch {batch}, {} threads: {wall:.1} ms/step (mean of {steps})",
        rayon::current_num_threads()
    );
    println!(
        "{:<28} {:>9} {:>6} {:>8}",
        "op", "ms/step", "share", "launches"
    );
    for (k, (ms, count)) in &rows {
        println!("{k:<28} {ms:>9.2} {:>5.1}% {count:>8}", 100.0 * ms / wall);
    }
    // Launches of one op on one shape do the same work: their mean shows a kernel's speed.
    let rows = totals(&per_launch, steps, |i| names[i].as_str());
    println!(
        "\n{:<44} {:>9} {:>8} {:>9}",
        "op and output shape", "ms/step", "launches", "ms each"
    );
    for (name, (ms, count)) in rows.iter().take(25) {
        println!(
            "{name:<44} {ms:>9.2} {count:>8} {:>9.2}",
            ms / *count as f64
        );
    }
    let mut order: Vec<usize> = (0..names.len()).collect();
    order.sort_by(|&a, &b| per_launch[b].total_cmp(&per_launch[a]));
    println!("\nslowest launches:");
    for &i in order.iter().take(10) {
        println!(
            "{:>8.2} ms  #{i:<4} {}",
            per_launch[i] / steps as f64 * 1e3,
            names[i]
        );
    }
}

/// (key, (ms per step, launches)) of the launches grouped by `key`, slowest first.
fn totals<'a>(
    per_launch: &[f64],
    steps: usize,
    key: impl Fn(usize) -> &'a str,
) -> Vec<(&'a str, (f64, usize))> {
    let mut by: BTreeMap<&str, (f64, usize)> = BTreeMap::new();
    for (i, &t) in per_launch.iter().enumerate() {
        let e = by.entry(key(i)).or_default();
        e.0 += t / steps as f64 * 1e3;
        e.1 += 1;
    }
    let mut rows: Vec<_> = by.into_iter().collect();
    rows.sort_by(|a, b| b.1.0.total_cmp(&a.1.0));
    rows
}
