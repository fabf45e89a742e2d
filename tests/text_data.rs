//! `dataset = "text"` through the binary: a character model fits a slice of the shipped
//! Shakespeare (the loss falls, vocab.json is in the run directory and in every checkpoint,
//! `eval --split val` scores every position), and each broken text is one clear error naming
//! its file (exit 2, no panic, no run directory).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use trainer::data::Vocab;

fn trainer(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run trainer")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The first `n` bytes of the shipped corpus (checked against its SHA256SUMS first).
fn shakespeare(n: usize) -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("datasets/shakespeare");
    let gz = std::fs::read(dir.join("shakespeare.txt.gz")).unwrap();
    let mut text = Vec::new();
    flate2::read::GzDecoder::new(gz.as_slice())
        .read_to_end(&mut text)
        .unwrap();
    let sums = std::fs::read_to_string(dir.join("SHA256SUMS")).unwrap();
    assert_eq!(
        sums,
        format!(
            "{}  shakespeare.txt\n",
            trainer::checkpoint::sha256_hex(&text)
        )
    );
    String::from_utf8(text[..n].to_vec()).unwrap()
}

/// A config in `dir` reading `path` (relative to `dir`) in windows of `block`, with an
/// embedding of `vocab` rows and `out` logits a position.
fn config(dir: &Path, path: &str, block: usize, vocab: usize, out: usize, extra: &str) -> PathBuf {
    let text = format!(
        r#"[run]
seed = 3

[data]
dataset = "text"
path = "{path}"
block_size = {block}
val_split = 0.1
batch_size = 8
{extra}

[model]
input = {{ shape = [{block}], dtype = "i32" }}

[[model.layers]]
name = "tok"
op = "embedding"
vocab = {vocab}
dim = 24

[[model.layers]]
name = "hidden"
op = "linear"
out = 48

[[model.layers]]
op = "gelu"

[[model.layers]]
name = "head"
op = "linear"
out = {out}

[loss]
kind = "cross_entropy"

[optimizer]
kind = "adam"
lr = 0.01

[train]
epochs = 2

[log]
every_steps = 5
"#
    );
    let p = dir.join("text.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn fit(config: &Path, run: &Path) -> Output {
    trainer(&[
        "fit",
        config.to_str().unwrap(),
        "--device",
        "cpu",
        "--run-dir",
        run.to_str().unwrap(),
    ])
}

/// The run failed as a user error whose message holds each of `want`, and left no run.
fn refused(out: &Output, run: &Path, want: &[&str]) {
    let e = stderr(out);
    assert_eq!(out.status.code(), Some(2), "{e}");
    assert!(
        !e.contains("internal error") && !e.contains("panicked"),
        "{e}"
    );
    for w in want {
        assert!(e.contains(w), "wanted {w:?} in:\n{e}");
    }
    assert!(!run.join("config.resolved.toml").exists(), "{e}");
}

#[test]
fn a_character_model_learns_a_slice_of_shakespeare() {
    let dir = tempfile::tempdir().unwrap();
    let text = shakespeare(40_000);
    std::fs::write(dir.path().join("slice.txt"), &text).unwrap();
    let vocab = Vocab::chars_of(&text);
    let v = vocab.len();
    let c = config(dir.path(), "slice.txt", 32, v, v, "");
    let run = dir.path().join("run");
    let out = fit(&c, &run);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // 36000 train tokens: 1124 windows of 32 an epoch, 140 batches of 8.
    let e = stderr(&out);
    assert!(e.contains(&format!("vocabulary {v}")), "{e}");
    let csv = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let losses: Vec<f64> = csv
        .lines()
        .skip(1)
        .filter_map(|l| l.split(',').nth(col("train/loss"))?.parse().ok())
        .collect();
    let (first, last) = (losses[0], *losses.last().unwrap());
    // Uniform guessing is ln(v) ≈ 4.1; a per-character model gets well below.
    assert!(first > 3.0 && last < 2.9, "{losses:?}");
    let val: Vec<f64> = csv
        .lines()
        .skip(1)
        .filter_map(|l| l.split(',').nth(col("val/accuracy"))?.parse().ok())
        .collect();
    assert_eq!(val.len(), 2, "{csv}");
    assert!(val[1] > 0.25, "next-character accuracy {val:?}");

    // The vocabulary in the run directory and in every checkpoint, checksummed there.
    assert_eq!(Vocab::load(&run).unwrap(), vocab);
    let ckpts: Vec<PathBuf> = std::fs::read_dir(run.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    assert!(!ckpts.is_empty());
    for ck in &ckpts {
        assert_eq!(Vocab::load(ck).unwrap(), vocab, "{}", ck.display());
        let sums = std::fs::read_to_string(ck.join("checksums.json")).unwrap();
        assert!(sums.contains("\"vocab.json\""), "{sums}");
        let loaded = trainer::checkpoint::load(ck).unwrap();
        assert_eq!(loaded.extra.len(), 1);
    }
    assert_eq!(
        vocab.decode(&vocab.encode("To be").unwrap()).unwrap(),
        "To be"
    );

    // eval scores every position of the held-out tail; there is no test split.
    let r = run.to_str().unwrap();
    let cs = c.to_str().unwrap();
    let args = ["eval", cs, "--checkpoint", r, "--device", "cpu", "--json"];
    let out = trainer(&[&args[..], &["--split", "val"]].concat());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // 4000 tail tokens: 124 windows of 32.
    assert_eq!(j["samples"], 124 * 32, "{j}");
    assert!(j["accuracy"].as_f64().unwrap() > 0.25, "{j}");
    assert_eq!(j["confusion"].as_array().unwrap().len(), v);
    let out = trainer(&args);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("no test split"), "{}", stderr(&out));

    // A resume refuses a text whose vocabulary changed under the run, even at the same size.
    let last = vocab.decode(&[v as u32 - 1]).unwrap();
    std::fs::write(dir.path().join("slice.txt"), text.replace(&last, "é")).unwrap();
    let resume = [
        "resume",
        r,
        "--device",
        "cpu",
        "--force",
        "--set",
        "train.epochs=3",
    ];
    let out = trainer(&resume);
    let e = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{e}");
    assert!(e.contains("vocab.json: the run's vocabulary"), "{e}");
    assert!(
        e.contains("the text has changed since the run started"),
        "{e}"
    );
}

/// Speed is counted in the data's unit: a text run's progress lines and `trainer bench` lines
/// (steps and `--loader`) in tokens a second, an image run's in images a second.
#[test]
fn speed_is_in_tokens_for_text_and_in_images_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let text = shakespeare(20_000);
    std::fs::write(dir.path().join("slice.txt"), &text).unwrap();
    let v = Vocab::chars_of(&text).len();
    let c = config(dir.path(), "slice.txt", 32, v, v, "");
    // Three steps of `fit` (its progress lines), one `bench` step, a `bench --loader`: each
    // names `unit` (the progress line's, then bench's) and never `other`.
    let check = |config: &str, run: &str, unit: [&str; 2], other: [&str; 2]| {
        let run = dir.path().join(run);
        let run = run.to_str().unwrap();
        let fit = ["fit", config, "--device", "cpu", "--run-dir", run];
        let out = trainer(&[&fit[..], &["--set", "train.max_steps=3"]].concat());
        let e = stderr(&out);
        assert_eq!(out.status.code(), Some(0), "{e}");
        assert!(
            e.contains(&format!(" {} eta ", unit[0])) && !e.contains(other[0]),
            "{e}"
        );
        let bench = |args: &[&str]| {
            let out = trainer(args);
            assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
            String::from_utf8(out.stdout).unwrap()
        };
        let line = format!(" {}\n", unit[1]);
        let steps = bench(&["bench", config, "--device", "cpu", "--steps", "1"]);
        assert!(
            steps.contains(&line) && !steps.contains(other[1]),
            "{steps}"
        );
        let loader = bench(&["bench", config, "--loader", "--steps", "2"]);
        assert_eq!(loader.matches(&line).count(), 2, "{loader}");
    };
    check(
        c.to_str().unwrap(),
        "text",
        ["tok/s", "tokens/s"],
        ["img/s", "images"],
    );
    let images = "tests/configs/good/vit_tiny.toml";
    check(images, "images", ["img/s", "images/s"], ["tok/s", "tokens"]);
}

