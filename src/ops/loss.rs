//! Losses, reduced to a scalar mean over the batch (PyTorch's reduction="mean").

use serde::Serialize;

use super::{DType, Primitive, ShapeResult, TensorType, expect_arity, expect_f32, fmt_shape};

/// Softmax cross entropy of logits [N, C] against class ids [N] (i32), with label smoothing.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CrossEntropy {
    pub label_smoothing: f64,
}

impl Primitive for CrossEntropy {
    fn name(&self) -> &'static str {
        "cross_entropy"
    }
    fn infer(&self, inputs: &[&TensorType]) -> ShapeResult {
        expect_arity(inputs, 2)?;
        let (logits, labels) = (inputs[0], inputs[1]);
        expect_f32(logits, "the logits")?;
        if logits.rank() != 2 {
            return Err(format!(
                "expects logits [N, classes], got {}",
                fmt_shape(&logits.shape)
            ));
        }
        if labels.dtype != DType::I32 || labels.shape != [logits.shape[0]] {
            return Err(format!(
                "expects i32 labels [{}], got {}",
                logits.shape[0],
                fmt_shape(&labels.shape)
            ));
        }
        Ok(vec![TensorType::f32(vec![])])
    }
    fn flops(&self, inputs: &[&TensorType], _: &[TensorType]) -> u64 {
        6 * inputs[0].numel() as u64
    }
    fn attrs(&self) -> Vec<(&'static str, String)> {
        vec![("label_smoothing", self.label_smoothing.to_string())]
    }
}

/// Mean squared error between a prediction and a target of the same shape.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Mse;

impl Primitive for Mse {
    fn name(&self) -> &'static str {
        "mse"
    }
    fn infer(&self, inputs: &[&TensorType]) -> ShapeResult {
        expect_arity(inputs, 2)?;
        expect_f32(inputs[0], "the prediction")?;
        expect_f32(inputs[1], "the target")?;
        if inputs[0].shape != inputs[1].shape {
            return Err(format!(
                "prediction {} and target {} differ",
                fmt_shape(&inputs[0].shape),
                fmt_shape(&inputs[1].shape)
            ));
        }
        Ok(vec![TensorType::f32(vec![])])
    }
    fn flops(&self, inputs: &[&TensorType], _: &[TensorType]) -> u64 {
        3 * inputs[0].numel() as u64
    }
}
