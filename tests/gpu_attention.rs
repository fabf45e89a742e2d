//! The fused attention kernels (kernels/attention.wgsl) against the CPU's evaluation of the
//! definition: forward (y and the rows' log-sum-exp) and backward (dq, dk, dv), causal and full,
//! on shapes that cut the kernels' row blocks (64) and staged tiles (32 or 16) short, head widths
//! that are not a multiple of 4 and both tile sizes, with and without dropout on the weights (the
//! CPU's mask, bit for bit); fresh seeds every run. The key/value cache's decode kernel
//! (kernels/kv_cache.wgsl) likewise, at positions that cut its chunks of 256 keys short and
//! head widths up to 128, and the cache write.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use trainer::backend::cpu::eval_once;
use trainer::backend::gpu::{compare_with_cpu, test_gpu, test_gpus};
use trainer::ops::{Attention, AttentionDecode, AttentionGrad, CacheWrite, OpKind};
use trainer::tensor::DType;
use trainer::tensor::{StepCtx, TensorType};

type Tensor = (TensorType, Vec<f32>);

fn random(rng: &mut impl Rng, shape: &[usize], scale: f32) -> Tensor {
    let n = shape.iter().product();
    let v = (0..n).map(|_| rng.random_range(-scale..scale)).collect();
    (TensorType::f32(shape.to_vec()), v)
}

/// (batch, positions, heads, head width).
const SHAPES: [[usize; 4]; 6] = [
    [1, 1, 1, 1],
    [2, 70, 3, 5],
    [1, 97, 2, 64],
    [1, 33, 1, 72],
    [2, 130, 2, 16],
    [3, 64, 4, 8],
];

#[test]
fn attention_and_its_gradient_match_the_cpu() {
    if test_gpu().is_none() {
        return;
    }
    let seed = rand::random();
    eprintln!("seed {seed}");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for [b, t, heads, d] in SHAPES {
        for (causal, dropout) in [(true, 0.0), (false, 0.0), (true, 0.25)] {
            let scale = 1.0 / (d as f64).sqrt();
            let qkv = random(&mut rng, &[b, t, 3 * heads * d], 2.0);
            let fwd = Attention {
                heads,
                causal,
                scale,
                dropout,
                stream: rng.random_range(0..1 << 40),
            };
            let ctx = StepCtx {
                lr: 0.0,
                step: rng.random_range(1..1000),
                seed: rng.random(),
            };
            let refs = [(&qkv.0, qkv.1.as_slice())];
            let out = eval_once(&OpKind::Attention(fwd.clone()), &refs, ctx).unwrap();
            let dy = random(&mut rng, &[b, t, heads * d], 1.0);
            let y = (TensorType::f32(vec![b, t, heads * d]), out[0].clone());
            let lse = (TensorType::f32(vec![b, heads, t]), out[1].clone());
            let grad = AttentionGrad { of: fwd.clone() };
            let cases = [
                (OpKind::Attention(fwd), vec![qkv.clone()]),
                (OpKind::AttentionGrad(grad), vec![qkv, y, lse, dy]),
            ];
            for gpu in test_gpus() {
                for (op, ins) in &cases {
                    let errs = compare_with_cpu(gpu, op, ins, ctx).unwrap();
                    for (k, e) in errs.iter().enumerate() {
                        assert!(
                            *e < 1e-5,
                            "{op:?} [b, t, heads, d] = {:?}, output {k}: relative error {e}",
                            [b, t, heads, d]
                        );
                    }
                }
            }
        }
    }
}

/// (batch, heads, head width, cache positions) and each batch row's position.
const DECODE: [([usize; 4], &[i64]); 8] = [
    ([1, 1, 1, 1], &[0]),
    ([1, 1, 5, 3], &[1]),
    ([2, 3, 7, 40], &[2, 33]),
    ([1, 2, 33, 65], &[64]),
    ([1, 1, 128, 301], &[300]),
    ([3, 2, 16, 600], &[255, 256, 599]),
    ([2, 4, 9, 70], &[69, 0]),
    // Outside the cache: NaN outputs, no write.
    ([2, 1, 3, 10], &[10, -1]),
];

#[test]
fn decoding_over_the_cache_matches_the_cpu() {
    if test_gpu().is_none() {
        return;
    }
    let seed = rand::random();
    eprintln!("seed {seed}");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for ([b, heads, d, p], positions) in DECODE {
        let c = heads * d;
        let qkv = random(&mut rng, &[b, 1, 3 * c], 2.0);
        let kc = random(&mut rng, &[b, heads, p, d], 2.0);
        let vc = random(&mut rng, &[b, heads, p, d], 2.0);
        let pos = (
            TensorType {
                shape: vec![b, 1],
                dtype: DType::I32,
            },
            positions.iter().map(|&x| x as f32).collect::<Vec<f32>>(),
        );
        let decode = OpKind::AttentionDecode(AttentionDecode {
            heads,
            scale: 1.0 / (d as f64).sqrt(),
        });
        let write = OpKind::CacheWrite(CacheWrite {
            heads,
            positions: p,
        });
        let cases = [
            (decode, vec![qkv.clone(), kc, vc, pos.clone()]),
            (write, vec![qkv, pos]),
        ];
        for gpu in test_gpus() {
            for (op, ins) in &cases {
                let errs = compare_with_cpu(gpu, op, ins, StepCtx::default()).unwrap();
                for (k, e) in errs.iter().enumerate() {
                    assert!(
                        *e < 1e-5,
                        "{op:?} [b, heads, d, p] = {:?} at {positions:?}, output {k}: relative error {e}",
                        [b, heads, d, p]
                    );
                }
            }
        }
        // The out-of-range case gives NaN everywhere on the CPU (the GPU agreed above).
        if positions.iter().all(|&x| x < 0 || x as usize >= p) {
            let refs: Vec<(&TensorType, &[f32])> =
                cases[0].1.iter().map(|(t, v)| (t, v.as_slice())).collect();
            let out = eval_once(&cases[0].0, &refs, StepCtx::default()).unwrap();
            assert!(out.iter().flatten().all(|v| v.is_nan()));
        }
    }
}
