//! The key/value cache of `trainer generate` (nn/decode.rs, train/decode.rs): for the model of
//! tests/configs/good/gpt_tiny.toml trained a few steps through the binary (on text of its 11
//! symbols: a sequence model needs a label per position, which synthetic data lacks), the decode-step
//! model's logits at every position equal the full-window evaluation model's at that position,
//! on the CPU and on the GPU backend, through two context shifts (past block_size the cache is
//! refilled from the last block_size/2 tokens, and the full model sees that shifted window).

use std::path::Path;
use std::process::Command;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use trainer::backend::gpu::{Gpu, test_gpu};
use trainer::config::Config;
use trainer::train::decode::DecodeModel;
use trainer::train::evaluate::EvalModel;
use trainer::train::generate::{Cached, relative_error, window_logits};
use trainer::train::inference::weights_for;

const CONFIG: &str = "tests/configs/good/gpt_tiny.toml";

/// gpt_tiny's model on text: a run directory with its config (`gpt.toml`), the text, and the
/// run (`run/`) trained 30 steps on the CPU.
fn trained() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let tiny = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(CONFIG)).unwrap();
    let data = "[data]\ndataset = \"synthetic\"\nclasses = 11\nbatch_size = 4\n";
    assert!(tiny.contains(data));
    let text_data = "[data]\ndataset = \"text\"\npath = \"corpus.txt\"\nblock_size = 8\nval_split = 0.1\nbatch_size = 4\n";
    std::fs::write(dir.path().join("gpt.toml"), tiny.replace(data, text_data)).unwrap();
    // 11 symbols in a pattern the model can start to learn.
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let symbols: Vec<char> = "abcdefghij\n".chars().collect();
    let corpus: String = (0..4000)
        .map(|i| symbols[(i * 3 + rng.random_range(0..2)) % 11])
        .collect();
    std::fs::write(dir.path().join("corpus.txt"), corpus).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(["fit", "gpt.toml", "--device", "cpu", "--run-dir", "run"])
        .args(["--set", "train.max_steps=30", "--set", "train.epochs=100"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

fn config(dir: &Path) -> Config {
    let loaded = trainer::config::load(&dir.join("gpt.toml"), &[]);
    loaded
        .result
        .unwrap_or_else(|e| panic!("{}", e.render(&loaded.sources)))
}

/// Feeds a random sequence of 3·block_size + 3 tokens to the cache one token at a time and
/// compares each position's logits with the full model's on the window the cache holds.
/// Returns the worst relative error and the context shifts.
fn compare(cfg: &Config, gpu: Option<&Gpu>, run: &Path) -> (f64, usize) {
    let mut full = EvalModel::new(cfg, gpu, 1).unwrap();
    let (weights, _) = weights_for(full.params(), run).unwrap();
    full.load(&weights).unwrap();
    let mut decode = DecodeModel::new(cfg, gpu).unwrap();
    decode.load(&weights).unwrap();
    let positions = decode.positions;
    assert_eq!(positions, 8);
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let tokens: Vec<u32> = (0..3 * positions + 3)
        .map(|_| rng.random_range(0..decode.classes as u32))
        .collect();
    // The first context is 3 tokens (a prompt), then one more each time.
    let mut cache = Cached::new(decode, 3);
    let mut worst: f64 = 0.0;
    let mut starts = Vec::new();
    for len in 3..=tokens.len() {
        let context = &tokens[..len];
        let got = cache.next(context).unwrap();
        let window = &context[cache.start()..];
        assert!(window.len() <= positions);
        let want = window_logits(&mut full, window, positions).unwrap();
        let e = relative_error(&got, &want);
        assert!(
            e < 1e-4,
            "{}: position {} of the window from token {}: relative error {e:e}\n{got:?}\n{want:?}",
            full.device(),
            window.len() - 1,
            cache.start()
        );
        worst = worst.max(e);
        starts.push(cache.start());
    }
    // Windows from token 0 up to 8 tokens, then shifted to the last 4 each time they fill.
    assert_eq!(&starts[..6], &[0; 6]);
    assert_eq!(starts[6], 5);
    assert_eq!(starts.last(), Some(&20));
    (worst, cache.shifts)
}

#[test]
fn cached_logits_equal_the_full_window_at_every_position() {
    let dir = trained();
    let run = dir.path().join("run");
    let cfg = config(dir.path());
    let (worst, shifts) = compare(&cfg, None, &run);
    eprintln!("cpu: worst relative error {worst:e}, {shifts} context shifts");
    assert_eq!(shifts, 4);
    if let Some(gpu) = test_gpu() {
        let (worst, shifts) = compare(&cfg, Some(gpu), &run);
        eprintln!("gpu: worst relative error {worst:e}, {shifts} context shifts");
        assert_eq!(shifts, 4);
    }
}

/// The cache is not a no-op: a decode step that ignored the cached positions (the new
/// position's own key and value only) would give other logits, which the comparison catches.
#[test]
fn the_cache_changes_the_logits() {
    let dir = trained();
    let run = dir.path().join("run");
    let cfg = config(dir.path());
    let mut full = EvalModel::new(&cfg, None, 1).unwrap();
    let (weights, _) = weights_for(full.params(), &run).unwrap();
    full.load(&weights).unwrap();
    let mut decode = DecodeModel::new(&cfg, None).unwrap();
    decode.load(&weights).unwrap();
    // Positions 0..3 pushed, then position 3 again with another history: the same token at
    // the same position gives other logits when the cached keys differ.
    let tokens = [1u32, 2, 3, 4];
    for (i, &t) in tokens.iter().enumerate() {
        decode.push(t, i).unwrap();
    }
    let a = decode.logits().unwrap();
    for (i, &t) in [5u32, 6, 7, 4].iter().enumerate() {
        decode.push(t, i).unwrap();
    }
    let b = decode.logits().unwrap();
    assert!(relative_error(&a, &b) > 1e-3, "{a:?} {b:?}");
    let want = window_logits(&mut full, &[5, 6, 7, 4], 8).unwrap();
    assert!(relative_error(&b, &want) < 1e-4);
}
