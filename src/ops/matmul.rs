//! Matrix product over the last dim: `x [.., K] · wᵀ` with `w [M, K]` (PyTorch's linear layout).

use serde::Serialize;

use super::{Primitive, ShapeResult, TensorType, expect_arity, expect_f32, fmt_shape};

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MatMul;

impl Primitive for MatMul {
    fn name(&self) -> &'static str {
        "matmul"
    }
    fn infer(&self, inputs: &[&TensorType]) -> ShapeResult {
        expect_arity(inputs, 2)?;
        let (x, w) = (inputs[0], inputs[1]);
        expect_f32(x, "the input")?;
        let k = *x.shape.last().ok_or("expects an input of rank 1 or more")?;
        if w.rank() != 2 || w.shape[1] != k {
            return Err(format!(
                "input {} does not fit weight {}",
                fmt_shape(&x.shape),
                fmt_shape(&w.shape)
            ));
        }
        let mut shape = x.shape.clone();
        *shape.last_mut().expect("rank >= 1") = w.shape[0];
        Ok(vec![TensorType::f32(shape)])
    }
    fn flops(&self, inputs: &[&TensorType], out: &[TensorType]) -> u64 {
        (2 * inputs[1].shape[1] as u64).saturating_mul(out[0].numel() as u64)
    }
}
