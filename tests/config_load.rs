//! `extends` and `--set` semantics through the library API.

use std::path::Path;

use trainer::config::{self, Device, Optimizer};

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

const BASE: &str = r#"
[run]
name = "base"
seed = 1

[data]
dataset = "synthetic"
classes = 3
batch_size = 8

[model]
input = { shape = [4] }
layers = [{ name = "fc", op = "linear", out = 3 }]

[loss]
kind = "cross_entropy"

[optimizer]
kind = "sgd"
lr = 0.1
momentum = 0.9
"#;

fn load(path: &Path, sets: &[&str]) -> config::Config {
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    let loaded = config::load(path, &sets);
    loaded
        .result
        .unwrap_or_else(|e| panic!("{}", e.render(&loaded.sources)))
}

#[test]
fn extends_merges_tables_and_replaces_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "base.toml", BASE);
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    // Paths are relative to the extending file.
    write(
        &dir.path().join("sub"),
        "child.toml",
        "extends = \"../base.toml\"\n[run]\nseed = 5\n[optimizer]\nlr = 0.01\n",
    );
    let c = load(&dir.path().join("sub/child.toml"), &[]);
    assert_eq!(c.run.seed, 5);
    assert_eq!(c.run.name, "base", "untouched keys of a merged table stay");
    let Optimizer::Sgd(sgd) = &c.optimizer else {
        panic!("sgd")
    };
    assert_eq!((sgd.lr.0, sgd.momentum.0), (0.01, 0.9));
}

#[test]
fn set_applies_in_order_with_bare_words_and_new_keys() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "base.toml", BASE);
    let c = load(
        &dir.path().join("base.toml"),
        &[
            "run.device=cpu",
            "run.seed=3",
            "run.seed=4",
            "optimizer.nesterov=true",
            "run.name=\"a b\"",
            "model.layers.0.out=3",
        ],
    );
    assert_eq!(c.run.device, Device::Cpu);
    assert_eq!(c.run.seed, 4, "later --set wins");
    assert_eq!(c.run.name, "a b");
    let Optimizer::Sgd(sgd) = &c.optimizer else {
        panic!("sgd")
    };
    assert!(sgd.nesterov, "a key absent from the file can be added");
    // A section absent from the file can be created too.
    let c = load(&dir.path().join("base.toml"), &["train.epochs=9"]);
    assert_eq!(c.train.epochs.0, 9);
}

#[test]
fn the_graph_honours_overrides() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "base.toml", BASE);
    let c = load(&dir.path().join("base.toml"), &["data.batch_size=5"]);
    let g = trainer::nn::build(&c).unwrap();
    assert_eq!(g.ty(g.output).shape, vec![5, 3]);
    assert_eq!(g.param_count(), 4 * 3 + 3);
}

fn build_err(text: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "c.toml", text);
    let loaded = config::load(&dir.path().join("c.toml"), &[]);
    let c = loaded
        .result
        .unwrap_or_else(|e| panic!("{}", e.render(&loaded.sources)));
    match trainer::nn::build(&c) {
        Ok(_) => panic!("expected an error"),
        Err(d) => d.render(&loaded.sources),
    }
}

#[test]
fn broadcasting_never_mixes_the_batch_with_a_sample_dim() {
    // [3, 4] + [4] per sample: the [4] input must be aligned to the sample's last dim at every
    // batch size, including the batch of 3 that would otherwise line up with the sample's 3.
    let dir = tempfile::tempdir().unwrap();
    let text = BASE.replace(
        "input = { shape = [4] }\nlayers = [{ name = \"fc\", op = \"linear\", out = 3 }]",
        "input = { shape = [3, 4] }\nlayers = [\n  { name = \"v\", op = \"global_avg_pool\", inputs = [\"img\"] },\n  { name = \"img\", op = \"reshape\", shape = [1, 3, 4], inputs = [\"input\"] },\n  { name = \"row\", op = \"linear\", out = 4, inputs = [\"input\"] },\n  { name = \"r\", op = \"reshape\", shape = [12], inputs = [\"row\"] },\n  { name = \"sum\", op = \"add\", inputs = [\"row\", \"v\"] },\n  { op = \"flatten\" },\n  { name = \"fc\", op = \"linear\", out = 3 },\n]",
    );
    write(dir.path(), "c.toml", &text);
    for batch in [1, 3, 4, 8] {
        let c = load(
            &dir.path().join("c.toml"),
            &[&format!("data.batch_size={batch}")],
        );
        let g = trainer::nn::build(&c).unwrap();
        let sum = g
            .layers
            .iter()
            .find(|l| l.name == "sum")
            .unwrap()
            .output
            .unwrap();
        assert_eq!(g.ty(sum).shape, vec![batch, 3, 4], "batch {batch}");
    }
}

#[test]
fn generated_layer_names_cannot_collide_with_declared_ones() {
    let text = BASE.replace(
        "layers = [{ name = \"fc\", op = \"linear\", out = 3 }]",
        "layers = [{ name = \"blk\", block = \"b\" }, { name = \"fc\", op = \"linear\", out = 3 }]\n\
         [model.blocks.b]\nbody = [{ name = \"residual\", op = \"linear\", out = 4 }]\nshortcut = \"identity\"",
    );
    let err = build_err(&text);
    assert!(err.contains("two layers are named `blk.residual`"), "{err}");
}

/// `config.resolved.toml` loads back to the same config: every shipped config, with defaults
/// filled in and an override applied, survives the round trip unchanged.
#[test]
fn resolved_config_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir("configs").unwrap() {
        let path = entry.unwrap().path();
        let sets = vec!["optimizer.lr=0.0125".to_string()];
        let first = config::load(&path, &sets).result.unwrap();
        let text = first.resolved_toml().unwrap();
        assert!(text.contains("lr = 0.0125"), "{}: {text}", path.display());
        let copy = dir.path().join("config.resolved.toml");
        std::fs::write(&copy, &text).unwrap();
        let loaded = config::load(&copy, &[]);
        let second = match loaded.result {
            Ok(c) => c,
            Err(e) => panic!("{}:\n{}\n{text}", path.display(), e.render(&loaded.sources)),
        };
        assert_eq!(second.resolved_toml().unwrap(), text, "{}", path.display());
    }
}
