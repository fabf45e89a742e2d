//! Reductions: mean over axes (global average pooling) and softmax along one axis, with their
//! gradients; and `SumTo`, the gradient of a broadcast.

use rayon::prelude::*;
use serde::Serialize;

use crate::kernel::gpu::{Dispatch, KernelArgs};

use super::{
    Eval, OpKind, Primitive, ShapeResult, VjpArgs, VjpCx, VjpResult, axis, expect_arity, expect_f32,
};

use crate::kernel::cpu::{Io, Real};
use crate::kernel::gpu::{Bind, Params, SCRATCH_ALIGN, WORKGROUP, grid, groups, section};
use crate::tensor::{TensorId, TensorType, fmt_shape};

const KERNELS: &str = include_str!("../../kernels/reduce.wgsl");

/// Rows at most this long are reduced by one thread each; longer ones by a workgroup each.
const SHORT_ROW: usize = 32;

/// Workgroups a split reduction aims for: about one full wave of a large GPU (an H100 holds
/// 132 × 8 workgroups of 256 threads).
const SPLIT_TARGET_GROUPS: usize = 1024;
/// The fewest rounds (a round: one item per thread, or per run of threads) a block takes, so
/// that a block's work outweighs its partial's traffic and the second pass stays small.
const SPLIT_MIN_ROUNDS: usize = 4;
/// The most blocks one sum is cut into: its second pass adds at most this many partials.
const SPLIT_MAX_BLOCKS: usize = 1024;

/// How a GPU reduction of `outputs` independent sums, each `rounds` workgroup rounds long, is
/// cut into blocks: (blocks per sum, rounds per block), every block that long but the last.
/// Each block writes a partial to workspace and a second pass adds each sum's partials in
/// block order; with one block, the first pass writes the result itself. Few sums get many
/// blocks, so that a reduction fills the GPU however many sums it has. The split depends on the
/// shapes only, never on the adapter, so a config runs the same kernels (and bits) everywhere.
pub(crate) fn split_reduction(outputs: usize, rounds: usize) -> (usize, usize) {
    let want = (SPLIT_TARGET_GROUPS / outputs.max(1)).max(1);
    let most = (rounds / SPLIT_MIN_ROUNDS).clamp(1, SPLIT_MAX_BLOCKS);
    let per_block = rounds.div_ceil(want.min(most)).max(1);
    (rounds.div_ceil(per_block).max(1), per_block)
}

/// Two workspace ranges of `len` words each, the second aligned after the first: where the
/// first pass of a split reduction writes two partials per block.
pub(crate) fn partial_pair(len: usize) -> [Bind; 2] {
    [
        Bind::Scratch { at: 0, len },
        Bind::Scratch {
            at: len.next_multiple_of(SCRATCH_ALIGN),
            len,
        },
    ]
}

/// Dims of (size, stride) with size-1 dims dropped and neighbours merged where one steps
/// exactly over the other (so a row-major walk visits the same offsets); at most 8 remain.
fn merge_dims(dims: &[(usize, usize)]) -> Result<Vec<(usize, usize)>, String> {
    let mut out: Vec<(usize, usize)> = Vec::new();
    for &(size, stride) in dims.iter().filter(|d| d.0 != 1) {
        match out.last_mut() {
            Some(last) if last.1 == size * stride => *last = (last.0 * size, stride),
            _ => out.push((size, stride)),
        }
    }
    if out.len() > 8 {
        return Err(format!(
            "a reduction over {} separate dims (at most 8)",
            out.len()
        ));
    }
    Ok(out)
}

/// Up to 8 dims as two vec4<u32> of sizes then two of strides (unused dims are size 1).
fn dim_words(mut params: Params, dims: &[(usize, usize)]) -> Params {
    for k in 0..8 {
        params = params.u32(dims.get(k).map_or(1, |d| d.0));
    }
    for k in 0..8 {
        params = params.u32(dims.get(k).map_or(0, |d| d.1));
    }
    params
}

