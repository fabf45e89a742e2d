//! What an op's vector-Jacobian product is given and how it adds its gradient ops. The vjp
//! builds ordinary graph ops through a [`GraphSink`], which the autodiff pass implements over
//! the graph, so ops depend on no graph type.

use super::OpKind;
use crate::tensor::{TensorId, TensorType};

/// What a vjp is given: the node's inputs and outputs, the gradient of each output (None where
/// nothing downstream depends on it), and which inputs need a gradient.
pub struct VjpArgs {
    pub inputs: Vec<TensorId>,
    pub outputs: Vec<TensorId>,
    pub grads: Vec<Option<TensorId>>,
    pub wants: Vec<bool>,
}

impl VjpArgs {
    /// The gradient of output 0, which every differentiable op has once it is reached.
    pub fn dy(&self) -> Result<TensorId, String> {
        self.grads[0].ok_or_else(|| "no gradient for the first output".to_string())
    }
    pub fn wants(&self, i: usize) -> bool {
        self.wants[i]
    }
}

/// A gradient for each input, in order (None: no gradient flows there).
pub type VjpResult = Result<Vec<Option<TensorId>>, String>;

/// Where a vjp's ops go: a graph under construction.
pub trait GraphSink {
    /// Adds an op over `inputs`; returns its outputs, or why the op does not fit them.
    fn add(&mut self, op: OpKind, inputs: &[TensorId]) -> Result<Vec<TensorId>, String>;
    fn ty(&self, t: TensorId) -> &TensorType;
}

/// How a vjp adds ops. Helpers that build one op sit beside it (`add`, `mul` in elementwise.rs,
/// `sum_to` in reduce.rs).
pub struct VjpCx<'s> {
    sink: &'s mut dyn GraphSink,
}

impl<'s> VjpCx<'s> {
    pub fn new(sink: &'s mut dyn GraphSink) -> VjpCx<'s> {
        VjpCx { sink }
    }
    /// Adds an op and returns its first output.
    pub fn op(&mut self, op: OpKind, inputs: &[TensorId]) -> Result<TensorId, String> {
        Ok(self.op_all(op, inputs)?[0])
    }
    /// Adds an op and returns all its outputs.
    pub fn op_all(&mut self, op: OpKind, inputs: &[TensorId]) -> Result<Vec<TensorId>, String> {
        let name = op.primitive().name();
        self.sink
            .add(op, inputs)
            .map_err(|e| format!("{name} in a gradient: {e}"))
    }
    pub fn ty(&self, t: TensorId) -> &TensorType {
        self.sink.ty(t)
    }
}
