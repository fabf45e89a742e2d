//! `Split`: the samples of one split as rows of a shared, compact store. Train and a held-out
//! validation set are two index lists over the same store, so `val_split` copies no pixels.
//! A text split is windows over a shared token list instead (`text::Windows`).

use std::sync::Arc;

use super::vocab::Vocab;
use super::windows::Windows;

/// Pixels as the source gave them: u8 images stay u8 (4× smaller); synthetic data is f32.
#[derive(Debug)]
pub(crate) enum Pixels {
    U8(Vec<u8>),
    F32(Vec<f32>),
}

/// All samples read from one source file set (e.g. the training files).
pub(crate) struct Store {
    pub pixels: Pixels,
    pub labels: Vec<u32>,
    pub shape: Vec<usize>,
    pub class_names: Arc<Vec<String>>,
}

impl Store {
    pub fn len(&self) -> usize {
        self.labels.len()
    }
}

/// A summary: the pixels would fill a terminal.
impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.pixels {
            Pixels::U8(_) => "u8",
            Pixels::F32(_) => "f32",
        };
        f.debug_struct("Store")
            .field("samples", &self.len())
            .field("shape", &self.shape)
            .field("pixels", &kind)
            .field("classes", &self.class_names.len())
            .finish()
    }
}

/// The samples of one split (train, validation or test): rows of a store, or the windows
/// of a text.
pub struct Split(Kind);

enum Kind {
    Samples { store: Arc<Store>, rows: Vec<usize> },
    Text(Windows),
}

impl std::fmt::Debug for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Kind::Samples { store, .. } => f
                .debug_struct("Split")
                .field("len", &self.len())
                .field("store", store)
                .finish(),
            Kind::Text(w) => f
                .debug_struct("Split")
                .field("windows", &w.len())
                .field("block", &w.block())
                .field("vocab", &w.vocab.len())
                .finish(),
        }
    }
}

impl Split {
    /// Every row of `store`, in file order.
    pub(crate) fn all(store: Arc<Store>) -> Split {
        let rows = (0..store.len()).collect();
        Split(Kind::Samples { store, rows })
    }

    /// The windows of a text.
    pub(crate) fn text(windows: Windows) -> Split {
        Split(Kind::Text(windows))
    }

    /// The same store, only these positions of this split. Text windows are not rows: their
    /// subsets are prefixes (`positions` = 0..k, as a limit takes), the first k windows.
    pub(crate) fn subset(&self, positions: &[usize]) -> Split {
        match &self.0 {
            Kind::Samples { store, rows } => Split(Kind::Samples {
                store: store.clone(),
                rows: positions.iter().map(|&p| rows[p]).collect(),
            }),
            Kind::Text(w) => {
                debug_assert!(positions.iter().enumerate().all(|(i, &p)| i == p));
                Split(Kind::Text(w.first(positions.len())))
            }
        }
    }

    /// Samples the split holds (for a training text split, every window it could draw).
    pub fn len(&self) -> usize {
        match &self.0 {
            Kind::Samples { rows, .. } => rows.len(),
            Kind::Text(w) => w.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Samples one training epoch visits: `len`, or for text the windows that fit side by
    /// side (capped by `train_limit`).
    pub fn per_epoch(&self) -> usize {
        match &self.0 {
            Kind::Samples { rows, .. } => rows.len(),
            Kind::Text(w) => w.per_epoch(),
        }
    }
    /// The windows of a text split.
    pub(crate) fn windows(&self) -> Option<&Windows> {
        match &self.0 {
            Kind::Text(w) => Some(w),
            Kind::Samples { .. } => None,
        }
    }
    /// The vocabulary of a text split.
    pub fn vocab(&self) -> Option<&Arc<Vocab>> {
        self.windows().map(|w| &w.vocab)
    }
    pub fn classes(&self) -> usize {
        match &self.0 {
            Kind::Samples { store, .. } => store.class_names.len(),
            Kind::Text(w) => w.vocab.len(),
        }
    }
    /// Per-sample shape, e.g. [1, 28, 28], or [block_size] for text.
    pub fn sample_shape(&self) -> &[usize] {
        match &self.0 {
            Kind::Samples { store, .. } => &store.shape,
            Kind::Text(w) => w.shape(),
        }
    }
    /// Elements per sample (product of `sample_shape`).
    pub fn sample_len(&self) -> usize {
        self.sample_shape().iter().product()
    }
    /// Labels per sample: 1 (a class), or block_size for text (the next token at each
    /// position).
    pub fn labels_per_sample(&self) -> usize {
        match &self.0 {
            Kind::Samples { .. } => 1,
            Kind::Text(w) => w.block(),
        }
    }
    /// Names of the classes by index: "0".."9", folder names, the dataset's own names, or
    /// a text's symbols.
    pub fn class_names(&self) -> Vec<String> {
        match &self.0 {
            Kind::Samples { store, .. } => store.class_names.as_ref().clone(),
            Kind::Text(w) => (0..w.vocab.len()).map(|i| w.vocab.show(i)).collect(),
        }
    }
    /// The class index of sample `i` (0 ≤ i < len); for a text window, the label of its
    /// last position.
    pub fn label(&self, i: usize) -> usize {
        match &self.0 {
            Kind::Samples { store, rows } => store.labels[rows[i]] as usize,
            Kind::Text(w) => w.labels(i).last().map_or(0, |&l| l as usize),
        }
    }
    /// Appends the `labels_per_sample` labels of sample `i` to `out`, as f32.
    pub(crate) fn push_labels(&self, i: usize, out: &mut Vec<f32>) {
        match &self.0 {
            Kind::Samples { store, rows } => out.push(store.labels[rows[i]] as f32),
            Kind::Text(w) => out.extend(w.labels(i).iter().map(|&l| l as f32)),
        }
    }
    /// Sample `i` as f32 (u8 pixels scaled to [0, 1], token ids as they are), before
    /// augmentation and normalisation.
    pub fn sample(&self, i: usize) -> Vec<f32> {
        match self.source(i) {
            Source::U8(p) => p.iter().map(|&v| f32::from(v) / 255.0).collect(),
            Source::F32(p) => p.to_vec(),
            Source::Tokens(p) => p.iter().map(|&v| v as f32).collect(),
        }
    }
    /// The stored values of sample `i` (0 ≤ i < len), as the source gave them.
    pub(crate) fn source(&self, i: usize) -> Source<'_> {
        match &self.0 {
            Kind::Samples { store, rows } => {
                let n = self.sample_len();
                let start = rows[i] * n;
                match &store.pixels {
                    Pixels::U8(p) => Source::U8(&p[start..start + n]),
                    Pixels::F32(p) => Source::F32(&p[start..start + n]),
                }
            }
            Kind::Text(w) => Source::Tokens(w.input(i)),
        }
    }
}

/// One sample's stored pixels.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Source<'a> {
    U8(&'a [u8]),
    F32(&'a [f32]),
    /// A text window's input ids.
    Tokens(&'a [u32]),
}