/// Sums (or means) x over `reduced` dims into one output per row-major index over `kept`
/// (both lists of (size, x stride)): a thread per output when each sums few elements, else a
/// workgroup per block of each output's elements (`split_reduction`), then the blocks' sums.
fn reduce_axes(
    kept: &[(usize, usize)],
    reduced: &[(usize, usize)],
    mean: bool,
) -> Result<Vec<Dispatch>, String> {
    let outputs: usize = kept.iter().map(|d| d.0).product();
    let count: usize = reduced.iter().map(|d| d.0).product();
    let (kept, reduced) = (merge_dims(kept)?, merge_dims(reduced)?);
    let short = count <= SHORT_ROW;
    let (blocks, rounds) = match short {
        true => (1, 0),
        false => split_reduction(outputs, count.div_ceil(WORKGROUP as usize)),
    };
    let params = Params::new()
        .u32(outputs)
        .u32(count)
        .u32(kept.len())
        .u32(reduced.len())
        .u32(mean as usize)
        .u32(blocks)
        .u32(rounds * WORKGROUP as usize)
        .u32(0);
    let params = dim_words(dim_words(params, &kept), &reduced).done();
    if short {
        return Ok(vec![Dispatch {
            shader: section(KERNELS, "axes_thread"),
            bindings: vec![Bind::In(0), Bind::Out(0)],
            params,
            workgroups: grid(outputs),
        }]);
    }
    let sums = Bind::Scratch {
        at: 0,
        len: outputs * blocks,
    };
    let target = if blocks > 1 { sums } else { Bind::Out(0) };
    let mut out = vec![Dispatch {
        shader: section(KERNELS, "axes_group"),
        bindings: vec![Bind::In(0), target],
        params: params.clone(),
        workgroups: groups(outputs * blocks),
    }];
    if blocks > 1 {
        out.push(Dispatch {
            shader: section(KERNELS, "axes_merge"),
            bindings: vec![sums, Bind::Out(0)],
            params,
            workgroups: groups(outputs),
        });
    }
    Ok(out)
}

/// Softmax and its gradient: rows along the axis, short ones a thread each, long ones a
/// workgroup each.
fn softmax_kernel(
    shape: &[usize],
    ax: i64,
    thread: &'static str,
    group: &'static str,
    bindings: Vec<Bind>,
) -> Result<Vec<Dispatch>, String> {
    let a = axis(ax, shape.len())?;
    let (outer, len, inner) = around(shape, a);
    let rows = outer * inner;
    let params = Params::new().u32(rows).u32(len).u32(inner).u32(0).done();
    let (entry, workgroups) = if len <= SHORT_ROW {
        (thread, grid(rows))
    } else {
        (group, groups(rows))
    };
    Ok(vec![Dispatch {
        shader: section(KERNELS, entry),
        bindings,
        params,
        workgroups,
    }])
}

/// Mean over the given axes, which are removed from the shape (PyTorch's `x.mean(dim=axes)`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MeanAxes {
    pub axes: Vec<usize>,
}

/// The shape without `axes`, or why `axes` do not fit a tensor of `shape`.
fn reduced_shape(shape: &[usize], axes: &[usize]) -> Result<Vec<usize>, String> {
    if let Some(a) = axes.iter().find(|&&a| a >= shape.len()) {
        return Err(format!(
            "axis {a} is out of range for a tensor of rank {}",
            shape.len()
        ));
    }
    if let Some((i, a)) = axes
        .iter()
        .enumerate()
        .find(|(i, a)| axes[..*i].contains(a))
    {
        return Err(format!("axis {a} is listed twice (position {i})"));
    }
    Ok((0..shape.len())
        .filter(|i| !axes.contains(i))
        .map(|i| shape[i])
        .collect())
}

/// Row-major strides of `shape`.
fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![0; shape.len()];
    let mut acc = 1;
    for d in (0..shape.len()).rev() {
        s[d] = acc;
        acc *= shape[d];
    }
    s
}

