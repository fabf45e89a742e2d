//! Reduction, normalisation and pooling kernels against the CPU backend, on odd shapes, both
//! kernel shapes of each reduction (a thread per row and a workgroup per row), every mode of
//! batchnorm and layernorm, and pooling ties; fresh seeds every run. Where the adapter has
//! subgroups, every check runs on both reduction variants (kernels/tree_subgroup.wgsl and the
//! portable kernels/tree.wgsl), each on a device of its own.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use trainer::backend::cpu;
use trainer::backend::gpu::{Gpu, compare_with_cpu, eval_once, test_gpu, test_gpus};
use trainer::kernel::gpu::{KernelArgs, workspace};
use trainer::ops::{
    BatchNorm, BatchNormGrad, BatchNormReluGrad, BatchNormRunningStats, Binary, BinaryFn,
    LayerNorm, LayerNormGrad, MeanAxes, MeanAxesGrad, OpKind, Pool2d, Pool2dGrad, PoolKind,
    Softmax, SoftmaxGrad, SumTo, UnaryFn, UnaryGrad,
};
use trainer::tensor::StepCtx;
use trainer::tensor::TensorType;

fn random(rng: &mut impl Rng, shape: &[usize], lo: f32, hi: f32) -> (TensorType, Vec<f32>) {
    let n = shape.iter().product();
    let v = (0..n).map(|_| rng.random_range(lo..hi)).collect();
    (TensorType::f32(shape.to_vec()), v)
}

fn normal(rng: &mut impl Rng, shape: &[usize]) -> (TensorType, Vec<f32>) {
    random(rng, shape, -3.0, 3.0)
}

fn assert_close(op: &OpKind, ins: &[(TensorType, Vec<f32>)]) {
    for gpu in test_gpus() {
        let errs = compare_with_cpu(gpu, op, ins, StepCtx::default()).unwrap();
        for (k, e) in errs.iter().enumerate() {
            assert!(
                *e < 1e-4,
                "{op:?} output {k} ({}), input shapes {:?}: relative error {e}",
                variant(gpu),
                ins.iter().map(|(t, _)| &t.shape).collect::<Vec<_>>()
            );
        }
    }
}

fn variant(gpu: &Gpu) -> String {
    match gpu.subgroups {
        Some([lo, hi]) => format!("subgroup reductions, {lo}..={hi} lanes"),
        None => "portable reductions".into(),
    }
}

