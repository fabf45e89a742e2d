//! The CLI driven as a user drives it, on the shipped configs.

use std::path::Path;
use std::process::Command;

mod common;

use common::{ok_stdout, trainer};

fn check_json(config: &str) -> serde_json::Value {
    serde_json::from_str(&ok_stdout(&["check", config, "--json"])).expect("check --json is JSON")
}

const SHIPPED: &[&str] = &[
    "configs/resnet.toml",
    "configs/resnet18.toml",
    "configs/mlp.toml",
    "configs/lenet.toml",
    "configs/gpt.toml",
    "configs/vit.toml",
];

#[test]
fn every_shipped_config_checks_and_prints_a_table() {
    for c in SHIPPED {
        let text = ok_stdout(&["check", c]);
        assert!(text.starts_with(&format!("{c}: ok")), "{text}");
        assert!(
            text.contains("FLOPs/sample") && text.contains("total: "),
            "{text}"
        );
    }
    let shipped = std::fs::read_dir("configs")
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "toml")
        })
        .count();
    assert_eq!(
        shipped,
        SHIPPED.len(),
        "a config in configs/ is not covered by this test"
    );
}

#[test]
fn parameter_counts_are_pytorchs() {
    // sum(p.numel() for p in model.parameters()) of shared/gpu/torch_reference.py's models.
    assert_eq!(check_json("configs/resnet.toml")["params"], 272_186);
    assert_eq!(check_json("configs/resnet18.toml")["params"], 11_173_962);
    let table = ok_stdout(&["check", "configs/resnet.toml"]);
    assert!(table.contains("272,186 parameters"), "{table}");
    // benches/torch_gpt.py's nanoGPT at vocabulary 84 (the tied weight counted once).
    assert_eq!(check_json("configs/gpt.toml")["params"], 10_778_112);
}

/// Names and shapes, in order, of torchvision's state_dict for the same nets (one
/// `name [d0, d1, ...]` per line), so PyTorch's load_state_dict(strict=True) accepts ours.
fn torchvision_state_dict(file: &str) -> Vec<(String, Vec<u64>)> {
    include_str!("data/state_dicts.txt")
        .split("\n# ")
        .find_map(|block| block.trim_start_matches("# ").strip_prefix(file))
        .unwrap_or_else(|| panic!("{file} missing from tests/data/state_dicts.txt"))
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (name, shape) = l.split_once(' ').expect("name shape");
            (
                name.to_string(),
                serde_json::from_str(shape).expect("shape"),
            )
        })
        .collect()
}

#[test]
fn parameter_and_buffer_names_are_torchvisions() {
    for (config, reference) in [
        ("configs/resnet.toml", "resnet20"),
        ("configs/resnet18.toml", "resnet18"),
    ] {
        let j = check_json(config);
        let ours: Vec<(String, Vec<u64>)> = j["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                let shape = p["shape"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d.as_u64().unwrap())
                    .collect();
                (p["name"].as_str().unwrap().to_string(), shape)
            })
            .collect();
        assert_eq!(ours, torchvision_state_dict(reference), "{config}");
    }
}

#[test]
fn check_json_has_the_documented_keys() {
    let j = check_json("configs/lenet.toml");
    assert_eq!(j["ok"], true);
    assert!(j["flops_per_sample"].as_u64().unwrap() > 0);
    let layers = j["layers"].as_array().unwrap();
    let conv1 = layers.iter().find(|l| l["name"] == "conv1").unwrap();
    assert_eq!(conv1["op"], "conv2d");
    assert_eq!(conv1["output"], serde_json::json!([6, 28, 28]));
    assert_eq!(conv1["params"], 6 * 25 + 6);
    // 2 FLOPs per multiply-add, 25 per output element, plus one add per element for the bias.
    assert_eq!(
        conv1["flops_per_sample"],
        2 * 25 * 6 * 28 * 28 + 6 * 28 * 28
    );
    assert!(
        conv1["source"]
            .as_str()
            .unwrap()
            .starts_with("configs/lenet.toml:")
    );
    assert_eq!(j["output"], serde_json::json!([10]));
}

