//! Normalisations. Batchnorm normalises over every axis but the channel axis 1 (so it covers
//! both [N, C] and [N, C, H, W]); layernorm over the trailing `dims` axes, and rmsnorm is
//! layernorm without centring (`LayerNorm::centered` false). Statistics are summed
//! in f64 in a fixed order (per channel or per row), so results do not depend on threads.

use rayon::prelude::*;
use serde::Serialize;

use super::reduce::{partial_pair, split_reduction};
use super::{
    Eval, OpKind, Primitive, ShapeResult, UnaryFn, VjpArgs, VjpCx, VjpResult, expect_arity,
    expect_f32,
};
use crate::kernel::cpu::{Io, Real, f64_scratch_len};
use crate::kernel::gpu::{Bind, Params, WORKGROUP, grid, groups};
use crate::kernel::gpu::{Dispatch, KernelArgs};
use crate::kernel::gpu::{Shader, multi, section};
use crate::tensor::{TensorType, fmt_shape};

const KERNELS: &str = include_str!("../../kernels/norm.wgsl");
const LAYERNORM: &str = include_str!("../../kernels/layernorm.wgsl");

fn dispatch(entry: &'static str, bindings: Vec<Bind>, params: Params, wg: [u32; 3]) -> Dispatch {
    Dispatch {
        shader: section(KERNELS, entry),
        bindings,
        params: params.done(),
        workgroups: wg,
    }
}

/// PyTorch's `F.batch_norm` (BatchNorm1d/2d). Inputs: x, weight, bias, running_mean,
/// running_var (weight and bias absent without affine). Outputs: y, the batch mean [C] and the
/// batch biased variance [C]. In eval mode (`training` false) y uses the running statistics and
/// the mean/var outputs are copies of them. The running statistics are updated by a separate
/// [`BatchNormRunningStats`] fed the mean/var outputs.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BatchNorm {
    pub eps: f64,
    pub momentum: f64,
    pub affine: bool,
    pub training: bool,
}

/// (N, C, S): batch, channels and elements per sample and channel of a batchnorm input.
fn bn_layout(shape: &[usize]) -> (usize, usize, usize) {
    (shape[0], shape[1], shape[2..].iter().product())
}

/// Independent accumulators of the block sums below: enough for the compiler to keep a few
/// SIMD registers of partial sums (and no result depends on the machine).
const LANES: usize = 16;

/// Σ f(xs at i) over blocks `xs` of equal length, in `LANES` running sums of `T` (element i in
/// lane i mod LANES, in order), added up in f64. A fixed order: the same bits on every machine.
/// Whole runs of `LANES` go through fixed-size arrays, so the loop is bounds-check free and
/// vectorises.
#[inline(always)]
fn lanes_sum<T: Real, const K: usize>(xs: [&[T]; K], f: impl Fn([T; K]) -> T) -> f64 {
    lanes_sums(xs, |v| [f(v)])[0]
}

/// `M` sums of `lanes_sum` in one pass over the blocks (each the bits `lanes_sum` gives).
#[inline(always)]
fn lanes_sums<T: Real, const K: usize, const M: usize>(
    xs: [&[T]; K],
    f: impl Fn([T; K]) -> [T; M],
) -> [f64; M] {
    let len = xs[0].len();
    assert!(xs.iter().all(|x| x.len() == len), "blocks of one length");
    let whole = len - len % LANES;
    let mut acc = [[T::ZERO; LANES]; M];
    for base in (0..whole).step_by(LANES) {
        let run: [&[T; LANES]; K] =
            std::array::from_fn(|k| xs[k][base..base + LANES].try_into().expect("LANES long"));
        for l in 0..LANES {
            let terms = f(std::array::from_fn(|k| run[k][l]));
            for (a, t) in acc.iter_mut().zip(terms) {
                a[l] += t;
            }
        }
    }
    // The lanes pairwise in f64: a few vector adds, where a chain of 16 would dominate short
    // blocks. Exact, as the chain was, unless the lanes' magnitudes span more than 2^29.
    let mut sums = acc.map(|acc| {
        let mut wide = acc.map(T::to_f64);
        let mut half = LANES / 2;
        while half > 0 {
            for l in 0..half {
                wide[l] += wide[l + half];
            }
            half /= 2;
        }
        wide[0]
    });
    #[allow(clippy::needless_range_loop, reason = "i indexes every block")]
    for i in whole..len {
        let terms = f(std::array::from_fn(|k| xs[k][i]));
        for (sum, t) in sums.iter_mut().zip(terms) {
            *sum += t.to_f64();
        }
    }
    sums
}

/// `out[i] = f(xs at i)` over blocks of `out`'s length, `LANES` at a time through fixed-size
/// arrays (bounds-check free, so the loop vectorises), then the rest.
#[inline(always)]
fn lanes_map<T: Real, const K: usize>(out: &mut [T], xs: [&[T]; K], f: impl Fn([T; K]) -> T) {
    let len = out.len();
    assert!(xs.iter().all(|x| x.len() == len), "blocks of one length");
    let whole = len - len % LANES;
    for base in (0..whole).step_by(LANES) {
        let run: [&[T; LANES]; K] =
            std::array::from_fn(|k| xs[k][base..base + LANES].try_into().expect("LANES long"));
        let out: &mut [T; LANES] = (&mut out[base..base + LANES])
            .try_into()
            .expect("LANES long");
        for (l, o) in out.iter_mut().enumerate() {
            *o = f(std::array::from_fn(|k| run[k][l]));
        }
    }
    for (i, o) in out.iter_mut().enumerate().skip(whole) {
        *o = f(std::array::from_fn(|k| xs[k][i]));
    }
}

/// The mean of one (image, channel) block of S values and its sum of squared deviations (two
/// passes over the block, which stays in cache; sums in `lanes_sum`).
fn block_moments<T: Real>(block: &[T]) -> (f64, f64) {
    let k = block.len() as f64;
    let mb = lanes_sum([block], |[x]| x) / k;
    let centre = T::of(mb);
    // Σ (x − centre)² = Σ (x − mb)² + s·(mb − centre)², centre being mb rounded to T.
    let shift = mb - centre.to_f64();
    let m2b = lanes_sum([block], |[x]| (x - centre) * (x - centre)) - k * shift * shift;
    (mb, m2b)
}

/// Mean and biased variance of a channel from its blocks' `block_moments`, merged in image
/// order in f64 (Chan et al.'s pairwise update), so the statistics are exact to a few f32
/// roundings per block and do not depend on threads.
fn merge_moments(blocks: impl Iterator<Item = (f64, f64)>, s: usize) -> (f64, f64) {
    let (mut count, mut mean, mut m2) = (0.0f64, 0.0f64, 0.0f64);
    let k = s as f64;
    for (mb, m2b) in blocks {
        let total = count + k;
        let delta = mb - mean;
        mean += delta * k / total;
        m2 += m2b + delta * delta * count * k / total;
        count = total;
    }
    (mean, m2.max(0.0) / count)
}

/// `f(block, channel)` into the two slots of `partial` of each (image, channel) block of a
/// [N, C, S] layout: blocks in parallel, so that the tasks sweep memory contiguously.
fn for_blocks(
    partial: &mut [f64],
    (_, c, s): (usize, usize, usize),
    f: impl Fn(usize, usize) -> (f64, f64) + Sync,
) {
    partial
        .par_chunks_exact_mut(2)
        .enumerate()
        .with_min_len(blocks_per_task(s))
        .for_each(|(block, p)| (p[0], p[1]) = f(block, block % c));
}

/// Blocks of S elements a parallel task takes at least: enough for the work to outweigh the
/// task's scheduling.
fn blocks_per_task(s: usize) -> usize {
    (1 << 12) / s.max(1) + 1
}