impl Primitive for MeanAxes {
    fn name(&self) -> &'static str {
        "mean"
    }
    fn infer(&self, inputs: &[&TensorType]) -> ShapeResult {
        expect_arity(inputs, 1)?;
        let x = inputs[0];
        expect_f32(x, "the input")?;
        Ok(vec![TensorType::f32(reduced_shape(&x.shape, &self.axes)?)])
    }
    fn flops(&self, inputs: &[&TensorType], _: &[TensorType]) -> u64 {
        inputs[0].numel() as u64
    }
    fn attrs(&self) -> Vec<(&'static str, String)> {
        vec![("axes", format!("{:?}", self.axes))]
    }
    fn vjp(&self, cx: &mut VjpCx, a: &VjpArgs) -> VjpResult {
        let shape = cx.ty(a.inputs[0]).shape.clone();
        let grad = MeanAxesGrad {
            axes: self.axes.clone(),
            shape,
        };
        Ok(vec![Some(cx.op(OpKind::MeanAxesGrad(grad), &[a.dy()?])?)])
    }
    fn gpu(&self, args: &KernelArgs) -> Result<Vec<Dispatch>, String> {
        let shape = &args.inputs[0].shape;
        let st = strides(shape);
        let split = |keep: bool| -> Vec<(usize, usize)> {
            (0..shape.len())
                .filter(|i| self.axes.contains(i) != keep)
                .map(|i| (shape[i], st[i]))
                .collect()
        };
        reduce_axes(&split(true), &split(false), true)
    }
}

impl Eval for MeanAxes {
    fn eval<T: Real>(&self, io: &mut Io<'_, T>) {
        let shape = io.in_shape(0);
        let axes = &self.axes;
        let count: usize = axes.iter().map(|&a| shape[a]).product();
        let (ins, outs) = io.split::<1>();
        let x = ins.get(0);
        // Each output sums its own elements in index order (f64), so threads never share a sum.
        if trailing(shape, axes) && count > 0 {
            // Each output's elements are one contiguous run (global average pooling).
            let rows = x.par_chunks_exact(count);
            outs[0].par_iter_mut().zip(rows).for_each(|(y, row)| {
                let sum: f64 = row.iter().map(|v| v.to_f64()).sum();
                *y = T::of(sum / count as f64);
            });
            return;
        }
        outs[0].par_iter_mut().enumerate().for_each(|(o, y)| {
            let base = offset_over(shape, |d| !axes.contains(&d), o);
            let sum: f64 = (0..count)
                .map(|r| x[base + offset_over(shape, |d| axes.contains(&d), r)].to_f64())
                .sum();
            *y = T::of(sum / count as f64);
        });
    }
}

/// Whether `axes` are the last dims of `shape` (in any order), so that each row-major index
/// over the others owns one contiguous run of elements.
fn trailing(shape: &[usize], axes: &[usize]) -> bool {
    let first = shape.len() - axes.len();
    (first..shape.len()).all(|d| axes.contains(&d))
}

/// The offset in a row-major tensor of `shape` of row-major index `k` over the dims `pick`
/// selects (the others at 0). Allocates nothing.
fn offset_over(shape: &[usize], pick: impl Fn(usize) -> bool, mut k: usize) -> usize {
    let (mut off, mut stride) = (0, 1);
    for d in (0..shape.len()).rev() {
        if pick(d) {
            off += (k % shape[d]) * stride;
            k /= shape[d];
        }
        stride *= shape[d];
    }
    off
}

/// The gradient of [`MeanAxes`]: dy broadcast back over `axes` to `shape`, divided by the
/// number of elements each mean took. Input: dy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MeanAxesGrad {
    pub axes: Vec<usize>,
    /// The shape of the forward input (the gradient's shape).
    pub shape: Vec<usize>,
}

