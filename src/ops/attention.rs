//! Scaled dot-product attention over a fused projection, and its gradient.
//!
//! The input is nanoGPT's `c_attn` output `qkv [B, T, 3C]`: q, k and v side by side, each split
//! into `heads` heads of width D = C / heads (head h of q is columns [h·D, (h+1)·D), of k
//! [C + h·D, ..), of v [2C + h·D, ..)). The output `y [B, T, C]` holds the heads side by side, as
//! nanoGPT's `y.transpose(1, 2).view(B, T, C)`; a second output `lse [B, heads, T]` holds each
//! query row's log-sum-exp of its scaled scores, all the backward needs besides q, k, v, y
//! (FlashAttention-2's scheme): the T×T matrix is never stored, so memory is O(T) per head.
//!
//! The CPU evaluates the definition row by row (the oracle of the GPU kernels); the GPU fuses
//! each pass into tiled kernels (kernels/attention.wgsl).

use rayon::prelude::*;
use serde::Serialize;

use super::random::{DropoutKey, threshold};
use super::{
    Cost, Eval, OpKind, Primitive, ShapeResult, VjpArgs, VjpCx, VjpResult, expect_arity, expect_f32,
};
use crate::kernel::cpu::{Io, Real};
use crate::kernel::gpu::{Bind, Dispatch, KernelArgs, PREAMBLE, Params, Shader, groups};
use crate::tensor::{StepCtx, TensorType, fmt_shape};

/// Rows (queries or keys) a workgroup of kernels/attention.wgsl takes: its `BLOCK`.
const BLOCK: usize = 64;
/// The widest head the kernels compile for: a thread keeps three rows of D in registers.
/// The `attention` layer lowers wider heads to separate launches (nn/attention.rs).
pub const MAX_GPU_HEAD: usize = 128;

/// Entry `entry` of kernels/attention.wgsl compiled for head width `d`: rows staged `TILE` at a
/// time, 32 at most and as many as 32 KiB of workgroup memory holds (Metal's limit) with the
/// per-row scalars.
fn shader(d: usize, entry: &'static str) -> Shader {
    let d4 = d.div_ceil(4);
    let tile = if d4 <= 16 { 32 } else { 16 };
    let text = include_str!("../../kernels/attention.wgsl");
    let mask = include_str!("../../kernels/dropout_mask.wgsl");
    Shader {
        source: format!(
            "{PREAMBLE}\n{mask}\nconst D: u32 = {d}u;\nconst D4: u32 = {d4}u;\n\
             const TILE: u32 = {tile}u;\n{text}"
        )
        .into(),
        entry,
    }
}

/// What every kernel of one attention launch shares.
struct Launch {
    /// (B, T, C, D).
    dims: [usize; 4],
    params: Vec<u32>,
    workgroups: [u32; 3],
}

/// The kernels' `Params` and grid for attention `a` over `qkv`, or why no kernel fits.
fn launch(a: &Attention, qkv: &TensorType) -> Result<Launch, String> {
    let dims = dims(qkv, a.heads)?;
    let [b, t, c, d] = dims;
    if d > MAX_GPU_HEAD {
        return Err(format!(
            "has no GPU kernel for heads wider than {MAX_GPU_HEAD} (head width {d})"
        ));
    }
    // The dropout mask's element index is 32 bits wide on the GPU.
    if a.dropout > 0.0 && (b * a.heads).saturating_mul(t * t) > u32::MAX as usize {
        return Err("has no GPU kernel for dropout over more than 2^32 weights".into());
    }
    let blocks = t.div_ceil(BLOCK);
    let keep = Mask::new(a, StepCtx::default()).map_or(1.0, |m| m.scale);
    let params = Params::new()
        .u32(b)
        .u32(t)
        .u32(c)
        .u32(a.heads)
        .u32(blocks)
        .u32(usize::from(a.causal))
        .f32(a.scale)
        .u32(if a.dropout > 0.0 {
            threshold(a.dropout) as usize
        } else {
            0
        })
        .u32((a.stream as u32) as usize)
        .u32((a.stream >> 32) as usize)
        .f32(keep)
        .done();
    Ok(Launch {
        dims,
        params,
        workgroups: groups(b * a.heads * blocks),
    })
}

