//! Reductions: mean over axes (global average pooling) and softmax along one axis.

use serde::Serialize;

use super::{Eval, Primitive, ShapeResult, TensorType, axis, expect_arity, expect_f32};
use crate::backend::cpu::{Io, Real};

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

/// Sums a tensor down to a shape it was broadcast from (numpy rules): the gradient of a
/// broadcast. Sequential in element order, so the sum is deterministic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SumTo {
    pub shape: Vec<usize>,
}

impl Primitive for SumTo {
    fn name(&self) -> &'static str {
        "sum_to"
    }
    fn infer(&self, inputs: &[&TensorType]) -> ShapeResult {
        expect_arity(inputs, 1)?;
        let x = inputs[0];
        if super::broadcast(&self.shape, &x.shape)? != x.shape {
            return Err(format!(
                "{} does not broadcast to {}",
                super::fmt_shape(&self.shape),
                super::fmt_shape(&x.shape)
            ));
        }
        Ok(vec![TensorType::f32(self.shape.clone())])
    }
    fn flops(&self, inputs: &[&TensorType], _: &[TensorType]) -> u64 {
        inputs[0].numel() as u64
    }
    fn attrs(&self) -> Vec<(&'static str, String)> {
        vec![("shape", super::fmt_shape(&self.shape))]
    }
}

impl Eval for SumTo {
    fn eval<T: Real>(&self, io: &mut Io<'_, T>) {
        let x_shape = io.in_shape(0);
        let (ins, mut outs) = io.split();
        let (x, y) = (ins[0], &mut outs[0]);
        y.fill(T::ZERO);
        // Output stride of each input dim (0 where the output broadcasts).
        let pad = x_shape.len() - self.shape.len();
        let mut strides = vec![0; x_shape.len()];
        let mut s = 1;
        for d in (0..self.shape.len()).rev() {
            strides[pad + d] = if self.shape[d] == 1 { 0 } else { s };
            s *= self.shape[d];
        }
        // Walk x in order with the innermost dim as a run.
        let inner = *x_shape.last().unwrap_or(&1);
        let inner_stride = *strides.last().unwrap_or(&0);
        let outer_dims = &x_shape[..x_shape.len().saturating_sub(1)];
        let mut coord = vec![0; outer_dims.len()];
        for run in x.chunks(inner.max(1)) {
            let base: usize = coord.iter().zip(&strides).map(|(c, s)| c * s).sum();
            if inner_stride == 0 {
                let mut acc = y[base];
                for &v in run {
                    acc += v;
                }
                y[base] = acc;
            } else {
                for (j, &v) in run.iter().enumerate() {
                    y[base + j] += v;
                }
            }
            for d in (0..coord.len()).rev() {
                coord[d] += 1;
                if coord[d] < outer_dims[d] {
                    break;
                }
                coord[d] = 0;
            }
        }
    }
}
