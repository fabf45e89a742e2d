//! Loss, optimizer, data-movement and dropout kernels against the CPU backend, on odd shapes
//! and every attribute variant, fresh seeds every run; where the adapter has subgroups, on both
//! reduction variants (the losses and the clip norm reduce through kernels/tree*.wgsl).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use trainer::backend::gpu::{compare_with_cpu, test_gpu, test_gpus};
use trainer::kernel::gpu::{KernelArgs, workspace};
use trainer::ops::{
    AdamStep, Concat, CountUp, CrossEntropy, CrossEntropyGrad, Dropout, Fill, Gather, GatherGrad,
    GradNormCoef, Mse, MseGrad, OpKind, Permute, Reshape, SgdStep, Slice,
};
use trainer::tensor::StepCtx;
use trainer::tensor::{DType, TensorType};

type Tensor = (TensorType, Vec<f32>);

fn rng() -> ChaCha8Rng {
    let seed = rand::random();
    eprintln!("seed {seed}");
    ChaCha8Rng::seed_from_u64(seed)
}

fn uniform(rng: &mut impl Rng, shape: &[usize], lo: f32, hi: f32) -> Tensor {
    let n = shape.iter().product();
    let v = (0..n).map(|_| rng.random_range(lo..hi)).collect();
    (TensorType::f32(shape.to_vec()), v)
}

fn random(rng: &mut impl Rng, shape: &[usize]) -> Tensor {
    uniform(rng, shape, -3.0, 3.0)
}

fn scalar(v: f32) -> Tensor {
    (TensorType::f32(vec![]), vec![v])
}

/// Integer ids in [0, n) stored as f32, as the CPU backend stores i32 tensors.
fn ids(rng: &mut impl Rng, shape: &[usize], n: usize) -> Tensor {
    let count = shape.iter().product();
    let ty = TensorType {
        shape: shape.to_vec(),
        dtype: DType::I32,
    };
    (
        ty,
        (0..count).map(|_| rng.random_range(0..n) as f32).collect(),
    )
}

fn check(op: &OpKind, ins: &[Tensor], ctx: StepCtx, tol: f64) {
    for gpu in test_gpus() {
        let errs = compare_with_cpu(gpu, op, ins, ctx).unwrap();
        for (k, e) in errs.iter().enumerate() {
            assert!(
                *e < tol,
                "{op:?} at {ctx:?}, output {k} (subgroups {:?}): relative error {e}",
                gpu.subgroups
            );
        }
    }
}

fn assert_close(op: &OpKind, ins: &[Tensor]) {
    check(op, ins, StepCtx::default(), 1e-4);
}

#[test]
fn losses_and_their_gradients_match_the_cpu() {
    if test_gpu().is_none() {
        return;
    }
    let mut rng = rng();
    for (n, c) in CE_SHAPES {
        for label_smoothing in [0.0, 0.1] {
            let logits = random(&mut rng, &[n, c]);
            let labels = ids(&mut rng, &[n], c);
            for ignore_index in [None, Some(0)] {
                // Every row ignored is 0/0, which WGSL leaves undefined.
                if ignore_index.is_some() && labels.1.iter().all(|&l| l == 0.0) {
                    continue;
                }
                let ce = OpKind::CrossEntropy(CrossEntropy {
                    label_smoothing,
                    ignore_index,
                });
                assert_close(&ce, &[logits.clone(), labels.clone()]);
                let grad = OpKind::CrossEntropyGrad(CrossEntropyGrad {
                    label_smoothing,
                    ignore_index,
                });
                let dloss = scalar(rng.random_range(0.5..2.0));
                assert_close(&grad, &[logits.clone(), labels.clone(), dloss]);
            }
        }
    }
    // Sequences: logits [batch, positions, classes], a label per position; ignore_index -100
    // (PyTorch's default) on a few positions, in one block and in several.
    for shape in [[3, 37, 11], [4, 700, 7]] {
        let logits = random(&mut rng, &shape);
        let mut labels = ids(&mut rng, &shape[..2], shape[2]);
        for at in [5, 17, 40, 41] {
            labels.1[at] = -100.0;
        }
        let ce = OpKind::CrossEntropy(CrossEntropy {
            label_smoothing: 0.0,
            ignore_index: Some(-100),
        });
        assert_close(&ce, &[logits.clone(), labels.clone()]);
        let grad = OpKind::CrossEntropyGrad(CrossEntropyGrad {
            label_smoothing: 0.0,
            ignore_index: Some(-100),
        });
        assert_close(&grad, &[logits, labels, scalar(1.5)]);
    }
    // A label outside [0, C) makes the loss NaN and its row of the gradient NaN, in one block
    // or in the third block of six.
    for (rows, at) in [(4, 2), (3000, 1500)] {
        let logits = random(&mut rng, &[rows, 6]);
        let mut labels = ids(&mut rng, &[rows], 6);
        for bad in [6.0, -1.0, 2.5] {
            labels.1[at] = bad;
            let ce = OpKind::CrossEntropy(CrossEntropy {
                label_smoothing: 0.1,
                ignore_index: None,
            });
            assert_close(&ce, &[logits.clone(), labels.clone()]);
            let grad = OpKind::CrossEntropyGrad(CrossEntropyGrad {
                label_smoothing: 0.1,
                ignore_index: None,
            });
            assert_close(&grad, &[logits.clone(), labels.clone(), scalar(1.0)]);
        }
    }
    for shape in MSE_SHAPES {
        let (pred, target) = (random(&mut rng, shape), random(&mut rng, shape));
        assert_close(&OpKind::Mse(Mse), &[pred.clone(), target.clone()]);
        let dloss = scalar(rng.random_range(0.5..2.0));
        assert_close(&OpKind::MseGrad(MseGrad), &[pred, target, dloss]);
    }
}

