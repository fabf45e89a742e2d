//! Ops that move data without arithmetic: reshape, permute, concat and its gradient slice,
//! gather (embedding lookup) and its gradient.

use rayon::prelude::*;
use serde::Serialize;

use crate::kernel::cpu::{Io, Real};
use crate::kernel::gpu::{Bind, Params, Shader, grid};

use crate::tensor::{DType, TensorId, TensorType, fmt_shape};

use crate::kernel::gpu::{Dispatch, KernelArgs};

use super::{
    Eval, OpKind, Primitive, ShapeResult, VjpArgs, VjpCx, VjpResult, axis, expect_arity, expect_f32,
};

/// movement.wgsl's `Params`, in field order (fields an entry does not use stay 0).
#[derive(Default)]
struct MoveParams {
    n: usize,
    run: usize,
    stride: usize,
    offset: usize,
    vocab: usize,
    width: usize,
    count: usize,
    value: f64,
    /// permute: the output's dims and, for each, the input stride it steps, both padded at the
    /// front to `MAX_PERMUTE_RANK` (dim 1, stride 0).
    dims: [usize; MAX_PERMUTE_RANK],
    strides: [usize; MAX_PERMUTE_RANK],
}

/// One dispatch of kernels/movement.wgsl, one thread per element of `params.n`.
fn kernel(entry: &'static str, bindings: Vec<Bind>, params: MoveParams) -> Dispatch {
    let words = Params::new()
        .u32(params.n)
        .u32(params.run)
        .u32(params.stride)
        .u32(params.offset)
        .u32(params.vocab)
        .u32(params.width)
        .u32(params.count)
        .f32(params.value)
        .f32(f64::NAN);
    let words = params
        .dims
        .iter()
        .chain(&params.strides)
        .fold(words, |w, &v| w.u32(v))
        .done();
    Dispatch {
        shader: Shader::file(include_str!("../../kernels/movement.wgsl"), entry),
        bindings,
        params: words,
        workgroups: grid(params.n),
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Reshape {
    pub shape: Vec<usize>,
}

impl Primitive for Reshape {
    fn name(&self) -> &'static str {
        "reshape"
    }
    fn infer(&self, inputs: &[&TensorType]) -> ShapeResult {
        expect_arity(inputs, 1)?;
        let x = inputs[0];
        let n: usize = self.shape.iter().product();
        if n != x.numel() {
            return Err(format!(
                "cannot reshape {} ({} elements) to {} ({n} elements)",
                fmt_shape(&x.shape),
                x.numel(),
                fmt_shape(&self.shape)
            ));
        }
        Ok(vec![TensorType {
            shape: self.shape.clone(),
            dtype: x.dtype,
        }])
    }
    fn flops(&self, _: &[&TensorType], _: &[TensorType]) -> u64 {
        0
    }
    fn attrs(&self) -> Vec<(&'static str, String)> {
        vec![("shape", fmt_shape(&self.shape))]
    }
    fn vjp(&self, cx: &mut VjpCx, a: &VjpArgs) -> VjpResult {
        let shape = cx.ty(a.inputs[0]).shape.clone();
        let dx = cx.op(OpKind::Reshape(Reshape { shape }), &[a.dy()?])?;
        Ok(vec![Some(dx)])
    }
    fn gpu(&self, args: &KernelArgs) -> Result<Vec<Dispatch>, String> {
        let n = args.numel_out(0);
        Ok(vec![kernel(
            "copy",
            vec![Bind::In(0), Bind::Out(0)],
            MoveParams {
                n,
                ..Default::default()
            },
        )])
    }
}

/// torch.reshape on a contiguous tensor: the same elements in the same (row-major) order.
impl Eval for Reshape {
    fn eval<T: Real>(&self, io: &mut Io<'_, T>) {
        let (ins, outs) = io.split::<1>();
        outs[0].copy_from_slice(ins.get(0));
    }
}

/// The most axes a permute takes (the GPU kernel's fixed-size parameters).
pub const MAX_PERMUTE_RANK: usize = 6;

/// torch.permute over every axis (batch included): output axis d is input axis `perm[d]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Permute {
    pub perm: Vec<usize>,
}

impl Permute {
    /// The permutation that undoes this one: `inverse[perm[d]] = d`.
    pub fn inverse(&self) -> Vec<usize> {
        let mut inv = vec![0; self.perm.len()];
        for (d, &p) in self.perm.iter().enumerate() {
            inv[p] = d;
        }
        inv
    }

    /// The output's dims and, for each, the stride of the input axis it walks, padded at the
    /// front to `MAX_PERMUTE_RANK` with dims of 1 and strides of 0.
    fn walk(&self, x: &[usize]) -> ([usize; MAX_PERMUTE_RANK], [usize; MAX_PERMUTE_RANK]) {
        let mut in_strides = [0; MAX_PERMUTE_RANK];
        let mut s = 1;
        for a in (0..x.len()).rev() {
            in_strides[a] = s;
            s *= x[a];
        }
        let (mut dims, mut strides) = ([1; MAX_PERMUTE_RANK], [0; MAX_PERMUTE_RANK]);
        let pad = MAX_PERMUTE_RANK - self.perm.len();
        for (d, &p) in self.perm.iter().enumerate() {
            dims[pad + d] = x[p];
            strides[pad + d] = in_strides[p];
        }
        (dims, strides)
    }
}

