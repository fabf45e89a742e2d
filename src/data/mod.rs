//! The dataset layer of a training run: read a dataset (IDX, CIFAR, image folders, synthetic,
//! text) into compact splits, then hand out batches from a loader thread.
//!
//! **Invariant:** every batch is a pure function of (data, config, seed, epoch, batch index):
//! the epoch order and each sample's augmentation come from generators keyed by those numbers
//! (`order.rs`), so resuming needs only (epoch, cursor) and thread counts never change bytes.

mod augment;
mod checksum;
mod cifar;
mod error;
mod folder;
mod idx;
mod inputs;
mod loader;
mod order;
mod split;
mod synthetic;
pub mod text;
mod vocab;
mod windows;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use error::DataError;
pub use inputs::read_inputs;
pub use loader::{Loader, batches_per_epoch};
pub use order::epoch_order;
pub use split::Split;
pub use text::{VOCAB_FILE, Vocab};

use crate::config::model::InputDecl;
use crate::config::sections::{Data, Dataset};
use crate::tensor::DType;
use cifar::Cifar;
use order::{Purpose, permutation, rng_for};
use split::Store;

/// One batch, ready for the graph's input and label tensors.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// [batch, C, H, W] flattened, row-major (C-order); text: [batch, T] token ids as f32.
    pub features: Vec<f32>,
    /// Class indices as f32, `labels_per_sample` per row: one class, or for text the next
    /// token at each of the T positions ([batch, T] row-major).
    pub labels: Vec<f32>,
    /// 1, or T for text.
    pub labels_per_sample: usize,
    /// Real samples; eval batches are padded with zeros and label 0 up to the batch size.
    pub len: usize,
    /// 0-based.
    pub epoch: u64,
    /// Batch index within the epoch, 0-based.
    pub index: usize,
}

/// The three splits of a run and where they came from.
#[derive(Debug)]
pub struct Splits {
    pub train: Arc<Split>,
    pub val: Arc<Split>,
    pub test: Arc<Split>,
    /// e.g. "fashion-mnist at datasets/fashion-mnist (60000 train, 10000 test)".
    pub source: String,
    /// The vocabulary of text data (saved with the run and its checkpoints).
    pub vocab: Option<Arc<Vocab>>,
}

const FASHION_NAMES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

fn dataset_name(d: Dataset) -> &'static str {
    match d {
        Dataset::FashionMnist => "fashion-mnist",
        Dataset::Mnist => "mnist",
        Dataset::Cifar10 => "cifar10",
        Dataset::Cifar100 => "cifar100",
        Dataset::Idx => "idx",
        Dataset::ImageFolder => "image-folder",
        Dataset::Synthetic => "synthetic",
        Dataset::Text => "text",
    }
}

/// The directory of the dataset: `data.path` (relative to the config's directory), else for
/// the shipped datasets `<config dir>/../datasets/<name>`, then this crate's `datasets/<name>`.
pub fn resolve_path(cfg: &Data, config_dir: &Path) -> Result<PathBuf, DataError> {
    let name = dataset_name(cfg.dataset);
    if let Some(p) = &cfg.path {
        return Ok(config_dir.join(p)); // an absolute `p` replaces config_dir
    }
    if cfg.dataset != Dataset::FashionMnist {
        return Err(DataError::Config(format!(
            "data.dataset = \"{name}\" needs data.path: the directory that holds its files"
        )));
    }
    // The config's checkout, the working directory's (a run resumed on another machine), the
    // checkout trainer was built from.
    let candidates = [
        config_dir.join("..").join("datasets").join(name),
        Path::new("datasets").join(name),
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("datasets")
            .join(name),
    ];
    match candidates.iter().find(|c| c.is_dir()) {
        Some(c) => Ok(c.clone()),
        None => Err(DataError::Missing {
            path: candidates[0].clone(),
            hint: format!(
                "nor {}, nor {}; set data.path to the directory that holds the Fashion-MNIST IDX files",
                candidates[1].display(),
                candidates[2].display()
            ),
        }),
    }
}

/// A path as short as it can be said: relative to the working directory when inside it.
fn show(p: &Path) -> String {
    let canon = std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let rel = std::env::current_dir()
        .ok()
        .and_then(|cwd| std::fs::canonicalize(cwd).ok())
        .and_then(|cwd| canon.strip_prefix(cwd).ok().map(Path::to_path_buf));
    rel.filter(|r| !r.as_os_str().is_empty())
        .unwrap_or(canon)
        .display()
        .to_string()
}