impl Primitive for MeanAxesGrad {
    fn name(&self) -> &'static str {
        "mean_grad"
    }
    fn infer(&self, inputs: &[&TensorType]) -> ShapeResult {
        expect_arity(inputs, 1)?;
        let want = reduced_shape(&self.shape, &self.axes)?;
        if inputs[0].shape != want {
            return Err(format!(
                "dy {} does not match the mean's output {}",
                fmt_shape(&inputs[0].shape),
                fmt_shape(&want)
            ));
        }
        Ok(vec![TensorType::f32(self.shape.clone())])
    }
    fn flops(&self, _: &[&TensorType], out: &[TensorType]) -> u64 {
        out[0].numel() as u64
    }
    fn attrs(&self) -> Vec<(&'static str, String)> {
        vec![
            ("axes", format!("{:?}", self.axes)),
            ("shape", fmt_shape(&self.shape)),
        ]
    }
    fn gpu(&self, args: &KernelArgs) -> Result<Vec<Dispatch>, String> {
        let dy_strides = strides(&args.inputs[0].shape);
        let mut kept = dy_strides.iter();
        let dims: Vec<(usize, usize)> = (0..self.shape.len())
            .map(|i| match self.axes.contains(&i) {
                true => (self.shape[i], 0),
                false => (self.shape[i], *kept.next().unwrap_or(&0)),
            })
            .collect();
        let dims = merge_dims(&dims)?;
        let count: usize = self.axes.iter().map(|&a| self.shape[a]).product();
        // The CPU's scale, rounded to f32 the same way.
        let scale = 1.0f32 / count as f32;
        let n = args.numel_out(0);
        let params = Params::new()
            .u32(n)
            .u32(dims.len())
            .f32(scale as f64)
            .u32(0);
        Ok(vec![Dispatch {
            shader: section(KERNELS, "mean_grad"),
            bindings: vec![Bind::In(0), Bind::Out(0)],
            params: dim_words(params, &dims).done(),
            workgroups: grid(n),
        }])
    }
}

impl Eval for MeanAxesGrad {
    fn eval<T: Real>(&self, io: &mut Io<'_, T>) {
        let (shape, axes) = (&self.shape, &self.axes);
        let count: usize = axes.iter().map(|&a| shape[a]).product();
        let scale = T::ONE / T::of(count as f64);
        let (ins, outs) = io.split::<1>();
        let dy = ins.get(0);
        if trailing(shape, axes) && count > 0 {
            // Each dy value fills one contiguous run of dx.
            let rows = outs[0].par_chunks_exact_mut(count);
            rows.zip(dy).for_each(|(dx, &dy)| dx.fill(dy * scale));
            return;
        }
        // dx index k → dy offset: dx's coordinates on the kept dims, in dy's row-major strides.
        let at = |mut k: usize| {
            let (mut off, mut stride) = (0, 1);
            for d in (0..shape.len()).rev() {
                let c = k % shape[d];
                k /= shape[d];
                if !axes.contains(&d) {
                    off += c * stride;
                    stride *= shape[d];
                }
            }
            off
        };
        outs[0]
            .par_iter_mut()
            .enumerate()
            .for_each(|(k, dx)| *dx = dy[at(k)] * scale);
    }
}

/// Softmax along one axis, max-subtracted for stability (PyTorch's `torch.softmax(x, dim)`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Softmax {
    /// Axis of the full tensor (batch included); negative counts from the end.
    pub axis: i64,
}

/// (outer, len, inner): the dims before, at and after axis `a`.
fn around(shape: &[usize], a: usize) -> (usize, usize, usize) {
    let outer = shape[..a].iter().product();
    let inner = shape[a + 1..].iter().product();
    (outer, shape[a], inner)
}

