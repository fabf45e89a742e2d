//! A tiny GPT (nanoGPT's design, the blocks of configs/gpt.toml at 2 layers, width 32, block 32)
//! trained through the binary on a slice of the shipped Shakespeare, on the CPU and on the GPU
//! backend (lavapipe in CI): the loss falls well below uniform guessing on both, the two runs'
//! validation losses agree, and each checkpoint holds the tied output projection under both of
//! PyTorch's names; `trainer generate` continues a prompt, the same text for the same seed, and
//! its key/value cache gives the whole window's greedy text while the context fits block_size.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Output};

use trainer::data::Vocab;

fn trainer(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run trainer")
}

/// The first `n` characters of the shipped corpus.
fn shakespeare(n: usize) -> String {
    let gz = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("datasets/shakespeare/shakespeare.txt.gz"),
    )
    .unwrap();
    let mut text = Vec::new();
    flate2::read::GzDecoder::new(gz.as_slice())
        .read_to_end(&mut text)
        .unwrap();
    String::from_utf8(text[..n].to_vec()).unwrap()
}

/// configs/gpt.toml's model at 2 layers, 2 heads, width 32, block 32, `vocab` characters.
fn config(vocab: usize, steps: usize) -> String {
    format!(
        r#"[run]
seed = 5

[data]
dataset = "text"
path = "slice.txt"
block_size = 32
val_split = 0.1
val_limit = 64
batch_size = 16

[model]
input = {{ shape = [32], dtype = "i32" }}

[model.blocks.attn]
body = [
  {{ name = "c_attn", op = "linear", out = 96, init_std = 0.02 }},
  {{ op = "attention", heads = 2, dropout = 0.1 }},
  {{ name = "c_proj", op = "linear", out = 32, init_std = 0.01 }},
  {{ op = "dropout", p = 0.1 }},
]

[model.blocks.mlp]
body = [
  {{ name = "c_fc", op = "linear", out = 128, init_std = 0.02 }},
  {{ op = "gelu" }},
  {{ name = "c_proj", op = "linear", out = 32, init_std = 0.01 }},
]

[model.blocks.block]
body = [
  {{ name = "ln_1", op = "layernorm" }},
  {{ name = "attn", block = "attn" }},
  {{ name = "x1", op = "add", inputs = ["input", "attn"] }},
  {{ name = "ln_2", op = "layernorm" }},
  {{ name = "mlp", block = "mlp" }},
  {{ name = "x2", op = "add", inputs = ["x1", "mlp"] }},
]

[[model.layers]]
name = "transformer.wte"
op = "embedding"
vocab = {vocab}
dim = 32
init_std = 0.02

[[model.layers]]
name = "transformer.wpe"
op = "positional"
init_std = 0.02

[[model.layers]]
name = "transformer.h"
block = "block"
repeat = 2

[[model.layers]]
name = "transformer.ln_f"
op = "layernorm"

[[model.layers]]
name = "lm_head"
op = "linear"
out = {vocab}
bias = false
tie = "transformer.wte"

[loss]
kind = "cross_entropy"

[optimizer]
kind = "adamw"
lr = 3e-3
betas = [0.9, 0.99]
weight_decay = 0.1
decay = "matrices"
clip_grad_norm = 1.0

[schedule]
kind = "cosine"
warmup_steps = 20
min_lr = 3e-4

[train]
epochs = 100
max_steps = {steps}
save_every = "1 epoch"

[log]
every_steps = 10
"#
    )
}

/// A finished run: its directory (alive while this is), config, and the (train, val) losses
/// metrics.csv logged.
struct Run {
    dir: tempfile::TempDir,
    train: Vec<f64>,
    val: Vec<f64>,
}

impl Run {
    fn config(&self) -> String {
        self.dir.path().join("gpt.toml").to_str().unwrap().into()
    }
    fn run(&self) -> String {
        self.dir.path().join("run").to_str().unwrap().into()
    }
}

/// Trains on `device` for `steps`.
fn train(device: &str, steps: usize) -> Run {
    train_with(device, steps, &[])
}

/// `train` with more arguments (`--set`s).
fn train_with(device: &str, steps: usize, extra: &[&str]) -> Run {
    train_edited(device, steps, |c| c, extra)
}