/// `dropout(softmax(q·kᵀ·scale + mask))·v` per head, with the causal mask (key j > query i
/// excluded) when `causal`; PyTorch's `F.scaled_dot_product_attention(q, k, v, dropout_p,
/// is_causal, scale)`. Dropout drops weight (i, j) of head h of batch row b by element
/// k = ((b·heads + h)·T + i)·T + j of the stream `DropoutKey::new(seed, step, stream)` (the
/// dropout op's mask: the backward replays it) and scales the rest by 1/(1 − dropout); lse is
/// that of the weights before dropout.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Attention {
    pub heads: usize,
    pub causal: bool,
    /// The scores' factor; 1/√D by default.
    pub scale: f64,
    /// The probability of dropping an attention weight (0 in evaluation).
    pub dropout: f64,
    /// Identifies the dropout's random stream.
    pub stream: u64,
}

/// What scales attention weight k after dropout: 1/(1 − p) where kept, 0 where dropped.
#[derive(Clone, Copy)]
struct Mask {
    key: DropoutKey,
    threshold: u32,
    scale: f64,
}

impl Mask {
    fn new(a: &Attention, ctx: StepCtx) -> Option<Mask> {
        (a.dropout > 0.0).then(|| Mask {
            key: DropoutKey::new(ctx.seed, ctx.step, a.stream),
            threshold: threshold(a.dropout),
            scale: if a.dropout < 1.0 {
                1.0 / (1.0 - a.dropout)
            } else {
                0.0
            },
        })
    }
}

/// The factor of weight k: 1 without dropout.
fn factor<T: Real>(mask: Option<Mask>, k: usize) -> T {
    match mask {
        None => T::ONE,
        Some(m) if m.key.bits24(k as u64) >= m.threshold => T::of(m.scale),
        Some(_) => T::ZERO,
    }
}

/// (B, T, C, D) of an attention input qkv [B, T, 3C] with `heads` heads.
pub(super) fn dims(qkv: &TensorType, heads: usize) -> Result<[usize; 4], String> {
    expect_f32(qkv, "the input")?;
    let bad = || {
        format!(
            "expects q, k and v side by side, [batch, positions, 3·{heads}·head_width], got {}",
            fmt_shape(&qkv.shape)
        )
    };
    let [b, t, w] = qkv.shape[..] else {
        return Err(bad());
    };
    if heads == 0 || w % (3 * heads) != 0 || w == 0 {
        return Err(bad());
    }
    Ok([b, t, w / 3, w / 3 / heads])
}

/// Where head h's q, k and v of position t start in batch row b's `qkv` (the three offsets).
struct Layout {
    t: usize,
    c: usize,
    d: usize,
}

impl Layout {
    fn new([_, t, c, d]: [usize; 4]) -> Layout {
        Layout { t, c, d }
    }
    /// Offset of q (which 0), k (1) or v (2) of head h at position p, within one batch row.
    fn at(&self, which: usize, h: usize, p: usize) -> usize {
        p * 3 * self.c + which * self.c + h * self.d
    }
    /// Keys query i sees.
    fn keys(&self, i: usize, causal: bool) -> usize {
        if causal { i + 1 } else { self.t }
    }
}

fn dot<T: Real>(a: &[T], b: &[T]) -> T {
    let mut s = T::ZERO;
    for (x, y) in a.iter().zip(b) {
        s += *x * *y;
    }
    s
}

