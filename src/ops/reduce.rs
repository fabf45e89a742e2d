//! Reductions: mean over axes (global average pooling) and softmax along one axis.

use serde::Serialize;

use super::{Primitive, ShapeResult, TensorType, axis, expect_arity, expect_f32};

/// Mean over the given axes, which are removed from the shape.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MeanAxes {
    pub axes: Vec<usize>,
}

impl Primitive for MeanAxes {
    fn name(&self) -> &'static str {
        "mean"
    }
    fn infer(&self, inputs: &[&TensorType]) -> ShapeResult {
        expect_arity(inputs, 1)?;
        let x = inputs[0];
        expect_f32(x, "the input")?;
        if let Some(a) = self.axes.iter().find(|&&a| a >= x.rank()) {
            return Err(format!(
                "axis {a} is out of range for a tensor of rank {}",
                x.rank()
            ));
        }
        let shape = (0..x.rank())
            .filter(|i| !self.axes.contains(i))
            .map(|i| x.shape[i])
            .collect();
        Ok(vec![TensorType::f32(shape)])
    }
    fn flops(&self, inputs: &[&TensorType], _: &[TensorType]) -> u64 {
        inputs[0].numel() as u64
    }
    fn attrs(&self) -> Vec<(&'static str, String)> {
        vec![("axes", format!("{:?}", self.axes))]
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Softmax {
    /// Axis of the full tensor (batch included); negative counts from the end.
    pub axis: i64,
}

impl Primitive for Softmax {
    fn name(&self) -> &'static str {
        "softmax"
    }
    fn infer(&self, inputs: &[&TensorType]) -> ShapeResult {
        expect_arity(inputs, 1)?;
        expect_f32(inputs[0], "the input")?;
        axis(self.axis, inputs[0].rank())?;
        Ok(vec![inputs[0].clone()])
    }
    fn flops(&self, _: &[&TensorType], out: &[TensorType]) -> u64 {
        5 * out[0].numel() as u64
    }
    fn attrs(&self) -> Vec<(&'static str, String)> {
        vec![("axis", self.axis.to_string())]
    }
}
