//! The safety net under the per-family op tests: every `OpKind` variant, walked from
//! `OpKind::VARIANTS` (generated with the enum, so a new op cannot be forgotten), must have
//! (a) an f64 gradient check: central finite differences against its vjp on a case of
//!     `gradient_cases`; or, for a gradient op, a row of `THROUGH_PARENT` whose parent's cases
//!     build it in the backward graph their passing checks evaluated; or, for an op with no vjp
//!     by design, a row of `NO_VJP` with the reason and a check of its CPU value against an
//!     independent f64 formula;
//! (b) a GPU-vs-CPU check (NaN-poisoned outputs, odd shapes) of every instance those cases
//!     evaluate: the forward op and each op its vjp built, with the inputs the gradient check
//!     gave them, and the `NO_VJP` value cases. Only the fed leaves are exempt (`NO_KERNEL`).
//! A variant in none of the tables fails both tests with what to add. Shapes are small: the
//! thorough checks of each family stay in src/ops/*.rs and tests/gpu_*.rs.

use std::collections::{BTreeMap, BTreeSet};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use trainer::backend::cpu::{Feeds, eval_once, interpret};
use trainer::backend::gpu::{Gpu, compare_with_cpu, test_gpu, test_gpus};
use trainer::gradcheck::{Arg, check_op, evaluated_ops};
use trainer::graph::{Graph, Init, Phase};
use trainer::ops::{
    AdamStep, Attention, AttentionDecode, BatchMatMul, BatchNorm, BatchNormGrad, BatchNormRelu,
    BatchNormReluGrad, BatchNormRunningStats, Binary, BinaryFn, CacheWrite, CausalFill, Chain,
    Concat, Conv2d, CountUp, CrossEntropy, Dropout, ElementwiseFn, Fill, Foreach, Gather,
    GradNormCoef, Input, LayerNorm, Link, MatMul, MatMulBias, MeanAxes, Mse, OpKind, Operand,
    Permute, Pool2d, PoolKind, Reshape, SgdStep, Slice, Softmax, Split, Unary, UnaryFn,
};
use trainer::tensor::StepCtx;
use trainer::tensor::TensorId;
use trainer::tensor::{DType, TensorType};

/// A forward op with a vjp on odd shapes; `outputs` are the outputs whose gradient flows.
struct GradCase {
    op: OpKind,
    args: Vec<Arg>,
    outputs: Vec<usize>,
}

/// A case's random inputs are keyed by the case itself (FNV-1a of its op and arguments), so
/// adding a case (a new row of the elementwise table) leaves every other case's numbers as
/// they were.
fn case_seed(c: &GradCase) -> u64 {
    format!("{:?} {:?}", c.op, c.args)
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
        })
}

fn case(op: OpKind, args: Vec<Arg>) -> GradCase {
    GradCase {
        op,
        args,
        outputs: vec![0],
    }
}

