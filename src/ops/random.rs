//! Dropout: zeroes each element with probability p and scales the rest by 1/(1-p) in training.
//! The mask comes from a counter-based stream keyed by `stream`, so a recomputation replays it.

use rayon::prelude::*;
use serde::Serialize;

use crate::kernel::gpu::{Dispatch, KernelArgs};

use super::{
    Eval, OpKind, Primitive, ShapeResult, VjpArgs, VjpCx, VjpResult, expect_arity, expect_f32,
};

use crate::kernel::cpu::{Io, Real};
use crate::kernel::gpu::{Bind, PREAMBLE, Params, Shader, per_element};
use crate::tensor::TensorType;

/// torch.nn.functional.dropout(x, p, training=True): `y = x · m` with `m = 1/(1-p)` where element
/// k is kept and 0 where dropped (a multiply, so a dropped NaN stays NaN as in PyTorch); p = 1
/// gives zeros. Element k is kept iff `u >= p` with `u = DropoutKey::new(seed, step, stream)
/// .bits24(k) / 2^24`: no state, so the same (seed, step, stream) replays the same mask (the
/// vjp, recomputation under checkpointing). The distribution is PyTorch's; the bits are not.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Dropout {
    pub p: f64,
    /// Identifies this dropout's random stream (its index among the graph's dropouts).
    pub stream: u64,
}

impl Primitive for Dropout {
    fn name(&self) -> &'static str {
        "dropout"
    }
    fn infer(&self, inputs: &[&TensorType]) -> ShapeResult {
        expect_arity(inputs, 1)?;
        expect_f32(inputs[0], "the input")?;
        Ok(vec![inputs[0].clone()])
    }
    fn flops(&self, _: &[&TensorType], out: &[TensorType]) -> u64 {
        2 * out[0].numel() as u64
    }
    fn attrs(&self) -> Vec<(&'static str, String)> {
        vec![
            ("p", self.p.to_string()),
            ("stream", self.stream.to_string()),
        ]
    }
    /// dx = m · dy: the same op on dy, which replays the same mask.
    fn vjp(&self, cx: &mut VjpCx, a: &VjpArgs) -> VjpResult {
        let dx = cx.op(OpKind::Dropout(self.clone()), &[a.dy()?])?;
        Ok(vec![Some(dx)])
    }
    fn gpu(&self, args: &KernelArgs) -> Result<Vec<Dispatch>, String> {
        let n = args.numel_out(0);
        let scale = if self.p < 1.0 {
            1.0 / (1.0 - self.p)
        } else {
            0.0
        };
        let params = Params::new()
            .u32(n)
            .u32(threshold(self.p) as usize)
            .u32((self.stream as u32) as usize)
            .u32((self.stream >> 32) as usize)
            .f32(scale)
            .done();
        Ok(per_element(
            masking(include_str!("../../kernels/random.wgsl"), "dropout"),
            vec![Bind::In(0), Bind::Out(0)],
            params,
            n,
        ))
    }
}

impl Eval for Dropout {
    fn eval<T: Real>(&self, io: &mut Io<'_, T>) {
        let key = DropoutKey::new(io.ctx.seed, io.ctx.step, self.stream);
        let t = threshold(self.p);
        let scale = match self.p < 1.0 {
            true => T::of(1.0 / (1.0 - self.p)),
            false => T::ZERO,
        };
        let (ins, mut outs) = io.split::<1>();
        let (x, y) = (ins.get(0), &mut outs[0]);
        // Elements are independent, so splitting them across threads changes nothing.
        const CHUNK: usize = 1 << 14;
        y.par_chunks_mut(CHUNK).enumerate().for_each(|(c, y)| {
            let base = c * CHUNK;
            for (j, (y, &x)) in y.iter_mut().zip(&x[base..]).enumerate() {
                let keep = key.bits24((base + j) as u64) >= t;
                *y = x * if keep { scale } else { T::ZERO };
            }
        });
    }
}

/// Entry `entry` of a kernel file that draws dropout masks: the preamble, then
/// kernels/dropout_mask.wgsl (`dropout_key`, `dropout_bits`: `DropoutKey` in WGSL), then `text`.
pub fn masking(text: &str, entry: &'static str) -> Shader {
    let mask = include_str!("../../kernels/dropout_mask.wgsl");
    Shader {
        source: format!("{PREAMBLE}\n{mask}\n{text}").into(),
        entry,
    }
}