impl Primitive for Softmax {
    fn name(&self) -> &'static str {
        "softmax"
    }
    fn infer(&self, inputs: &[&TensorType]) -> ShapeResult {
        expect_arity(inputs, 1)?;
        expect_f32(inputs[0], "the input")?;
        axis(self.axis, inputs[0].rank())?;
        Ok(vec![inputs[0].clone()])
    }
    fn flops(&self, _: &[&TensorType], out: &[TensorType]) -> u64 {
        5 * out[0].numel() as u64
    }
    fn attrs(&self) -> Vec<(&'static str, String)> {
        vec![("axis", self.axis.to_string())]
    }
    fn vjp(&self, cx: &mut VjpCx, a: &VjpArgs) -> VjpResult {
        let grad = SoftmaxGrad { axis: self.axis };
        let dx = cx.op(OpKind::SoftmaxGrad(grad), &[a.outputs[0], a.dy()?])?;
        Ok(vec![Some(dx)])
    }
    fn gpu(&self, args: &KernelArgs) -> Result<Vec<Dispatch>, String> {
        let bindings = vec![Bind::In(0), Bind::Out(0)];
        let shape = &args.inputs[0].shape;
        softmax_kernel(
            shape,
            self.axis,
            "softmax_thread",
            "softmax_group",
            bindings,
        )
    }
}

impl Eval for Softmax {
    fn eval<T: Real>(&self, io: &mut Io<'_, T>) {
        let shape = io.in_shape(0);
        let a = axis(self.axis, shape.len()).expect("checked by infer");
        let (_, len, inner) = around(shape, a);
        let block = len * inner;
        let (ins, outs) = io.split::<1>();
        if block == 0 {
            return;
        }
        outs[0]
            .par_chunks_mut(block)
            .zip(ins.get(0).par_chunks(block))
            .for_each(|(y, x)| {
                for i in 0..inner {
                    let at = |k: usize| k * inner + i;
                    let m = (1..len).fold(x[at(0)], |m, k| m.max(x[at(k)]));
                    let mut sum = T::ZERO;
                    for k in 0..len {
                        let e = (x[at(k)] - m).exp();
                        y[at(k)] = e;
                        sum += e;
                    }
                    for k in 0..len {
                        y[at(k)] = y[at(k)] / sum;
                    }
                }
            });
    }
}

/// The gradient of [`Softmax`]: `dx = y · (dy − Σ_axis dy·y)`. Inputs: y, dy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SoftmaxGrad {
    pub axis: i64,
}

impl Primitive for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "softmax_grad"
    }
    fn infer(&self, inputs: &[&TensorType]) -> ShapeResult {
        expect_arity(inputs, 2)?;
        if inputs[0] != inputs[1] {
            return Err("y and dy differ".into());
        }
        axis(self.axis, inputs[0].rank())?;
        Ok(vec![inputs[0].clone()])
    }
    fn flops(&self, _: &[&TensorType], out: &[TensorType]) -> u64 {
        4 * out[0].numel() as u64
    }
    fn attrs(&self) -> Vec<(&'static str, String)> {
        vec![("axis", self.axis.to_string())]
    }
    fn gpu(&self, args: &KernelArgs) -> Result<Vec<Dispatch>, String> {
        let bindings = vec![Bind::In(0), Bind::In(1), Bind::Out(0)];
        let (thread, group) = ("softmax_grad_thread", "softmax_grad_group");
        softmax_kernel(&args.inputs[0].shape, self.axis, thread, group, bindings)
    }
}

impl Eval for SoftmaxGrad {
    fn eval<T: Real>(&self, io: &mut Io<'_, T>) {
        let shape = io.in_shape(0);
        let a = axis(self.axis, shape.len()).expect("checked by infer");
        let (_, len, inner) = around(shape, a);
        let block = len * inner;
        let (ins, outs) = io.split::<1>();
        if block == 0 {
            return;
        }
        outs[0]
            .par_chunks_mut(block)
            .zip(
                ins.get(0)
                    .par_chunks(block)
                    .zip(ins.get(1).par_chunks(block)),
            )
            .for_each(|(dx, (y, dy))| {
                for i in 0..inner {
                    let at = |k: usize| k * inner + i;
                    let mut dot = T::ZERO;
                    for k in 0..len {
                        dot += dy[at(k)] * y[at(k)];
                    }
                    for k in 0..len {
                        dx[at(k)] = y[at(k)] * (dy[at(k)] - dot);
                    }
                }
            });
    }
}

