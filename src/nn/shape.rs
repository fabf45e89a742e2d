use serde::Deserialize;

use super::lower::{Arity, LayerSpec};
use crate::nn::Lower;
use crate::ops::{
    BatchMatMul, Binary, BinaryFn, Concat, OpKind, Permute, Reshape, Slice, broadcast,
};
use crate::tensor::TensorId;
use crate::tensor::fmt_shape;

/// All dims of a sample into one: [C, H, W] → [C·H·W].
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Flatten {}

impl LayerSpec for Flatten {
    fn lower(&self, cx: &mut Lower, inputs: &[TensorId]) -> Result<TensorId, String> {
        let n: usize = cx.sample(inputs[0]).iter().product();
        let shape = vec![cx.batch(), n];
        cx.op(OpKind::Reshape(Reshape { shape }), &inputs[..1])
    }
}

/// A new per-sample shape with the same number of elements; one dim may be -1 (inferred).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReshapeSpec {
    pub shape: Vec<i64>,
}

impl LayerSpec for ReshapeSpec {
    fn lower(&self, cx: &mut Lower, inputs: &[TensorId]) -> Result<TensorId, String> {
        let s = cx.sample(inputs[0]).to_vec();
        let n: usize = s.iter().product();
        let holes = self.shape.iter().filter(|&&d| d == -1).count();
        let bad = || {
            format!(
                "bad shape {:?}: dims are positive, with at most one -1",
                self.shape
            )
        };
        if self.shape.iter().any(|&d| d == 0 || d < -1) || holes > 1 {
            return Err(bad());
        }
        // Checked: the dims come straight from the config.
        let known = self
            .shape
            .iter()
            .filter(|&&d| d != -1)
            .try_fold(1usize, |acc, &d| acc.checked_mul(d as usize))
            .filter(|&k| k <= n.max(1))
            .ok_or_else(|| {
                format!(
                    "cannot reshape {} ({n} elements) to {:?}",
                    fmt_shape(&s),
                    self.shape
                )
            })?;
        let target: Vec<usize> = self
            .shape
            .iter()
            .map(|&d| if d == -1 { n / known } else { d as usize })
            .collect();
        if target.iter().product::<usize>() != n {
            return Err(format!(
                "cannot reshape {} ({n} elements) to {:?}",
                fmt_shape(&s),
                self.shape
            ));
        }
        let mut shape = vec![cx.batch()];
        shape.extend(target);
        cx.op(OpKind::Reshape(Reshape { shape }), &inputs[..1])
    }
}

/// The per-sample axes in a new order (torch's `x.permute(dims)` on a sample): output axis d is
/// input axis `dims[d]`; negative axes count from the end. The batch axis stays first.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PermuteSpec {
    pub dims: Vec<i64>,
}

impl LayerSpec for PermuteSpec {
    fn lower(&self, cx: &mut Lower, inputs: &[TensorId]) -> Result<TensorId, String> {
        let s = cx.sample(inputs[0]).to_vec();
        if self.dims.len() != s.len() {
            return Err(format!(
                "dims {:?} must order all {} axes of {}",
                self.dims,
                s.len(),
                fmt_shape(&s)
            ));
        }
        let mut perm = vec![0];
        for &d in &self.dims {
            let a = cx.sample_axis(inputs[0], d);
            perm.push(a.map_err(|e| format!("dims {:?}: {e}", self.dims))?);
        }
        let mut sorted = perm.clone();
        sorted.sort_unstable();
        if sorted.windows(2).any(|w| w[0] == w[1]) {
            return Err(format!(
                "dims {:?} is not a permutation of the axes of {}: an axis repeats",
                self.dims,
                fmt_shape(&s)
            ));
        }
        cx.op(OpKind::Permute(Permute { perm }), &inputs[..1])
    }
}

/// Two per-sample axes swapped (torch.transpose on a sample; negative axes count from the end).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransposeSpec {
    pub dims: [i64; 2],
}

impl LayerSpec for TransposeSpec {
    fn lower(&self, cx: &mut Lower, inputs: &[TensorId]) -> Result<TensorId, String> {
        let s = cx.sample(inputs[0]).to_vec();
        let axis = |d: i64| {
            let a = cx.sample_axis(inputs[0], d);
            a.map_err(|e| format!("dims {:?}: {e}", self.dims))
        };
        let (a, b) = (axis(self.dims[0])?, axis(self.dims[1])?);
        let mut perm: Vec<usize> = (0..=s.len()).collect();
        perm.swap(a, b);
        cx.op(OpKind::Permute(Permute { perm }), &inputs[..1])
    }
}