impl Primitive for BatchNorm {
    fn name(&self) -> &'static str {
        "batchnorm"
    }
    fn infer(&self, inputs: &[&TensorType]) -> ShapeResult {
        let expected = if self.affine { 5 } else { 3 };
        if inputs.len() != expected {
            return Err(format!("takes {expected} inputs, got {}", inputs.len()));
        }
        let x = inputs[0];
        expect_f32(x, "the input")?;
        if x.rank() < 2 {
            return Err(format!(
                "expects [N, C] or [N, C, ...], got {}",
                fmt_shape(&x.shape)
            ));
        }
        let c = x.shape[1];
        if let Some(bad) = inputs[1..].iter().find(|t| t.shape != [c]) {
            return Err(format!(
                "statistics {} do not match {c} channels",
                fmt_shape(&bad.shape)
            ));
        }
        // PyTorch refuses this too: the unbiased running variance would divide by zero.
        if self.training && x.numel() <= c {
            return Err(format!(
                "needs more than one value per channel when training, got {}",
                fmt_shape(&x.shape)
            ));
        }
        let stats = TensorType::f32(vec![c]);
        Ok(vec![x.clone(), stats.clone(), stats])
    }
    fn flops(&self, inputs: &[&TensorType], _: &[TensorType]) -> u64 {
        // mean, variance, normalise, scale and shift: about 5 per element.
        5 * inputs[0].numel() as u64
    }
    fn attrs(&self) -> Vec<(&'static str, String)> {
        vec![
            ("eps", self.eps.to_string()),
            ("momentum", self.momentum.to_string()),
            ("training", self.training.to_string()),
        ]
    }
    /// The batch statistics outputs only feed the running statistics, so they carry no
    /// gradient; in eval mode the running statistics are constants (buffers are never trained).
    fn vjp(&self, cx: &mut VjpCx, a: &VjpArgs) -> VjpResult {
        if a.grads[1..].iter().any(Option::is_some) {
            return Err("the batch mean and variance of batchnorm have no gradient".into());
        }
        let stats = if self.affine { 3 } else { 1 };
        if !self.training && (a.wants(stats) || a.wants(stats + 1)) {
            return Err("running statistics are buffers and have no gradient".into());
        }
        let mut grads = vec![None; a.inputs.len()];
        if !(0..stats).any(|i| a.wants(i)) {
            return Ok(grads);
        }
        let mut ins = vec![a.inputs[0]];
        if self.affine {
            ins.push(a.inputs[1]);
        }
        // In eval mode outputs 1 and 2 are the running statistics, which y used.
        ins.extend([a.outputs[1], a.outputs[2], a.dy()?]);
        let op = BatchNormGrad {
            eps: self.eps,
            affine: self.affine,
            training: self.training,
        };
        let g = cx.op_all(OpKind::BatchNormGrad(op), &ins)?;
        for (i, slot) in grads.iter_mut().enumerate().take(stats) {
            if a.wants(i) {
                *slot = Some(g[i]);
            }
        }
        Ok(grads)
    }
    /// Statistics (blocks of each channel, then their merge: `BnSplit`; or copies of the
    /// running ones in eval mode), then y from them, a thread per element.
    fn gpu(&self, args: &KernelArgs) -> Result<Vec<Dispatch>, String> {
        self.kernels(args, false, false)
    }
    fn with_epilogue(&self, f: UnaryFn) -> Option<OpKind> {
        (f == UnaryFn::Relu).then(|| {
            OpKind::BatchNormRelu(BatchNormRelu {
                bn: self.clone(),
                residual: false,
            })
        })
    }
}

impl BatchNorm {
    /// `Primitive::gpu`, with relu applied to y where `relu`, after adding the last input where
    /// `residual` (`BatchNormRelu`).
    fn kernels(
        &self,
        args: &KernelArgs,
        relu: bool,
        residual: bool,
    ) -> Result<Vec<Dispatch>, String> {
        let (n, c, s) = bn_layout(&args.inputs[0].shape);
        let k = args.inputs.len() - residual as usize;
        let (rm, rv) = (Bind::In(k - 2), Bind::In(k - 1));
        let mut out = Vec::new();
        if self.training {
            let split = BnSplit::new(n, c, s);
            let [a, b] = split.targets([Bind::Out(1), Bind::Out(2)]);
            out.push(dispatch(
                "bn_stats",
                vec![Bind::In(0), a, b],
                split.params(0.0),
                split.groups(),
            ));
            if split.blocks > 1 {
                out.push(dispatch(
                    "bn_stats_merge",
                    vec![a, b, Bind::Out(1), Bind::Out(2)],
                    split.params(0.0),
                    groups(c),
                ));
            }
        } else {
            out.push(dispatch(
                "bn_copy_stats",
                vec![rm, rv, Bind::Out(1), Bind::Out(2)],
                Params::new().u32(c).u32(0).u32(0).u32(0),
                grid(c),
            ));
        }
        // Without affine, x stands in for weight and bias (never read).
        let (w, b) = match self.affine {
            true => (Bind::In(1), Bind::In(2)),
            false => (Bind::In(0), Bind::In(0)),
        };
        let total = args.numel_in(0);
        // Without a residual, x stands in for it (never read).
        let r = Bind::In(if residual { k } else { 0 });
        let mut apply = dispatch(
            "bn_apply",
            vec![
                Bind::In(0),
                w,
                b,
                Bind::Out(1),
                Bind::Out(2),
                Bind::Out(0),
                r,
            ],
            Params::new()
                .u32(total)
                .u32(c)
                .u32(s)
                .u32(self.affine as usize)
                .f32(self.eps)
                .u32(relu as usize)
                .u32(residual as usize)
                .u32(0),
            grid(total),
        );
        // The elementwise table's relu, as the relu launch it replaces computes it.
        let source = apply
            .shader
            .source
            .replace("RELU_OF_A", UnaryFn::Relu.wgsl());
        apply.shader.source = source.into();
        out.push(apply);
        Ok(out)
    }
}

/// Batchnorm followed by relu in one launch, made by the fusion pass (schedule/fuse.rs) where
/// nothing else reads the batchnorm's output: the same outputs as `BatchNorm` with relu
/// applied to y, by the same code (the same bits as the two or three launches). With
/// `residual`, a last input is added to y before the relu (a residual block's end). It has no
/// gradient: fusion runs after autodiff.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BatchNormRelu {
    pub bn: BatchNorm,
    pub residual: bool,
}

impl Primitive for BatchNormRelu {
    fn name(&self) -> &'static str {
        if self.residual {
            "batchnorm_add_relu"
        } else {
            "batchnorm_relu"
        }
    }
    fn infer(&self, inputs: &[&TensorType]) -> ShapeResult {
        let Some((&r, bn)) = inputs.split_last().filter(|_| self.residual) else {
            return self.bn.infer(inputs);
        };
        if r != inputs[0] {
            return Err(format!(
                "the residual {} differs from x {}",
                fmt_shape(&r.shape),
                fmt_shape(&inputs[0].shape)
            ));
        }
        self.bn.infer(bn)
    }
    fn flops(&self, inputs: &[&TensorType], outputs: &[TensorType]) -> u64 {
        let bn = &inputs[..inputs.len() - self.residual as usize];
        self.bn.flops(bn, outputs) + (1 + self.residual as u64) * inputs[0].numel() as u64
    }
    fn attrs(&self) -> Vec<(&'static str, String)> {
        self.bn.attrs()
    }
    fn gpu(&self, args: &KernelArgs) -> Result<Vec<Dispatch>, String> {
        self.bn.kernels(args, true, self.residual)
    }
}

impl Eval for BatchNormRelu {
    fn eval<T: Real>(&self, io: &mut Io<'_, T>) {
        self.bn.apply(io, true, self.residual);
    }
    fn scratch(&self, inputs: &[&TensorType], outputs: &[TensorType], threads: usize) -> usize {
        self.bn.scratch(inputs, outputs, threads)
    }
}

/// How the GPU cuts each channel's N·S values of a batchnorm into blocks (reduce.rs
/// `split_reduction`, in rounds of one value per thread), and the `Params` its passes share.
struct BnSplit {
    n: usize,
    c: usize,
    s: usize,
    blocks: usize,
    /// Values per block (the last may have fewer).
    chunk: usize,
}

impl BnSplit {
    fn new(n: usize, c: usize, s: usize) -> BnSplit {
        let rounds = (n * s).div_ceil(WORKGROUP as usize);
        let (blocks, per_block) = split_reduction(c, rounds);
        BnSplit {
            n,
            c,
            s,
            blocks,
            chunk: per_block * WORKGROUP as usize,
        }
    }
    /// Where the first pass writes its two values per block: workspace when a second pass
    /// merges them, else the two outputs themselves.
    fn targets(&self, outputs: [Bind; 2]) -> [Bind; 2] {
        match self.blocks {
            1 => outputs,
            b => partial_pair(self.c * b),
        }
    }
    /// The first pass's workgroups: one per block of each channel.
    fn groups(&self) -> [u32; 3] {
        groups(self.c * self.blocks)
    }
    /// norm.wgsl's `Params` of both passes (eps unused by the statistics).
    fn params(&self, eps: f64) -> Params {
        Params::new()
            .u32(self.c)
            .u32(self.n)
            .u32(self.s)
            .u32(self.blocks)
            .u32(self.chunk)
            .f32(eps)
            .u32(0)
            .u32(0)
    }
}

