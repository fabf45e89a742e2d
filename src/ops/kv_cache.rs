//! A key/value cache for autoregressive decoding: causal attention of one new position per
//! sequence over the keys and values of the earlier positions, kept on the device between steps.
//!
//! The decode-step model (nn/decode.rs) lowers the config's model for one position per
//! sequence and swaps each causal [`super::Attention`] for [`AttentionDecode`], which reads the
//! cached keys and values of positions [0, pos) and the new position's own from its qkv. The
//! caches are state tensors ([B, heads, P, D], P the model's positions), and [`CacheWrite`],
//! an update (`Graph::updates`, so its outputs take the caches' memory), writes the new
//! position's key and value into row `pos` after the forward: one row per head and step, never
//! the whole cache.
//!
//! The position comes in as i32 ids [B, 1] (as `Gather`'s ids); a position outside [0, P) gives
//! NaN outputs and writes nothing.

use rayon::prelude::*;
use serde::Serialize;

use super::attention::dims;
use super::{Cost, Eval, Primitive, ShapeResult, expect_arity, expect_f32};
use crate::kernel::cpu::{Io, Real};
use crate::kernel::gpu::{Bind, Dispatch, KernelArgs, Params, Shader, grid, groups, with_tree};
use crate::tensor::{DType, TensorType, fmt_shape};

/// The widest head the decode kernel compiles for: a thread of its workgroup per element of
/// the head's output row.
const MAX_GPU_HEAD: usize = 128;

/// (B, C, D, P) of a decode op's qkv [B, 1, 3C] and cache [B, heads, P, D], checking that the
/// position ids are i32 [B, 1].
fn decode_dims(
    heads: usize,
    qkv: &TensorType,
    cache: Option<&TensorType>,
    positions: usize,
    pos: &TensorType,
) -> Result<[usize; 4], String> {
    let [b, t, c, d] = dims(qkv, heads)?;
    if t != 1 {
        return Err(format!(
            "decodes one position per sequence, qkv [batch, 1, 3·C], got {}",
            fmt_shape(&qkv.shape)
        ));
    }
    if let Some(cache) = cache {
        expect_f32(cache, "the cache")?;
        if cache.shape.len() != 4 || cache.shape[..2] != [b, heads] || cache.shape[3] != d {
            return Err(format!(
                "expects caches [{b}, {heads}, positions, {d}], got {}",
                fmt_shape(&cache.shape)
            ));
        }
    }
    if pos.dtype != DType::I32 || pos.shape != [b, 1] {
        return Err(format!(
            "expects i32 positions [{b}, 1], got {} {}",
            pos.dtype.name(),
            fmt_shape(&pos.shape)
        ));
    }
    Ok([b, c, d, positions])
}

/// The cache row a position id picks, or None outside [0, positions) (NaN included).
fn slot<T: Real>(id: T, positions: usize) -> Option<usize> {
    let v = id.to_f64();
    (v >= 0.0 && v < positions as f64).then_some(v as usize)
}

/// `new` at position n, else the cache's row at `at`.
fn pick<'s, T>(new: &'s [T], cache: &'s [T], j: usize, n: usize, at: usize, d: usize) -> &'s [T] {
    if j == n { new } else { &cache[at..at + d] }
}

/// Causal attention of one new position per sequence: inputs qkv [B, 1, 3C] (the new
/// position's q, k and v, heads side by side as [`super::Attention`]'s), the key and value
/// caches [B, heads, P, D] and the positions, i32 [B, 1]. Row b attends over its keys
/// 0..=pos[b]: those before pos[b] from the caches, pos[b]'s own from qkv. Outputs y [B, 1, C]
/// and lse [B, heads, 1], what [`super::Attention`] gives at that row of the full sequence.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AttentionDecode {
    pub heads: usize,
    /// The scores' factor, as the attention it replaces.
    pub scale: f64,
}

impl AttentionDecode {
    fn check(&self, inputs: &[&TensorType]) -> Result<[usize; 4], String> {
        expect_arity(inputs, 4)?;
        let p = inputs[1].shape.get(2).copied().unwrap_or(0);
        let dims = decode_dims(self.heads, inputs[0], Some(inputs[1]), p, inputs[3])?;
        if inputs[2] != inputs[1] {
            return Err(format!(
                "expects key and value caches of one shape, got {} and {}",
                fmt_shape(&inputs[1].shape),
                fmt_shape(&inputs[2].shape)
            ));
        }
        Ok(dims)
    }
}

