//! The shipped Fashion-MNIST (datasets/fashion-mnist): it opens with its full size, its first
//! label is what an independent reader says, its SHA256SUMS are right, and a damaged copy is
//! refused with "checksum mismatch" naming the file.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use trainer::config::sections::{Data, Dataset};
use trainer::config::values::{Fraction, Positive};
use trainer::data;

const FILES: [&str; 4] = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
];

fn shipped() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("datasets/fashion-mnist")
}

fn cfg(path: Option<&Path>) -> Data {
    Data {
        dataset: Dataset::FashionMnist,
        path: path.map(|p| p.display().to_string()),
        batch_size: Positive(128),
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

fn gunzip(path: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap())
        .read_to_end(&mut out)
        .unwrap();
    out
}

#[test]
fn shipped_fashion_mnist_opens_with_its_full_size() {
    // No data.path: found through <config dir>/../datasets/fashion-mnist.
    let configs = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let s = data::open(&cfg(None), &configs, &[1, 28, 28], 0).unwrap();
    assert_eq!(s.train.len(), 60000);
    assert_eq!(s.test.len(), 10000);
    assert_eq!(s.val.len(), 10000);
    assert_eq!(s.train.classes(), 10);
    // Tests run in the crate root, so the path is shown relative to it.
    assert_eq!(
        s.source,
        "fashion-mnist at datasets/fashion-mnist (60000 train, 10000 test)"
    );
    // Independently: python3 -c "import gzip; d = gzip.open(
    //   'datasets/fashion-mnist/train-labels-idx1-ubyte.gz').read(); print(d[8], d[9])"
    // prints "9 0" (the first two training labels: Ankle boot, T-shirt/top).
    assert_eq!(s.train.label(0), 9);
    assert_eq!(s.train.label(1), 0);
    assert_eq!(s.train.class_names()[9], "Ankle boot");
    assert_eq!(s.train.class_names()[0], "T-shirt/top");
    // The same python check on the test labels prints 9 for d[8] too.
    assert_eq!(s.test.label(0), 9);
    // Any directory without ../datasets falls back to the crate's own copy.
    let elsewhere = tempfile::tempdir().unwrap();
    let s = data::open(&cfg(None), elsewhere.path(), &[1, 28, 28], 0).unwrap();
    assert_eq!(s.train.len(), 60000);
}

#[test]
fn shipped_checksums_match_the_uncompressed_files() {
    let sums = std::fs::read_to_string(shipped().join("SHA256SUMS")).unwrap();
    for name in FILES {
        let bytes = gunzip(&shipped().join(format!("{name}.gz")));
        let hex: String = Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert!(
            sums.contains(&format!("{hex}  {name}")),
            "{name}: {hex} not in SHA256SUMS"
        );
    }
}

/// A copy of the shipped dataset in a temp dir with `damage` applied to file `name`.
fn damaged_copy(name: &str, compress: bool) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(shipped().join("SHA256SUMS"), dir.path().join("SHA256SUMS")).unwrap();
    for f in FILES.iter().filter(|&&f| f != name) {
        let gz = format!("{f}.gz");
        std::fs::copy(shipped().join(&gz), dir.path().join(&gz)).unwrap();
    }
    let mut bytes = gunzip(&shipped().join(format!("{name}.gz")));
    let at = bytes.len() / 2; // a pixel or label byte, past the header
    bytes[at] ^= 0x01;
    if compress {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&bytes).unwrap();
        std::fs::write(dir.path().join(format!("{name}.gz")), e.finish().unwrap()).unwrap();
    } else {
        std::fs::write(dir.path().join(name), bytes).unwrap();
    }
    dir
}

#[test]
fn a_flipped_byte_is_a_checksum_mismatch_naming_the_file() {
    for (name, compress) in [
        ("train-labels-idx1-ubyte", true),
        ("t10k-images-idx3-ubyte", false),
    ] {
        let dir = damaged_copy(name, compress);
        let e = data::open(&cfg(Some(dir.path())), Path::new("/"), &[1, 28, 28], 0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("checksum mismatch"), "{e}");
        assert!(e.contains(name), "{e}");
    }
}