impl Eval for BatchNorm {
    fn eval<T: Real>(&self, io: &mut Io<'_, T>) {
        self.apply(io, false, false);
    }
    fn scratch(&self, inputs: &[&TensorType], _: &[TensorType], _: usize) -> usize {
        let (n, c, _) = bn_layout(&inputs[0].shape);
        f64_scratch_len(bn_scratch(n, c, 3))
    }
}

impl BatchNorm {
    /// `Eval::eval`, with relu applied to y where `relu`, after adding the last input where
    /// `residual` (`BatchNormRelu`).
    fn apply<T: Real>(&self, io: &mut Io<'_, T>, relu: bool, residual: bool) {
        let layout = bn_layout(io.in_shape(0));
        let (n, c, s) = layout;
        let (eps, training) = (T::of(self.eps), self.training);
        let (ins, mut outs, scratch) = io.split_scratch_f64::<3>(bn_scratch(n, c, 3));
        let (partial, coefs) = scratch.split_at_mut(2 * n * c);
        let x = ins.get(0);
        let affine = self.affine.then(|| (ins.get(1), ins.get(2)));
        let k = ins.len() - residual as usize;
        let (rm, rv) = (ins.get(k - 2), ins.get(k - 1));
        let r = residual.then(|| ins.get(k));
        let [y, mean, var] = outs.as_mut_slice() else {
            unreachable!("batchnorm has three outputs")
        };
        if !training {
            mean.copy_from_slice(rm);
            var.copy_from_slice(rv);
        } else {
            for_blocks(partial, layout, |block, _| {
                block_moments(&x[block * s..][..s])
            });
            let partial = &*partial;
            mean.par_iter_mut()
                .zip(var.par_iter_mut())
                .enumerate()
                .for_each(|(ch, (m, v))| {
                    let blocks = partial.chunks_exact(2).skip(ch).step_by(c);
                    let blocks = blocks.map(|p| (p[0], p[1]));
                    let (mu, sigma2) = merge_moments(blocks, s);
                    (*m, *v) = (T::of(mu), T::of(sigma2));
                });
        }
        // y = (x − mean)·scale + bias: each channel's coefficients (in T) once, not per block.
        for (ch, k) in coefs.chunks_exact_mut(3).enumerate() {
            let (w, b) = affine.map_or((T::ONE, T::ZERO), |(w, b)| (w[ch], b[ch]));
            let scale = w / (var[ch] + eps).sqrt();
            k.copy_from_slice(&[mean[ch], scale, b].map(T::to_f64));
        }
        let coefs = &*coefs;
        if s == 0 {
            return;
        }
        y.par_chunks_exact_mut(s)
            .zip(x.par_chunks_exact(s))
            .enumerate()
            .with_min_len(blocks_per_task(s))
            .for_each(|(block, (y, x))| {
                let [mu, scale, b] = channel_coefs(coefs, block % c);
                if let Some(r) = r {
                    // The add and the table's relu, as the launches they replace.
                    for ((y, &x), &r) in y.iter_mut().zip(x).zip(&r[block * s..][..s]) {
                        *y = UnaryFn::Relu.apply((x - mu) * scale + b + r);
                    }
                } else if relu {
                    // The elementwise table's relu, as the relu launch it replaces.
                    for (y, &x) in y.iter_mut().zip(x) {
                        *y = UnaryFn::Relu.apply((x - mu) * scale + b);
                    }
                } else {
                    for (y, &x) in y.iter_mut().zip(x) {
                        *y = (x - mu) * scale + b;
                    }
                }
            });
    }
}

/// F64s of scratch a batchnorm over N·C blocks takes: two partial sums per block, and `per`
/// coefficients per channel.
fn bn_scratch(n: usize, c: usize, per: usize) -> usize {
    2 * n * c + per * c
}

/// Channel `ch`'s `K` coefficients, kept in f64 scratch but computed in (so exact in) T.
fn channel_coefs<T: Real, const K: usize>(coefs: &[f64], ch: usize) -> [T; K] {
    let k = &coefs[K * ch..][..K];
    std::array::from_fn(|i| T::of(k[i]))
}

/// The gradient of [`BatchNorm`] (PyTorch's native_batch_norm_backward). Inputs: x, weight
/// (when affine), mean, var (the statistics y used: the batch's when training, the running ones
/// in eval mode), dy. Outputs: dx, dweight = Σ dy·x̂, dbias = Σ dy (per channel). The two sums
/// are outputs even without affine, because dx needs them when training.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BatchNormGrad {
    pub eps: f64,
    pub affine: bool,
    pub training: bool,
}

impl Primitive for BatchNormGrad {
    fn name(&self) -> &'static str {
        "batchnorm_grad"
    }
    fn infer(&self, inputs: &[&TensorType]) -> ShapeResult {
        expect_arity(inputs, if self.affine { 5 } else { 4 })?;
        let (x, dy) = (inputs[0], inputs[inputs.len() - 1]);
        if x != dy || x.rank() < 2 {
            return Err(format!(
                "x {} and dy {} differ or are not [N, C, ...]",
                fmt_shape(&x.shape),
                fmt_shape(&dy.shape)
            ));
        }
        let c = x.shape[1];
        if let Some(bad) = inputs[1..inputs.len() - 1].iter().find(|t| t.shape != [c]) {
            return Err(format!(
                "statistics {} do not match {c} channels",
                fmt_shape(&bad.shape)
            ));
        }
        let stats = TensorType::f32(vec![c]);
        Ok(vec![x.clone(), stats.clone(), stats])
    }
    fn flops(&self, inputs: &[&TensorType], _: &[TensorType]) -> u64 {
        8 * inputs[0].numel() as u64
    }
    fn attrs(&self) -> Vec<(&'static str, String)> {
        vec![
            ("eps", self.eps.to_string()),
            ("training", self.training.to_string()),
        ]
    }
    /// dweight and dbias (blocks of each channel, then their sums: `BnSplit`), then dx a
    /// thread per element from them.
    fn gpu(&self, args: &KernelArgs) -> Result<Vec<Dispatch>, String> {
        self.kernels(args, DyFrom::Input)
    }
}

/// Where a batchnorm gradient's dy comes from: its last input, or (`BatchNormReluGrad`) relu's
/// gradient made on the fly from relu's output y and the gradient of y, or the sum of two
/// gradients of y. Every read of dy, CPU or GPU, goes through it.
#[derive(Clone, Copy, Debug, PartialEq)]
enum DyFrom {
    Input,
    Relu { adds: bool },
}

impl DyFrom {
    /// The inputs dy is made from, after the statistics: dy; or y, g (and g2).
    fn sources(self) -> usize {
        match self {
            DyFrom::Input => 1,
            DyFrom::Relu { adds } => 2 + adds as usize,
        }
    }
    /// norm.wgsl's `dy_at` body and the bindings it reads beyond the kernel's own, which end
    /// at binding `next - 1` and include `dy` (the first source after y).
    fn wgsl(self, next: usize) -> (String, String) {
        let DyFrom::Relu { adds } = self else {
            return ("return dy[i];".into(), String::new());
        };
        let decl = |k: usize, name: &str| {
            format!("@group(0) @binding({k}) var<storage, read_write> {name}: array<f32>;\n")
        };
        let mut bindings = decl(next, "relu_y");
        // The add and unary_grad launches it replaces: b = a + b of the two gradients (in
        // their order), then the elementwise table's relu derivative of y times b.
        let b = if adds {
            bindings += &decl(next + 1, "dy2");
            "dy[i] + dy2[i]"
        } else {
            "dy[i]"
        };
        // `stored`: rounded as the unfused relu gradient's launch stores it.
        let body = format!(
            "let a = relu_y[i];\n    let b = {b};\n    return stored(({}) * b);",
            UnaryFn::Relu.wgsl_derivative(true)
        );
        (body, bindings)
    }
}

/// `dispatch` of a kernel that reads dy through `dy_at`: `from`'s body and bindings in place,
/// its sources bound after `bindings` (dy, the first, already among them).
fn dy_dispatch(
    entry: &'static str,
    mut bindings: Vec<Bind>,
    from: DyFrom,
    sources: &[Bind],
    store_dy: Option<Bind>,
    params: Params,
    wg: [u32; 3],
) -> Dispatch {
    let (body, mut decls) = from.wgsl(2 + bindings.len());
    // y, then the second gradient; the first gradient is `dy`.
    if let DyFrom::Relu { .. } = from {
        bindings.push(sources[0]);
        bindings.extend(&sources[2..]);
    }
    // bn_grad_sums stores each dy it makes (`STORE_DY`) where `store_dy` binds memory for it.
    let mut store = "";
    if let Some(at) = store_dy {
        decls += &format!(
            "@group(0) @binding({}) var<storage, read_write> dy_out: array<f32>;\n",
            2 + bindings.len()
        );
        bindings.push(at);
        store = "dy_out[at] = d;";
    }
    let mut d = dispatch(entry, bindings, params, wg);
    let source = d
        .shader
        .source
        .replace("//DY_AT", &body)
        .replace("//DY_BINDINGS", &decls)
        .replace("//STORE_DY", store);
    d.shader.source = source.into();
    d
}

