//! Whole-network gradient checks: autodiff of the shipped models (and a two-block ResNet)
//! against central finite differences, both in f64 through the CPU interpreter.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use trainer::autodiff;
use trainer::backend::cpu::interpret::Values;
use trainer::backend::cpu::{Feeds, interpret};
use trainer::config;
use trainer::graph::Graph;
use trainer::nn;
use trainer::ops::OpKind;
use trainer::tensor::DType;
use trainer::tensor::StepCtx;
use trainer::tensor::TensorId;

fn forward(path: &str, batch: usize) -> Graph {
    forward_with(path, &[], batch)
}

fn forward_with(path: &str, sets: &[String], batch: usize) -> Graph {
    let loaded = config::load(std::path::Path::new(path), sets);
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

/// The parameters' initial values (running variances 1) and random features and labels.
fn random_feeds(g: &Graph, rng: &mut ChaCha8Rng) -> Feeds<f64> {
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
    feeds.inputs.insert(input_name(g, g.features), x);
    feeds.inputs.insert(input_name(g, g.labels), y);
    feeds
}

/// Checks d(loss)/d(param) on `samples` random elements of every trainable parameter.
fn check(path: &str, batch: usize, samples: usize) {
    let mut g = forward(path, batch);
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let feeds = random_feeds(&g, &mut rng);
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

#[test]
fn tiny_vit_gradients_match_finite_differences() {
    // ViT's class token (a broadcast token concatenated before the patch tokens), the position
    // table over both, an encoder block, and a head that reads only the class token's final
    // state through `slice`: the patch embedding's gradient reaches it through attention alone.
    check("tests/configs/good/vit_tiny.toml", 2, 8);
}

/// The output of layer `name`, and its shape.
fn layer_value<'v>(g: &Graph, values: &'v Values<f64>, name: &str) -> (&'v [f64], Vec<usize>) {
    let l = g.layers.iter().find(|l| l.name == name).expect("a layer");
    let t = l.output.expect("an output");
    (values.get(t), g.ty(t).shape.clone())
}

#[test]
fn class_token_comes_first_and_slice_takes_python_ranges() {
    let (batch, tokens, dim) = (2, 49, 8);
    // `cls` (layer 7) as given (0:1), and as `-3:-1` (tokens 48 and 49 of the 50).
    for (sets, first, len) in [
        (vec![], 0, 1),
        (
            vec![
                "model.layers.7.start=-3".to_string(),
                "model.layers.7.end=-1".to_string(),
            ],
            47,
            2,
        ),
    ] {
        let g = forward_with("tests/configs/good/vit_tiny.toml", &sets, batch);
        let feeds = random_feeds(&g, &mut ChaCha8Rng::seed_from_u64(3));
        let values = interpret(&g, &feeds, StepCtx::default()).unwrap();
        let weight = g
            .params
            .iter()
            .position(|p| p.name == "cls_token.weight")
            .expect("the class token's parameter");
        assert_eq!(g.params[weight].ty.shape, [1, dim]);
        let token = &feeds.params[weight];
        let (x, _) = layer_value(&g, &values, "tokens");
        let (y, shape) = layer_value(&g, &values, "cls_token");
        assert_eq!(shape, [batch, tokens + 1, dim]);
        for b in 0..batch {
            let sample = &y[b * (tokens + 1) * dim..(b + 1) * (tokens + 1) * dim];
            assert_eq!(
                &sample[..dim],
                token.as_slice(),
                "sample {b}: the token first"
            );
            assert_eq!(&sample[dim..], &x[b * tokens * dim..(b + 1) * tokens * dim]);
        }
        let (normed, _) = layer_value(&g, &values, "norm");
        let (cls, shape) = layer_value(&g, &values, "cls");
        assert_eq!(shape, [batch, len, dim], "{sets:?}");
        for b in 0..batch {
            let from = (b * (tokens + 1) + first) * dim;
            assert_eq!(
                &cls[b * len * dim..(b + 1) * len * dim],
                &normed[from..from + len * dim],
                "{sets:?} sample {b}"
            );
        }
    }
}