/// Sums a tensor down to a shape it was broadcast from (numpy rules): the gradient of a
/// broadcast. Sequential in element order, so the sum is deterministic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SumTo {
    pub shape: Vec<usize>,
}

impl Primitive for SumTo {
    fn name(&self) -> &'static str {
        "sum_to"
    }
    fn infer(&self, inputs: &[&TensorType]) -> ShapeResult {
        expect_arity(inputs, 1)?;
        let x = inputs[0];
        if super::broadcast(&self.shape, &x.shape)? != x.shape {
            return Err(format!(
                "{} does not broadcast to {}",
                crate::tensor::fmt_shape(&self.shape),
                crate::tensor::fmt_shape(&x.shape)
            ));
        }
        Ok(vec![TensorType::f32(self.shape.clone())])
    }
    fn flops(&self, inputs: &[&TensorType], _: &[TensorType]) -> u64 {
        inputs[0].numel() as u64
    }
    fn attrs(&self) -> Vec<(&'static str, String)> {
        vec![("shape", crate::tensor::fmt_shape(&self.shape))]
    }
    fn gpu(&self, args: &KernelArgs) -> Result<Vec<Dispatch>, String> {
        // Numpy rules reversed: x's leading dims and those the target has as 1 are summed.
        let x = &args.inputs[0].shape;
        let st = strides(x);
        let pad = x.len() - self.shape.len();
        let summed = |d: usize| d < pad || self.shape[d - pad] == 1;
        let split = |sum: bool| -> Vec<(usize, usize)> {
            (0..x.len())
                .filter(|&d| summed(d) == sum)
                .map(|d| (x[d], st[d]))
                .collect()
        };
        reduce_axes(&split(false), &split(true), false)
    }
}

impl Eval for SumTo {
    fn eval<T: Real>(&self, io: &mut Io<'_, T>) {
        let x_shape = io.in_shape(0);
        let (ins, mut outs) = io.split::<1>();
        let (x, y) = (ins.get(0), &mut outs[0]);
        y.fill(T::ZERO);
        let pad = x_shape.len() - self.shape.len();
        // Output stride of input dim d (0 where the output broadcasts).
        let out_stride = |d: usize| -> usize {
            if d < pad || self.shape[d - pad] == 1 {
                0
            } else {
                self.shape[d - pad + 1..].iter().product()
            }
        };
        // Walk x in order with the innermost dim as a run.
        let rank = x_shape.len();
        let inner = *x_shape.last().unwrap_or(&1);
        let inner_stride = if rank == 0 { 0 } else { out_stride(rank - 1) };
        for (r, run) in x.chunks(inner.max(1)).enumerate() {
            // The output offset of run r: its coordinates on the outer dims.
            let (mut base, mut rest) = (0, r);
            for d in (0..rank.saturating_sub(1)).rev() {
                base += (rest % x_shape[d]) * out_stride(d);
                rest /= x_shape[d];
            }
            if inner_stride == 0 {
                let mut acc = y[base];
                for &v in run {
                    acc += v;
                }
                y[base] = acc;
            } else {
                for (j, &v) in run.iter().enumerate() {
                    y[base + j] += v;
                }
            }
        }
    }
}

