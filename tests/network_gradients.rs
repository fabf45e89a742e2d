//! Whole-network gradient checks: autodiff of the shipped models (and a two-block ResNet)
//! against central finite differences, both in f64 through the CPU interpreter.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use trainer::autodiff;
use trainer::backend::cpu::{Feeds, interpret};
use trainer::config;
use trainer::graph::Graph;
use trainer::nn;
use trainer::ops::OpKind;
use trainer::tensor::DType;
use trainer::tensor::StepCtx;
use trainer::tensor::TensorId;

fn forward(path: &str, batch: usize) -> Graph {
    let loaded = config::load(std::path::Path::new(path), &[]);
    let cfg = match loaded.result {
        Ok(c) => c,
        Err(e) => panic!("{}", e.render(&loaded.sources)),
    };
    nn::build_with_batch(&cfg, batch).expect("builds")
}

fn input_name(g: &Graph, t: TensorId) -> String {
    match &g.dag[t.node()].op {
        OpKind::Input(i) => i.name.clone(),
        _ => unreachable!("features and labels are inputs"),
    }
}

/// Checks d(loss)/d(param) on `samples` random elements of every trainable parameter.
fn check(path: &str, batch: usize, samples: usize) {
    let mut g = forward(path, batch);
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let mut feeds: Feeds<f64> = Feeds::default();
    for p in &g.params {
        let mut v: Vec<f64> = p
            .init
            .values(4, &p.name, p.ty.numel())
            .into_iter()
            .map(f64::from)
            .collect();
        if p.name.ends_with("running_var") {
            v.iter_mut().for_each(|x| *x = 1.0);
        }
        feeds.params.push(v);
    }
    let classes = *g.ty(g.output).shape.last().unwrap();
    // Token ids (a language model's vocabulary is its classes), else values.
    let ft = g.ty(g.features).clone();
    let x: Vec<f64> = (0..ft.numel())
        .map(|_| match ft.dtype {
            DType::I32 => rng.random_range(0..classes) as f64,
            DType::F32 => rng.random_range(-1.0..1.0),
        })
        .collect();
    let lt = g.ty(g.labels).clone();
    let y: Vec<f64> = (0..lt.numel())
        .map(|_| match lt.dtype {
            DType::I32 => rng.random_range(0..classes) as f64,
            DType::F32 => rng.random_range(-1.0..1.0),
        })
        .collect();
    feeds.inputs.insert(input_name(&g, g.features), x);
    feeds.inputs.insert(input_name(&g, g.labels), y);
    let wrt: Vec<(usize, TensorId)> = g
        .params
        .iter()
        .enumerate()
        .filter(|(_, p)| p.trainable)
        .map(|(i, p)| (i, TensorId::of(p.node.unwrap(), 0)))
        .collect();
    let ids: Vec<TensorId> = wrt.iter().map(|w| w.1).collect();
    let loss = g.loss;
    let grads = autodiff::gradients(&mut g, loss, &ids).expect("differentiable");
    g.verify().unwrap();
    let ctx = StepCtx {
        lr: 0.0,
        step: 1,
        seed: 9,
    };
    let values = interpret(&g, &feeds, ctx).unwrap();
    let mut worst = (0.0f64, String::new());
    for ((i, _), dt) in wrt.iter().zip(&grads) {
        let analytic = values.get(dt.expect("every parameter reaches the loss"));
        let n = analytic.len();
        for _ in 0..samples.min(n) {
            let e = rng.random_range(0..n);
            let x0 = feeds.params[*i][e];
            let h = 1e-5;
            let mut f = feeds.clone();
            f.params[*i][e] = x0 + h;
            let up = interpret(&g, &f, ctx).unwrap().get(loss)[0];
            f.params[*i][e] = x0 - h;
            let down = interpret(&g, &f, ctx).unwrap().get(loss)[0];
            let numeric = (up - down) / (2.0 * h);
            let err = (analytic[e] - numeric).abs() / (1e-6 + numeric.abs().max(analytic[e].abs()));
            if err > worst.0 {
                worst = (
                    err,
                    format!(
                        "{} [{e}]: analytic {} numeric {numeric}",
                        g.params[*i].name, analytic[e]
                    ),
                );
            }
        }
    }
    assert!(
        worst.0 < 1e-4,
        "{path}: worst relative error {:e} at {}",
        worst.0,
        worst.1
    );
}

#[test]
fn mlp_gradients_match_finite_differences() {
    check("configs/mlp.toml", 3, 6);
}

#[test]
fn lenet_gradients_match_finite_differences() {
    check("configs/lenet.toml", 2, 4);
}

#[test]
fn tiny_gpt_gradients_match_finite_differences() {
    // Attention with dropout, layernorms, residual sums, the positional table, and the
    // embedding tied to the output projection (its gradient the sum of both uses).
    check("tests/configs/good/gpt_tiny.toml", 2, 5);
}

#[test]
fn attention_by_hand_gradients_match_finite_differences() {
    // Batched matmuls of two activations (one transposed), scale, softmax over the keys.
    check("tests/configs/good/attention_by_hand.toml", 2, 5);
}

#[test]
fn two_block_resnet_gradients_match_finite_differences() {
    check("tests/configs/good/resnet_tiny.toml", 2, 5);
}
