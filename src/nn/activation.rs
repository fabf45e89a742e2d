use serde::Deserialize;

use super::lower::LayerSpec;
use crate::config::de::from_value_in;
use crate::config::tree::Value;
use crate::config::values::{Finite, Fraction};
use crate::diag::Diagnostic;
use crate::graph::Mode;
use crate::nn::Lower;
use crate::ops::{Dropout, OpKind, Softmax, Unary, UnaryFn};
use crate::tensor::TensorId;

fn unary(cx: &mut Lower, x: TensorId, f: UnaryFn) -> Result<TensorId, String> {
    cx.op(OpKind::Unary(Unary { f }), &[x])
}

/// A plain activation: a layer op named after a function of the elementwise table, with no
/// attributes (relu, sigmoid, tanh, silu, ...: `UnaryFn::plain_layer`). The table alone makes
/// it a layer op.
#[derive(Clone, Debug)]
pub struct Plain(pub UnaryFn);

/// A plain activation's attributes: none.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoAttributes {}

impl Plain {
    /// The plain activation `name`, its (empty) attribute table checked; None if no such op.
    pub fn parse(name: &str, attrs: &Value) -> Option<Result<Plain, Diagnostic>> {
        let f = UnaryFn::plain_layer(name)?;
        Some(from_value_in::<NoAttributes>(attrs, &format!("a `{name}` layer")).map(|_| Plain(f)))
    }
    pub fn lower(&self, cx: &mut Lower, inputs: &[TensorId]) -> Result<TensorId, String> {
        unary(cx, inputs[0], self.0)
    }
}

fn slope() -> Finite {
    Finite(0.01)
}

/// max(x, slope·x)
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeakyRelu {
    #[serde(default = "slope")]
    pub slope: Finite,
}

impl LayerSpec for LeakyRelu {
    fn lower(&self, cx: &mut Lower, inputs: &[TensorId]) -> Result<TensorId, String> {
        unary(
            cx,
            inputs[0],
            UnaryFn::LeakyRelu {
                slope: self.slope.0,
            },
        )
    }
}

/// factor·x
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scale {
    pub factor: Finite,
}

impl LayerSpec for Scale {
    fn lower(&self, cx: &mut Lower, inputs: &[TensorId]) -> Result<TensorId, String> {
        unary(
            cx,
            inputs[0],
            UnaryFn::Scale {
                factor: self.factor.0,
            },
        )
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Approximate {
    #[default]
    None,
    Tanh,
}

/// x·Φ(x), exact (erf) or the tanh approximation, as PyTorch's `approximate`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gelu {
    #[serde(default)]
    pub approximate: Approximate,
}

impl LayerSpec for Gelu {
    fn lower(&self, cx: &mut Lower, inputs: &[TensorId]) -> Result<TensorId, String> {
        let f = match self.approximate {
            Approximate::None => UnaryFn::Gelu,
            Approximate::Tanh => UnaryFn::GeluTanh,
        };
        unary(cx, inputs[0], f)
    }
}

fn last() -> i64 {
    -1
}

/// Softmax along `axis` of each sample (negative counts from the end).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SoftmaxSpec {
    #[serde(default = "last")]
    pub axis: i64,
}

impl LayerSpec for SoftmaxSpec {
    fn lower(&self, cx: &mut Lower, inputs: &[TensorId]) -> Result<TensorId, String> {
        let axis = cx.sample_axis(inputs[0], self.axis)?;
        cx.op(OpKind::Softmax(Softmax { axis: axis as i64 }), &inputs[..1])
    }
}

fn half() -> Fraction {
    Fraction(0.5)
}

/// Zeroes elements with probability `p` in training (scaling the rest by 1/(1-p)).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DropoutSpec {
    #[serde(default = "half")]
    pub p: Fraction,
}

impl LayerSpec for DropoutSpec {
    fn lower(&self, cx: &mut Lower, inputs: &[TensorId]) -> Result<TensorId, String> {
        // The stream is taken in both modes so that later layers' streams do not shift.
        let stream = cx.next_random_stream();
        if cx.mode() == Mode::Eval {
            return Ok(inputs[0]);
        }
        cx.op(
            OpKind::Dropout(Dropout {
                p: self.p.0,
                stream,
            }),
            &inputs[..1],
        )
    }
}
