//! Normalisations. Batchnorm normalises over every axis but the channel axis 1 (so it covers
//! both [N, C] and [N, C, H, W]); layernorm over the trailing `dims` axes.

use serde::Serialize;

use super::{Primitive, ShapeResult, TensorType, expect_f32, fmt_shape};

/// Inputs: x, weight, bias, running_mean, running_var (weight and bias absent without affine).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BatchNorm {
    pub eps: f64,
    pub momentum: f64,
    pub affine: bool,
}

impl Primitive for BatchNorm {
    fn name(&self) -> &'static str {
        "batchnorm"
    }
    fn infer(&self, inputs: &[&TensorType]) -> ShapeResult {
        let expected = if self.affine { 5 } else { 3 };
        if inputs.len() != expected {
            return Err(format!("takes {expected} inputs, got {}", inputs.len()));
        }
        let x = inputs[0];
        expect_f32(x, "the input")?;
        if x.rank() < 2 {
            return Err(format!(
                "expects [N, C] or [N, C, ...], got {}",
                fmt_shape(&x.shape)
            ));
        }
        let c = x.shape[1];
        if let Some(bad) = inputs[1..].iter().find(|t| t.shape != [c]) {
            return Err(format!(
                "statistics {} do not match {c} channels",
                fmt_shape(&bad.shape)
            ));
        }
        Ok(vec![x.clone()])
    }
    fn flops(&self, inputs: &[&TensorType], _: &[TensorType]) -> u64 {
        // mean, variance, normalise, scale and shift: about 5 per element.
        5 * inputs[0].numel() as u64
    }
    fn attrs(&self) -> Vec<(&'static str, String)> {
        vec![
            ("eps", self.eps.to_string()),
            ("momentum", self.momentum.to_string()),
        ]
    }
}

/// Inputs: x, then weight and bias of the normalised shape when affine.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LayerNorm {
    pub eps: f64,
    pub dims: usize,
    pub affine: bool,
}

impl Primitive for LayerNorm {
    fn name(&self) -> &'static str {
        "layernorm"
    }
    fn infer(&self, inputs: &[&TensorType]) -> ShapeResult {
        let x = inputs.first().ok_or("takes an input")?;
        expect_f32(x, "the input")?;
        if self.dims == 0 || self.dims >= x.rank() {
            return Err(format!(
                "cannot normalise the last {} dims of {}",
                self.dims,
                fmt_shape(&x.shape)
            ));
        }
        let normalized = &x.shape[x.rank() - self.dims..];
        if let Some(bad) = inputs[1..].iter().find(|t| t.shape != normalized) {
            return Err(format!(
                "weight {} does not match {}",
                fmt_shape(&bad.shape),
                fmt_shape(normalized)
            ));
        }
        Ok(vec![(*x).clone()])
    }
    fn flops(&self, inputs: &[&TensorType], _: &[TensorType]) -> u64 {
        5 * inputs[0].numel() as u64
    }
    fn attrs(&self) -> Vec<(&'static str, String)> {
        vec![
            ("eps", self.eps.to_string()),
            ("dims", self.dims.to_string()),
        ]
    }
}
