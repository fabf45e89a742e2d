//! IDX files (MNIST, Fashion-MNIST and the `idx` dataset): gzip or raw, told apart by the
//! gzip magic bytes rather than the extension. Images are u8 `[N, H, W]` (magic 0x00000803),
//! labels u8 `[N]` (magic 0x00000801); big-endian dimensions, C-order data.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::DataError;
use super::checksum;
use super::split::{Pixels, Store};

pub(crate) const IMAGES_MAGIC: u32 = 0x0000_0803;
pub(crate) const LABELS_MAGIC: u32 = 0x0000_0801;

/// The content of `path`, gunzipped when it starts with the gzip magic 1f 8b.
pub(crate) fn read_maybe_gz(path: &Path) -> Result<Vec<u8>, DataError> {
    let raw = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    if !raw.starts_with(&[0x1f, 0x8b]) {
        return Ok(raw);
    }
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(raw.as_slice())
        .read_to_end(&mut out)
        .map_err(|e| DataError::format(path, format!("damaged gzip data: {e}")))?;
    Ok(out)
}

/// `dir/name`, or `dir/name.gz` when only that exists.
pub(crate) fn find(dir: &Path, name: &str) -> Result<PathBuf, DataError> {
    let raw = dir.join(name);
    if raw.is_file() {
        return Ok(raw);
    }
    let gz = dir.join(format!("{name}.gz"));
    if gz.is_file() {
        return Ok(gz);
    }
    Err(DataError::Missing {
        path: raw,
        hint: format!(
            "neither is {name}.gz; set data.path to the directory that holds the IDX files \
             (train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, \
             t10k-labels-idx1-ubyte, each raw or .gz)"
        ),
    })
}

/// Parses an IDX file whose magic must be `magic`; returns its dimensions and data bytes.
pub(crate) fn parse(
    path: &Path,
    mut bytes: Vec<u8>,
    magic: u32,
    what: &str,
) -> Result<(Vec<usize>, Vec<u8>), DataError> {
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    if bytes.len() < 4 {
        return Err(DataError::format(
            path,
            format!(
                "truncated: {} bytes, too short for an IDX header ({what})",
                bytes.len()
            ),
        ));
    }
    let found = be(&bytes[..4]);
    if found != magic {
        return Err(DataError::format(
            path,
            format!("wrong magic 0x{found:08x}, expected 0x{magic:08x} ({what})"),
        ));
    }
    let ndims = (magic & 0xff) as usize;
    let header = 4 + 4 * ndims;
    if bytes.len() < header {
        return Err(DataError::format(
            path,
            format!(
                "truncated: the header of {ndims} dimensions needs {header} bytes, file has {}",
                bytes.len()
            ),
        ));
    }
    let dims: Vec<usize> = bytes[4..header]
        .chunks_exact(4)
        .map(|c| be(c) as usize)
        .collect();
    let need = dims.iter().map(|&d| d as u128).product::<u128>();
    let have = (bytes.len() - header) as u128;
    let dims_text = dims
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("×");
    if have < need {
        return Err(DataError::format(
            path,
            format!(
                "truncated: header says {dims_text} = {need} bytes, file has {have} after its \
                 {header}-byte header"
            ),
        ));
    }
    if have > need {
        return Err(DataError::format(
            path,
            format!(
                "header says {dims_text} = {need} bytes, but the file has {} more after them",
                have - need
            ),
        ));
    }
    bytes.drain(..header);
    Ok((dims, bytes))
}

/// Reads and checks one file: checksum (when `sums` lists it) before parsing, so a damaged
/// shipped file is reported as damaged whatever byte changed.
fn load(
    path: &Path,
    sums: &HashMap<String, String>,
    magic: u32,
    what: &str,
) -> Result<(Vec<usize>, Vec<u8>), DataError> {
    let bytes = read_maybe_gz(path)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().trim_end_matches(".gz").to_string())
        .unwrap_or_default();
    checksum::verify(path, &bytes, sums.get(&name))?;
    parse(path, bytes, magic, what)
}

/// An images file: (count, height, width, pixels).
pub(crate) fn read_images(
    path: &Path,
    sums: &HashMap<String, String>,
) -> Result<(usize, usize, usize, Vec<u8>), DataError> {
    let (dims, data) = load(path, sums, IMAGES_MAGIC, "IDX images")?;
    Ok((dims[0], dims[1], dims[2], data))
}

/// A labels file, each label checked against the class count.
pub(crate) fn read_labels(
    path: &Path,
    sums: &HashMap<String, String>,
    classes: usize,
) -> Result<Vec<u32>, DataError> {
    let (_, data) = load(path, sums, LABELS_MAGIC, "IDX labels")?;
    check_labels(path, data.iter().map(|&l| l as u32), classes)
}