impl Primitive for AttentionDecode {
    fn name(&self) -> &'static str {
        "attention_decode"
    }
    fn infer(&self, inputs: &[&TensorType]) -> ShapeResult {
        let [b, c, _, _] = self.check(inputs)?;
        Ok(vec![
            TensorType::f32(vec![b, 1, c]),
            TensorType::f32(vec![b, self.heads, 1]),
        ])
    }
    /// At most: every cached position, two products of D per head.
    fn flops(&self, inputs: &[&TensorType], _: &[TensorType]) -> u64 {
        let [b, c, _, p] = self.check(inputs).unwrap_or_default();
        4 * (b * c * p) as u64
    }
    fn attrs(&self) -> Vec<(&'static str, String)> {
        vec![
            ("heads", self.heads.to_string()),
            ("scale", self.scale.to_string()),
        ]
    }
    fn cost(&self) -> Cost {
        Cost::Compute
    }
    fn gpu(&self, args: &KernelArgs) -> Result<Vec<Dispatch>, String> {
        let [b, c, d, p] = self.check(args.inputs)?;
        if d > MAX_GPU_HEAD {
            return Err(format!(
                "has no GPU kernel for heads wider than {MAX_GPU_HEAD} (head width {d})"
            ));
        }
        let params = Params::new()
            .u32(b)
            .u32(self.heads)
            .u32(c)
            .u32(p)
            .f32(self.scale)
            .f32(f64::NAN)
            .done();
        let bindings = (0..4).map(Bind::In).chain((0..2).map(Bind::Out)).collect();
        Ok(vec![Dispatch {
            shader: shader(d, "attention_decode"),
            bindings,
            params,
            workgroups: groups(b * self.heads),
        }])
    }
}

/// Entry `entry` of kernels/kv_cache.wgsl for head width `d`, with the tree reductions.
fn shader(d: usize, entry: &'static str) -> Shader {
    let text = include_str!("../../kernels/kv_cache.wgsl");
    Shader {
        source: with_tree(&format!("const D: u32 = {d}u;\n{text}")).into(),
        entry,
    }
}

impl Eval for AttentionDecode {
    /// Per (row, head): an online max and sum over the keys, then y = Σ_j p_j·v_j with
    /// p_j = exp(s_j − lse), keys in position order (the full attention's CPU order).
    fn eval<T: Real>(&self, io: &mut Io<'_, T>) {
        let types: Vec<&TensorType> = (0..4).map(|i| io.in_type(i)).collect();
        let [_, c, d, p] = self.check(&types).expect("checked by infer");
        let heads = self.heads;
        let scale = T::of(self.scale);
        let (ins, [y, lse]) = io.split::<2>();
        let [qkv, kc, vc, pos] = ins.array();
        if c == 0 {
            return;
        }
        y.par_chunks_mut(c)
            .zip(lse.par_chunks_mut(heads))
            .enumerate()
            .for_each(|(b, (y, lse))| {
                let x = &qkv[b * 3 * c..][..3 * c];
                let Some(n) = slot(pos[b], p) else {
                    y.fill(T::of(f64::NAN));
                    lse.fill(T::of(f64::NAN));
                    return;
                };
                for h in 0..heads {
                    let q = &x[h * d..][..d];
                    // Key (which 1) or value (2) of position j: cached before n, n's from qkv.
                    let row = |cache, which: usize, j: usize| {
                        let new = &x[which * c + h * d..][..d];
                        pick(new, cache, j, n, ((b * heads + h) * p + j) * d, d)
                    };
                    let score = |j: usize| {
                        let k = row(kc, 1, j);
                        let mut s = T::ZERO;
                        for (a, b) in q.iter().zip(k) {
                            s += *a * *b;
                        }
                        s * scale
                    };
                    let (mut m, mut sum) = (T::of(f64::NEG_INFINITY), T::ZERO);
                    for j in 0..=n {
                        let s = score(j);
                        let next = m.max(s);
                        sum = sum * (m - next).exp() + (s - next).exp();
                        m = next;
                    }
                    let row_lse = m + sum.ln();
                    lse[h] = row_lse;
                    let out = &mut y[h * d..][..d];
                    out.fill(T::ZERO);
                    for j in 0..=n {
                        let w = (score(j) - row_lse).exp();
                        for (o, v) in out.iter_mut().zip(row(vc, 2, j)) {
                            *o += w * *v;
                        }
                    }
                }
            });
    }
}