/// One or more instances of every forward op with a vjp: each attribute that changes what the
/// vjp builds, on shapes with no dim repeated where the layout matters.
fn gradient_cases() -> Vec<GradCase> {
    let f = |s: &[usize]| Arg::Float(s.to_vec());
    // Every row of the elementwise table, so a new function cannot be missed.
    let mut cases: Vec<GradCase> = UnaryFn::examples()
        .into_iter()
        .map(|f| case(OpKind::Unary(Unary { f }), vec![Arg::Float(vec![3, 5, 7])]))
        .collect();
    cases.extend([
        // Broadcasting makes the vjp sum dy back to each input's shape.
        case(
            OpKind::Binary(Binary { f: BinaryFn::Add }),
            vec![f(&[2, 3, 5]), f(&[3, 1])],
        ),
        case(
            OpKind::Binary(Binary { f: BinaryFn::Mul }),
            vec![f(&[3, 1, 5]), f(&[4, 1])],
        ),
        case(OpKind::MatMul(MatMul), vec![f(&[2, 3, 7]), f(&[5, 7])]),
        case(
            OpKind::Conv2d(Conv2d {
                stride: [2, 2],
                padding: [1, 2],
                dilation: [1, 1],
                groups: 3,
            }),
            vec![f(&[2, 6, 7, 5]), f(&[6, 2, 3, 2])],
        ),
        case(
            OpKind::Conv2d(Conv2d {
                stride: [2, 1],
                padding: [3, 0],
                dilation: [2, 2],
                groups: 1,
            }),
            vec![f(&[1, 3, 9, 7]), f(&[5, 3, 3, 3])],
        ),
        case(
            OpKind::Pool2d(Pool2d {
                kind: PoolKind::Max,
                kernel: [3, 3],
                stride: [2, 2],
                padding: [1, 1],
            }),
            vec![f(&[2, 3, 7, 5])],
        ),
        case(
            OpKind::Pool2d(Pool2d {
                kind: PoolKind::Avg,
                kernel: [3, 2],
                stride: [1, 2],
                padding: [1, 1],
            }),
            vec![f(&[1, 2, 7, 5])],
        ),
        case(OpKind::Softmax(Softmax { axis: 1 }), vec![f(&[3, 4, 5])]),
        case(OpKind::Softmax(Softmax { axis: -1 }), vec![f(&[2, 7])]),
        case(
            OpKind::MeanAxes(MeanAxes { axes: vec![0, 2] }),
            vec![f(&[3, 4, 5])],
        ),
        case(
            OpKind::Reshape(Reshape { shape: vec![15, 7] }),
            vec![f(&[3, 5, 7])],
        ),
        case(
            OpKind::Permute(Permute {
                perm: vec![0, 2, 1],
            }),
            vec![f(&[3, 5, 7])],
        ),
        case(
            OpKind::Permute(Permute {
                perm: vec![0, 3, 1, 2],
            }),
            vec![f(&[2, 3, 4, 5])],
        ),
        case(
            OpKind::Concat(Concat { axis: 1 }),
            vec![f(&[3, 2, 5]), f(&[3, 1, 5]), f(&[3, 4, 5])],
        ),
        // Batched products of two activations, each transpose of each operand.
        case(
            OpKind::BatchMatMul(BatchMatMul {
                trans_a: false,
                trans_b: false,
            }),
            vec![f(&[2, 3, 5, 4]), f(&[2, 3, 4, 7])],
        ),
        case(
            OpKind::BatchMatMul(BatchMatMul {
                trans_a: false,
                trans_b: true,
            }),
            vec![f(&[3, 5, 4]), f(&[3, 7, 4])],
        ),
        case(
            OpKind::BatchMatMul(BatchMatMul {
                trans_a: true,
                trans_b: false,
            }),
            vec![f(&[3, 4, 5]), f(&[3, 4, 7])],
        ),
        case(
            OpKind::BatchMatMul(BatchMatMul {
                trans_a: true,
                trans_b: true,
            }),
            vec![f(&[2, 4, 5]), f(&[2, 7, 4])],
        ),
        // The middle piece gets no gradient: its part of dx is zeros.
        GradCase {
            op: OpKind::Split(Split {
                axis: 1,
                sizes: vec![2, 1, 3],
            }),
            args: vec![f(&[3, 6, 5])],
            outputs: vec![0, 2],
        },
        case(
            OpKind::CausalFill(CausalFill { value: -3.0 }),
            vec![f(&[2, 3, 5, 5])],
        ),
        // The middle of an axis (zeros on both sides of dy) and its first row (ViT's class
        // token: zeros after dy only).
        case(
            OpKind::Slice(Slice {
                axis: 1,
                start: 2,
                len: 3,
            }),
            vec![f(&[3, 7, 5])],
        ),
        case(
            OpKind::Slice(Slice {
                axis: 1,
                start: 0,
                len: 1,
            }),
            vec![f(&[2, 6, 4])],
        ),
        case(
            OpKind::Gather(Gather),
            vec![f(&[7, 3]), Arg::Ids(vec![3, 5], 7)],
        ),
        case(
            OpKind::Dropout(Dropout { p: 0.3, stream: 5 }),
            vec![f(&[3, 7, 5])],
        ),
        // Attention over qkv [B, T, 3·heads·D]: causal and full, one head and several.
        case(
            OpKind::Attention(Attention {
                heads: 2,
                causal: true,
                scale: 0.6,
                dropout: 0.0,
                stream: 0,
            }),
            vec![f(&[2, 5, 18])],
        ),
        case(
            OpKind::Attention(Attention {
                heads: 2,
                causal: true,
                scale: 0.6,
                dropout: 0.3,
                stream: 4,
            }),
            vec![f(&[2, 6, 12])],
        ),
        case(
            OpKind::Attention(Attention {
                heads: 1,
                causal: false,
                scale: 0.5,
                dropout: 0.0,
                stream: 0,
            }),
            vec![f(&[1, 7, 12])],
        ),
        case(
            OpKind::CrossEntropy(CrossEntropy {
                label_smoothing: 0.1,
                ignore_index: None,
            }),
            vec![f(&[7, 5]), Arg::Ids(vec![7], 5)],
        ),
        // A sequence; the ignored label is a class id, so random labels hit it.
        case(
            OpKind::CrossEntropy(CrossEntropy {
                label_smoothing: 0.0,
                ignore_index: Some(2),
            }),
            vec![f(&[2, 9, 5]), Arg::Ids(vec![2, 9], 5)],
        ),
        case(OpKind::Mse(Mse), vec![f(&[3, 7, 5]), f(&[3, 7, 5])]),
        // Training: the gradient through the batch statistics; eval: through the running
        // statistics, which are buffers (constants). Outputs 1 and 2 carry no gradient.
        case(
            OpKind::BatchNorm(BatchNorm {
                eps: 1e-5,
                momentum: 0.1,
                affine: true,
                training: true,
            }),
            vec![
                f(&[2, 3, 5, 3]),
                f(&[3]),
                f(&[3]),
                Arg::Const(vec![3], -1.0, 1.0),
                Arg::Const(vec![3], 0.5, 2.0),
            ],
        ),
        case(
            OpKind::BatchNorm(BatchNorm {
                eps: 1e-5,
                momentum: 0.1,
                affine: false,
                training: false,
            }),
            vec![
                f(&[5, 3]),
                Arg::Const(vec![3], -1.0, 1.0),
                Arg::Const(vec![3], 0.5, 2.0),
            ],
        ),
        case(
            OpKind::LayerNorm(LayerNorm {
                eps: 1e-5,
                dims: 2,
                affine: true,
                centered: true,
            }),
            vec![f(&[2, 3, 4, 5]), f(&[4, 5]), f(&[4, 5])],
        ),
        case(
            OpKind::LayerNorm(LayerNorm {
                eps: 1e-5,
                dims: 1,
                affine: false,
                centered: true,
            }),
            vec![f(&[3, 7])],
        ),
        case(
            OpKind::LayerNorm(LayerNorm::rms(1e-6, 2, true)),
            vec![f(&[2, 3, 5, 7]), f(&[5, 7])],
        ),
        case(
            OpKind::LayerNorm(LayerNorm::rms(1e-6, 1, false)),
            vec![f(&[3, 11])],
        ),
        case(
            // Rows of one element, whose gradient is away from 0 for |x| ≲ √eps only.
            OpKind::LayerNorm(LayerNorm::rms(0.5, 1, true)),
            vec![f(&[5, 1]), f(&[1])],
        ),
    ]);
    cases
}

/// Gradient ops and the forward op whose vjp builds them: they are checked through the
/// parent's gradient check, which evaluates them.
const THROUGH_PARENT: &[(&str, &str)] = &[
    ("UnaryGrad", "Unary"),
    ("SumTo", "Binary"),
    ("MatMulGradInput", "MatMul"),
    ("MatMulGradWeight", "MatMul"),
    ("Conv2dGradInput", "Conv2d"),
    ("Conv2dGradWeight", "Conv2d"),
    ("Pool2dGrad", "Pool2d"),
    ("SoftmaxGrad", "Softmax"),
    ("AttentionGrad", "Attention"),
    ("MeanAxesGrad", "MeanAxes"),
    ("GatherGrad", "Gather"),
    ("CrossEntropyGrad", "CrossEntropy"),
    ("MseGrad", "Mse"),
    ("BatchNormGrad", "BatchNorm"),
    ("LayerNormGrad", "LayerNorm"),
];

