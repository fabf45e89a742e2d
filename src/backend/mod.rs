//! Backends run a plan. The only module allowed `unsafe` (raw views of planned memory, GEMM).

pub mod cpu;
pub mod gpu;
