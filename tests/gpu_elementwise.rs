//! Elementwise kernels (the WGSL template) against the CPU backend, on odd shapes with
//! broadcasting, fresh seeds every run.

use rand::{Rng, SeedableRng};
use trainer::backend::gpu::{compare_with_cpu, eval_once, test_gpu};
use trainer::ops::{
    Binary, BinaryFn, Chain, ElementwiseFn, Link, OpKind, Operand, Unary, UnaryFn, UnaryGrad,
};
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

/// A chain (the fusion pass's) gives, bit for bit, what its links give launched one by one,
/// on links a driver could contract across (x0·x1 + x2, the product broadcast) or rearrange
/// (gelu of the sum, its gradient times a product): each link's value is rounded as its own
/// launch stores it. And it matches the CPU.
#[test]
fn chains_give_the_bits_of_their_links_launched_one_by_one() {
    let Some(gpu) = test_gpu() else {
        return;
    };
    let seed = rand::random();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    eprintln!("seed {seed}");
    use Operand::{Input, Link as Value};
    let link = |f: ElementwiseFn, args: &[Operand]| Link {
        f,
        args: args.to_vec(),
    };
    let (add, mul) = (
        ElementwiseFn::Binary { f: BinaryFn::Add },
        ElementwiseFn::Binary { f: BinaryFn::Mul },
    );
    let gelu = ElementwiseFn::Unary { f: UnaryFn::Gelu };
    let gelu_grad = ElementwiseFn::UnaryGrad {
        f: UnaryFn::Gelu,
        from_output: false,
    };
    let chain = Chain {
        links: vec![
            link(mul, &[Input(0), Input(1)]),
            link(add, &[Value(0), Input(2)]),
            link(gelu, &[Value(1)]),
            link(mul, &[Value(2), Input(0)]),
            link(gelu_grad, &[Value(1), Value(3)]),
            link(add, &[Value(4), Value(3)]),
        ],
    };
    let rows = 1 + rng.random_range(0..40);
    let cols = 1 + rng.random_range(0..70);
    let ins = [
        random(&mut rng, &[rows, cols]),
        random(&mut rng, &[cols]),
        random(&mut rng, &[rows, cols]),
    ];
    let refs: Vec<(&TensorType, &[f32])> = ins.iter().map(|(t, v)| (t, &v[..])).collect();
    let op = OpKind::Chain(chain.clone());
    let fused = eval_once(gpu, &op, &refs, StepCtx::default())
        .unwrap()
        .remove(0);
    // The links one by one, each value read back and passed on as the next launch's input.
    let types: Vec<&TensorType> = ins.iter().map(|(t, _)| t).collect();
    let mut values: Vec<(TensorType, Vec<f32>)> = Vec::new();
    for (k, (op, _, ty)) in chain.unfused(&types).unwrap().into_iter().enumerate() {
        let args: Vec<(&TensorType, &[f32])> = chain.links[k]
            .args
            .iter()
            .map(|&a| match a {
                Input(i) => (&ins[i].0, &ins[i].1[..]),
                Value(j) => (&values[j].0, &values[j].1[..]),
            })
            .collect();
        let v = eval_once(gpu, &op, &args, StepCtx::default())
            .unwrap()
            .remove(0);
        values.push((ty, v));
    }
    let unfused = &values.last().unwrap().1;
    let differ = (0..fused.len())
        .filter(|&i| fused[i].to_bits() != unfused[i].to_bits())
        .count();
    assert_eq!(
        differ,
        0,
        "{differ} of {} values differ ({rows}x{cols})",
        fused.len()
    );
    assert_close(&op, &ins);
}
