//! Matmul and convolution kernels (tiled and implicit GEMMs) against the CPU backend: sizes
//! that are not multiples of the 64x64 tiles, leading dims, strides, padding, dilation, groups
//! (depthwise too); fresh seeds every run; and bit-identical results run to run.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use trainer::backend::gpu::{compare_with_cpu, eval_once, test_gpu};
use trainer::kernel::gpu::{Dispatch, KernelArgs, Tile};
use trainer::ops::{
    BatchMatMul, Binary, BinaryFn, Conv2d, Conv2dGradInput, Conv2dGradWeight, MatMul, MatMulBias,
    MatMulGradInput, MatMulGradWeight, OpKind, Unary, UnaryFn,
};
use trainer::tensor::StepCtx;
use trainer::tensor::TensorType;

/// A tensor's type and values.
type Input = (TensorType, Vec<f32>);

fn random(rng: &mut impl Rng, shape: &[usize]) -> Input {
    let n = shape.iter().product();
    let v = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    (TensorType::f32(shape.to_vec()), v)
}

fn seeded() -> ChaCha8Rng {
    let seed = rand::random();
    eprintln!("seed {seed}");
    ChaCha8Rng::seed_from_u64(seed)
}

fn assert_close(op: &OpKind, ins: &[(TensorType, Vec<f32>)]) {
    let gpu = test_gpu().expect("GPU");
    let errs = compare_with_cpu(gpu, op, ins, StepCtx::default()).unwrap();
    let shapes: Vec<_> = ins.iter().map(|(t, _)| &t.shape).collect();
    for (k, e) in errs.iter().enumerate() {
        assert!(
            *e < 1e-4,
            "{op:?} on {shapes:?} output {k}: relative error {e}"
        );
    }
}

/// The output shape of `op` on `ins`.
fn out_shape(op: &OpKind, ins: &[&[usize]]) -> Vec<usize> {
    let types: Vec<TensorType> = ins.iter().map(|s| TensorType::f32(s.to_vec())).collect();
    let refs: Vec<&TensorType> = types.iter().collect();
    op.primitive().infer(&refs).unwrap().swap_remove(0).shape
}

/// x [lead.., k], w [n, k]: the product and both gradients.
fn check_matmul(rng: &mut ChaCha8Rng, lead: &[usize], n: usize, k: usize) {
    let xs: Vec<usize> = lead.iter().copied().chain([k]).collect();
    let ys: Vec<usize> = lead.iter().copied().chain([n]).collect();
    let (x, w, dy) = (random(rng, &xs), random(rng, &[n, k]), random(rng, &ys));
    assert_close(&OpKind::MatMul(MatMul), &[x.clone(), w.clone()]);
    assert_close(&OpKind::MatMulGradInput(MatMulGradInput), &[dy.clone(), w]);
    assert_close(&OpKind::MatMulGradWeight(MatMulGradWeight), &[dy, x]);
}

#[test]
fn matmul_and_its_gradients_match_the_cpu_on_odd_sizes() {
    if test_gpu().is_none() {
        return;
    }
    let mut rng = seeded();
    let cases: [(&[usize], usize, usize); 18] = [
        (&[1], 1, 1),
        (&[3], 1, 17),
        (&[1], 17, 3),
        (&[17], 33, 3),
        (&[33], 3, 65),
        (&[2, 5], 17, 33),
        (&[2, 3, 7], 70, 19),
        (&[65], 67, 130),
        (&[130], 5, 1),
        (&[4], 3, 0),
        // Split-K (kernel/gpu/gemm.rs): the weight gradient's inner dim is 600 rows, the
        // product's 1,030 (4 slices, the last one short).
        (&[600], 5, 9),
        (&[3], 5, 1030),
        // The 128x128 and 128x256 tiles (2048 x 2048 and 2048 x 4096 products); their
        // gradients split K.
        (&[2048], 2048, 37),
        (&[2048], 4096, 21),
        // The wide 32- and 64-row tiles (256 tiles of 256 columns).
        (&[29], 65_500, 21),
        (&[61], 65_530, 19),
        // x·wᵀ through a transposed copy of w (ops/matmul.rs `transposes_weight`): read as
        // quads (516 columns), and one at a time (2,053).
        (&[1030], 516, 515),
        (&[131], 2053, 1001),
    ];
    for (lead, n, k) in cases {
        check_matmul(&mut rng, lead, n, k);
    }
    // A random one.
    let lead = [rng.random_range(1..4), rng.random_range(1..40)];
    let (n, k) = (rng.random_range(1..80), rng.random_range(1..80));
    check_matmul(&mut rng, &lead, n, k);
}

