//! CIFAR-10 and CIFAR-100 in their binary distributions: fixed-size records of label byte(s)
//! then 3072 pixel bytes (R, G, B planes of 32×32, i.e. already [3, 32, 32] C-order).

use std::path::Path;
use std::sync::Arc;

use super::DataError;
use super::idx::check_labels;
use super::split::{Pixels, Store};

const PIXELS: usize = 3 * 32 * 32;

/// Which CIFAR: how many label bytes lead a record and which one is the class.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cifar {
    /// data_batch_1..5.bin, test_batch.bin; one label byte.
    Ten,
    /// train.bin, test.bin; coarse then fine label byte; we use the fine label (100 classes).
    Hundred,
}

const CIFAR10_NAMES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

impl Cifar {
    fn name(self) -> &'static str {
        match self {
            Cifar::Ten => "CIFAR-10",
            Cifar::Hundred => "CIFAR-100",
        }
    }
    fn label_bytes(self) -> usize {
        match self {
            Cifar::Ten => 1,
            Cifar::Hundred => 2,
        }
    }
    fn record(self) -> usize {
        self.label_bytes() + PIXELS
    }
    fn classes(self) -> usize {
        match self {
            Cifar::Ten => 10,
            Cifar::Hundred => 100,
        }
    }
    /// The files of the training split and of the test split.
    pub(crate) fn files(self) -> (Vec<String>, Vec<String>) {
        match self {
            Cifar::Ten => (
                (1..=5).map(|i| format!("data_batch_{i}.bin")).collect(),
                vec!["test_batch.bin".into()],
            ),
            Cifar::Hundred => (vec!["train.bin".into()], vec!["test.bin".into()]),
        }
    }
    /// CIFAR-10's class names; CIFAR-100's from fine_label_names.txt when present (the binary
    /// archive ships it), else "0".."99".
    pub(crate) fn class_names(self, dir: &Path) -> Arc<Vec<String>> {
        let names = match self {
            Cifar::Ten => CIFAR10_NAMES.iter().map(|s| s.to_string()).collect(),
            Cifar::Hundred => std::fs::read_to_string(dir.join("fine_label_names.txt"))
                .ok()
                .map(|t| {
                    t.lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty())
                        .map(String::from)
                        .collect::<Vec<_>>()
                })
                .filter(|n| n.len() == 100)
                .unwrap_or_else(|| (0..100).map(|i| i.to_string()).collect()),
        };
        Arc::new(names)
    }

    /// Reads and concatenates `files` from `dir` into one store.
    pub(crate) fn read(
        self,
        dir: &Path,
        files: &[String],
        class_names: Arc<Vec<String>>,
    ) -> Result<Store, DataError> {
        let mut pixels = Vec::new();
        let mut labels = Vec::new();
        for f in files {
            let path = dir.join(f);
            let bytes = std::fs::read(&path).map_err(|e| match DataError::io(&path, e) {
                DataError::Missing { path, .. } => DataError::Missing {
                    path,
                    hint: format!(
                        "set data.path to the directory holding the {} binary files ({})",
                        self.name(),
                        self.files().0.join(", ") + ", " + &self.files().1.join(", ")
                    ),
                },
                e => e,
            })?;
            let (p, l) = self.parse(&path, &bytes)?;
            pixels.extend(p);
            labels.extend(l);
        }
        Ok(Store {
            pixels: Pixels::U8(pixels),
            labels,
            shape: vec![3, 32, 32],
            class_names,
        })
    }

    /// One file's records: (pixels, labels).
    pub(crate) fn parse(self, path: &Path, bytes: &[u8]) -> Result<(Vec<u8>, Vec<u32>), DataError> {
        let rec = self.record();
        if !bytes.len().is_multiple_of(rec) {
            return Err(DataError::format(
                path,
                format!(
                    "{} file length {} is not a multiple of {rec}",
                    self.name(),
                    bytes.len()
                ),
            ));
        }
        let lb = self.label_bytes();
        let mut pixels = Vec::with_capacity(bytes.len() / rec * PIXELS);
        for r in bytes.chunks_exact(rec) {
            pixels.extend_from_slice(&r[lb..]);
        }
        let raw = bytes.chunks_exact(rec).map(|r| u32::from(r[lb - 1]));
        let labels = check_labels(path, raw, self.classes())?;
        Ok((pixels, labels))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// `n` records; record i has label (i*7) % classes (fine), coarse 99, pixels = i + p.
    pub(crate) fn records(kind: Cifar, n: usize) -> Vec<u8> {
        let mut b = Vec::new();
        for i in 0..n {
            if kind == Cifar::Hundred {
                b.push(99);
            }
            b.push(((i * 7) % kind.classes()) as u8);
            b.extend((0..PIXELS).map(|p| (i + p) as u8));
        }
        b
    }

    pub(crate) fn write_dir(dir: &Path, kind: Cifar, per_file: usize) {
        let (train, test) = kind.files();
        for f in train.iter().chain(&test) {
            std::fs::write(dir.join(f), records(kind, per_file)).unwrap();
        }
    }

    #[test]
    fn reads_cifar10_fixture() {
        let dir = tempfile::tempdir().unwrap();
        write_dir(dir.path(), Cifar::Ten, 3);
        let (train, _) = Cifar::Ten.files();
        let s = Cifar::Ten
            .read(dir.path(), &train, Cifar::Ten.class_names(dir.path()))
            .unwrap();
        assert_eq!(s.labels.len(), 15);
        assert_eq!(&s.labels[..4], &[0, 7, 4, 0]);
        let Pixels::U8(p) = &s.pixels else { panic!() };
        assert_eq!(p.len(), 15 * PIXELS);
        // Record 1, channel G (plane 1), pixel 5 → value 1 + 1024 + 5.
        assert_eq!(p[PIXELS + 1024 + 5], ((1 + 1024 + 5) % 256) as u8);
        assert_eq!(s.class_names[9], "truck");
    }

    #[test]
    fn cifar100_uses_the_fine_label() {
        let dir = tempfile::tempdir().unwrap();
        write_dir(dir.path(), Cifar::Hundred, 20);
        let s = Cifar::Hundred
            .read(
                dir.path(),
                &["test.bin".into()],
                Cifar::Hundred.class_names(dir.path()),
            )
            .unwrap();
        assert_eq!(s.labels[15], (15 * 7) % 100);
        assert_eq!(s.class_names.len(), 100);
    }

    /// The error reading dir/test_batch.bin as CIFAR-10 gives.
    fn read_error(dir: &std::path::Path) -> String {
        Cifar::Ten
            .read(dir, &["test_batch.bin".into()], Cifar::Ten.class_names(dir))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn length_not_a_multiple_of_the_record() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("test_batch.bin"), vec![0u8; 1234]).unwrap();
        let e = read_error(dir.path());
        assert!(
            e.contains("test_batch.bin: CIFAR-10 file length 1234 is not a multiple of 3073"),
            "{e}"
        );
    }

    #[test]
    fn label_out_of_range() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = records(Cifar::Ten, 3);
        b[2 * 3073] = 10;
        std::fs::write(dir.path().join("test_batch.bin"), b).unwrap();
        let e = read_error(dir.path());
        assert!(
            e.contains("label 10 out of range for 10 classes at index 2"),
            "{e}"
        );
    }

    #[test]
    fn missing_file_suggests_data_path() {
        let dir = tempfile::tempdir().unwrap();
        let e = Cifar::Ten
            .read(
                dir.path(),
                &["data_batch_1.bin".into()],
                Cifar::Ten.class_names(dir.path()),
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains("data_batch_1.bin: not found"), "{e}");
        assert!(e.contains("data.path"), "{e}");
    }
}