/// Writes the new position's key and value into the caches: inputs qkv [B, 1, 3C] and the
/// positions, i32 [B, 1]; outputs the key and value caches [B, heads, `positions`, D], of which
/// it writes row pos[b] of each head of each sequence b, and nothing else. It is an update
/// (`Graph::updates`): its outputs take the caches' own memory, whose other rows keep what the
/// earlier steps wrote (a position outside [0, positions) writes nothing).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CacheWrite {
    pub heads: usize,
    /// The caches' positions (P).
    pub positions: usize,
}

impl CacheWrite {
    fn check(&self, inputs: &[&TensorType]) -> Result<[usize; 4], String> {
        expect_arity(inputs, 2)?;
        decode_dims(self.heads, inputs[0], None, self.positions, inputs[1])
    }
}

impl Primitive for CacheWrite {
    fn name(&self) -> &'static str {
        "cache_write"
    }
    fn infer(&self, inputs: &[&TensorType]) -> ShapeResult {
        let [b, _, d, p] = self.check(inputs)?;
        Ok(vec![TensorType::f32(vec![b, self.heads, p, d]); 2])
    }
    fn flops(&self, _: &[&TensorType], _: &[TensorType]) -> u64 {
        0
    }
    fn attrs(&self) -> Vec<(&'static str, String)> {
        vec![
            ("heads", self.heads.to_string()),
            ("positions", self.positions.to_string()),
        ]
    }
    /// One thread per element of the new rows (B·C), each writing its key and its value.
    fn gpu(&self, args: &KernelArgs) -> Result<Vec<Dispatch>, String> {
        let [b, c, d, p] = self.check(args.inputs)?;
        let params = Params::new()
            .u32(b)
            .u32(self.heads)
            .u32(c)
            .u32(p)
            .f32(1.0)
            .f32(f64::NAN)
            .done();
        // The tree is unused here; the same source as the decode kernel keeps one module.
        Ok(vec![Dispatch {
            shader: shader(d, "cache_write"),
            bindings: vec![Bind::In(0), Bind::In(1), Bind::Out(0), Bind::Out(1)],
            params,
            workgroups: grid(b * c),
        }])
    }
}