#[test]
fn the_model_must_fit_the_vocabulary() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("t.txt"), "abcdefgh".repeat(40)).unwrap();
    let run = dir.path().join("run");
    let c = config(dir.path(), "t.txt", 8, 5, 8, "");
    refused(
        &fit(&c, &run),
        &run,
        &[
            "embedding `tok` has vocab = 5, but the vocabulary of the text has 8 characters",
            "text.toml:17:6",
            "set vocab = 8",
        ],
    );
    let c = config(dir.path(), "t.txt", 8, 8, 6, "");
    refused(
        &fit(&c, &run),
        &run,
        &[
            "the model output `head` gives 6 logits a position, but the vocabulary",
            "text.toml:31:6",
        ],
    );
    // The byte tokenizer has 256 ids.
    let c = config(dir.path(), "t.txt", 8, 8, 8, "tokenizer = \"byte\"");
    refused(
        &fit(&c, &run),
        &run,
        &["vocab = 8, but the vocabulary of the text has 256 byte values"],
    );
}

#[test]
fn broken_texts_are_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let run = d.join("run");
    let case = |path: &str, want: &[&str]| {
        let c = config(d, path, 8, 8, 8, "");
        refused(&fit(&c, &run), &run, want);
    };
    let mut bad = b"abcdefgh".repeat(10);
    bad[21] = 0xff;
    std::fs::write(d.join("latin1.txt"), &bad).unwrap();
    case(
        "latin1.txt",
        &[
            "latin1.txt: not UTF-8: the byte at offset 21",
            "tokenizer = \"byte\"",
        ],
    );
    std::fs::write(d.join("empty.txt"), "").unwrap();
    case("empty.txt", &["empty.txt: empty"]);
    // 30 characters: the tail's 3 cannot hold a window of 9.
    std::fs::write(d.join("short.txt"), "abcdefgh".repeat(4).get(..30).unwrap()).unwrap();
    case(
        "short.txt",
        &[
            "short.txt: the held-out tail (val_split) has 3 characters of 30, fewer than one window of block_size + 1 = 9",
        ],
    );
    std::fs::create_dir(d.join("nothing")).unwrap();
    std::fs::write(d.join("nothing/.keep"), "").unwrap();
    case("nothing", &["nothing: the folder holds no files"]);
    case("absent.txt", &["absent.txt: not found"]);
    // A folder's files are checked against its SHA256SUMS.
    std::fs::create_dir(d.join("sums")).unwrap();
    std::fs::write(d.join("sums/a.txt"), "abcdefgh".repeat(40)).unwrap();
    std::fs::write(
        d.join("sums/SHA256SUMS"),
        format!("{}  a.txt\n", "0".repeat(64)),
    )
    .unwrap();
    case("sums", &["a.txt: checksum mismatch"]);
    // Fewer windows an epoch than one batch.
    std::fs::write(d.join("ok.txt"), "abcdefgh".repeat(40)).unwrap();
    let c = config(d, "ok.txt", 8, 8, 8, "train_limit = 5");
    refused(
        &fit(&c, &run),
        &run,
        &["5 windows an epoch, fewer than one batch of 8"],
    );
}
