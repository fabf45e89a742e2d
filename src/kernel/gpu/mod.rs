//! What an op asks the GPU to run: pure data, no wgpu types, so every op's file can say which
//! WGSL kernel it launches, over which of its tensors, with which parameters and grid
//! (`Primitive::gpu`). The executor turns these into pipelines and bind groups once, at
//! prepare time.
//!
//! The binding convention every kernel follows (`PREAMBLE` declares the first two):
//! - `@binding(0)`: `var<uniform> p: Params` (the kernel's own struct of 32-bit fields);
//! - `@binding(1)`: `var<uniform> step: Step` (runtime scalars: learning rate, step, seed);
//! - `@binding(2 + k)`: `var<storage, read_write>` for `Dispatch::bindings[k]`.
//!
//! A launch may ask for workspace (`Bind::Scratch`): memory its dispatches share and nothing
//! else reads, such as split-K partial sums. The memory planner gives each launch's workspace
//! an arena slot that lives for that launch only, like any tensor's.
//!
//! Every storage binding is `read_write`, inputs too: an in-place launch binds two ranges of
//! one buffer, and WebGPU forbids one buffer as read-only and writable storage in one dispatch.
//! Every storage binding covers whole vec4s (its length rounded up to 4 words), so a kernel
//! may declare it `array<vec4<f32>>` and read 16 bytes at a time (kernels/matmul.wgsl).

mod gemm;
pub mod multi;

pub use gemm::{Epilogue, Gemm, Tile, split_k, transpose_pays, transposed};

use std::borrow::Cow;

use crate::tensor::TensorType;

/// Threads per workgroup of the one-dimensional kernels.
pub const WORKGROUP: u32 = 256;
/// WebGPU's guaranteed `max_compute_workgroups_per_dimension`.
pub const MAX_GROUPS: u32 = 65_535;

/// The WGSL every kernel starts with: the two uniforms and the linear thread index of a grid
/// that `grid` may have folded into two dimensions.
pub const PREAMBLE: &str = include_str!("../../../kernels/common.wgsl");

/// What a storage binding is: an input or output tensor of the op, `len` words of the
/// launch's workspace from word `at` (a multiple of `SCRATCH_ALIGN`), or several tensors at
/// once (`Window`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bind {
    In(usize),
    Out(usize),
    Scratch { at: usize, len: usize },
    Window(Window),
}

/// Several tensors through one binding, for kernels that cover many tensors per dispatch:
/// inputs (outputs where `outputs`) `first`, `first + step`, ..., `count` of them, which must
/// live in one memory region. The executor binds the smallest window of that region's buffer
/// (from a storage-aligned offset) that holds them all, checks it against the adapter's binding
/// limit, and writes tensor k's word offset within the window into the dispatch's `Params`, at
/// word `table + k * row`. The kernel must not reach past each tensor's own length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub outputs: bool,
    pub first: usize,
    pub step: usize,
    pub count: usize,
    pub table: usize,
    pub row: usize,
}

impl Window {
    /// The tensors it binds: input (or output) indices, in table order.
    pub fn members(&self) -> impl Iterator<Item = usize> + use<> {
        let (first, step) = (self.first, self.step);
        (0..self.count).map(move |k| first + k * step)
    }
    /// The `Params` word tensor `k`'s offset goes to.
    pub fn word(&self, k: usize) -> usize {
        self.table + k * self.row
    }
}

/// Workspace bindings start at multiples of this many words (256 bytes: WebGPU's storage
/// offset alignment).
pub const SCRATCH_ALIGN: usize = 64;

/// Words of workspace `dispatches` bind: the end of their furthest `Bind::Scratch`.
pub fn workspace(dispatches: &[Dispatch]) -> usize {
    dispatches
        .iter()
        .flat_map(|d| &d.bindings)
        .map(|b| match *b {
            Bind::Scratch { at, len } => at + len,
            _ => 0,
        })
        .max()
        .unwrap_or(0)
}

/// WGSL source and the entry point to run.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Shader {
    /// A kernel file (`include_str!` of kernels/*.wgsl, after `PREAMBLE`), or source generated
    /// from a template (the elementwise table).
    pub source: Cow<'static, str>,
    pub entry: &'static str,
}

impl Shader {
    /// A kernel from a file: `PREAMBLE` followed by the file's text.
    pub fn file(text: &'static str, entry: &'static str) -> Shader {
        Shader {
            source: Cow::Owned(format!("{PREAMBLE}\n{text}")),
            entry,
        }
    }
}

/// The workgroup reductions `section` prepends: a fixed tree through workgroup memory, which
/// every WebGPU device runs.
pub const TREE: &str = include_str!("../../../kernels/tree.wgsl");
/// The same functions through subgroup shuffles (`Features::SUBGROUP`): two barriers instead
/// of log2(WORKGROUP) + 2. Still a fixed order, given the device's subgroup size.
pub const TREE_SUBGROUP: &str = include_str!("../../../kernels/tree_subgroup.wgsl");

/// `PREAMBLE`, `TREE`, then `text`: the source of a kernel that calls `tree_sum`/`tree_max`.
pub fn with_tree(text: &str) -> String {
    format!("{PREAMBLE}\n{TREE}\n{text}")
}