/// Whether `perm` is a permutation of 0..rank; the error says why not.
pub fn check_permutation(perm: &[usize], rank: usize) -> Result<(), String> {
    if perm.len() != rank {
        return Err(format!(
            "permutation {perm:?} has {} axes, the tensor {rank}",
            perm.len()
        ));
    }
    let mut seen = vec![false; rank];
    for &p in perm {
        if p >= rank {
            return Err(format!(
                "permutation {perm:?}: axis {p} is out of range for rank {rank}"
            ));
        }
        if std::mem::replace(&mut seen[p], true) {
            return Err(format!("permutation {perm:?} repeats axis {p}"));
        }
    }
    Ok(())
}

impl Primitive for Permute {
    fn name(&self) -> &'static str {
        "permute"
    }
    fn infer(&self, inputs: &[&TensorType]) -> ShapeResult {
        expect_arity(inputs, 1)?;
        let x = inputs[0];
        check_permutation(&self.perm, x.rank())?;
        if x.rank() > MAX_PERMUTE_RANK {
            return Err(format!(
                "permutes at most {MAX_PERMUTE_RANK} axes, got {}",
                x.rank()
            ));
        }
        Ok(vec![TensorType {
            shape: self.perm.iter().map(|&p| x.shape[p]).collect(),
            dtype: x.dtype,
        }])
    }
    fn flops(&self, _: &[&TensorType], _: &[TensorType]) -> u64 {
        0
    }
    fn attrs(&self) -> Vec<(&'static str, String)> {
        vec![("perm", format!("{:?}", self.perm))]
    }
    fn vjp(&self, cx: &mut VjpCx, a: &VjpArgs) -> VjpResult {
        let perm = self.inverse();
        let dx = cx.op(OpKind::Permute(Permute { perm }), &[a.dy()?])?;
        Ok(vec![Some(dx)])
    }
    fn gpu(&self, args: &KernelArgs) -> Result<Vec<Dispatch>, String> {
        let (dims, strides) = self.walk(&args.inputs[0].shape);
        let params = MoveParams {
            n: args.numel_out(0),
            dims,
            strides,
            ..Default::default()
        };
        Ok(vec![kernel(
            "permute",
            vec![Bind::In(0), Bind::Out(0)],
            params,
        )])
    }
}

/// A strided copy, in parallel over chunks of output rows (the last output axis).
impl Eval for Permute {
    fn eval<T: Real>(&self, io: &mut Io<'_, T>) {
        let (dims, strides) = self.walk(io.in_shape(0));
        let (ins, [y]) = io.split::<1>();
        let x = ins.get(0);
        let last = MAX_PERMUTE_RANK - 1;
        let (width, step) = (dims[last], strides[last]);
        if y.is_empty() {
            return;
        }
        // About 16K elements a task.
        let rows = (16384 / width).max(1);
        y.par_chunks_mut(rows * width)
            .enumerate()
            .for_each(|(c, chunk)| {
                for (r, row) in chunk.chunks_exact_mut(width).enumerate() {
                    // The input offset of this row's first element.
                    let mut rest = c * rows + r;
                    let mut at = 0;
                    for d in (0..last).rev() {
                        at += rest % dims[d] * strides[d];
                        rest /= dims[d];
                    }
                    for (j, v) in row.iter_mut().enumerate() {
                        *v = x[at + j * step];
                    }
                }
            });
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Concat {
    pub axis: i64,
}

impl Primitive for Concat {
    fn name(&self) -> &'static str {
        "concat"
    }
    fn infer(&self, inputs: &[&TensorType]) -> ShapeResult {
        let first = inputs.first().ok_or("takes at least one input")?;
        let a = axis(self.axis, first.rank())?;
        let mut shape = first.shape.clone();
        for t in &inputs[1..] {
            let same_rest = t.rank() == first.rank()
                && (0..t.rank()).all(|i| i == a || t.shape[i] == first.shape[i]);
            if !same_rest || t.dtype != first.dtype {
                return Err(format!(
                    "shapes {} and {} differ outside the concat axis {a}",
                    fmt_shape(&first.shape),
                    fmt_shape(&t.shape)
                ));
            }
            shape[a] += t.shape[a];
        }
        Ok(vec![TensorType {
            shape,
            dtype: first.dtype,
        }])
    }
    fn flops(&self, _: &[&TensorType], _: &[TensorType]) -> u64 {
        0
    }
    fn attrs(&self) -> Vec<(&'static str, String)> {
        vec![("axis", self.axis.to_string())]
    }
    fn vjp(&self, cx: &mut VjpCx, a: &VjpArgs) -> VjpResult {
        let dy = a.dy()?;
        let ax = axis(self.axis, cx.ty(dy).rank())?;
        let mut grads = Vec::with_capacity(a.inputs.len());
        let mut start = 0;
        for (i, &x) in a.inputs.iter().enumerate() {
            let len = cx.ty(x).shape[ax];
            grads.push(match a.wants(i) {
                true => Some(cx.op(
                    OpKind::Slice(Slice {
                        axis: ax,
                        start,
                        len,
                    }),
                    &[dy],
                )?),
                false => None,
            });
            start += len;
        }
        Ok(grads)
    }
    /// One dispatch per input (a concat may have more inputs than a dispatch has bindings),
    /// each copying its rows into their place; empty inputs have nothing to copy.
    fn gpu(&self, args: &KernelArgs) -> Result<Vec<Dispatch>, String> {
        let out = &args.outputs[0].shape;
        let ax = axis(self.axis, out.len())?;
        let inner: usize = out[ax + 1..].iter().product();
        let mut offset = 0;
        let mut ds = Vec::new();
        for (k, x) in args.inputs.iter().enumerate() {
            let run = x.shape[ax] * inner;
            if x.numel() > 0 {
                let params = MoveParams {
                    n: x.numel(),
                    run,
                    stride: out[ax] * inner,
                    offset,
                    ..Default::default()
                };
                ds.push(kernel(
                    "concat_part",
                    vec![Bind::In(k), Bind::Out(0)],
                    params,
                ));
            }
            offset += run;
        }
        Ok(ds)
    }
}

/// torch.cat: the inputs one after another along the axis.
impl Eval for Concat {
    fn eval<T: Real>(&self, io: &mut Io<'_, T>) {
        let out = io.out_shape(0);
        let ax = axis(self.axis, out.len()).expect("checked by infer");
        let outer: usize = out[..ax].iter().product();
        let (ins, outs) = io.split::<1>();
        if outer == 0 {
            return;
        }
        // Each input contributes one contiguous run per outer index.
        let mut at = 0;
        for o in 0..outer {
            for x in ins.iter() {
                let run = x.len() / outer;
                outs[0][at..at + run].copy_from_slice(&x[o * run..(o + 1) * run]);
                at += run;
            }
        }
    }
}

/// `x[.., start..start + len, ..]` along `axis`: the gradient of concat.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Slice {
    pub axis: usize,
    pub start: usize,
    pub len: usize,
}

