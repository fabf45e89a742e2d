//! Per-sample transforms, as a torchvision Compose of the configured augmentations (training
//! only, in the order listed) then ToTensor and Normalize (training and evaluation):
//! - `random_crop = { size, padding }`: RandomCrop(size, padding): zero-pad each side by
//!   `padding`, then take the size×size window at top = U{0..H+2p−size}, left = U{0..W+2p−size}.
//!   The graph's input is fixed, so `size` must equal the sample's height and width.
//! - `hflip`: RandomHorizontalFlip(p = 0.5).
//! - normalize: `(x − mean[c]) / std[c]` per channel of [C, H, W] samples (other sample shapes
//!   take one mean and one std for every element).
//!
//! Random draws come from a generator keyed by (seed, epoch, position in the epoch), so a
//! sample's augmentation does not depend on threads, batch boundaries or resuming.
//!
//! One pass per sample: crops and flips move rows and columns independently, so whatever
//! their order they compose into one map per axis (`AxisMap`), and the output is a gather
//! from the source pixels through that map. A u8 pixel becomes its float through a table per
//! channel filled with the very expression the steps compute (`v / 255`, then `(x − mean) /
//! std`), and padding is the value of a 0, so the bits are those of the step-by-step
//! transforms (the tests keep those as the oracle).

use std::sync::OnceLock;

use rand_chacha::ChaCha8Rng;

use super::DataError;
use super::order::{Purpose, below, rng_for, unit};
use super::split::Source;
use crate::config::sections::{Augment, Data};

#[derive(Clone, Copy, Debug)]
enum Step {
    Crop { size: usize, padding: usize },
    Hflip,
}

/// The validated transforms of one loader.
#[derive(Debug)]
pub(crate) struct Pipeline {
    /// [channels, height, width]; a non-image sample is one channel, one row.
    dims: [usize; 3],
    steps: Vec<Step>,
    /// Per-channel (mean, std), or one pair for non-image samples.
    norm: Option<(Vec<f32>, Vec<f32>)>,
    /// What each u8 value becomes, per channel; made on the first u8 sample.
    table: OnceLock<Vec<[f32; 256]>>,
}

impl Pipeline {
    /// Checks `cfg.augment` (when `train`) and `cfg.normalize` against the sample shape.
    pub(crate) fn new(cfg: &Data, shape: &[usize], train: bool) -> Result<Pipeline, DataError> {
        let image = match shape {
            &[c, h, w] => Some((c, h, w)),
            _ => None,
        };
        let mut steps = Vec::new();
        if train {
            for a in &cfg.augment {
                let Some((_, h, w)) = image else {
                    return Err(DataError::Config(format!(
                        "data.augment needs image samples [channels, height, width]; samples are {shape:?}"
                    )));
                };
                steps.push(match a {
                    Augment::RandomCrop { size, padding } => {
                        if size.0 != h || size.0 != w {
                            return Err(DataError::Config(format!(
                                "random_crop size {} must equal the sample's height and width \
                                 ({h}×{w}): the model input is fixed; use padding to shift",
                                size.0
                            )));
                        }
                        Step::Crop {
                            size: size.0,
                            padding: padding.0,
                        }
                    }
                    Augment::Hflip => Step::Hflip,
                });
            }
        }
        let norm = match &cfg.normalize {
            None => None,
            Some(n) => {
                let channels = image.map_or(1, |(c, _, _)| c);
                if n.mean.len() != channels || n.std.len() != channels {
                    return Err(DataError::Config(format!(
                        "data.normalize needs one mean and one std per channel: samples {shape:?} \
                         have {channels}, normalize has {} means and {} stds",
                        n.mean.len(),
                        n.std.len()
                    )));
                }
                Some((
                    n.mean.iter().map(|m| m.0 as f32).collect(),
                    n.std.iter().map(|s| s.0 as f32).collect(),
                ))
            }
        };
        let dims = image.map_or([1, 1, shape.iter().product()], |(c, h, w)| [c, h, w]);
        Ok(Pipeline {
            dims,
            steps,
            norm,
            table: OnceLock::new(),
        })
    }

