//! The `attention` layer: causal (or full) multi-head self-attention over a fused q, k, v
//! projection, as nanoGPT writes it: a `linear` of width 3·C named `c_attn` before it, a `linear`
//! `c_proj` after it.

use serde::Deserialize;

use super::{LayerSpec, Lower};
use crate::config::values::{Fraction, Positive};
use crate::graph::Mode;
use crate::ops::{Attention, OpKind};
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
        cx.op(OpKind::Attention(op), &inputs[..1])
    }
}