impl Primitive for Slice {
    fn name(&self) -> &'static str {
        "slice"
    }
    fn infer(&self, inputs: &[&TensorType]) -> ShapeResult {
        expect_arity(inputs, 1)?;
        let x = inputs[0];
        if self.axis >= x.rank() || self.start + self.len > x.shape[self.axis] {
            return Err(format!(
                "cannot take {}..{} along axis {} of {}",
                self.start,
                self.start + self.len,
                self.axis,
                fmt_shape(&x.shape)
            ));
        }
        let mut shape = x.shape.clone();
        shape[self.axis] = self.len;
        Ok(vec![TensorType {
            shape,
            dtype: x.dtype,
        }])
    }
    fn flops(&self, _: &[&TensorType], _: &[TensorType]) -> u64 {
        0
    }
    fn attrs(&self) -> Vec<(&'static str, String)> {
        vec![
            ("axis", self.axis.to_string()),
            ("start", self.start.to_string()),
            ("len", self.len.to_string()),
        ]
    }
    /// dy in its place among zeros: a concat of zero fills before and after it (none where
    /// the slice starts or ends at an end of the axis; dy itself for the whole axis).
    fn vjp(&self, cx: &mut VjpCx, a: &VjpArgs) -> VjpResult {
        let dy = a.dy()?;
        let x = cx.ty(a.inputs[0]).clone();
        let after = x.shape[self.axis] - self.start - self.len;
        let pieces = [(self.start, None), (self.len, Some(dy)), (after, None)];
        Ok(vec![Some(pieces_grad(cx, &x, self.axis, &pieces)?)])
    }
    fn gpu(&self, args: &KernelArgs) -> Result<Vec<Dispatch>, String> {
        Ok(vec![self.kernel(
            &args.inputs[0].shape,
            0,
            args.numel_out(0),
        )])
    }
}

/// The gradient of `x` (of type `x`) from the gradients of consecutive pieces along `axis`,
/// each (length, gradient): the pieces' gradients side by side (`Concat`), zeros where none
/// reaches a piece; empty pieces left out, a lone piece's gradient as it is. Slice's and
/// split's vjp.
fn pieces_grad(
    cx: &mut VjpCx,
    x: &TensorType,
    axis: usize,
    pieces: &[(usize, Option<TensorId>)],
) -> Result<TensorId, String> {
    let mut parts = Vec::with_capacity(pieces.len());
    for &(len, grad) in pieces.iter().filter(|p| p.0 > 0) {
        parts.push(match grad {
            Some(g) => g,
            None => {
                let mut shape = x.shape.clone();
                shape[axis] = len;
                let ty = TensorType {
                    shape,
                    dtype: x.dtype,
                };
                cx.op(OpKind::Fill(Fill { ty, value: 0.0 }), &[])?
            }
        });
    }
    match parts[..] {
        [only] => Ok(only),
        // An empty axis: x has no elements.
        [] => cx.op(
            OpKind::Fill(Fill {
                ty: x.clone(),
                value: 0.0,
            }),
            &[],
        ),
        _ => {
            let concat = Concat { axis: axis as i64 };
            cx.op(OpKind::Concat(concat), &parts)
        }
    }
}

