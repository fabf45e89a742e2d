//! Layers of sequence models: the learned positional table.

use serde::Deserialize;

use super::{LayerSpec, Lower};
use crate::config::values::PositiveFloat;
use crate::graph::Init;
use crate::ops::{Binary, BinaryFn, Gather, OpKind};
use crate::tensor::{DType, TensorId, fmt_shape};

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