impl Primitive for Attention {
    fn name(&self) -> &'static str {
        "attention"
    }
    fn infer(&self, inputs: &[&TensorType]) -> ShapeResult {
        expect_arity(inputs, 1)?;
        let [b, t, c, _] = dims(inputs[0], self.heads)?;
        Ok(vec![
            TensorType::f32(vec![b, t, c]),
            TensorType::f32(vec![b, self.heads, t]),
        ])
    }
    fn flops(&self, inputs: &[&TensorType], _: &[TensorType]) -> u64 {
        let [b, t, c, _] = dims(inputs[0], self.heads).unwrap_or_default();
        // Two products of [T, D]·[D, T] per head: 4·T²·C per row of the batch; half if causal.
        let full = 4 * (b * t * t * c) as u64;
        if self.causal { full / 2 } else { full }
    }
    fn attrs(&self) -> Vec<(&'static str, String)> {
        let mut attrs = vec![
            ("heads", self.heads.to_string()),
            ("causal", self.causal.to_string()),
            ("scale", self.scale.to_string()),
        ];
        if self.dropout > 0.0 {
            attrs.push(("dropout", self.dropout.to_string()));
            attrs.push(("stream", self.stream.to_string()));
        }
        attrs
    }
    fn cost(&self) -> Cost {
        Cost::Compute
    }
    /// dqkv from q, k, v, y, lse and dy; lse carries no gradient (only the backward reads it).
    fn vjp(&self, cx: &mut VjpCx, a: &VjpArgs) -> VjpResult {
        let grad = AttentionGrad { of: self.clone() };
        let ins = [a.inputs[0], a.outputs[0], a.outputs[1], a.dy()?];
        Ok(vec![Some(cx.op(OpKind::AttentionGrad(grad), &ins)?)])
    }
    fn gpu(&self, args: &KernelArgs) -> Result<Vec<Dispatch>, String> {
        let l = launch(self, args.inputs[0])?;
        Ok(vec![Dispatch {
            shader: shader(l.dims[3], "attention_forward"),
            bindings: vec![Bind::In(0), Bind::Out(0), Bind::Out(1)],
            params: l.params,
            workgroups: l.workgroups,
        }])
    }
}

impl Eval for Attention {
    /// Per query row: an online max and sum over its keys (one pass), then y = Σ_j p_j·v_j with
    /// p_j = exp(s_j − lse) (a second pass): no workspace.
    fn eval<T: Real>(&self, io: &mut Io<'_, T>) {
        let dims = dims(io.in_type(0), self.heads).expect("checked by infer");
        let [_, t, c, d] = dims;
        let l = Layout::new(dims);
        let scale = T::of(self.scale);
        let mask = Mask::new(self, io.ctx);
        let (ins, [y, lse]) = io.split::<2>();
        let qkv = ins.get(0);
        if t == 0 || c == 0 {
            return;
        }
        y.par_chunks_mut(t * c)
            .zip(lse.par_chunks_mut(self.heads * t))
            .zip(qkv.par_chunks(t * 3 * c))
            .enumerate()
            .for_each(|(b, ((y, lse), x))| {
                for h in 0..self.heads {
                    for i in 0..t {
                        let q = &x[l.at(0, h, i)..][..d];
                        let score = |j: usize| dot(q, &x[l.at(1, h, j)..][..d]) * scale;
                        let (mut m, mut sum) = (T::of(f64::NEG_INFINITY), T::ZERO);
                        for j in 0..l.keys(i, self.causal) {
                            let s = score(j);
                            let next = m.max(s);
                            sum = sum * (m - next).exp() + (s - next).exp();
                            m = next;
                        }
                        let row_lse = m + sum.ln();
                        lse[h * t + i] = row_lse;
                        let out = &mut y[i * c + h * d..][..d];
                        out.fill(T::ZERO);
                        let row = ((b * self.heads + h) * t + i) * t;
                        for j in 0..l.keys(i, self.causal) {
                            let p = (score(j) - row_lse).exp() * factor::<T>(mask, row + j);
                            let v = &x[l.at(2, h, j)..][..d];
                            for (o, v) in out.iter_mut().zip(v) {
                                *o += p * *v;
                            }
                        }
                    }
                }
            });
    }
}

/// The gradient of [`Attention`]: dqkv [B, T, 3C] from qkv, y, lse and dy. With P_ij =
/// exp(s_ij − lse_i) and Δ_i = dy_i·y_i: dv_j = Σ_i P_ij·dy_i, dS_ij = P_ij·(dy_i·v_j − Δ_i),
/// dq_i = scale·Σ_j dS_ij·k_j, dk_j = scale·Σ_i dS_ij·q_i.
/// With dropout's factors M_ij (1/(1 − p) or 0): dv_j = Σ_i M_ij·P_ij·dy_i and dS_ij =
/// P_ij·(M_ij·dy_i·v_j − Δ_i).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AttentionGrad {
    /// The attention this is the gradient of.
    pub of: Attention,
}

