//! Elementwise kernels (the WGSL template) against the CPU backend, on odd shapes with
//! broadcasting, fresh seeds every run.

use rand::{Rng, SeedableRng};
use trainer::backend::gpu::{compare_with_cpu, test_gpu};
use trainer::ops::{Binary, BinaryFn, OpKind, Unary, UnaryFn, UnaryGrad};
use trainer::tensor::StepCtx;
use trainer::tensor::TensorType;

fn random(rng: &mut impl Rng, shape: &[usize]) -> (TensorType, Vec<f32>) {
    let n = shape.iter().product();
    let v = (0..n).map(|_| rng.random_range(-3.0f32..3.0)).collect();
    (TensorType::f32(shape.to_vec()), v)
}

fn assert_close(op: &OpKind, ins: &[(TensorType, Vec<f32>)]) {
    let gpu = test_gpu().expect("GPU");
    let errs = compare_with_cpu(gpu, op, ins, StepCtx::default()).unwrap();
    for (k, e) in errs.iter().enumerate() {
        assert!(*e < 1e-4, "{op:?} output {k}: relative error {e}");
    }
}

/// Every row of the elementwise table (`UnaryFn::examples`), so a new function cannot miss
/// its kernel check.
#[test]
fn activations_and_their_gradients_match_the_cpu() {
    if test_gpu().is_none() {
        return;
    }
    let seed = rand::random();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    eprintln!("seed {seed}");
    let all = UnaryFn::examples();
    assert!(all.contains(&UnaryFn::Silu));
    for f in all {
        let shape = [1 + rng.random_range(0..3), 3, 7, 5];
        let x = random(&mut rng, &shape);
        assert_close(&OpKind::Unary(Unary { f }), std::slice::from_ref(&x));
        for from_output in [false, true] {
            if from_output && !f.grad_from_output() {
                continue;
            }
            let dy = random(&mut rng, &shape);
            assert_close(
                &OpKind::UnaryGrad(UnaryGrad { f, from_output }),
                &[x.clone(), dy],
            );
        }
    }
}

#[test]
fn binary_ops_broadcast_like_numpy() {
    if test_gpu().is_none() {
        return;
    }
    let seed = rand::random();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    eprintln!("seed {seed}");
    let pairs: [(&[usize], &[usize]); 5] = [
        (&[3, 7, 5], &[3, 7, 5]),
        (&[2, 3, 7, 5], &[3, 1, 1]),
        (&[3, 1], &[1, 5]),
        (&[1], &[4, 9]),
        (&[5, 1, 3], &[1, 1]),
    ];
    for f in [BinaryFn::Add, BinaryFn::Mul] {
        for (a, b) in pairs {
            let ins = [random(&mut rng, a), random(&mut rng, b)];
            assert_close(&OpKind::Binary(Binary { f }), &ins);
        }
    }
}
