//! Tests of `open`: path resolution, shape checks, val_split and limits, over generated
//! fixtures of each format.

use super::*;
use crate::config::sections::{Augment, Normalize};
use crate::config::values::{Count, Finite, Fraction, Positive, PositiveFloat};

pub(crate) fn cfg(dataset: Dataset, path: Option<&Path>) -> Data {
    Data {
        dataset,
        path: path.map(|p| p.display().to_string()),
        batch_size: Positive(4),
        eval_batch_size: None,
        train_limit: None,
        val_limit: None,
        val_split: Fraction(0.0),
        shuffle: true,
        augment: vec![],
        normalize: None,
        classes: None,
        samples: None,
        tokenizer: None,
        block_size: None,
    }
}

fn mnist_dir(n_train: u32, n_test: u32) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    idx::tests::write_split(dir.path(), "train", n_train, 28, 28, true);
    idx::tests::write_split(dir.path(), "t10k", n_test, 28, 28, false);
    dir
}

#[test]
fn mnist_from_a_relative_path() {
    let dir = mnist_dir(30, 7);
    let sub = dir.path().join("configs");
    std::fs::create_dir(&sub).unwrap();
    // data.path relative to the config's directory.
    let c = cfg(Dataset::Mnist, Some(Path::new("..")));
    let s = open(&c, &sub, &[1, 28, 28], 0).unwrap();
    assert_eq!((s.train.len(), s.val.len(), s.test.len()), (30, 7, 7));
    assert_eq!(s.train.classes(), 10);
    assert_eq!(s.train.class_names()[3], "3");
    assert_eq!(s.train.sample_shape(), &[1, 28, 28]);
    assert_eq!(s.train.label(13), 3);
    assert_eq!(s.train.sample(2)[28 + 1], 4.0 / 255.0); // image 2, row 1, col 1: 2 + 1 + 1
    assert!(s.source.starts_with("mnist at "), "{}", s.source);
    assert!(s.source.ends_with("(30 train, 7 test)"), "{}", s.source);
}

#[test]
fn mnist_without_path_and_shape_mismatch_are_errors() {
    let e = open(&cfg(Dataset::Mnist, None), Path::new("."), &[1, 28, 28], 0).unwrap_err();
    assert!(e.to_string().contains("needs data.path"), "{e}");
    let dir = mnist_dir(3, 3);
    let e = open(
        &cfg(Dataset::Idx, Some(dir.path())),
        Path::new("/"),
        &[3, 32, 32],
        0,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("the model input [3, 32, 32] does not match the samples of idx at"),
        "{e}"
    );
    assert!(e.contains("[1, 28, 28]"), "{e}");
}

#[test]
fn val_split_is_seeded_disjoint_and_keeps_file_order() {
    let dir = mnist_dir(40, 5);
    let mut c = cfg(Dataset::Mnist, Some(dir.path()));
    c.val_split = Fraction(0.25);
    let a = open(&c, Path::new("/"), &[1, 28, 28], 1).unwrap();
    assert_eq!((a.train.len(), a.val.len(), a.test.len()), (30, 10, 5));
    // Pixel [0] of image i is i, so it identifies the sample.
    let ids = |s: &Split| {
        (0..s.len())
            .map(|i| (s.sample(i)[0] * 255.0).round() as usize)
            .collect::<Vec<_>>()
    };
    let (t, v) = (ids(&a.train), ids(&a.val));
    assert!(t.windows(2).all(|w| w[0] < w[1]) && v.windows(2).all(|w| w[0] < w[1]));
    let mut all: Vec<_> = t.iter().chain(&v).copied().collect();
    all.sort_unstable();
    assert_eq!(all, (0..40).collect::<Vec<_>>());
    let again = open(&c, Path::new("/"), &[1, 28, 28], 1).unwrap();
    assert_eq!(ids(&again.val), v);
    let other = open(&c, Path::new("/"), &[1, 28, 28], 2).unwrap();
    assert_ne!(ids(&other.val), v);
    assert!(
        a.source.contains("using 30 train / 10 validation"),
        "{}",
        a.source
    );
}

#[test]
fn limits_take_the_first_samples() {
    let dir = mnist_dir(40, 9);
    let mut c = cfg(Dataset::Mnist, Some(dir.path()));
    c.train_limit = Some(Positive(12));
    c.val_limit = Some(Positive(4));
    let s = open(&c, Path::new("/"), &[1, 28, 28], 0).unwrap();
    assert_eq!((s.train.len(), s.val.len(), s.test.len()), (12, 4, 9));
    assert_eq!(s.train.label(11), 1);
    c.train_limit = Some(Positive(1000));
    assert_eq!(
        open(&c, Path::new("/"), &[1, 28, 28], 0)
            .unwrap()
            .train
            .len(),
        40
    );
}

#[test]
fn val_split_that_leaves_nothing_is_an_error() {
    let dir = mnist_dir(3, 3);
    let mut c = cfg(Dataset::Mnist, Some(dir.path()));
    c.val_split = Fraction(0.1);
    let e = open(&c, Path::new("/"), &[1, 28, 28], 0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("holds out 0"), "{e}");
}