    /// Writes one transformed sample into `out` from its source pixels `src`: the
    /// augmentations of training sample `position` of `epoch` (none when `augment` is None,
    /// i.e. evaluation), then ToTensor (u8 / 255) and normalisation.
    pub(crate) fn write(&self, src: Source<'_>, out: &mut [f32], augment: Option<(u64, u64, u64)>) {
        let [_, h, w] = self.dims;
        let (mut rows, mut cols) = (AxisMap::identity(h), AxisMap::identity(w));
        if let (Some((seed, epoch, position)), false) = (augment, self.steps.is_empty()) {
            let mut rng = rng_for(seed, Purpose::Augment, epoch, position);
            for &s in &self.steps {
                match s {
                    Step::Crop { size, padding } => {
                        let (top, left) = crop_offsets(&mut rng, h, w, size, padding);
                        rows = rows.then(top as isize - padding as isize, 1);
                        cols = cols.then(left as isize - padding as isize, 1);
                    }
                    Step::Hflip => {
                        if flip_draw(&mut rng) {
                            cols = cols.then(w as isize - 1, -1);
                        }
                    }
                }
            }
        }
        match src {
            Source::U8(p) => {
                let table = self.table.get_or_init(|| self.u8_table());
                self.gather(p, out, rows, cols, |c, v| table[c][usize::from(v)]);
            }
            Source::F32(p) => self.gather(p, out, rows, cols, |c, v| self.normalized(c, v)),
            // Token ids as they are: the config refuses augmentation and normalisation of text.
            Source::Tokens(p) => {
                for (o, &id) in out.iter_mut().zip(p) {
                    *o = id as f32;
                }
            }
        }
    }

    /// `x` normalised for channel `c` (unchanged without normalisation).
    fn normalized(&self, c: usize, x: f32) -> f32 {
        match &self.norm {
            Some((mean, std)) => (x - mean[c]) / std[c],
            None => x,
        }
    }

    fn u8_table(&self) -> Vec<[f32; 256]> {
        (0..self.dims[0])
            .map(|c| std::array::from_fn(|v| self.normalized(c, f32::from(v as u8) / 255.0)))
            .collect()
    }

    /// out[c, y, x] = value(c, src[c, rows(y), cols(x)]), or value(c, 0) where either map
    /// falls in padding.
    fn gather<T: Copy + Default>(
        &self,
        src: &[T],
        out: &mut [f32],
        rows: AxisMap,
        cols: AxisMap,
        value: impl Fn(usize, T) -> f32,
    ) {
        let [c, h, w] = self.dims;
        let plane = h * w;
        debug_assert!(src.len() == c * plane && out.len() == c * plane);
        for ch in 0..c {
            let pad = value(ch, T::default());
            let src = &src[ch * plane..(ch + 1) * plane];
            let out = &mut out[ch * plane..(ch + 1) * plane];
            for (y, out_row) in out.chunks_exact_mut(w.max(1)).enumerate() {
                let Some(sy) = rows.source(y) else {
                    out_row.fill(pad);
                    continue;
                };
                let src_row = &src[sy * w..(sy + 1) * w];
                let (lo, hi) = (cols.lo, cols.hi);
                out_row[..lo].fill(pad);
                out_row[hi..].fill(pad);
                let inner = &mut out_row[lo..hi];
                let (Some(first), Some(last)) = (cols.source(lo), cols.source(hi.wrapping_sub(1)))
                else {
                    continue; // an empty window: all padding, filled above
                };
                if cols.step > 0 {
                    for (o, &v) in inner.iter_mut().zip(&src_row[first..=last]) {
                        *o = value(ch, v);
                    }
                } else {
                    for (o, &v) in inner.iter_mut().zip(src_row[last..=first].iter().rev()) {
                        *o = value(ch, v);
                    }
                }
            }
        }
    }
}