fn digit_names(n: usize) -> Arc<Vec<String>> {
    Arc::new((0..n).map(|i| i.to_string()).collect())
}

/// The names of the model's `classes` output classes, without reading the samples (for
/// `trainer predict`): the dataset's own names where it has them, else "0", "1", ...
pub fn class_names(cfg: &Data, config_dir: &Path, classes: usize) -> Vec<String> {
    let named: Option<Vec<String>> = match cfg.dataset {
        Dataset::FashionMnist => Some(FASHION_NAMES.map(String::from).to_vec()),
        Dataset::Cifar10 | Dataset::Cifar100 => {
            let kind = match cfg.dataset {
                Dataset::Cifar10 => Cifar::Ten,
                _ => Cifar::Hundred,
            };
            let dir = resolve_path(cfg, config_dir).unwrap_or_default();
            Some(kind.class_names(&dir).as_ref().clone())
        }
        Dataset::ImageFolder => resolve_path(cfg, config_dir)
            .ok()
            .and_then(|dir| folder::class_names(&dir).ok()),
        _ => None,
    };
    named
        .filter(|n| n.len() == classes)
        .unwrap_or_else(|| digit_names(classes).as_ref().clone())
}

/// Reads the dataset and makes the train, validation and test splits.
///
/// `config_dir` is the directory of the config file (relative data.path resolves against it);
/// `input_shape` is the model's per-sample input shape (e.g. [1, 28, 28]), of f32: a shape that
/// differs from the data's is an error naming both. `seed` (the run seed) draws the
/// `val_split` hold-out.
pub fn open(
    cfg: &Data,
    config_dir: &Path,
    input_shape: &[usize],
    seed: u64,
) -> Result<Splits, DataError> {
    open_typed(cfg, config_dir, input_shape, DType::F32, seed)
}

/// [`open`] for the model's declared input: synthetic data for integer inputs is ids.
pub fn open_for(
    cfg: &Data,
    config_dir: &Path,
    input: &InputDecl,
    seed: u64,
) -> Result<Splits, DataError> {
    open_typed(cfg, config_dir, &input.shape, input.dtype, seed)
}

fn open_typed(
    cfg: &Data,
    config_dir: &Path,
    input_shape: &[usize],
    dtype: DType,
    seed: u64,
) -> Result<Splits, DataError> {
    let name = dataset_name(cfg.dataset);
    let (train, test, place) = match cfg.dataset {
        Dataset::FashionMnist | Dataset::Mnist | Dataset::Idx => {
            let dir = resolve_path(cfg, config_dir)?;
            let names = match cfg.dataset {
                Dataset::FashionMnist => Arc::new(FASHION_NAMES.map(String::from).to_vec()),
                Dataset::Mnist => digit_names(10),
                _ => digit_names(cfg.classes.map_or(10, |c| c.0)),
            };
            let sums = checksum::read_sums(&dir)?;
            let train = idx::read_split(&dir, "train", names.clone(), &sums)?;
            let test = idx::read_split(&dir, "t10k", names, &sums)?;
            (train, Some(test), format!(" at {}", show(&dir)))
        }
        Dataset::Cifar10 | Dataset::Cifar100 => {
            let dir = resolve_path(cfg, config_dir)?;
            let kind = if cfg.dataset == Dataset::Cifar10 {
                Cifar::Ten
            } else {
                Cifar::Hundred
            };
            let names = kind.class_names(&dir);
            let (train_files, test_files) = kind.files();
            let train = kind.read(&dir, &train_files, names.clone())?;
            let test = kind.read(&dir, &test_files, names)?;
            (train, Some(test), format!(" at {}", show(&dir)))
        }
        Dataset::ImageFolder => {
            let dir = resolve_path(cfg, config_dir)?;
            let (train, test) = folder::read(&dir, input_shape, cfg.classes.map(|c| c.0))?;
            (train, test, format!(" at {}", show(&dir)))
        }
        Dataset::Text => return open_text(cfg, config_dir, input_shape),
        Dataset::Synthetic => {
            let samples = cfg.samples.map_or(1024, |s| s.0);
            let classes = cfg.classes.map_or(10, |c| c.0);
            let ids = dtype == DType::I32;
            let (train, test) = synthetic::generate(input_shape, samples, classes, seed, ids)?;
            (
                train,
                Some(test),
                format!(" ({classes} classes, seed {seed})"),
            )
        }
    };
    if train.shape != input_shape {
        return Err(DataError::Shape {
            model: input_shape.to_vec(),
            data: train.shape.clone(),
            source_name: format!("{name}{place}"),
        });
    }
    if let Some(t) = test.as_ref().filter(|t| t.shape != train.shape) {
        return Err(DataError::Config(format!(
            "{name}{place}: the test samples are {:?} but the training samples {:?}",
            t.shape, train.shape
        )));
    }
    // Augment and normalize settings are checked now, before any training starts.
    augment::Pipeline::new(cfg, &train.shape, true)?;
    let source = format!(
        "{name}{place} ({} train, {} test)",
        train.len(),
        test.as_ref().map_or(0, Store::len)
    );
    let train = Split::all(Arc::new(train));
    let test = match test {
        Some(t) => Split::all(Arc::new(t)),
        None => train.subset(&[]),
    };
    make_splits(cfg, train, test, seed, source)
}