#[test]
fn cifar10_opens_and_checks_the_shape() {
    let dir = tempfile::tempdir().unwrap();
    cifar::tests::write_dir(dir.path(), Cifar::Ten, 2);
    let c = cfg(Dataset::Cifar10, Some(dir.path()));
    let s = open(&c, Path::new("/"), &[3, 32, 32], 0).unwrap();
    assert_eq!((s.train.len(), s.test.len()), (10, 2));
    assert_eq!(s.train.class_names()[0], "airplane");
    assert!(open(&c, Path::new("/"), &[1, 32, 32], 0).is_err());
}

#[test]
fn image_folder_without_test_needs_val_split() {
    let dir = tempfile::tempdir().unwrap();
    for (i, class) in ["b", "a"].iter().enumerate() {
        for j in 0..5 {
            folder::tests::png(
                &dir.path().join(format!("{class}/{j}.png")),
                4,
                4,
                (i * 10 + j) as u8,
            );
        }
    }
    let mut c = cfg(Dataset::ImageFolder, Some(dir.path()));
    let e = open(&c, Path::new("/"), &[3, 4, 4], 0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no test split"), "{e}");
    c.val_split = Fraction(0.2);
    let s = open(&c, Path::new("/"), &[3, 4, 4], 0).unwrap();
    assert_eq!((s.train.len(), s.val.len(), s.test.len()), (8, 2, 0));
    assert_eq!(s.train.class_names(), vec!["a", "b"]);
}

#[test]
fn synthetic_uses_samples_and_classes() {
    let mut c = cfg(Dataset::Synthetic, None);
    c.samples = Some(Positive(100));
    c.classes = Some(Positive(3));
    let s = open(&c, Path::new("."), &[2, 5], 4).unwrap();
    assert_eq!((s.train.len(), s.val.len(), s.test.len()), (100, 25, 25));
    assert_eq!(s.train.classes(), 3);
    assert_eq!(s.train.sample_shape(), &[2, 5]);
    let d = open(&cfg(Dataset::Synthetic, None), Path::new("."), &[4], 4).unwrap();
    assert_eq!((d.train.len(), d.train.classes()), (1024, 10));
}

#[test]
fn read_inputs_takes_idx_and_png_and_normalises() {
    let dir = mnist_dir(3, 1);
    let png = dir.path().join("x.png");
    image::GrayImage::from_pixel(28, 28, image::Luma([51]))
        .save(&png)
        .unwrap();
    let mut c = cfg(Dataset::Mnist, None);
    c.augment = vec![Augment::RandomCrop {
        size: Positive(28),
        padding: Count(4),
    }];
    c.normalize = Some(Normalize {
        mean: vec![Finite(0.2)],
        std: vec![PositiveFloat(0.5)],
    });
    let paths = [dir.path().join("train-images-idx3-ubyte.gz"), png.clone()];
    let got = read_inputs(&paths, &c, &[1, 28, 28]).unwrap();
    assert_eq!(got.len(), 4);
    assert!(
        got[2].0.ends_with("train-images-idx3-ubyte.gz[2]"),
        "{}",
        got[2].0
    );
    assert_eq!(got[2].1[0], (2.0 / 255.0 - 0.2) / 0.5);
    assert_eq!(got[3].0, png.display().to_string());
    assert!(got[3].1.iter().all(|&v| v == (51.0 / 255.0 - 0.2) / 0.5)); // no crop at eval
    let e = read_inputs(&paths, &c, &[1, 14, 14])
        .unwrap_err()
        .to_string();
    assert!(e.contains("[1, 14, 14]"), "{e}");
    let e = read_inputs(&[dir.path().join("nope.png")], &c, &[1, 28, 28])
        .unwrap_err()
        .to_string();
    assert!(e.contains("nope.png: not found"), "{e}");
}

#[test]
fn open_checks_normalize_and_augment_before_training() {
    let dir = mnist_dir(8, 2);
    let mut c = cfg(Dataset::Mnist, Some(dir.path()));
    c.normalize = Some(Normalize {
        mean: vec![Finite(0.5); 3],
        std: vec![PositiveFloat(0.5); 3],
    });
    let e = open(&c, Path::new("/"), &[1, 28, 28], 0)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("have 1, normalize has 3 means and 3 stds"),
        "{e}"
    );
    c.normalize = None;
    c.augment = vec![Augment::RandomCrop {
        size: Positive(24),
        padding: Count(0),
    }];
    let e = open(&c, Path::new("/"), &[1, 28, 28], 0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("random_crop size 24 must equal"), "{e}");
}

