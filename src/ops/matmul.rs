//! Matrix product over the last dim: `x [.., K] · wᵀ` with `w [N, K]` (PyTorch's linear
//! layout), and its two gradients. Leading dims of `x` are flattened into the rows. The
//! fusion pass's `MatMulBias` adds a linear layer's bias and its activation in the GEMM's
//! epilogue.

use rayon::prelude::*;
use serde::Serialize;

use super::{
    Cost, ElementwiseFn, Eval, OpKind, Primitive, ShapeResult, UnaryFn, VjpArgs, VjpCx, VjpResult,
    expect_arity, expect_f32,
};

use crate::kernel::cpu::{Io, Mat, Real, matmul, matmul_scratch};
use crate::kernel::gpu::{
    Bind, Dispatch, Epilogue, Gemm, KernelArgs, Params, transpose_pays, transposed,
};
use crate::tensor::{TensorType, fmt_shape};

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MatMul;

/// One strided GEMM (kernels/matmul.wgsl on kernels/gemm.wgsl): `c [m, n] = a [m, k] · b [k, n]`
/// with `a` at `a[i * a_m + l * a_k]`, `b` at `b[l * b_k + j * b_n]`, `c` row-major; `a` is
/// input 0, `b` input 1, `c` output 0.
fn gemm_kernel(
    [m, n, k]: [usize; 3],
    [a_m, a_k]: [usize; 2],
    [b_k, b_n]: [usize; 2],
) -> Result<Vec<Dispatch>, String> {
    strided_gemm([m, n, k], [a_m, a_k], [b_k, b_n], Bind::In(1), 0, None)
}

/// y [m, n] = x [m, k] · wᵀ, w [n, k], then the epilogue if any: the matmul's kernels, with
/// or without a linear layer's bias and activation, so both sum alike. Large products multiply
/// by wᵀ [k, n] copied into the workspace, read along its rows.
fn linear_kernel(
    [m, n, k]: [usize; 3],
    epilogue: Option<Epilogue>,
) -> Result<Vec<Dispatch>, String> {
    if n < 4 || !transpose_pays(m.saturating_mul(n).saturating_mul(k), m) {
        return strided_gemm([m, n, k], [k, 1], [1, k], Bind::In(1), 0, epilogue);
    }
    let (copy, wt, at) = transposed(Bind::In(1), n, k);
    let mut ds = vec![copy];
    ds.extend(strided_gemm([m, n, k], [k, 1], [n, 1], wt, at, epilogue)?);
    Ok(ds)
}

/// `gemm_kernel` with `b` bound to `b` and the GEMM's own workspace from word `at`.
fn strided_gemm(
    [m, n, k]: [usize; 3],
    [a_m, a_k]: [usize; 2],
    [b_k, b_n]: [usize; 2],
    b: Bind,
    at: usize,
    epilogue: Option<Epilogue>,
) -> Result<Vec<Dispatch>, String> {
    let params = Params::new()
        .u32(m)
        .u32(n)
        .u32(k)
        .u32(a_m)
        .u32(a_k)
        .u32(b_k)
        .u32(b_n)
        .u32(usize::from(a_k == 1))
        .u32(usize::from(b_k == 1));
    Gemm {
        operands: include_str!("../../kernels/matmul.wgsl").into(),
        params,
        rows: m,
        cols: n,
        inner: k,
        groups: 1,
        inputs: [Bind::In(0), b],
        epilogue,
    }
    .dispatches_from(at)
}

/// [m, n, k] of the GPU args of x [.., k] and w [n, k] (x·wᵀ, dy·w, the fused linear).
fn sizes(args: &KernelArgs) -> [usize; 3] {
    let w = &args.inputs[1].shape;
    [rows(args.inputs[0]), w[0], w[1]]
}

/// Rows of a tensor whose last dim is the matrix's columns.
fn rows(t: &TensorType) -> usize {
    t.numel() / t.shape.last().copied().unwrap_or(1).max(1)
}

impl Primitive for MatMul {
    fn name(&self) -> &'static str {
        "matmul"
    }
    fn infer(&self, inputs: &[&TensorType]) -> ShapeResult {
        expect_arity(inputs, 2)?;
        let (x, w) = (inputs[0], inputs[1]);
        expect_f32(x, "the input")?;
        let k = *x.shape.last().ok_or("expects an input of rank 1 or more")?;
        if w.rank() != 2 || w.shape[1] != k {
            return Err(format!(
                "input {} does not fit weight {}",
                fmt_shape(&x.shape),
                fmt_shape(&w.shape)
            ));
        }
        let mut shape = x.shape.clone();
        *shape.last_mut().expect("rank >= 1") = w.shape[0];
        Ok(vec![TensorType::f32(shape)])
    }
    fn flops(&self, inputs: &[&TensorType], out: &[TensorType]) -> u64 {
        (2 * inputs[1].shape[1] as u64).saturating_mul(out[0].numel() as u64)
    }
    fn cost(&self) -> Cost {
        Cost::Compute
    }
    fn gpu(&self, args: &KernelArgs) -> Result<Vec<Dispatch>, String> {
        // y [m, n] = x [m, k] · wᵀ, w [n, k].
        let [m, n, k] = sizes(args);
        linear_kernel([m, n, k], None)
    }
    fn vjp(&self, cx: &mut VjpCx, a: &VjpArgs) -> VjpResult {
        let dy = a.dy()?;
        let (x, w) = (a.inputs[0], a.inputs[1]);
        let dx = match a.wants(0) {
            true => Some(cx.op(OpKind::MatMulGradInput(MatMulGradInput), &[dy, w])?),
            false => None,
        };
        let dw = match a.wants(1) {
            true => Some(cx.op(OpKind::MatMulGradWeight(MatMulGradWeight), &[dy, x])?),
            false => None,
        };
        Ok(vec![dx, dw])
    }
}

