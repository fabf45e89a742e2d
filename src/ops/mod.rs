//! The primitive ops. Each op is defined in one place (its family's file): its attributes, its
//! shape rule and its cost. [`OpKind`] is the only list of every op and [`OpKind::primitive`] its
//! only dispatch point: passes ask an op for properties, never for its name.

mod conv;
mod elementwise;
mod loss;
mod matmul;
mod movement;
mod norm;
mod optim;
mod pool;
mod random;
mod reduce;

pub use conv::{Conv2d, Conv2dGradInput, Conv2dGradWeight};
pub use elementwise::{Binary, BinaryFn, Unary, UnaryFn, UnaryGrad, broadcast};
pub use loss::{CrossEntropy, CrossEntropyGrad, Mse, MseGrad};
pub use matmul::{MatMul, MatMulGradInput, MatMulGradWeight};
pub use movement::{Concat, Fill, Gather, GatherGrad, Reshape, Slice};
pub use norm::{BatchNorm, BatchNormGrad, BatchNormRunningStats, LayerNorm, LayerNormGrad};
pub use optim::{AdamStep, CountUp, GradNormCoef, SgdStep};
pub use pool::{Pool2d, Pool2dGrad, PoolKind};
pub use random::{Dropout, DropoutKey};
pub use reduce::{MeanAxes, MeanAxesGrad, Softmax, SoftmaxGrad, SumTo};

use serde::Serialize;

pub use crate::autodiff::{VjpArgs, VjpCx, VjpResult};
use crate::backend::cpu::{Io, Real};
pub use crate::backend::gpu::kernel::{Dispatch, KernelArgs};

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

/// A shape rule's complaint, in words about the op's inputs; the graph builder adds the layer,
/// the input layers and their config locations.
pub type ShapeResult = Result<Vec<TensorType>, String>;

/// What recomputing an op costs, for checkpointing: memory-bound ops are cheap to bring back
/// during backward; convolutions and matmuls are kept ("save dots").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Cost {
    Cheap,
    Compute,
}

/// What every primitive answers: shape rule, cost, gradient. Its CPU evaluation is [`Eval`].
pub trait Primitive {
    /// The op's name in plans, graphs and errors.
    fn name(&self) -> &'static str;
    /// Output types from input types, or why the inputs do not fit.
    fn infer(&self, inputs: &[&TensorType]) -> ShapeResult;
    /// Floating-point operations to compute the outputs (a multiply-add counts 2).
    fn flops(&self, inputs: &[&TensorType], outputs: &[TensorType]) -> u64;
    /// Attributes for graph export, as (key, value) text.
    fn attrs(&self) -> Vec<(&'static str, String)> {
        Vec::new()
    }
    /// The vector-Jacobian product, built from graph ops: a gradient for each input that
    /// `args.wants`, given the gradients of the outputs (None where an output has none).
    fn vjp(&self, _cx: &mut VjpCx, _args: &VjpArgs) -> VjpResult {
        Err(format!("`{}` has no gradient", self.name()))
    }
    /// Recompute class for checkpointing.
    fn cost(&self) -> Cost {
        Cost::Cheap
    }
    /// The input whose memory output 0 may take when that input dies here (elementwise ops,
    /// evaluated through `Io::map`).
    fn inplace(&self) -> Option<usize> {
        None
    }
    /// The GPU kernels the op launches, in order (backend/gpu/kernel.rs has the conventions).
    fn gpu(&self, _args: &KernelArgs) -> Result<Vec<Dispatch>, String> {
        Err(format!("`{}` has no GPU kernel yet", self.name()))
    }
}

/// An op's CPU evaluation: reads `io`'s inputs, writes every element of its outputs, allocates
/// nothing. Generic over the element type so gradient checks run the same code in f64.
pub trait Eval {
    fn eval<T: Real>(&self, io: &mut Io<'_, T>);
    /// Elements of workspace `eval` takes through `Io::split_scratch` for these types when the
    /// pool has `threads` threads. The executor allocates the largest once, in `CpuExec::new`;
    /// a kernel's results must not depend on `threads` or on how much it was given.
    fn scratch(&self, _inputs: &[&TensorType], _outputs: &[TensorType], _threads: usize) -> usize {
        0
    }
}

/// Data fed to the graph each step.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Input {
    pub name: String,
    pub ty: TensorType,
}

impl Primitive for Input {
    fn name(&self) -> &'static str {
        "input"
    }
    fn infer(&self, inputs: &[&TensorType]) -> ShapeResult {
        expect_arity(inputs, 0)?;
        Ok(vec![self.ty.clone()])
    }
    fn flops(&self, _: &[&TensorType], _: &[TensorType]) -> u64 {
        0
    }
    fn attrs(&self) -> Vec<(&'static str, String)> {
        vec![("name", self.name.clone())]
    }
}

/// A learned parameter or a persistent buffer (batchnorm running statistics); its index
/// points into `Graph::params`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Parameter {
    pub index: usize,
    pub ty: TensorType,
}

impl Primitive for Parameter {
    fn name(&self) -> &'static str {
        "parameter"
    }
    fn infer(&self, inputs: &[&TensorType]) -> ShapeResult {
        expect_arity(inputs, 0)?;
        Ok(vec![self.ty.clone()])
    }
    fn flops(&self, _: &[&TensorType], _: &[TensorType]) -> u64 {
        0
    }
}