fn conv(stride: [usize; 2], padding: [usize; 2], dilation: [usize; 2], groups: usize) -> Conv2d {
    Conv2d {
        stride,
        padding,
        dilation,
        groups,
    }
}

/// The convolution and both gradients on x of `xs`, w of `ws`.
fn check_conv(rng: &mut ChaCha8Rng, xs: [usize; 4], ws: [usize; 4], cv: Conv2d) {
    let fwd = OpKind::Conv2d(cv.clone());
    let ys = out_shape(&fwd, &[&xs, &ws]);
    let (x, w, dy) = (random(rng, &xs), random(rng, &ws), random(rng, &ys));
    assert_close(&fwd, &[x.clone(), w.clone()]);
    let gi = OpKind::Conv2dGradInput(Conv2dGradInput {
        conv: cv.clone(),
        input: [xs[2], xs[3]],
    });
    assert_close(&gi, &[dy.clone(), w]);
    let gw = OpKind::Conv2dGradWeight(Conv2dGradWeight {
        conv: cv,
        kernel: [ws[2], ws[3]],
    });
    assert_close(&gw, &[x, dy]);
}

/// (x, w, conv): batch 1 and 2, 3 channels, 1x1, 3x3 and 7x7 kernels, strides that drop
/// rows, padding 0..3, dilation 2, groups 2 and 3, depthwise, odd spatial sizes.
fn conv_cases() -> Vec<([usize; 4], [usize; 4], Conv2d)> {
    vec![
        ([1, 3, 7, 5], [4, 3, 3, 3], conv([1, 1], [1, 1], [1, 1], 1)),
        ([2, 3, 9, 11], [5, 3, 3, 3], conv([2, 2], [0, 0], [1, 1], 1)),
        ([2, 3, 9, 11], [5, 3, 3, 3], conv([2, 1], [3, 2], [2, 2], 1)),
        ([1, 3, 7, 5], [2, 3, 1, 1], conv([1, 1], [0, 0], [1, 1], 1)),
        ([2, 3, 7, 5], [6, 3, 1, 1], conv([2, 2], [1, 1], [1, 1], 1)),
        ([1, 3, 11, 9], [2, 3, 7, 7], conv([1, 1], [3, 3], [1, 1], 1)),
        ([2, 3, 9, 11], [4, 3, 7, 7], conv([2, 2], [3, 2], [1, 1], 1)),
        ([2, 4, 7, 5], [6, 2, 3, 3], conv([1, 1], [1, 0], [1, 1], 2)),
        ([2, 6, 9, 7], [6, 2, 3, 2], conv([2, 2], [1, 2], [2, 1], 3)),
        // Depthwise.
        ([2, 5, 9, 11], [5, 1, 3, 3], conv([1, 1], [1, 1], [1, 1], 5)),
        ([1, 4, 7, 5], [8, 1, 3, 3], conv([2, 2], [2, 2], [2, 2], 4)),
        // Output rows (weight gradient) and phase rows (input gradient) of whole quads: the
        // im2col operand read four pixels at a time, strided and dilated.
        (
            [2, 3, 10, 16],
            [5, 3, 3, 3],
            conv([2, 2], [1, 1], [1, 1], 1),
        ),
        ([1, 2, 9, 12], [3, 2, 3, 3], conv([1, 1], [2, 2], [2, 2], 1)),
        // More rows and columns than one 64x64 tile; an input smaller than the kernel.
        (
            [2, 3, 13, 12],
            [70, 3, 3, 3],
            conv([1, 1], [1, 1], [1, 1], 1),
        ),
        (
            [1, 70, 5, 7],
            [66, 70, 1, 1],
            conv([1, 1], [0, 0], [1, 1], 1),
        ),
        ([1, 3, 2, 1], [2, 3, 3, 3], conv([1, 1], [2, 3], [1, 1], 1)),
        // Weight gradients split along images × pixels (663, 646 and 2,668 long: 2, 2 and 8
        // slices), with groups too.
        (
            [3, 2, 17, 13],
            [3, 2, 3, 3],
            conv([1, 1], [1, 1], [1, 1], 1),
        ),
        (
            [2, 4, 19, 17],
            [4, 2, 3, 3],
            conv([1, 1], [1, 1], [1, 1], 2),
        ),
        (
            [4, 1, 23, 29],
            [3, 1, 3, 3],
            conv([1, 1], [1, 1], [1, 1], 1),
        ),
    ]
}

