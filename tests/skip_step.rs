//! `train.on_nonfinite = "skip_step"`: a step whose loss is not finite is undone exactly. The
//! executor copies the State region aside before the step and back after it, so weights,
//! running statistics, `num_batches_tracked` and momentum are bit for bit what they were, and
//! the next good step gives the same bits as if the bad one had never run (CPU and lavapipe).

mod common;

use trainer::backend::Exec;
use trainer::config;
use trainer::nn;
use trainer::schedule;
use trainer::tensor::StepCtx;
use trainer::training;

/// ResNet-20 at batch 4: convolutions, batchnorm, residual adds, SGD with Nesterov momentum.
fn exec(gpu: Option<&'static trainer::backend::gpu::Gpu>) -> Exec<'static> {
    let loaded = config::load(std::path::Path::new("configs/resnet.toml"), &[]);
    let cfg = loaded.result.expect("resnet.toml loads");
    let g = nn::build_with_batch(&cfg, 4).expect("builds");
    let t = training::training_graph(&g, &cfg.optimizer).expect("differentiates");
    let plan = schedule::plan(&t, &cfg.train.checkpointing, Default::default()).expect("plans");
    Exec::new(gpu, plan, 3).expect("prepares")
}

fn ctx(step: u64) -> StepCtx {
    StepCtx {
        lr: 0.1,
        step,
        seed: 3,
    }
}

fn bits(params: Vec<Vec<f32>>) -> Vec<Vec<u32>> {
    params
        .into_iter()
        .map(|p| p.into_iter().map(f32::to_bits).collect())
        .collect()
}

fn skipped_step_leaves_no_trace(gpu: Option<&'static trainer::backend::gpu::Gpu>) {
    let (mut a, mut b) = (exec(gpu), exec(gpu));
    let g = a.plan().graph.clone();
    let n = g.ty(g.features).numel();
    let good: Vec<f32> = (0..n)
        .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
        .collect();
    let labels = vec![1.0, 3.0, 5.0, 7.0];

    // Both take a first good step, so momentum and running statistics are not at their init.
    for e in [&mut a, &mut b] {
        e.feed(g.features, &good).unwrap();
        e.feed(g.labels, &labels).unwrap();
        e.step(ctx(1)).unwrap();
    }
    let before = bits(a.params().unwrap());

    // `a` takes a poisoned step (a NaN learning rate makes every updated tensor NaN; a NaN in
    // the data would not do on every GPU, where max(NaN, 0) may be 0) and undoes it.
    a.save_state().unwrap();
    a.step(StepCtx {
        lr: f64::NAN,
        ..ctx(2)
    })
    .unwrap();
    assert_ne!(
        bits(a.params().unwrap()),
        before,
        "the bad step changed nothing to undo"
    );
    a.restore_state().unwrap();
    assert_eq!(bits(a.params().unwrap()), before);

    // The next good step: the same bits as in `b`, which never saw the bad batch.
    for e in [&mut a, &mut b] {
        e.feed(g.features, &good).unwrap();
        e.step(ctx(3)).unwrap();
    }
    assert_eq!(bits(a.params().unwrap()), bits(b.params().unwrap()));
}

#[test]
fn a_skipped_step_is_undone_bit_for_bit_on_the_cpu() {
    skipped_step_leaves_no_trace(None);
}

#[test]
fn a_skipped_step_is_undone_bit_for_bit_on_lavapipe() {
    if common::gpu_or_skip() {
        skipped_step_leaves_no_trace(trainer::backend::gpu::test_gpu());
    }
}
