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

/// Layer normalisation over the last `dims` dims of each sample (`torch.nn.LayerNorm`), or, not
/// `CENTERED`, root-mean-square normalisation (`torch.nn.RMSNorm`): learned `weight` only, no
/// bias, and PyTorch's default eps for it.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NormSpec<const CENTERED: bool> {
    #[serde(default = "one")]
    pub dims: Positive,
    #[serde(default = "norm_eps::<CENTERED>")]
    pub eps: PositiveFloat,
    #[serde(default = "yes")]
    pub affine: bool,
}

pub type LayerNormSpec = NormSpec<true>;
pub type RmsNormSpec = NormSpec<false>;

fn one() -> Positive {
    Positive(1)
}

/// Layernorm's default eps, or `RMSNorm`'s (`eps=None`): `torch.finfo(torch.float32).eps`.
fn norm_eps<const CENTERED: bool>() -> PositiveFloat {
    match CENTERED {
        true => eps(),
        false => PositiveFloat(f32::EPSILON as f64),
    }
}

/// The op over the last `dims` dims of each sample, with a `weight` (ones) and, centred, a
/// `bias` (zeros) of their shape when affine.
impl<const CENTERED: bool> LayerSpec for NormSpec<CENTERED> {
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
            if CENTERED {
                args.push(cx.param("bias", normalized, Init::Zeros)?);
            }
        }
        let op = LayerNorm {
            eps: self.eps.0,
            dims: d,
            affine: self.affine,
            centered: CENTERED,
        };
        cx.op(OpKind::LayerNorm(op), &args)
    }
}