/// Slices of `op`'s GEMM on these inputs: 1 unless it splits K (one `Bind::Scratch`).
/// The dispatches of `op` on inputs of shapes `ins`, and its output types.
fn dispatches(op: &OpKind, ins: &[&[usize]]) -> (Vec<Dispatch>, Vec<TensorType>) {
    let types: Vec<TensorType> = ins.iter().map(|s| TensorType::f32(s.to_vec())).collect();
    let refs: Vec<&TensorType> = types.iter().collect();
    let outputs = op.primitive().infer(&refs).unwrap();
    let ds = op
        .primitive()
        .gpu(&KernelArgs {
            inputs: &refs,
            outputs: &outputs,
        })
        .unwrap();
    (ds, outputs)
}

/// Split-K slices of `op` (its workspace holds only partial sums).
fn slices(op: &OpKind, ins: &[&[usize]]) -> usize {
    let (ds, outputs) = dispatches(op, ins);
    let words = trainer::kernel::gpu::workspace(&ds);
    if words == 0 {
        1
    } else {
        words / outputs[0].numel()
    }
}

/// The cases above run every GEMM tile shape (kernel/gpu/gemm.rs `Tile::ALL`).
/// Batched products of two activations (one GEMM per batch from one launch, group strides
/// in kernels/matmul.wgsl), each transpose of each operand, on sizes across tiles, with group
/// strides that are and are not multiples of 4 (vec4 and scalar reads), and split-K.
#[test]
fn batched_matmul_matches_the_cpu_on_odd_sizes() {
    if test_gpu().is_none() {
        return;
    }
    let mut rng = seeded();
    let cases: [(&[usize], usize, usize, usize); 6] = [
        (&[1], 1, 1, 1),
        (&[3], 5, 7, 3),
        (&[2, 3], 17, 33, 8),
        (&[5], 65, 67, 9),
        (&[2], 64, 64, 64),
        // Split-K: an inner dim of 1,030.
        (&[3], 5, 9, 1030),
    ];
    for (batch, m, n, k) in cases {
        for (trans_a, trans_b) in [(false, false), (false, true), (true, false), (true, true)] {
            let dims = |rows: usize, cols: usize| -> Vec<usize> {
                batch.iter().copied().chain([rows, cols]).collect()
            };
            let a = if trans_a { dims(k, m) } else { dims(m, k) };
            let b = if trans_b { dims(n, k) } else { dims(k, n) };
            let op = OpKind::BatchMatMul(BatchMatMul { trans_a, trans_b });
            assert_eq!(out_shape(&op, &[&a, &b]), dims(m, n));
            assert_close(&op, &[random(&mut rng, &a), random(&mut rng, &b)]);
        }
    }
}

#[test]
fn the_cases_cover_every_tile() {
    let mut sources = String::new();
    let mut add = |op: OpKind, ins: &[&[usize]]| {
        let types: Vec<TensorType> = ins.iter().map(|s| TensorType::f32(s.to_vec())).collect();
        let refs: Vec<&TensorType> = types.iter().collect();
        let outputs = op.primitive().infer(&refs).unwrap();
        let args = KernelArgs {
            inputs: &refs,
            outputs: &outputs,
        };
        for d in op.primitive().gpu(&args).unwrap() {
            sources.push_str(&d.shader.source);
        }
    };
    for (lead, n) in [
        (17, 33),
        (33, 3),
        (2048, 2048),
        (2048, 4096),
        (3, 5),
        (29, 65_500),
        (61, 65_530),
    ] {
        add(OpKind::MatMul(MatMul), &[&[lead, 37], &[n, 37]]);
    }
    for (xs, ws, cv) in conv_cases() {
        add(OpKind::Conv2d(cv), &[&xs, &ws]);
    }
    for tile in Tile::ALL {
        let want = format!(
            "const TM: u32 = {}u;\nconst TN: u32 = {}u;",
            tile.rows, tile.cols
        );
        assert!(sources.contains(&want), "no case runs {tile:?}");
    }
}