impl BatchNormGrad {
    /// `Primitive::gpu` with dy made as `from` says. Inputs: x, [weight], mean, var, then
    /// `from`'s sources. Where dy is made from relu's gradient, the sums' pass stores it in
    /// dx's memory, and dx's pass reads it there and overwrites it element by element: dx's
    /// kernel is then the unfused one, the same source, so no driver compiles it differently
    /// (NVIDIA's did, when dx made dy itself).
    fn kernels(&self, args: &KernelArgs, from: DyFrom) -> Result<Vec<Dispatch>, String> {
        let store_dy = (from != DyFrom::Input).then_some(Bind::Out(0));
        let (n, c, s) = bn_layout(&args.inputs[0].shape);
        let stats = 1 + self.affine as usize;
        let (mean, var) = (Bind::In(stats), Bind::In(stats + 1));
        let sources: Vec<Bind> = (0..from.sources())
            .map(|k| Bind::In(stats + 2 + k))
            .collect();
        // What `dy` binds: dy itself, or the gradient relu's derivative multiplies.
        let dy = match from {
            DyFrom::Input => sources[0],
            DyFrom::Relu { .. } => sources[1],
        };
        let split = BnSplit::new(n, c, s);
        let [dot, sum] = split.targets([Bind::Out(1), Bind::Out(2)]);
        let mut out = vec![dy_dispatch(
            "bn_grad_sums",
            vec![Bind::In(0), mean, var, dy, dot, sum],
            from,
            &sources,
            store_dy,
            split.params(self.eps),
            split.groups(),
        )];
        if split.blocks > 1 {
            out.push(dispatch(
                "bn_grad_merge",
                vec![dot, sum, var, Bind::Out(1), Bind::Out(2)],
                split.params(self.eps),
                groups(c),
            ));
        }
        // Without affine, x stands in for the weight (never read).
        let w = if self.affine {
            Bind::In(1)
        } else {
            Bind::In(0)
        };
        let total = args.numel_in(0);
        // Where the sums' pass stored dy, dx reads it as it is.
        let (from, dy, sources) = match store_dy {
            Some(at) => (DyFrom::Input, at, vec![at]),
            None => (from, dy, sources),
        };
        out.push(dy_dispatch(
            "bn_grad_dx",
            vec![
                Bind::In(0),
                w,
                mean,
                var,
                dy,
                Bind::Out(1),
                Bind::Out(2),
                Bind::Out(0),
            ],
            from,
            &sources,
            None,
            Params::new()
                .u32(total)
                .u32(c)
                .u32(s)
                .u32(self.affine as usize)
                .u32(self.training as usize)
                .f32((n * s) as f64)
                .f32(self.eps)
                .u32(0),
            grid(total),
        ));
        Ok(out)
    }

    /// `Eval::eval` with dy made as `from` says (inputs as in `kernels`). The CPU needs no stored
    /// dy: its code for dx is one function, whatever dy's source.
    fn grad<T: Real>(&self, io: &mut Io<'_, T>, from: DyFrom) {
        let layout = bn_layout(io.in_shape(0));
        let (n, c, _) = layout;
        let (ins, outs, scratch) = io.split_scratch_f64::<3>(bn_scratch(n, c, 4));
        let stats = 1 + self.affine as usize;
        let w = self.affine.then(|| ins.get(1));
        let (mean, var) = (ins.get(stats), ins.get(stats + 1));
        let x = ins.get(0);
        let src = |k: usize| ins.get(stats + 2 + k);
        let cx = GradCx {
            layout,
            eps: self.eps,
            training: self.training,
            w,
            mean,
            var,
        };
        // The unfused ops' arithmetic: the add of the two gradients (in their order), then the
        // table's relu derivative of y times it, as UnaryGrad's CPU kernel computes it.
        let relu = |y: T| UnaryFn::Relu.derivative_from_output(y);
        match from {
            DyFrom::Input => cx.run(outs, scratch, [x, src(0)], |[_, dy]| dy),
            DyFrom::Relu { adds: false } => {
                cx.run(outs, scratch, [x, src(0), src(1)], |[_, y, g]| relu(y) * g)
            }
            DyFrom::Relu { adds: true } => cx.run(
                outs,
                scratch,
                [x, src(0), src(1), src(2)],
                |[_, y, g, g2]| relu(y) * (g + g2),
            ),
        }
    }
}

/// What a batchnorm gradient's CPU evaluation reads besides x and dy.
struct GradCx<'a, T> {
    layout: (usize, usize, usize),
    eps: f64,
    training: bool,
    w: Option<&'a [T]>,
    mean: &'a [T],
    var: &'a [T],
}

impl<T: Real> GradCx<'_, T> {
    /// dx, dweight and dbias into `outs`, where dy at an element is `dy(xs at it)`, `xs[0]`
    /// being x.
    fn run<const K: usize>(
        &self,
        outs: [&mut [T]; 3],
        scratch: &mut [f64],
        xs: [&[T]; K],
        dy: impl Fn([T; K]) -> T + Sync + Copy,
    ) {
        let (n, c, s) = self.layout;
        let (mean, var, eps) = (self.mean, self.var, self.eps);
        let (partial, coefs) = scratch.split_at_mut(2 * n * c);
        let [dx, dw, db] = outs;
        let invstd = |ch: usize| 1.0 / (var[ch].to_f64() + eps).sqrt();
        let block_of = |block: usize| xs.map(|t| &t[block * s..][..s]);
        // Per (image, channel) block, Σ dy and Σ dy·(x − mean) (`lanes_sum`); then per channel
        // the blocks in image order, in f64.
        for_blocks(partial, self.layout, |block, ch| {
            let b = block_of(block);
            let mu = mean[ch];
            // One pass, dy made once per element.
            let [sum, dot] = lanes_sums(b, |v: [T; K]| {
                let d = dy(v);
                [d, d * (v[0] - mu)]
            });
            (sum, dot)
        });
        let partial = &*partial;
        dw.par_iter_mut()
            .zip(db.par_iter_mut())
            .enumerate()
            .for_each(|(ch, (dw, db))| {
                let (mut sum, mut dot) = (0.0, 0.0);
                for p in partial.chunks_exact(2).skip(ch).step_by(c) {
                    sum += p[0];
                    dot += p[1];
                }
                (*dw, *db) = (T::of(dot * invstd(ch)), T::of(sum));
            });
        // dx = w·invstd·(dy − Σdy/M − x̂·Σ(dy·x̂)/M), with Σ(dy·x̂) = dweight: each channel's
        // coefficients in f64 (rounded to T) once, the elementwise part in T. In eval mode the
        // statistics are constants: dx = w·invstd·dy.
        let count = (n * s) as f64;
        for (ch, k) in coefs.chunks_exact_mut(4).enumerate() {
            let istd = invstd(ch);
            let scale = T::of(self.w.map_or(1.0, |w| w[ch].to_f64()) * istd);
            let mean_dy = T::of(db[ch].to_f64() / count);
            let slope = T::of(dw[ch].to_f64() * istd / count);
            k.copy_from_slice(&[mean[ch], mean_dy, slope, scale].map(T::to_f64));
        }
        let coefs = &*coefs;
        if s == 0 {
            return;
        }
        let training = self.training;
        dx.par_chunks_exact_mut(s)
            .enumerate()
            .with_min_len(blocks_per_task(s))
            .for_each(|(block, dx)| {
                let [mu, mean_dy, slope, scale] = channel_coefs(coefs, block % c);
                let b = block_of(block);
                if !training {
                    lanes_map(dx, b, |v| dy(v) * scale);
                    return;
                }
                lanes_map(dx, b, |v| (dy(v) - mean_dy - (v[0] - mu) * slope) * scale);
            });
    }
}

impl Eval for BatchNormGrad {
    fn eval<T: Real>(&self, io: &mut Io<'_, T>) {
        self.grad(io, DyFrom::Input);
    }
    fn scratch(&self, inputs: &[&TensorType], _: &[TensorType], _: usize) -> usize {
        let (n, c, _) = bn_layout(&inputs[0].shape);
        f64_scratch_len(bn_scratch(n, c, 4))
    }
}