impl Eval for MatMul {
    fn eval<T: Real>(&self, io: &mut Io<'_, T>) {
        linear(io, None);
    }
    fn scratch(&self, inputs: &[&TensorType], _: &[TensorType], _: usize) -> usize {
        matmul_scratch(rows(inputs[0]), inputs[1].shape[1])
    }
}

/// y = x · wᵀ, then, with `bias` = Some(act), y = act(y + b) row by row (input 2 is b), the
/// bias add and activation evaluated as `Binary` and `Unary` evaluate them.
fn linear<T: Real>(io: &mut Io<'_, T>, bias: Option<Option<UnaryFn>>) {
    let (m, k, n) = (rows(io.in_type(0)), io.in_shape(1)[1], io.in_shape(1)[0]);
    let (ins, outs, scratch) = io.split_scratch::<1>(matmul_scratch(m, k));
    let w = Mat::rows(n, k).t();
    let y = outs.into_iter().next().expect("one output");
    matmul(
        ins.get(0),
        Mat::rows(m, k),
        ins.get(1),
        w,
        y,
        Mat::rows(m, n),
        false,
        scratch,
    );
    let Some(act) = bias else {
        return;
    };
    if y.is_empty() {
        return;
    }
    let b = ins.get(2);
    let rows_per_task = (1 << 14) / n.max(1) + 1;
    y.par_chunks_mut(rows_per_task * n).for_each(|chunk| {
        for row in chunk.chunks_exact_mut(n) {
            for (v, &b) in row.iter_mut().zip(b) {
                let a = *v + b;
                *v = match act {
                    Some(f) => f.apply(a),
                    None => a,
                };
            }
        }
    });
}

/// A linear layer's `matmul`, bias `add` and, optionally, activation as one launch (made by
/// the fusion pass, schedule/fuse/gemm_epilogue.rs): inputs x [.., K], w [N, K], b [N]. The
/// GPU adds the bias and applies the activation to each finished sum in the GEMM's store, or
/// in split-K's reduce after the fixed-order sum of the slices: the bits of the three ops.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MatMulBias {
    pub act: Option<UnaryFn>,
}

impl Primitive for MatMulBias {
    fn name(&self) -> &'static str {
        match self.act {
            None => "matmul_bias",
            Some(_) => "matmul_bias_act",
        }
    }
    fn infer(&self, inputs: &[&TensorType]) -> ShapeResult {
        expect_arity(inputs, 3)?;
        let y = MatMul.infer(&inputs[..2])?;
        let n = inputs[1].shape[0];
        if inputs[2].shape != [n] {
            return Err(format!(
                "bias {} does not fit {n} outputs",
                fmt_shape(&inputs[2].shape)
            ));
        }
        expect_f32(inputs[2], "the bias")?;
        Ok(y)
    }
    fn flops(&self, inputs: &[&TensorType], out: &[TensorType]) -> u64 {
        let per_element = 1 + self.act.map_or(0, |f| f.cost());
        MatMul
            .flops(&inputs[..2], out)
            .saturating_add(out[0].numel() as u64 * per_element)
    }
    fn attrs(&self) -> Vec<(&'static str, String)> {
        let Some(f) = self.act else {
            return Vec::new();
        };
        let mut attrs = vec![("fn", f.name().to_string())];
        attrs.extend(f.attrs());
        attrs
    }
    fn cost(&self) -> Cost {
        Cost::Compute
    }
    fn gpu(&self, args: &KernelArgs) -> Result<Vec<Dispatch>, String> {
        let [m, n, k] = sizes(args);
        let (decls, expr) = match self.act {
            Some(f) => (
                super::elementwise::FNS.to_string(),
                ElementwiseFn::Unary { f }.wgsl_inline(),
            ),
            None => (String::new(), "a".to_string()),
        };
        let epilogue = Epilogue {
            bias: Bind::In(2),
            cols: n,
            decls,
            expr,
        };
        linear_kernel([m, n, k], Some(epilogue))
    }
}