/// `train_with` of the config as `edit` rewrites it.
fn train_edited(
    device: &str,
    steps: usize,
    edit: impl Fn(String) -> String,
    extra: &[&str],
) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let text = shakespeare(60_000);
    std::fs::write(dir.path().join("slice.txt"), &text).unwrap();
    let vocab = Vocab::chars_of(&text);
    let cfg = dir.path().join("gpt.toml");
    std::fs::write(&cfg, edit(config(vocab.len(), steps))).unwrap();
    let run = dir.path().join("run");
    let args = [
        "fit",
        cfg.to_str().unwrap(),
        "--device",
        device,
        "--run-dir",
        run.to_str().unwrap(),
    ];
    let out = trainer(&[&args[..], extra].concat());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let csv = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    let column = |name: &str| -> Vec<f64> {
        let c = header.iter().position(|h| *h == name).unwrap();
        csv.lines()
            .skip(1)
            .filter_map(|l| l.split(',').nth(c)?.parse().ok())
            .collect()
    };
    // The tied weight under both names, the same values.
    let latest = run.join("checkpoints/latest");
    let name = std::fs::read_to_string(&latest)
        .map(|s| run.join("checkpoints").join(s.trim()))
        .unwrap_or(latest);
    let ckpt = trainer::checkpoint::load(&name).unwrap();
    let get = |n: &str| {
        ckpt.weights
            .iter()
            .find(|t| t.name == n)
            .unwrap()
            .data
            .clone()
    };
    assert_eq!(get("lm_head.weight"), get("transformer.wte.weight"));
    let (train, val) = (column("train/loss"), column("val/loss"));
    Run { dir, train, val }
}

fn learns(device: &str, steps: usize) -> Run {
    let r = train(device, steps);
    let (train, val) = (&r.train, &r.val);
    eprintln!("{device}: train {train:?}, val {val:?}");
    let ln_vocab = (shakespeare(60_000)
        .chars()
        .collect::<std::collections::BTreeSet<_>>()
        .len() as f64)
        .ln();
    // The first logged loss is near uniform guessing; the end well below it.
    assert!(train[0] > ln_vocab - 1.0, "{train:?}");
    let last = *val.last().unwrap();
    assert!(last < ln_vocab - 1.3, "val {val:?}, ln(vocab) {ln_vocab}");
    r
}

/// `trainer generate`'s text on `device` from `r`'s run.
fn generate(r: &Run, device: &str, prompt: &str, extra: &[&str]) -> Output {
    let (cfg, run) = (r.config(), r.run());
    let args = [
        "generate",
        &cfg,
        "--checkpoint",
        &run,
        "--prompt",
        prompt,
        "--device",
        device,
    ];
    trainer(&[&args[..], extra].concat())
}

fn text(out: &Output) -> String {
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

#[test]
fn a_tiny_gpt_learns_shakespeare_on_the_cpu() {
    let r = learns("cpu", 300);
    // generate: the prompt, then 80 characters; the same seed the same text, another seed
    // another; greedy sampling repeats itself too.
    let tokens = ["--tokens", "80", "--seed", "7"];
    let a = text(&generate(&r, "cpu", "KING", &tokens));
    assert!(a.starts_with("KING"), "{a}");
    assert_eq!(a.chars().count(), 4 + 80 + 1, "{a:?}");
    assert_eq!(a, text(&generate(&r, "cpu", "KING", &tokens)));
    let other = ["--tokens", "80", "--seed", "8"];
    assert_ne!(a, text(&generate(&r, "cpu", "KING", &other)));
    let greedy = ["--tokens", "30", "--temperature", "0", "--top-k", "3"];
    let g = text(&generate(&r, "cpu", "KING", &greedy));
    assert_eq!(g, text(&generate(&r, "cpu", "KING", &greedy)));
    cache_and_window_agree(&r, "cpu");
    // A prompt character the vocabulary lacks is a clear error.
    let out = generate(&r, "cpu", "KING \u{263a}", &tokens);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains('\u{263a}') && !err.contains("panicked"),
        "{err}"
    );
}

#[test]
fn a_tiny_gpt_learns_shakespeare_on_the_gpu() {
    if trainer::backend::gpu::test_gpu().is_none() {
        return;
    }
    let gpu = learns("gpu", 300);
    // The same run as the CPU's, up to f32 rounding in different orders.
    let cpu = learns("cpu", 300);
    for (g, c) in gpu.val.iter().zip(&cpu.val) {
        assert!((g - c).abs() < 1e-3, "gpu {:?}, cpu {:?}", gpu.val, cpu.val);
    }
    let tokens = ["--tokens", "40"];
    let a = text(&generate(&gpu, "gpu", "KING", &tokens));
    assert_eq!(a.chars().count(), 4 + 40 + 1, "{a:?}");
    assert_eq!(a, text(&generate(&gpu, "gpu", "KING", &tokens)));
    cache_and_window_agree(&gpu, "gpu");
}

