use serde::Deserialize;

use super::lower::LayerSpec;
use crate::config::values::{Count, Pair, Positive};
use crate::graph::Init;
use crate::nn::Lower;
use crate::ops::{Binary, BinaryFn, Conv2d, OpKind, Reshape};
use crate::tensor::TensorId;
use crate::tensor::fmt_shape;

fn one() -> Pair<Positive> {
    Pair(Positive(1), Positive(1))
}
fn zero() -> Pair<Count> {
    Pair(Count(0), Count(0))
}
fn yes() -> bool {
    true
}

/// 2-D convolution over [channels, height, width]; weight [out, in/groups, kh, kw].
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Conv2dSpec {
    pub out: Positive,
    pub kernel: Pair<Positive>,
    #[serde(default = "one")]
    pub stride: Pair<Positive>,
    #[serde(default = "zero")]
    pub padding: Pair<Count>,
    #[serde(default = "one")]
    pub dilation: Pair<Positive>,
    #[serde(default = "one_group")]
    pub groups: Positive,
    #[serde(default = "yes")]
    pub bias: bool,
}

fn one_group() -> Positive {
    Positive(1)
}

impl LayerSpec for Conv2dSpec {
    fn lower(&self, cx: &mut Lower, inputs: &[TensorId]) -> Result<TensorId, String> {
        let x = inputs[0];
        let s = cx.sample(x).to_vec();
        if s.len() != 3 {
            return Err(format!(
                "conv2d expects [channels, height, width], got {}",
                fmt_shape(&s)
            ));
        }
        let (c, out, g) = (s[0], self.out.0, self.groups.0);
        if c % g != 0 || out % g != 0 {
            return Err(format!(
                "groups = {g} must divide the input channels ({c}) and `out` ({out})"
            ));
        }
        let (kh, kw) = (self.kernel.0.0, self.kernel.1.0);
        // Saturating: config dims reach 2^31; the weight's size check then refuses them.
        let fan_in = (c / g).saturating_mul(kh).saturating_mul(kw);
        let w = cx.param(
            "weight",
            vec![out, c / g, kh, kw],
            Init::fan_in_uniform(fan_in),
        )?;
        let op = Conv2d {
            stride: [self.stride.0.0, self.stride.1.0],
            padding: [self.padding.0.0, self.padding.1.0],
            dilation: [self.dilation.0.0, self.dilation.1.0],
            groups: g,
        };
        let y = cx.op(OpKind::Conv2d(op), &[x, w])?;
        if !self.bias {
            return Ok(y);
        }
        let b = cx.param("bias", vec![out], Init::fan_in_uniform(fan_in))?;
        let b = cx.op(
            OpKind::Reshape(Reshape {
                shape: vec![out, 1, 1],
            }),
            &[b],
        )?;
        cx.op(OpKind::Binary(Binary { f: BinaryFn::Add }), &[y, b])
    }
}
