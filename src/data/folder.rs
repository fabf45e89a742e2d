//! Image folders, like torchvision's ImageFolder: one subdirectory per class, classes sorted by
//! name, files sorted by name. Layouts:
//! - `root/train/<class>/*` and `root/test/<class>/*`: the two splits (test classes must be
//!   train classes);
//! - `root/train/<class>/*` alone, or `root/<class>/*` (no `train/`): training data only, so
//!   validation must come from `data.val_split` and there is no test split.
//!
//! Files ending .png, .jpg or .jpeg (any case) are read; other files are ignored. Images are
//! converted to the model's channel count (1: luma, 3: RGB) and must already have its height
//! and width: nothing is resized silently.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rayon::prelude::*;

use super::DataError;
use super::split::{Pixels, Store};

/// The training store and, when the layout has one, the test store.
pub(crate) fn read(
    root: &Path,
    shape: &[usize],
    classes: Option<usize>,
) -> Result<(Store, Option<Store>), DataError> {
    let (c, h, w) = image_shape(shape)?;
    if !root.is_dir() {
        return Err(DataError::Missing {
            path: root.to_path_buf(),
            hint:
                "set data.path to the image folder (root/train/<class>/*.png or root/<class>/*.png)"
                    .into(),
        });
    }
    let (train_dir, test_dir) = if root.join("train").is_dir() {
        let test = root.join("test");
        (root.join("train"), test.is_dir().then_some(test))
    } else {
        (root.to_path_buf(), None)
    };
    let names = subdirs(&train_dir)?;
    if names.is_empty() {
        return Err(DataError::format(
            &train_dir,
            "no class folders: expected one subdirectory per class holding .png/.jpg files",
        ));
    }
    if let Some(k) = classes.filter(|&k| k != names.len()) {
        return Err(DataError::format(
            &train_dir,
            format!(
                "data.classes is {k} but there are {} class folders",
                names.len()
            ),
        ));
    }
    let names = Arc::new(names);
    let train = read_split(&train_dir, &names, c, h, w)?;
    let test = match test_dir {
        Some(dir) => {
            if let Some(extra) = subdirs(&dir)?.into_iter().find(|n| !names.contains(n)) {
                return Err(DataError::format(
                    &dir.join(&extra),
                    "class folder in test/ that train/ does not have",
                ));
            }
            Some(read_split(&dir, &names, c, h, w)?)
        }
        None => None,
    };
    Ok((train, test))
}

/// (c, h, w) of a model input that PNG/JPEG images can fill: 1 (grey) or 3 (RGB) channels.
pub(crate) fn image_shape(shape: &[usize]) -> Result<(usize, usize, usize), DataError> {
    let &[c, h, w] = shape else {
        return Err(DataError::Config(format!(
            "images give [channels, height, width] samples; the model input is {shape:?}"
        )));
    };
    if c != 1 && c != 3 {
        return Err(DataError::Config(format!(
            "images are converted to 1 (grey) or 3 (RGB) channels; the model input has {c}"
        )));
    }
    Ok((c, h, w))
}

/// The class names of an image folder (its class directories, sorted), without reading images.
pub(crate) fn class_names(root: &Path) -> Result<Vec<String>, DataError> {
    let train = root.join("train");
    subdirs(if train.is_dir() { &train } else { root })
}