/// Where index i (0..n) of one axis of the output reads in the source: `offset + step·i`
/// for i in lo..hi, padding outside (step is ±1). Crops shift it and narrow the window,
/// flips reverse it; each keeps it of this form.
#[derive(Clone, Copy, Debug, PartialEq)]
struct AxisMap {
    n: usize,
    offset: isize,
    step: isize,
    lo: usize,
    hi: usize,
}

impl AxisMap {
    fn identity(n: usize) -> AxisMap {
        AxisMap {
            n,
            offset: 0,
            step: 1,
            lo: 0,
            hi: n,
        }
    }

    /// This map after a step whose output index i takes its input's index `first + dir·i`
    /// (padding when that is outside 0..n): a crop is (top − padding, 1), a flip (n − 1, −1).
    fn then(self, first: isize, dir: isize) -> AxisMap {
        let n = self.n as isize;
        // i with lo ≤ first + dir·i < hi (an index inside the window is inside 0..n too).
        let (lo, hi) = (self.lo as isize, self.hi as isize);
        let (from, to) = match dir > 0 {
            true => (lo - first, hi - first),
            false => (first - hi + 1, first - lo + 1),
        };
        let (from, to) = (from.clamp(0, n), to.clamp(0, n));
        let (lo, hi) = if from < to { (from, to) } else { (0, 0) };
        AxisMap {
            n: self.n,
            offset: self.offset + self.step * first,
            step: self.step * dir,
            lo: lo as usize,
            hi: hi as usize,
        }
    }

    /// The source index output index `i` reads, None for padding.
    fn source(&self, i: usize) -> Option<usize> {
        (self.lo..self.hi)
            .contains(&i)
            .then(|| (self.offset + self.step * i as isize) as usize)
    }
}

/// RandomCrop.get_params on the padded image: (top, left).
fn crop_offsets(
    rng: &mut ChaCha8Rng,
    h: usize,
    w: usize,
    size: usize,
    pad: usize,
) -> (usize, usize) {
    let top = below(rng, (h + 2 * pad - size + 1) as u64) as usize;
    let left = below(rng, (w + 2 * pad - size + 1) as u64) as usize;
    (top, left)
}

