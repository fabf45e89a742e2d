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

/// One GEMM per group from a single launch: `gemm_kernel`'s product for each of `groups`
/// matrices of `a` and `b`, `a_g` and `b_g` values apart; `c` holds them one after another.
fn batched_gemm_kernel(
    groups: usize,
    [m, n, k]: [usize; 3],
    [a_g, a_m, a_k]: [usize; 3],
    [b_g, b_k, b_n]: [usize; 3],
) -> Result<Vec<Dispatch>, String> {
    Gemm {
        groups,
        ..gemm(
            [m, n, k],
            [a_g, a_m, a_k],
            [b_g, b_k, b_n],
            Bind::In(1),
            None,
        )
    }
    .dispatches()
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
    gemm([m, n, k], [0, a_m, a_k], [0, b_k, b_n], b, epilogue).dispatches_from(at)
}

/// The `Gemm` of kernels/matmul.wgsl over `a` (input 0) and `b`, strides along group, rows
/// and inner dim of `a` and along group, inner dim and columns of `b`; one group.
fn gemm(
    [m, n, k]: [usize; 3],
    [a_g, a_m, a_k]: [usize; 3],
    [b_g, b_k, b_n]: [usize; 3],
    b: Bind,
    epilogue: Option<Epilogue>,
) -> Gemm {
    let params = Params::new()
        .u32(m)
        .u32(n)
        .u32(k)
        .u32(a_m)
        .u32(a_k)
        .u32(b_k)
        .u32(b_n)
        .u32(a_g)
        .u32(b_g)
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

/// torch.matmul of two activations with equal batch dims: `c [.., M, N] = op(a) · op(b)`,
/// where op transposes the last two dims of `a` [.., K, M] when `trans_a` and of `b` [.., N, K]
/// when `trans_b` (so `q · kᵀ` needs no transposed copy). Each product is summed in order of
/// K, on the CPU and the GPU alike; the GPU runs every batch's product from one launch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BatchMatMul {
    pub trans_a: bool,
    pub trans_b: bool,
}

/// [groups, m, n, k] of a batched product over inputs of these shapes (checked by `infer`).
fn batch_sizes(op: &BatchMatMul, a: &[usize], b: &[usize]) -> [usize; 4] {
    let r = a.len();
    let groups = a[..r - 2].iter().product();
    let (m, k) = match op.trans_a {
        false => (a[r - 2], a[r - 1]),
        true => (a[r - 1], a[r - 2]),
    };
    let n = if op.trans_b { b[r - 2] } else { b[r - 1] };
    [groups, m, n, k]
}

impl BatchMatMul {
    /// Strides of `a` along (group, rows, inner) and of `b` along (group, inner, columns).
    fn strides(&self, [_, m, n, k]: [usize; 4]) -> ([usize; 3], [usize; 3]) {
        let a = match self.trans_a {
            false => [m * k, k, 1],
            true => [m * k, 1, m],
        };
        let b = match self.trans_b {
            false => [k * n, n, 1],
            true => [k * n, 1, k],
        };
        (a, b)
    }
}