impl Slice {
    /// movement.wgsl's `slice` from x of `shape` into output `out` of `n` elements.
    fn kernel(&self, shape: &[usize], out: usize, n: usize) -> Dispatch {
        let inner: usize = shape[self.axis + 1..].iter().product();
        let params = MoveParams {
            n,
            run: self.len * inner,
            stride: shape[self.axis] * inner,
            offset: self.start * inner,
            ..Default::default()
        };
        kernel("slice", vec![Bind::In(0), Bind::Out(out)], params)
    }

    /// The slice of `x` (of `shape`) into `out`.
    fn copy<T: Copy>(&self, shape: &[usize], x: &[T], out: &mut [T]) {
        let outer: usize = shape[..self.axis].iter().product();
        let inner: usize = shape[self.axis + 1..].iter().product();
        let (from, run) = (self.start * inner, self.len * inner);
        let stride = shape[self.axis] * inner;
        for o in 0..outer {
            out[o * run..(o + 1) * run]
                .copy_from_slice(&x[o * stride + from..o * stride + from + run]);
        }
    }
}

impl Eval for Slice {
    fn eval<T: Real>(&self, io: &mut Io<'_, T>) {
        let x = io.in_shape(0).to_vec();
        let (ins, outs) = io.split::<1>();
        self.copy(&x, ins.get(0), outs[0]);
    }
}

/// Rows of a table [V, D] picked by integer ids [..]: output [.., D] (torch.nn.functional.embedding
/// without padding_idx or max_norm). PyTorch raises on an id outside [0, V); a kernel cannot,
/// so such an id yields a row of NaN, which the loss then shows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Gather;

impl Primitive for Gather {
    fn name(&self) -> &'static str {
        "gather"
    }
    fn infer(&self, inputs: &[&TensorType]) -> ShapeResult {
        expect_arity(inputs, 2)?;
        let (table, ids) = (inputs[0], inputs[1]);
        expect_f32(table, "the table")?;
        if ids.dtype != DType::I32 {
            return Err("expects integer ids: give the model input dtype = \"i32\"".into());
        }
        if table.rank() != 2 {
            return Err(format!(
                "expects a table [V, D], got {}",
                fmt_shape(&table.shape)
            ));
        }
        let mut shape = ids.shape.clone();
        shape.push(table.shape[1]);
        Ok(vec![TensorType::f32(shape)])
    }
    fn flops(&self, _: &[&TensorType], _: &[TensorType]) -> u64 {
        0
    }
    fn vjp(&self, cx: &mut VjpCx, a: &VjpArgs) -> VjpResult {
        if !a.wants(0) {
            return Ok(vec![None, None]);
        }
        let vocab = cx.ty(a.inputs[0]).shape[0];
        let grad = GatherGrad { vocab };
        let dt = cx.op(OpKind::GatherGrad(grad), &[a.inputs[1], a.dy()?])?;
        Ok(vec![Some(dt), None])
    }
    fn gpu(&self, args: &KernelArgs) -> Result<Vec<Dispatch>, String> {
        let params = MoveParams {
            n: args.numel_out(0),
            vocab: args.inputs[0].shape[0],
            width: args.inputs[0].shape[1],
            ..Default::default()
        };
        Ok(vec![kernel(
            "gather",
            vec![Bind::In(0), Bind::In(1), Bind::Out(0)],
            params,
        )])
    }
}

/// The row an id picks, or None outside [0, vocab) (negative ids included; NaN fails both tests).
fn row<T: Real>(id: T, vocab: usize) -> Option<usize> {
    let v = id.to_f64();
    (v >= 0.0 && v < vocab as f64).then_some(v as usize)
}

impl Eval for Gather {
    fn eval<T: Real>(&self, io: &mut Io<'_, T>) {
        let (vocab, d) = (io.in_shape(0)[0], io.in_shape(0)[1]);
        let (ins, outs) = io.split::<1>();
        if d == 0 {
            return;
        }
        for (y, &id) in outs[0].chunks_exact_mut(d).zip(ins.get(1)) {
            match row(id, vocab) {
                Some(r) => y.copy_from_slice(&ins.get(0)[r * d..(r + 1) * d]),
                None => y.fill(T::of(f64::NAN)),
            }
        }
    }
}

/// The gradient of gather: ids [..], dy [.., D] → dtable [vocab, D], each dy row added to its
/// id's row in the order the ids come (sequential: deterministic). Out-of-range ids add nothing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GatherGrad {
    pub vocab: usize,
}