/// An instance of an op with its inputs, the step it runs at, and its outputs by an
/// independent f64 formula.
struct ValueCase {
    op: OpKind,
    inputs: Vec<(TensorType, Vec<f64>)>,
    ctx: StepCtx,
    want: Vec<Vec<f64>>,
}

/// How an op with no vjp is checked instead.
enum ValueCheck {
    /// Its CPU value against the formula of each case; the cases also run on the GPU.
    Formula(fn(&mut ChaCha8Rng) -> Vec<ValueCase>),
    /// A leaf: the value fed is the value read.
    Fed,
}

/// Ops with no vjp by design: (variant, why, how its value is checked).
const NO_VJP: &[(&str, &str, ValueCheck)] = &[
    (
        "Input",
        "a leaf fed each step (data, labels, ids): nothing computes it",
        ValueCheck::Fed,
    ),
    (
        "Parameter",
        "a leaf (weights, buffers): gradients are taken with respect to it, not through it",
        ValueCheck::Fed,
    ),
    (
        "Fill",
        "a constant with no inputs (the loss gradient's seed autodiff::gradients adds)",
        ValueCheck::Formula(fill_cases),
    ),
    (
        "GradNormCoef",
        "an optimizer update: it runs after the gradients and feeds no loss",
        ValueCheck::Formula(grad_norm_cases),
    ),
    (
        "SgdStep",
        "an optimizer update: it runs after the gradients and feeds no loss",
        ValueCheck::Formula(sgd_cases),
    ),
    (
        "AdamStep",
        "an optimizer update: it runs after the gradients and feeds no loss",
        ValueCheck::Formula(adam_cases),
    ),
    (
        "CountUp",
        "an integer counter (num_batches_tracked)",
        ValueCheck::Formula(count_up_cases),
    ),
    (
        "BatchNormRunningStats",
        "it updates buffers, which are never trained",
        ValueCheck::Formula(running_stats_cases),
    ),
    (
        "Foreach",
        "the fusion pass's multi-tensor form of the updates above",
        ValueCheck::Formula(foreach_cases),
    ),
    (
        "BatchNormRelu",
        "made by the fusion pass, after autodiff (batchnorm's and relu's vjps cover it)",
        ValueCheck::Formula(batchnorm_relu_cases),
    ),
    (
        "BatchNormReluGrad",
        "made by the fusion pass, after autodiff (a gradient op: nothing differentiates it)",
        ValueCheck::Formula(batchnorm_relu_grad_cases),
    ),
    (
        "Chain",
        "made by the fusion pass, after autodiff (its links' vjps cover it)",
        ValueCheck::Formula(chain_cases),
    ),
    (
        "MatMulBias",
        "made by the fusion pass, after autodiff (the vjps of matmul, add and activation cover it)",
        ValueCheck::Formula(matmul_bias_cases),
    ),
    (
        "AttentionDecode",
        "an op of the decode-step model (trainer generate), which is never trained",
        ValueCheck::Formula(attention_decode_cases),
    ),
    (
        "CacheWrite",
        "it updates the key/value caches, state that is never trained",
        ValueCheck::Formula(cache_write_cases),
    ),
];

/// Variants with no GPU kernel by design: the executor uploads their values.
const NO_KERNEL: &[&str] = &["Input", "Parameter"];

/// The worst gradient error a case may show (as the per-family tests allow).
const GRADIENT_TOLERANCE: f64 = 1e-5;
/// Seeds the inputs of the `NO_VJP` value cases.
const VALUE_SEED: u64 = 7;
/// The norm-wise relative error GPU outputs may show against the CPU's (f32 both).
const GPU_TOLERANCE: f64 = 1e-4;

fn uniform(rng: &mut ChaCha8Rng, shape: &[usize], lo: f64, hi: f64) -> (TensorType, Vec<f64>) {
    let n = shape.iter().product();
    let v = (0..n).map(|_| rng.random_range(lo..hi)).collect();
    (TensorType::f32(shape.to_vec()), v)
}

fn scalar(v: f64) -> (TensorType, Vec<f64>) {
    (TensorType::f32(vec![]), vec![v])
}

fn fill_cases(_: &mut ChaCha8Rng) -> Vec<ValueCase> {
    [(vec![], 1.0), (vec![3, 7], -0.25)]
        .into_iter()
        .map(|(shape, value): (Vec<usize>, f64)| ValueCase {
            want: vec![vec![value; shape.iter().product()]],
            op: OpKind::Fill(Fill {
                ty: TensorType::f32(shape),
                value,
            }),
            inputs: Vec::new(),
            ctx: StepCtx::default(),
        })
        .collect()
}

/// torch.nn.utils.clip_grad_norm_'s coefficient, min(1, max_norm / (‖all grads‖ + 1e-6)).
fn grad_norm_cases(rng: &mut ChaCha8Rng) -> Vec<ValueCase> {
    let grads = vec![
        uniform(rng, &[3, 7], -0.5, 0.5),
        uniform(rng, &[5], -0.5, 0.5),
        uniform(rng, &[2, 3, 4], -0.5, 0.5),
    ];
    let norm = grads
        .iter()
        .flat_map(|(_, v)| v)
        .map(|g| g * g)
        .sum::<f64>()
        .sqrt();
    // A small max_norm clips; a large one gives 1.
    [0.3, 1e6]
        .into_iter()
        .map(|max_norm: f64| ValueCase {
            op: OpKind::GradNormCoef(GradNormCoef { max_norm }),
            inputs: grads.clone(),
            ctx: StepCtx::default(),
            want: vec![vec![(max_norm / (norm + 1e-6)).min(1.0)]],
        })
        .collect()
}

/// Two members of each update case (SGD, Adam, the counter, running statistics) in one
/// multi-tensor op: each member's formula.
fn foreach_cases(rng: &mut ChaCha8Rng) -> Vec<ValueCase> {
    let mut out = Vec::new();
    let updates: [fn(&mut ChaCha8Rng) -> Vec<ValueCase>; 4] =
        [sgd_cases, adam_cases, count_up_cases, running_stats_cases];
    for cases in updates {
        let (first, second) = (cases(rng), cases(rng));
        for (a, b) in first.into_iter().zip(second) {
            assert_eq!((&a.op, a.ctx), (&b.op, b.ctx), "the same variants in order");
            out.push(ValueCase {
                op: OpKind::Foreach(Foreach {
                    inner: Box::new(a.op),
                    groups: 2,
                }),
                inputs: [a.inputs, b.inputs].concat(),
                ctx: a.ctx,
                want: [a.want, b.want].concat(),
            });
        }
    }
    out
}