/// A seeded generator, its seed printed so a failure can be replayed.
fn rng() -> ChaCha8Rng {
    // TRAINER_TEST_SEED replays a failure's seed.
    let seed = std::env::var("TRAINER_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("seed {seed}");
    ChaCha8Rng::seed_from_u64(seed)
}

#[test]
fn sum_to_reverses_broadcasting() {
    if test_gpu().is_none() {
        return;
    }
    let mut rng = rng();
    let x = normal(&mut rng, &[2, 3, 7, 5]);
    // Few elements per output (a thread each) and many (a workgroup each).
    let targets: [&[usize]; 9] = [
        &[3, 1, 1],
        &[7, 5],
        &[1],
        &[],
        &[2, 1, 1, 5],
        &[3, 7, 1],
        &[2, 3, 7, 5],
        &[1, 3, 1, 5],
        &[5],
    ];
    for to in targets {
        let op = OpKind::SumTo(SumTo { shape: to.to_vec() });
        assert_close(&op, std::slice::from_ref(&x));
    }
    // Long reductions: one block of 40 * 37 elements into each of 3 outputs, then the
    // `LONG_SUMS`, cut into blocks.
    let x = normal(&mut rng, &[40, 3, 37]);
    let op = OpKind::SumTo(SumTo { shape: vec![3, 1] });
    assert_close(&op, std::slice::from_ref(&x));
    // Off centre: a zero-mean sum of 272k values cancels to near 0, where no two orders of
    // f32 sums agree to a relative 1e-4.
    for (op, shape, _) in long_sums() {
        let x = random(&mut rng, &shape, -2.0, 4.0);
        assert_close(&op, std::slice::from_ref(&x));
    }
}

/// Sums and means of few outputs over many elements each (a conv bias gradient, global
/// statistics), with the blocks per output the GPU cuts them into.
fn long_sums() -> [(OpKind, Vec<usize>, usize); 4] {
    [
        (
            OpKind::SumTo(SumTo {
                shape: vec![3, 1, 1],
            }),
            vec![67, 3, 7, 6],
            2,
        ),
        (OpKind::SumTo(SumTo { shape: vec![1] }), vec![301, 37], 11),
        (
            OpKind::MeanAxes(MeanAxes {
                axes: vec![0, 2, 3],
            }),
            vec![2, 1, 367, 371],
            266,
        ),
        (
            OpKind::MeanAxes(MeanAxes { axes: vec![0, 2] }),
            vec![9, 2, 211, 5],
            2,
        ),
    ]
}

/// The long sums do split: their first pass has a workgroup per block of each output, and a
/// second pass adds the blocks (the short ones above take one pass).
#[test]
fn long_sums_split_into_blocks() {
    for (op, shape, blocks) in long_sums() {
        let x = TensorType::f32(shape.clone());
        let outputs = op.primitive().infer(&[&x]).unwrap();
        let args = KernelArgs {
            inputs: &[&x],
            outputs: &outputs,
        };
        let ds = op.primitive().gpu(&args).unwrap();
        let entries: Vec<&str> = ds.iter().map(|d| d.shader.entry).collect();
        assert_eq!(entries, ["axes_group", "axes_merge"], "{shape:?}");
        let [gx, gy, gz] = ds[0].workgroups;
        assert_eq!(
            (gx * gy * gz) as usize,
            blocks * outputs[0].numel(),
            "{shape:?}"
        );
        assert_eq!(workspace(&ds), blocks * outputs[0].numel());
    }
}

#[test]
fn mean_over_axes_and_its_gradient() {
    if test_gpu().is_none() {
        return;
    }
    let mut rng = rng();
    for batch in [1, 3] {
        let shape = [batch, 3, 7, 5];
        let x = normal(&mut rng, &shape);
        for axes in [
            vec![2, 3],
            vec![0, 2],
            vec![1],
            vec![3, 0],
            vec![0, 1, 2, 3],
            vec![3],
        ] {
            assert_close(
                &OpKind::MeanAxes(MeanAxes { axes: axes.clone() }),
                std::slice::from_ref(&x),
            );
            let out: Vec<usize> = (0..4)
                .filter(|i| !axes.contains(i))
                .map(|i| shape[i])
                .collect();
            let dy = normal(&mut rng, &out);
            let grad = MeanAxesGrad {
                axes,
                shape: shape.to_vec(),
            };
            assert_close(&OpKind::MeanAxesGrad(grad), &[dy]);
        }
    }
}

#[test]
fn softmax_and_its_gradient_along_any_axis() {
    if test_gpu().is_none() {
        return;
    }
    let mut rng = rng();
    // Short rows (a thread each) and long rows (a workgroup each), inner strides of 1 and more.
    let cases: [(&[usize], &[i64]); 4] = [
        (&[2, 3, 7, 5], &[0, 1, 2, -1]),
        (&[3, 300], &[-1, 0]),
        (&[2, 70, 3], &[1]),
        (&[1, 7], &[-1]),
    ];
    for (shape, axes) in cases {
        let mut x = normal(&mut rng, shape);
        // A large logit: only a max-subtracted kernel stays finite.
        x.1[0] = 80.0;
        for &axis in axes {
            assert_close(&OpKind::Softmax(Softmax { axis }), std::slice::from_ref(&x));
            let y = random(&mut rng, shape, 0.0, 1.0);
            let dy = normal(&mut rng, shape);
            assert_close(&OpKind::SoftmaxGrad(SoftmaxGrad { axis }), &[y, dy]);
        }
    }
}

/// Per-channel mean and biased variance of x [N, C, ...].
fn channel_stats(x: &(TensorType, Vec<f32>)) -> (Vec<f32>, Vec<f32>) {
    let (n, c) = (x.0.shape[0], x.0.shape[1]);
    let s: usize = x.0.shape[2..].iter().product();
    let values = |ch: usize| (0..n).flat_map(move |i| (0..s).map(move |j| (i * c + ch) * s + j));
    let count = (n * s) as f64;
    let mut mean = Vec::new();
    let mut var = Vec::new();
    for ch in 0..c {
        let m = values(ch).map(|k| x.1[k] as f64).sum::<f64>() / count;
        let v = values(ch).map(|k| (x.1[k] as f64 - m).powi(2)).sum::<f64>() / count;
        mean.push(m as f32);
        var.push(v as f32);
    }
    (mean, var)
}

/// Shapes whose channels fit one block of the GPU's statistics and gradient sums, then shapes
/// split into several (`BN_SPLIT`): blocks crossing image boundaries, a last block cut short,
/// and more blocks than a workgroup has threads.
const BN_SHAPES: [&[usize]; 8] = [
    &[1, 3, 7, 5],
    &[3, 3, 7, 5],
    &[5, 3],
    &[3, 3],
    &[4, 3, 7],
    &[7, 2, 37, 41],
    &[3001, 3],
    &[2, 1, 367, 371],
];

/// Blocks per channel that `BN_SHAPES` give, in order.
const BN_SPLIT: [usize; 8] = [1, 1, 1, 1, 1, 9, 3, 266];

/// Blocks per channel of the first pass of batchnorm's statistics (`grad`: of its gradient
/// sums) on x of `shape`, from the dispatches the op asks for: one per block, then a merge.
fn bn_blocks(shape: &[usize], grad: bool) -> usize {
    let c = shape[1];
    let x = TensorType::f32(shape.to_vec());
    let stat = TensorType::f32(vec![c]);
    let (op, ins) = match grad {
        false => (
            OpKind::BatchNorm(BatchNorm {
                eps: 1e-5,
                momentum: 0.1,
                affine: false,
                training: true,
            }),
            vec![&x, &stat, &stat],
        ),
        true => (
            OpKind::BatchNormGrad(BatchNormGrad {
                eps: 1e-5,
                affine: false,
                training: true,
            }),
            vec![&x, &stat, &stat, &x],
        ),
    };
    let outputs = op.primitive().infer(&ins).unwrap();
    let args = KernelArgs {
        inputs: &ins,
        outputs: &outputs,
    };
    let ds = op.primitive().gpu(&args).unwrap();
    let entries: Vec<&str> = ds.iter().map(|d| d.shader.entry).collect();
    let [first, second] = if grad {
        ["bn_grad_sums", "bn_grad_merge"]
    } else {
        ["bn_stats", "bn_stats_merge"]
    };
    assert_eq!(entries[0], first);
    let [x, y, z] = ds[0].workgroups;
    let blocks = (x * y * z) as usize / c;
    let merged = entries[1] == second;
    assert_eq!(merged, blocks > 1, "{shape:?}: {entries:?}");
    // Workspace only where there are partials to merge.
    assert_eq!(workspace(&ds) > 0, merged, "{shape:?}");
    blocks
}

/// The shapes above exercise both passes, so the two-pass kernels are not tested vacuously.
#[test]
fn batchnorm_test_shapes_split_into_blocks() {
    for grad in [false, true] {
        let found: Vec<usize> = BN_SHAPES.iter().map(|s| bn_blocks(s, grad)).collect();
        assert_eq!(found, BN_SPLIT, "grad {grad}");
    }
    // ResNet-20's first stage at batch 128: 56 blocks of each channel's 100,352 values.
    assert_eq!(bn_blocks(&[128, 16, 28, 28], false), 56);
}

#[test]
fn batchnorm_in_every_mode() {
    if test_gpu().is_none() {
        return;
    }
    let mut rng = rng();
    for shape in BN_SHAPES {
        let c = shape[1];
        for affine in [true, false] {
            for training in [true, false] {
                let mut ins = vec![normal(&mut rng, shape)];
                // An offset, so the variance is not that of centred data.
                ins[0].1.iter_mut().for_each(|v| *v += 1.5);
                if affine {
                    ins.push(normal(&mut rng, &[c]));
                    ins.push(normal(&mut rng, &[c]));
                }
                ins.push(normal(&mut rng, &[c]));
                ins.push(random(&mut rng, &[c], 0.5, 2.0));
                let op = BatchNorm {
                    eps: 1e-5,
                    momentum: 0.1,
                    affine,
                    training,
                };
                assert_close(&OpKind::BatchNorm(op), &ins);
            }
        }
    }
}

#[test]
fn batchnorm_gradient_in_every_mode() {
    if test_gpu().is_none() {
        return;
    }
    let mut rng = rng();
    for shape in BN_SHAPES {
        let c = shape[1];
        for affine in [true, false] {
            for training in [true, false] {
                let x = normal(&mut rng, shape);
                // Training: the batch statistics; eval: running statistics.
                let (mean, var) = match training {
                    true => {
                        let (m, v) = channel_stats(&x);
                        let t = TensorType::f32(vec![c]);
                        ((t.clone(), m), (t, v))
                    }
                    false => (normal(&mut rng, &[c]), random(&mut rng, &[c], 0.5, 2.0)),
                };
                let mut ins = vec![x];
                if affine {
                    ins.push(normal(&mut rng, &[c]));
                }
                // dy off centre and following x: dβ = Σ dy and dγ = Σ dy·x̂ over a channel of
                // 272k elements must not cancel to near 0, where no relative tolerance holds
                // (either reduction variant).
                let (t, mut dy) = random(&mut rng, shape, -2.0, 4.0);
                dy.iter_mut().zip(&ins[0].1).for_each(|(d, x)| *d += x);
                ins.extend([mean, var, (t, dy)]);
                let op = BatchNormGrad {
                    eps: 1e-5,
                    affine,
                    training,
                };
                assert_close(&OpKind::BatchNormGrad(op), &ins);
            }
        }
    }
}

/// The fusion pass's batchnorm gradient of relu's gradient (of a sum of two gradients where
/// `adds`) gives the bits of the add, unary_grad and batchnorm_grad launches it replaces, on
/// the GPU and on the CPU, in every mode, on shapes of one block and of several; and matches
/// the CPU on the GPU.
#[test]
fn batchnorm_relu_gradient_is_the_unfused_launches_bit_for_bit() {
    let Some(gpu) = test_gpu() else {
        return;
    };
    let mut rng = rng();
    // On the GPU, else the CPU.
    let run = |on_gpu: bool, op: &OpKind, ins: &[&(TensorType, Vec<f32>)]| -> Vec<Vec<f32>> {
        let refs: Vec<(&TensorType, &[f32])> = ins.iter().map(|(t, v)| (t, &v[..])).collect();
        match on_gpu {
            true => eval_once(gpu, op, &refs, StepCtx::default()).unwrap(),
            false => cpu::eval_once(op, &refs, StepCtx::default()).unwrap(),
        }
    };
    let bits = |outs: Vec<Vec<f32>>| -> Vec<Vec<u32>> {
        outs.iter()
            .map(|o| o.iter().map(|v| v.to_bits()).collect())
            .collect()
    };
    let add = OpKind::Binary(Binary { f: BinaryFn::Add });
    let relu_grad = OpKind::UnaryGrad(UnaryGrad {
        f: UnaryFn::Relu,
        from_output: true,
    });
    for shape in BN_SHAPES {
        let c = shape[1];
        for (affine, training, adds) in [
            (true, true, true),
            (true, true, false),
            (false, true, true),
            (true, false, true),
            (false, false, false),
        ] {
            let x = normal(&mut rng, shape);
            let (mean, var) = channel_stats(&x);
            let t = TensorType::f32(vec![c]);
            let mut stats = vec![x, (t.clone(), mean), (t, var)];
            if affine {
                stats.insert(1, normal(&mut rng, &[c]));
            }
            // relu's output: zero or positive, as a relu makes it.
            let mut y = normal(&mut rng, shape);
            y.1.iter_mut().for_each(|v| *v = v.max(0.0));
            // Gradients that follow x, off zero, as a loss's do: independent zero-mean ones
            // make sum dy and sum dy·(x - mean) cancel to near zero, where no two orders of f32
            // sums over a large channel agree to 1e-4.
            let grads: Vec<_> = (0..1 + adds as usize)
                .map(|_| {
                    let (t, mut g) = normal(&mut rng, shape);
                    g.iter_mut()
                        .zip(&stats[0].1)
                        .for_each(|(g, x)| *g += x + 1.5);
                    (t, g)
                })
                .collect();
            let bn = BatchNormGrad {
                eps: 1e-5,
                affine,
                training,
            };
            let fused = OpKind::BatchNormReluGrad(BatchNormReluGrad {
                bn: bn.clone(),
                adds,
            });
            let fused_ins: Vec<_> = stats.iter().chain([&y]).chain(&grads).collect();
            for on_gpu in [true, false] {
                let g = match adds {
                    true => run(on_gpu, &add, &[&grads[0], &grads[1]]).remove(0),
                    false => grads[0].1.clone(),
                };
                let g = (y.0.clone(), g);
                let dy = (y.0.clone(), run(on_gpu, &relu_grad, &[&y, &g]).remove(0));
                let mut ins: Vec<_> = stats.iter().collect();
                ins.push(&dy);
                let unfused = run(on_gpu, &OpKind::BatchNormGrad(bn.clone()), &ins);
                let got = run(on_gpu, &fused, &fused_ins);
                assert_eq!(got.len(), unfused.len());
                if bits(got.clone()) != bits(unfused.clone()) {
                    // Every differing element of each output, with the inputs at it.
                    let mut why = String::new();
                    for (k, (a, b)) in got.iter().zip(&unfused).enumerate() {
                        let differ: Vec<usize> = (0..a.len())
                            .filter(|&i| a[i].to_bits() != b[i].to_bits())
                            .collect();
                        why += &format!("output {k}: {} of {} differ\n", differ.len(), a.len());
                        for &i in differ.iter().take(4) {
                            let at = |t: &(TensorType, Vec<f32>)| t.1.get(i).copied();
                            why += &format!(
                                "  [{i}] fused {:e} unfused {:e}; y {:?} g {:?} dy {:?} x {:?}\n",
                                a[i],
                                b[i],
                                at(&y),
                                grads.iter().map(at).collect::<Vec<_>>(),
                                at(&dy),
                                at(&stats[0])
                            );
                        }
                    }
                    panic!(
                        "GPU {on_gpu} {shape:?} affine {affine} training {training} adds {adds}:\n{why}"
                    );
                }
            }
            let owned: Vec<_> = fused_ins.into_iter().cloned().collect();
            let scales = bn_grad_scales(&owned, affine, adds);
            assert_close_to_scales(&fused, &owned, &scales);
        }
    }
}

/// The sizes of the terms each output of the fused batchnorm-relu gradient sums: |γ·dy|/σ for
/// dx, Σ|dy·x̂| for dγ and Σ|dy| for dβ (outputs even without affine), with dy = relu'(y)·Σ g
/// in f64. Relu's zeros leave a
/// channel of a small batch few rows, where dx cancels to near zero; f32 rounding is then
/// relative to these terms, not to the result.
fn bn_grad_scales(ins: &[(TensorType, Vec<f32>)], affine: bool, adds: bool) -> Vec<Vec<f64>> {
    let x = &ins[0];
    let (n, c) = (x.0.shape[0], x.0.shape[1]);
    let s: usize = x.0.shape[2..].iter().product();
    let at = affine as usize;
    let (mean, var, y) = (&ins[1 + at].1, &ins[2 + at].1, &ins[3 + at].1);
    let gamma = |ch: usize| if affine { ins[1].1[ch] as f64 } else { 1.0 };
    let inv_std = |ch: usize| 1.0 / (var[ch] as f64 + 1e-5).sqrt();
    let dy = |k: usize| {
        let g: f64 = ins[4 + at..5 + at + adds as usize]
            .iter()
            .map(|g| g.1[k] as f64)
            .sum();
        if y[k] > 0.0 { g } else { 0.0 }
    };
    let channel = |k: usize| (k / s) % c;
    let dx = (0..n * c * s)
        .map(|k| (gamma(channel(k)) * dy(k) * inv_std(channel(k))).abs())
        .collect();
    let (mut dgamma, mut dbeta) = (vec![0.0; c], vec![0.0; c]);
    for k in 0..n * c * s {
        let ch = channel(k);
        let xhat = (x.1[k] as f64 - mean[ch] as f64) * inv_std(ch);
        dgamma[ch] += (dy(k) * xhat).abs();
        dbeta[ch] += dy(k).abs();
    }
    vec![dx, dgamma, dbeta]
}

/// `op` on every test GPU against the CPU, each output's error measured against `scales`
/// (one size per element) rather than against the output itself.
fn assert_close_to_scales(op: &OpKind, ins: &[(TensorType, Vec<f32>)], scales: &[Vec<f64>]) {
    let refs: Vec<(&TensorType, &[f32])> = ins.iter().map(|(t, v)| (t, &v[..])).collect();
    let want = cpu::eval_once(op, &refs, StepCtx::default()).unwrap();
    for gpu in test_gpus() {
        let got = eval_once(gpu, op, &refs, StepCtx::default()).unwrap();
        assert_eq!(got.len(), scales.len());
        for (k, ((g, w), scale)) in got.iter().zip(&want).zip(scales).enumerate() {
            let diff: f64 = g
                .iter()
                .zip(w)
                .map(|(&g, &w)| (g as f64 - w as f64).powi(2))
                .sum();
            let norm: f64 = scale.iter().map(|s| s * s).sum();
            let e = (diff / norm.max(f64::MIN_POSITIVE)).sqrt();
            assert!(
                e < 1e-4 || diff == 0.0,
                "{op:?} output {k} ({}), input shapes {:?}: error {e} of the terms' size",
                variant(gpu),
                ins.iter().map(|(t, _)| &t.shape).collect::<Vec<_>>()
            );
        }
    }
}

#[test]
fn batchnorm_running_statistics() {
    if test_gpu().is_none() {
        return;
    }
    let mut rng = rng();
    for (c, count, momentum) in [(3, 70, 0.1), (5, 2, 0.25), (300, 9, 0.01)] {
        let ins = [
            normal(&mut rng, &[c]),
            random(&mut rng, &[c], 0.5, 2.0),
            normal(&mut rng, &[c]),
            random(&mut rng, &[c], 0.0, 2.0),
        ];
        let op = BatchNormRunningStats { momentum, count };
        assert_close(&OpKind::BatchNormRunningStats(op), &ins);
    }
}

/// (x shape, dims normalised): short and long rows (past one workgroup's 256 threads), and
/// rows of one element; few rows and many, whose column sums (dweight, dbias) the GPU cuts into
/// blocks of rows (`LN_BLOCKS`), more than a workgroup has threads in the last case.
const LN_CASES: [(&[usize], usize); 9] = [
    (&[3, 7, 5], 1),
    (&[3, 7, 5], 2),
    (&[1, 3, 7, 5], 2),
    (&[1, 3, 7, 5], 3),
    (&[2, 300], 1),
    (&[6, 1], 1),
    (&[600, 3], 1),
    (&[40, 300], 1),
    (&[1100, 3], 1),
];
const LN_BLOCKS: [usize; 9] = [5, 1, 1, 1, 1, 1, 150, 10, 275];

/// Blocks of rows of the first pass of layernorm's column sums on x of `shape`: the workgroups
/// of `ln_grad_cols` per tile of 256 columns, merged after it where there are several.
fn ln_blocks(shape: &[usize], dims: usize) -> usize {
    let x = TensorType::f32(shape.to_vec());
    let w = TensorType::f32(shape[shape.len() - dims..].to_vec());
    let op = OpKind::LayerNormGrad(LayerNormGrad(LayerNorm {
        eps: 1e-5,
        dims,
        affine: true,
        centered: true,
    }));
    let ins = [&x, &w, &x];
    let outputs = op.primitive().infer(&ins).unwrap();
    let args = KernelArgs {
        inputs: &ins,
        outputs: &outputs,
    };
    let ds = op.primitive().gpu(&args).unwrap();
    let cols = ds
        .iter()
        .position(|d| d.shader.entry == "ln_grad_cols")
        .unwrap();
    let [x, y, z] = ds[cols].workgroups;
    let tiles = w.numel().div_ceil(256);
    let blocks = (x * y * z) as usize / tiles;
    let merged = ds[cols + 1].shader.entry == "ln_grad_cols_merge";
    assert_eq!(merged, blocks > 1, "{shape:?}");
    assert_eq!(workspace(&ds) > 0, merged, "{shape:?}");
    blocks
}

#[test]
fn layernorm_test_shapes_split_into_blocks() {
    let found = LN_CASES.map(|(shape, dims)| ln_blocks(shape, dims));
    assert_eq!(found, LN_BLOCKS);
    // GPT-sized rows: 64 × 256 tokens of 384, two tiles of columns in 512 blocks of 32 rows.
    assert_eq!(ln_blocks(&[64, 256, 384], 1), 512);
}

#[test]
fn layernorm_and_its_gradient() {
    if test_gpu().is_none() {
        return;
    }
    let mut rng = rng();
    for (shape, dims) in LN_CASES {
        let norm = &shape[shape.len() - dims..];
        for affine in [true, false] {
            let mut x = normal(&mut rng, shape);
            x.1.iter_mut().for_each(|v| *v += 1.5);
            let (w, b) = (normal(&mut rng, norm), normal(&mut rng, norm));
            // dy following x, off zero: the weight and bias gradients sum over every row, and
            // zero-mean independent terms would cancel them to near 0 (see batchnorm's).
            let mut dy = normal(&mut rng, shape);
            dy.1.iter_mut().zip(&x.1).for_each(|(d, x)| *d += x);
            let (fwd, bwd) = match affine {
                true => (
                    vec![x.clone(), w.clone(), b],
                    vec![x.clone(), w, dy.clone()],
                ),
                false => (vec![x.clone()], vec![x.clone(), dy.clone()]),
            };
            let op = LayerNorm {
                eps: 1e-5,
                dims,
                affine,
                centered: true,
            };
            assert_close(&OpKind::LayerNorm(op.clone()), &fwd);
            assert_close(&OpKind::LayerNormGrad(LayerNormGrad(op)), &bwd);
        }
    }
}

/// (x shape, dims normalised) of rmsnorm: rows longer than a workgroup (odd lengths, one and
/// several tiles of 256 columns), rows of one element, and many short rows, whose dweight
/// column sums the GPU cuts into blocks of rows merged in a second pass.
const RMS_CASES: [(&[usize], usize); 7] = [
    (&[3, 1001], 1),
    (&[2, 5, 2049], 1),
    (&[2, 5, 2049], 2),
    (&[3, 7, 5], 2),
    (&[6, 1], 1),
    (&[1100, 3], 1),
    (&[40, 300], 1),
];

#[test]
fn rmsnorm_test_shapes_split_into_blocks() {
    // Cases with enough rows merge partials of dweight (the workspace path), the others not.
    let want = [false, true, false, false, false, true, true];
    for ((shape, dims), want) in RMS_CASES.into_iter().zip(want) {
        let x = TensorType::f32(shape.to_vec());
        let w = TensorType::f32(shape[shape.len() - dims..].to_vec());
        let op = OpKind::LayerNormGrad(LayerNormGrad(LayerNorm::rms(1e-6, dims, true)));
        let ins = [&x, &w, &x];
        let outputs = op.primitive().infer(&ins).unwrap();
        let args = KernelArgs {
            inputs: &ins,
            outputs: &outputs,
        };
        let ds = op.primitive().gpu(&args).unwrap();
        let merged = ds.iter().any(|d| d.shader.entry == "ln_grad_cols_merge");
        assert_eq!(merged, want, "{shape:?}");
        assert_eq!(workspace(&ds) > 0, merged, "{shape:?}");
    }
}

#[test]
fn rmsnorm_and_its_gradient() {
    if test_gpu().is_none() {
        return;
    }
    let mut rng = rng();
    for (shape, dims) in RMS_CASES {
        let norm = &shape[shape.len() - dims..];
        for affine in [true, false] {
            let x = normal(&mut rng, shape);
            let w = normal(&mut rng, norm);
            // dy following x, so that dweight's sums over rows do not cancel to near 0.
            let mut dy = normal(&mut rng, shape);
            dy.1.iter_mut().zip(&x.1).for_each(|(d, x)| *d += x);
            let (fwd, bwd) = match affine {
                true => (vec![x.clone(), w.clone()], vec![x.clone(), w, dy.clone()]),
                false => (vec![x.clone()], vec![x.clone(), dy.clone()]),
            };
            // In a row of one element dx = rstd·g·(1 − x̂²), x̂² = x²/(x² + eps): f32 cancels
            // all of it when eps ≪ x² (PyTorch's too), so such rows take an eps near x².
            let eps = if norm.iter().product::<usize>() == 1 {
                0.5
            } else {
                1e-6
            };
            let op = LayerNorm::rms(eps, dims, affine);
            assert_close(&OpKind::LayerNorm(op.clone()), &fwd);
            assert_close(&OpKind::LayerNormGrad(LayerNormGrad(op)), &bwd);
        }
    }
}

#[test]
fn pooling_and_its_gradient() {
    if test_gpu().is_none() {
        return;
    }
    let mut rng = rng();
    for kind in [PoolKind::Max, PoolKind::Avg] {
        for k in [2, 3] {
            for s in [1, 2] {
                for pad in [0, 1] {
                    for batch in [1, 3] {
                        let pool = Pool2d {
                            kind,
                            kernel: [k, k],
                            stride: [s, s],
                            padding: [pad, pad],
                        };
                        let x = normal(&mut rng, &[batch, 3, 7, 5]);
                        check_pool(&mut rng, &pool, x);
                    }
                }
            }
        }
        // Rectangular windows and strides.
        let pool = Pool2d {
            kind,
            kernel: [3, 2],
            stride: [2, 1],
            padding: [1, 0],
        };
        let x = normal(&mut rng, &[3, 3, 7, 5]);
        check_pool(&mut rng, &pool, x);
    }
}

/// The pooling of x and its gradient for a random dy.
fn check_pool(rng: &mut impl Rng, pool: &Pool2d, x: (TensorType, Vec<f32>)) {
    let op = OpKind::Pool2d(pool.clone());
    assert_close(&op, std::slice::from_ref(&x));
    let y = op.primitive().infer(&[&x.0]).unwrap().remove(0);
    let dy = normal(rng, &y.shape);
    let grad = OpKind::Pool2dGrad(Pool2dGrad { pool: pool.clone() });
    assert_close(&grad, &[x, dy]);
}

#[test]
fn max_pooling_breaks_ties_and_routes_nan_like_the_cpu() {
    if test_gpu().is_none() {
        return;
    }
    let mut rng = rng();
    for (k, s, pad) in [(2, 2, 0), (3, 1, 1), (3, 2, 1), (2, 1, 1)] {
        let pool = Pool2d {
            kind: PoolKind::Max,
            kernel: [k, k],
            stride: [s, s],
            padding: [pad, pad],
        };
        // Few distinct values: ties in most windows.
        let shape = [3, 3, 7, 5];
        let n = shape.iter().product();
        let mut x = (
            TensorType::f32(shape.to_vec()),
            (0..n)
                .map(|_| rng.random_range(0..3) as f32)
                .collect::<Vec<_>>(),
        );
        check_pool(&mut rng, &pool, x.clone());
        // A NaN wins its windows; two NaNs in one window: the last one.
        x.1[8] = f32::NAN;
        x.1[9] = f32::NAN;
        x.1[40] = f32::NAN;
        check_pool(&mut rng, &pool, x);
    }
}

#[test]
fn subgroup_reductions_are_used_where_the_adapter_has_them() {
    let Some(gpu) = test_gpu() else {
        return;
    };
    let has = gpu.adapter.features.iter().any(|f| f == "SUBGROUP");
    let off = std::env::var("TRAINER_NO_SUBGROUPS").is_ok_and(|v| v == "1");
    eprintln!("{}: {}", gpu.adapter.name, variant(gpu));
    assert_eq!(gpu.subgroups.is_some(), has && !off, "{}", variant(gpu));
    // Both variants are tested where there are two.
    assert_eq!(test_gpus().len(), 1 + gpu.subgroups.is_some() as usize);
    assert!(test_gpus()[1..].iter().all(|g| g.subgroups.is_none()));
}

/// Lavapipe's subgroups are as wide as its vectors (`LP_NATIVE_VECTOR_WIDTH`): every other test
/// here runs again in a child process with 4- and 16-lane subgroups (8 is the default).
#[test]
fn lavapipe_reruns_these_tests_with_other_subgroup_sizes() {
    let Some(gpu) = test_gpu() else {
        return;
    };
    let lavapipe = gpu.adapter.name.starts_with("llvmpipe");
    if !lavapipe || gpu.subgroups.is_none() || std::env::var_os("LP_NATIVE_VECTOR_WIDTH").is_some()
    {
        return;
    }
    for (bits, lanes) in [(128, 4), (512, 16)] {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--skip",
                "lavapipe_reruns",
                "--nocapture",
                "--test-threads",
                "2",
            ])
            .env("LP_NATIVE_VECTOR_WIDTH", bits.to_string())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stderr) + String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "with {lanes}-lane subgroups:\n{text}");
        let want = format!("subgroup reductions, {lanes}..={lanes} lanes");
        assert!(text.contains(&want), "no {want:?} in:\n{text}");
    }
}