impl Eval for Input {
    fn eval<T: Real>(&self, _: &mut Io<'_, T>) {
        unreachable!("inputs are fed, not evaluated")
    }
}

impl Eval for Parameter {
    fn eval<T: Real>(&self, _: &mut Io<'_, T>) {
        unreachable!("parameters are fed, not evaluated")
    }
}

macro_rules! op_kinds {
    ($($variant:ident($ty:ty)),* $(,)?) => {
        /// Every primitive op. The one place that lists them all.
        #[derive(Clone, Debug, PartialEq, Serialize)]
        #[serde(tag = "op", rename_all = "snake_case")]
        pub enum OpKind { $($variant($ty)),* }

        impl OpKind {
            /// Every variant's name, in declaration order: what a coverage test iterates, so
            /// a new op cannot go unchecked.
            pub const VARIANTS: &'static [&'static str] = &[$(stringify!($variant)),*];
            /// The variant's name, as listed in [`OpKind::VARIANTS`].
            pub fn variant(&self) -> &'static str {
                match self { $(OpKind::$variant(_) => stringify!($variant)),* }
            }
            pub fn primitive(&self) -> &dyn Primitive {
                match self { $(OpKind::$variant(p) => p),* }
            }
            pub fn eval<T: Real>(&self, io: &mut Io<'_, T>) {
                match self { $(OpKind::$variant(p) => p.eval(io)),* }
            }
            /// [`Eval::scratch`] of the op.
            pub fn scratch(
                &self,
                inputs: &[&TensorType],
                outputs: &[TensorType],
                threads: usize,
            ) -> usize {
                match self { $(OpKind::$variant(p) => p.scratch(inputs, outputs, threads)),* }
            }
        }
    };
}

op_kinds! {
    Input(Input),
    Parameter(Parameter),
    Conv2d(Conv2d),
    MatMul(MatMul),
    Unary(Unary),
    Binary(Binary),
    Softmax(Softmax),
    MeanAxes(MeanAxes),
    BatchNorm(BatchNorm),
    LayerNorm(LayerNorm),
    Pool2d(Pool2d),
    Reshape(Reshape),
    Concat(Concat),
    Gather(Gather),
    Dropout(Dropout),
    CrossEntropy(CrossEntropy),
    Mse(Mse),
    // Gradients and helpers the vjps build.
    UnaryGrad(UnaryGrad),
    MatMulGradInput(MatMulGradInput),
    MatMulGradWeight(MatMulGradWeight),
    SumTo(SumTo),
    Fill(Fill),
    Slice(Slice),
    GatherGrad(GatherGrad),
    GradNormCoef(GradNormCoef),
    SgdStep(SgdStep),
    AdamStep(AdamStep),
    CountUp(CountUp),
    BatchNormGrad(BatchNormGrad),
    BatchNormRunningStats(BatchNormRunningStats),
    LayerNormGrad(LayerNormGrad),
    SoftmaxGrad(SoftmaxGrad),
    MeanAxesGrad(MeanAxesGrad),
    CrossEntropyGrad(CrossEntropyGrad),
    MseGrad(MseGrad),
    Conv2dGradInput(Conv2dGradInput),
    Conv2dGradWeight(Conv2dGradWeight),
    Pool2dGrad(Pool2dGrad),
}

pub(crate) fn expect_arity(inputs: &[&TensorType], n: usize) -> Result<(), String> {
    if inputs.len() != n {
        return Err(format!("takes {n} input(s), got {}", inputs.len()));
    }
    Ok(())
}

pub(crate) fn expect_f32(t: &TensorType, what: &str) -> Result<(), String> {
    if t.dtype != DType::F32 {
        return Err(format!("{what} must be f32, got {}", t.dtype.name()));
    }
    Ok(())
}

/// Resolves a possibly negative axis against a rank.
pub(crate) fn axis(axis: i64, rank: usize) -> Result<usize, String> {
    let a = if axis < 0 { axis + rank as i64 } else { axis };
    if a < 0 || a >= rank as i64 {
        return Err(format!(
            "axis {axis} is out of range for a tensor of rank {rank}"
        ));
    }
    Ok(a as usize)
}

/// Shared by the ops' unit tests.
#[cfg(test)]
pub(crate) mod testing {
    /// `got` equals `want` (a direct formula in f64) to 1e-12 relative, element by element.
    pub(crate) fn assert_matches_definition(what: &str, got: &[f64], want: &[f64]) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        for (i, (a, b)) in got.iter().zip(want).enumerate() {
            assert!(
                (a - b).abs() <= 1e-12 * (1.0 + b.abs()),
                "{what}[{i}]: {a} vs {b}"
            );
        }
    }

    /// `run` gives the same bits on pools of 1 and 3 threads as on the default pool.
    pub(crate) fn assert_same_bits_on_any_thread_count(run: impl Fn() -> Vec<Vec<f32>> + Sync) {
        let want = run();
        for threads in [1, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let got = pool.install(&run);
            assert_eq!(got.len(), want.len(), "{threads} threads");
            for (a, b) in got.iter().zip(&want) {
                assert!(
                    a.len() == b.len() && a.iter().zip(b).all(|(p, q)| p.to_bits() == q.to_bits()),
                    "{threads} threads"
                );
            }
        }
    }
}