/// Labels as u32, or an error naming the first one out of range and where it is.
pub(crate) fn check_labels(
    path: &Path,
    labels: impl Iterator<Item = u32>,
    classes: usize,
) -> Result<Vec<u32>, DataError> {
    labels
        .enumerate()
        .map(|(i, l)| {
            if (l as usize) < classes {
                Ok(l)
            } else {
                Err(DataError::format(
                    path,
                    format!("label {l} out of range for {classes} classes at index {i}"),
                ))
            }
        })
        .collect()
}

/// One split of an MNIST-layout directory: `<prefix>-images-idx3-ubyte[.gz]` and
/// `<prefix>-labels-idx1-ubyte[.gz]` (prefix "train" or "t10k").
pub(crate) fn read_split(
    dir: &Path,
    prefix: &str,
    class_names: Arc<Vec<String>>,
    sums: &HashMap<String, String>,
) -> Result<Store, DataError> {
    let images_path = find(dir, &format!("{prefix}-images-idx3-ubyte"))?;
    let labels_path = find(dir, &format!("{prefix}-labels-idx1-ubyte"))?;
    let (n, h, w, pixels) = read_images(&images_path, sums)?;
    let labels = read_labels(&labels_path, sums, class_names.len())?;
    if labels.len() != n {
        return Err(DataError::format(
            &images_path,
            format!(
                "{n} images but {} has {} labels",
                labels_path.display(),
                labels.len()
            ),
        ));
    }
    Ok(Store {
        pixels: Pixels::U8(pixels),
        labels,
        shape: vec![1, h, w],
        class_names,
    })
}

