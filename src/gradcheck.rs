//! Gradient checks: a vjp against central finite differences, both evaluated in f64 by the
//! CPU interpreter. Used by the tests of every op and of whole networks.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::autodiff;
use crate::backend::cpu::{Feeds, interpret};
use crate::graph::{Graph, Init, Phase};
use crate::ops::{Input, OpKind};
use crate::tensor::{DType, NodeId, StepCtx, TensorId, TensorType};

/// One input of the op under test and how to fill it.
#[derive(Clone, Debug)]
pub enum Arg {
    /// Normal(0, 1) floats; the gradient is checked.
    Float(Vec<usize>),
    /// Uniform floats in [lo, hi]; the gradient is checked (keep away from kinks and poles).
    Range(Vec<usize>, f64, f64),
    /// Uniform floats in [lo, hi] that the check treats as constants (running statistics).
    Const(Vec<usize>, f64, f64),
    /// Integer ids in [0, n) (labels, token ids); no gradient.
    Ids(Vec<usize>, usize),
}

/// The result of a check: the worst element by `|analytic - numeric| / (atol + |numeric|)`.
#[derive(Debug)]
pub struct Report {
    pub worst: f64,
    pub what: String,
    pub checked: usize,
    /// The ops the check evaluated besides its leaves: the op under test, then every op its
    /// vjp built, in creation order (so a test can see which gradient ops a check exercised).
    pub ops: Vec<OpKind>,
}

/// One op of a check's graph with the values its inputs had there (i32 ids as whole numbers),
/// so it can be run again on its own: on another backend, say.
#[derive(Clone, Debug)]
pub struct Evaluated {
    pub op: OpKind,
    pub inputs: Vec<(TensorType, Vec<f64>)>,
}

/// The graph a check differentiates: the op on random inputs, then its vjp seeded by random
/// projections r_k of the outputs.
struct Setup {
    g: Graph,
    feeds: Feeds<f64>,
    /// (argument index, tensor) of each differentiable input.
    wrt: Vec<(usize, TensorId)>,
    /// The vjp's gradient of each `wrt` input.
    grads: Vec<Option<TensorId>>,
    /// (output y_k, r_k).
    projections: Vec<(TensorId, Vec<f64>)>,
    /// The generator after the inputs and projections were drawn.
    rng: ChaCha8Rng,
}

/// Checks `op`'s vjp. The scalar is Σ_k ⟨r_k, y_k⟩ over the `outputs` listed, with random
/// r_k; up to `samples` elements of each differentiable input are perturbed by ±h.
pub fn check_op(op: OpKind, args: &[Arg], outputs: &[usize], seed: u64) -> Result<Report, String> {
    let Setup {
        g,
        feeds,
        wrt,
        grads,
        projections,
        mut rng,
    } = setup(op, args, outputs, seed)?;
    let ctx = StepCtx::default();
    let values = interpret(&g, &feeds, ctx)?;
    let scalar = |feeds: &Feeds<f64>| -> Result<f64, String> {
        let v = interpret(&g, feeds, ctx)?;
        Ok(projections
            .iter()
            .map(|(y, r)| v.get(*y).iter().zip(r).map(|(a, b)| a * b).sum::<f64>())
            .sum())
    };
    let mut report = Report {
        worst: 0.0,
        what: String::new(),
        checked: 0,
        ops: evaluated_nodes(&g).map(|id| g.dag[id].op.clone()).collect(),
    };
    for ((i, t), dt) in wrt.iter().zip(&grads) {
        let index = match &g.dag[t.node()].op {
            OpKind::Parameter(p) => p.index,
            _ => unreachable!("checked inputs are parameters"),
        };
        let n = feeds.params[index].len();
        let analytic: Vec<f64> = match dt {
            Some(dt) => values.get(*dt).to_vec(),
            None => vec![0.0; n],
        };
        let picks: Vec<usize> = if n <= 48 {
            (0..n).collect()
        } else {
            (0..48).map(|_| rng.random_range(0..n)).collect()
        };
        for e in picks {
            let x0 = feeds.params[index][e];
            let h = 1e-6 * x0.abs().max(1.0);
            let mut f = feeds.clone();
            f.params[index][e] = x0 + h;
            let up = scalar(&f)?;
            f.params[index][e] = x0 - h;
            let down = scalar(&f)?;
            let numeric = (up - down) / (2.0 * h);
            let err = (analytic[e] - numeric).abs() / (1e-6 + numeric.abs());
            report.checked += 1;
            if err > report.worst {
                report.worst = err;
                report.what = format!(
                    "input {i} element {e}: analytic {} numeric {numeric}",
                    analytic[e]
                );
            }
        }
    }
    Ok(report)
}

