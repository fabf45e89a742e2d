//! `Loader`: a thread that assembles the next batches while the caller computes. Each batch
//! is a pure function of (split, config, seed, epoch, batch index), so a loader started at
//! (epoch, index) continues exactly where an uninterrupted one would be, and the rayon
//! parallelism inside a batch (tasks of `SAMPLES_PER_TASK` samples or more, each sample written
//! whole by one task) cannot change its bytes. `trainer bench --loader` measures its pace.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, sync_channel};
use std::thread::JoinHandle;

use rayon::prelude::*;

use super::augment::Pipeline;
use super::order::epoch_order;
use super::{Batch, DataError, Split};
use crate::config::sections::Data;
use crate::host_memory;

/// Batches the loader keeps ready ahead of the caller.
const AHEAD: usize = 2;

/// Samples one rayon task transforms at least: one sample is about a microsecond of work,
/// less than handing it to another thread costs.
const SAMPLES_PER_TASK: usize = 16;

/// Full training batches per epoch: the last partial batch is dropped (the graph's batch size
/// is fixed).
pub fn batches_per_epoch(split_len: usize, batch: usize) -> usize {
    split_len.checked_div(batch).unwrap_or(0)
}

/// A batch's features must be allocatable: at most 2³⁶ elements, the graph's own limit.
fn check_batch_size(split: &Split, batch: usize) -> Result<(), DataError> {
    match batch.checked_mul(split.sample_len()) {
        Some(n) if n <= 1 << 36 => Ok(()),
        _ => Err(DataError::Config(format!(
            "a batch of {batch} samples of {:?} is too large",
            split.sample_shape()
        ))),
    }
}

/// Everything that decides a training batch.
pub(crate) struct TrainPlan {
    split: Arc<Split>,
    pipe: Pipeline,
    batch: usize,
    seed: u64,
    shuffle: bool,
}

impl TrainPlan {
    pub(crate) fn new(
        split: Arc<Split>,
        cfg: &Data,
        batch: usize,
        seed: u64,
    ) -> Result<Self, DataError> {
        if batch == 0 {
            return Err(DataError::Config(
                "the batch size must be at least 1".into(),
            ));
        }
        check_batch_size(&split, batch)?;
        if batches_per_epoch(split.per_epoch(), batch) == 0 {
            return Err(DataError::Config(format!(
                "the training split has {} {}, fewer than one batch of {batch}; lower \
                 data.batch_size or raise data.train_limit",
                split.per_epoch(),
                match split.windows() {
                    Some(_) => "windows an epoch",
                    None => "samples",
                }
            )));
        }
        let pipe = Pipeline::new(cfg, split.sample_shape(), true)?;
        Ok(TrainPlan {
            split,
            pipe,
            batch,
            seed,
            shuffle: cfg.shuffle,
        })
    }

    pub(crate) fn per_epoch(&self) -> usize {
        batches_per_epoch(self.split.per_epoch(), self.batch)
    }

    /// The samples epoch `epoch` visits, in order: a permutation of the split, or for text
    /// the windows drawn for it.
    pub(crate) fn order(&self, epoch: u64) -> Vec<usize> {
        match self.split.windows() {
            Some(w) => w.epoch_starts(self.seed, epoch, self.shuffle),
            None => epoch_order(self.split.len(), self.seed, epoch, self.shuffle),
        }
    }

    /// Batch `index` of `epoch`, given that epoch's order.
    pub(crate) fn batch(
        &self,
        order: &[usize],
        epoch: u64,
        index: usize,
    ) -> Result<Batch, DataError> {
        let first = index * self.batch;
        let rows = &order[first..first + self.batch];
        let (features, labels) = assemble(
            &self.split,
            &self.pipe,
            rows,
            self.batch,
            Some((self.seed, epoch, first)),
        )?;
        Ok(Batch {
            features,
            labels,
            labels_per_sample: self.split.labels_per_sample(),
            len: self.batch,
            epoch,
            index,
        })
    }
}