/// Batchnorm's gradient with relu's gradient before it in one launch, made by the fusion pass
/// (schedule/fuse/bn_grad.rs) where that gradient is the batchnorm gradient's dy and nothing
/// else reads it: dy = relu'(y)·g made on the fly, where `adds`, of g = g1 + g2 (a gradient
/// sum, autodiff's add, that only relu's gradient read). Inputs: those of `BatchNormGrad` with
/// dy replaced by relu's output y, then g (g1, g2). The same outputs as `BatchNormGrad`, by the
/// same code and arithmetic (the same bits as the two or three launches). No gradient of its
/// own: fusion runs after autodiff.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BatchNormReluGrad {
    pub bn: BatchNormGrad,
    pub adds: bool,
}

impl BatchNormReluGrad {
    fn from(&self) -> DyFrom {
        DyFrom::Relu { adds: self.adds }
    }
}

impl Primitive for BatchNormReluGrad {
    fn name(&self) -> &'static str {
        if self.adds {
            "batchnorm_relu_grad_add"
        } else {
            "batchnorm_relu_grad"
        }
    }
    fn infer(&self, inputs: &[&TensorType]) -> ShapeResult {
        let stats = 3 + self.bn.affine as usize;
        let sources = self.from().sources();
        expect_arity(inputs, stats + sources)?;
        let (bn, rest) = inputs.split_at(stats);
        if let Some(bad) = rest.iter().find(|&&t| t != inputs[0]) {
            return Err(format!(
                "relu's output and gradients must be x's {}, got {}",
                fmt_shape(&inputs[0].shape),
                fmt_shape(&bad.shape)
            ));
        }
        let mut grad = bn.to_vec();
        grad.push(rest[1]);
        self.bn.infer(&grad)
    }
    fn flops(&self, inputs: &[&TensorType], outputs: &[TensorType]) -> u64 {
        self.bn.flops(inputs, outputs) + (1 + self.adds as u64) * inputs[0].numel() as u64
    }
    fn attrs(&self) -> Vec<(&'static str, String)> {
        self.bn.attrs()
    }
    fn gpu(&self, args: &KernelArgs) -> Result<Vec<Dispatch>, String> {
        self.bn.kernels(args, self.from())
    }
}

impl Eval for BatchNormReluGrad {
    fn eval<T: Real>(&self, io: &mut Io<'_, T>) {
        self.bn.grad(io, self.from());
    }
    fn scratch(&self, inputs: &[&TensorType], outputs: &[TensorType], threads: usize) -> usize {
        self.bn.scratch(inputs, outputs, threads)
    }
}

/// The running-statistics update of a training batchnorm, exactly PyTorch's: rm ← (1−m)·rm +
/// m·mean, rv ← (1−m)·rv + m·var·count/(count−1) (the unbiased batch variance). Inputs:
/// running_mean, running_var, batch mean, batch biased var (all [C]). Outputs: the new running
/// mean and variance. No gradient: it only feeds buffers.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BatchNormRunningStats {
    pub momentum: f64,
    /// Elements per channel the batch statistics were taken over (N·H·W).
    pub count: usize,
}

impl Primitive for BatchNormRunningStats {
    fn name(&self) -> &'static str {
        "batchnorm_running_stats"
    }
    fn infer(&self, inputs: &[&TensorType]) -> ShapeResult {
        expect_arity(inputs, 4)?;
        for t in inputs {
            expect_f32(t, "a statistic")?;
        }
        let c = inputs[0];
        if c.rank() != 1 || inputs.iter().any(|t| t.shape != c.shape) {
            return Err("expects four statistics of the same shape [C]".into());
        }
        if self.count < 2 {
            return Err(format!(
                "needs more than one value per channel, got {}",
                self.count
            ));
        }
        Ok(vec![c.clone(), c.clone()])
    }
    fn flops(&self, inputs: &[&TensorType], _: &[TensorType]) -> u64 {
        7 * inputs[0].numel() as u64
    }
    fn attrs(&self) -> Vec<(&'static str, String)> {
        vec![
            ("momentum", self.momentum.to_string()),
            ("count", self.count.to_string()),
        ]
    }
    fn gpu(&self, args: &KernelArgs) -> Result<Vec<Dispatch>, String> {
        let c = args.numel_in(0);
        let mut bindings: Vec<Bind> = (0..4).map(Bind::In).collect();
        bindings.extend([Bind::Out(0), Bind::Out(1)]);
        let params = self.constants(Params::new().u32(c));
        Ok(vec![dispatch(
            "bn_running_stats",
            bindings,
            params,
            grid(c),
        )])
    }
    fn foreach(&self) -> Option<&'static str> {
        Some("batchnorm_running_stats_multi")
    }
    fn gpu_foreach(&self, members: usize, args: &KernelArgs) -> Result<Vec<Dispatch>, String> {
        let entry = "bn_running_stats_multi";
        let text = section(KERNELS, entry);
        let shader = Shader {
            source: multi::source(&text.source).into(),
            entry,
        };
        let head = self.constants(Params::new()).u32(0).done();
        multi::dispatches(&shader, &head, members, args)
    }
}

impl BatchNormRunningStats {
    /// `params` followed by m, 1 − m and the Bessel factor: the CPU's f32 constants, rounded
    /// the same way.
    fn constants(&self, params: Params) -> Params {
        let m = self.momentum as f32;
        let bessel = (self.count as f64 / (self.count - 1) as f64) as f32;
        params
            .f32(m as f64)
            .f32((1.0 - m) as f64)
            .f32(bessel as f64)
    }
}

impl Eval for BatchNormRunningStats {
    fn eval<T: Real>(&self, io: &mut Io<'_, T>) {
        let m = T::of(self.momentum);
        let keep = T::ONE - m;
        let bessel = T::of(self.count as f64 / (self.count - 1) as f64);
        io.map(|[rm, rv, mean, var]| [m * mean + keep * rm, m * (var * bessel) + keep * rv]);
    }
}

/// PyTorch's `F.layer_norm` over the trailing `dims` axes (biased variance, eps inside the
/// square root), or, not `centered`, its `F.rms_norm`: y = x / √(mean(x²) + eps) · weight, no
/// mean subtracted and no bias. Inputs: x, then weight (and bias, when centred) of the
/// normalised shape when affine.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LayerNorm {
    pub eps: f64,
    pub dims: usize,
    pub affine: bool,
    pub centered: bool,
}

/// Checks x and the affine parameters of a layernorm over the last `dims` axes; returns the
/// number of elements each row normalises.
fn layernorm_shapes(x: &TensorType, params: &[&TensorType], dims: usize) -> Result<usize, String> {
    expect_f32(x, "the input")?;
    if dims == 0 || dims >= x.rank() {
        return Err(format!(
            "cannot normalise the last {dims} dims of {}",
            fmt_shape(&x.shape)
        ));
    }
    let normalized = &x.shape[x.rank() - dims..];
    if let Some(bad) = params.iter().find(|t| t.shape != normalized) {
        return Err(format!(
            "weight {} does not match {}",
            fmt_shape(&bad.shape),
            fmt_shape(normalized)
        ));
    }
    Ok(normalized.iter().product())
}

impl LayerNorm {
    /// Rmsnorm (PyTorch's `F.rms_norm`): layernorm without centring.
    pub fn rms(eps: f64, dims: usize, affine: bool) -> LayerNorm {
        LayerNorm {
            eps,
            dims,
            affine,
            centered: false,
        }
    }
    /// Whether there is a bias: affine and centred.
    fn bias(&self) -> bool {
        self.affine && self.centered
    }
    /// (rows, m): the rows of x and the elements each normalises (the last `dims` dims).
    fn rows(&self, shape: &[usize]) -> (usize, usize) {
        let m: usize = shape[shape.len() - self.dims..].iter().product();
        (
            shape.iter().product::<usize>().checked_div(m).unwrap_or(0),
            m,
        )
    }
    /// The mean of one row (0 uncentred) and 1/√(var + eps), var the mean square about that
    /// mean: two passes in f64.
    fn row_stats<T: Real>(&self, x: &[T]) -> (f64, f64) {
        let count = x.len() as f64;
        let mean = match self.centered {
            true => x.iter().map(|v| v.to_f64()).sum::<f64>() / count,
            false => 0.0,
        };
        let var = x.iter().map(|v| (v.to_f64() - mean).powi(2)).sum::<f64>() / count;
        (mean, 1.0 / (var + self.eps).sqrt())
    }
    /// Entry `entry` of kernels/layernorm.wgsl (`CENTERED` as this op is), with its `Params`
    /// (`blocks` and `chunk`: the gradient's column sums).
    fn dispatch(
        &self,
        entry: &'static str,
        bindings: Vec<Bind>,
        (rows, m, blocks, chunk): (usize, usize, usize, usize),
        wg: [u32; 3],
    ) -> Dispatch {
        let mut shader = section(LAYERNORM, entry);
        if !self.centered {
            let (on, off) = (
                "const CENTERED: bool = true;",
                "const CENTERED: bool = false;",
            );
            assert!(
                shader.source.contains(on),
                "kernels/layernorm.wgsl declares CENTERED"
            );
            shader.source = shader.source.replacen(on, off, 1).into();
        }
        let params = Params::new().u32(rows).u32(m).u32(self.affine as usize);
        let params = params.f32(self.eps).u32(blocks).u32(chunk).u32(0).u32(0);
        Dispatch {
            shader,
            bindings,
            params: params.done(),
            workgroups: wg,
        }
    }
}

