//! The `attention` layer: causal (or full) multi-head self-attention over a fused q, k, v
//! projection, as nanoGPT writes it: a `linear` of width 3·C named `c_attn` before it, a `linear`
//! `c_proj` after it. One fused op by default; `fused = false` lowers the same function to
//! separate launches (PyTorch's math path), the baseline the fused kernels are measured against.

use serde::Deserialize;

use super::{LayerSpec, Lower};
use crate::config::values::{Fraction, Positive};
use crate::graph::Mode;
use crate::ops::{
    Attention, BatchMatMul, CausalFill, Dropout, MAX_GPU_HEAD, OpKind, Permute, Reshape, Softmax,
    Split, Unary, UnaryFn,
};
use crate::tensor::{TensorId, fmt_shape};

/// Heads, the causal flag and dropout on the attention weights (training only); the scale is
/// 1/√(head width), as PyTorch's default.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttentionSpec {
    pub heads: Positive,
    #[serde(default = "yes")]
    pub causal: bool,
    #[serde(default = "zero")]
    pub dropout: Fraction,
    /// false: q·kᵀ per head as a batched matmul, the causal mask, softmax, dropout and ·v as
    /// separate launches, keeping the T×T weights for the backward (O(T²) memory).
    #[serde(default = "yes")]
    pub fused: bool,
}

fn zero() -> Fraction {
    Fraction(0.0)
}

fn yes() -> bool {
    true
}

impl LayerSpec for AttentionSpec {
    fn lower(&self, cx: &mut Lower, inputs: &[TensorId]) -> Result<TensorId, String> {
        let s = cx.sample(inputs[0]).to_vec();
        let heads = self.heads.0;
        let width = match s[..] {
            [_, w] if w % (3 * heads) == 0 => w / 3 / heads,
            _ => {
                return Err(format!(
                    "expects q, k and v side by side, [positions, 3·heads·head_width] with \
                     heads = {heads} (a `linear` of width 3·C before it), got {}",
                    fmt_shape(&s)
                ));
            }
        };
        // The stream is taken in both modes so that later layers' streams do not shift.
        let stream = cx.next_random_stream();
        let op = Attention {
            heads,
            causal: self.causal,
            scale: 1.0 / (width as f64).sqrt(),
            dropout: match cx.mode() {
                Mode::Train => self.dropout.0,
                Mode::Eval => 0.0,
            },
            stream,
        };
        // The decode-step model attends over its key/value cache (nn/decode.rs).
        if let Some(d) = cx.decode() {
            return cx.decode_attention(d, &op, inputs);
        }
        // Heads wider than the kernels take run as separate launches, as PyTorch's SDPA falls
        // back to its math path: one graph for every backend.
        match self.fused && width <= MAX_GPU_HEAD {
            true => cx.op(OpKind::Attention(op), &inputs[..1]),
            false => decomposed(cx, &op, inputs[0]),
        }
    }
}

/// `attention` as separate ops over qkv [B, T, 3·C]: split into q, k, v, each viewed as
/// [B, H, T, D]; softmax(causal_fill(scale·q · kᵀ)) with dropout (the same stream, so the same
/// mask as the fused op's), times v; heads back side by side, [B, T, C].
fn decomposed(cx: &mut Lower, a: &Attention, qkv: TensorId) -> Result<TensorId, String> {
    let (b, [t, c3]) = (cx.batch(), [cx.sample(qkv)[0], cx.sample(qkv)[1]]);
    let (c, h) = (c3 / 3, a.heads);
    let parts = cx.op_all(
        OpKind::Split(Split {
            axis: 2,
            sizes: vec![c; 3],
        }),
        &[qkv],
    )?;
    let mut heads = Vec::with_capacity(3);
    for part in parts {
        let x = cx.op(
            OpKind::Reshape(Reshape {
                shape: vec![b, t, h, c / h],
            }),
            &[part],
        )?;
        let perm = vec![0, 2, 1, 3];
        heads.push(cx.op(OpKind::Permute(Permute { perm }), &[x])?);
    }
    let scale = UnaryFn::Scale { factor: a.scale };
    let q = cx.op(OpKind::Unary(Unary { f: scale }), &[heads[0]])?;
    let bmm = |trans_b| {
        OpKind::BatchMatMul(BatchMatMul {
            trans_a: false,
            trans_b,
        })
    };
    let mut w = cx.op(bmm(true), &[q, heads[1]])?;
    if a.causal {
        let mask = CausalFill {
            value: f64::NEG_INFINITY,
        };
        w = cx.op(OpKind::CausalFill(mask), &[w])?;
    }
    w = cx.op(OpKind::Softmax(Softmax { axis: -1 }), &[w])?;
    if a.dropout > 0.0 {
        let (p, stream) = (a.dropout, a.stream);
        w = cx.op(OpKind::Dropout(Dropout { p, stream }), &[w])?;
    }
    let y = cx.op(bmm(false), &[w, heads[2]])?;
    let perm = vec![0, 2, 1, 3];
    let y = cx.op(OpKind::Permute(Permute { perm }), &[y])?;
    cx.op(
        OpKind::Reshape(Reshape {
            shape: vec![b, t, c],
        }),
        &[y],
    )
}
