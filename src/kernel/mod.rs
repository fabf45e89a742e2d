//! Kernel support, below the ops: what an op's CPU evaluation and GPU launch are written with.
//! `cpu` has the element type (`Real`), one launch's buffers (`Io`), the GEMM driver and the
//! SIMD convolution tiles; `gpu` the description of a GPU launch as pure data (`Dispatch`,
//! `KernelArgs`, `Params`, `Shader`). It knows tensor types, never ops, graphs or plans.

pub mod cpu;
pub mod gpu;