impl Primitive for LayerNorm {
    fn name(&self) -> &'static str {
        if self.centered {
            "layernorm"
        } else {
            "rmsnorm"
        }
    }
    fn infer(&self, inputs: &[&TensorType]) -> ShapeResult {
        expect_arity(inputs, 1 + self.affine as usize + self.bias() as usize)?;
        layernorm_shapes(inputs[0], &inputs[1..], self.dims)?;
        Ok(vec![inputs[0].clone()])
    }
    fn flops(&self, inputs: &[&TensorType], _: &[TensorType]) -> u64 {
        // (centre,) square, sum, scale, shift or weight: about 5 per element, 4 uncentred.
        (4 + self.centered as u64) * inputs[0].numel() as u64
    }
    fn attrs(&self) -> Vec<(&'static str, String)> {
        vec![
            ("eps", self.eps.to_string()),
            ("dims", self.dims.to_string()),
        ]
    }
    fn vjp(&self, cx: &mut VjpCx, a: &VjpArgs) -> VjpResult {
        let mut ins = vec![a.inputs[0]];
        if self.affine {
            ins.push(a.inputs[1]);
        }
        ins.push(a.dy()?);
        let g = cx.op_all(OpKind::LayerNormGrad(LayerNormGrad(self.clone())), &ins)?;
        Ok((0..a.inputs.len())
            .map(|i| a.wants(i).then(|| g[i]))
            .collect())
    }
    /// One workgroup per row.
    fn gpu(&self, args: &KernelArgs) -> Result<Vec<Dispatch>, String> {
        let (rows, m) = self.rows(&args.inputs[0].shape);
        // Without affine, x stands in for weight and bias; uncentred, for the bias (never read).
        let w = Bind::In(if self.affine { 1 } else { 0 });
        let b = Bind::In(if self.bias() { 2 } else { 0 });
        Ok(vec![self.dispatch(
            "ln_forward",
            vec![Bind::In(0), w, b, Bind::Out(0)],
            (rows, m, 0, 0),
            groups(rows),
        )])
    }
}

impl Eval for LayerNorm {
    fn eval<T: Real>(&self, io: &mut Io<'_, T>) {
        let (_, m) = self.rows(io.in_shape(0));
        let (ins, outs) = io.split::<1>();
        let w = self.affine.then(|| ins.get(1));
        let b = self.bias().then(|| ins.get(2));
        if m == 0 {
            return;
        }
        outs[0]
            .par_chunks_mut(m)
            .zip(ins.get(0).par_chunks(m))
            .for_each(|(y, x)| {
                let (mean, rstd) = self.row_stats(x);
                for (j, (y, &x)) in y.iter_mut().zip(x).enumerate() {
                    let xhat = T::of((x.to_f64() - mean) * rstd);
                    *y = match (w, b) {
                        (Some(w), Some(b)) => xhat * w[j] + b[j],
                        (Some(w), None) => xhat * w[j],
                        _ => xhat,
                    };
                }
            });
    }
}

/// The gradient of a [`LayerNorm`]; recomputes each row's statistics. Inputs: x, weight (when
/// affine), dy. Outputs: dx, then when affine dweight = Σ_rows dy·x̂ and, centred, dbias =
/// Σ_rows dy.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LayerNormGrad(pub LayerNorm);

impl Primitive for LayerNormGrad {
    fn name(&self) -> &'static str {
        if self.0.centered {
            "layernorm_grad"
        } else {
            "rmsnorm_grad"
        }
    }
    fn infer(&self, inputs: &[&TensorType]) -> ShapeResult {
        let ln = &self.0;
        expect_arity(inputs, if ln.affine { 3 } else { 2 })?;
        let (x, dy) = (inputs[0], inputs[inputs.len() - 1]);
        if x != dy {
            return Err("x and dy differ".into());
        }
        layernorm_shapes(x, &inputs[1..inputs.len() - 1], ln.dims)?;
        let mut out = vec![x.clone()];
        let normalized = TensorType::f32(x.shape[x.rank() - ln.dims..].to_vec());
        let params = ln.affine as usize + ln.bias() as usize;
        out.extend(std::iter::repeat_n(normalized, params));
        Ok(out)
    }
    fn flops(&self, inputs: &[&TensorType], _: &[TensorType]) -> u64 {
        (8 + 2 * self.0.centered as u64) * inputs[0].numel() as u64
    }
    fn attrs(&self) -> Vec<(&'static str, String)> {
        self.0.attrs()
    }
    /// With affine, dweight (and dbias) first (row statistics parked in dx; then a thread per
    /// column over blocks of rows, whose partials a workgroup per column adds); then dx, a
    /// workgroup per row.
    fn gpu(&self, args: &KernelArgs) -> Result<Vec<Dispatch>, String> {
        let ln = &self.0;
        let (rows, m) = ln.rows(&args.inputs[0].shape);
        let dy = Bind::In(args.inputs.len() - 1);
        let mut out = Vec::new();
        if ln.affine {
            out.push(ln.dispatch(
                "ln_row_stats",
                vec![Bind::In(0), Bind::Out(0)],
                (rows, m, 0, 0),
                groups(rows),
            ));
            // Rounds of one row per thread of a tile of columns.
            let tiles = m.div_ceil(WORKGROUP as usize);
            let (blocks, chunk) = split_reduction(tiles, rows);
            // Uncentred, dweight's place stands in for dbias's (never written).
            let db = Bind::Out(if ln.centered { 2 } else { 1 });
            let parts = match (blocks, ln.centered) {
                (1, _) => [Bind::Out(1), db],
                (b, true) => partial_pair(m * b),
                (b, false) => [Bind::Scratch { at: 0, len: m * b }; 2],
            };
            out.push(ln.dispatch(
                "ln_grad_cols",
                vec![Bind::In(0), dy, Bind::Out(0), parts[0], parts[1]],
                (rows, m, blocks, chunk),
                groups(tiles * blocks),
            ));
            if blocks > 1 {
                out.push(ln.dispatch(
                    "ln_grad_cols_merge",
                    vec![Bind::In(0), parts[0], parts[1], Bind::Out(1), db],
                    (rows, m, blocks, chunk),
                    groups(m),
                ));
            }
        }
        // Without affine, x stands in for the weight (never read).
        let w = Bind::In(if ln.affine { 1 } else { 0 });
        out.push(ln.dispatch(
            "ln_grad_dx",
            vec![Bind::In(0), w, dy, Bind::Out(0)],
            (rows, m, 0, 0),
            groups(rows),
        ));
        Ok(out)
    }
}