/// The smallest 24-bit value kept at drop probability p: `u >= p` with `u = bits / 2^24` is
/// `bits >= ceil(p · 2^24)`, an integer compare (the same on a GPU). 2^24 keeps nothing.
pub fn threshold(p: f64) -> u32 {
    (p.clamp(0.0, 1.0) * (1u32 << 24) as f64).ceil() as u32
}

/// Chris Wellons' `lowbias32` integer hash (hash-prospector): a bijection of u32 with strong
/// avalanche, built only from xor, shift and wrapping multiply (WGSL has all three on u32).
pub fn hash32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^= x >> 16;
    x
}

/// The per-launch key of a dropout stream: (seed, step, stream) as six 32-bit words (low word
/// first) absorbed one by one, `h = hash32(h ^ word)` from `h = 0x9e3779b9`, then two keys
/// `k1 = h`, `k2 = hash32(h ^ 0x85ebca6b)`. Element k's 24 random bits are
/// `hash32(hash32(hash32(k_lo ^ k1) ^ k_hi) ^ k2) >> 8`: the key enters before and after the
/// counter, so the masks of two steps or streams are not index-shifted copies of each other.
/// The GPU computes the key on the host (or once per workgroup) and the three rounds per element.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DropoutKey {
    k1: u32,
    k2: u32,
}