impl Primitive for GatherGrad {
    fn name(&self) -> &'static str {
        "gather_grad"
    }
    fn infer(&self, inputs: &[&TensorType]) -> ShapeResult {
        expect_arity(inputs, 2)?;
        let (ids, dy) = (inputs[0], inputs[1]);
        expect_f32(dy, "dy")?;
        if ids.dtype != DType::I32
            || dy.rank() != ids.rank() + 1
            || dy.shape[..ids.rank()] != ids.shape[..]
        {
            return Err(format!(
                "ids {} do not fit dy {}",
                fmt_shape(&ids.shape),
                fmt_shape(&dy.shape)
            ));
        }
        Ok(vec![TensorType::f32(vec![
            self.vocab,
            dy.shape[ids.rank()],
        ])])
    }
    fn flops(&self, inputs: &[&TensorType], _: &[TensorType]) -> u64 {
        inputs[1].numel() as u64
    }
    fn attrs(&self) -> Vec<(&'static str, String)> {
        vec![("vocab", self.vocab.to_string())]
    }
    /// One thread per element of dtable, each scanning every id in order: deterministic
    /// without atomics, at the cost of vocab · width · ids comparisons.
    fn gpu(&self, args: &KernelArgs) -> Result<Vec<Dispatch>, String> {
        let params = MoveParams {
            n: args.numel_out(0),
            vocab: self.vocab,
            width: args.outputs[0].shape[1],
            count: args.numel_in(0),
            ..Default::default()
        };
        Ok(vec![kernel(
            "gather_grad",
            vec![Bind::In(0), Bind::In(1), Bind::Out(0)],
            params,
        )])
    }
}

impl Eval for GatherGrad {
    fn eval<T: Real>(&self, io: &mut Io<'_, T>) {
        let d = io.out_shape(0)[1];
        let (ins, mut outs) = io.split::<1>();
        let dt = &mut outs[0];
        dt.fill(T::ZERO);
        if d == 0 {
            return;
        }
        for (dy, &id) in ins.get(1).chunks_exact(d).zip(ins.get(0)) {
            if let Some(r) = row(id, self.vocab) {
                for (acc, &g) in dt[r * d..(r + 1) * d].iter_mut().zip(dy) {
                    *acc += g;
                }
            }
        }
    }
}

/// torch.split: `x` cut along `axis` into consecutive pieces of `sizes` (which sum to the
/// axis; at most `MAX_PIECES`), one output each. Its gradient is the concat of the pieces'
/// gradients.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Split {
    pub axis: usize,
    pub sizes: Vec<usize>,
}

/// The most pieces a `Split` makes (the CPU's launches take a fixed number of outputs).
pub const MAX_PIECES: usize = 16;

impl Split {
    /// Each piece as the `Slice` that takes it.
    fn pieces(&self) -> impl Iterator<Item = Slice> + '_ {
        self.sizes.iter().scan(0, |start, &len| {
            *start += len;
            Some(Slice {
                axis: self.axis,
                start: *start - len,
                len,
            })
        })
    }
}

impl Primitive for Split {
    fn name(&self) -> &'static str {
        "split"
    }
    fn infer(&self, inputs: &[&TensorType]) -> ShapeResult {
        expect_arity(inputs, 1)?;
        let x = inputs[0];
        let total: usize = self.sizes.iter().sum();
        let count = self.sizes.len();
        if self.axis >= x.rank()
            || total != x.shape[self.axis]
            || !(1..=MAX_PIECES).contains(&count)
        {
            return Err(format!(
                "cannot split axis {} of {} into {:?}",
                self.axis,
                fmt_shape(&x.shape),
                self.sizes
            ));
        }
        self.pieces()
            .map(|p| Ok(p.infer(inputs)?.remove(0)))
            .collect()
    }
    fn flops(&self, _: &[&TensorType], _: &[TensorType]) -> u64 {
        0
    }
    fn attrs(&self) -> Vec<(&'static str, String)> {
        vec![
            ("axis", self.axis.to_string()),
            ("sizes", format!("{:?}", self.sizes)),
        ]
    }
    /// Pieces no gradient reaches count as zeros.
    fn vjp(&self, cx: &mut VjpCx, a: &VjpArgs) -> VjpResult {
        if !a.wants(0) {
            return Ok(vec![None]);
        }
        let x = cx.ty(a.inputs[0]).clone();
        let pieces: Vec<_> = self
            .sizes
            .iter()
            .copied()
            .zip(a.grads.iter().copied())
            .collect();
        Ok(vec![Some(pieces_grad(cx, &x, self.axis, &pieces)?)])
    }
    fn gpu(&self, args: &KernelArgs) -> Result<Vec<Dispatch>, String> {
        let x = &args.inputs[0].shape;
        Ok(self
            .pieces()
            .enumerate()
            .filter(|&(k, _)| args.numel_out(k) > 0)
            .map(|(k, piece)| piece.kernel(x, k, args.numel_out(k)))
            .collect())
    }
}

impl Eval for Split {
    fn eval<T: Real>(&self, io: &mut Io<'_, T>) {
        let x = io.in_shape(0).to_vec();
        let (ins, mut outs) = io.split::<MAX_PIECES>();
        for (piece, out) in self.pieces().zip(outs.iter_mut()) {
            piece.copy(&x, ins.get(0), out);
        }
    }
}

/// The causal mask on scores `[.., T, S]`: element (i, j) with key j past query i (j > i, as
/// torch.tril keeps) becomes `value`, the rest is copied. With value −∞ a softmax after it
/// gives those keys no weight; its gradient is the same op with value 0 on dy.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CausalFill {
    pub value: f64,
}

