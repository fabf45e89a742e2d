//! Synthetic data that a model can learn: each class has a seeded random prototype (uniform in
//! [0, 1) per element) and its samples are the prototype plus Gaussian noise (σ = 0.1), labels
//! drawn uniformly. For a model of integer inputs the prototypes are ids below the number of
//! classes, and noise replaces an id by a uniform one with probability 0.1 (an embedding
//! reading them needs a vocabulary of at least that many). Train and test share the prototypes
//! but draw samples from separate streams; the test split has ⌈samples / 4⌉ samples.

use std::sync::Arc;

use rand_chacha::ChaCha8Rng;

use super::DataError;
use super::order::{Purpose, below, rng_for, unit};
use super::split::{Pixels, Store};
use crate::host_memory;

const NOISE: f64 = 0.1;

/// Elements of synthetic data we are willing to allocate (the config refuses more, at the key).
const MAX_ELEMENTS: usize = crate::config::values::MAX_SYNTHETIC_ELEMENTS;

/// (train, test) stores of `samples` and ⌈samples/4⌉ samples of `shape`; of integer ids below
/// `classes` where `ids`.
pub(crate) fn generate(
    shape: &[usize],
    samples: usize,
    classes: usize,
    seed: u64,
    ids: bool,
) -> Result<(Store, Store), DataError> {
    let len: usize = shape.iter().product();
    let total = samples
        .checked_add(samples.div_ceil(4))
        .and_then(|n| n.max(classes).checked_mul(len));
    if total.is_none_or(|t| t > MAX_ELEMENTS) {
        return Err(DataError::Config(format!(
            "synthetic data of {samples} samples (and {classes} prototypes) of shape {shape:?} \
             is too large: lower data.samples"
        )));
    }
    // All of it at once against what the host has (each buffer alone could fit while all of
    // them do not), then each buffer fallibly.
    let rows = (samples + samples.div_ceil(4)) as u64;
    let bytes = 4 * (rows * len as u64 + classes as u64 * len as u64 + rows);
    let short = |e: host_memory::MemoryError| {
        DataError::Config(format!(
            "not enough host memory for synthetic data of {samples} samples of shape {shape:?}: \
             {e}; lower data.samples"
        ))
    };
    host_memory::check(bytes).map_err(short)?;
    let mut rng = rng_for(seed, Purpose::SyntheticPrototypes, 0, 0);
    let draw = |rng: &mut ChaCha8Rng| match ids {
        true => below(rng, classes as u64) as f32,
        false => unit(rng) as f32,
    };
    let protos: Vec<f32> = (0..classes * len).map(|_| draw(&mut rng)).collect();
    let names = Arc::new((0..classes).map(|i| i.to_string()).collect::<Vec<_>>());
    let make = |n: usize, purpose: Purpose| -> Result<Store, DataError> {
        let mut rng = rng_for(seed, purpose, 0, 0);
        let fallible = |e| short(host_memory::MemoryError::Short(e));
        let mut pixels = host_memory::try_reserved(n * len).map_err(fallible)?;
        let mut labels = host_memory::try_reserved(n).map_err(fallible)?;
        for _ in 0..n {
            let k = below(&mut rng, classes as u64) as usize;
            labels.push(k as u32);
            for &p in &protos[k * len..(k + 1) * len] {
                pixels.push(match ids {
                    true if unit(&mut rng) < NOISE => below(&mut rng, classes as u64) as f32,
                    true => p,
                    false => p + (NOISE * gaussian(&mut rng)) as f32,
                });
            }
        }
        Ok(Store {
            pixels: Pixels::F32(pixels),
            labels,
            shape: shape.to_vec(),
            class_names: names.clone(),
        })
    };
    Ok((
        make(samples, Purpose::SyntheticTrain)?,
        make(samples.div_ceil(4), Purpose::SyntheticTest)?,
    ))
}

/// A standard normal draw (Box–Muller), portable because it uses only our own `unit`.
fn gaussian(rng: &mut ChaCha8Rng) -> f64 {
    let u1 = 1.0 - unit(rng); // (0, 1], so ln is finite
    let u2 = unit(rng);
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f32s(s: &Store) -> &[f32] {
        match &s.pixels {
            Pixels::F32(p) => p,
            Pixels::U8(_) => panic!("synthetic data is f32"),
        }
    }

    /// For integer inputs: ids below the classes, mostly each class's own prototype.
    #[test]
    fn integer_inputs_are_ids_of_their_class() {
        let (train, _) = generate(&[12], 300, 5, 4, true).unwrap();
        let x = f32s(&train);
        assert!(
            x.iter()
                .all(|&v| v.fract() == 0.0 && (0.0..5.0).contains(&v))
        );
        // Two samples of one class agree at about 0.9² + 0.1²/5 of their positions.
        let class: Vec<usize> = (0..300).filter(|&i| train.labels[i] == 2).collect();
        let (mut same, mut pairs) = (0, 0);
        for w in class.windows(2) {
            let (a, b) = (&x[w[0] * 12..][..12], &x[w[1] * 12..][..12]);
            same += a.iter().zip(b).filter(|(p, q)| p == q).count();
            pairs += 12;
        }
        let agree = same as f64 / pairs as f64;
        assert!((0.7..0.95).contains(&agree), "{agree}");
    }

    #[test]
    fn sizes_labels_and_determinism() {
        let (train, test) = generate(&[2, 3], 40, 4, 9, false).unwrap();
        assert_eq!(train.len(), 40);
        assert_eq!(test.len(), 10);
        assert_eq!(f32s(&train).len(), 40 * 6);
        assert!(train.labels.iter().all(|&l| l < 4));
        let (again, _) = generate(&[2, 3], 40, 4, 9, false).unwrap();
        assert_eq!(f32s(&train), f32s(&again));
        let (other, _) = generate(&[2, 3], 40, 4, 10, false).unwrap();
        assert_ne!(f32s(&train), f32s(&other));
        // Train and test come from different streams.
        assert_ne!(&f32s(&train)[..60], f32s(&test));
    }

    #[test]
    fn too_large_is_an_error_not_an_abort() {
        let e = generate(&[1 << 20, 1 << 20], 1 << 30, 10, 0, false)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("too large"), "{e}");
    }

    #[test]
    fn nearest_prototype_classifies_test_samples() {
        // Learnable: the class mean of the training samples classifies the test samples.
        let (train, test) = generate(&[16], 400, 5, 3, false).unwrap();
        let (tp, sp) = (f32s(&train), f32s(&test));
        let mut means = vec![0f32; 5 * 16];
        let mut counts = [0f32; 5];
        for (i, &l) in train.labels.iter().enumerate() {
            counts[l as usize] += 1.0;
            for j in 0..16 {
                means[l as usize * 16 + j] += tp[i * 16 + j];
            }
        }
        for k in 0..5 {
            for j in 0..16 {
                means[k * 16 + j] /= counts[k].max(1.0);
            }
        }
        let correct = test
            .labels
            .iter()
            .enumerate()
            .filter(|&(i, &l)| {
                let d = |k: usize| -> f32 {
                    (0..16)
                        .map(|j| (sp[i * 16 + j] - means[k * 16 + j]).powi(2))
                        .sum()
                };
                (0..5).min_by(|&a, &b| d(a).total_cmp(&d(b))) == Some(l as usize)
            })
            .count();
        assert!(
            correct as f64 >= 0.95 * test.len() as f64,
            "{correct}/{}",
            test.len()
        );
    }
}