/// Sorted names of the non-hidden subdirectories of `dir`.
fn subdirs(dir: &Path) -> Result<Vec<String>, DataError> {
    let mut names = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))? {
        let e = e.map_err(|e| DataError::io(dir, e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if e.path().is_dir() && !name.starts_with('.') {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

fn is_image(p: &Path) -> bool {
    p.is_file()
        && p.extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase())
            .is_some_and(|e| matches!(e.as_str(), "png" | "jpg" | "jpeg"))
}

/// All images of `dir/<class>/` for each class that exists there, as one store.
fn read_split(
    dir: &Path,
    names: &Arc<Vec<String>>,
    c: usize,
    h: usize,
    w: usize,
) -> Result<Store, DataError> {
    let mut files: Vec<(PathBuf, u32)> = Vec::new();
    for (label, name) in names.iter().enumerate() {
        let class_dir = dir.join(name);
        if !class_dir.is_dir() {
            continue;
        }
        let mut paths = Vec::new();
        for e in std::fs::read_dir(&class_dir).map_err(|e| DataError::io(&class_dir, e))? {
            let p = e.map_err(|e| DataError::io(&class_dir, e))?.path();
            if is_image(&p) {
                paths.push(p);
            }
        }
        paths.sort();
        files.extend(paths.into_iter().map(|p| (p, label as u32)));
    }
    // Decode in parallel, report the first failure in file order.
    let decoded: Vec<Result<Vec<u8>, DataError>> =
        files.par_iter().map(|(p, _)| decode(p, c, h, w)).collect();
    let mut pixels = Vec::with_capacity(files.len() * c * h * w);
    for d in decoded {
        pixels.extend(d?);
    }
    Ok(Store {
        pixels: Pixels::U8(pixels),
        labels: files.iter().map(|(_, l)| *l).collect(),
        shape: vec![c, h, w],
        class_names: names.clone(),
    })
}

/// One PNG/JPEG file as u8 [c, h, w]; its size must be h×w.
fn decode(path: &Path, c: usize, h: usize, w: usize) -> Result<Vec<u8>, DataError> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    decode_bytes(path, &bytes, c, h, w)
}

/// The PNG/JPEG content `bytes` of `path` (format told by content) as u8 [c, h, w].
pub(crate) fn decode_bytes(
    path: &Path,
    bytes: &[u8],
    c: usize,
    h: usize,
    w: usize,
) -> Result<Vec<u8>, DataError> {
    let img = image::load_from_memory(bytes)
        .map_err(|e| DataError::format(path, format!("cannot decode image: {e}")))?;
    let (iw, ih) = (img.width() as usize, img.height() as usize);
    if (ih, iw) != (h, w) {
        return Err(DataError::format(
            path,
            format!(
                "image is {ih}×{iw} (height×width) but the model input is {h}×{w}; \
                 resize the images (trainer does not resize)"
            ),
        ));
    }
    Ok(if c == 1 {
        img.to_luma8().into_raw()
    } else {
        // HWC → CHW
        let rgb = img.to_rgb8().into_raw();
        let mut chw = vec![0u8; 3 * h * w];
        for (i, px) in rgb.chunks_exact(3).enumerate() {
            for (ch, &v) in px.iter().enumerate() {
                chw[ch * h * w + i] = v;
            }
        }
        chw
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A w×h RGB PNG whose pixel (x, y) is (v, x, y).
    pub(crate) fn png(path: &Path, w: u32, h: u32, v: u8) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        image::RgbImage::from_fn(w, h, |x, y| image::Rgb([v, x as u8, y as u8]))
            .save(path)
            .unwrap();
    }

    #[test]
    fn train_and_test_folders_with_sorted_classes_and_files() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        png(&r.join("train/dog/b.png"), 3, 2, 20);
        png(&r.join("train/dog/a.png"), 3, 2, 10);
        png(&r.join("train/cat/z.png"), 3, 2, 30);
        std::fs::write(r.join("train/cat/notes.txt"), "ignored").unwrap();
        png(&r.join("test/dog/c.png"), 3, 2, 40);
        let (train, test) = read(r, &[3, 2, 3], None).unwrap();
        assert_eq!(*train.class_names, vec!["cat", "dog"]);
        assert_eq!(train.labels, vec![0, 1, 1]);
        let Pixels::U8(p) = &train.pixels else {
            panic!()
        };
        // Sample order: cat/z, dog/a, dog/b; channel 0 holds v, channel 1 x, channel 2 y.
        assert_eq!(p[0], 30);
        assert_eq!(p[18], 10);
        assert_eq!(p[36], 20);
        assert_eq!(&p[6..12], &[0, 1, 2, 0, 1, 2]);
        assert_eq!(&p[12..18], &[0, 0, 0, 1, 1, 1]);
        let test = test.unwrap();
        assert_eq!(test.labels, vec![1]);
    }

    #[test]
    fn flat_layout_is_training_data_only_and_grey_converts() {
        let dir = tempfile::tempdir().unwrap();
        png(&dir.path().join("a/1.png"), 2, 2, 0);
        png(&dir.path().join("b/1.PNG"), 2, 2, 0);
        let (train, test) = read(dir.path(), &[1, 2, 2], Some(2)).unwrap();
        assert!(test.is_none());
        assert_eq!(train.labels, vec![0, 1]);
        assert_eq!(train.shape, vec![1, 2, 2]);
    }

    #[test]
    fn wrong_size_names_file_and_both_sizes() {
        let dir = tempfile::tempdir().unwrap();
        png(&dir.path().join("a/odd.png"), 5, 4, 0);
        let e = read(dir.path(), &[3, 2, 2], None).unwrap_err().to_string();
        assert!(
            e.contains("odd.png: image is 4×5 (height×width) but the model input is 2×2"),
            "{e}"
        );
    }

    #[test]
    fn undecodable_file_and_class_count_and_channels() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a")).unwrap();
        std::fs::write(dir.path().join("a/bad.png"), b"not a png").unwrap();
        let e = read(dir.path(), &[3, 2, 2], None).unwrap_err().to_string();
        assert!(e.contains("bad.png: cannot decode image"), "{e}");
        let e = read(dir.path(), &[3, 2, 2], Some(5))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("data.classes is 5 but there are 1 class folders"),
            "{e}"
        );
        let e = read(dir.path(), &[2, 2, 2], None).unwrap_err().to_string();
        assert!(e.contains("the model input has 2"), "{e}");
        let e = read(&dir.path().join("nope"), &[3, 2, 2], None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope: not found"), "{e}");
    }
}
