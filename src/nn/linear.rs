use serde::Deserialize;

use super::lower::LayerSpec;
use crate::config::values::{Positive, PositiveFloat};
use crate::graph::Init;
use crate::nn::Lower;
use crate::ops::{Binary, BinaryFn, Gather, MatMul, OpKind};
use crate::tensor::TensorId;
use crate::tensor::{DType, fmt_shape};

fn yes() -> bool {
    true
}

/// Affine map of the last dim: y = x·Wᵀ + b, weight [out, in].
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinearSpec {
    pub out: Positive,
    #[serde(default = "yes")]
    pub bias: bool,
    /// Weight N(0, init_std²) and bias zeros (nanoGPT's `_init_weights`), instead of
    /// PyTorch's U(±1/√in) for both.
    pub init_std: Option<PositiveFloat>,
    /// Weight tying: use this earlier layer's `weight` (an embedding's [vocab, dim] is an
    /// output projection's [out, in]) instead of a weight of its own.
    pub tie: Option<String>,
}

impl LayerSpec for LinearSpec {
    fn lower(&self, cx: &mut Lower, inputs: &[TensorId]) -> Result<TensorId, String> {
        let x = inputs[0];
        if cx.ty(x).dtype != DType::F32 {
            return Err(
                "linear needs float input; integer ids go through an embedding first".into(),
            );
        }
        let s = cx.sample(x).to_vec();
        let Some(&fan_in) = s.last() else {
            return Err("linear needs an input with at least one dim per sample".into());
        };
        let out = self.out.0;
        let (w_init, b_init) = match self.init_std {
            Some(std) => (Init::Normal { std: std.0 }, Init::Zeros),
            None => (Init::fan_in_uniform(fan_in), Init::fan_in_uniform(fan_in)),
        };
        let w = match &self.tie {
            Some(_) if self.init_std.is_some() => {
                return Err(
                    "a tied weight has its layer's initialisation: remove `init_std`".into(),
                );
            }
            Some(layer) => cx.tied_param(layer, "weight", &[out, fan_in])?,
            None => cx.param("weight", vec![out, fan_in], w_init)?,
        };
        let y = cx.op(OpKind::MatMul(MatMul), &[x, w])?;
        if !self.bias {
            return Ok(y);
        }
        let b = cx.param("bias", vec![out], b_init)?;
        cx.op(OpKind::Binary(Binary { f: BinaryFn::Add }), &[y, b])
            .map_err(|_| format!("cannot add bias to {}", fmt_shape(&s)))
    }
}

/// Lookup table: integer ids [..] → vectors [.., dim]; weight [vocab, dim] ~ N(0, 1), or
/// N(0, init_std²).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingSpec {
    pub vocab: Positive,
    pub dim: Positive,
    pub init_std: Option<PositiveFloat>,
}

impl LayerSpec for EmbeddingSpec {
    fn lower(&self, cx: &mut Lower, inputs: &[TensorId]) -> Result<TensorId, String> {
        if cx.ty(inputs[0]).dtype != DType::I32 {
            return Err(
                "embedding reads integer ids: set the model input's dtype = \"i32\"".into(),
            );
        }
        let w = cx.param(
            "weight",
            vec![self.vocab.0, self.dim.0],
            Init::Normal {
                std: self.init_std.map_or(1.0, |s| s.0),
            },
        )?;
        cx.op(OpKind::Gather(Gather), &[w, inputs[0]])
    }
}