/// `generate` with the key/value cache (the default) and with the whole window per token
/// (`--no-cache`) on `device`: the same greedy text (`--top-k 1`) while the context fits
/// block_size (32: the prompt's 4 characters and 28 more); past it the cache shifts its context
/// and the run goes on; the same seed gives the same text, with and without the cache.
fn cache_and_window_agree(r: &Run, device: &str) {
    let json = |out: &Output| -> serde_json::Value { serde_json::from_str(&text(out)).unwrap() };
    let fits = ["--tokens", "28", "--top-k", "1", "--json"];
    let cached = json(&generate(r, device, "KING", &fits));
    let window = json(&generate(
        r,
        device,
        "KING",
        &[&fits[..], &["--no-cache"]].concat(),
    ));
    assert_eq!(cached["cached"], true, "{cached}");
    assert_eq!(window["cached"], false, "{window}");
    assert_eq!(cached["text"], window["text"], "{cached}\n{window}");
    assert_eq!(cached["text"].as_str().unwrap().chars().count(), 28);
    assert_eq!(cached["context_shifts"], 0);
    let long = ["--tokens", "100", "--seed", "3", "--json"];
    let a = json(&generate(r, device, "KING", &long));
    assert_eq!(a["text"].as_str().unwrap().chars().count(), 100, "{a}");
    // Contexts up to 103 characters in windows of 32, refilled from the last 16 at 33, 50, 67,
    // 84 and 101.
    assert_eq!(a["context_shifts"], 5, "{a}");
    assert_eq!(a["text"], json(&generate(r, device, "KING", &long))["text"]);
    let uncached = [&long[..], &["--no-cache"]].concat();
    let b = json(&generate(r, device, "KING", &uncached));
    assert_eq!(
        b["text"],
        json(&generate(r, device, "KING", &uncached))["text"]
    );
}

/// `trainer plan` of configs/gpt.toml: attention keeps O(T) memory per head (the rows'
/// log-sum-exp, [batch, heads, T]), never the T × T weights, so the step's activation peak grows
/// linearly with the context: 4× the context, at most 4.2× the peak (a stored T × T matrix per
/// layer would add 1.6 GB a layer at T = 1024).
#[test]
fn the_plan_keeps_attention_memory_linear_in_the_context() {
    let plan = |t: usize, more: &[&str]| -> (u64, String) {
        let sets = [
            "--set".to_string(),
            format!("data.block_size={t}"),
            "--set".to_string(),
            format!("model.input.shape=[{t}]"),
        ];
        let args: Vec<&str> = ["plan", "configs/gpt.toml"]
            .into_iter()
            .chain(sets.iter().map(String::as_str))
            .chain(more.iter().copied())
            .collect();
        let json = text(&trainer(&[&args[..], &["--json"]].concat()));
        let j: serde_json::Value = serde_json::from_str(&json).unwrap();
        let launches = text(&trainer(&[&args[..], &["--launches"]].concat()));
        (j["bytes"]["activations_peak"].as_u64().unwrap(), launches)
    };
    let (small, _) = plan(256, &[]);
    let (large, launches) = plan(1024, &[]);
    let ratio = large as f64 / small as f64;
    assert!((3.8..4.2).contains(&ratio), "{small} -> {large}: {ratio}");
    // The decomposition keeps each layer's T × T weights: its peak grows past 6× (about 8×).
    let unfused = ["--set", "model.blocks.attn.body.1.fused=false"];
    let ((small, _), (large, _)) = (plan(256, &unfused), plan(1024, &unfused));
    assert!(large > 6 * small, "decomposed: {small} -> {large}");
    let attention: Vec<&str> = launches
        .lines()
        .filter(|l| l.contains(" attention "))
        .collect();
    assert_eq!(attention.len(), 6, "{launches}");
    for l in attention {
        assert!(
            l.contains("-> f32[64,1024,384]@") && l.contains(" f32[64,6,1024]@"),
            "{l}"
        );
    }
}

