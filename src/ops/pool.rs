//! Max and average pooling over H and W of an NCHW tensor.

use serde::Serialize;

use super::conv::window_out;
use super::{Primitive, ShapeResult, TensorType, expect_arity, expect_f32, fmt_shape};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PoolKind {
    Max,
    /// Average; padded zeros count in the divisor (PyTorch's count_include_pad=True).
    Avg,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Pool2d {
    pub kind: PoolKind,
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 2],
}

impl Primitive for Pool2d {
    fn name(&self) -> &'static str {
        match self.kind {
            PoolKind::Max => "max_pool2d",
            PoolKind::Avg => "avg_pool2d",
        }
    }
    fn infer(&self, inputs: &[&TensorType]) -> ShapeResult {
        expect_arity(inputs, 1)?;
        let x = inputs[0];
        expect_f32(x, "the input")?;
        if x.rank() != 4 {
            return Err(format!(
                "expects an image batch [N, C, H, W], got {}",
                fmt_shape(&x.shape)
            ));
        }
        if self.padding[0] * 2 > self.kernel[0] || self.padding[1] * 2 > self.kernel[1] {
            return Err(format!(
                "padding {:?} must be at most half the kernel {:?} (as in PyTorch)",
                self.padding, self.kernel
            ));
        }
        let oh = window_out(
            x.shape[2],
            self.kernel[0],
            self.stride[0],
            self.padding[0],
            1,
        );
        let ow = window_out(
            x.shape[3],
            self.kernel[1],
            self.stride[1],
            self.padding[1],
            1,
        );
        match (oh, ow) {
            (Some(oh), Some(ow)) => Ok(vec![TensorType::f32(vec![x.shape[0], x.shape[1], oh, ow])]),
            _ => Err(format!(
                "a {}x{} window does not fit a {}x{} input",
                self.kernel[0], self.kernel[1], x.shape[2], x.shape[3]
            )),
        }
    }
    fn flops(&self, _: &[&TensorType], out: &[TensorType]) -> u64 {
        (out[0].numel() as u64).saturating_mul((self.kernel[0] * self.kernel[1]) as u64)
    }
    fn attrs(&self) -> Vec<(&'static str, String)> {
        vec![
            ("kernel", format!("{:?}", self.kernel)),
            ("stride", format!("{:?}", self.stride)),
            ("padding", format!("{:?}", self.padding)),
        ]
    }
}