#[test]
fn set_overrides_change_the_model() {
    let j: serde_json::Value = serde_json::from_str(&ok_stdout(&[
        "--set",
        "model.layers.1.out=512",
        "check",
        "configs/mlp.toml",
        "--json",
    ]))
    .unwrap();
    let fc1 = j["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "fc1")
        .unwrap()
        .clone();
    assert_eq!(fc1["output"], serde_json::json!([512]));
    // `--set` is global: it may also come after the subcommand.
    let j: serde_json::Value = serde_json::from_str(&ok_stdout(&[
        "check",
        "configs/mlp.toml",
        "--json",
        "--set",
        "data.batch_size=7",
    ]))
    .unwrap();
    assert_eq!(j["batch"], 7);
}

/// `silu` is a layer op a user can name: in a config file, and swapped for a relu by `--set`.
#[test]
fn a_config_can_name_silu() {
    let layer = |j: &serde_json::Value, name: &str| {
        j["layers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["name"] == name)
            .unwrap_or_else(|| panic!("no layer {name}: {j}"))
            .clone()
    };
    let smooth = layer(&check_json("tests/configs/good/tokens.toml"), "smooth");
    assert_eq!(smooth["op"], "silu");
    assert_eq!(smooth["output"], serde_json::json!([6, 3]));
    assert_eq!(smooth["params"], 0);
    assert_eq!(smooth["flops_per_sample"], 5 * 6 * 3);

    // configs/mlp.toml's first relu (layer 2) becomes a silu: 5 FLOPs per element instead of 1.
    let relu = check_json("configs/mlp.toml");
    let silu: serde_json::Value = serde_json::from_str(&ok_stdout(&[
        "check",
        "configs/mlp.toml",
        "--json",
        "--set",
        "model.layers.2.op=silu",
    ]))
    .unwrap();
    assert_eq!(layer(&relu, "relu_2")["flops_per_sample"], 256);
    let silu_2 = layer(&silu, "silu_2");
    assert_eq!(silu_2["op"], "silu");
    assert_eq!(silu_2["flops_per_sample"], 5 * 256);
    assert_eq!(
        silu["flops_per_sample"].as_u64().unwrap(),
        relu["flops_per_sample"].as_u64().unwrap() + 4 * 256
    );
    // A plain activation has no attributes: one is refused at its key.
    let out = trainer(&[
        "check",
        "configs/mlp.toml",
        "--set",
        "model.layers.2.op=silu",
        "--set",
        "model.layers.2.slope=0.1",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("slope") && err.contains("a `silu` layer"),
        "{err}"
    );
}

/// `dot -Tsvg` of the text: the SVG, or the test fails with Graphviz's complaint. A warning
/// fails too: Graphviz 2.43 warns "Something is probably seriously wrong" on layouts it
/// botched.
fn render_svg(what: &str, dot: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("g.dot");
    std::fs::write(&file, dot).unwrap();
    let svg = Command::new("dot")
        .arg("-Tsvg")
        .arg(&file)
        .output()
        .expect("graphviz `dot` is installed (the README's test command installs it)");
    let err = String::from_utf8_lossy(&svg.stderr);
    assert!(
        svg.status.success() && err.trim().is_empty(),
        "dot -Tsvg of {what}: {err}"
    );
    String::from_utf8(svg.stdout).expect("utf-8 svg")
}

/// Both graphs of every shipped config render, as `trainer graph C [--backward] | dot -Tsvg`.
#[test]
fn graph_dot_renders_with_graphviz_forward_and_backward() {
    for c in SHIPPED {
        let forward = render_svg(c, &ok_stdout(&["graph", c]));
        assert!(forward.contains("input (input)"), "{c}: no input layer");
        let step = render_svg(
            &format!("{c} --backward"),
            &ok_stdout(&["graph", c, "--backward"]),
        );
        for part in ["(backward)", "(update)", "_step"] {
            assert!(step.contains(part), "{c} --backward: no {part} drawn");
        }
    }
    let resnet = render_svg("resnet", &ok_stdout(&["graph", "configs/resnet.toml"]));
    assert!(
        resnet.contains("layer3.2.conv2"),
        "rendered graph lacks a layer"
    );
}

#[test]
fn graph_json_describes_nodes_and_params() {
    let j: serde_json::Value = serde_json::from_str(&ok_stdout(&[
        "graph",
        "configs/lenet.toml",
        "--format",
        "json",
        "--batch",
        "3",
    ]))
    .unwrap();
    let nodes = j["nodes"].as_array().unwrap();
    let conv = nodes.iter().find(|n| n["op"] == "conv2d").unwrap();
    assert_eq!(
        conv["outputs"][0]["shape"],
        serde_json::json!([3, 6, 28, 28])
    );
    assert_eq!(conv["layer"], "conv1");
    let loss = &nodes[j["loss"]["node"].as_u64().unwrap() as usize];
    assert_eq!(loss["op"], "cross_entropy");
    assert_eq!(j["params"].as_array().unwrap().len(), 10);
}

#[test]
fn help_exists_for_every_command() {
    for args in [&["--help"][..], &["check", "--help"], &["graph", "--help"]] {
        let out = ok_stdout(args);
        assert!(out.contains("Usage"), "{args:?}: {out}");
    }
}

#[test]
fn usage_errors_exit_2_and_missing_files_are_named() {
    let out = trainer(&["check"]);
    assert_eq!(out.status.code(), Some(2));
    let out = trainer(&["check", "configs/nope.toml"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("configs/nope.toml") && err.contains("no such file"),
        "{err}"
    );
    assert!(Path::new("configs/resnet.toml").exists());
}

#[test]
fn sizes_too_large_for_any_device_are_refused_not_overflowed() {
    let cases: &[&[&str]] = &[
        &[
            "--set",
            "model.layers.7.out=2147483647",
            "check",
            "configs/lenet.toml",
        ],
        &[
            "--set",
            "model.layers.0.out=9223372036854775807",
            "check",
            "configs/lenet.toml",
        ],
        &[
            "--set",
            "data.batch_size=2147483647",
            "check",
            "configs/resnet18.toml",
        ],
        &[
            "--set",
            "model.layers.0.padding=4611686018427387904",
            "check",
            "configs/lenet.toml",
        ],
        &["check", "configs/lenet.toml", "--batch", "99999999999"],
    ];
    for args in cases {
        let out = trainer(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.starts_with("error"), "{args:?}: {err}");
    }
}

#[test]
fn two_processes_give_byte_identical_graphs() {
    for c in SHIPPED {
        let a = ok_stdout(&["graph", c, "--format", "json"]);
        let b = ok_stdout(&["graph", c, "--format", "json"]);
        assert_eq!(a, b, "{c}");
        assert_eq!(ok_stdout(&["graph", c]), ok_stdout(&["graph", c]), "{c}");
    }
}

/// A misspelled section at the start of a `--set` path is named with did-you-mean, however
/// long the path (not "add a whole table").
#[test]
fn a_misspelled_section_in_set_gets_did_you_mean() {
    for (path, typo, section) in [
        ("modle.layers.0.out=3", "modle", "model"),
        ("optimzer.lr=0.1", "optimzer", "optimizer"),
        ("trian.epochs=2", "trian", "train"),
        ("dta.augment.0.x=1", "dta", "data"),
    ] {
        let out = trainer(&["--set", path, "check", "configs/mlp.toml"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{path}: {err}");
        assert!(
            err.contains(&format!("unknown section `{typo}`"))
                && err.contains(&format!("did you mean `{section}`?"))
                && err.contains("--> --set #1:1:1")
                && !err.contains("whole table"),
            "{path}: {err}"
        );
    }
    // A section the file lacks may still be set whole or key by key.
    ok_stdout(&["--set", "schedule.kind=cosine", "check", "configs/mlp.toml"]);
}

/// `devices` reads no config, so a `--set` (before or after it) is refused, not ignored.
#[test]
fn devices_refuses_set() {
    for args in [
        &["--set", "optimizer.lr=0.1", "devices"][..],
        &["devices", "--json", "--set", "run.device=gpu"],
    ] {
        let out = trainer(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "{args:?}");
        assert!(
            err.starts_with("error: `trainer devices` reads no config"),
            "{err}"
        );
    }
}

/// An input of `predict` that does not exist is named as a missing input, not as a dataset
/// to find through data.path.
#[test]
fn predict_names_a_missing_input() {
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = dir.path().join("no-checkpoint");
    for input in ["shirt.png", "no/such/dir/t10k-images-idx3-ubyte.gz"] {
        let out = trainer(&[
            "predict",
            "configs/mlp.toml",
            "--device",
            "cpu",
            "--checkpoint",
            checkpoint.to_str().unwrap(),
            input,
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{input}: {err}");
        assert!(
            err.starts_with(&format!(
                "error: {input}: not found; there is no such input file"
            )),
            "{err}"
        );
        assert!(!err.contains("data.path"), "{err}");
    }
}
