//! Reading the loss back without waiting for the step (`capture` / `poll_captures` /
//! `drain_captures`): the same bits as a blocking read after every step, in step order, and
//! the host waits only where it drains. Driven the way the training loop drives an executor:
//! configs/mlp.toml planned at batch 16, a different batch every step.

mod common;

use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use trainer::backend::gpu::{Gpu, GpuExec, test_gpu};
use trainer::backend::{Captured, Exec};
use trainer::config;
use trainer::graph::Graph;
use trainer::nn;
use trainer::schedule::{self, Plan};
use trainer::tensor::StepCtx;
use trainer::tensor::TensorId;
use trainer::training;

fn plan() -> Plan {
    let loaded = config::load(std::path::Path::new("configs/mlp.toml"), &[]);
    let cfg = loaded.result.expect("mlp.toml loads");
    let g = nn::build_with_batch(&cfg, 16).expect("builds");
    let t = training::training_graph(&g, &cfg.optimizer).expect("differentiates");
    schedule::plan(&t, &cfg.train.checkpointing, Default::default()).expect("plans")
}

/// Step `step`'s batch: features and class labels, a pure function of the step.
fn batch(g: &Graph, step: u64) -> (Vec<f32>, Vec<f32>) {
    let mut rng = ChaCha8Rng::seed_from_u64(step);
    let x = (0..g.ty(g.features).numel())
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    let y = (0..g.ty(g.labels).numel())
        .map(|_| rng.random_range(0..10) as f32)
        .collect();
    (x, y)
}

fn ctx(step: u64) -> StepCtx {
    StepCtx {
        lr: 0.01,
        step,
        seed: 5,
    }
}

fn reads(g: &Graph) -> [TensorId; 2] {
    [g.loss, g.output]
}

fn bits(v: &[Vec<f32>]) -> Vec<Vec<u32>> {
    v.iter()
        .map(|t| t.iter().map(|x| x.to_bits()).collect())
        .collect()
}

/// The loss and logits of steps 1..=k read with a blocking read after each step.
fn blocking_reads(gpu: Option<&'static Gpu>, k: u64) -> Vec<Vec<Vec<u32>>> {
    let p = plan();
    let g = p.graph.clone();
    let mut e = Exec::new(gpu, p, 2).unwrap();
    (1..=k)
        .map(|s| {
            let (x, y) = batch(&g, s);
            e.feed(g.features, &x).unwrap();
            e.feed(g.labels, &y).unwrap();
            e.step(ctx(s)).unwrap();
            bits(&e.read_many(&reads(&g)).unwrap())
        })
        .collect()
}

fn check_in_order(got: &[Captured], want: &[Vec<Vec<u32>>]) {
    assert_eq!(got.len(), want.len(), "captures returned");
    for (i, (c, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(c.seq, i as u64, "capture order");
        assert_eq!(
            &bits(&c.values),
            w,
            "step {}: captured loss/logits differ from a blocking read",
            i + 1
        );
    }
}

/// 14 steps with a readback every 4: the full groups of 4 arrive through non-blocking polls
/// alone (no wait counted while stepping or polling); only the final drain, which reads the
/// last partial group, waits, once. Every value has the bits of a blocking read.
/// Feeds step `s`'s batch and runs the step (queued, not waited for).
fn step_gpu(e: &mut GpuExec<'_>, g: &trainer::graph::Graph, s: u64) {
    let (x, y) = batch(g, s);
    e.feed(g.features, &x).unwrap();
    e.feed(g.labels, &y).unwrap();
    e.step(ctx(s)).unwrap();
}

#[test]
fn captures_every_4_steps_match_blocking_reads_and_never_wait() {
    let Some(gpu) = test_gpu() else { return };
    const K: u64 = 14;
    const N: u64 = 4;
    let want = blocking_reads(Some(gpu), K);
    let p = plan();
    let g = p.graph.clone();
    let mut e = GpuExec::new(gpu, p, 2).unwrap();
    let mut got = Vec::new();
    for s in 1..=K {
        step_gpu(&mut e, &g, s);
        e.capture(&reads(&g)).unwrap();
        if s % N == 0 {
            e.flush_captures().unwrap();
        }
        got.extend(e.poll_captures().unwrap());
    }
    assert_eq!(e.blocking_waits(), 0, "a step, capture or poll waited");
    assert!(
        got.len() as u64 <= K - K % N,
        "the unflushed group arrived early"
    );
    let t0 = Instant::now();
    while (got.len() as u64) < K - K % N {
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "flushed captures never arrived through polling ({} of {})",
            got.len(),
            K - K % N
        );
        std::thread::sleep(Duration::from_millis(5));
        got.extend(e.poll_captures().unwrap());
    }
    assert_eq!(e.blocking_waits(), 0, "polling waited");
    assert_eq!(got.len() as u64, K - K % N);
    got.extend(e.drain_captures().unwrap());
    assert_eq!(e.blocking_waits(), 1, "the drain waits once");
    check_in_order(&got, &want);
    // Nothing is left, and a drain with nothing outstanding does not wait.
    assert!(e.drain_captures().unwrap().is_empty());
    assert!(e.poll_captures().unwrap().is_empty());
    assert_eq!(e.blocking_waits(), 1);
}