impl Eval for MatMulBias {
    fn eval<T: Real>(&self, io: &mut Io<'_, T>) {
        linear(io, Some(self.act));
    }
    fn scratch(&self, inputs: &[&TensorType], _: &[TensorType], _: usize) -> usize {
        matmul_scratch(rows(inputs[0]), inputs[1].shape[1])
    }
}

/// `dx = dy · w`: dy [.., N], w [N, K] → [.., K].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MatMulGradInput;

impl Primitive for MatMulGradInput {
    fn name(&self) -> &'static str {
        "matmul_grad_input"
    }
    fn infer(&self, inputs: &[&TensorType]) -> ShapeResult {
        expect_arity(inputs, 2)?;
        let (dy, w) = (inputs[0], inputs[1]);
        if w.rank() != 2 || dy.shape.last() != Some(&w.shape[0]) {
            return Err(format!(
                "dy {} does not fit weight {}",
                fmt_shape(&dy.shape),
                fmt_shape(&w.shape)
            ));
        }
        let mut shape = dy.shape.clone();
        *shape.last_mut().expect("rank >= 1") = w.shape[1];
        Ok(vec![TensorType::f32(shape)])
    }
    fn flops(&self, inputs: &[&TensorType], out: &[TensorType]) -> u64 {
        (2 * inputs[1].shape[0] as u64).saturating_mul(out[0].numel() as u64)
    }
    fn cost(&self) -> Cost {
        Cost::Compute
    }
    fn gpu(&self, args: &KernelArgs) -> Result<Vec<Dispatch>, String> {
        // dx [m, k] = dy [m, n] · w [n, k].
        let [m, n, k] = sizes(args);
        gemm_kernel([m, k, n], [n, 1], [k, 1])
    }
}

impl Eval for MatMulGradInput {
    fn eval<T: Real>(&self, io: &mut Io<'_, T>) {
        let (m, n, k) = (rows(io.in_type(0)), io.in_shape(1)[0], io.in_shape(1)[1]);
        let (ins, outs, scratch) = io.split_scratch::<1>(matmul_scratch(m, n));
        matmul(
            ins.get(0),
            Mat::rows(m, n),
            ins.get(1),
            Mat::rows(n, k),
            outs[0],
            Mat::rows(m, k),
            false,
            scratch,
        );
    }
    fn scratch(&self, inputs: &[&TensorType], _: &[TensorType], _: usize) -> usize {
        matmul_scratch(rows(inputs[0]), inputs[1].shape[0])
    }
}

/// `dw = dyᵀ · x` summed over every leading dim: dy [.., N], x [.., K] → [N, K].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MatMulGradWeight;

impl Primitive for MatMulGradWeight {
    fn name(&self) -> &'static str {
        "matmul_grad_weight"
    }
    fn infer(&self, inputs: &[&TensorType]) -> ShapeResult {
        expect_arity(inputs, 2)?;
        let (dy, x) = (inputs[0], inputs[1]);
        let (Some(&n), Some(&k)) = (dy.shape.last(), x.shape.last()) else {
            return Err("expects inputs of rank 1 or more".into());
        };
        if dy.shape[..dy.rank() - 1] != x.shape[..x.rank() - 1] {
            return Err(format!(
                "dy {} and x {} differ in their leading dims",
                fmt_shape(&dy.shape),
                fmt_shape(&x.shape)
            ));
        }
        Ok(vec![TensorType::f32(vec![n, k])])
    }
    fn flops(&self, inputs: &[&TensorType], out: &[TensorType]) -> u64 {
        (2 * rows(inputs[0]) as u64).saturating_mul(out[0].numel() as u64)
    }
    fn cost(&self) -> Cost {
        Cost::Compute
    }
    fn gpu(&self, args: &KernelArgs) -> Result<Vec<Dispatch>, String> {
        // dw [n, k] = dyᵀ · x: dy [m, n], x [m, k]; the inner dim is the m rows.
        let (n, k) = (args.outputs[0].shape[0], args.outputs[0].shape[1]);
        let m = rows(args.inputs[0]);
        gemm_kernel([n, k, m], [1, n], [k, 1])
    }
}

impl Eval for MatMulGradWeight {
    fn eval<T: Real>(&self, io: &mut Io<'_, T>) {
        let (n, k) = (io.out_shape(0)[0], io.out_shape(0)[1]);
        let m = rows(io.in_type(0));
        let (ins, outs, scratch) = io.split_scratch::<1>(matmul_scratch(n, m));
        let dyt = Mat::rows(m, n).t();
        matmul(
            ins.get(0),
            dyt,
            ins.get(1),
            Mat::rows(m, k),
            outs[0],
            Mat::rows(n, k),
            false,
            scratch,
        );
    }
    fn scratch(&self, inputs: &[&TensorType], outputs: &[TensorType], _: usize) -> usize {
        matmul_scratch(outputs[0].shape[0], rows(inputs[0]))
    }
}