/// Batchnorm (batch statistics when training, the running ones otherwise; affine or not),
/// then relu: y = max(0, (x − mean)/sqrt(var + eps)·w + b), with the mean and biased variance;
/// with a residual r, y = max(0, … + b + r).
fn batchnorm_relu_cases(rng: &mut ChaCha8Rng) -> Vec<ValueCase> {
    let (n, c, s, eps) = (3, 4, 5, 1e-5);
    let mut out = Vec::new();
    for (training, affine, residual) in [
        (true, true, false),
        (true, false, false),
        (false, true, false),
        (true, true, true),
        (false, false, true),
    ] {
        let mut inputs = vec![uniform(rng, &[n, c, s], -2.0, 2.0)];
        if affine {
            inputs.push(uniform(rng, &[c], 0.5, 1.5));
            inputs.push(uniform(rng, &[c], -0.5, 0.5));
        }
        inputs.push(uniform(rng, &[c], -0.5, 0.5));
        inputs.push(uniform(rng, &[c], 0.5, 1.5));
        let stats = inputs.len();
        if residual {
            inputs.push(uniform(rng, &[n, c, s], -1.0, 1.0));
        }
        let x = &inputs[0].1;
        let at = |i: usize, ch: usize, j: usize| x[(i * c + ch) * s + j];
        let (mut mean, mut var) = (vec![0.0; c], vec![0.0; c]);
        for ch in 0..c {
            if training {
                let vals: Vec<f64> = (0..n)
                    .flat_map(|i| (0..s).map(move |j| (i, j)))
                    .map(|(i, j)| at(i, ch, j))
                    .collect();
                mean[ch] = vals.iter().sum::<f64>() / vals.len() as f64;
                var[ch] =
                    vals.iter().map(|v| (v - mean[ch]).powi(2)).sum::<f64>() / vals.len() as f64;
            } else {
                (mean[ch], var[ch]) = (inputs[stats - 2].1[ch], inputs[stats - 1].1[ch]);
            }
        }
        let mut y = vec![0.0; n * c * s];
        for (idx, v) in y.iter_mut().enumerate() {
            let ch = (idx / s) % c;
            let (w, b) = if affine {
                (inputs[1].1[ch], inputs[2].1[ch])
            } else {
                (1.0, 0.0)
            };
            let r = if residual { inputs[stats].1[idx] } else { 0.0 };
            *v = ((x[idx] - mean[ch]) / (var[ch] + eps).sqrt() * w + b + r).max(0.0);
        }
        out.push(ValueCase {
            op: OpKind::BatchNormRelu(BatchNormRelu {
                bn: BatchNorm {
                    eps,
                    momentum: 0.1,
                    affine,
                    training,
                },
                residual,
            }),
            inputs,
            ctx: StepCtx::default(),
            want: vec![y, mean, var],
        });
    }
    out
}

/// Fused elementwise chains: every row of the table after a bias add (broadcast over rows),
/// then each row's gradient, from x and, where it has one, from y; and a tree of six links over
/// four inputs broadcast three ways, reading one input twice. Each against the links' formulas
/// with the broadcasting written out.
fn chain_cases(rng: &mut ChaCha8Rng) -> Vec<ValueCase> {
    use Operand::{Input as In, Link as L};
    let link = |f: ElementwiseFn, args: &[Operand]| Link {
        f,
        args: args.to_vec(),
    };
    let case = |links: Vec<Link>, inputs: Vec<(TensorType, Vec<f64>)>, want: Vec<f64>| ValueCase {
        op: OpKind::Chain(Chain { links }),
        inputs,
        ctx: StepCtx::default(),
        want: vec![want],
    };
    let add = ElementwiseFn::Binary { f: BinaryFn::Add };
    let mul = ElementwiseFn::Binary { f: BinaryFn::Mul };
    let (rows, cols) = (3, 7);
    let mut out = Vec::new();
    for f in UnaryFn::examples() {
        let x = uniform(rng, &[rows, cols], -2.0, 2.0);
        let bias = uniform(rng, &[cols], -1.0, 1.0);
        let pre: Vec<f64> = (0..rows * cols)
            .map(|i| x.1[i] + bias.1[i % cols])
            .collect();
        out.push(case(
            vec![
                link(add, &[In(0), In(1)]),
                link(ElementwiseFn::Unary { f }, &[L(0)]),
            ],
            vec![x.clone(), bias.clone()],
            pre.iter().map(|&v| f.apply(v)).collect(),
        ));
        let dy = uniform(rng, &[rows, cols], -1.0, 1.0);
        for from_output in [false, true] {
            if from_output && !f.grad_from_output() {
                continue;
            }
            let at = if from_output {
                x.1.iter().map(|&v| f.apply(v)).collect()
            } else {
                x.1.clone()
            };
            let grad = ElementwiseFn::UnaryGrad { f, from_output };
            // (dy + bias) through the gradient: the bias broadcast, then the product.
            let want = (0..rows * cols)
                .map(|i| {
                    let d = if from_output {
                        f.derivative(x.1[i])
                    } else {
                        f.derivative(at[i])
                    };
                    d * (dy.1[i] + bias.1[i % cols])
                })
                .collect();
            let at = (TensorType::f32(vec![rows, cols]), at);
            out.push(case(
                vec![link(add, &[In(1), In(2)]), link(grad, &[In(0), L(0)])],
                vec![at, dy.clone(), bias.clone()],
                want,
            ));
        }
    }
    // silu(unary_grad[gelu](x0, x1) + leaky_relu(x2) * x3) * x0 over [2, 3, 1, 5] from x0, x1 of
    // [3, 1, 5], x2 of [5] and x3 of [2, 1, 1, 1].
    let x0 = uniform(rng, &[3, 1, 5], -2.0, 2.0);
    let x1 = uniform(rng, &[3, 1, 5], -1.0, 1.0);
    let x2 = uniform(rng, &[5], -2.0, 2.0);
    let x3 = uniform(rng, &[2, 1, 1, 1], -1.0, 1.0);
    let slope = 0.1;
    let leaky = UnaryFn::LeakyRelu { slope };
    let mut want = Vec::new();
    for a in 0..2 {
        for b in 0..3 {
            for c in 0..5 {
                let g = UnaryFn::Gelu.derivative(x0.1[b * 5 + c]) * x1.1[b * 5 + c];
                let l = leaky.apply(x2.1[c]) * x3.1[a];
                want.push(UnaryFn::Silu.apply(g + l) * x0.1[b * 5 + c]);
            }
        }
    }
    out.push(case(
        vec![
            link(
                ElementwiseFn::UnaryGrad {
                    f: UnaryFn::Gelu,
                    from_output: false,
                },
                &[In(0), In(1)],
            ),
            link(ElementwiseFn::Unary { f: leaky }, &[In(2)]),
            link(mul, &[L(1), In(3)]),
            link(add, &[L(0), L(2)]),
            link(ElementwiseFn::Unary { f: UnaryFn::Silu }, &[L(3)]),
            link(mul, &[L(4), In(0)]),
        ],
        vec![x0, x1, x2, x3],
        want,
    ));
    out
}