fn elementwise(
    cx: &mut Lower,
    inputs: &[TensorId],
    f: BinaryFn,
    name: &str,
) -> Result<TensorId, String> {
    // Check all per-sample shapes first, so the message names them without the batch dim.
    let mut shape = cx.sample(inputs[0]).to_vec();
    for &t in &inputs[1..] {
        shape = broadcast(&shape, cx.sample(t)).map_err(|_| {
            let all: Vec<String> = inputs.iter().map(|&t| fmt_shape(cx.sample(t))).collect();
            format!("cannot {name} shapes {}", all.join(" and "))
        })?;
    }
    // Broadcasting aligns trailing dims, which for batched tensors would match a sample dim
    // against the batch: give lower-rank samples leading 1s first ([N, 4] → [N, 1, 4]).
    let mut aligned = Vec::with_capacity(inputs.len());
    for &t in inputs {
        let s = cx.sample(t).to_vec();
        if s.len() == shape.len() {
            aligned.push(t);
            continue;
        }
        let mut full = vec![cx.batch()];
        full.extend(std::iter::repeat_n(1, shape.len() - s.len()));
        full.extend(s);
        aligned.push(cx.op(OpKind::Reshape(Reshape { shape: full }), &[t])?);
    }
    let mut acc = aligned[0];
    for &t in &aligned[1..] {
        acc = cx.op(OpKind::Binary(Binary { f }), &[acc, t])?;
    }
    Ok(acc)
}

/// Elementwise sum of two or more tensors (numpy broadcasting).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Add {}

impl LayerSpec for Add {
    const ARITY: Arity = Arity::AtLeastTwo;
    fn lower(&self, cx: &mut Lower, inputs: &[TensorId]) -> Result<TensorId, String> {
        elementwise(cx, inputs, BinaryFn::Add, "add")
    }
}

/// Elementwise product of two or more tensors (numpy broadcasting).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mul {}

impl LayerSpec for Mul {
    const ARITY: Arity = Arity::AtLeastTwo;
    fn lower(&self, cx: &mut Lower, inputs: &[TensorId]) -> Result<TensorId, String> {
        elementwise(cx, inputs, BinaryFn::Mul, "multiply")
    }
}

/// torch.matmul of two activations with the same leading dims (batch included): `a [.., M, K]
/// · b [.., K, N]`, either operand's last two dims transposed first where asked.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatMulSpec {
    #[serde(default)]
    pub transpose_a: bool,
    #[serde(default)]
    pub transpose_b: bool,
}

impl LayerSpec for MatMulSpec {
    const ARITY: Arity = Arity::AtLeastTwo;
    fn lower(&self, cx: &mut Lower, inputs: &[TensorId]) -> Result<TensorId, String> {
        if inputs.len() != 2 {
            return Err(format!(
                "multiplies two tensors, got {} inputs",
                inputs.len()
            ));
        }
        let (a, b) = (cx.sample(inputs[0]).to_vec(), cx.sample(inputs[1]).to_vec());
        let r = a.len();
        if r < 2 || b.len() != r || a[..r - 2] != b[..r - 2] {
            return Err(format!(
                "multiplies matrices over their last two dims with equal dims before them, got \
                 {} and {}",
                fmt_shape(&a),
                fmt_shape(&b)
            ));
        }
        let (ta, tb) = (self.transpose_a, self.transpose_b);
        let inner = |ta: bool, tb: bool| (a[r - 1 - ta as usize], b[r - 2 + tb as usize]);
        let (ka, kb) = inner(ta, tb);
        if ka != kb {
            let fix = match (inner(ta, !tb), inner(!ta, tb)) {
                ((x, y), _) if x == y => format!("; transpose_b = {} would fit", !tb),
                (_, (x, y)) if x == y => format!("; transpose_a = {} would fit", !ta),
                _ => String::new(),
            };
            return Err(format!(
                "cannot multiply {} by {}{}: inner dims {ka} and {kb} differ{fix}",
                fmt_shape(&a),
                fmt_shape(&b),
                match (ta, tb) {
                    (false, false) => "",
                    (true, false) => " (the first transposed)",
                    (false, true) => " (the second transposed)",
                    (true, true) => " (both transposed)",
                },
            ));
        }
        let op = BatchMatMul {
            trans_a: ta,
            trans_b: tb,
        };
        cx.op(OpKind::BatchMatMul(op), inputs)
    }
}

