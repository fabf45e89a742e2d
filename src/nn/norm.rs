use serde::Deserialize;

use super::lower::LayerSpec;
use crate::config::values::{Fraction, Positive, PositiveFloat};
use crate::graph::{Init, Mode};
use crate::nn::Lower;
use crate::ops::{BatchNorm, LayerNorm, OpKind};
use crate::tensor::TensorId;
use crate::tensor::{DType, TensorType, fmt_shape};

fn eps() -> PositiveFloat {
    PositiveFloat(1e-5)
}
fn momentum() -> Fraction {
    Fraction(0.1)
}
fn yes() -> bool {
    true
}

/// Batch normalisation over [C] or [C, ...] samples (PyTorch's BatchNorm1d/2d): learned
/// `weight`, `bias`; buffers `running_mean`, `running_var`, `num_batches_tracked`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchNormSpec {
    #[serde(default = "eps")]
    pub eps: PositiveFloat,
    #[serde(default = "momentum")]
    pub momentum: Fraction,
    #[serde(default = "yes")]
    pub affine: bool,
}

impl LayerSpec for BatchNormSpec {
    fn lower(&self, cx: &mut Lower, inputs: &[TensorId]) -> Result<TensorId, String> {
        let s = cx.sample(inputs[0]).to_vec();
        let Some(&c) = s.first() else {
            return Err(format!(
                "batchnorm needs [channels] or [channels, ...], got {}",
                fmt_shape(&s)
            ));
        };
        let mut args = vec![inputs[0]];
        if self.affine {
            args.push(cx.param("weight", vec![c], Init::Ones)?);
            args.push(cx.param("bias", vec![c], Init::Zeros)?);
        }
        args.push(
            cx.buffer("running_mean", TensorType::f32(vec![c]), Init::Zeros, true)?
                .expect("read"),
        );
        args.push(
            cx.buffer("running_var", TensorType::f32(vec![c]), Init::Ones, true)?
                .expect("read"),
        );
        cx.buffer(
            "num_batches_tracked",
            TensorType {
                shape: vec![],
                dtype: DType::I32,
            },
            Init::Zeros,
            false,
        )?;
        let op = BatchNorm {
            eps: self.eps.0,
            momentum: self.momentum.0,
            affine: self.affine,
            training: cx.mode() == Mode::Train,
        };
        cx.op(OpKind::BatchNorm(op), &args)
    }
}

/// Layer normalisation over the last `dims` dims of each sample.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerNormSpec {
    #[serde(default = "one")]
    pub dims: Positive,
    #[serde(default = "eps")]
    pub eps: PositiveFloat,
    #[serde(default = "yes")]
    pub affine: bool,
}

fn one() -> Positive {
    Positive(1)
}

impl LayerSpec for LayerNormSpec {
    fn lower(&self, cx: &mut Lower, inputs: &[TensorId]) -> Result<TensorId, String> {
        let s = cx.sample(inputs[0]).to_vec();
        let d = self.dims.0;
        if d > s.len() {
            return Err(format!(
                "cannot normalise the last {d} dims of a {} sample",
                fmt_shape(&s)
            ));
        }
        let normalized = s[s.len() - d..].to_vec();
        let mut args = vec![inputs[0]];
        if self.affine {
            args.push(cx.param("weight", normalized.clone(), Init::Ones)?);
            args.push(cx.param("bias", normalized, Init::Zeros)?);
        }
        cx.op(
            OpKind::LayerNorm(LayerNorm {
                eps: self.eps.0,
                dims: d,
                affine: self.affine,
                centered: true,
            }),
            &args,
        )
    }
}

/// PyTorch's default eps of `RMSNorm` (`eps=None`): `torch.finfo(torch.float32).eps`.
fn f32_epsilon() -> PositiveFloat {
    PositiveFloat(f32::EPSILON as f64)
}

/// Root-mean-square normalisation over the last `dims` dims of each sample
/// (`torch.nn.RMSNorm`): learned `weight` only, no bias.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RmsNormSpec {
    #[serde(default = "one")]
    pub dims: Positive,
    #[serde(default = "f32_epsilon")]
    pub eps: PositiveFloat,
    #[serde(default = "yes")]
    pub affine: bool,
}

impl LayerSpec for RmsNormSpec {
    fn lower(&self, cx: &mut Lower, inputs: &[TensorId]) -> Result<TensorId, String> {
        let s = cx.sample(inputs[0]).to_vec();
        let d = self.dims.0;
        if d > s.len() {
            return Err(format!(
                "cannot normalise the last {d} dims of a {} sample",
                fmt_shape(&s)
            ));
        }
        let mut args = vec![inputs[0]];
        if self.affine {
            args.push(cx.param("weight", s[s.len() - d..].to_vec(), Init::Ones)?);
        }
        cx.op(
            OpKind::LayerNorm(LayerNorm::rms(self.eps.0, d, self.affine)),
            &args,
        )
    }
}
