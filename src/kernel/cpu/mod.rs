//! CPU kernel support: the element type of a kernel (`Real`: f32, and f64 for gradient checks),
//! one launch's buffers (`Io`), the GEMM driver over gemm's microkernels and the SIMD tiles of
//! the direct convolutions. The kernels themselves live with their ops (`ops::*::eval`).

// SIMD intrinsics, raw views of disjoint output ranges: each `unsafe` says why it is sound.
#[allow(unsafe_code)]
mod conv_simd;
#[allow(unsafe_code)]
mod gemm;
#[allow(unsafe_code)]
pub(crate) mod io;
mod micro;
mod real;

pub use conv_simd::{
    Direct, GRAD_INS, GRAD_OUTS, Segment, WINDOW_GRAD_INS, WINDOW_GRAD_OUTS, WINDOW_GRAD_PIXELS,
    WINDOW_OUTS, direct,
};
pub use gemm::{
    Mat, matmul, matmul_scratch, pack_lhs, pack_with, packed_bound, packed_len, product,
};
pub use io::{Io, TILE, f64_scratch_len};
pub use real::Real;
