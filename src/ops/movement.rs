//! Ops that move data without arithmetic: reshape (a view), concat, gather (embedding lookup).

use serde::Serialize;

use crate::backend::cpu::{Io, Real};

use super::{
    DType, Eval, Primitive, ShapeResult, TensorType, axis, expect_arity, expect_f32, fmt_shape,
};

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Reshape {
    pub shape: Vec<usize>,
}

impl Primitive for Reshape {
    fn name(&self) -> &'static str {
        "reshape"
    }
    fn infer(&self, inputs: &[&TensorType]) -> ShapeResult {
        expect_arity(inputs, 1)?;
        let x = inputs[0];
        let n: usize = self.shape.iter().product();
        if n != x.numel() {
            return Err(format!(
                "cannot reshape {} ({} elements) to {} ({n} elements)",
                fmt_shape(&x.shape),
                x.numel(),
                fmt_shape(&self.shape)
            ));
        }
        Ok(vec![TensorType {
            shape: self.shape.clone(),
            dtype: x.dtype,
        }])
    }
    fn flops(&self, _: &[&TensorType], _: &[TensorType]) -> u64 {
        0
    }
    fn attrs(&self) -> Vec<(&'static str, String)> {
        vec![("shape", fmt_shape(&self.shape))]
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Concat {
    pub axis: i64,
}

impl Primitive for Concat {
    fn name(&self) -> &'static str {
        "concat"
    }
    fn infer(&self, inputs: &[&TensorType]) -> ShapeResult {
        let first = inputs.first().ok_or("takes at least one input")?;
        let a = axis(self.axis, first.rank())?;
        let mut shape = first.shape.clone();
        for t in &inputs[1..] {
            let same_rest = t.rank() == first.rank()
                && (0..t.rank()).all(|i| i == a || t.shape[i] == first.shape[i]);
            if !same_rest || t.dtype != first.dtype {
                return Err(format!(
                    "shapes {} and {} differ outside the concat axis {a}",
                    fmt_shape(&first.shape),
                    fmt_shape(&t.shape)
                ));
            }
            shape[a] += t.shape[a];
        }
        Ok(vec![TensorType {
            shape,
            dtype: first.dtype,
        }])
    }
    fn flops(&self, _: &[&TensorType], _: &[TensorType]) -> u64 {
        0
    }
    fn attrs(&self) -> Vec<(&'static str, String)> {
        vec![("axis", self.axis.to_string())]
    }
}

/// Rows of a table [V, D] picked by integer ids [..]: output [.., D].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Gather;

impl Primitive for Gather {
    fn name(&self) -> &'static str {
        "gather"
    }
    fn infer(&self, inputs: &[&TensorType]) -> ShapeResult {
        expect_arity(inputs, 2)?;
        let (table, ids) = (inputs[0], inputs[1]);
        expect_f32(table, "the table")?;
        if ids.dtype != DType::I32 {
            return Err("expects integer ids: give the model input dtype = \"i32\"".into());
        }
        if table.rank() != 2 {
            return Err(format!(
                "expects a table [V, D], got {}",
                fmt_shape(&table.shape)
            ));
        }
        let mut shape = ids.shape.clone();
        shape.push(table.shape[1]);
        Ok(vec![TensorType::f32(shape)])
    }
    fn flops(&self, _: &[&TensorType], _: &[TensorType]) -> u64 {
        0
    }
}

/// A constant tensor (the loss gradient's seed of 1).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Fill {
    pub ty: TensorType,
    pub value: f64,
}

impl Primitive for Fill {
    fn name(&self) -> &'static str {
        "fill"
    }
    fn infer(&self, inputs: &[&TensorType]) -> ShapeResult {
        expect_arity(inputs, 0)?;
        Ok(vec![self.ty.clone()])
    }
    fn flops(&self, _: &[&TensorType], _: &[TensorType]) -> u64 {
        0
    }
    fn attrs(&self) -> Vec<(&'static str, String)> {
        vec![("value", self.value.to_string())]
    }
}

impl Eval for Fill {
    fn eval<T: Real>(&self, io: &mut Io<'_, T>) {
        let (_, mut outs) = io.split();
        outs[0].fill(T::of(self.value));
    }
}