/// Whether `bytes` are an IDX u8 images file (used to tell IDX from PNG/JPEG inputs).
pub(crate) fn looks_like_images(bytes: &[u8]) -> bool {
    bytes.len() >= 4 && u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) == IMAGES_MAGIC
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;

    /// An IDX file: magic, big-endian dims, then data.
    pub(crate) fn idx_bytes(magic: u32, dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut b = magic.to_be_bytes().to_vec();
        for d in dims {
            b.extend(d.to_be_bytes());
        }
        b.extend(data);
        b
    }

    pub(crate) fn gz(bytes: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    /// A directory with `prefix` images (n × h × w, pixel = i + row + col) and labels i % 10.
    pub(crate) fn write_split(dir: &Path, prefix: &str, n: u32, h: u32, w: u32, compress: bool) {
        let mut px = Vec::new();
        for i in 0..n {
            for r in 0..h {
                for c in 0..w {
                    px.push((i + r + c) as u8);
                }
            }
        }
        let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
        let files = [
            (
                format!("{prefix}-images-idx3-ubyte"),
                idx_bytes(IMAGES_MAGIC, &[n, h, w], &px),
            ),
            (
                format!("{prefix}-labels-idx1-ubyte"),
                idx_bytes(LABELS_MAGIC, &[n], &labels),
            ),
        ];
        for (name, bytes) in files {
            if compress {
                std::fs::write(dir.join(format!("{name}.gz")), gz(&bytes)).unwrap();
            } else {
                std::fs::write(dir.join(name), bytes).unwrap();
            }
        }
    }

    fn names() -> Arc<Vec<String>> {
        Arc::new((0..10).map(|i| i.to_string()).collect())
    }

    fn read(dir: &Path) -> Result<Store, DataError> {
        read_split(dir, "train", names(), &HashMap::new())
    }

    fn err(dir: &Path) -> String {
        read(dir).unwrap_err().to_string()
    }

    #[test]
    fn round_trip_raw_and_gz() {
        for compress in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            write_split(dir.path(), "train", 12, 3, 2, compress);
            let s = read(dir.path()).unwrap();
            assert_eq!(s.shape, vec![1, 3, 2]);
            assert_eq!(s.labels, (0..12).map(|i| i % 10).collect::<Vec<u32>>());
            let Pixels::U8(p) = &s.pixels else { panic!() };
            assert_eq!(p.len(), 12 * 6);
            // image 5, row 2, col 1 = 5 + 2 + 1
            assert_eq!(p[5 * 6 + 2 * 2 + 1], 8);
        }
    }

    #[test]
    fn gzip_is_detected_by_content_not_extension() {
        let dir = tempfile::tempdir().unwrap();
        write_split(dir.path(), "train", 4, 2, 2, false);
        let p = dir.path().join("train-labels-idx1-ubyte");
        let raw = std::fs::read(&p).unwrap();
        std::fs::write(&p, gz(&raw)).unwrap();
        assert_eq!(read(dir.path()).unwrap().labels, vec![0, 1, 2, 3]);
    }

    #[test]
    fn wrong_magic_names_file_and_both_magics() {
        let dir = tempfile::tempdir().unwrap();
        write_split(dir.path(), "train", 4, 2, 2, false);
        // An images file where the labels file should be.
        let imgs = std::fs::read(dir.path().join("train-images-idx3-ubyte")).unwrap();
        std::fs::write(dir.path().join("train-labels-idx1-ubyte"), imgs).unwrap();
        let e = err(dir.path());
        assert!(
            e.contains(
                "train-labels-idx1-ubyte: wrong magic 0x00000803, expected 0x00000801 (IDX labels)"
            ),
            "{e}"
        );
    }

    #[test]
    fn truncated_images_say_what_the_header_promised() {
        let dir = tempfile::tempdir().unwrap();
        write_split(dir.path(), "train", 4, 2, 2, true);
        let b = idx_bytes(IMAGES_MAGIC, &[4, 2, 2], &[0; 10]);
        std::fs::write(dir.path().join("train-images-idx3-ubyte.gz"), gz(&b)).unwrap();
        let e = err(dir.path());
        assert!(
            e.contains(
                "train-images-idx3-ubyte.gz: truncated: header says 4×2×2 = 16 bytes, file has 10"
            ),
            "{e}"
        );
        // Shorter than the header itself.
        std::fs::write(
            dir.path().join("train-images-idx3-ubyte.gz"),
            [0, 0, 8, 3, 0],
        )
        .unwrap();
        assert!(
            err(dir.path())
                .contains("truncated: the header of 3 dimensions needs 16 bytes, file has 5")
        );
        std::fs::write(dir.path().join("train-images-idx3-ubyte.gz"), [0, 0]).unwrap();
        assert!(err(dir.path()).contains("truncated: 2 bytes"));
    }

    #[test]
    fn extra_bytes_are_an_error() {
        let dir = tempfile::tempdir().unwrap();
        write_split(dir.path(), "train", 2, 1, 1, false);
        let b = idx_bytes(LABELS_MAGIC, &[2], &[0, 1, 2]);
        std::fs::write(dir.path().join("train-labels-idx1-ubyte"), b).unwrap();
        assert!(err(dir.path()).contains("1 more after them"));
    }

    #[test]
    fn count_mismatch_names_both_files() {
        let dir = tempfile::tempdir().unwrap();
        write_split(dir.path(), "train", 4, 2, 2, false);
        let b = idx_bytes(LABELS_MAGIC, &[3], &[0, 1, 2]);
        std::fs::write(dir.path().join("train-labels-idx1-ubyte"), b).unwrap();
        let e = err(dir.path());
        assert!(e.contains("train-images-idx3-ubyte: 4 images but"), "{e}");
        assert!(e.contains("train-labels-idx1-ubyte has 3 labels"), "{e}");
    }

    #[test]
    fn label_out_of_range_names_label_and_index() {
        let dir = tempfile::tempdir().unwrap();
        write_split(dir.path(), "train", 20, 1, 1, false);
        let mut labels = vec![0u8; 20];
        labels[17] = 12;
        let b = idx_bytes(LABELS_MAGIC, &[20], &labels);
        std::fs::write(dir.path().join("train-labels-idx1-ubyte"), b).unwrap();
        let e = err(dir.path());
        assert!(
            e.contains("train-labels-idx1-ubyte: label 12 out of range for 10 classes at index 17"),
            "{e}"
        );
    }

    #[test]
    fn missing_file_names_path_and_suggests_data_path() {
        let dir = tempfile::tempdir().unwrap();
        let e = err(dir.path());
        assert!(e.contains("train-images-idx3-ubyte: not found"), "{e}");
        assert!(e.contains("data.path"), "{e}");
    }

    #[test]
    fn damaged_gzip_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        write_split(dir.path(), "train", 4, 2, 2, true);
        let p = dir.path().join("train-images-idx3-ubyte.gz");
        let mut b = std::fs::read(&p).unwrap();
        b.truncate(b.len() / 2);
        std::fs::write(&p, b).unwrap();
        assert!(err(dir.path()).contains("damaged gzip data"));
    }

    #[test]
    fn huge_header_dims_do_not_overflow() {
        let dir = tempfile::tempdir().unwrap();
        write_split(dir.path(), "train", 1, 1, 1, false);
        let b = idx_bytes(IMAGES_MAGIC, &[u32::MAX, u32::MAX, u32::MAX], &[]);
        std::fs::write(dir.path().join("train-images-idx3-ubyte"), b).unwrap();
        assert!(err(dir.path()).contains("truncated: header says"));
    }

    #[test]
    fn checksum_is_checked_on_uncompressed_bytes() {
        let dir = tempfile::tempdir().unwrap();
        write_split(dir.path(), "train", 4, 2, 2, true);
        let raw = read_maybe_gz(&dir.path().join("train-labels-idx1-ubyte.gz")).unwrap();
        let mut sums = HashMap::new();
        sums.insert(
            "train-labels-idx1-ubyte".to_string(),
            checksum::sha256_hex(&raw),
        );
        assert!(read_split(dir.path(), "train", names(), &sums).is_ok());
        sums.insert("train-labels-idx1-ubyte".to_string(), "0".repeat(64));
        let e = read_split(dir.path(), "train", names(), &sums)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("train-labels-idx1-ubyte.gz: checksum mismatch"),
            "{e}"
        );
    }
}