impl Primitive for AttentionGrad {
    fn name(&self) -> &'static str {
        "attention_grad"
    }
    fn infer(&self, inputs: &[&TensorType]) -> ShapeResult {
        expect_arity(inputs, 4)?;
        let heads = self.of.heads;
        let [b, t, c, _] = dims(inputs[0], heads)?;
        let y = TensorType::f32(vec![b, t, c]);
        let lse = TensorType::f32(vec![b, heads, t]);
        if *inputs[1] != y || *inputs[2] != lse || *inputs[3] != y {
            return Err(format!(
                "expects y and dy {} and lse {}",
                fmt_shape(&y.shape),
                fmt_shape(&lse.shape)
            ));
        }
        Ok(vec![inputs[0].clone()])
    }
    fn flops(&self, inputs: &[&TensorType], _: &[TensorType]) -> u64 {
        // Five [T, D]·[D, T]-sized products (s again, dP, dV, dQ, dK) to the forward's two.
        self.of.flops(&inputs[..1], &[]) / 2 * 5
    }
    fn attrs(&self) -> Vec<(&'static str, String)> {
        self.of.attrs()
    }
    fn cost(&self) -> Cost {
        Cost::Compute
    }
    /// dQ (which also writes Δ into the workspace), then dV and dK from it.
    fn gpu(&self, args: &KernelArgs) -> Result<Vec<Dispatch>, String> {
        let l = launch(&self.of, args.inputs[0])?;
        let delta = Bind::Scratch {
            at: 0,
            len: args.inputs[2].numel(),
        };
        let bindings = vec![
            Bind::In(0),
            Bind::In(1),
            Bind::In(2),
            Bind::In(3),
            Bind::Out(0),
            delta,
        ];
        let pass = |entry| Dispatch {
            shader: shader(l.dims[3], entry),
            bindings: bindings.clone(),
            params: l.params.clone(),
            workgroups: l.workgroups,
        };
        Ok(["attention_grad_q", "attention_grad_v", "attention_grad_k"]
            .into_iter()
            .map(pass)
            .collect())
    }
}

impl Eval for AttentionGrad {
    /// Query rows in order; each adds its terms to dk and dv of its keys in key order, so every
    /// sum runs in a fixed order.
    fn eval<T: Real>(&self, io: &mut Io<'_, T>) {
        let a = &self.of;
        let dims = dims(io.in_type(0), a.heads).expect("checked by infer");
        let [_, t, c, d] = dims;
        let l = Layout::new(dims);
        let scale = T::of(a.scale);
        let mask = Mask::new(a, io.ctx);
        let (ins, [dx]) = io.split::<1>();
        let [qkv, y, lse, dy] = ins.array();
        if t == 0 || c == 0 {
            return;
        }
        dx.par_chunks_mut(t * 3 * c)
            .zip(qkv.par_chunks(t * 3 * c))
            .zip(y.par_chunks(t * c).zip(dy.par_chunks(t * c)))
            .zip(lse.par_chunks(a.heads * t))
            .enumerate()
            .for_each(|(b, (((dx, x), (y, dy)), lse))| {
                dx.fill(T::ZERO);
                for h in 0..a.heads {
                    for i in 0..t {
                        let (yi, dyi) = (&y[i * c + h * d..][..d], &dy[i * c + h * d..][..d]);
                        let delta = dot(dyi, yi);
                        let q = &x[l.at(0, h, i)..][..d];
                        let row = ((b * a.heads + h) * t + i) * t;
                        for j in 0..l.keys(i, a.causal) {
                            let (k, v) = (&x[l.at(1, h, j)..][..d], &x[l.at(2, h, j)..][..d]);
                            let p = (dot(q, k) * scale - lse[h * t + i]).exp();
                            let m = factor::<T>(mask, row + j);
                            let ds = p * (m * dot(dyi, v) - delta) * scale;
                            for e in 0..d {
                                dx[l.at(0, h, i) + e] += ds * k[e];
                                dx[l.at(1, h, j) + e] += ds * q[e];
                                dx[l.at(2, h, j) + e] += m * p * dyi[e];
                            }
                        }
                    }
                }
            });
    }
}
