//! Multi-tensor updates (`OpKind::Foreach`, made by the fusion pass) against the CPU backend and
//! against the same updates run one tensor at a time on the GPU: members of odd sizes (one
//! element, less than a workgroup's chunk, several chunks, a run past a dispatch's table),
//! outputs NaN-poisoned by `eval_once`, shader bounds checks on under `TRAINER_SHADER_CHECKS=1`.
//! A fused update must give the unfused update's bits.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use trainer::backend::gpu::{compare_with_cpu, eval_once, test_gpu};
use trainer::kernel::gpu::{Bind, KernelArgs};
use trainer::ops::{AdamStep, BatchNormRunningStats, CountUp, Foreach, OpKind, SgdStep};
use trainer::tensor::StepCtx;
use trainer::tensor::{DType, TensorType};

type Tensor = (TensorType, Vec<f32>);

fn rng() -> ChaCha8Rng {
    let seed = rand::random();
    eprintln!("seed {seed}");
    ChaCha8Rng::seed_from_u64(seed)
}

fn uniform(rng: &mut impl Rng, shape: &[usize], lo: f32, hi: f32) -> Tensor {
    let n = shape.iter().product();
    let v = (0..n).map(|_| rng.random_range(lo..hi)).collect();
    (TensorType::f32(shape.to_vec()), v)
}

/// One member's inputs: p, g, the optimizer state (`states` tensors like p), then the clip
/// coefficient (shared by every member, as the training graph makes it).
fn member(
    rng: &mut impl Rng,
    shape: &[usize],
    states: usize,
    coef: Option<&Tensor>,
) -> Vec<Tensor> {
    let mut ins = vec![
        uniform(rng, shape, -3.0, 3.0),
        uniform(rng, shape, -3.0, 3.0),
    ];
    match states {
        1 => ins.push(uniform(rng, shape, -3.0, 3.0)),
        2 => {
            ins.push(uniform(rng, shape, -0.5, 0.5));
            // The second moment is never negative.
            ins.push(uniform(rng, shape, 0.0, 0.1));
        }
        _ => {}
    }
    ins.extend(coef.cloned());
    ins
}

/// Member shapes: one element, under a chunk (1024), exactly one, several with a ragged end.
const SHAPES: [&[usize]; 6] = [&[1], &[3, 5], &[1024], &[7, 37], &[1], &[2049, 3]];

/// The fused op over `members` gives, on the GPU, each member's unfused GPU outputs bit for bit,
/// and the CPU's outputs within f32 rounding.
fn check(inner: &OpKind, members: &[Vec<Tensor>], ctx: StepCtx) {
    let gpu = test_gpu().expect("GPU");
    let fused = OpKind::Foreach(Foreach {
        inner: Box::new(inner.clone()),
        groups: members.len(),
    });
    let all: Vec<Tensor> = members.iter().flatten().cloned().collect();
    for (k, e) in compare_with_cpu(gpu, &fused, &all, ctx)
        .unwrap()
        .iter()
        .enumerate()
    {
        assert!(
            *e < 1e-4,
            "{inner:?} at {ctx:?}, output {k}: relative error {e}"
        );
    }
    let all_refs: Vec<(&TensorType, &[f32])> = all.iter().map(|(t, v)| (t, v.as_slice())).collect();
    let got = eval_once(gpu, &fused, &all_refs, ctx).unwrap();
    let mut want = Vec::new();
    for m in members {
        let ins: Vec<(&TensorType, &[f32])> = m.iter().map(|(t, v)| (t, v.as_slice())).collect();
        want.extend(eval_once(gpu, inner, &ins, ctx).unwrap());
    }
    assert_eq!(got.len(), want.len());
    for (k, (a, b)) in got.iter().zip(&want).enumerate() {
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert!(
            bits(a) == bits(b),
            "{inner:?} at {ctx:?}: output {k} of the fused op differs from the unfused one"
        );
    }
}

