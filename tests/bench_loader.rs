//! `trainer bench --loader` driven as a user drives it: the data path alone (no model) on the
//! shipped Fashion-MNIST with resnet.toml's augmentation, a few batches of it.

mod common;

use common::{ok_stdout, trainer};

/// resnet.toml (random crop, flip) on the first 1000 training and 250 validation images.
const SMALL: &[&str] = &[
    "bench",
    "configs/resnet.toml",
    "--loader",
    "--set",
    "data.train_limit=1000",
    "--set",
    "data.val_limit=250",
];

fn with(extra: &[&'static str]) -> Vec<&'static str> {
    SMALL.iter().chain(extra).copied().collect()
}

/// Checks one rate's arithmetic and returns (batches, images).
fn rate(v: &serde_json::Value) -> (u64, u64) {
    let (batches, images) = (
        v["batches"].as_u64().unwrap(),
        v["images"].as_u64().unwrap(),
    );
    let seconds = v["seconds"].as_f64().unwrap();
    assert!(seconds > 0.0, "{v}");
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b.abs().max(1.0);
    assert!(
        close(v["img_per_s"].as_f64().unwrap(), images as f64 / seconds),
        "{v}"
    );
    assert!(
        close(
            v["ms_per_batch"].as_f64().unwrap(),
            seconds * 1e3 / batches as f64
        ),
        "{v}"
    );
    (batches, images)
}

#[test]
fn loader_bench_reports_the_train_and_validation_rates() {
    let args = with(&[
        "--json",
        "--steps",
        "5",
        "--batch",
        "32",
        "--set",
        "data.eval_batch_size=100",
    ]);
    let v: serde_json::Value = serde_json::from_str(&ok_stdout(&args)).expect("JSON");
    assert_eq!(
        (v["batch"].as_u64(), v["eval_batch"].as_u64()),
        (Some(32), Some(100)),
        "{v}"
    );
    assert_eq!(v["warmup"].as_u64(), Some(2), "{v}");
    assert!(v["threads"].as_u64().unwrap() >= 1, "{v}");
    assert!(v["open_s"].as_f64().unwrap() > 0.0, "{v}");
    let data = v["data"].as_str().unwrap();
    assert!(
        data.contains("fashion-mnist") && data.contains("1000 train / 250 validation"),
        "{data}"
    );
    assert_eq!(rate(&v["train"]), (5, 5 * 32));
    // The validation pass is whole: 250 images in batches of 100, the last one padded.
    assert_eq!(rate(&v["validation"]), (3, 250));

    // Without --steps the train loader is timed over one epoch: 1000 / 128 = 7 full batches.
    let v: serde_json::Value = serde_json::from_str(&ok_stdout(&with(&["--json"]))).unwrap();
    assert_eq!(rate(&v["train"]), (7, 7 * 128));
    assert_eq!(rate(&v["validation"]), (2, 250));
}

#[test]
fn loader_bench_text_and_refusals() {
    let text = ok_stdout(&with(&["--steps", "3"]));
    assert!(
        text.starts_with("configs/resnet.toml: data path alone, "),
        "{text}"
    );
    assert!(
        text.contains("train (after 2 warm-up batches): 3 batches of 128 in "),
        "{text}"
    );
    assert!(
        text.contains("validation pass: 2 batches of 128 in "),
        "{text}"
    );
    assert_eq!(text.matches(" images/s\n").count(), 2, "{text}");

    // --loader runs no model: a backend or kernel timing makes no sense with it.
    for extra in [["--profile"], ["--device=gpu"]] {
        let out = trainer(&with(&extra));
        assert_eq!(out.status.code(), Some(2), "{extra:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("cannot be used with"), "{err}");
    }
    // A dataset that is not there is named, with what to set, and no panic.
    let out = trainer(&["bench", "configs/resnet18.toml", "--loader"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("error: ") && err.contains("data.path"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}
