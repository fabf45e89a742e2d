//! Times the CPU's memory-bound ops alone on ResNet-20's activation shapes (ms per launch, the
//! best of a few), to set beside what memory bandwidth allows (plain slice loops over the same
//! bytes). `cargo bench --bench memops`; MEMOPS_HW=7 times one stage only (for a profiler).

use std::time::Instant;

use rayon::prelude::*;

use trainer::kernel::cpu::Io;

use trainer::tensor::StepCtx;

use trainer::backend::cpu::on_pool;
use trainer::ops::{
    BatchNorm, BatchNormGrad, Binary, BinaryFn, Eval, MeanAxes, MeanAxesGrad, Unary, UnaryFn,
    UnaryGrad,
};
use trainer::tensor::TensorType;

/// The best time of `reps` runs of `f`, in ms.
fn best_ms(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .fold(f64::INFINITY, f64::min)
}

/// Runs `op` once over `ins` (of `in_types`) into fresh outputs of `out_types`.
fn launch(
    op: &impl Eval,
    ins: &[&[f32]],
    in_types: &[TensorType],
    outs: &mut [Vec<f32>],
    out_types: &[TensorType],
) {
    let io_ins = ins.to_vec();
    let io_outs: Vec<&mut [f32]> = outs.iter_mut().map(|o| o.as_mut_slice()).collect();
    let mut io = Io::new(
        io_ins,
        io_outs,
        in_types.iter().collect(),
        out_types,
        StepCtx::default(),
    );
    op.eval(&mut io);
}

fn data(n: usize, seed: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 7919 + seed * 104729) % 1000) as f32 / 500.0 - 1.0)
        .collect()
}

fn main() {
    on_pool(|| {
        // MEMOPS_HW=7 times one stage only (for a profiler).
        let only: Option<usize> = std::env::var("MEMOPS_HW").ok().and_then(|v| v.parse().ok());
        for (c, hw) in [(16, 28), (32, 14), (64, 7)] {
            if only.is_some_and(|h| h != hw) {
                continue;
            }
            let shape = vec![128, c, hw, hw];
            let n: usize = shape.iter().product();
            let t = TensorType::f32(shape.clone());
            let ch = TensorType::f32(vec![c]);
            let one = [t.clone()];
            let (x, dy) = (data(n, 1), data(n, 2));
            let (w, b) = (data(c, 3), data(c, 4));
            let var: Vec<f32> = (0..c).map(|i| 0.5 + i as f32 / c as f32).collect();
            let mut out = vec![vec![0.0; n]];
            let mut out3 = vec![vec![0.0; n], vec![0.0; c], vec![0.0; c]];
            // `cargo bench` passes --bench; `cargo test --all-targets` runs this once as a smoke test.
            let timed = std::env::args().any(|a| a == "--bench");
            let reps = std::env::var("MEMOPS_REPS")
                .map_or(if timed { 20 } else { 1 }, |v| v.parse().expect("reps"));
            let row = |name: &str, ms: f64, streams: usize| {
                let gbs = (streams * n * 4) as f64 / ms / 1e6;
                println!(
                    "{name:<16} {:<16} {ms:7.3} ms  {gbs:5.1} GB/s",
                    format!("{shape:?}")
                );
            };
            // What plain slice loops over the same streams take: the bar the ops aim at.
            let ms = best_ms(reps, || {
                out[0]
                    .par_chunks_mut(1 << 14)
                    .zip(x.par_chunks(1 << 14))
                    .for_each(|(y, x)| y.iter_mut().zip(x).for_each(|(y, x)| *y = x.max(0.0)))
            });
            row("plain 1 in", ms, 2);
            let ms = best_ms(reps, || {
                out[0]
                    .par_chunks_mut(1 << 14)
                    .zip(x.par_chunks(1 << 14).zip(dy.par_chunks(1 << 14)))
                    .for_each(|(y, (x, dy))| {
                        for ((y, x), dy) in y.iter_mut().zip(x).zip(dy) {
                            *y = x + dy;
                        }
                    })
            });
            row("plain 2 in", ms, 3);
            let relu = Unary { f: UnaryFn::Relu };
            let ms = best_ms(reps, || launch(&relu, &[&x], &one, &mut out, &one));
            row("relu", ms, 2);
            let add = Binary { f: BinaryFn::Add };
            let types = [t.clone(), t.clone()];
            let ms = best_ms(reps, || launch(&add, &[&x, &dy], &types, &mut out, &one));
            row("add", ms, 3);
            let grad = UnaryGrad {
                f: UnaryFn::Relu,
                from_output: true,
            };
            let ms = best_ms(reps, || launch(&grad, &[&x, &dy], &types, &mut out, &one));
            row("unary_grad", ms, 3);
            let bn = BatchNorm {
                eps: 1e-5,
                momentum: 0.1,
                affine: true,
                training: true,
            };
            let types = [t.clone(), ch.clone(), ch.clone(), ch.clone(), ch.clone()];
            let outs = [t.clone(), ch.clone(), ch.clone()];
            let ins: [&[f32]; 5] = [&x, &w, &b, &b, &var];
            let ms = best_ms(reps, || launch(&bn, &ins, &types, &mut out3, &outs));
            row("batchnorm", ms, 3);
            let bng = BatchNormGrad {
                eps: 1e-5,
                affine: true,
                training: true,
            };
            let ins: [&[f32]; 5] = [&x, &w, &b, &var, &dy];
            let ms = best_ms(reps, || launch(&bng, &ins, &types, &mut out3, &outs));
            row("batchnorm_grad", ms, 5);
            if hw == 7 {
                let pooled = TensorType::f32(vec![128, c]);
                let mean = MeanAxes { axes: vec![2, 3] };
                let mut small = vec![vec![0.0; 128 * c]];
                let pooled_out = [pooled.clone()];
                let ms = best_ms(reps, || launch(&mean, &[&x], &one, &mut small, &pooled_out));
                row("mean", ms, 1);
                let mean_grad = MeanAxesGrad {
                    axes: vec![2, 3],
                    shape: shape.clone(),
                };
                let ms = best_ms(reps, || {
                    launch(&mean_grad, &[&x[..128 * c]], &pooled_out, &mut out, &one)
                });
                row("mean_grad", ms, 1);
            }
        }
    });
}