impl Shader {
    /// A kernel from a file that reduces with `tree_sum` or `tree_max` (`with_tree`).
    pub fn reducing(text: &'static str, entry: &'static str) -> Shader {
        Shader {
            source: with_tree(text).into(),
            entry,
        }
    }

    /// The source to compile on a device: with `subgroups`, `TREE_SUBGROUP` in place of
    /// `TREE` where the kernel has it; otherwise (and for kernels without it) as written.
    pub fn source_for(&self, subgroups: bool) -> Cow<'_, str> {
        match self.source.find(TREE) {
            Some(at) if subgroups => {
                let s = &self.source;
                Cow::Owned(format!(
                    "{}{TREE_SUBGROUP}{}",
                    &s[..at],
                    &s[at + TREE.len()..]
                ))
            }
            _ => Cow::Borrowed(&self.source),
        }
    }
}

/// Entry `entry` of a sectioned kernel file (kernels/reduce.wgsl, norm.wgsl, pool.wgsl): the
/// preamble, the shared tree reductions (`TREE`), the file's shared head (before its first
/// `// @entry` line) and that entry's own section, so that each module declares each binding
/// once (entries differ in `Params`).
pub fn section(text: &'static str, entry: &'static str) -> Shader {
    let mut parts = text.split("\n// @entry ");
    let head = parts.next().unwrap_or_default();
    let body = parts
        .find(|s| s.split_whitespace().next() == Some(entry))
        .unwrap_or_else(|| panic!("kernel file has no section `{entry}`"));
    Shader {
        source: with_tree(&format!("{head}\n// {body}")).into(),
        entry,
    }
}

/// One compute dispatch.
#[derive(Clone, Debug, PartialEq)]
pub struct Dispatch {
    pub shader: Shader,
    pub bindings: Vec<Bind>,
    /// `Params` as 32-bit words (f32 fields as their bits: `Params::f32`).
    pub params: Vec<u32>,
    pub workgroups: [u32; 3],
}

/// What a kernel is planned for: the launch's input and output types.
pub struct KernelArgs<'a> {
    pub inputs: &'a [&'a TensorType],
    pub outputs: &'a [TensorType],
}

impl KernelArgs<'_> {
    pub fn numel_in(&self, i: usize) -> usize {
        self.inputs[i].numel()
    }
    pub fn numel_out(&self, j: usize) -> usize {
        self.outputs[j].numel()
    }
}

/// Builds a `Params` struct word by word, in the order its WGSL fields are declared.
#[derive(Default)]
pub struct Params(pub Vec<u32>);

impl Params {
    pub fn new() -> Params {
        Params(Vec::new())
    }
    pub fn u32(mut self, v: usize) -> Params {
        self.0
            .push(u32::try_from(v).expect("a kernel parameter above u32 (checked at plan)"));
        self
    }
    pub fn f32(mut self, v: f64) -> Params {
        self.0.push((v as f32).to_bits());
        self
    }
    pub fn done(self) -> Vec<u32> {
        self.0
    }
}

/// The grid for `threads` threads of `WORKGROUP`: folded into two dimensions past 65,535
/// workgroups (`PREAMBLE`'s `linear_index` unfolds it). Kernels guard `i < n` themselves.
pub fn grid(threads: usize) -> [u32; 3] {
    groups(threads.div_ceil(WORKGROUP as usize))
}

/// `n` workgroups folded into two dimensions where needed.
pub fn groups(n: usize) -> [u32; 3] {
    let n = n.max(1) as u64;
    let max = MAX_GROUPS as u64;
    if n <= max {
        [n as u32, 1, 1]
    } else {
        let y = n.div_ceil(max);
        [n.div_ceil(y) as u32, y as u32, 1]
    }
}

/// A single dispatch over the whole of output 0, one thread per element.
pub fn per_element(
    shader: Shader,
    bindings: Vec<Bind>,
    params: Vec<u32>,
    n: usize,
) -> Vec<Dispatch> {
    vec![Dispatch {
        shader,
        bindings,
        params,
        workgroups: grid(n),
    }]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_kernels_with_the_tree_take_the_subgroup_variant() {
        let text = "fn head() {}\n// @entry a\nfn a() { tree_sum(); }\n";
        let reducing = section(text, "a");
        let swapped = reducing.source_for(true);
        assert!(swapped.contains(TREE_SUBGROUP) && !swapped.contains(TREE));
        assert!(swapped.ends_with("fn a() { tree_sum(); }\n"), "{swapped}");
        assert_eq!(reducing.source_for(false), reducing.source);
        let plain = Shader::file("fn b() {}", "b");
        assert_eq!(plain.source_for(true), plain.source);
    }

    #[test]
    fn grids_fold_past_the_dimension_limit() {
        assert_eq!(grid(1), [1, 1, 1]);
        assert_eq!(grid(257), [2, 1, 1]);
        let g = grid(40_000_000);
        assert!(g[0] <= MAX_GROUPS && g[1] > 1);
        assert!(g[0] as usize * g[1] as usize * WORKGROUP as usize >= 40_000_000);
    }
}
