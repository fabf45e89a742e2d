//! The fused attention kernels (kernels/attention.wgsl) against the CPU's evaluation of the
//! definition: forward (y and the rows' log-sum-exp) and backward (dq, dk, dv), causal and full,
//! on shapes that cut the kernels' row blocks (64) and staged tiles (32 or 16) short, head widths
//! that are not a multiple of 4 and both tile sizes, with and without dropout on the weights (the
//! CPU's mask, bit for bit); fresh seeds every run.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use trainer::backend::cpu::eval_once;
use trainer::backend::gpu::{compare_with_cpu, test_gpu, test_gpus};
use trainer::ops::{Attention, AttentionGrad, OpKind};
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