/// A linear layer in one GEMM: x·wᵀ + b, then the activation, on odd shapes; the long inner
/// dims (520, 600) make the GPU split K, so the bias and activation are applied after the
/// slices' sum, in the reduce kernel.
fn matmul_bias_cases(rng: &mut ChaCha8Rng) -> Vec<ValueCase> {
    let cases: [(&[usize], usize, Option<UnaryFn>); 5] = [
        (&[2, 3, 7], 5, None),
        (&[4, 9], 6, Some(UnaryFn::LeakyRelu { slope: 0.1 })),
        (&[3, 600], 5, Some(UnaryFn::Tanh)),
        (&[2, 520], 3, Some(UnaryFn::Relu)),
        (&[5, 13], 7, Some(UnaryFn::Sigmoid)),
    ];
    cases
        .into_iter()
        .map(|(x_shape, n, act)| {
            let k = *x_shape.last().unwrap();
            let x = uniform(rng, x_shape, -1.0, 1.0);
            let w = uniform(rng, &[n, k], -1.0, 1.0);
            let b = uniform(rng, &[n], -1.0, 1.0);
            let rows = x.1.len() / k;
            let mut y = Vec::new();
            for r in 0..rows {
                for j in 0..n {
                    let dot: f64 = (0..k).map(|l| x.1[r * k + l] * w.1[j * k + l]).sum();
                    let a = dot + b.1[j];
                    y.push(act.map_or(a, |f| f.apply(a)));
                }
            }
            ValueCase {
                op: OpKind::MatMulBias(MatMulBias { act }),
                inputs: vec![x, w, b],
                ctx: StepCtx::default(),
                want: vec![y],
            }
        })
        .collect()
}

/// Batchnorm's gradient of dy = relu'(y)·g (g = g1 + g2 where `adds`), relu' being 1 where
/// y > 0, else 0: with M = N·S values per channel and istd = 1/sqrt(var + eps),
/// dbias = Σ dy, dweight = Σ dy·(x − mean)·istd, and dx = w·istd·(dy − dbias/M −
/// (x − mean)·istd·dweight/M) when training (the statistics depend on x), w·istd·dy otherwise.
fn batchnorm_relu_grad_cases(rng: &mut ChaCha8Rng) -> Vec<ValueCase> {
    let (n, c, s, eps) = (3, 4, 5, 1e-5);
    let m = (n * s) as f64;
    let mut out = Vec::new();
    for (training, affine, adds) in [
        (true, true, false),
        (true, false, true),
        (false, true, true),
        (true, true, true),
        (false, false, false),
    ] {
        let mut inputs = vec![uniform(rng, &[n, c, s], -2.0, 2.0)];
        if affine {
            inputs.push(uniform(rng, &[c], 0.5, 1.5));
        }
        inputs.push(uniform(rng, &[c], -0.5, 0.5));
        inputs.push(uniform(rng, &[c], 0.5, 1.5));
        let stats = inputs.len();
        // y about half negative, so relu' is 0 about half the time; the gradient(s) of y.
        for _ in 0..2 + adds as usize {
            inputs.push(uniform(rng, &[n, c, s], -1.0, 1.0));
        }
        let (x, y) = (&inputs[0].1, &inputs[stats].1);
        let dy: Vec<f64> = (0..n * c * s)
            .map(|i| {
                let g: f64 = inputs[stats + 1..].iter().map(|t| t.1[i]).sum();
                if y[i] > 0.0 { g } else { 0.0 }
            })
            .collect();
        let (mean, var) = (&inputs[stats - 2].1, &inputs[stats - 1].1);
        let istd = |ch: usize| 1.0 / (var[ch] + eps).sqrt();
        let (mut dw, mut db) = (vec![0.0; c], vec![0.0; c]);
        for (i, d) in dy.iter().enumerate() {
            let ch = (i / s) % c;
            db[ch] += d;
            dw[ch] += d * (x[i] - mean[ch]) * istd(ch);
        }
        let dx = (0..n * c * s)
            .map(|i| {
                let ch = (i / s) % c;
                let w = if affine { inputs[1].1[ch] } else { 1.0 };
                let centred = match training {
                    true => dy[i] - db[ch] / m - (x[i] - mean[ch]) * istd(ch) * dw[ch] / m,
                    false => dy[i],
                };
                w * istd(ch) * centred
            })
            .collect();
        out.push(ValueCase {
            op: OpKind::BatchNormReluGrad(BatchNormReluGrad {
                bn: BatchNormGrad {
                    eps,
                    affine,
                    training,
                },
                adds,
            }),
            inputs,
            ctx: StepCtx::default(),
            want: vec![dx, dw, db],
        });
    }
    out
}

