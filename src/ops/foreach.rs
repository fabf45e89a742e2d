//! `Foreach`: one op applied to many tensor groups in one launch, as PyTorch's foreach and
//! fused optimizers apply one update to every parameter. The fusion pass (schedule/fuse.rs)
//! makes it from ops that answer `Primitive::foreach`, all with the same attributes; its inputs
//! and outputs are the members', group after group, so liveness, memory and in-place updates
//! still see every tensor. The CPU evaluates each group with the member's own code (the same
//! bits as unfused); the GPU runs the member's multi-tensor kernels (`Primitive::gpu_foreach`),
//! which cover many tensors per dispatch.

use serde::Serialize;

use super::{Eval, OpKind, Primitive, ShapeResult};
use crate::kernel::cpu::{Io, Real};
use crate::kernel::gpu::{Dispatch, KernelArgs};
use crate::tensor::TensorType;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Foreach {
    /// The op every group runs (never a `Foreach`).
    pub inner: Box<OpKind>,
    /// How many groups: the inputs are `groups` runs of the inner op's inputs, the outputs
    /// `groups` runs of its outputs.
    pub groups: usize,
}

impl Foreach {
    /// Inputs per group, for `inputs` inputs in all.
    fn arity(&self, inputs: usize) -> usize {
        inputs / self.groups.max(1)
    }
}

impl Primitive for Foreach {
    fn name(&self) -> &'static str {
        self.inner
            .primitive()
            .foreach()
            .unwrap_or("foreach (of an op without one)")
    }
    fn infer(&self, inputs: &[&TensorType]) -> ShapeResult {
        let inner = self.inner.primitive();
        if inner.foreach().is_none() || matches!(*self.inner, OpKind::Foreach(_)) {
            return Err(format!("`{}` has no multi-tensor form", inner.name()));
        }
        if self.groups == 0 || !inputs.len().is_multiple_of(self.groups) {
            return Err(format!(
                "{} inputs do not split into {} groups",
                inputs.len(),
                self.groups
            ));
        }
        let mut out = Vec::new();
        for (k, group) in inputs.chunks(self.arity(inputs.len())).enumerate() {
            out.extend(
                inner
                    .infer(group)
                    .map_err(|e| format!("group {k} of {}: {e}", self.groups))?,
            );
        }
        Ok(out)
    }
    fn flops(&self, inputs: &[&TensorType], outputs: &[TensorType]) -> u64 {
        let a = self.arity(inputs.len());
        let b = outputs.len() / self.groups.max(1);
        (0..self.groups)
            .map(|k| {
                let ins = &inputs[k * a..(k + 1) * a];
                self.inner
                    .primitive()
                    .flops(ins, &outputs[k * b..(k + 1) * b])
            })
            .sum()
    }
    fn attrs(&self) -> Vec<(&'static str, String)> {
        let mut a = self.inner.primitive().attrs();
        a.push(("groups", self.groups.to_string()));
        a
    }
    fn gpu(&self, args: &KernelArgs) -> Result<Vec<Dispatch>, String> {
        self.inner.primitive().gpu_foreach(self.groups, args)
    }
}

impl Eval for Foreach {
    fn eval<T: Real>(&self, io: &mut Io<'_, T>) {
        let a = self.arity(io.inputs());
        let b = io.out_types.len() / self.groups;
        for k in 0..self.groups {
            let mut group = io.group(k * a..(k + 1) * a, k * b..(k + 1) * b);
            self.inner.eval(&mut group);
        }
    }
}
