//! Elementwise ops: one table of unary functions and one of binary functions with numpy-style
//! broadcasting. Adding an activation is a row here.

use serde::Serialize;

use super::{Primitive, ShapeResult, TensorType, expect_arity, expect_f32, fmt_shape};

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(tag = "fn", rename_all = "snake_case")]
pub enum UnaryFn {
    Relu,
    LeakyRelu {
        slope: f64,
    },
    /// Exact gelu (erf); `Tanh` approximation is separate so its gradient matches it.
    Gelu,
    GeluTanh,
    Sigmoid,
    Tanh,
}

impl UnaryFn {
    /// FLOPs per element: a rough, documented count (docs/config.md, "FLOPs").
    fn cost(self) -> u64 {
        match self {
            UnaryFn::Relu => 1,
            UnaryFn::LeakyRelu { .. } => 2,
            UnaryFn::Sigmoid | UnaryFn::Tanh => 4,
            UnaryFn::Gelu | UnaryFn::GeluTanh => 8,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            UnaryFn::Relu => "relu",
            UnaryFn::LeakyRelu { .. } => "leaky_relu",
            UnaryFn::Gelu => "gelu",
            UnaryFn::GeluTanh => "gelu_tanh",
            UnaryFn::Sigmoid => "sigmoid",
            UnaryFn::Tanh => "tanh",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Unary {
    pub f: UnaryFn,
}

impl Primitive for Unary {
    fn name(&self) -> &'static str {
        self.f.name()
    }
    fn infer(&self, inputs: &[&TensorType]) -> ShapeResult {
        expect_arity(inputs, 1)?;
        expect_f32(inputs[0], "the input")?;
        Ok(vec![inputs[0].clone()])
    }
    fn flops(&self, _: &[&TensorType], out: &[TensorType]) -> u64 {
        out[0].numel() as u64 * self.f.cost()
    }
    fn attrs(&self) -> Vec<(&'static str, String)> {
        match self.f {
            UnaryFn::LeakyRelu { slope } => vec![("slope", slope.to_string())],
            _ => Vec::new(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BinaryFn {
    Add,
    Mul,
}

/// `a op b` with numpy broadcasting (trailing dims aligned; a dim of 1 stretches).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Binary {
    pub f: BinaryFn,
}

impl Primitive for Binary {
    fn name(&self) -> &'static str {
        match self.f {
            BinaryFn::Add => "add",
            BinaryFn::Mul => "mul",
        }
    }
    fn infer(&self, inputs: &[&TensorType]) -> ShapeResult {
        expect_arity(inputs, 2)?;
        expect_f32(inputs[0], "the first input")?;
        expect_f32(inputs[1], "the second input")?;
        Ok(vec![TensorType::f32(broadcast(
            &inputs[0].shape,
            &inputs[1].shape,
        )?)])
    }
    fn flops(&self, _: &[&TensorType], out: &[TensorType]) -> u64 {
        out[0].numel() as u64
    }
}

/// The numpy broadcast of two shapes, or why they do not broadcast.
pub fn broadcast(a: &[usize], b: &[usize]) -> Result<Vec<usize>, String> {
    let rank = a.len().max(b.len());
    let mut out = vec![0; rank];
    for i in 0..rank {
        let da = if i < rank - a.len() {
            1
        } else {
            a[i - (rank - a.len())]
        };
        let db = if i < rank - b.len() {
            1
        } else {
            b[i - (rank - b.len())]
        };
        out[i] = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => {
                return Err(format!(
                    "shapes {} and {} do not match (nor broadcast)",
                    fmt_shape(a),
                    fmt_shape(b)
                ));
            }
        };
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::broadcast;

    #[test]
    fn broadcasting_follows_numpy() {
        assert_eq!(
            broadcast(&[4, 16, 7, 7], &[16, 1, 1]).unwrap(),
            vec![4, 16, 7, 7]
        );
        assert_eq!(broadcast(&[3, 1], &[1, 5]).unwrap(), vec![3, 5]);
        assert!(broadcast(&[2, 16, 28, 28], &[2, 32, 14, 14]).is_err());
    }
}