/// RandomHorizontalFlip: flip when a uniform draw is < 0.5.
fn flip_draw(rng: &mut ChaCha8Rng) -> bool {
    unit(rng) < 0.5
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::sections::Normalize;
    use crate::config::values::{Count, Finite, Positive, PositiveFloat};

    fn x4() -> Vec<f32> {
        (1..=16).map(|v| v as f32).collect()
    }

    // The oracle: the transforms one step at a time, as torchvision composes them.

    /// The h×w window at (top, left) of `x` ([c, h, w]) zero-padded by `pad` on every side.
    fn crop(
        x: &[f32],
        c: usize,
        h: usize,
        w: usize,
        pad: usize,
        top: usize,
        left: usize,
    ) -> Vec<f32> {
        let mut out = vec![0.0; c * h * w];
        for ch in 0..c {
            for y in 0..h {
                let Some(sy) = (top + y).checked_sub(pad).filter(|&sy| sy < h) else {
                    continue;
                };
                for xo in 0..w {
                    if let Some(sx) = (left + xo).checked_sub(pad).filter(|&sx| sx < w) {
                        out[(ch * h + y) * w + xo] = x[(ch * h + sy) * w + sx];
                    }
                }
            }
        }
        out
    }

    fn hflip(x: &mut [f32], c: usize, h: usize, w: usize) {
        for row in x.chunks_exact_mut(w).take(c * h) {
            row.reverse();
        }
    }

    /// (x − mean[c]) / std[c], channel = position / (elements per channel).
    fn normalize(x: &mut [f32], mean: &[f32], std: &[f32]) {
        let per = x.len() / mean.len().max(1);
        for (ch, plane) in x.chunks_mut(per.max(1)).enumerate().take(mean.len()) {
            for v in plane {
                *v = (*v - mean[ch]) / std[ch];
            }
        }
    }

    /// `p`'s transforms step by step on `x` (already ToTensor'd), with the same draws.
    fn oracle(p: &Pipeline, x: &mut Vec<f32>, augment: Option<(u64, u64, u64)>) {
        let [c, h, w] = p.dims;
        if let Some((seed, epoch, position)) = augment.filter(|_| !p.steps.is_empty()) {
            let mut rng = rng_for(seed, Purpose::Augment, epoch, position);
            for &s in &p.steps {
                match s {
                    Step::Crop { size, padding } => {
                        let (top, left) = crop_offsets(&mut rng, h, w, size, padding);
                        *x = crop(x, c, h, w, padding, top, left);
                    }
                    Step::Hflip => {
                        if flip_draw(&mut rng) {
                            hflip(x, c, h, w);
                        }
                    }
                }
            }
        }
        if let Some((mean, std)) = &p.norm {
            normalize(x, mean, std);
        }
    }

    /// `p` on f32 pixels `x`, through the real path.
    fn run(p: &Pipeline, x: &[f32], augment: Option<(u64, u64, u64)>) -> Vec<f32> {
        let mut out = vec![f32::NAN; x.len()];
        p.write(Source::F32(x), &mut out, augment);
        out
    }

    fn bits(x: &[f32]) -> Vec<u32> {
        x.iter().map(|v| v.to_bits()).collect()
    }

    /// The single-pass gather gives the oracle's bits: u8 and f32 pixels, odd sizes, one to
    /// three channels, every order of crops and flips, padding wider than the image, with and
    /// without normalisation, many draws each.
    #[test]
    fn one_pass_matches_the_step_by_step_transforms() {
        let crop = |size, padding| Augment::RandomCrop {
            size: Positive(size),
            padding: Count(padding),
        };
        let flip = || Augment::Hflip;
        for (c, n) in [(1, 5), (3, 7), (2, 1), (1, 28)] {
            let orders = [
                vec![],
                vec![crop(n, 2), flip()],
                vec![flip(), crop(n, 3)],
                vec![crop(n, n + 2), flip(), crop(n, 1), flip()],
                vec![flip(), flip(), crop(n, 0)],
            ];
            let means: Vec<f64> = (0..c).map(|i| 0.1 + 0.3 * i as f64).collect();
            let stds: Vec<f64> = (0..c).map(|i| 0.7 - 0.2 * i as f64).collect();
            let len = c * n * n;
            let bytes: Vec<u8> = (0..len).map(|i| ((i * 53 + 7) % 256) as u8).collect();
            let floats: Vec<f32> = (0..len).map(|i| (i as f32 * 0.37).sin()).collect();
            for augment in orders {
                for norm in [None, Some((means.clone(), stds.clone()))] {
                    let p = Pipeline::new(&data(augment.clone(), norm), &[c, n, n], true).unwrap();
                    for key in (0..40).map(|pos| Some((3, 1, pos))).chain([None]) {
                        let mut want = floats.clone();
                        oracle(&p, &mut want, key);
                        assert_eq!(
                            bits(&run(&p, &floats, key)),
                            bits(&want),
                            "{augment:?} {key:?}"
                        );
                        let mut want: Vec<f32> =
                            bytes.iter().map(|&v| f32::from(v) / 255.0).collect();
                        oracle(&p, &mut want, key);
                        let mut got = vec![f32::NAN; len];
                        p.write(Source::U8(&bytes), &mut got, key);
                        assert_eq!(bits(&got), bits(&want), "u8 {augment:?} {key:?}");
                    }
                }
            }
        }
    }

    /// The window at (top, left) of the 4×4 image 1..16 padded by 1, through the real path.
    fn crop_at(top: usize, left: usize) -> Vec<f32> {
        let p = Pipeline::new(&data(vec![], None), &[1, 4, 4], false).unwrap();
        let mut out = vec![f32::NAN; 16];
        let shift = |v: usize| v as isize - 1;
        let (rows, cols) = (AxisMap::identity(4), AxisMap::identity(4));
        p.gather(
            &x4(),
            &mut out,
            rows.then(shift(top), 1),
            cols.then(shift(left), 1),
            |_, v| v,
        );
        out
    }

    #[test]
    fn crop_matches_torchvision_by_hand() {
        // F.pad(x, 1) of the 4×4 image 1..16 is 6×6 with a zero border; torchvision's
        // F.crop(padded, top=0, left=2, 4, 4) takes padded rows 0..4, cols 2..6:
        //   0  0  0  0
        //   2  3  4  0
        //   6  7  8  0
        //  10 11 12  0
        #[rustfmt::skip]
        let want = [0., 0., 0., 0., 2., 3., 4., 0., 6., 7., 8., 0., 10., 11., 12., 0.];
        assert_eq!(crop(&x4(), 1, 4, 4, 1, 0, 2), want);
        assert_eq!(crop_at(0, 2), want);
        // top = left = padding is the identity; top = 2, left = 0 shifts up and right.
        assert_eq!(crop(&x4(), 1, 4, 4, 1, 1, 1), x4());
        assert_eq!(crop_at(1, 1), x4());
        #[rustfmt::skip]
        let want = [0., 5., 6., 7., 0., 9., 10., 11., 0., 13., 14., 15., 0., 0., 0., 0.];
        assert_eq!(crop(&x4(), 1, 4, 4, 1, 2, 0), want);
        assert_eq!(crop_at(2, 0), want);
    }

    #[test]
    fn hflip_reverses_each_row_of_each_channel() {
        let x: Vec<f32> = (0..8).map(|v| v as f32).collect();
        let mut flipped = x.clone();
        hflip(&mut flipped, 2, 2, 2);
        assert_eq!(flipped, [1., 0., 3., 2., 5., 4., 7., 6.]);
        let p = Pipeline::new(&data(vec![], None), &[2, 2, 2], false).unwrap();
        let mut out = vec![f32::NAN; 8];
        let (rows, cols) = (AxisMap::identity(2), AxisMap::identity(2).then(1, -1));
        p.gather(&x, &mut out, rows, cols, |_, v| v);
        assert_eq!(out, flipped);
    }

    #[test]
    fn axis_maps_compose_and_clip_their_window() {
        let id = AxisMap::identity(5);
        // Shifted by −2 (top 0, padding 2): outputs 0, 1 are padding, 2..5 read 0..3.
        let m = id.then(-2, 1);
        assert_eq!(
            (0..5).map(|i| m.source(i)).collect::<Vec<_>>(),
            [None, None, Some(0), Some(1), Some(2)]
        );
        // Then flipped: output i reads m at 4 − i.
        let f = m.then(4, -1);
        assert_eq!(
            (0..5).map(|i| f.source(i)).collect::<Vec<_>>(),
            [Some(2), Some(1), Some(0), None, None]
        );
        // Shifted past the whole image: all padding; a flip of nothing is nothing.
        let gone = id.then(7, 1);
        assert_eq!((gone.lo, gone.hi), (0, 0));
        assert_eq!((gone.then(4, -1).lo, gone.then(4, -1).hi), (0, 0));
        assert!((0..5).all(|i| gone.source(i).is_none()));
    }

    #[test]
    fn offsets_cover_the_range_and_flip_is_fair() {
        let mut rng = rng_for(0, Purpose::Augment, 0, 0);
        let mut seen = [[false; 3]; 3];
        let mut flips = 0;
        for _ in 0..200 {
            let (t, l) = crop_offsets(&mut rng, 4, 4, 4, 1);
            seen[t][l] = true;
            flips += flip_draw(&mut rng) as usize;
        }
        assert!(seen.iter().flatten().all(|&s| s));
        assert!((70..130).contains(&flips), "{flips}");
    }

    fn data(augment: Vec<Augment>, normalize: Option<(Vec<f64>, Vec<f64>)>) -> Data {
        Data {
            dataset: crate::config::sections::Dataset::Synthetic,
            path: None,
            batch_size: Positive(2),
            eval_batch_size: None,
            train_limit: None,
            val_limit: None,
            val_split: crate::config::values::Fraction(0.0),
            shuffle: true,
            augment,
            normalize: normalize.map(|(m, s)| Normalize {
                mean: m.into_iter().map(Finite).collect(),
                std: s.into_iter().map(PositiveFloat).collect(),
            }),
            classes: None,
            samples: None,
            tokenizer: None,
            block_size: None,
        }
    }

    #[test]
    fn normalisation_per_channel() {
        let p = Pipeline::new(
            &data(vec![], Some((vec![0.5, 1.0], vec![0.5, 2.0]))),
            &[2, 1, 2],
            false,
        )
        .unwrap();
        assert_eq!(run(&p, &[0.0, 1.0, 1.0, 5.0], None), [-1.0, 1.0, 0.0, 2.0]);
        // u8 pixels are ToTensor'd first: 255 → 1.0.
        let mut x = vec![f32::NAN; 4];
        p.write(Source::U8(&[0, 255, 255, 0]), &mut x, None);
        assert_eq!(x, [-1.0, 1.0, 0.0, -0.5]);
        let e = Pipeline::new(
            &data(vec![], Some((vec![0.5], vec![0.5]))),
            &[2, 1, 2],
            false,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("samples [2, 1, 2] have 2, normalize has 1 means and 1 stds"),
            "{e}"
        );
        // Non-image samples: one pair for all elements.
        let p = Pipeline::new(&data(vec![], Some((vec![1.0], vec![2.0]))), &[3], false).unwrap();
        assert_eq!(run(&p, &[1.0, 3.0, 5.0], None), [0.0, 1.0, 2.0]);
    }

    #[test]
    fn augmentation_is_keyed_by_seed_epoch_position_and_eval_has_none() {
        let crop = Augment::RandomCrop {
            size: Positive(4),
            padding: Count(2),
        };
        let d = data(vec![crop, Augment::Hflip], Some((vec![0.5], vec![0.25])));
        let p = Pipeline::new(&d, &[1, 4, 4], true).unwrap();
        let run = |key| run(&p, &x4(), key);
        assert_eq!(run(Some((1, 2, 3))), run(Some((1, 2, 3))));
        let variants: std::collections::HashSet<Vec<u32>> = (0..20)
            .map(|pos| run(Some((1, 2, pos))).iter().map(|v| v.to_bits()).collect())
            .collect();
        assert!(variants.len() > 5);
        // Without a key (evaluation) only normalisation applies; eval pipelines drop augment.
        let want: Vec<f32> = x4().iter().map(|v| (v - 0.5) / 0.25).collect();
        assert_eq!(run(None), want);
        let eval = Pipeline::new(&d, &[1, 4, 4], false).unwrap();
        assert_eq!(super::tests::run(&eval, &x4(), Some((1, 2, 3))), want);
    }

    #[test]
    fn crop_size_must_match_and_augment_needs_images() {
        let crop = Augment::RandomCrop {
            size: Positive(3),
            padding: Count(0),
        };
        let e = Pipeline::new(&data(vec![crop], None), &[1, 4, 4], true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("random_crop size 3 must equal"), "{e}");
        let e = Pipeline::new(&data(vec![Augment::Hflip], None), &[16], true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("needs image samples"), "{e}");
    }
}