/// torch.optim.SGD's update, element by element.
fn sgd_cases(rng: &mut ChaCha8Rng) -> Vec<ValueCase> {
    let shape = [5, 7];
    // (momentum, dampening, nesterov, weight decay, clip, step)
    let variants = [
        (0.0, 0.0, false, 0.0, false, 1),
        (0.9, 0.0, false, 0.0, false, 1),
        (0.9, 0.1, true, 0.01, true, 3),
    ];
    variants
        .into_iter()
        .map(
            |(momentum, dampening, nesterov, weight_decay, clip, step)| {
                let ctx = StepCtx {
                    lr: 0.05,
                    step,
                    seed: 0,
                };
                let mut inputs = vec![
                    uniform(rng, &shape, -1.0, 1.0),
                    uniform(rng, &shape, -1.0, 1.0),
                ];
                if momentum != 0.0 {
                    inputs.push(uniform(rng, &shape, -1.0, 1.0));
                }
                let coef = rng.random_range(0.05..1.0);
                if clip {
                    inputs.push(scalar(coef));
                }
                let (mut p_new, mut buf_new) = (Vec::new(), Vec::new());
                for i in 0..inputs[0].1.len() {
                    let (p, g) = (inputs[0].1[i], inputs[1].1[i]);
                    let g = if clip { g * coef } else { g } + weight_decay * p;
                    let direction = if momentum == 0.0 {
                        g
                    } else {
                        let buf = match step {
                            1 => g,
                            _ => momentum * inputs[2].1[i] + (1.0 - dampening) * g,
                        };
                        buf_new.push(buf);
                        if nesterov { g + momentum * buf } else { buf }
                    };
                    p_new.push(p - ctx.lr * direction);
                }
                let mut want = vec![p_new];
                if momentum != 0.0 {
                    want.push(buf_new);
                }
                ValueCase {
                    op: OpKind::SgdStep(SgdStep {
                        momentum,
                        dampening,
                        nesterov,
                        weight_decay,
                        clip,
                    }),
                    inputs,
                    ctx,
                    want,
                }
            },
        )
        .collect()
}

/// Adam (Kingma & Ba, with L2 decay added to the gradient) and AdamW (decay applied to the
/// weights), bias-corrected moments, element by element.
fn adam_cases(rng: &mut ChaCha8Rng) -> Vec<ValueCase> {
    let shape = [3, 11];
    // (beta1, beta2, weight decay, decoupled, clip, step)
    let variants = [
        (0.9, 0.999, 0.01, false, true, 2),
        (0.5, 0.9, 0.05, true, false, 5),
    ];
    variants
        .into_iter()
        .map(|(beta1, beta2, wd, decoupled, clip, step)| {
            let (lr, eps) = (0.01, 1e-8);
            let ctx = StepCtx { lr, step, seed: 0 };
            let mut inputs = vec![
                uniform(rng, &shape, -1.0, 1.0),
                uniform(rng, &shape, -1.0, 1.0),
                uniform(rng, &shape, -0.5, 0.5),
                // The second moment is never negative.
                uniform(rng, &shape, 0.0, 0.1),
            ];
            let coef = rng.random_range(0.05..1.0);
            if clip {
                inputs.push(scalar(coef));
            }
            let t = step as i32;
            let mut want = vec![Vec::new(), Vec::new(), Vec::new()];
            for i in 0..inputs[0].1.len() {
                let [p, g, m, v] = [0, 1, 2, 3].map(|k| inputs[k].1[i]);
                let mut g = if clip { g * coef } else { g };
                let mut p = p;
                if decoupled {
                    p *= 1.0 - lr * wd;
                } else {
                    g += wd * p;
                }
                let m = beta1 * m + (1.0 - beta1) * g;
                let v = beta2 * v + (1.0 - beta2) * g * g;
                let m_hat = m / (1.0 - beta1.powi(t));
                let v_hat = v / (1.0 - beta2.powi(t));
                want[0].push(p - lr * m_hat / (v_hat.sqrt() + eps));
                want[1].push(m);
                want[2].push(v);
            }
            ValueCase {
                op: OpKind::AdamStep(AdamStep {
                    beta1,
                    beta2,
                    eps,
                    weight_decay: wd,
                    decoupled,
                    clip,
                }),
                inputs,
                ctx,
                want,
            }
        })
        .collect()
}

fn count_up_cases(_: &mut ChaCha8Rng) -> Vec<ValueCase> {
    let counter = TensorType {
        shape: vec![],
        dtype: DType::I32,
    };
    [0.0, 41.0]
        .into_iter()
        .map(|n| ValueCase {
            op: OpKind::CountUp(CountUp),
            inputs: vec![(counter.clone(), vec![n])],
            ctx: StepCtx::default(),
            want: vec![vec![n + 1.0]],
        })
        .collect()
}

/// PyTorch's running statistics: an exponential average of the batch mean and of the
/// unbiased batch variance.
fn running_stats_cases(rng: &mut ChaCha8Rng) -> Vec<ValueCase> {
    let (momentum, count, c) = (0.25, 70, 5);
    let inputs = vec![
        uniform(rng, &[c], -1.0, 1.0),
        uniform(rng, &[c], 0.5, 2.0),
        uniform(rng, &[c], -1.0, 1.0),
        uniform(rng, &[c], 0.0, 2.0),
    ];
    let [rm, rv, mean, var] = [0, 1, 2, 3].map(|k| &inputs[k].1);
    let unbiased = |i: usize| var[i] * count as f64 / (count - 1) as f64;
    let want = vec![
        (0..c)
            .map(|i| (1.0 - momentum) * rm[i] + momentum * mean[i])
            .collect(),
        (0..c)
            .map(|i| (1.0 - momentum) * rv[i] + momentum * unbiased(i))
            .collect(),
    ];
    vec![ValueCase {
        op: OpKind::BatchNormRunningStats(BatchNormRunningStats { momentum, count }),
        inputs,
        ctx: StepCtx::default(),
        want,
    }]
}

/// Position ids i32 [B, 1].
fn positions(ids: &[usize]) -> (TensorType, Vec<f64>) {
    let ty = TensorType {
        shape: vec![ids.len(), 1],
        dtype: DType::I32,
    };
    (ty, ids.iter().map(|&i| i as f64).collect())
}