impl VjpCx<'_> {
    /// Sums a broadcast gradient back to `shape` (identity when already that shape).
    pub fn sum_to(&mut self, t: TensorId, shape: &[usize]) -> Result<TensorId, String> {
        if self.ty(t).shape == shape {
            return Ok(t);
        }
        self.op(
            OpKind::SumTo(SumTo {
                shape: shape.to_vec(),
            }),
            &[t],
        )
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;
    use crate::gradcheck::{Arg, check_op};
    use crate::tensor::StepCtx;

    /// Evaluates `op` once in f64 on the given inputs. Outputs start as NaN, so an element the
    /// kernel forgets to write fails every comparison.
    pub(crate) fn eval_f64(op: &OpKind, ins: &[(TensorType, Vec<f64>)]) -> Vec<Vec<f64>> {
        let ins: Vec<(&TensorType, &[f64])> = ins.iter().map(|(t, v)| (t, v.as_slice())).collect();
        crate::backend::cpu::eval_once(op, &ins, StepCtx::default()).unwrap()
    }

    pub(crate) fn uniform(seed: u64, n: usize, lo: f64, hi: f64) -> Vec<f64> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|_| rng.random_range(lo..hi)).collect()
    }

    #[test]
    fn split_reductions_fill_the_gpu_only_where_sums_are_few_and_long() {
        // ResNet-20's first batchnorm at batch 128: 16 channels of 392 rounds.
        assert_eq!(split_reduction(16, 392), (56, 7));
        // Enough sums to fill the GPU alone, or short ones: one block each.
        assert_eq!(split_reduction(1024, 100_000), (1, 100_000));
        assert_eq!(split_reduction(1, 7), (1, 7));
        assert_eq!(split_reduction(3, 0), (1, 1));
        // One huge sum: at most SPLIT_MAX_BLOCKS partials.
        assert_eq!(split_reduction(1, 1 << 24).0, SPLIT_MAX_BLOCKS);
        for (outputs, rounds) in [(1, 8), (3, 1000), (7, 65_537), (300, 12), (1, 4099)] {
            let (blocks, per) = split_reduction(outputs, rounds);
            assert!((1..=SPLIT_MAX_BLOCKS).contains(&blocks));
            assert!(per >= SPLIT_MIN_ROUNDS || blocks == 1, "{outputs} {rounds}");
            // Every block but the last is whole, and the last is not empty.
            assert!(blocks * per >= rounds && (blocks - 1) * per < rounds);
        }
    }

    pub(crate) fn f32_input(shape: &[usize], seed: u64) -> (TensorType, Vec<f64>) {
        let n = shape.iter().product();
        (TensorType::f32(shape.to_vec()), uniform(seed, n, -2.0, 2.0))
    }

    pub(crate) fn assert_close(got: &[f64], want: &[f64], tol: f64) {
        assert_eq!(got.len(), want.len());
        for (k, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g - w).abs() <= tol * (1.0 + w.abs()),
                "element {k}: {g} vs {w}"
            );
        }
    }

    /// The coordinates of row-major index `k` in `shape`.
    pub(crate) fn unravel(mut k: usize, shape: &[usize]) -> Vec<usize> {
        let mut c = vec![0; shape.len()];
        for d in (0..shape.len()).rev() {
            c[d] = k % shape[d];
            k /= shape[d];
        }
        c
    }

    fn ravel(c: &[usize], shape: &[usize]) -> usize {
        c.iter().zip(shape).fold(0, |acc, (&i, &d)| acc * d + i)
    }

    fn gradcheck(op: OpKind, args: &[Arg]) {
        for seed in 0..2 {
            let r = check_op(op.clone(), args, &[0], seed).unwrap();
            assert!(r.worst < 1e-5, "{op:?} seed {seed}: {r:?}");
            assert!(r.checked > 0);
        }
    }

    const SHAPE: [usize; 4] = [2, 3, 7, 5];

    #[test]
    fn mean_axes_matches_a_naive_mean() {
        let x = f32_input(&SHAPE, 1);
        for axes in [
            vec![2, 3],
            vec![0, 2],
            vec![1],
            vec![3, 0],
            vec![0, 1, 2, 3],
        ] {
            let out_shape: Vec<usize> = (0..4)
                .filter(|i| !axes.contains(i))
                .map(|i| SHAPE[i])
                .collect();
            let count: usize = axes.iter().map(|&a| SHAPE[a]).product();
            let mut want = vec![0.0; out_shape.iter().product()];
            for (k, v) in x.1.iter().enumerate() {
                let c = unravel(k, &SHAPE);
                let kept: Vec<usize> = (0..4).filter(|i| !axes.contains(i)).map(|i| c[i]).collect();
                want[ravel(&kept, &out_shape)] += v / count as f64;
            }
            let op = OpKind::MeanAxes(MeanAxes { axes: axes.clone() });
            let got = eval_f64(&op, std::slice::from_ref(&x));
            assert_close(&got[0], &want, 1e-12);
        }
    }

    #[test]
    fn mean_axes_rejects_bad_axes() {
        let x = TensorType::f32(SHAPE.to_vec());
        for axes in [vec![4], vec![2, 2]] {
            assert!(MeanAxes { axes }.infer(&[&x]).is_err());
        }
    }

    #[test]
    fn mean_axes_gradient() {
        for axes in [vec![2, 3], vec![0, 2], vec![1]] {
            gradcheck(
                OpKind::MeanAxes(MeanAxes { axes }),
                &[Arg::Float(SHAPE.to_vec())],
            );
        }
        gradcheck(
            OpKind::MeanAxes(MeanAxes { axes: vec![2, 3] }),
            &[Arg::Float(vec![1, 3, 7, 5])],
        );
    }

    #[test]
    fn softmax_matches_a_naive_softmax() {
        let mut x = f32_input(&SHAPE, 2);
        // Large logits: only a max-subtracted kernel stays finite.
        x.1[0] = 800.0;
        for (axis, a) in [(1, 1), (-1, 3), (0, 0), (2, 2)] {
            let mut want = vec![0.0; x.1.len()];
            for (k, w) in want.iter_mut().enumerate() {
                let mut c = unravel(k, &SHAPE);
                let at = |c: &mut Vec<usize>, j: usize| {
                    c[a] = j;
                    x.1[ravel(c, &SHAPE)]
                };
                let m = (0..SHAPE[a])
                    .map(|j| at(&mut c, j))
                    .fold(f64::MIN, f64::max);
                let den: f64 = (0..SHAPE[a]).map(|j| (at(&mut c, j) - m).exp()).sum();
                *w = (x.1[k] - m).exp() / den;
            }
            let got = eval_f64(&OpKind::Softmax(Softmax { axis }), std::slice::from_ref(&x));
            assert_close(&got[0], &want, 1e-12);
            assert!(got[0].iter().all(|v| v.is_finite()));
        }
    }

    #[test]
    fn softmax_gradient() {
        for axis in [1, -1, 0] {
            gradcheck(
                OpKind::Softmax(Softmax { axis }),
                &[Arg::Float(SHAPE.to_vec())],
            );
        }
        gradcheck(
            OpKind::Softmax(Softmax { axis: -1 }),
            &[Arg::Float(vec![1, 7])],
        );
    }

    #[test]
    fn sum_to_matches_a_naive_sum() {
        let x = f32_input(&SHAPE, 3);
        for to in [vec![3, 1, 5], vec![1], vec![7, 1], vec![2, 1, 1, 5], vec![]] {
            let pad = SHAPE.len() - to.len();
            let mut want = vec![0.0; to.iter().product()];
            for (k, v) in x.1.iter().enumerate() {
                let c = unravel(k, &SHAPE);
                let o: Vec<usize> = (0..to.len())
                    .map(|d| if to[d] == 1 { 0 } else { c[pad + d] })
                    .collect();
                want[ravel(&o, &to)] += v;
            }
            let op = OpKind::SumTo(SumTo { shape: to.clone() });
            let got = eval_f64(&op, std::slice::from_ref(&x));
            assert_close(&got[0], &want, 1e-12);
        }
    }
}
