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

use rand_chacha::ChaCha8Rng;

use super::DataError;
use super::order::{Purpose, below, rng_for, unit};
use crate::config::sections::{Augment, Data};

#[derive(Clone, Debug)]
enum Step {
    Crop { size: usize, padding: usize },
    Hflip,
}

/// The validated transforms of one loader.
#[derive(Clone, Debug)]
pub(crate) struct Pipeline {
    shape: Vec<usize>,
    steps: Vec<Step>,
    /// Per-channel (mean, std), or one pair for non-image samples.
    norm: Option<(Vec<f32>, Vec<f32>)>,
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
        Ok(Pipeline {
            shape: shape.to_vec(),
            steps,
            norm,
        })
    }

    /// Transforms one sample in place: the augmentations of training sample `position` of
    /// `epoch` (none when `augment` is None, i.e. evaluation), then normalisation.
    pub(crate) fn apply(&self, x: &mut [f32], augment: Option<(u64, u64, u64)>) {
        if let (Some((seed, epoch, position)), false) = (augment, self.steps.is_empty()) {
            let &[c, h, w] = self.shape.as_slice() else {
                return;
            };
            let mut rng = rng_for(seed, Purpose::Augment, epoch, position);
            for s in &self.steps {
                match *s {
                    Step::Crop { size, padding } => {
                        let (top, left) = crop_offsets(&mut rng, h, w, size, padding);
                        let out = crop(x, c, h, w, padding, top, left);
                        x.copy_from_slice(&out);
                    }
                    Step::Hflip => {
                        if flip_draw(&mut rng) {
                            hflip(x, c, h, w);
                        }
                    }
                }
            }
        }
        if let Some((mean, std)) = &self.norm {
            normalize(x, mean, std);
        }
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

/// The h×w window at (top, left) of `x` ([c, h, w]) zero-padded by `pad` on every side.
fn crop(x: &[f32], c: usize, h: usize, w: usize, pad: usize, top: usize, left: usize) -> Vec<f32> {
    let mut out = vec![0.0; c * h * w];
    for ch in 0..c {
        for y in 0..h {
            // Row in the source: top + y − pad, if inside.
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
    if per == 0 {
        return;
    }
    for (ch, plane) in x.chunks_mut(per).enumerate().take(mean.len()) {
        for v in plane {
            *v = (*v - mean[ch]) / std[ch];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::sections::Normalize;
    use crate::config::values::{Count, Finite, Positive, PositiveFloat};

    fn x4() -> Vec<f32> {
        (1..=16).map(|v| v as f32).collect()
    }

    #[test]
    fn crop_matches_torchvision_by_hand() {
        // F.pad(x, 1) of the 4×4 image 1..16 is 6×6 with a zero border; torchvision's
        // F.crop(padded, top=0, left=2, 4, 4) takes padded rows 0..4, cols 2..6:
        //   0  0  0  0
        //   2  3  4  0
        //   6  7  8  0
        //  10 11 12  0
        let out = crop(&x4(), 1, 4, 4, 1, 0, 2);
        #[rustfmt::skip]
        let want = [0., 0., 0., 0., 2., 3., 4., 0., 6., 7., 8., 0., 10., 11., 12., 0.];
        assert_eq!(out, want);
        // top = left = padding is the identity; top = 2, left = 0 shifts up and right.
        assert_eq!(crop(&x4(), 1, 4, 4, 1, 1, 1), x4());
        #[rustfmt::skip]
        let want = [0., 5., 6., 7., 0., 9., 10., 11., 0., 13., 14., 15., 0., 0., 0., 0.];
        assert_eq!(crop(&x4(), 1, 4, 4, 1, 2, 0), want);
    }

    #[test]
    fn hflip_reverses_each_row_of_each_channel() {
        let mut x: Vec<f32> = (0..8).map(|v| v as f32).collect();
        hflip(&mut x, 2, 2, 2);
        assert_eq!(x, [1., 0., 3., 2., 5., 4., 7., 6.]);
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
        let mut x = vec![0.0, 1.0, 1.0, 5.0];
        p.apply(&mut x, None);
        assert_eq!(x, [-1.0, 1.0, 0.0, 2.0]);
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
        let mut x = vec![1.0, 3.0, 5.0];
        p.apply(&mut x, None);
        assert_eq!(x, [0.0, 1.0, 2.0]);
    }

    #[test]
    fn augmentation_is_keyed_by_seed_epoch_position_and_eval_has_none() {
        let crop = Augment::RandomCrop {
            size: Positive(4),
            padding: Count(2),
        };
        let d = data(vec![crop, Augment::Hflip], Some((vec![0.5], vec![0.25])));
        let p = Pipeline::new(&d, &[1, 4, 4], true).unwrap();
        let run = |key| {
            let mut x = x4();
            p.apply(&mut x, key);
            x
        };
        assert_eq!(run(Some((1, 2, 3))), run(Some((1, 2, 3))));
        let variants: std::collections::HashSet<Vec<u32>> = (0..20)
            .map(|pos| run(Some((1, 2, pos))).iter().map(|v| v.to_bits()).collect())
            .collect();
        assert!(variants.len() > 5);
        // Without a key (evaluation) only normalisation applies; eval pipelines drop augment.
        let want: Vec<f32> = x4().iter().map(|v| (v - 0.5) / 0.25).collect();
        assert_eq!(run(None), want);
        let eval = Pipeline::new(&d, &[1, 4, 4], false).unwrap();
        let mut x = x4();
        eval.apply(&mut x, Some((1, 2, 3)));
        assert_eq!(x, want);
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