/// A caller that flushes every step and never polls runs out of staging buffers: captures
/// then wait for the oldest readback (counted) and reuse its buffer; nothing is lost or
/// reordered across 40 steps, and a second drain-stepped run gives the same bits.
#[test]
fn reused_staging_buffers_keep_every_capture_in_order() {
    let Some(gpu) = test_gpu() else { return };
    const K: u64 = 40;
    let want = blocking_reads(Some(gpu), K);
    let p = plan();
    let g = p.graph.clone();
    let mut e = GpuExec::new(gpu, p, 2).unwrap();
    let mut got = Vec::new();
    for s in 1..=K {
        step_gpu(&mut e, &g, s);
        e.capture(&reads(&g)).unwrap();
        e.flush_captures().unwrap();
        if s == K / 2 {
            // A drain mid-way: everything so far, then captures continue after it.
            got.extend(e.drain_captures().unwrap());
            assert_eq!(got.len() as u64, s);
        }
    }
    assert!(
        e.blocking_waits() >= 2,
        "an exhausted pool must wait ({} waits)",
        e.blocking_waits()
    );
    got.extend(e.drain_captures().unwrap());
    check_in_order(&got, &want);
}

/// Another set of tensors is refused while captures are pending (their rows would be
/// misread), and accepted after a drain.
#[test]
fn changing_the_captured_tensors_needs_a_drain() {
    let Some(gpu) = test_gpu() else { return };
    let p = plan();
    let g = p.graph.clone();
    let mut e = GpuExec::new(gpu, p, 2).unwrap();
    step_gpu(&mut e, &g, 1);
    e.capture(&[g.loss]).unwrap();
    let err = e.capture(&reads(&g)).unwrap_err().to_string();
    assert!(err.contains("drain"), "{err}");
    let first = e.drain_captures().unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].values.len(), 1);
    e.capture(&reads(&g)).unwrap();
    let second = e.drain_captures().unwrap();
    assert_eq!((second[0].seq, second[0].values.len()), (1, 2));
    assert_eq!(
        second[0].values[0], first[0].values[0],
        "same step, same loss"
    );
}

/// A device that dies with a readback in flight gives an error from the drain, not a panic
/// or a hang. (A device of its own: the shared test device stays usable.)
#[test]
fn a_lost_device_during_a_readback_is_an_error() {
    if !common::gpu_or_skip() {
        return;
    }
    let gpu: &'static Gpu = Box::leak(Box::new(Gpu::new().expect("a second device")));
    let p = plan();
    let g = p.graph.clone();
    let mut e = GpuExec::new(gpu, p, 2).unwrap();
    step_gpu(&mut e, &g, 1);
    e.capture(&reads(&g)).unwrap();
    e.flush_captures().unwrap();
    gpu.device.destroy();
    let outcome = e.drain_captures().and_then(|_| {
        e.step(ctx(2))?;
        e.capture(&reads(&g))?;
        e.drain_captures()
    });
    let err = outcome
        .expect_err("a destroyed device read back")
        .to_string();
    assert!(!err.is_empty());
}

/// The CPU executor follows the same protocol: captures come back at once, in order.
#[test]
fn cpu_captures_match_reads() {
    const K: u64 = 6;
    let want = blocking_reads(None, K);
    let p = plan();
    let g = p.graph.clone();
    let mut e = Exec::new(None, p, 2).unwrap();
    let mut got = Vec::new();
    for s in 1..=K {
        let (x, y) = batch(&g, s);
        e.feed(g.features, &x).unwrap();
        e.feed(g.labels, &y).unwrap();
        e.step(ctx(s)).unwrap();
        e.capture(&reads(&g)).unwrap();
        got.extend(e.poll_captures().unwrap());
    }
    assert!(e.drain_captures().unwrap().is_empty());
    assert_eq!(e.blocking_waits(), 0);
    check_in_order(&got, &want);
}