fn channels() -> i64 {
    0
}

/// Joins two or more tensors along a per-sample `axis` (0: channels).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConcatSpec {
    #[serde(default = "channels")]
    pub axis: i64,
}

impl LayerSpec for ConcatSpec {
    const ARITY: Arity = Arity::AtLeastTwo;
    fn lower(&self, cx: &mut Lower, inputs: &[TensorId]) -> Result<TensorId, String> {
        let axis = cx.sample_axis(inputs[0], self.axis)?;
        let first = cx.sample(inputs[0]).to_vec();
        for &t in &inputs[1..] {
            let s = cx.sample(t);
            let fits =
                s.len() == first.len() && (0..s.len()).all(|i| i + 1 == axis || s[i] == first[i]);
            if !fits {
                let all: Vec<String> = inputs.iter().map(|&t| fmt_shape(cx.sample(t))).collect();
                return Err(format!(
                    "cannot concat shapes {} along axis {}: the other dims must match",
                    all.join(" and "),
                    axis - 1
                ));
            }
        }
        cx.op(OpKind::Concat(Concat { axis: axis as i64 }), inputs)
    }
}

/// A range of one per-sample axis, as PyTorch's `x[..., start:end]` on a sample: `end`
/// exclusive, both negative from the end, `end` unset to the end of the axis. The range must
/// lie in the axis and hold at least one element (PyTorch would clamp or give an empty tensor;
/// in a config either is a mistake).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SliceSpec {
    pub axis: i64,
    #[serde(default)]
    pub start: i64,
    pub end: Option<i64>,
}

impl LayerSpec for SliceSpec {
    fn lower(&self, cx: &mut Lower, inputs: &[TensorId]) -> Result<TensorId, String> {
        let s = cx.sample(inputs[0]).to_vec();
        let shape = fmt_shape(&s);
        let rank = s.len() as i64;
        let axis = match cx.sample_axis(inputs[0], self.axis) {
            Ok(a) => a,
            Err(_) => {
                let m = format!(
                    "axis {} is not an axis of a sample {shape}: 0 to {} or -{rank} to -1 (the batch axis cannot be sliced)",
                    self.axis,
                    rank - 1
                );
                return Err(cx.blame("axis", m));
            }
        };
        let (ax, size) = (axis - 1, s[axis - 1] as i64);
        // Negative indices count from the end, as in Python; `named` shows both.
        let index = |i: i64| if i < 0 { i + size } else { i };
        let named = |what: &str, i: i64| match i < 0 {
            true => format!("{what} {i} (index {})", i + size),
            false => format!("{what} {i}"),
        };
        let start = index(self.start);
        if !(0..size).contains(&start) {
            let m = format!(
                "start {} is outside axis {ax} of {shape}, which has {size} elements: start is 0 to {} or -{size} to -1",
                self.start,
                size - 1
            );
            return Err(cx.blame("start", m));
        }
        let end = self.end.map_or(size, index);
        if let Some(e) = self.end {
            if !(0..=size).contains(&end) {
                let m = format!(
                    "end {e} is outside axis {ax} of {shape}, which has {size} elements: end is 0 to {size} or -{size} to -1"
                );
                return Err(cx.blame("end", m));
            }
            if end < start {
                let m = format!(
                    "{} is past {} on axis {ax} of {shape}: the range would be empty",
                    named("start", self.start),
                    named("end", e)
                );
                return Err(cx.blame("start", m));
            }
            if end == start {
                let m = format!(
                    "the range {}:{e} of axis {ax} of {shape} is empty (end is exclusive): use end = {}",
                    self.start,
                    start + 1
                );
                return Err(cx.blame("end", m));
            }
        }
        let op = Slice {
            axis,
            start: start as usize,
            len: (end - start) as usize,
        };
        cx.op(OpKind::Slice(op), &inputs[..1])
    }
}
