//! The CPU backend: the reference every GPU kernel is tested against and the fallback where no
//! GPU exists. Kernels live with their ops (`ops::*::eval`); this module holds what they share
//! (the element type, launch I/O, GEMM) and the executors.

mod direct;
mod exec;
mod gemm;
pub mod interpret;
mod io;
mod real;

pub use direct::{
    Direct, GRAD_INS, GRAD_OUTS, Segment, WINDOW_GRAD_INS, WINDOW_GRAD_OUTS, WINDOW_GRAD_PIXELS,
    WINDOW_OUTS, direct,
};
pub use exec::{CpuExec, on_pool};
pub use gemm::{
    Mat, matmul, matmul_scratch, pack_lhs, pack_with, packed_bound, packed_len, product,
};
pub use interpret::{Feeds, eval_once, interpret};
pub use io::{Io, StepCtx, f64_scratch_len};
pub use real::Real;