/// The products large enough for it multiply by a transposed copy of w; the others do not.
#[test]
fn large_products_transpose_the_weight_first() {
    // Which dispatches' sources contain `mark`.
    let marked = |op: OpKind, ins: &[&[usize]], mark: &str| {
        let (ds, _) = dispatches(&op, ins);
        ds.iter()
            .map(|d| d.shader.source.contains(mark))
            .collect::<Vec<bool>>()
    };
    let copy = "dst [cols, rows] = src [rows, cols]";
    let entries = |xs: &[usize], ws: &[usize]| marked(OpKind::MatMul(MatMul), &[xs, ws], copy);
    // The copy first, then the GEMM (here split in K, and the sum).
    assert_eq!(entries(&[1030, 515], &[516, 515]), [true, false, false]);
    assert_eq!(entries(&[131, 1001], &[2053, 1001]), [true, false, false]);
    assert_eq!(entries(&[2048, 37], &[2048, 37]), [false]);
    assert_eq!(entries(&[127, 4096], &[4096, 4096]), [false, false]);
    let forward = |xs: &[usize], ws: &[usize]| {
        let op = OpKind::Conv2d(conv([1, 1], [1, 1], [1, 1], 1));
        marked(op, &[xs, ws], "const W_T: u32 = 1u;")
    };
    // The copy, the GEMM reading it, split-K's sum.
    let (x, small) = ([8, 67, 31, 29], [2, 3, 13, 12]);
    assert_eq!(forward(&x, &[68, 67, 3, 3]), [false, true, false]);
    assert_eq!(forward(&x, &[70, 67, 3, 3]), [false, true, false]);
    assert_eq!(forward(&small, &[70, 3, 3, 3]), [false]);
}

/// The split-K cases above do split, so the tests cover both passes.
#[test]
fn the_split_k_cases_split() {
    let grad_w = |xs: [usize; 4], ws: [usize; 4], cv: Conv2d| {
        let dy = out_shape(&OpKind::Conv2d(cv.clone()), &[&xs, &ws]);
        let op = OpKind::Conv2dGradWeight(Conv2dGradWeight {
            conv: cv,
            kernel: [ws[2], ws[3]],
        });
        slices(&op, &[&xs, &dy])
    };
    let cases = conv_cases();
    let found: Vec<usize> = cases[cases.len() - 3..]
        .iter()
        .map(|(xs, ws, cv)| grad_w(*xs, *ws, cv.clone()))
        .collect();
    assert_eq!(found, [2, 2, 10]);
    let mm = slices(
        &OpKind::MatMulGradWeight(MatMulGradWeight),
        &[&[600, 5], &[600, 9]],
    );
    assert_eq!(mm, 2);
    assert_eq!(
        slices(&OpKind::MatMul(MatMul), &[&[3, 1030], &[5, 1030]]),
        4
    );
    // The first ResNet-20 weight gradient on a batch of 128: 251 slices of 400.
    let cv = conv([1, 1], [1, 1], [1, 1], 1);
    assert_eq!(grad_w([128, 16, 28, 28], [16, 16, 3, 3], cv), 251);
}

#[test]
fn conv_and_its_gradients_match_the_cpu() {
    if test_gpu().is_none() {
        return;
    }
    let mut rng = seeded();
    for (xs, ws, cv) in conv_cases() {
        check_conv(&mut rng, xs, ws, cv);
    }
    // Forwards that multiply by a transposed copy of w (kernel::gpu::transpose_pays; their
    // gradients take the paths above): output channels read as quads (68) and one at a time.
    for o in [68, 70] {
        let (xs, ws) = ([8, 67, 31, 29], [o, 67, 3, 3]);
        let (x, w) = (random(&mut rng, &xs), random(&mut rng, &ws));
        assert_close(&OpKind::Conv2d(conv([1, 1], [1, 1], [1, 1], 1)), &[x, w]);
    }
    // A random one.
    let groups = rng.random_range(1..3);
    let c = groups * rng.random_range(1..4);
    let o = groups * rng.random_range(1..4);
    let k = [rng.random_range(1..4), rng.random_range(1..4)];
    let cv = conv(
        [rng.random_range(1..3), rng.random_range(1..3)],
        [rng.random_range(0..3), rng.random_range(0..3)],
        [rng.random_range(1..3), rng.random_range(1..3)],
        groups,
    );
    let xs = [
        rng.random_range(1..3),
        c,
        rng.random_range(7..12),
        rng.random_range(7..12),
    ];
    check_conv(&mut rng, xs, [o, c / groups, k[0], k[1]], cv);
}