#[test]
fn arbitrary_bytes_give_errors_not_panics() {
    use rand::RngCore;
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rng_for(0, Purpose::Augment, 99, 0);
    for len in [0usize, 1, 3, 4, 7, 8, 15, 16, 17, 40, 3073, 6146, 9000] {
        for lead in [
            [0u8, 0, 8, 3],
            [0, 0, 8, 1],
            [0x1f, 0x8b, 8, 0],
            [9, 9, 9, 9],
        ] {
            let mut b = vec![0u8; len];
            rng.fill_bytes(&mut b);
            for (d, s) in b.iter_mut().zip(lead) {
                *d = s;
            }
            let p = dir.path().join("f");
            std::fs::write(&p, &b).unwrap();
            if let Ok(bytes) = idx::read_maybe_gz(&p) {
                let _ = idx::parse(&p, bytes.clone(), idx::IMAGES_MAGIC, "IDX images");
                let _ = idx::parse(&p, bytes, idx::LABELS_MAGIC, "IDX labels");
            }
            let _ = Cifar::Ten.parse(&p, &b);
            let _ = Cifar::Hundred.parse(&p, &b);
            let _ = folder::decode_bytes(&p, &b, 3, 2, 2);
            let _ = read_inputs(
                std::slice::from_ref(&p),
                &cfg(Dataset::Mnist, None),
                &[1, 2, 2],
            );
        }
    }
}

/// A text of `n` characters cycling through 7 letters, opened with windows of `block`.
fn text_splits(n: usize, block: usize, shuffle: bool) -> (Splits, Data, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let text: String = (0..n).map(|i| (b'a' + (i * 3 % 7) as u8) as char).collect();
    std::fs::write(dir.path().join("t.txt"), text).unwrap();
    let mut c = cfg(Dataset::Text, Some(&dir.path().join("t.txt")));
    c.block_size = Some(Positive(block));
    c.val_split = Fraction(0.2);
    c.shuffle = shuffle;
    let s = open(&c, Path::new("/"), &[block], 9).unwrap();
    (s, c, dir)
}

#[test]
fn text_batches_are_next_token_windows_of_the_training_part() {
    let (s, c, _dir) = text_splits(500, 8, true);
    assert_eq!(s.vocab.as_ref().unwrap().len(), 7);
    // 400 train tokens: 392 windows, 49 side by side; 100 in the tail: 12 windows.
    assert_eq!(
        (s.train.len(), s.train.per_epoch(), s.val.len()),
        (392, 49, 12)
    );
    assert!(s.test.is_empty());
    assert!(s.source.contains("vocabulary 7"), "{}", s.source);
    let mut l = Loader::train(s.train.clone(), &c, 4, 9, 0, 0).unwrap();
    let b = l.next().unwrap().unwrap();
    assert_eq!(
        (b.features.len(), b.labels.len(), b.labels_per_sample),
        (32, 32, 8)
    );
    // The text cycles with period 7 (id k follows id (k + 3) mod 7 in letter order): each
    // label is the id that follows its position's input.
    let next = |id: f32| ((id as usize + 3) % 7) as f32;
    for r in 0..4 {
        let (x, y) = (&b.features[r * 8..r * 8 + 8], &b.labels[r * 8..r * 8 + 8]);
        for t in 0..8 {
            assert_eq!(y[t], next(x[t]), "row {r} position {t}");
        }
        // Within a window, the labels are the inputs shifted by one.
        assert_eq!(x[1..], y[..7]);
    }
    // 12 batches an epoch of 4 windows; a resumed loader continues bit for bit.
    let mut full = Loader::train(s.train.clone(), &c, 4, 9, 0, 0).unwrap();
    let all: Vec<Batch> = (0..30).map(|_| full.next().unwrap().unwrap()).collect();
    assert_eq!((all[12].epoch, all[12].index), (1, 0));
    assert_ne!(all[0].features, all[12].features);
    let mut resumed = Loader::train(s.train.clone(), &c, 4, 9, 1, 5).unwrap();
    for want in &all[17..] {
        assert_eq!(&resumed.next().unwrap().unwrap(), want);
    }
}

#[test]
fn text_validation_is_the_tail_side_by_side() {
    let (s, c, _dir) = text_splits(500, 8, false);
    let mut l = Loader::eval(s.val.clone(), &c, 5).unwrap();
    assert_eq!(l.batches(), Some(3));
    let mut inputs = Vec::new();
    while let Some(b) = l.next() {
        let b = b.unwrap();
        inputs.extend_from_slice(&b.features[..b.len * 8]);
        assert_eq!(b.labels.len(), 40);
    }
    // Tokens 400..496 in order: window i starts at 400 + 8i.
    let id = |p: usize| (p * 3 % 7) as f32;
    let want: Vec<f32> = (400..496).map(id).collect();
    assert_eq!(inputs, want);
    // Without shuffle, training reads side-by-side windows from the start.
    let mut t = Loader::train(s.train.clone(), &c, 2, 9, 0, 1).unwrap();
    let b = t.next().unwrap().unwrap();
    assert_eq!(b.features[..8], (16..24).map(id).collect::<Vec<_>>()[..]);
}

#[test]
fn text_needs_the_models_window() {
    let (_, c, _dir) = text_splits(100, 8, true);
    let e = open(&c, Path::new("/"), &[9], 0).unwrap_err().to_string();
    assert!(
        e.contains("[9] does not match the samples of text at"),
        "{e}"
    );
}