impl Eval for LayerNormGrad {
    fn eval<T: Real>(&self, io: &mut Io<'_, T>) {
        let ln = &self.0;
        let (_, m) = ln.rows(io.in_shape(0));
        let (ins, [dx, dw, db]) = io.split::<3>();
        let (x, dy) = (ins.get(0), ins.get(ins.len() - 1));
        let w = ln.affine.then(|| ins.get(1));
        if m == 0 {
            return;
        }
        // dx = rstd·(g − mean(g) − x̂·mean(g·x̂)) with g = dy·w (uncentred without mean(g)), row
        // by row.
        dx.par_chunks_mut(m)
            .zip(x.par_chunks(m).zip(dy.par_chunks(m)))
            .for_each(|(dx, (x, dy))| {
                let (mean, rstd) = ln.row_stats(x);
                let g = |j: usize| dy[j].to_f64() * w.map_or(1.0, |w| w[j].to_f64());
                let xhat = |j: usize| (x[j].to_f64() - mean) * rstd;
                let (mut sum_g, mut sum_gx) = (0.0, 0.0);
                for j in 0..m {
                    sum_g += g(j);
                    sum_gx += g(j) * xhat(j);
                }
                let mean_g = if ln.centered { sum_g / m as f64 } else { 0.0 };
                let mean_gx = sum_gx / m as f64;
                for (j, dx) in dx.iter_mut().enumerate() {
                    *dx = T::of(rstd * (g(j) - mean_g - xhat(j) * mean_gx));
                }
            });
        if ln.affine {
            // Rows in order, so each column's sum has a fixed order.
            dw.fill(T::ZERO);
            db.fill(T::ZERO);
            for (x, dy) in x.chunks(m).zip(dy.chunks(m)) {
                let (mean, rstd) = ln.row_stats(x);
                for j in 0..m {
                    dw[j] += dy[j] * T::of((x[j].to_f64() - mean) * rstd);
                    if ln.centered {
                        db[j] += dy[j];
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::eval_once;
    use crate::gradcheck::{Arg, check_op};
    use crate::ops::reduce::tests::{assert_close, eval_f64, f32_input, uniform, unravel};
    use crate::tensor::StepCtx;

    /// The fused batchnorm-relu gradient's dx is the unfused dx kernel, the same source read
    /// from the stored dy, so no driver can compile it differently (NVIDIA's did): its only
    /// source of its own is the sums' pass, which also stores dy in dx's memory.
    #[test]
    fn the_fused_relu_gradients_dx_is_the_unfused_kernel() {
        for (shape, affine, adds) in [
            (vec![2, 3, 5, 7], true, true),
            (vec![64, 8, 40, 40], false, false),
        ] {
            let bn = BatchNormGrad {
                eps: 1e-5,
                affine,
                training: true,
            };
            let x = TensorType::f32(shape.clone());
            let c = TensorType::f32(vec![shape[1]]);
            let mut ins = vec![&x];
            if affine {
                ins.push(&c);
            }
            ins.extend([&c, &c]);
            let mut fused_ins = ins.clone();
            fused_ins.extend(std::iter::repeat_n(&x, 2 + adds as usize));
            ins.push(&x);
            let plain = OpKind::BatchNormGrad(bn.clone());
            let fused = OpKind::BatchNormReluGrad(BatchNormReluGrad { bn, adds });
            let kernels = |op: &OpKind, ins: &[&TensorType]| {
                let outputs = op.primitive().infer(ins).unwrap();
                let args = KernelArgs {
                    inputs: ins,
                    outputs: &outputs,
                };
                op.primitive().gpu(&args).unwrap()
            };
            let (a, b) = (kernels(&plain, &ins), kernels(&fused, &fused_ins));
            assert_eq!(a.len(), b.len());
            for (a, b) in a.iter().zip(&b) {
                assert_eq!(a.shader.entry, b.shader.entry);
                let same = a.shader.source == b.shader.source;
                assert_eq!(same, a.shader.entry != "bn_grad_sums", "{}", a.shader.entry);
            }
            // dx reads dy where the sums' pass stored it: dx's own memory, bound twice.
            assert!(b[0].bindings.contains(&Bind::Out(0)));
            let dx = b.last().unwrap();
            assert_eq!(dx.shader.entry, "bn_grad_dx");
            let dx_dy = dx.bindings.iter().filter(|&&d| d == Bind::Out(0)).count();
            assert_eq!(dx_dy, 2);
        }
    }

    fn bn(affine: bool, training: bool) -> OpKind {
        OpKind::BatchNorm(BatchNorm {
            eps: 1e-5,
            momentum: 0.1,
            affine,
            training,
        })
    }

    /// x, then weight, bias (when affine), running mean, running var (positive).
    fn bn_inputs(shape: &[usize], affine: bool) -> Vec<(TensorType, Vec<f64>)> {
        let c = shape[1];
        let mut ins = vec![f32_input(shape, 10)];
        if affine {
            ins.push(f32_input(&[c], 11));
            ins.push(f32_input(&[c], 12));
        }
        ins.push(f32_input(&[c], 13));
        ins.push((TensorType::f32(vec![c]), uniform(14, c, 0.5, 2.0)));
        ins
    }

    /// y from per-channel statistics, straight from the definition.
    fn bn_naive(ins: &[(TensorType, Vec<f64>)], affine: bool, stats: (&[f64], &[f64])) -> Vec<f64> {
        let (shape, x) = (&ins[0].0.shape, &ins[0].1);
        x.iter()
            .enumerate()
            .map(|(k, &v)| {
                let ch = unravel(k, shape)[1];
                let xhat = (v - stats.0[ch]) / (stats.1[ch] + 1e-5).sqrt();
                match affine {
                    true => xhat * ins[1].1[ch] + ins[2].1[ch],
                    false => xhat,
                }
            })
            .collect()
    }

    /// Per-channel mean and biased variance, by coordinates.
    fn batch_stats(shape: &[usize], x: &[f64]) -> (Vec<f64>, Vec<f64>) {
        let c = shape[1];
        let count = (x.len() / c) as f64;
        let mut mean = vec![0.0; c];
        for (k, v) in x.iter().enumerate() {
            mean[unravel(k, shape)[1]] += v / count;
        }
        let mut var = vec![0.0; c];
        for (k, v) in x.iter().enumerate() {
            let ch = unravel(k, shape)[1];
            var[ch] += (v - mean[ch]).powi(2) / count;
        }
        (mean, var)
    }

    #[test]
    fn batchnorm_training_uses_batch_statistics() {
        for shape in [
            vec![2, 3, 7, 5],
            vec![1, 3, 7, 5],
            vec![5, 3],
            vec![4, 3, 7],
        ] {
            for affine in [true, false] {
                let ins = bn_inputs(&shape, affine);
                let (mean, var) = batch_stats(&shape, &ins[0].1);
                let got = eval_f64(&bn(affine, true), &ins);
                assert_close(&got[1], &mean, 1e-12);
                assert_close(&got[2], &var, 1e-12);
                assert_close(&got[0], &bn_naive(&ins, affine, (&mean, &var)), 1e-10);
            }
        }
    }

    #[test]
    fn batchnorm_eval_uses_running_statistics() {
        for affine in [true, false] {
            let ins = bn_inputs(&[2, 3, 7, 5], affine);
            let n = ins.len();
            let (rm, rv) = (&ins[n - 2].1, &ins[n - 1].1);
            let got = eval_f64(&bn(affine, false), &ins);
            assert_eq!(&got[1], rm);
            assert_eq!(&got[2], rv);
            assert_close(&got[0], &bn_naive(&ins, affine, (rm, rv)), 1e-12);
        }
        // One value per channel is fine in eval mode, refused in training (as in PyTorch).
        let x = TensorType::f32(vec![1, 3]);
        let c = TensorType::f32(vec![3]);
        let types = [&x, &c, &c];
        assert!(bn(false, false).primitive().infer(&types).is_ok());
        assert!(bn(false, true).primitive().infer(&types).is_err());
    }

    fn gradcheck(op: OpKind, args: &[Arg]) {
        for seed in 0..2 {
            let r = check_op(op.clone(), args, &[0], seed).unwrap();
            assert!(r.worst < 1e-5, "{op:?} seed {seed}: {r:?}");
            assert!(r.checked > 0);
        }
    }

    #[test]
    fn batchnorm_gradient() {
        for shape in [vec![2, 3, 7, 5], vec![1, 3, 7, 5], vec![5, 3]] {
            for affine in [true, false] {
                for training in [true, false] {
                    let c = shape[1];
                    let mut args = vec![Arg::Float(shape.clone())];
                    if affine {
                        args.extend([Arg::Float(vec![c]), Arg::Float(vec![c])]);
                    }
                    args.push(Arg::Const(vec![c], -1.0, 1.0));
                    args.push(Arg::Const(vec![c], 0.5, 2.0));
                    gradcheck(bn(affine, training), &args);
                }
            }
        }
    }

    /// Blocks are summed in parallel but merged per channel in image order, so every bit of
    /// batchnorm and its gradient is the same on any number of threads.
    #[test]
    fn batchnorm_does_not_depend_on_the_thread_count() {
        let shape = [37, 5, 7, 9];
        let ins = bn_inputs(&shape, true);
        let dy = f32_input(&shape, 15);
        let f32s = |v: &[f64]| v.iter().map(|&v| v as f32).collect::<Vec<f32>>();
        let run = || {
            let mut all = Vec::new();
            let fwd: Vec<(&TensorType, Vec<f32>)> = ins.iter().map(|(t, v)| (t, f32s(v))).collect();
            let fwd_ins: Vec<(&TensorType, &[f32])> =
                fwd.iter().map(|(t, v)| (*t, &v[..])).collect();
            let y = eval_once(&bn(true, true), &fwd_ins, StepCtx::default()).unwrap();
            let stats = TensorType::f32(vec![shape[1]]);
            let grad_ins: [(&TensorType, &[f32]); 5] = [
                fwd_ins[0],
                fwd_ins[1],
                (&stats, &y[1]),
                (&stats, &y[2]),
                (&dy.0, &f32s(&dy.1)),
            ];
            let op = OpKind::BatchNormGrad(BatchNormGrad {
                eps: 1e-5,
                affine: true,
                training: true,
            });
            let g = eval_once(&op, &grad_ins, StepCtx::default()).unwrap();
            all.extend(y);
            all.extend(g);
            all
        };
        crate::ops::testing::assert_same_bits_on_any_thread_count(run);
    }

    #[test]
    fn running_stats_after_one_update() {
        let op = OpKind::BatchNormRunningStats(BatchNormRunningStats {
            momentum: 0.1,
            count: 5,
        });
        let t = TensorType::f32(vec![2]);
        let ins = [
            (t.clone(), vec![0.0, 1.0]),
            (t.clone(), vec![1.0, 2.0]),
            (t.clone(), vec![2.0, -1.0]),
            (t, vec![4.0, 0.5]),
        ];
        let got = eval_f64(&op, &ins);
        // 0.9·0 + 0.1·2; 0.9·1 + 0.1·(−1).
        assert_close(&got[0], &[0.2, 0.8], 1e-15);
        // 0.9·1 + 0.1·4·5/4; 0.9·2 + 0.1·0.5·5/4.
        assert_close(&got[1], &[1.4, 1.8625], 1e-15);
    }

    #[test]
    fn running_stats_follow_a_training_batchnorm() {
        // The unbiased batch variance, as torch.var(unbiased=True) over every axis but 1.
        let shape = [2, 3, 7, 5];
        let ins = bn_inputs(&shape, true);
        let y = eval_f64(&bn(true, true), &ins);
        let c = TensorType::f32(vec![3]);
        let stats = [
            ins[3].clone(),
            ins[4].clone(),
            (c.clone(), y[1].clone()),
            (c, y[2].clone()),
        ];
        let op = OpKind::BatchNormRunningStats(BatchNormRunningStats {
            momentum: 0.25,
            count: 70,
        });
        let got = eval_f64(&op, &stats);
        let (mean, _) = batch_stats(&shape, &ins[0].1);
        let mut unbiased = [0.0; 3];
        for (k, v) in ins[0].1.iter().enumerate() {
            let ch = unravel(k, &shape)[1];
            unbiased[ch] += (v - mean[ch]).powi(2) / 69.0;
        }
        let rm: Vec<f64> = (0..3)
            .map(|i| 0.75 * ins[3].1[i] + 0.25 * mean[i])
            .collect();
        let rv: Vec<f64> = (0..3)
            .map(|i| 0.75 * ins[4].1[i] + 0.25 * unbiased[i])
            .collect();
        assert_close(&got[0], &rm, 1e-12);
        assert_close(&got[1], &rv, 1e-12);
        let one = TensorType::f32(vec![3]);
        let bad = BatchNormRunningStats {
            momentum: 0.1,
            count: 1,
        };
        assert!(bad.infer(&[&one, &one, &one, &one]).is_err());
    }

    fn ln(dims: usize, affine: bool) -> OpKind {
        OpKind::LayerNorm(LayerNorm {
            eps: 1e-5,
            dims,
            affine,
            centered: true,
        })
    }

    #[test]
    fn layernorm_matches_a_naive_layernorm() {
        for (shape, dims) in [
            (vec![2, 3, 7, 5], 2),
            (vec![2, 3, 7, 5], 1),
            (vec![1, 7, 5], 2),
        ] {
            for affine in [true, false] {
                let norm = &shape[shape.len() - dims..];
                let m: usize = norm.iter().product();
                let mut ins = vec![f32_input(&shape, 20)];
                if affine {
                    ins.push(f32_input(norm, 21));
                    ins.push(f32_input(norm, 22));
                }
                let x = &ins[0].1;
                let mut want = vec![0.0; x.len()];
                for r in 0..x.len() / m {
                    let row = &x[r * m..(r + 1) * m];
                    let mean = row.iter().sum::<f64>() / m as f64;
                    let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / m as f64;
                    for j in 0..m {
                        let xhat = (row[j] - mean) / (var + 1e-5).sqrt();
                        want[r * m + j] = match affine {
                            true => xhat * ins[1].1[j] + ins[2].1[j],
                            false => xhat,
                        };
                    }
                }
                let got = eval_f64(&ln(dims, affine), &ins);
                assert_close(&got[0], &want, 1e-12);
            }
        }
    }

    #[test]
    fn layernorm_gradient() {
        for (shape, dims) in [
            (vec![2, 3, 7, 5], 2),
            (vec![2, 3, 7, 5], 1),
            (vec![1, 7, 5], 2),
        ] {
            for affine in [true, false] {
                let norm = shape[shape.len() - dims..].to_vec();
                let mut args = vec![Arg::Float(shape.clone())];
                if affine {
                    args.extend([Arg::Float(norm.clone()), Arg::Float(norm)]);
                }
                gradcheck(ln(dims, affine), &args);
            }
        }
    }

    const RMS_CASES: [(&[usize], usize); 4] = [
        (&[2, 3, 7, 5], 2),
        (&[2, 3, 7, 5], 1),
        (&[1, 7, 5], 2),
        (&[5, 1], 1),
    ];

    #[test]
    fn rmsnorm_matches_the_formula() {
        for (shape, dims) in RMS_CASES {
            for affine in [true, false] {
                let norm = &shape[shape.len() - dims..];
                let m: usize = norm.iter().product();
                let mut ins = vec![f32_input(shape, 30)];
                if affine {
                    ins.push(f32_input(norm, 31));
                }
                let x = &ins[0].1;
                let mut want = vec![0.0; x.len()];
                for r in 0..x.len() / m {
                    let row = &x[r * m..(r + 1) * m];
                    let ms = row.iter().map(|v| v * v).sum::<f64>() / m as f64;
                    for j in 0..m {
                        let w = if affine { ins[1].1[j] } else { 1.0 };
                        want[r * m + j] = row[j] / (ms + 1e-6).sqrt() * w;
                    }
                }
                let got = eval_f64(&OpKind::LayerNorm(LayerNorm::rms(1e-6, dims, affine)), &ins);
                assert_close(&got[0], &want, 1e-12);
            }
        }
    }

    #[test]
    fn rmsnorm_gradient() {
        for (shape, dims) in RMS_CASES {
            for affine in [true, false] {
                let norm = shape[shape.len() - dims..].to_vec();
                let mut args = vec![Arg::Float(shape.to_vec())];
                if affine {
                    args.push(Arg::Float(norm.clone()));
                }
                // A row of one element: y = x/√(x² + eps)·w is flat but for |x| ≲ √eps, so the
                // gradient is tested with an eps that keeps it away from 0.
                let eps = if norm.iter().product::<usize>() == 1 {
                    0.5
                } else {
                    1e-6
                };
                gradcheck(OpKind::LayerNorm(LayerNorm::rms(eps, dims, affine)), &args);
            }
        }
    }

    #[test]
    fn rmsnorm_checks_its_shapes() {
        let x = TensorType::f32(vec![2, 3, 4]);
        let op = |dims| LayerNorm::rms(1e-6, dims, true);
        let w = TensorType::f32(vec![3, 4]);
        assert!(op(2).infer(&[&x, &w]).is_ok());
        assert!(op(1).infer(&[&x, &w]).is_err());
        assert!(op(3).infer(&[&x, &TensorType::f32(vec![2, 3, 4])]).is_err());
        assert!(op(2).infer(&[&x]).is_err());
        // No bias: a third input is refused, and the gradient has dx and dweight only.
        assert!(op(2).infer(&[&x, &w, &w]).is_err());
        let outs = LayerNormGrad(op(2)).infer(&[&x, &w, &x]).unwrap();
        assert_eq!(outs, vec![x.clone(), w]);
        // The plan and profile name the uncentred variant.
        assert_eq!(op(2).name(), "rmsnorm");
        assert_eq!(LayerNormGrad(op(2)).name(), "rmsnorm_grad");
    }
}