/// Logits [rows, classes]: the first ones fit one block of the GPU's mean, the last three are
/// cut into several (`CE_BLOCKS`), with a last block cut short.
const CE_SHAPES: [(usize, usize); 10] = [
    (1, 1),
    (1, 5),
    (7, 3),
    (13, 10),
    (37, 17),
    (5, 300),
    (3, 1001),
    (1000, 10),
    (67, 300),
    (9, 1001),
];
const CE_BLOCKS: [usize; 10] = [1, 1, 1, 1, 1, 1, 1, 4, 7, 2];

/// Mse shapes: one block, then several, then more blocks than a workgroup has threads.
const MSE_SHAPES: [&[usize]; 6] = [&[1], &[3, 7, 5], &[2, 333], &[1100], &[3, 1001], &[263_000]];
const MSE_BLOCKS: [usize; 6] = [1, 1, 1, 1, 3, 257];

/// Blocks of the first pass of a loss's mean on the GPU: the workgroups of its first dispatch
/// when a second (`*_total`) pass adds their sums after it, else 1 (the first pass writes the mean).
fn loss_blocks(op: OpKind, ins: &[TensorType]) -> usize {
    let ins: Vec<&TensorType> = ins.iter().collect();
    let outputs = op.primitive().infer(&ins).unwrap();
    let args = KernelArgs {
        inputs: &ins,
        outputs: &outputs,
    };
    let ds = op.primitive().gpu(&args).unwrap();
    let two_pass = ds.len() == 2 && ds[1].shader.entry.ends_with("total");
    assert_eq!(two_pass, workspace(&ds) > 0, "{op:?}");
    match two_pass {
        true => ds[0].workgroups.iter().product::<u32>() as usize,
        false => 1,
    }
}

/// The loss shapes above run both kernels of the two-pass mean, so neither is tested vacuously.
#[test]
fn loss_test_shapes_split_into_blocks() {
    let ce = |(n, c): (usize, usize)| {
        let labels = TensorType {
            shape: vec![n],
            dtype: DType::I32,
        };
        let op = OpKind::CrossEntropy(CrossEntropy {
            label_smoothing: 0.0,
            ignore_index: None,
        });
        loss_blocks(op, &[TensorType::f32(vec![n, c]), labels])
    };
    assert_eq!(CE_SHAPES.map(ce), CE_BLOCKS);
    let mse = |s: &[usize]| {
        let t = TensorType::f32(s.to_vec());
        loss_blocks(OpKind::Mse(Mse), &[t.clone(), t])
    };
    assert_eq!(MSE_SHAPES.map(mse), MSE_BLOCKS);
    // The NaN-label case in six blocks.
    assert_eq!(ce((3000, 6)), 6);
}

/// p, g and the optimizer state (`states` tensors like p), then the clip coefficient.
fn update_inputs(rng: &mut impl Rng, shape: &[usize], states: usize, clip: bool) -> Vec<Tensor> {
    let mut ins = vec![random(rng, shape), random(rng, shape)];
    match states {
        1 => ins.push(random(rng, shape)),
        2 => {
            ins.push(uniform(rng, shape, -0.5, 0.5));
            // The second moment is never negative.
            ins.push(uniform(rng, shape, 0.0, 0.1));
        }
        _ => {}
    }
    if clip {
        ins.push(scalar(rng.random_range(0.05..1.0)));
    }
    ins
}