#[test]
fn fused_updates_give_the_unfused_bits() {
    if test_gpu().is_none() {
        return;
    }
    let mut rng = rng();
    for step in [1, 7] {
        let ctx = StepCtx {
            lr: rng.random_range(0.001..0.2),
            step,
            seed: 0,
        };
        let coef = (TensorType::f32(vec![]), vec![rng.random_range(0.05..1.0)]);
        for (momentum, dampening, nesterov, weight_decay) in [
            (0.0, 0.0, false, 0.0),
            (0.9, 0.1, false, 1e-3),
            (0.8, 0.0, true, 0.05),
        ] {
            for clip in [false, true] {
                let op = OpKind::SgdStep(SgdStep {
                    momentum,
                    dampening,
                    nesterov,
                    weight_decay,
                    clip,
                });
                let states = (momentum != 0.0) as usize;
                let members: Vec<Vec<Tensor>> = SHAPES
                    .iter()
                    .map(|s| member(&mut rng, s, states, clip.then_some(&coef)))
                    .collect();
                check(&op, &members, ctx);
            }
        }
        for (weight_decay, decoupled) in [(0.01, false), (0.05, true)] {
            for clip in [false, true] {
                let op = OpKind::AdamStep(AdamStep {
                    beta1: 0.9,
                    beta2: 0.999,
                    eps: 1e-8,
                    weight_decay,
                    decoupled,
                    clip,
                });
                let members: Vec<Vec<Tensor>> = SHAPES
                    .iter()
                    .map(|s| member(&mut rng, s, 2, clip.then_some(&coef)))
                    .collect();
                check(&op, &members, ctx);
            }
        }
    }
}

/// Running statistics of batchnorms of odd channel counts.
#[test]
fn fused_running_statistics_give_the_unfused_bits() {
    if test_gpu().is_none() {
        return;
    }
    let mut rng = rng();
    let op = OpKind::BatchNormRunningStats(BatchNormRunningStats {
        momentum: 0.1,
        count: 37,
    });
    let members: Vec<Vec<Tensor>> = [1, 3, 1024, 2049, 1, 64]
        .iter()
        .map(|&c| {
            vec![
                uniform(&mut rng, &[c], -1.0, 1.0),
                uniform(&mut rng, &[c], 0.5, 2.0),
                uniform(&mut rng, &[c], -1.0, 1.0),
                uniform(&mut rng, &[c], 0.0, 2.0),
            ]
        })
        .collect();
    check(&op, &members, StepCtx::default());
}

/// Batchnorm counters, more of them than one dispatch's table holds (256).
#[test]
fn fused_counters_give_the_unfused_bits() {
    if test_gpu().is_none() {
        return;
    }
    let counter = TensorType {
        shape: vec![],
        dtype: DType::I32,
    };
    let members: Vec<Vec<Tensor>> = (0..300)
        .map(|n| vec![(counter.clone(), vec![n as f32])])
        .collect();
    check(&OpKind::CountUp(CountUp), &members, StepCtx::default());
}

/// A dispatch takes at most 256 members and 2^23 elements (unless one member alone is larger),
/// so that each window stays well within a binding; every member is in exactly one dispatch,
/// each window binds one tensor of every member of its dispatch.
#[test]
fn multi_tensor_dispatches_split_by_members_and_elements() {
    let sgd = OpKind::SgdStep(SgdStep {
        momentum: 0.9,
        dampening: 0.0,
        nesterov: false,
        weight_decay: 0.0,
        clip: false,
    });
    let cases: [(Vec<usize>, usize); 4] = [
        (vec![5; 256], 1),
        (vec![5; 257], 2),
        (vec![1 << 22, 1 << 22, 1], 2),
        (vec![1 << 24, 3, 1 << 23], 3),
    ];
    for (sizes, dispatches) in cases {
        let types: Vec<TensorType> = sizes
            .iter()
            .flat_map(|&n| vec![TensorType::f32(vec![n]); 3])
            .collect();
        let ins: Vec<&TensorType> = types.iter().collect();
        let fused = OpKind::Foreach(Foreach {
            inner: Box::new(sgd.clone()),
            groups: sizes.len(),
        });
        let outputs = fused.primitive().infer(&ins).unwrap();
        let args = KernelArgs {
            inputs: &ins,
            outputs: &outputs,
        };
        let ds = fused.primitive().gpu(&args).unwrap();
        assert_eq!(ds.len(), dispatches, "{sizes:?}");
        let mut covered = 0;
        for d in &ds {
            assert_eq!(d.bindings.len(), 5, "p, g, buf, p', buf'");
            let Bind::Window(w) = d.bindings[0] else {
                panic!("a window")
            };
            assert_eq!(w.first, covered * 3);
            for b in &d.bindings {
                let Bind::Window(x) = b else {
                    panic!("a window")
                };
                assert_eq!(x.count, w.count);
                assert!(x.word(x.count - 1) < d.params.len());
            }
            covered += w.count;
        }
        assert_eq!(covered, sizes.len());
    }
}