#[test]
fn results_are_bit_identical_run_to_run() {
    let Some(gpu) = test_gpu() else {
        return;
    };
    let mut rng = seeded();
    let cv = conv([2, 1], [1, 1], [1, 1], 2);
    let (xs, ws) = ([3, 4, 9, 7], [6, 2, 3, 3]);
    let ys = out_shape(&OpKind::Conv2d(cv.clone()), &[&xs, &ws]);
    let (x, w, dy) = (
        random(&mut rng, &xs),
        random(&mut rng, &ws),
        random(&mut rng, &ys),
    );
    let (mx, mw, mdy) = (
        random(&mut rng, &[2, 19, 33]),
        random(&mut rng, &[17, 33]),
        random(&mut rng, &[2, 19, 17]),
    );
    let runs: Vec<(OpKind, Vec<Input>)> = vec![
        (OpKind::Conv2d(cv.clone()), vec![x.clone(), w.clone()]),
        (
            OpKind::Conv2dGradInput(Conv2dGradInput {
                conv: cv.clone(),
                input: [9, 7],
            }),
            vec![dy.clone(), w],
        ),
        (
            OpKind::Conv2dGradWeight(Conv2dGradWeight {
                conv: cv,
                kernel: [3, 3],
            }),
            vec![x, dy],
        ),
        (OpKind::MatMul(MatMul), vec![mx.clone(), mw.clone()]),
        (
            OpKind::MatMulGradInput(MatMulGradInput),
            vec![mdy.clone(), mw],
        ),
        (OpKind::MatMulGradWeight(MatMulGradWeight), vec![mdy, mx]),
    ];
    for (op, ins) in runs {
        let refs: Vec<(&TensorType, &[f32])> = ins.iter().map(|(t, v)| (t, &v[..])).collect();
        let a = eval_once(gpu, &op, &refs, StepCtx::default()).unwrap();
        let b = eval_once(gpu, &op, &refs, StepCtx::default()).unwrap();
        let bits = |v: &Vec<Vec<f32>>| -> Vec<u32> { v[0].iter().map(|f| f.to_bits()).collect() };
        assert_eq!(bits(&a), bits(&b), "{op:?}");
    }
}

/// A linear layer's bias and activation in the GEMM's store (`MatMulBias`, the fusion pass's)
/// match the CPU and give the bits of the matmul, add and activation launched one by one: on
/// a small product, one split in K, and one through a transposed copy of w (whose split-K sum
/// then stores through `finish`).
#[test]
fn matmul_bias_matches_the_cpu_and_its_unfused_launches() {
    let Some(gpu) = test_gpu() else {
        return;
    };
    let mut rng = seeded();
    let run = |op: &OpKind, ins: &[&Input]| -> Vec<f32> {
        let refs: Vec<(&TensorType, &[f32])> = ins.iter().map(|(t, v)| (t, &v[..])).collect();
        eval_once(gpu, op, &refs, StepCtx::default())
            .unwrap()
            .remove(0)
    };
    for (rows, n, k) in [(17, 33, 3), (3, 5, 1030), (1030, 516, 515)] {
        let (x, w, b) = (
            random(&mut rng, &[rows, k]),
            random(&mut rng, &[n, k]),
            random(&mut rng, &[n]),
        );
        let (_, dims) = dispatches(&OpKind::MatMul(MatMul), &[&[rows, k], &[n, k]]);
        assert_eq!(dims[0].shape, [rows, n]);
        for act in [None, Some(UnaryFn::Gelu)] {
            let op = OpKind::MatMulBias(MatMulBias { act });
            let (ds, _) = dispatches(&op, &[&[rows, k], &[n, k], &[n]]);
            let copies = ds[0]
                .shader
                .source
                .contains("dst [cols, rows] = src [rows, cols]");
            assert_eq!(copies, rows == 1030, "{rows}x{n}x{k}");
            assert_close(&op, &[x.clone(), w.clone(), b.clone()]);
            let fused = run(&op, &[&x, &w, &b]);
            let y = (dims[0].clone(), run(&OpKind::MatMul(MatMul), &[&x, &w]));
            let add = OpKind::Binary(Binary { f: BinaryFn::Add });
            let mut unfused = (y.0.clone(), run(&add, &[&y, &b]));
            if let Some(f) = act {
                unfused.1 = run(&OpKind::Unary(Unary { f }), &[&unfused]);
            }
            let differ = (0..fused.len())
                .filter(|&i| fused[i].to_bits() != unfused.1[i].to_bits())
                .count();
            assert_eq!(differ, 0, "{rows}x{n}x{k} {act:?}: {differ} values differ");
        }
    }
}
