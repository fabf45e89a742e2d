//! The types every layer shares, at the bottom of the crate: a tensor's element type and
//! shape (`TensorType`), the handle of one tensor in a graph (`TensorId`) and the runtime
//! scalars of one step (`StepCtx`). Nothing here knows ops, graphs or backends.

use petgraph::graph::NodeIndex;
use serde::Serialize;

/// Element type of a tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    F32,
    I32,
}

impl DType {
    pub fn size(self) -> usize {
        4
    }
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::I32 => "i32",
        }
    }
}

/// Shape and element type: what an edge of the graph carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TensorType {
    pub shape: Vec<usize>,
    pub dtype: DType,
}

impl TensorType {
    pub fn f32(shape: Vec<usize>) -> TensorType {
        TensorType {
            shape,
            dtype: DType::F32,
        }
    }
    /// Element count (saturating; a graph never holds a type above [`MAX_ELEMENTS`]).
    pub fn numel(&self) -> usize {
        self.shape.iter().fold(1usize, |n, &d| n.saturating_mul(d))
    }
    /// Refuses types too large for any device before their sizes can overflow arithmetic.
    pub fn check_size(&self) -> Result<(), String> {
        match self.shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)) {
            Some(n) if n <= MAX_ELEMENTS => Ok(()),
            _ => Err(format!(
                "a tensor of shape {} is larger than the limit of 2^36 elements",
                fmt_shape(&self.shape)
            )),
        }
    }
    pub fn rank(&self) -> usize {
        self.shape.len()
    }
}

/// The most elements one tensor may have (256 GiB of f32: more than any device holds).
pub const MAX_ELEMENTS: usize = 1 << 36;

/// Shape of a list of dims as the user writes it: [16, 28, 28].
pub fn fmt_shape(shape: &[usize]) -> String {
    format!(
        "[{}]",
        shape
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// A node of the graph (petgraph's index).
pub type NodeId = NodeIndex<u32>;

/// One output of one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct TensorId {
    pub node: u32,
    pub output: u32,
}

impl TensorId {
    pub fn of(node: NodeId, output: usize) -> TensorId {
        TensorId {
            node: node.index() as u32,
            output: output as u32,
        }
    }
    pub fn node(self) -> NodeId {
        NodeIndex::new(self.node as usize)
    }
}

/// Runtime scalars of one step (uniforms on the GPU): fed to the plan, never baked into it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepCtx {
    /// Learning rate of this step (the schedule's value).
    pub lr: f64,
    /// Optimizer step count, 1 on the first step (Adam's bias correction, SGD's first momentum).
    pub step: u64,
    /// The run's seed; with `step` it keys every random stream (dropout masks).
    pub seed: u64,
}

impl Default for StepCtx {
    fn default() -> StepCtx {
        StepCtx {
            lr: 0.0,
            step: 1,
            seed: 0,
        }
    }
}
