//! Random mutations of the shipped configs (deleted, duplicated or swapped lines, changed
//! values, truncation) must give a result or a rendered diagnostic, never a panic.

use std::path::Path;

use proptest::prelude::*;

const CONFIGS: &[&str] = &["resnet.toml", "resnet18.toml", "mlp.toml", "lenet.toml"];

/// Values that stress ranges and types: zero, negatives, huge, wrong types, `$` parameters.
const VALUES: &[&str] = &[
    "0",
    "-1",
    "1",
    "2",
    "3",
    "2147483647",
    "9223372036854775807",
    "1e308",
    "-0.5",
    "0.5",
    "1.5",
    "nan",
    "inf",
    "\"\"",
    "\"$width\"",
    "\"$nope\"",
    "\"relu\"",
    "\"input\"",
    "[]",
    "[0, 0]",
    "[1, 2, 3]",
    "{}",
    "true",
    "\"conv1\"",
    "\"layer1\"",
    "{ kind = \"identity\" }",
    "\"1 epoch\"",
];

#[derive(Debug, Clone)]
enum Mutation {
    DeleteLine(usize),
    DuplicateLine(usize),
    SwapValues(usize, usize),
    SetValue(usize, usize),
    Truncate(usize),
    DeleteChar(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<usize>().prop_map(Mutation::DeleteLine),
        any::<usize>().prop_map(Mutation::DuplicateLine),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::SwapValues(a, b)),
        (any::<usize>(), 0..VALUES.len()).prop_map(|(a, v)| Mutation::SetValue(a, v)),
        any::<usize>().prop_map(Mutation::Truncate),
        any::<usize>().prop_map(Mutation::DeleteChar),
    ]
}

/// `key = value` splits at the first ` = `; other lines have no value to change.
fn value_of(line: &str) -> Option<(&str, &str)> {
    line.split_once(" = ")
}

fn apply(text: &str, m: &Mutation) -> String {
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    let n = lines.len();
    let with_values: Vec<usize> = (0..n).filter(|&i| value_of(&lines[i]).is_some()).collect();
    let needs_values = matches!(m, Mutation::SwapValues(..) | Mutation::SetValue(..));
    if n == 0 || text.is_empty() || (needs_values && with_values.is_empty()) {
        return text.to_string();
    }
    match *m {
        Mutation::DeleteLine(i) => {
            lines.remove(i % n);
        }
        Mutation::DuplicateLine(i) => {
            let l = lines[i % n].clone();
            lines.insert(i % n, l);
        }
        Mutation::SwapValues(a, b) => {
            let (a, b) = (
                with_values[a % with_values.len()],
                with_values[b % with_values.len()],
            );
            let (ka, va) = value_of(&lines[a])
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .unwrap();
            let (kb, vb) = value_of(&lines[b])
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .unwrap();
            lines[a] = format!("{ka} = {vb}");
            lines[b] = format!("{kb} = {va}");
        }
        Mutation::SetValue(a, v) => {
            let a = with_values[a % with_values.len()];
            let k = value_of(&lines[a]).unwrap().0.to_string();
            lines[a] = format!("{k} = {}", VALUES[v]);
        }
        Mutation::Truncate(at) => {
            let mut at = at % text.len();
            while !text.is_char_boundary(at) {
                at -= 1;
            }
            return text[..at].to_string();
        }
        Mutation::DeleteChar(at) => {
            let mut s = text.to_string();
            let mut at = at % s.len();
            while !s.is_char_boundary(at) {
                at -= 1;
            }
            s.remove(at);
            return s;
        }
    }
    lines.join("\n") + "\n"
}

fn load_and_build(dir: &Path, name: &str, text: &str) {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    let loaded = trainer::config::load(&path, &[]);
    match loaded.result {
        Err(e) => {
            let rendered = e.render(&loaded.sources);
            assert!(rendered.starts_with("error:"), "{rendered}");
        }
        Ok(cfg) => match trainer::nn::build(&cfg) {
            Ok(g) => {
                g.verify().unwrap();
                let _ = trainer::graph::summary::summarize(&g, &loaded.sources).table();
                let _ = trainer::graph::export::dot(&g);
            }
            Err(d) => assert!(d.render(&loaded.sources).starts_with("error:")),
        },
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn mutated_configs_never_panic(which in 0..CONFIGS.len(), muts in prop::collection::vec(mutation(), 1..4)) {
        let dir = tempfile::tempdir().unwrap();
        // resnet18.toml extends resnet.toml: keep the base beside it, mutated or not.
        let base = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/resnet.toml")).unwrap();
        std::fs::write(dir.path().join("resnet.toml"), &base).unwrap();
        let name = CONFIGS[which];
        let mut text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("configs").join(name)).unwrap();
        for m in &muts {
            if text.is_empty() {
                break;
            }
            text = apply(&text, m);
        }
        load_and_build(dir.path(), if name == "resnet.toml" { "mutated.toml" } else { name }, &text);
    }
}

#[test]
fn unmutated_configs_build() {
    let dir = tempfile::tempdir().unwrap();
    for name in CONFIGS {
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("configs")
                .join(name),
        )
        .unwrap();
        std::fs::write(dir.path().join(name), &text).unwrap();
    }
    for name in CONFIGS {
        let loaded = trainer::config::load(&dir.path().join(name), &[]);
        let cfg = loaded
            .result
            .unwrap_or_else(|e| panic!("{}", e.render(&loaded.sources)));
        trainer::nn::build(&cfg).unwrap().verify().unwrap();
    }
}
