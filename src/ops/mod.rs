//! The primitive ops. Each op is defined in one place (its family's file): its attributes, its
//! shape rule and its cost. [`OpKind`] is the only list of every op and [`OpKind::primitive`] its
//! only dispatch point: passes ask an op for properties, never for its name.

mod attention;
mod conv;
mod elementwise;
mod foreach;
mod kv_cache;
mod loss;
mod matmul;
mod movement;
mod norm;
mod optim;
mod pool;
mod random;
mod reduce;
mod vjp;

pub use attention::{Attention, AttentionGrad, MAX_GPU_HEAD};
pub use conv::{Conv2d, Conv2dGradInput, Conv2dGradWeight};
pub use elementwise::{
    Binary, BinaryFn, Chain, ElementwiseFn, Link, Operand, Unary, UnaryFn, UnaryGrad, broadcast,
};
pub use foreach::Foreach;
pub use kv_cache::{AttentionDecode, CacheWrite};
pub use loss::{CrossEntropy, CrossEntropyGrad, Mse, MseGrad};
pub use matmul::{BatchMatMul, MatMul, MatMulBias, MatMulGradInput, MatMulGradWeight};
pub use movement::{
    CausalFill, Concat, Fill, Gather, GatherGrad, MAX_PERMUTE_RANK, Permute, Reshape, Slice, Split,
    check_permutation,
};
pub use norm::{
    BatchNorm, BatchNormGrad, BatchNormRelu, BatchNormReluGrad, BatchNormRunningStats, LayerNorm,
    LayerNormGrad,
};
pub use optim::{AdamStep, CountUp, GradNormCoef, SgdStep};
pub use pool::{Pool2d, Pool2dGrad, PoolKind};
pub use random::{Dropout, DropoutKey};
pub use reduce::{MeanAxes, MeanAxesGrad, Softmax, SoftmaxGrad, SumTo};
pub use vjp::{GraphSink, VjpArgs, VjpCx, VjpResult};

use serde::Serialize;

use crate::kernel::cpu::{Io, Real};
use crate::kernel::gpu::{Dispatch, KernelArgs};
use crate::tensor::{DType, TensorType};

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
    /// The GPU kernels the op launches, in order (kernel/gpu.rs has the conventions).
    fn gpu(&self, _args: &KernelArgs) -> Result<Vec<Dispatch>, String> {
        Err(format!("`{}` has no GPU kernel yet", self.name()))
    }
    /// This op with unary `f` applied to its output 0 in the same launch (the fusion pass
    /// fuses an activation into the op before it where nothing else reads that output), or
    /// None where it has no such form. Same bits as the two launches.
    fn with_epilogue(&self, _f: UnaryFn) -> Option<OpKind> {
        None
    }
    /// The name of the op's multi-tensor form ([`Foreach`]: this op, with these attributes,
    /// over many tensor groups in one launch), or None where it has none. The fusion pass
    /// groups only ops that answer, only with ops equal to them, and only where no op reads
    /// their outputs (updates). An op that answers takes no CPU scratch.
    fn foreach(&self) -> Option<&'static str> {
        None
    }
    /// The GPU kernels of `groups` instances at once: `args` holds the instances' inputs group
    /// after group, then their outputs likewise (kernel/gpu.rs `Bind::Window` binds many
    /// tensors at once).
    fn gpu_foreach(&self, _groups: usize, _args: &KernelArgs) -> Result<Vec<Dispatch>, String> {
        Err(format!("`{}` has no multi-tensor kernel", self.name()))
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

impl OpKind {
    /// Words of GPU workspace the op's kernels bind for these types (kernel/gpu.rs
    /// `workspace`); 0 where it has no GPU kernel or a tensor too large for 32-bit kernel
    /// indices (a CPU-only plan), which the GPU executor reports itself.
    pub fn gpu_workspace(&self, inputs: &[&TensorType], outputs: &[TensorType]) -> usize {
        let too_large = |t: &TensorType| t.numel() > u32::MAX as usize;
        if inputs.iter().copied().chain(outputs).any(too_large) {
            return 0;
        }
        self.primitive()
            .gpu(&KernelArgs { inputs, outputs })
            .map_or(0, |ds| crate::kernel::gpu::workspace(&ds))
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
    BatchMatMul(BatchMatMul),
    Unary(Unary),
    Binary(Binary),
    Softmax(Softmax),
    Attention(Attention),
    MeanAxes(MeanAxes),
    BatchNorm(BatchNorm),
    LayerNorm(LayerNorm),
    Pool2d(Pool2d),
    Reshape(Reshape),
    Permute(Permute),
    Concat(Concat),
    Split(Split),
    CausalFill(CausalFill),
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
    AttentionGrad(AttentionGrad),
    MeanAxesGrad(MeanAxesGrad),
    CrossEntropyGrad(CrossEntropyGrad),
    MseGrad(MseGrad),
    Conv2dGradInput(Conv2dGradInput),
    Conv2dGradWeight(Conv2dGradWeight),
    Pool2dGrad(Pool2dGrad),
    // The key/value cache of the decode-step model (nn/decode.rs).
    AttentionDecode(AttentionDecode),
    CacheWrite(CacheWrite),
    // Made by the fusion pass (schedule/fuse/).
    Foreach(Foreach),
    BatchNormRelu(BatchNormRelu),
    BatchNormReluGrad(BatchNormReluGrad),
    Chain(Chain),
    MatMulBias(MatMulBias),
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