impl Eval for CacheWrite {
    fn eval<T: Real>(&self, io: &mut Io<'_, T>) {
        let types = [io.in_type(0), io.in_type(1)];
        let [_, c, d, p] = self.check(&types).expect("checked by infer");
        let heads = self.heads;
        let (ins, [kc, vc]) = io.split::<2>();
        let [qkv, pos] = ins.array();
        for (b, &id) in pos.iter().enumerate() {
            let Some(n) = slot(id, p) else { continue };
            let x = &qkv[b * 3 * c..][..3 * c];
            for h in 0..heads {
                let at = ((b * heads + h) * p + n) * d;
                kc[at..at + d].copy_from_slice(&x[c + h * d..][..d]);
                vc[at..at + d].copy_from_slice(&x[2 * c + h * d..][..d]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::eval_once;
    use crate::ops::{Attention, OpKind};
    use crate::tensor::StepCtx;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn random(rng: &mut ChaCha8Rng, n: usize) -> Vec<f64> {
        (0..n).map(|_| rng.random_range(-2.0..2.0)).collect()
    }

    /// Writing each position's k and v with `CacheWrite`, then decoding it with
    /// `AttentionDecode`, gives every row of the full causal attention over the sequence.
    #[test]
    fn decoding_position_by_position_gives_the_full_attention() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let (b, t, heads, d, p) = (2, 6, 3, 5, 9);
        let c = heads * d;
        let full = Attention {
            heads,
            causal: true,
            scale: 0.7,
            dropout: 0.0,
            stream: 0,
        };
        let qkv_ty = TensorType::f32(vec![b, t, 3 * c]);
        let qkv = random(&mut rng, b * t * 3 * c);
        let want = eval_once(
            &OpKind::Attention(full),
            &[(&qkv_ty, &qkv)],
            StepCtx::default(),
        )
        .unwrap();
        let cache_ty = TensorType::f32(vec![b, heads, p, d]);
        // Rows past the position are garbage the decode must not read.
        let (mut kc, mut vc) = (vec![1e30; cache_ty.numel()], vec![-1e30; cache_ty.numel()]);
        let one_ty = TensorType::f32(vec![b, 1, 3 * c]);
        let pos_ty = TensorType {
            shape: vec![b, 1],
            dtype: DType::I32,
        };
        let decode = OpKind::AttentionDecode(AttentionDecode { heads, scale: 0.7 });
        let write = CacheWrite {
            heads,
            positions: p,
        };
        for i in 0..t {
            let one: Vec<f64> = (0..b)
                .flat_map(|r| qkv[(r * t + i) * 3 * c..][..3 * c].to_vec())
                .collect();
            let pos = vec![i as f64; b];
            let ins = [
                (&one_ty, &one[..]),
                (&cache_ty, &kc[..]),
                (&cache_ty, &vc[..]),
                (&pos_ty, &pos[..]),
            ];
            let got = eval_once(&decode, &ins, StepCtx::default()).unwrap();
            for r in 0..b {
                for e in 0..c {
                    let (g, w) = (got[0][r * c + e], want[0][(r * t + i) * c + e]);
                    assert!((g - w).abs() < 1e-12, "y[{r}, {i}, {e}]: {g} vs {w}");
                }
                for h in 0..heads {
                    let (g, w) = (got[1][r * heads + h], want[1][(r * heads + h) * t + i]);
                    assert!((g - w).abs() < 1e-12, "lse[{r}, {h}, {i}]: {g} vs {w}");
                }
            }
            // In place, as the plan runs it.
            let types = [&one_ty, &pos_ty];
            let out_types = write.infer(&types).unwrap();
            let io_ins = vec![&one[..], &pos[..]];
            let mut io = Io::new(
                io_ins,
                vec![&mut kc[..], &mut vc[..]],
                types.to_vec(),
                &out_types,
                StepCtx::default(),
            );
            write.eval(&mut io);
        }
        // Rows never written keep their values.
        assert_eq!(kc[t * d], 1e30);
        assert_eq!(vc[(heads * p - 1) * d], -1e30);
    }

    #[test]
    fn a_position_outside_the_cache_gives_nan_and_writes_nothing() {
        let (heads, d, p) = (1, 2, 3);
        let op = AttentionDecode { heads, scale: 1.0 };
        let qkv_ty = TensorType::f32(vec![1, 1, 3 * d]);
        let cache_ty = TensorType::f32(vec![1, heads, p, d]);
        let pos_ty = TensorType {
            shape: vec![1, 1],
            dtype: DType::I32,
        };
        let qkv = [1.0; 6];
        let cache = [0.5; 6];
        for bad in [-1.0, 3.0, f64::NAN] {
            let ins = [
                (&qkv_ty, &qkv[..]),
                (&cache_ty, &cache[..]),
                (&cache_ty, &cache[..]),
                (&pos_ty, &[bad][..]),
            ];
            let got = eval_once(
                &OpKind::AttentionDecode(op.clone()),
                &ins,
                StepCtx::default(),
            );
            assert!(got.unwrap().iter().flatten().all(|v| v.is_nan()), "{bad}");
            let w = CacheWrite {
                heads,
                positions: p,
            };
            let ins = [(&qkv_ty, &qkv[..]), (&pos_ty, &[bad][..])];
            let got = eval_once(&OpKind::CacheWrite(w), &ins, StepCtx::default());
            assert!(got.unwrap().iter().flatten().all(|v| v.is_nan()), "{bad}");
        }
    }

    #[test]
    fn shapes_are_checked() {
        let op = AttentionDecode {
            heads: 2,
            scale: 1.0,
        };
        let pos = TensorType {
            shape: vec![1, 1],
            dtype: DType::I32,
        };
        let qkv = TensorType::f32(vec![1, 1, 12]);
        let cache = TensorType::f32(vec![1, 2, 5, 2]);
        assert!(op.infer(&[&qkv, &cache, &cache, &pos]).is_ok());
        let two = TensorType::f32(vec![1, 2, 12]);
        assert!(op.infer(&[&two, &cache, &cache, &pos]).is_err());
        let narrow = TensorType::f32(vec![1, 2, 5, 3]);
        assert!(op.infer(&[&qkv, &narrow, &narrow, &pos]).is_err());
        let float_pos = TensorType::f32(vec![1, 1]);
        assert!(op.infer(&[&qkv, &cache, &cache, &float_pos]).is_err());
    }
}