impl Primitive for CausalFill {
    fn name(&self) -> &'static str {
        "causal_fill"
    }
    fn infer(&self, inputs: &[&TensorType]) -> ShapeResult {
        expect_arity(inputs, 1)?;
        expect_f32(inputs[0], "the input")?;
        if inputs[0].rank() < 2 {
            return Err(format!(
                "expects scores [.., queries, keys], got {}",
                fmt_shape(&inputs[0].shape)
            ));
        }
        Ok(vec![inputs[0].clone()])
    }
    fn flops(&self, _: &[&TensorType], _: &[TensorType]) -> u64 {
        0
    }
    fn attrs(&self) -> Vec<(&'static str, String)> {
        vec![("value", self.value.to_string())]
    }
    fn vjp(&self, cx: &mut VjpCx, a: &VjpArgs) -> VjpResult {
        let dy = a.dy()?;
        let zero = OpKind::CausalFill(CausalFill { value: 0.0 });
        Ok(vec![a.wants(0).then(|| cx.op(zero, &[dy])).transpose()?])
    }
    fn gpu(&self, args: &KernelArgs) -> Result<Vec<Dispatch>, String> {
        let x = &args.inputs[0].shape;
        let params = MoveParams {
            n: args.numel_out(0),
            run: x[x.len() - 1],
            stride: x[x.len() - 2],
            value: self.value,
            ..Default::default()
        };
        Ok(vec![kernel(
            "causal_fill",
            vec![Bind::In(0), Bind::Out(0)],
            params,
        )])
    }
}

impl Eval for CausalFill {
    fn eval<T: Real>(&self, io: &mut Io<'_, T>) {
        let x = io.in_shape(0);
        let (t, s) = (x[x.len() - 2], x[x.len() - 1]);
        let (ins, outs) = io.split::<1>();
        let fill = T::of(self.value);
        for (k, (y, &v)) in outs[0].iter_mut().zip(ins.get(0)).enumerate() {
            let (i, j) = ((k / s) % t, k % s);
            *y = if j > i { fill } else { v };
        }
    }
}

/// A constant tensor (the loss gradient's seed of 1).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Fill {
    pub ty: TensorType,
    pub value: f64,
}

impl Primitive for Fill {
    fn name(&self) -> &'static str {
        "fill"
    }
    fn infer(&self, inputs: &[&TensorType]) -> ShapeResult {
        expect_arity(inputs, 0)?;
        Ok(vec![self.ty.clone()])
    }
    fn flops(&self, _: &[&TensorType], _: &[TensorType]) -> u64 {
        0
    }
    fn attrs(&self) -> Vec<(&'static str, String)> {
        vec![("value", self.value.to_string())]
    }
    fn gpu(&self, args: &KernelArgs) -> Result<Vec<Dispatch>, String> {
        let params = MoveParams {
            n: args.numel_out(0),
            value: self.value,
            ..Default::default()
        };
        Ok(vec![kernel("fill", vec![Bind::Out(0)], params)])
    }
}

