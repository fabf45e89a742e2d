//! Hand-computed shapes and parameter counts for configs that use every layer op, through
//! the CLI: a DAG (branches, concat, a forward reference, nested blocks) and a token model.

use std::process::Command;

use serde_json::{Value, json};

fn check(config: &str) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(["check", config, "--json"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// (layer, op, per-sample output, params), worked out by hand from PyTorch's formulas:
/// out = (in + 2·pad − dilation·(k − 1) − 1) / stride + 1.
fn expect(j: &Value, rows: &[(&str, &str, Value, u64)]) {
    let layers = j["layers"].as_array().unwrap();
    for (name, op, shape, params) in rows {
        let l = layers
            .iter()
            .find(|l| l["name"] == *name)
            .unwrap_or_else(|| panic!("no layer {name}"));
        assert_eq!(
            (&l["op"], &l["output"], l["params"].as_u64().unwrap()),
            (&json!(op), shape, *params),
            "{name}"
        );
    }
}

#[test]
fn dag_of_image_ops() {
    let j = check("tests/configs/good/dag.toml");
    expect(
        &j,
        &[
            ("stem", "conv2d", json!([8, 5, 4]), 8 * 3 * 3 * 5 + 8),
            ("bn", "batchnorm", json!([8, 5, 4]), 16),
            ("act", "leaky_relu", json!([8, 5, 4]), 0),
            ("left", "max_pool2d", json!([8, 3, 2]), 0),
            ("right", "avg_pool2d", json!([8, 3, 2]), 0),
            ("cat", "concat", json!([16, 3, 2]), 0),
            ("dw", "conv2d", json!([16, 3, 2]), 16 * 9 + 16),
            ("blk.g.0.proj", "conv2d", json!([16, 3, 2]), 16 * 16 + 16),
            ("blk.g.1.gated", "mul", json!([16, 3, 2]), 0),
            ("blk.tanh_1", "tanh", json!([16, 3, 2]), 0),
            ("blk.residual", "add", json!([16, 3, 2]), 0),
            ("sum", "add", json!([16, 3, 2]), 0),
            ("pooled", "global_avg_pool", json!([16]), 0),
            ("flat", "flatten", json!([96]), 0),
            ("grid", "reshape", json!([24, 4]), 0),
            ("ln", "layernorm", json!([24, 4]), 8),
            ("soft", "softmax", json!([24, 4]), 0),
            ("drop", "dropout", json!([16]), 0),
            ("gel", "gelu", json!([16]), 0),
            ("head", "linear", json!([5]), 16 * 5 + 5),
        ],
    );
    assert_eq!(j["params"], 368 + 16 + 160 + 2 * 272 + 8 + 85);
    // conv: 2 FLOPs per multiply-add × (in/groups·kh·kw) per output element, + the bias add.
    let stem = j["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "stem")
        .unwrap();
    assert_eq!(stem["flops_per_sample"], 2 * 45 * 160 + 160);
}

#[test]
fn patch_tokens() {
    let j = check("tests/configs/good/patches.toml");
    expect(
        &j,
        &[
            ("patch", "conv2d", json!([8, 7, 7]), 8 * 3 * 2 * 2 + 8),
            ("grid", "reshape", json!([8, 49]), 0),
            ("tokens", "permute", json!([49, 8]), 0),
            ("norm", "layernorm", json!([49, 8]), 2 * 8),
            ("mix", "linear", json!([49, 6]), 8 * 6 + 6),
            ("channels", "transpose", json!([6, 49]), 0),
            ("flat", "flatten", json!([294]), 0),
            ("head", "linear", json!([4]), 294 * 4 + 4),
        ],
    );
    assert_eq!(j["params"], 104 + 16 + 54 + 1180);
    let layers = j["layers"].as_array().unwrap();
    for l in layers
        .iter()
        .filter(|l| l["op"] == "permute" || l["op"] == "transpose")
    {
        assert_eq!(l["flops_per_sample"], 0, "{}", l["name"]);
    }
}

#[test]
fn vit_with_class_token() {
    let j = check("tests/configs/good/vit_tiny.toml");
    expect(
        &j,
        &[
            ("tokens", "transpose", json!([49, 8]), 0),
            ("cls_token", "class_token", json!([50, 8]), 8),
            ("pos_embed", "positional", json!([50, 8]), 50 * 8),
            ("norm", "layernorm", json!([50, 8]), 2 * 8),
            ("cls", "slice", json!([1, 8]), 0),
            ("flat", "flatten", json!([8]), 0),
            ("head", "linear", json!([4]), 8 * 4 + 4),
        ],
    );
    // patch 104, class token 8, positions 400, the block (2 norms 32, qkv 216, proj 72, fc1
    // 144, fc2 136), the final norm 16, head 36.
    assert_eq!(
        j["params"],
        104 + 8 + 400 + 32 + 216 + 72 + 144 + 136 + 16 + 36
    );
    let flops = |name: &str| {
        let layers = j["layers"].as_array().unwrap();
        layers.iter().find(|l| l["name"] == name).unwrap()["flops_per_sample"].clone()
    };
    assert_eq!(flops("cls_token"), 8);
    assert_eq!(flops("cls"), 0);
}

#[test]
fn token_model() {
    let j = check("tests/configs/good/tokens.toml");
    expect(
        &j,
        &[
            ("emb", "embedding", json!([6, 8]), 50 * 8),
            ("norm", "layernorm", json!([6, 8]), 2 * 48),
            ("mix", "linear", json!([6, 3]), 24),
            ("relu_3", "relu", json!([6, 3]), 0),
            ("rms", "rmsnorm", json!([6, 3]), 3),
        ],
    );
    assert_eq!(j["params"], 523);
}

#[test]
fn every_layer_op_is_exercised_by_a_config() {
    let mut used = std::collections::BTreeSet::new();
    for c in [
        "tests/configs/good/dag.toml",
        "tests/configs/good/tokens.toml",
        "tests/configs/good/gpt_tiny.toml",
        "tests/configs/good/patches.toml",
        "tests/configs/good/attention_by_hand.toml",
        "tests/configs/good/vit_tiny.toml",
        "configs/resnet.toml",
        "configs/lenet.toml",
    ] {
        for l in check(c)["layers"].as_array().unwrap() {
            used.insert(l["op"].as_str().unwrap().to_string());
        }
    }
    let missing: Vec<&&str> = trainer::nn::LAYER_OPS
        .iter()
        .filter(|op| !used.contains(**op))
        .collect();
    assert!(missing.is_empty(), "ops no config exercises: {missing:?}");
}