/// The features and labels of `rows` (positions in `split`), padded with zeros and label 0
/// up to `batch` (`labels_per_sample` labels a row). With `augment` = (seed, epoch, position of rows[0] in the epoch), sample j
/// is augmented with the key (seed, epoch, position + j). A batch the host cannot allocate is
/// an error, not an abort.
fn assemble(
    split: &Split,
    pipe: &Pipeline,
    rows: &[usize],
    batch: usize,
    augment: Option<(u64, u64, usize)>,
) -> Result<(Vec<f32>, Vec<f32>), DataError> {
    let len = split.sample_len();
    let short = |e| {
        DataError::Config(format!(
            "not enough host memory for a batch of {batch} samples of {:?}: {e}; lower the batch size",
            split.sample_shape()
        ))
    };
    let mut features = host_memory::try_filled(batch * len, 0.0f32).map_err(short)?;
    let per = split.labels_per_sample();
    let mut labels: Vec<f32> = host_memory::try_reserved(batch * per).map_err(short)?;
    if len > 0 {
        features
            .par_chunks_mut(len)
            .zip(rows.par_iter())
            .enumerate()
            .with_min_len(SAMPLES_PER_TASK)
            .for_each(|(j, (out, &row))| {
                let key = augment.map(|(seed, epoch, p)| (seed, epoch, (p + j) as u64));
                pipe.write(split.source(row), out, key);
            });
    }
    for &r in rows {
        split.push_labels(r, &mut labels);
    }
    labels.resize(batch * per, 0.0);
    Ok((features, labels))
}

/// Batches from a background thread; dropping it stops the thread.
pub struct Loader {
    rx: Option<Receiver<Result<Batch, DataError>>>,
    handle: Option<JoinHandle<()>>,
    batches: Option<usize>,
}

impl Loader {
    /// Training batches forever (epoch after epoch), starting at `epoch`, batch `index`
    /// (resume). An `index` at or past the end of an epoch carries into the next epochs.
    pub fn train(
        split: Arc<Split>,
        cfg: &Data,
        batch: usize,
        seed: u64,
        epoch: u64,
        index: usize,
    ) -> Result<Loader, DataError> {
        let plan = TrainPlan::new(split, cfg, batch, seed)?;
        let per_epoch = plan.per_epoch();
        let mut epoch = epoch.saturating_add((index / per_epoch) as u64);
        let mut index = index % per_epoch;
        Loader::spawn(None, move |tx| {
            loop {
                let order = plan.order(epoch);
                while index < per_epoch {
                    let batch = plan.batch(&order, epoch, index);
                    let failed = batch.is_err();
                    if tx.send(batch).is_err() || failed {
                        return;
                    }
                    index += 1;
                }
                index = 0;
                epoch = epoch.saturating_add(1);
            }
        })
    }

    /// One pass over the split in order, no augmentation (normalisation yes), last batch
    /// padded with zeros and label 0 (`Batch::len` counts the real samples).
    pub fn eval(split: Arc<Split>, cfg: &Data, batch: usize) -> Result<Loader, DataError> {
        if batch == 0 {
            return Err(DataError::Config(
                "the batch size must be at least 1".into(),
            ));
        }
        check_batch_size(&split, batch)?;
        let pipe = Pipeline::new(cfg, split.sample_shape(), false)?;
        let n = split.len().div_ceil(batch);
        Loader::spawn(Some(n), move |tx| {
            for index in 0..n {
                let rows: Vec<usize> =
                    (index * batch..((index + 1) * batch).min(split.len())).collect();
                let b =
                    assemble(&split, &pipe, &rows, batch, None).map(|(features, labels)| Batch {
                        features,
                        labels,
                        labels_per_sample: split.labels_per_sample(),
                        len: rows.len(),
                        epoch: 0,
                        index,
                    });
                let failed = b.is_err();
                if tx.send(b).is_err() || failed {
                    return;
                }
            }
        })
    }

