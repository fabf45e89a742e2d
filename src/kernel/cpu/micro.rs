//! The GEMM microkernels of each element type on this CPU: gemm's own f32/f64 kernels (scalar,
//! AVX2 with FMA, AVX-512), the widest this CPU runs, chosen once at run time. `Real::micro`
//! hands them to the GEMM driver (gemm.rs).

use gemm_common::microkernel::MicroKernelFn;

/// The largest `MR` of any element type and CPU; every `MR` divides it.
pub(super) const MAX_MR: usize = 64;

/// The microkernels for one element type on this CPU: `table[ceil(m / lanes) - 1][n - 1]`
/// computes an `m x n` tile (m ≤ `mr`, n ≤ `nr`).
#[derive(Clone, Copy)]
pub struct Micro<T: 'static> {
    /// Rows of a tile (and of a packed panel): `lanes` × the table's height.
    pub mr: usize,
    /// Columns of a tile.
    pub nr: usize,
    pub(super) lanes: usize,
    pub(super) table: &'static [&'static [MicroKernelFn<T>]],
}

macro_rules! micro {
    ($name:ident, $ty:ty, $module:path, $lanes:expr, [$($row:expr),*]) => {
        static $name: Micro<$ty> = {
            use $module as m;
            Micro {
                mr: m::MR_DIV_N * $lanes,
                nr: m::NR,
                lanes: $lanes,
                table: &[$(&m::UKR[$row]),*],
            }
        };
        const _: () = {
            use $module as m;
            assert!(MAX_MR % (m::MR_DIV_N * $lanes) == 0);
        };
    };
}

micro!(
    F32_SCALAR,
    f32,
    gemm_f32::microkernel::scalar::f32,
    1,
    [0, 1]
);
micro!(
    F64_SCALAR,
    f64,
    gemm_f64::microkernel::scalar::f64,
    1,
    [0, 1]
);
#[cfg(target_arch = "x86_64")]
micro!(F32_FMA, f32, gemm_f32::microkernel::fma::f32, 8, [0, 1]);
#[cfg(target_arch = "x86_64")]
micro!(F64_FMA, f64, gemm_f64::microkernel::fma::f64, 4, [0, 1]);
#[cfg(target_arch = "x86_64")]
micro!(
    F32_AVX512,
    f32,
    gemm_f32::microkernel::avx512f::f32,
    16,
    [0, 1, 2, 3]
);
#[cfg(target_arch = "x86_64")]
micro!(
    F64_AVX512,
    f64,
    gemm_f64::microkernel::avx512f::f64,
    8,
    [0, 1, 2, 3]
);

/// The widest microkernels this CPU runs: AVX-512, else AVX2 with FMA, else scalar.
#[derive(Clone, Copy, PartialEq)]
enum Isa {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Fma,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

fn isa() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx512f") {
            return Isa::Avx512;
        }
        if has!("avx2") && has!("fma") {
            return Isa::Fma;
        }
    }
    Isa::Scalar
}

/// The microkernels of f32 on this CPU.
pub fn micro_f32() -> &'static Micro<f32> {
    match isa() {
        Isa::Scalar => &F32_SCALAR,
        #[cfg(target_arch = "x86_64")]
        Isa::Fma => &F32_FMA,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => &F32_AVX512,
    }
}

/// The microkernels of f64 on this CPU.
pub fn micro_f64() -> &'static Micro<f64> {
    match isa() {
        Isa::Scalar => &F64_SCALAR,
        #[cfg(target_arch = "x86_64")]
        Isa::Fma => &F64_FMA,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => &F64_AVX512,
    }
}