#[test]
fn optimizer_updates_match_the_cpu() {
    if test_gpu().is_none() {
        return;
    }
    let mut rng = rng();
    let shape = [7, 37];
    for step in [1, 7] {
        let ctx = StepCtx {
            lr: rng.random_range(0.001..0.2),
            step,
            seed: 0,
        };
        // (momentum, dampening, nesterov, weight decay)
        let sgds = [
            (0.0, 0.0, false, 0.0),
            (0.0, 0.0, false, 0.01),
            (0.9, 0.0, false, 0.0),
            (0.9, 0.1, false, 1e-3),
            (0.9, 0.0, true, 0.0),
            (0.8, 0.0, true, 0.05),
        ];
        for (momentum, dampening, nesterov, weight_decay) in sgds {
            for clip in [false, true] {
                let op = OpKind::SgdStep(SgdStep {
                    momentum,
                    dampening,
                    nesterov,
                    weight_decay,
                    clip,
                });
                let states = (momentum != 0.0) as usize;
                check(
                    &op,
                    &update_inputs(&mut rng, &shape, states, clip),
                    ctx,
                    1e-4,
                );
            }
        }
        for (weight_decay, decoupled) in [(0.0, false), (0.01, false), (0.0, true), (0.05, true)] {
            for clip in [false, true] {
                for (beta1, beta2) in [(0.9, 0.999), (0.5, 0.9)] {
                    let op = OpKind::AdamStep(AdamStep {
                        beta1,
                        beta2,
                        eps: 1e-8,
                        weight_decay,
                        decoupled,
                        clip,
                    });
                    check(&op, &update_inputs(&mut rng, &shape, 2, clip), ctx, 1e-4);
                }
            }
        }
    }
}

/// Gradients of the clip coefficient and the blocks the GPU sums them in: several per
/// gradient, across two dispatches (seven gradients each), more than a workgroup has threads.
const CLIP_SPLIT: [(&[&[usize]], usize); 2] = [
    (&[&[600_001], &[3], &[2049, 1]], 296),
    (
        &[&[5], &[4097], &[1], &[2], &[3], &[4], &[5], &[6], &[7, 900]],
        14,
    ),
];

/// The clip cases above split into blocks: the words of workspace the coefficient's GPU
/// kernels take are their blocks' sums.
#[test]
fn clip_test_gradients_split_into_blocks() {
    for (shapes, blocks) in CLIP_SPLIT {
        let types: Vec<TensorType> = shapes.iter().map(|s| TensorType::f32(s.to_vec())).collect();
        let ins: Vec<&TensorType> = types.iter().collect();
        let op = OpKind::GradNormCoef(GradNormCoef { max_norm: 1.0 });
        let outputs = op.primitive().infer(&ins).unwrap();
        let args = KernelArgs {
            inputs: &ins,
            outputs: &outputs,
        };
        let ds = op.primitive().gpu(&args).unwrap();
        assert_eq!(workspace(&ds), blocks, "{shapes:?}");
        let last = ds.last().unwrap();
        assert_eq!(last.shader.entry, "grad_norm_total");
        assert_eq!(ds.len(), shapes.len().div_ceil(7) + 1);
    }
}

#[test]
fn clip_coefficient_and_counter_match_the_cpu() {
    if test_gpu().is_none() {
        return;
    }
    let mut rng = rng();
    // Gradients of one block each, then of up to 8 blocks, then the `CLIP_SPLIT` cases.
    let mut cases: Vec<Vec<Vec<usize>>> = Vec::new();
    for (count, cols) in [(1, 300), (3, 300), (7, 300), (8, 300), (11, 300), (9, 3000)] {
        let shapes = (0..count)
            .map(|_| vec![1 + rng.random_range(0..5), 1 + rng.random_range(0..cols)])
            .collect();
        cases.push(shapes);
    }
    cases.extend(
        CLIP_SPLIT
            .iter()
            .map(|(s, _)| s.iter().map(|s| s.to_vec()).collect()),
    );
    for shapes in cases {
        let grads: Vec<Tensor> = shapes
            .iter()
            .map(|s| uniform(&mut rng, s, -0.1, 0.1))
            .collect();
        // A small max_norm clips, a large one gives exactly 1.
        for max_norm in [0.05, 1.0, 1e6] {
            let op = OpKind::GradNormCoef(GradNormCoef { max_norm });
            assert_close(&op, &grads);
        }
    }
    let counter = TensorType {
        shape: vec![],
        dtype: DType::I32,
    };
    for n in [0.0, 41.0] {
        assert_close(&OpKind::CountUp(CountUp), &[(counter.clone(), vec![n])]);
    }
}

