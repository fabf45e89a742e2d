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
    let g = trainer::graph::build(&c).unwrap();
    assert_eq!(g.ty(g.output).shape, vec![5, 3]);
    assert_eq!(g.param_count(), 4 * 3 + 3);
}