impl Eval for Fill {
    fn eval<T: Real>(&self, io: &mut Io<'_, T>) {
        let (_, outs) = io.split::<1>();
        outs[0].fill(T::of(self.value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{Arg, check_op};
    use crate::tensor::StepCtx;

    /// Evaluates `op` once; outputs start as garbage so an unwritten element shows.
    fn run(op: &OpKind, ins: &[(&[f64], TensorType)]) -> Vec<Vec<f64>> {
        let types: Vec<&TensorType> = ins.iter().map(|(_, t)| t).collect();
        let out_types = op.primitive().infer(&types).unwrap();
        let mut outs: Vec<Vec<f64>> = out_types.iter().map(|t| vec![777.0; t.numel()]).collect();
        let bufs = outs.iter_mut().map(|v| v.as_mut_slice()).collect();
        let values = ins.iter().map(|(v, _)| *v).collect();
        let mut io = Io::new(values, bufs, types, &out_types, StepCtx::default());
        op.eval(&mut io);
        outs
    }

    fn data(n: usize, salt: f64) -> Vec<f64> {
        (0..n).map(|i| (i as f64 * 0.37 + salt).sin()).collect()
    }

    fn ids(shape: &[usize]) -> TensorType {
        TensorType {
            shape: shape.to_vec(),
            dtype: DType::I32,
        }
    }

    fn unravel(mut flat: usize, shape: &[usize]) -> Vec<usize> {
        let mut c = vec![0; shape.len()];
        for d in (0..shape.len()).rev() {
            c[d] = flat % shape[d];
            flat /= shape[d];
        }
        c
    }

    fn ravel(c: &[usize], shape: &[usize]) -> usize {
        c.iter().zip(shape).fold(0, |acc, (&c, &d)| acc * d + c)
    }

    fn assert_grad(op: OpKind, args: &[Arg]) {
        for seed in 0..3 {
            let r = check_op(op.clone(), args, &[0], seed).unwrap();
            assert!(r.worst < 1e-5, "{op:?} seed {seed}: {r:?}");
            assert!(r.checked > 0);
        }
    }

    #[test]
    fn reshape_copies_in_order() {
        let x = data(30, 0.0);
        let op = OpKind::Reshape(Reshape { shape: vec![5, 6] });
        let y = run(&op, &[(&x, TensorType::f32(vec![3, 5, 2]))]);
        assert_eq!(y[0], x);
        let op = Reshape { shape: vec![4, 8] };
        assert!(op.infer(&[&TensorType::f32(vec![3, 5, 2])]).is_err());
    }

    #[test]
    fn reshape_gradient() {
        let op = OpKind::Reshape(Reshape { shape: vec![5, 6] });
        assert_grad(op, &[Arg::Float(vec![3, 5, 2])]);
    }

    #[test]
    fn permute_matches_naive_indexing() {
        let cases: [(&[usize], &[usize]); 6] = [
            (&[3, 5, 7], &[0, 2, 1]),
            (&[2, 3, 4, 5], &[0, 3, 1, 2]),
            (&[2, 3, 4, 5], &[3, 2, 1, 0]),
            (&[4, 3, 2, 1, 3, 2], &[5, 0, 3, 1, 4, 2]),
            (&[6, 1], &[1, 0]),
            (&[3, 0, 2], &[2, 1, 0]),
        ];
        for (shape, perm) in cases {
            let x = data(shape.iter().product(), 0.3);
            let op = OpKind::Permute(Permute {
                perm: perm.to_vec(),
            });
            let y = run(&op, &[(&x, TensorType::f32(shape.to_vec()))]);
            let out_shape: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
            // y[c] = x[c'] with c'[perm[d]] = c[d].
            let naive: Vec<f64> = (0..out_shape.iter().product())
                .map(|flat| {
                    let c = unravel(flat, &out_shape);
                    let mut src = vec![0; shape.len()];
                    for (d, &p) in perm.iter().enumerate() {
                        src[p] = c[d];
                    }
                    x[ravel(&src, shape)]
                })
                .collect();
            assert_eq!(y[0], naive, "{shape:?} by {perm:?}");
        }
        // Large enough for several parallel chunks, with short rows.
        let shape = [3, 70, 200, 2];
        let x = data(shape.iter().product(), 0.1);
        let op = OpKind::Permute(Permute {
            perm: vec![2, 0, 1, 3],
        });
        let y = run(&op, &[(&x, TensorType::f32(shape.to_vec()))]);
        let back = OpKind::Permute(Permute {
            perm: vec![1, 2, 0, 3],
        });
        let z = run(&back, &[(&y[0], TensorType::f32(vec![200, 3, 70, 2]))]);
        assert_eq!(z[0], x);
    }

    #[test]
    fn permute_rejects_what_is_not_a_permutation() {
        let x = TensorType::f32(vec![2, 3, 4]);
        for (perm, says) in [
            (vec![0, 1], "has 2 axes, the tensor 3"),
            (vec![0, 1, 3], "axis 3 is out of range"),
            (vec![0, 1, 1], "repeats axis 1"),
        ] {
            let err = Permute { perm }.infer(&[&x]).unwrap_err();
            assert!(err.contains(says), "{err}");
        }
        let big = TensorType::f32(vec![1; 7]);
        let perm = (0..7).collect();
        assert!(Permute { perm }.infer(&[&big]).is_err());
        let p = Permute {
            perm: vec![2, 0, 3, 1],
        };
        assert_eq!(p.inverse(), vec![1, 3, 0, 2]);
    }

    #[test]
    fn permute_gradient() {
        let op = |perm: &[usize]| {
            OpKind::Permute(Permute {
                perm: perm.to_vec(),
            })
        };
        assert_grad(op(&[0, 2, 1]), &[Arg::Float(vec![3, 5, 7])]);
        assert_grad(op(&[0, 3, 1, 2]), &[Arg::Float(vec![2, 3, 4, 5])]);
    }

    #[test]
    fn concat_matches_naive_indexing() {
        let cases: [(&[&[usize]], i64); 4] = [
            (&[&[2, 3, 4], &[2, 1, 4], &[2, 5, 4]], 1),
            (&[&[3, 2], &[3, 5]], -1),
            (&[&[1, 3], &[4, 3]], 0),
            (&[&[2, 0, 3], &[2, 2, 3]], 1),
        ];
        for (shapes, ax) in cases {
            let xs: Vec<Vec<f64>> = shapes
                .iter()
                .enumerate()
                .map(|(i, s)| data(s.iter().product(), i as f64))
                .collect();
            let ins: Vec<(&[f64], TensorType)> = xs
                .iter()
                .zip(shapes)
                .map(|(x, s)| (x.as_slice(), TensorType::f32(s.to_vec())))
                .collect();
            let y = run(&OpKind::Concat(Concat { axis: ax }), &ins);
            let a = axis(ax, shapes[0].len()).unwrap();
            let mut out_shape = shapes[0].to_vec();
            out_shape[a] = shapes.iter().map(|s| s[a]).sum();
            let naive: Vec<f64> = (0..out_shape.iter().product())
                .map(|flat| {
                    let mut c = unravel(flat, &out_shape);
                    let mut i = 0;
                    while c[a] >= shapes[i][a] {
                        c[a] -= shapes[i][a];
                        i += 1;
                    }
                    xs[i][ravel(&c, shapes[i])]
                })
                .collect();
            assert_eq!(y[0], naive, "{shapes:?} axis {ax}");
        }
    }

    #[test]
    fn slice_matches_naive_indexing() {
        let shape = [3, 7, 2];
        let x = data(42, 0.5);
        for (ax, start, len) in [(1, 2, 4), (0, 1, 2), (2, 1, 1), (1, 0, 7), (1, 7, 0)] {
            let op = Slice {
                axis: ax,
                start,
                len,
            };
            let y = run(
                &OpKind::Slice(op.clone()),
                &[(&x, TensorType::f32(shape.to_vec()))],
            );
            let mut out_shape = shape.to_vec();
            out_shape[ax] = len;
            let naive: Vec<f64> = (0..out_shape.iter().product())
                .map(|flat| {
                    let mut c = unravel(flat, &out_shape);
                    c[ax] += start;
                    x[ravel(&c, &shape)]
                })
                .collect();
            assert_eq!(y[0], naive, "{op:?}");
        }
        let too_far = Slice {
            axis: 1,
            start: 5,
            len: 3,
        };
        assert!(too_far.infer(&[&TensorType::f32(shape.to_vec())]).is_err());
    }

    #[test]
    fn concat_gradient_slices_dy() {
        let op = |axis| OpKind::Concat(Concat { axis });
        assert_grad(
            op(1),
            &[
                Arg::Float(vec![2, 3, 5]),
                Arg::Float(vec![2, 1, 5]),
                Arg::Float(vec![2, 4, 5]),
            ],
        );
        assert_grad(op(-1), &[Arg::Float(vec![3, 2]), Arg::Float(vec![3, 5])]);
        assert_grad(op(0), &[Arg::Float(vec![1, 3]), Arg::Float(vec![4, 3])]);
        // An input that wants no gradient gets none, the others still do.
        assert_grad(
            op(0),
            &[Arg::Const(vec![2, 3], -1.0, 1.0), Arg::Float(vec![3, 3])],
        );
    }

    #[test]
    fn slice_gradient_scatters_dy_into_zeros() {
        let op = |axis, start, len| OpKind::Slice(Slice { axis, start, len });
        let x = |s: &[usize]| [Arg::Float(s.to_vec())];
        // A middle range (zeros on both sides), a first row (ViT's class token), a tail, the
        // whole axis (dy itself), and an axis that is not the last.
        assert_grad(op(1, 2, 3), &x(&[2, 7, 3]));
        assert_grad(op(1, 0, 1), &x(&[3, 5, 4]));
        assert_grad(op(2, 3, 2), &x(&[2, 3, 5]));
        assert_grad(op(0, 0, 4), &x(&[4, 3]));
        assert_grad(op(0, 1, 1), &x(&[3, 2, 2]));
    }

    #[test]
    fn gather_picks_rows_and_marks_bad_ids() {
        let (v, d) = (5, 3);
        let table = data(v * d, 0.2);
        let id_values = [4.0, 0.0, 2.0, 2.0, -1.0, 5.0, f64::NAN, 1.0];
        let y = run(
            &OpKind::Gather(Gather),
            &[
                (&table, TensorType::f32(vec![v, d])),
                (&id_values, ids(&[2, 4])),
            ],
        );
        for (i, &id) in id_values.iter().enumerate() {
            for j in 0..d {
                let got = y[0][i * d + j];
                if (0.0..v as f64).contains(&id) {
                    assert_eq!(got, table[id as usize * d + j]);
                } else {
                    assert!(got.is_nan(), "id {id} gave {got}");
                }
            }
        }
    }

    #[test]
    fn gather_grad_sums_rows_per_id() {
        let (v, d) = (4, 3);
        let id_values = [3.0, 1.0, 3.0, 7.0, 0.0, 3.0];
        let dy = data(id_values.len() * d, 1.0);
        let dt = run(
            &OpKind::GatherGrad(GatherGrad { vocab: v }),
            &[
                (&id_values, ids(&[3, 2])),
                (&dy, TensorType::f32(vec![3, 2, d])),
            ],
        );
        for r in 0..v {
            for j in 0..d {
                let naive: f64 = (0..id_values.len())
                    .filter(|&i| id_values[i] == r as f64)
                    .map(|i| dy[i * d + j])
                    .sum();
                assert_eq!(dt[0][r * d + j], naive);
            }
        }
        // Row 2 is never picked: zero, not the buffer's old contents.
        assert!(dt[0][2 * d..3 * d].iter().all(|&x| x == 0.0));
    }

    #[test]
    fn gather_gradient() {
        // Ids repeat (15 draws from 7 rows), so accumulation is checked too.
        assert_grad(
            OpKind::Gather(Gather),
            &[Arg::Float(vec![7, 3]), Arg::Ids(vec![3, 5], 7)],
        );
        assert_grad(
            OpKind::Gather(Gather),
            &[Arg::Float(vec![2, 5]), Arg::Ids(vec![9], 2)],
        );
    }
}