impl Primitive for BatchMatMul {
    fn name(&self) -> &'static str {
        "batch_matmul"
    }
    fn infer(&self, inputs: &[&TensorType]) -> ShapeResult {
        expect_arity(inputs, 2)?;
        let (a, b) = (inputs[0], inputs[1]);
        expect_f32(a, "the left operand")?;
        expect_f32(b, "the right operand")?;
        let r = a.rank();
        if r < 2 || b.rank() != r || a.shape[..r - 2] != b.shape[..r - 2] {
            return Err(format!(
                "expects operands of rank 2 or more with equal batch dims, got {} and {}",
                fmt_shape(&a.shape),
                fmt_shape(&b.shape)
            ));
        }
        let ka = if self.trans_a {
            a.shape[r - 2]
        } else {
            a.shape[r - 1]
        };
        let kb = if self.trans_b {
            b.shape[r - 1]
        } else {
            b.shape[r - 2]
        };
        if ka != kb {
            return Err(format!(
                "{}{} · {}{}: inner dims {ka} and {kb} differ",
                fmt_shape(&a.shape),
                if self.trans_a { "ᵀ" } else { "" },
                fmt_shape(&b.shape),
                if self.trans_b { "ᵀ" } else { "" },
            ));
        }
        let [_, m, n, _] = batch_sizes(self, &a.shape, &b.shape);
        let mut shape = a.shape[..r - 2].to_vec();
        shape.extend([m, n]);
        Ok(vec![TensorType::f32(shape)])
    }
    fn flops(&self, inputs: &[&TensorType], _: &[TensorType]) -> u64 {
        let [g, m, n, k] = batch_sizes(self, &inputs[0].shape, &inputs[1].shape);
        2 * [g, m, n, k]
            .iter()
            .fold(1u64, |p, &d| p.saturating_mul(d as u64))
    }
    fn attrs(&self) -> Vec<(&'static str, String)> {
        let mut attrs = Vec::new();
        if self.trans_a {
            attrs.push(("trans_a", "true".into()));
        }
        if self.trans_b {
            attrs.push(("trans_b", "true".into()));
        }
        attrs
    }
    fn cost(&self) -> Cost {
        Cost::Compute
    }
    fn gpu(&self, args: &KernelArgs) -> Result<Vec<Dispatch>, String> {
        let sizes = batch_sizes(self, &args.inputs[0].shape, &args.inputs[1].shape);
        let [groups, m, n, k] = sizes;
        let ([a_g, a_m, a_k], [b_g, b_k, b_n]) = self.strides(sizes);
        batched_gemm_kernel(groups, [m, n, k], [a_g, a_m, a_k], [b_g, b_k, b_n])
    }
    /// With c = op(a)·op(b): dop(a) = dc·op(b)ᵀ and dop(b) = op(a)ᵀ·dc, each a batched
    /// product of its own, arranged so that no operand is copied transposed.
    fn vjp(&self, cx: &mut VjpCx, a: &VjpArgs) -> VjpResult {
        let dc = a.dy()?;
        let (x, y) = (a.inputs[0], a.inputs[1]);
        let bmm = |trans_a, trans_b| OpKind::BatchMatMul(BatchMatMul { trans_a, trans_b });
        let (da, db) = match (self.trans_a, self.trans_b) {
            (false, false) => ((bmm(false, true), [dc, y]), (bmm(true, false), [x, dc])),
            (false, true) => ((bmm(false, false), [dc, y]), (bmm(true, false), [dc, x])),
            (true, false) => ((bmm(false, true), [y, dc]), (bmm(false, false), [x, dc])),
            (true, true) => ((bmm(true, true), [y, dc]), (bmm(true, true), [dc, x])),
        };
        let da = match a.wants(0) {
            true => Some(cx.op(da.0, &da.1)?),
            false => None,
        };
        let db = match a.wants(1) {
            true => Some(cx.op(db.0, &db.1)?),
            false => None,
        };
        Ok(vec![da, db])
    }
}

impl Eval for BatchMatMul {
    fn eval<T: Real>(&self, io: &mut Io<'_, T>) {
        let sizes = batch_sizes(self, io.in_shape(0), io.in_shape(1));
        let [groups, m, n, k] = sizes;
        let ([a_g, a_m, a_k], [b_g, b_k, b_n]) = self.strides(sizes);
        let (ins, outs, scratch) = io.split_scratch::<1>(matmul_scratch(m, k));
        let (a, b) = (ins.get(0), ins.get(1));
        let c = outs.into_iter().next().expect("one output");
        for g in 0..groups {
            matmul(
                &a[g * a_g..],
                Mat {
                    rows: m,
                    cols: k,
                    row: a_m,
                    col: a_k,
                },
                &b[g * b_g..],
                Mat {
                    rows: k,
                    cols: n,
                    row: b_k,
                    col: b_n,
                },
                &mut c[g * m * n..(g + 1) * m * n],
                Mat::rows(m, n),
                false,
                scratch,
            );
        }
    }
    fn scratch(&self, inputs: &[&TensorType], _: &[TensorType], _: usize) -> usize {
        let [_, m, _, k] = batch_sizes(self, &inputs[0].shape, &inputs[1].shape);
        matmul_scratch(m, k)
    }
}
