//! Layers of sequence models: the learned positional table and a vision transformer's class
//! token.

use serde::Deserialize;

use super::{LayerSpec, Lower};
use crate::config::values::PositiveFloat;
use crate::graph::Init;
use crate::ops::{Binary, BinaryFn, Concat, Fill, Gather, OpKind};
use crate::tensor::{DType, TensorId, TensorType, fmt_shape};

/// Adds a learned table `weight [positions, dim]` to a sequence `[positions, dim]`: GPT's
/// position embedding (nanoGPT's `wpe(arange(T))` added to the token embedding). In the
/// decode-step model (one position per sequence) it adds the table's row of each sequence's
/// position instead (`wpe(pos)`), from the same `weight [positions, dim]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PositionalSpec {
    /// The table's initial values are N(0, init_std²); 1 as `nn.Embedding`'s default.
    #[serde(default = "one")]
    pub init_std: PositiveFloat,
}

fn one() -> PositiveFloat {
    PositiveFloat(1.0)
}

impl LayerSpec for PositionalSpec {
    fn lower(&self, cx: &mut Lower, inputs: &[TensorId]) -> Result<TensorId, String> {
        let x = inputs[0];
        let s = cx.sample(x).to_vec();
        if s.len() != 2 || cx.ty(x).dtype != DType::F32 {
            return Err(format!(
                "adds a table to a float sequence [positions, dim], got {}",
                fmt_shape(&s)
            ));
        }
        let std = self.init_std.0;
        let add = OpKind::Binary(Binary { f: BinaryFn::Add });
        if let Some(d) = cx.decode() {
            if s[0] != 1 {
                return Err(format!(
                    "decodes one position at a time, [1, dim], got {}",
                    fmt_shape(&s)
                ));
            }
            let w = cx.param("weight", vec![d.positions, s[1]], Init::Normal { std })?;
            let row = cx.op(OpKind::Gather(Gather), &[w, d.position])?;
            return cx.op(add, &[x, row]);
        }
        let w = cx.param("weight", s, Init::Normal { std })?;
        cx.op(add, &[x, w])
    }
}

/// Puts a learned token `weight [1, dim]` before a sequence `[positions, dim]`, giving
/// `[positions + 1, dim]`: ViT's class token (timm's `cls_token`, its `[1, 1, dim]` without the
/// batch axis), whose final state a head reads with `slice`. Lowered as zeros `[batch, 1, dim]`
/// plus the token (a broadcast over the batch), then a concat before the sequence; its
/// gradient is the sum over the batch of the first position's.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassTokenSpec {
    /// The token's initial values are N(0, init_std²); 0.02 as timm's ViT.
    #[serde(default = "two_hundredths")]
    pub init_std: PositiveFloat,
}

fn two_hundredths() -> PositiveFloat {
    PositiveFloat(0.02)
}

impl LayerSpec for ClassTokenSpec {
    fn lower(&self, cx: &mut Lower, inputs: &[TensorId]) -> Result<TensorId, String> {
        let x = inputs[0];
        let s = cx.sample(x).to_vec();
        if s.len() != 2 || cx.ty(x).dtype != DType::F32 {
            return Err(format!(
                "puts a token before a float sequence [positions, dim], got {}",
                fmt_shape(&s)
            ));
        }
        let dim = s[1];
        let w = cx.param(
            "weight",
            vec![1, dim],
            Init::Normal {
                std: self.init_std.0,
            },
        )?;
        let ty = TensorType::f32(vec![cx.batch(), 1, dim]);
        let zeros = cx.op(OpKind::Fill(Fill { ty, value: 0.0 }), &[])?;
        let token = cx.op(OpKind::Binary(Binary { f: BinaryFn::Add }), &[zeros, w])?;
        cx.op(OpKind::Concat(Concat { axis: 1 }), &[token, x])
    }
}