/// Attention of one new position per row over key/value caches [B, heads, P, D]: row b's keys
/// are the caches' rows before pos[b] and its own k from qkv; y = softmax(q·kⱼ·scale)·v,
/// lse = log Σ exp(q·kⱼ·scale); a position past the caches gives NaN.
fn attention_decode_cases(rng: &mut ChaCha8Rng) -> Vec<ValueCase> {
    let mut out = Vec::new();
    for (heads, d, p, pos, scale) in [
        (2, 3, 5, vec![0, 3], 0.6),
        (1, 5, 4, vec![3], 0.45),
        (1, 2, 3, vec![1, 3], 1.0),
    ] {
        let b = pos.len();
        let c = heads * d;
        let qkv = uniform(rng, &[b, 1, 3 * c], -1.5, 1.5);
        let kc = uniform(rng, &[b, heads, p, d], -1.5, 1.5);
        let vc = uniform(rng, &[b, heads, p, d], -1.5, 1.5);
        let (mut y, mut lse) = (vec![f64::NAN; b * c], vec![f64::NAN; b * heads]);
        for r in 0..b {
            let n = pos[r];
            if n >= p {
                continue;
            }
            for h in 0..heads {
                let x = |which: usize, e: usize| qkv.1[r * 3 * c + which * c + h * d + e];
                let at = |j: usize, e: usize| ((r * heads + h) * p + j) * d + e;
                let k = |j: usize, e: usize| if j == n { x(1, e) } else { kc.1[at(j, e)] };
                let v = |j: usize, e: usize| if j == n { x(2, e) } else { vc.1[at(j, e)] };
                let s: Vec<f64> = (0..=n)
                    .map(|j| scale * (0..d).map(|e| x(0, e) * k(j, e)).sum::<f64>())
                    .collect();
                let total: f64 = s.iter().map(|s| s.exp()).sum();
                lse[r * heads + h] = total.ln();
                for e in 0..d {
                    y[r * c + h * d + e] = (0..=n).map(|j| s[j].exp() / total * v(j, e)).sum();
                }
            }
        }
        out.push(ValueCase {
            op: OpKind::AttentionDecode(AttentionDecode { heads, scale }),
            inputs: vec![qkv, kc, vc, positions(&pos)],
            ctx: StepCtx::default(),
            want: vec![y, lse],
        });
    }
    out
}

/// The new position's k and v into row pos[b] of each head's cache; nothing else is written
/// (NaN: the outputs' poison stays), nothing at all for a position past the caches.
fn cache_write_cases(rng: &mut ChaCha8Rng) -> Vec<ValueCase> {
    let (heads, d, p) = (2, 3, 4);
    let pos = [2, 0, 4];
    let (b, c) = (pos.len(), heads * d);
    let qkv = uniform(rng, &[b, 1, 3 * c], -1.0, 1.0);
    let (mut k, mut v) = (
        vec![f64::NAN; b * heads * p * d],
        vec![f64::NAN; b * heads * p * d],
    );
    for (r, &n) in pos.iter().enumerate() {
        if n >= p {
            continue;
        }
        for h in 0..heads {
            for e in 0..d {
                let at = ((r * heads + h) * p + n) * d + e;
                k[at] = qkv.1[r * 3 * c + c + h * d + e];
                v[at] = qkv.1[r * 3 * c + 2 * c + h * d + e];
            }
        }
    }
    vec![ValueCase {
        op: OpKind::CacheWrite(CacheWrite {
            heads,
            positions: p,
        }),
        inputs: vec![qkv, positions(&pos)],
        ctx: StepCtx::default(),
        want: vec![k, v],
    }]
}

/// Runs a value case on the CPU in f64 against its formula.
fn check_value(c: &ValueCase) -> Result<(), String> {
    let ins: Vec<(&TensorType, &[f64])> = c.inputs.iter().map(|(t, v)| (t, &v[..])).collect();
    let got = eval_once(&c.op, &ins, c.ctx)?;
    if got.len() != c.want.len() {
        return Err(format!("{} outputs, want {}", got.len(), c.want.len()));
    }
    for (k, (got, want)) in got.iter().zip(&c.want).enumerate() {
        if got.len() != want.len() {
            return Err(format!(
                "output {k}: {} elements, want {}",
                got.len(),
                want.len()
            ));
        }
        for (i, (a, b)) in got.iter().zip(want).enumerate() {
            // Written so that a NaN is not close, unless the formula says NaN (an element
            // the op must leave unwritten, or a position past a cache).
            let close = (a - b).abs() <= 1e-12 * (1.0 + b.abs()) || (a.is_nan() && b.is_nan());
            if !close {
                return Err(format!("output {k}[{i}]: {a}, the formula gives {b}"));
            }
        }
    }
    Ok(())
}

/// Leaves: a graph of a parameter and an i32 input reads back exactly what was fed.
fn check_fed() -> Result<(), String> {
    let mut g = Graph::scratch("leaves");
    let param = g
        .add_param(
            "w".into(),
            TensorType::f32(vec![3, 5]),
            Init::Zeros,
            true,
            0,
            true,
        )?
        .ok_or("a read parameter has a node")?;
    let ids_ty = TensorType {
        shape: vec![4],
        dtype: DType::I32,
    };
    let input = Input {
        name: "ids".into(),
        ty: ids_ty,
    };
    let node = g.add_node(OpKind::Input(input), &[], 0, Phase::Forward)?;
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let mut feeds = Feeds::<f64>::default();
    feeds.params.push(uniform(&mut rng, &[3, 5], -1.0, 1.0).1);
    feeds.inputs.insert("ids".into(), vec![3.0, 0.0, 7.0, 1.0]);
    let values = interpret(&g, &feeds, StepCtx::default())?;
    if values.get(param) != feeds.params[0]
        || values.get(TensorId::of(node, 0)) != feeds.inputs["ids"]
    {
        return Err("a leaf did not read back what was fed".into());
    }
    Ok(())
}

/// Every name in the tables is a variant (a renamed op must be renamed here too).
fn assert_tables_name_variants() {
    let known: BTreeSet<&str> = OpKind::VARIANTS.iter().copied().collect();
    let listed = THROUGH_PARENT
        .iter()
        .flat_map(|&(v, p)| [v, p])
        .chain(NO_VJP.iter().map(|(v, ..)| *v))
        .chain(NO_KERNEL.iter().copied());
    for name in listed {
        assert!(
            known.contains(name),
            "tests/op_coverage.rs lists `{name}`, which is not an OpKind variant"
        );
    }
}

