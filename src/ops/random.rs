//! Dropout: zeroes each element with probability p and scales the rest by 1/(1-p) in training.
//! The mask comes from a counter-based stream keyed by `stream`, so a recomputation replays it.

use serde::Serialize;

use super::{Primitive, ShapeResult, TensorType, expect_arity, expect_f32};

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Dropout {
    pub p: f64,
    /// Identifies this dropout's random stream (its index among the graph's dropouts).
    pub stream: u64,
}

impl Primitive for Dropout {
    fn name(&self) -> &'static str {
        "dropout"
    }
    fn infer(&self, inputs: &[&TensorType]) -> ShapeResult {
        expect_arity(inputs, 1)?;
        expect_f32(inputs[0], "the input")?;
        Ok(vec![inputs[0].clone()])
    }
    fn flops(&self, _: &[&TensorType], out: &[TensorType]) -> u64 {
        2 * out[0].numel() as u64
    }
    fn attrs(&self) -> Vec<(&'static str, String)> {
        vec![("p", self.p.to_string())]
    }
}