/// `text` data: the tokens of the file or folder, the tail held out (see `text`).
fn open_text(cfg: &Data, config_dir: &Path, input_shape: &[usize]) -> Result<Splits, DataError> {
    let path = resolve_path(cfg, config_dir)?;
    let block = cfg.block_size.map_or(0, |b| b.0);
    if block == 0 || input_shape != [block] {
        return Err(DataError::Shape {
            model: input_shape.to_vec(),
            data: vec![block],
            source_name: format!("text at {}", show(&path)),
        });
    }
    let read = text::read(&path, cfg.tokenizer.unwrap_or_default())?;
    let (train, val, counts) = text::split(
        read,
        block,
        cfg.val_split.0,
        cfg.train_limit.map(|l| l.0),
        cfg.val_limit.map(|l| l.0),
    )?;
    let vocab = train.vocab.clone();
    let train = Split::text(train);
    let test = Split::text(val.clone()).subset(&[]);
    Ok(Splits {
        train: Arc::new(train),
        val: Arc::new(Split::text(val)),
        test: Arc::new(test),
        source: format!("text at {} ({counts})", show(&path)),
        vocab: Some(vocab),
    })
}

/// Applies `val_split` (seeded hold-out from train) and the limits.
fn make_splits(
    cfg: &Data,
    train: Split,
    test: Split,
    seed: u64,
    source: String,
) -> Result<Splits, DataError> {
    let n = train.len();
    let frac = cfg.val_split.0;
    let (train, val) = if frac > 0.0 {
        let n_val = (n as f64 * frac).round() as usize;
        if n_val == 0 || n_val >= n {
            return Err(DataError::Config(format!(
                "data.val_split = {frac} of {n} training samples holds out {n_val}: \
                 it must leave at least one sample on each side"
            )));
        }
        let perm = permutation(n, &mut rng_for(seed, Purpose::ValSplit, 0, 0));
        // Each side keeps file order, so `shuffle = false` still reads in file order.
        let (mut v, mut t) = (perm[..n_val].to_vec(), perm[n_val..].to_vec());
        v.sort_unstable();
        t.sort_unstable();
        (train.subset(&t), train.subset(&v))
    } else {
        if test.is_empty() {
            return Err(DataError::Config(format!(
                "{source} has no test split to validate on: set data.val_split (e.g. 0.1) to \
                 hold out part of the training data"
            )));
        }
        let all: Vec<usize> = (0..test.len()).collect();
        (train, test.subset(&all))
    };
    let limit = |s: Split, l: Option<usize>| match l {
        Some(l) if l < s.len() => s.subset(&(0..l).collect::<Vec<_>>()),
        _ => s,
    };
    let train = limit(train, cfg.train_limit.map(|l| l.0));
    let val = limit(val, cfg.val_limit.map(|l| l.0));
    let mut source = source;
    if frac > 0.0 || cfg.train_limit.is_some() || cfg.val_limit.is_some() {
        source += &format!(", using {} train / {} validation", train.len(), val.len());
        if frac > 0.0 {
            source += &format!(" (val_split {frac})");
        }
    }
    Ok(Splits {
        train: Arc::new(train),
        val: Arc::new(val),
        test: Arc::new(test),
        source,
        vocab: None,
    })
}

#[cfg(test)]
mod tests;
