//! `Split`: the samples of one split as rows of a shared, compact store. Train and a held-out
//! validation set are two index lists over the same store, so `val_split` copies no pixels.

use std::sync::Arc;

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

/// The samples of one split (train, validation or test).
pub struct Split {
    store: Arc<Store>,
    rows: Vec<usize>,
}

impl std::fmt::Debug for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Split")
            .field("len", &self.len())
            .field("store", &self.store)
            .finish()
    }
}

impl Split {
    /// Every row of `store`, in file order.
    pub(crate) fn all(store: Arc<Store>) -> Split {
        let rows = (0..store.len()).collect();
        Split { store, rows }
    }

    /// The same store, only these positions of this split.
    pub(crate) fn subset(&self, positions: &[usize]) -> Split {
        Split {
            store: self.store.clone(),
            rows: positions.iter().map(|&p| self.rows[p]).collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
    pub fn classes(&self) -> usize {
        self.store.class_names.len()
    }
    /// Per-sample shape, e.g. [1, 28, 28].
    pub fn sample_shape(&self) -> &[usize] {
        &self.store.shape
    }
    /// Elements per sample (product of `sample_shape`).
    pub fn sample_len(&self) -> usize {
        self.store.shape.iter().product()
    }
    /// Names of the classes by index: "0".."9", folder names, or the dataset's own names.
    pub fn class_names(&self) -> Vec<String> {
        self.store.class_names.as_ref().clone()
    }
    /// The class index of sample `i` (0 ≤ i < len).
    pub fn label(&self, i: usize) -> usize {
        self.store.labels[self.rows[i]] as usize
    }
    /// Sample `i` as f32 (u8 pixels scaled to [0, 1]), before augmentation and normalisation.
    pub fn sample(&self, i: usize) -> Vec<f32> {
        match self.source(i) {
            Source::U8(p) => p.iter().map(|&v| f32::from(v) / 255.0).collect(),
            Source::F32(p) => p.to_vec(),
        }
    }
    /// The stored pixels of sample `i` (0 ≤ i < len), as the source gave them.
    pub(crate) fn source(&self, i: usize) -> Source<'_> {
        let n = self.sample_len();
        let start = self.rows[i] * n;
        match &self.store.pixels {
            Pixels::U8(p) => Source::U8(&p[start..start + n]),
            Pixels::F32(p) => Source::F32(&p[start..start + n]),
        }
    }
}

/// One sample's stored pixels.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Source<'a> {
    U8(&'a [u8]),
    F32(&'a [f32]),
}