/// The ops `check_op` evaluates for the same arguments and seed (its `Report::ops`), each with
/// its input values there, from one evaluation (no finite differences): to run the op under
/// test and its gradient ops on another backend with the inputs the check gave them.
pub fn evaluated_ops(
    op: OpKind,
    args: &[Arg],
    outputs: &[usize],
    seed: u64,
) -> Result<Vec<Evaluated>, String> {
    let Setup { g, feeds, .. } = setup(op, args, outputs, seed)?;
    let values = interpret(&g, &feeds, StepCtx::default())?;
    Ok(evaluated_nodes(&g)
        .map(|id| {
            let node = &g.dag[id];
            let inputs = node
                .inputs
                .iter()
                .map(|&t| (g.ty(t).clone(), values.get(t).to_vec()))
                .collect();
            Evaluated {
                op: node.op.clone(),
                inputs,
            }
        })
        .collect())
}

/// Nodes that compute (every node but the fed leaves), in creation order.
fn evaluated_nodes(g: &Graph) -> impl Iterator<Item = NodeId> + '_ {
    g.dag
        .node_indices()
        .filter(|&id| !matches!(g.dag[id].op, OpKind::Parameter(_) | OpKind::Input(_)))
}

/// Draws the inputs and projections and builds the vjp: what `check_op` and `evaluated_ops`
/// share, so both see the same graph and values for the same seed.
fn setup(op: OpKind, args: &[Arg], outputs: &[usize], seed: u64) -> Result<Setup, String> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut g = Graph::scratch(op.primitive().name());
    let mut feeds: Feeds<f64> = Feeds::default();
    let mut inputs = Vec::new();
    let mut wrt = Vec::new();
    for (i, arg) in args.iter().enumerate() {
        let (t, values, differentiable) = match arg {
            Arg::Float(shape) => {
                let v = (0..shape.iter().product())
                    .map(|_| normal(&mut rng))
                    .collect();
                (param(&mut g, shape)?, v, true)
            }
            Arg::Range(shape, lo, hi) | Arg::Const(shape, lo, hi) => {
                let v = (0..shape.iter().product())
                    .map(|_| rng.random_range(*lo..=*hi))
                    .collect();
                let diff = matches!(arg, Arg::Range(..));
                (param(&mut g, shape)?, v, diff)
            }
            Arg::Ids(shape, n) => {
                let name = format!("ids{i}");
                let ty = TensorType {
                    shape: shape.clone(),
                    dtype: DType::I32,
                };
                let node = g.add_node(
                    OpKind::Input(Input {
                        name: name.clone(),
                        ty,
                    }),
                    &[],
                    0,
                    Phase::Forward,
                )?;
                let v = (0..shape.iter().product())
                    .map(|_| rng.random_range(0..*n) as f64)
                    .collect();
                feeds.inputs.insert(name, v);
                (TensorId::of(node, 0), Vec::new(), false)
            }
        };
        if let OpKind::Parameter(p) = &g.dag[t.node()].op {
            set(&mut feeds, p.index, values);
        }
        if differentiable {
            wrt.push((i, t));
        }
        inputs.push(t);
    }
    let node = g.add_node(op, &inputs, 0, Phase::Forward)?;
    let mut seeds = Vec::new();
    let mut projections = Vec::new();
    for &k in outputs {
        let y = TensorId::of(node, k);
        let shape = g.ty(y).shape.clone();
        let r = param(&mut g, &shape)?;
        let values: Vec<f64> = (0..shape.iter().product())
            .map(|_| normal(&mut rng))
            .collect();
        set(&mut feeds, g.params.len() - 1, values.clone());
        seeds.push((y, r));
        projections.push((y, values));
    }
    let wrt_ids: Vec<TensorId> = wrt.iter().map(|&(_, t)| t).collect();
    let grads = autodiff::vjp(&mut g, &seeds, &wrt_ids).map_err(|d| d.message.clone())?;
    g.verify()?;
    Ok(Setup {
        g,
        feeds,
        wrt,
        grads,
        projections,
        rng,
    })
}