/// The fusion pass changes no bit of a transformer's training (matmul epilogues, elementwise
/// chains, the multi-tensor AdamW) on the GPU backend: the weights after 20 steps, fused and
/// unfused, are the same bytes.
#[test]
fn fusion_changes_no_bits_of_the_tiny_gpt() {
    if trainer::backend::gpu::test_gpu().is_none() {
        return;
    }
    let model = |r: &Run| {
        let latest = std::fs::read_to_string(Path::new(&r.run()).join("checkpoints/latest"));
        let dir = Path::new(&r.run())
            .join("checkpoints")
            .join(latest.unwrap().trim());
        std::fs::read(dir.join("model.safetensors")).unwrap()
    };
    let fused = train_with("gpu", 20, &[]);
    let unfused = train_with("gpu", 20, &["--set", "run.fusion=false"]);
    assert!(model(&fused) == model(&unfused), "fused weights differ");
    let plan = |sets: &[&str]| text(&trainer(&[&["plan", &fused.config()][..], sets].concat()));
    assert!(plan(&[]).contains("before fusion"));
}

/// `fused = false` lowers attention to separate launches (split, batched q·kᵀ, causal mask,
/// softmax, dropout with the fused op's mask, ·v): the same function, so training with it
/// follows the fused kernels' losses to rounding, on the CPU and on the GPU.
#[test]
fn decomposed_attention_trains_like_the_fused_op() {
    let mut devices = vec!["cpu"];
    if trainer::backend::gpu::test_gpu().is_some() {
        devices.push("gpu");
    }
    let decompose = |c: String| {
        let fused = "heads = 2, dropout = 0.1 }";
        assert!(c.contains(fused));
        c.replace(fused, "heads = 2, dropout = 0.1, fused = false }")
    };
    for device in devices {
        let fused = train_with(device, 20, &["--set", "log.every_steps=5"]);
        let split = train_edited(device, 20, decompose, &["--set", "log.every_steps=5"]);
        assert!(fused.train.len() >= 4, "{:?}", fused.train);
        assert_eq!(fused.train.len(), split.train.len());
        for (a, b) in fused
            .train
            .iter()
            .chain(&fused.val)
            .zip(split.train.iter().chain(&split.val))
        {
            assert!(
                (a - b).abs() < 1e-4 * a.abs(),
                "{device}: fused {:?} {:?}, decomposed {:?} {:?}",
                fused.train,
                fused.val,
                split.train,
                split.val
            );
        }
    }
}

/// Heads wider than the fused kernels take (128) lower to the decomposed launches, so such a
/// model plans and trains on every backend; narrower ones keep the fused op.
#[test]
fn wide_heads_fall_back_to_the_decomposition() {
    let dir = tempfile::tempdir().unwrap();
    let launches = |head: usize| {
        let cfg = dir.path().join(format!("wide{head}.toml"));
        let c = 2 * head;
        std::fs::write(
            &cfg,
            format!(
                r#"[data]
dataset = "synthetic"
classes = 5
batch_size = 2

[model]
input = {{ shape = [6], dtype = "i32" }}

[[model.layers]]
op = "embedding"
vocab = 5
dim = {c}

[[model.layers]]
op = "linear"
out = {qkv}

[[model.layers]]
op = "attention"
heads = 2

[[model.layers]]
op = "linear"
out = 5

[loss]
kind = "cross_entropy"

[optimizer]
kind = "adamw"
lr = 0.001
"#,
                qkv = 3 * c
            ),
        )
        .unwrap();
        text(&trainer(&["plan", cfg.to_str().unwrap(), "--launches"]))
    };
    let wide = launches(136);
    assert!(!wide.contains(" attention "), "{wide}");
    assert!(
        wide.contains(" batch_matmul ") && wide.contains(" causal_fill "),
        "{wide}"
    );
    let narrow = launches(128);
    assert!(
        narrow.contains(" attention ") && !narrow.contains(" batch_matmul "),
        "{narrow}"
    );
}

/// A loss over every position needs a label at every position: `fit` on one-label-a-sample
/// data says so at the loss, before any run directory exists (not a shape error mid-step).
#[test]
fn a_sequence_loss_on_one_label_a_sample_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let out = trainer(&[
        "fit",
        "tests/configs/good/gpt_tiny.toml",
        "--device",
        "cpu",
        "--run-dir",
        run.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("the loss takes 8 labels a sample ([8])"),
        "{err}"
    );
    assert!(err.contains("gpt_tiny.toml:"), "{err}");
    assert!(err.contains("dataset = \"text\""), "{err}");
    assert!(!run.exists());
}