#[test]
fn movement_ops_match_the_cpu() {
    if test_gpu().is_none() {
        return;
    }
    let mut rng = rng();
    let x = random(&mut rng, &[3, 5, 7]);
    assert_close(
        &OpKind::Reshape(Reshape { shape: vec![15, 7] }),
        std::slice::from_ref(&x),
    );
    let cases: [(&[&[usize]], i64); 6] = [
        (&[&[2, 5], &[3, 5]], 0),
        (&[&[2, 5], &[3, 5], &[1, 5]], 0),
        (&[&[4, 3], &[4, 9]], 1),
        (&[&[3, 2, 5], &[3, 1, 5], &[3, 4, 5]], 1),
        (&[&[3, 2, 5], &[3, 0, 5], &[3, 4, 5]], -2),
        (&[&[2, 3, 4], &[2, 3, 1]], -1),
    ];
    for (shapes, axis) in cases {
        let ins: Vec<Tensor> = shapes.iter().map(|s| random(&mut rng, s)).collect();
        assert_close(&OpKind::Concat(Concat { axis }), &ins);
    }
    // Odd shapes of ranks 1 to 6; the last is over 65,535 · 256 elements, so its grid folds.
    let perms: [(&[usize], &[usize]); 7] = [
        (&[37], &[0]),
        (&[3, 5, 7], &[0, 2, 1]),
        (&[5, 13, 11, 9], &[0, 3, 1, 2]),
        (&[3, 7, 5, 11, 2], &[4, 2, 0, 3, 1]),
        (&[2, 3, 5, 1, 7, 3], &[5, 3, 1, 4, 0, 2]),
        (&[3, 0, 2], &[2, 0, 1]),
        (&[3, 4099, 1367], &[0, 2, 1]),
    ];
    for (shape, perm) in perms {
        let x = random(&mut rng, shape);
        let perm = perm.to_vec();
        assert_close(&OpKind::Permute(Permute { perm }), &[x]);
    }
    for (axis, start, len) in [(1, 2, 3), (0, 1, 2), (2, 0, 7), (2, 6, 1), (1, 0, 5)] {
        let op = OpKind::Slice(Slice { axis, start, len });
        assert_close(&op, std::slice::from_ref(&x));
    }
    // Ids repeat (many draws from few rows), so the gradient accumulates.
    for (vocab, width, id_shape) in [(7, 3, &[3, 5][..]), (2, 5, &[9]), (11, 1, &[300])] {
        let table = random(&mut rng, &[vocab, width]);
        let mut idx = ids(&mut rng, id_shape, vocab);
        assert_close(&OpKind::Gather(Gather), &[table.clone(), idx.clone()]);
        let mut dy_shape = id_shape.to_vec();
        dy_shape.push(width);
        let dy = random(&mut rng, &dy_shape);
        let grad = OpKind::GatherGrad(GatherGrad { vocab });
        assert_close(&grad, &[idx.clone(), dy.clone()]);
        // Out-of-range ids: a NaN row forward, nothing added backward.
        idx.1[1] = vocab as f32;
        idx.1[2] = -1.0;
        assert_close(&OpKind::Gather(Gather), &[table, idx.clone()]);
        assert_close(&grad, &[idx, dy]);
    }
    for (shape, value) in [(vec![], 1.0), (vec![3, 101], -0.25)] {
        let op = OpKind::Fill(Fill {
            ty: TensorType::f32(shape),
            value,
        });
        assert_close(&op, &[]);
    }
}

#[test]
fn dropout_masks_equal_the_cpu_masks() {
    if test_gpu().is_none() {
        return;
    }
    let mut rng = rng();
    let x = uniform(&mut rng, &[5, 333], 0.5, 2.0);
    let seeds = [0, 42, rng.random::<u64>(), u64::MAX];
    for p in [0.1, 0.5, 0.0, 1.0] {
        for (k, &seed) in seeds.iter().enumerate() {
            for step in [1, 2, 1000 + k as u64] {
                let ctx = StepCtx {
                    lr: 0.0,
                    step,
                    seed,
                };
                let stream = [0, 3, 1 << 40][k % 3];
                // One differing mask bit of 1665 elements is an error near 0.03.
                check(
                    &OpKind::Dropout(Dropout { p, stream }),
                    std::slice::from_ref(&x),
                    ctx,
                    1e-6,
                );
            }
        }
    }
}