    fn spawn(
        batches: Option<usize>,
        work: impl FnOnce(std::sync::mpsc::SyncSender<Result<Batch, DataError>>) + Send + 'static,
    ) -> Result<Loader, DataError> {
        let (tx, rx) = sync_channel(AHEAD);
        let handle = std::thread::Builder::new()
            .name("data-loader".into())
            .spawn(move || work(tx))
            .map_err(|e| DataError::Config(format!("cannot start the data loader thread: {e}")))?;
        Ok(Loader {
            rx: Some(rx),
            handle: Some(handle),
            batches,
        })
    }

    /// The next batch; for an eval loader None after the last one. An error (a batch the
    /// host could not allocate) is the last thing a loader gives.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Option<Result<Batch, DataError>> {
        self.rx.as_ref()?.recv().ok()
    }

    /// Number of batches of an eval loader (None for a training loader, which never ends).
    pub fn batches(&self) -> Option<usize> {
        self.batches
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        // Dropping the receiver makes the thread's next (or pending) send fail, so it returns.
        drop(self.rx.take());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::sections::{Augment, Dataset, Normalize};
    use crate::config::values::{Count, Finite, Fraction, Positive, PositiveFloat};
    use crate::data::split::{Pixels, Store};

    /// 23 samples of [1, 4, 4], sample i's pixel k = i + 10k (pixel 0 identifies it),
    /// label i % 3.
    fn split() -> Arc<Split> {
        let n = 23;
        let store = Store {
            pixels: Pixels::U8(
                (0..n * 16)
                    .map(|v| (v / 16 + 10 * (v % 16)) as u8)
                    .collect(),
            ),
            labels: (0..n as u32).map(|i| i % 3).collect(),
            shape: vec![1, 4, 4],
            class_names: Arc::new(vec!["a".into(), "b".into(), "c".into()]),
        };
        Arc::new(Split::all(Arc::new(store)))
    }

    fn cfg() -> Data {
        Data {
            dataset: Dataset::Synthetic,
            path: None,
            batch_size: Positive(5),
            eval_batch_size: None,
            train_limit: None,
            val_limit: None,
            val_split: Fraction(0.0),
            shuffle: true,
            augment: vec![
                Augment::RandomCrop {
                    size: Positive(4),
                    padding: Count(1),
                },
                Augment::Hflip,
            ],
            normalize: Some(Normalize {
                mean: vec![Finite(0.5)],
                std: vec![PositiveFloat(0.25)],
            }),
            classes: None,
            samples: None,
            tokenizer: None,
            block_size: None,
        }
    }

    fn key(b: &Batch) -> (u64, usize, usize, Vec<u32>, Vec<u32>) {
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect();
        (b.epoch, b.index, b.len, bits(&b.features), bits(&b.labels))
    }

    #[test]
    fn batches_per_epoch_drops_the_last_partial_batch() {
        assert_eq!(batches_per_epoch(23, 5), 4);
        assert_eq!(batches_per_epoch(20, 5), 4);
        assert_eq!(batches_per_epoch(4, 5), 0);
        assert_eq!(batches_per_epoch(4, 0), 0);
    }

    #[test]
    fn training_visits_each_sample_at_most_once_per_epoch() {
        let mut c = cfg();
        c.augment.clear();
        c.normalize = None;
        let mut l = Loader::train(split(), &c, 5, 7, 0, 0).unwrap();
        let mut epochs = vec![Vec::new(), Vec::new()];
        for e in 0..2 {
            for i in 0..4 {
                let b = l.next().unwrap().unwrap();
                assert_eq!((b.epoch, b.index, b.len), (e, i, 5));
                assert_eq!(b.features.len(), 5 * 16);
                for (j, &label) in b.labels.iter().enumerate() {
                    let id = (b.features[j * 16] * 255.0).round() as usize;
                    assert_eq!(label, (id % 3) as f32);
                    epochs[e as usize].push(id);
                }
            }
        }
        assert_ne!(epochs[0], epochs[1]);
        for mut ids in epochs {
            ids.sort_unstable();
            ids.dedup();
            assert_eq!(ids.len(), 20);
        }
    }

    #[test]
    fn resumed_loader_continues_the_uninterrupted_one() {
        let mut full = Loader::train(split(), &cfg(), 5, 11, 0, 0).unwrap();
        let all: Vec<_> = (0..11)
            .map(|_| key(&full.next().unwrap().unwrap()))
            .collect();
        // Resume at epoch 1, batch 2 (= the 7th batch overall), and once more via carry.
        for (e, i) in [(1, 2), (0, 6)] {
            let mut resumed = Loader::train(split(), &cfg(), 5, 11, e, i).unwrap();
            for want in &all[6..] {
                assert_eq!(&key(&resumed.next().unwrap().unwrap()), want);
            }
        }
        // A different seed gives different batches.
        let mut other = Loader::train(split(), &cfg(), 5, 12, 0, 0).unwrap();
        assert_ne!(key(&other.next().unwrap().unwrap()), all[0]);
    }

    #[test]
    fn same_bytes_with_one_and_two_threads() {
        let plan = TrainPlan::new(split(), &cfg(), 5, 3).unwrap();
        let order = plan.order(2);
        let run = |threads| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                (0..4)
                    .map(|i| key(&plan.batch(&order, 2, i).unwrap()))
                    .collect::<Vec<_>>()
            })
        };
        assert_eq!(run(1), run(2));
    }

    #[test]
    fn shuffle_off_keeps_file_order_without_augment() {
        let mut c = cfg();
        c.shuffle = false;
        c.augment.clear();
        c.normalize = None;
        let mut l = Loader::train(split(), &c, 5, 3, 0, 1).unwrap();
        let b = l.next().unwrap().unwrap();
        assert_eq!(b.labels, [2., 0., 1., 2., 0.]); // samples 5..10
        assert_eq!(b.features[0], 5.0 / 255.0);
    }

    #[test]
    fn eval_pads_the_last_batch_and_ends() {
        let mut l = Loader::eval(split(), &cfg(), 10).unwrap();
        assert_eq!(l.batches(), Some(3));
        let b0 = l.next().unwrap().unwrap();
        // Normalised, not augmented: sample 0 pixel 1 = (10/255 − 0.5) / 0.25.
        assert_eq!(b0.features[1], (10.0 / 255.0 - 0.5) / 0.25);
        l.next().unwrap().unwrap();
        let last = l.next().unwrap().unwrap();
        assert_eq!((last.len, last.index), (3, 2));
        assert!(last.features[3 * 16..].iter().all(|&v| v == 0.0));
        assert_eq!(&last.labels[..4], &[2., 0., 1., 0.]);
        assert!(l.next().is_none());
        assert!(l.next().is_none());
    }

    #[test]
    fn too_small_split_and_zero_batch_are_errors() {
        let e = Loader::train(split(), &cfg(), 24, 0, 0, 0)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("23 samples, fewer than one batch of 24"), "{e}");
        assert!(Loader::eval(split(), &cfg(), 0).is_err());
    }

    /// FNV-1a over the bits of every batch's features and labels, and their positions.
    fn digest(batches: impl Iterator<Item = Batch>) -> u64 {
        let mut h = 0xcbf2_9ce4_8422_2325u64;
        let mut eat = |v: u64| {
            for b in v.to_le_bytes() {
                h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
            }
        };
        for b in batches {
            eat(b.epoch);
            eat(b.index as u64);
            eat(b.len as u64);
            b.features.iter().for_each(|v| eat(v.to_bits() as u64));
            b.labels.iter().for_each(|v| eat(v.to_bits() as u64));
        }
        h
    }

    /// `n` samples of `shape`, u8 or f32, with varied pixels; labels i % 5.
    fn store(shape: &[usize], n: usize, u8_pixels: bool) -> Arc<Split> {
        let len: usize = shape.iter().product();
        let byte = |i: usize| ((i * 37 + i / 7 + 11) % 256) as u8;
        let pixels = match u8_pixels {
            true => Pixels::U8((0..n * len).map(byte).collect()),
            false => Pixels::F32(
                (0..n * len)
                    .map(|i| f32::from(byte(i)) / 97.0 - 1.0)
                    .collect(),
            ),
        };
        let store = Store {
            pixels,
            labels: (0..n as u32).map(|i| i % 5).collect(),
            shape: shape.to_vec(),
            class_names: Arc::new((0..5).map(|i| i.to_string()).collect()),
        };
        Arc::new(Split::all(Arc::new(store)))
    }

    /// Batches are pinned to the bits the loader gave before its single-pass rewrite
    /// (digests recorded from the per-step code: convert, crop into a copy, flip, normalise):
    /// u8 and f32 pixels, one and three channels, crop then flip, flip then crop, two crops,
    /// padding wider than the image, with and without normalisation, training and evaluation.
    #[test]
    fn batches_keep_their_bits() {
        let crop = |size, padding| Augment::RandomCrop {
            size: Positive(size),
            padding: Count(padding),
        };
        let norm = |m: &[f64], s: &[f64]| {
            Some(Normalize {
                mean: m.iter().map(|&v| Finite(v)).collect(),
                std: s.iter().map(|&v| PositiveFloat(v)).collect(),
            })
        };
        let cases = [
            (
                vec![3, 9, 9],
                true,
                vec![crop(9, 2), Augment::Hflip],
                norm(&[0.4, 0.5, 0.6], &[0.2, 0.3, 0.25]),
            ),
            (vec![1, 9, 9], true, vec![Augment::Hflip, crop(9, 3)], None),
            (
                vec![2, 6, 6],
                false,
                vec![crop(6, 7), crop(6, 1), Augment::Hflip],
                norm(&[0.1, -0.2], &[0.7, 1.5]),
            ),
            (
                vec![1, 28, 28],
                true,
                vec![crop(28, 2), Augment::Hflip],
                norm(&[0.2860], &[0.3530]),
            ),
            (vec![3, 4, 4], false, vec![], None),
        ];
        let mut got = Vec::new();
        for (shape, u8_pixels, augment, normalize) in cases {
            let split = store(&shape, 41, u8_pixels);
            let mut c = cfg();
            c.augment = augment;
            c.normalize = normalize;
            let mut train = Loader::train(split.clone(), &c, 6, 9, 1, 2).unwrap();
            let train = digest((0..9).map(|_| train.next().unwrap().unwrap()));
            let mut eval = Loader::eval(split, &c, 8).unwrap();
            let eval = digest(std::iter::from_fn(|| eval.next().map(Result::unwrap)));
            got.push((train, eval));
        }
        let want: [(u64, u64); 5] = [
            (0xa8154e7d4c885178, 0x2cd4c93feefc14dc),
            (0x64ae5651d42639ac, 0x3e5415e05bc7ca6e),
            (0x1cca3ae8930adf56, 0x4f83c3c85967f337),
            (0x5b89e1eb8638321a, 0x645b020a65782847),
            (0x05ac6eb4c44a9f7a, 0x35beaa7c7ed5ae18),
        ];
        assert_eq!(got, want, "{got:x?}");
    }

    #[test]
    fn dropping_a_loader_stops_its_thread() {
        // The thread is blocked on a full channel; drop must still return.
        let mut l = Loader::train(split(), &cfg(), 5, 0, 0, 0).unwrap();
        l.next().unwrap().unwrap();
        drop(l);
    }
}
