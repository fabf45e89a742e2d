//! The element types the CPU backend computes in: f32 for training, f64 for gradient checks.

use std::fmt::Debug;
use std::ops::{Add, AddAssign, Div, Mul, Neg, Sub};

/// A float the CPU kernels are written over. Every op's CPU evaluation is generic over it, so
/// gradient checks run the very same code in f64.
pub trait Real:
    Copy
    + Send
    + Sync
    + Default
    + PartialOrd
    + Debug
    + 'static
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
{
    const ZERO: Self;
    const ONE: Self;
    /// Rounds an f64 to this type (attributes, hyperparameters, integer ids).
    fn of(x: f64) -> Self;
    fn to_f64(self) -> f64;
    fn exp(self) -> Self;
    fn ln(self) -> Self;
    fn sqrt(self) -> Self;
    fn tanh(self) -> Self;
    fn erf(self) -> Self;
    fn powi(self, n: i32) -> Self;
    fn is_finite(self) -> bool;
    /// The GEMM microkernels for this type on this CPU (micro.rs).
    fn micro() -> &'static super::micro::Micro<Self>;
    /// The slice as f32 when this type is f32: the kernels written for f32 alone
    /// (ops/conv/direct.rs) take it, the others fall back to generic code.
    fn as_f32(s: &[Self]) -> Option<&[f32]>;
    fn as_f32_mut(s: &mut [Self]) -> Option<&mut [f32]>;
    fn max(self, other: Self) -> Self {
        if other > self { other } else { self }
    }
    fn min(self, other: Self) -> Self {
        if other < self { other } else { self }
    }
    fn abs(self) -> Self {
        if self < Self::ZERO { -self } else { self }
    }
    /// An integer id stored in a float buffer (labels, token ids).
    fn index(self) -> usize {
        self.to_f64() as usize
    }
}

macro_rules! real {
    ($t:ty, $erf:path, $micro:path, $as_f32:expr) => {
        impl Real for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            fn of(x: f64) -> Self {
                x as $t
            }
            fn to_f64(self) -> f64 {
                self as f64
            }
            fn exp(self) -> Self {
                <$t>::exp(self)
            }
            fn ln(self) -> Self {
                <$t>::ln(self)
            }
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            fn tanh(self) -> Self {
                <$t>::tanh(self)
            }
            fn erf(self) -> Self {
                $erf(self)
            }
            fn powi(self, n: i32) -> Self {
                <$t>::powi(self, n)
            }
            fn is_finite(self) -> bool {
                <$t>::is_finite(self)
            }
            fn micro() -> &'static super::micro::Micro<Self> {
                $micro()
            }
            #[allow(clippy::redundant_closure_call)]
            fn as_f32(s: &[Self]) -> Option<&[f32]> {
                $as_f32(s)
            }
            #[allow(clippy::redundant_closure_call)]
            fn as_f32_mut(s: &mut [Self]) -> Option<&mut [f32]> {
                $as_f32(s)
            }
        }
    };
}

real!(f32, libm::erff, super::micro::micro_f32, Some);
real!(f64, libm::erf, super::micro::micro_f64, |_| None);