impl DropoutKey {
    pub fn new(seed: u64, step: u64, stream: u64) -> DropoutKey {
        let words = [seed, step, stream].map(|w| [w as u32, (w >> 32) as u32]);
        let h = words
            .as_flattened()
            .iter()
            .fold(0x9e37_79b9u32, |h, &w| hash32(h ^ w));
        DropoutKey {
            k1: h,
            k2: hash32(h ^ 0x85eb_ca6b),
        }
    }
    /// The 24 random bits of element k: `u = bits24 / 2^24` is uniform in [0, 1).
    pub fn bits24(self, k: u64) -> u32 {
        let x = hash32(k as u32 ^ self.k1);
        let x = hash32(x ^ (k >> 32) as u32);
        hash32(x ^ self.k2) >> 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{Arg, check_op};
    use crate::tensor::StepCtx;

    fn run<T: Real>(p: f64, stream: u64, x: &[T], ctx: StepCtx) -> Vec<T> {
        let ty = TensorType::f32(vec![x.len()]);
        let out_types = [ty.clone()];
        let mut y = vec![T::of(777.0); x.len()];
        let mut io = Io::new(vec![x], vec![&mut y], vec![&ty], &out_types, ctx);
        Dropout { p, stream }.eval(&mut io);
        y
    }

    fn ctx(seed: u64, step: u64) -> StepCtx {
        StepCtx {
            lr: 0.0,
            step,
            seed,
        }
    }

    /// Nonzero inputs, so a zero output means dropped.
    fn ones(n: usize) -> Vec<f64> {
        (0..n).map(|i| 1.0 + (i % 7) as f64).collect()
    }

    fn kept(y: &[f64]) -> Vec<bool> {
        y.iter().map(|&v| v != 0.0).collect()
    }

    #[test]
    fn hash_known_answers() {
        // From an independent Python implementation of the definitions in the doc comments
        // (the values a WGSL port must reproduce).
        assert_eq!(hash32(0), 0);
        assert_eq!(hash32(1), 0x6889_90c0);
        assert_eq!(hash32(0xdead_beef), 0xe628_c683);
        let key = DropoutKey::new(0, 1, 0);
        let bits: Vec<u32> = (0..4).map(|k| key.bits24(k)).collect();
        assert_eq!(bits, [3308737, 7115400, 15251218, 15134323]);
        let key = DropoutKey::new(0x0123_4567_89ab_cdef, 7, 3);
        let bits: Vec<u32> = [0, 1, (1 << 32) + 5].map(|k| key.bits24(k)).to_vec();
        assert_eq!(bits, [2914307, 8988386, 4287075]);
        // Mask of the first 64 elements at p = 0.5, seed 0, step 1, stream 0.
        let y = run(0.5, 0, &[1.0f64; 64], ctx(0, 1));
        let mask = (0..64)
            .filter(|&k| y[k] != 0.0)
            .fold(0u64, |m, k| m | 1 << k);
        assert_eq!(mask, 0xa363_90da_29f6_90dc);
    }

    #[test]
    fn drops_a_fraction_p_and_scales_the_rest() {
        let n = 100_000;
        let x = ones(n);
        for (p, seed, stream) in [(0.1, 0, 0), (0.5, 42, 3), (0.9, 7, 1), (0.3, u64::MAX, 9)] {
            let y = run(p, stream, &x, ctx(seed, 5));
            let dropped = y.iter().filter(|&&v| v == 0.0).count() as f64;
            let sigma = (n as f64 * p * (1.0 - p)).sqrt();
            assert!(
                (dropped - n as f64 * p).abs() < 4.0 * sigma,
                "p {p}: {dropped} dropped of {n}"
            );
            for (&a, &b) in x.iter().zip(&y) {
                assert!(b == 0.0 || b == a * (1.0 / (1.0 - p)), "{a} -> {b}");
            }
        }
    }

    #[test]
    fn random_bits_are_uniform() {
        // Chi-square over 64 bins of 100k draws: 63 degrees of freedom, sd ≈ 11.2.
        let key = DropoutKey::new(1, 2, 3);
        let mut bins = [0f64; 64];
        for k in 0..100_000 {
            bins[(key.bits24(k) >> 18) as usize] += 1.0;
        }
        let e = 100_000.0 / 64.0;
        let chi2: f64 = bins.iter().map(|&o| (o - e) * (o - e) / e).sum();
        assert!(chi2 < 63.0 + 5.0 * 11.2, "chi2 {chi2}");
    }

    #[test]
    fn p_zero_is_identity_and_p_one_zeroes() {
        let x = ones(1000);
        assert_eq!(run(0.0, 0, &x, ctx(3, 1)), x);
        assert!(run(1.0, 0, &x, ctx(3, 1)).iter().all(|&v| v == 0.0));
        // A multiply, as in PyTorch: a dropped NaN stays NaN.
        assert!(run(1.0, 0, &[f64::NAN], ctx(3, 1))[0].is_nan());
    }

    #[test]
    fn masks_replay_and_differ_between_steps_streams_and_seeds() {
        let n = 100_000;
        let p = 0.4;
        let x = ones(n);
        let base = kept(&run(p, 2, &x, ctx(11, 3)));
        assert_eq!(kept(&run(p, 2, &x, ctx(11, 3))), base);
        // f32 draws the same mask (the mask is integer arithmetic).
        let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
        let y32 = run(p, 2, &x32, ctx(11, 3));
        assert_eq!(y32.iter().map(|&v| v != 0.0).collect::<Vec<_>>(), base);
        // Independent masks agree on a fraction p² + (1-p)² of elements.
        let q = p * p + (1.0 - p) * (1.0 - p);
        let sigma = (n as f64 * q * (1.0 - q)).sqrt();
        for other in [ctx(11, 4), ctx(12, 3)] {
            let m = kept(&run(p, 2, &x, other));
            let same = m.iter().zip(&base).filter(|(a, b)| a == b).count() as f64;
            assert!(
                (same - n as f64 * q).abs() < 4.0 * sigma,
                "{other:?}: {same}"
            );
        }
        let m = kept(&run(p, 3, &x, ctx(11, 3)));
        let same = m.iter().zip(&base).filter(|(a, b)| a == b).count() as f64;
        assert!(
            (same - n as f64 * q).abs() < 4.0 * sigma,
            "stream 3: {same}"
        );
    }

    #[test]
    fn gradient_replays_the_mask() {
        for p in [0.3, 0.0] {
            let op = OpKind::Dropout(Dropout { p, stream: 5 });
            for seed in 0..3 {
                let r = check_op(op.clone(), &[Arg::Float(vec![3, 7, 5])], &[0], seed).unwrap();
                assert!(r.worst < 1e-5, "p {p} seed {seed}: {r:?}");
                assert!(r.checked > 0);
            }
        }
    }
}