#[test]
fn reductions_give_the_same_bits_every_run() {
    for gpu in test_gpus() {
        same_bits_twice(gpu);
    }
}

fn same_bits_twice(gpu: &Gpu) {
    let mut rng = rng();
    let x = normal(&mut rng, &[40, 3, 37]);
    let dy = normal(&mut rng, &[40, 3, 37]);
    let (mean, var) = channel_stats(&x);
    let c = TensorType::f32(vec![3]);
    let cases = [
        (OpKind::SumTo(SumTo { shape: vec![3, 1] }), vec![x.clone()]),
        (
            OpKind::BatchNormGrad(BatchNormGrad {
                eps: 1e-5,
                affine: false,
                training: true,
            }),
            vec![x.clone(), (c.clone(), mean), (c, var), dy.clone()],
        ),
        (
            OpKind::LayerNormGrad(LayerNormGrad(LayerNorm {
                eps: 1e-5,
                dims: 2,
                affine: false,
                centered: true,
            })),
            vec![x.clone(), dy.clone()],
        ),
        (
            OpKind::LayerNormGrad(LayerNormGrad(LayerNorm::rms(1e-6, 1, true))),
            vec![x.clone(), normal(&mut rng, &[37]), dy],
        ),
    ];
    for (op, ins) in cases {
        let refs: Vec<(&TensorType, &[f32])> = ins.iter().map(|(t, v)| (t, v.as_slice())).collect();
        let bits = || -> Vec<Vec<u32>> {
            let outs = eval_once(gpu, &op, &refs, StepCtx::default()).unwrap();
            outs.iter()
                .map(|o| o.iter().map(|v| v.to_bits()).collect())
                .collect()
        };
        assert_eq!(bits(), bits(), "{op:?} ({})", variant(gpu));
    }
}