fn set(feeds: &mut Feeds<f64>, index: usize, values: Vec<f64>) {
    if feeds.params.len() <= index {
        feeds.params.resize(index + 1, Vec::new());
    }
    feeds.params[index] = values;
}

fn param(g: &mut Graph, shape: &[usize]) -> Result<TensorId, String> {
    let t = g.add_param(
        format!("p{}", g.params.len()),
        TensorType::f32(shape.to_vec()),
        Init::Zeros,
        true,
        0,
        true,
    )?;
    Ok(t.expect("read"))
}

fn normal(rng: &mut ChaCha8Rng) -> f64 {
    // Box-Muller: enough for test data.
    let u: f64 = rng.random_range(f64::EPSILON..1.0);
    let v: f64 = rng.random();
    (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::{Binary, BinaryFn, MatMul, Unary, UnaryFn};

    fn assert_close(op: OpKind, args: &[Arg]) {
        for seed in 0..3 {
            let r = check_op(op.clone(), args, &[0], seed).unwrap();
            assert!(r.worst < 1e-5, "{op:?} seed {seed}: {r:?}");
            assert!(r.checked > 0);
        }
    }

    /// Every row of the elementwise table, so a new function cannot miss its check.
    #[test]
    fn unary_functions() {
        let all = UnaryFn::examples();
        assert!(all.contains(&UnaryFn::Silu));
        for f in all {
            assert_close(OpKind::Unary(Unary { f }), &[Arg::Float(vec![3, 7, 5])]);
        }
    }

    #[test]
    fn binary_with_broadcasting() {
        for f in [BinaryFn::Add, BinaryFn::Mul] {
            let op = OpKind::Binary(Binary { f });
            assert_close(
                op.clone(),
                &[Arg::Float(vec![2, 3, 5]), Arg::Float(vec![3, 1])],
            );
            assert_close(op.clone(), &[Arg::Float(vec![1]), Arg::Float(vec![4, 3])]);
            assert_close(op, &[Arg::Float(vec![3, 5]), Arg::Float(vec![3, 5])]);
        }
    }

    #[test]
    fn matmul_over_leading_dims() {
        let op = OpKind::MatMul(MatMul);
        assert_close(
            op.clone(),
            &[Arg::Float(vec![1, 7]), Arg::Float(vec![5, 7])],
        );
        assert_close(op, &[Arg::Float(vec![2, 3, 7]), Arg::Float(vec![5, 7])]);
    }

    /// `evaluated_ops` lists the ops of the check's report, each with the values the check gave
    /// its inputs: the vjp of a broadcast mul multiplies the same dy by the forward inputs.
    #[test]
    fn evaluated_ops_are_the_checked_ops_with_their_inputs() {
        let op = OpKind::Binary(Binary { f: BinaryFn::Mul });
        let args = [Arg::Float(vec![2, 3]), Arg::Float(vec![3])];
        let report = check_op(op.clone(), &args, &[0], 4).unwrap();
        let ops = evaluated_ops(op.clone(), &args, &[0], 4).unwrap();
        let kinds: Vec<&OpKind> = ops.iter().map(|e| &e.op).collect();
        assert_eq!(kinds, report.ops.iter().collect::<Vec<_>>());
        // y = a·b; da = dy·b; db = sum_to(dy·a, [3]).
        let names: Vec<&str> = kinds.iter().map(|op| op.variant()).collect();
        assert_eq!(names, ["Binary", "Binary", "Binary", "SumTo"]);
        assert_eq!(*kinds[0], op);
        let values = |k: usize, i: usize| &ops[k].inputs[i].1;
        assert_eq!(values(1, 1), values(0, 1));
        assert_eq!(values(2, 1), values(0, 0));
        assert_eq!(values(1, 0), values(2, 0));
        assert_eq!(ops[3].inputs[0].0.shape, [2, 3]);
    }
}