#[test]
fn every_op_has_a_gradient_check() {
    assert_tables_name_variants();
    let mut problems = Vec::new();
    // Forward variants whose cases all passed, and for each op a vjp built, the forward
    // variants whose passing checks evaluated it.
    let mut checked: BTreeMap<&str, bool> = BTreeMap::new();
    let mut built_by: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for c in gradient_cases() {
        let variant = c.op.variant();
        let passed = match check_op(c.op.clone(), &c.args, &c.outputs, case_seed(&c)) {
            Ok(r) if r.worst < GRADIENT_TOLERANCE && r.checked > 0 => {
                for op in &r.ops[1..] {
                    built_by.entry(op.variant()).or_default().insert(variant);
                }
                true
            }
            Ok(r) => {
                problems.push(format!(
                    "{:?}: gradient off by {:e} at {} ({} elements checked)",
                    c.op, r.worst, r.what, r.checked
                ));
                false
            }
            Err(e) => {
                problems.push(format!("{:?}: the gradient check failed: {e}", c.op));
                false
            }
        };
        *checked.entry(variant).or_insert(true) &= passed;
    }
    for (variant, _, check) in NO_VJP {
        let result = match check {
            ValueCheck::Fed => check_fed(),
            ValueCheck::Formula(cases) => {
                let mut rng = ChaCha8Rng::seed_from_u64(VALUE_SEED);
                let cases = cases(&mut rng);
                cases.iter().try_for_each(|c| {
                    if c.op.variant() != *variant {
                        return Err(format!("a case of `{}` is not one", c.op.variant()));
                    }
                    check_value(c).map_err(|e| format!("{:?} at {:?}: {e}", c.op, c.ctx))
                })
            }
        };
        if let Err(e) = result {
            problems.push(format!("`{variant}` (no vjp): value check failed: {e}"));
        }
    }
    for &variant in OpKind::VARIANTS {
        if checked.contains_key(variant) {
            continue; // gradient-checked above, which reported any failure
        }
        if let Some(&(_, parent)) = THROUGH_PARENT.iter().find(|(v, _)| *v == variant) {
            let built = built_by.get(variant).is_some_and(|p| p.contains(parent));
            if !built && checked.get(parent) != Some(&false) {
                problems.push(format!(
                    "`{variant}` is listed in THROUGH_PARENT as built by `{parent}`'s vjp, but \
                     no passing gradient check of a `{parent}` case evaluated it: add a case \
                     to gradient_cases() whose vjp builds it"
                ));
            }
        } else if !NO_VJP.iter().any(|(v, ..)| *v == variant) {
            problems.push(format!(
                "`{variant}` has no gradient check. In tests/op_coverage.rs, add a case of it \
                 to gradient_cases() (an op with a vjp), or a row (\"{variant}\", parent) to \
                 THROUGH_PARENT (a gradient op another op's vjp builds), or a row to NO_VJP \
                 with the reason and a value check (an op with no vjp by design)"
            ));
        }
        // A NO_VJP row's value check ran above and reported any failure.
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

/// The largest norm-wise relative error of `op`'s outputs, GPU against CPU, on these inputs.
fn gpu_error(
    gpu: &Gpu,
    op: &OpKind,
    inputs: &[(TensorType, Vec<f64>)],
    ctx: StepCtx,
) -> Result<f64, String> {
    let ins: Vec<(TensorType, Vec<f32>)> = inputs
        .iter()
        .map(|(t, v)| (t.clone(), v.iter().map(|&x| x as f32).collect()))
        .collect();
    let errs = compare_with_cpu(gpu, op, &ins, ctx)?;
    Ok(errs.into_iter().fold(0.0, f64::max))
}

#[test]
fn every_op_with_a_kernel_matches_the_cpu_on_the_gpu() {
    assert_tables_name_variants();
    if test_gpu().is_none() {
        return;
    }
    // (op, inputs, step, what it came from)
    let mut runs = Vec::new();
    let mut problems = Vec::new();
    for c in gradient_cases() {
        match evaluated_ops(c.op.clone(), &c.args, &c.outputs, case_seed(&c)) {
            Ok(ops) => runs.extend(ops.into_iter().map(|e| {
                let from = format!("the gradient case of {:?}", c.op);
                (e.op, e.inputs, StepCtx::default(), from)
            })),
            Err(e) => problems.push(format!("{:?}: building its gradient failed: {e}", c.op)),
        }
    }
    for (variant, _, check) in NO_VJP {
        if let ValueCheck::Formula(cases) = check {
            let mut rng = ChaCha8Rng::seed_from_u64(VALUE_SEED);
            for c in cases(&mut rng) {
                runs.push((
                    c.op,
                    c.inputs,
                    c.ctx,
                    format!("the value cases of {variant}"),
                ));
            }
        }
    }
    // Variants that ran and matched, and those that ran and did not (already reported).
    let (mut compared, mut failed) = (BTreeSet::new(), BTreeSet::new());
    // Each reduction variant where the adapter has two (subgroups, and the portable tree).
    for gpu in test_gpus() {
        let device = if gpu.subgroups.is_some() {
            "subgroup reductions"
        } else {
            "portable reductions"
        };
        for (op, inputs, ctx, from) in &runs {
            let problem = match gpu_error(gpu, op, inputs, *ctx) {
                Ok(e) if e < GPU_TOLERANCE => {
                    compared.insert(op.variant());
                    continue;
                }
                Ok(e) => format!(
                    "{op:?} (from {from}, {device}): GPU vs CPU relative error {e:e} at {ctx:?}"
                ),
                Err(e) => format!("{op:?} (from {from}, {device}): {e}"),
            };
            problems.push(problem);
            failed.insert(op.variant());
        }
    }
    for &variant in OpKind::VARIANTS {
        if NO_KERNEL.contains(&variant) || compared.contains(variant) {
            continue;
        }
        if !failed.contains(variant) {
            problems.push(format!(
                "`{variant}` never ran on the GPU. In tests/op_coverage.rs, add a case that \
                 evaluates it: to gradient_cases() (it, or the op whose vjp builds it), or to \
                 its NO_VJP value cases; only leaves with no kernel belong in NO_KERNEL"
            ));
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}
