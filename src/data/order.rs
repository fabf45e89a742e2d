//! Seeded randomness as pure functions of (seed, purpose, a, b): the epoch order, the
//! augmentation of each sample and the validation split need no RNG state, so a run resumes
//! from (epoch, batch cursor) alone and gives the same bytes as one that never stopped.

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// What a generator is for; part of its key so the streams never coincide.
#[derive(Clone, Copy)]
#[repr(u64)]
pub(crate) enum Purpose {
    EpochOrder = 1,
    Augment = 2,
    ValSplit = 3,
    SyntheticPrototypes = 4,
    SyntheticTrain = 5,
    SyntheticTest = 6,
    TextWindows = 7,
}

/// A ChaCha8 generator keyed by all four numbers (little-endian into the 32-byte seed), so it
/// is portable across platforms and independent of any other generator's position.
pub(crate) fn rng_for(seed: u64, purpose: Purpose, a: u64, b: u64) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    for (chunk, v) in key.chunks_exact_mut(8).zip([seed, purpose as u64, a, b]) {
        chunk.copy_from_slice(&v.to_le_bytes());
    }
    ChaCha8Rng::from_seed(key)
}

/// A uniform integer in 0..n (n ≥ 1) by rejection, so it does not depend on how a rand
/// version maps words to ranges.
pub(crate) fn below(rng: &mut ChaCha8Rng, n: u64) -> u64 {
    debug_assert!(n > 0);
    let n = n.max(1);
    // The largest multiple of n that fits, so every residue is equally likely.
    let zone = u64::MAX - (u64::MAX % n + 1) % n;
    loop {
        let v = rng.next_u64();
        if v <= zone {
            return v % n;
        }
    }
}

/// A uniform f64 in [0, 1) from 53 random bits.
pub(crate) fn unit(rng: &mut ChaCha8Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// Fisher–Yates over 0..n with the generator given.
pub(crate) fn permutation(n: usize, rng: &mut ChaCha8Rng) -> Vec<usize> {
    let mut p: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = below(rng, i as u64 + 1) as usize;
        p.swap(i, j);
    }
    p
}

/// The order in which epoch `epoch` visits positions 0..n: a pure function of (seed, epoch),
/// or file order without `shuffle`.
pub fn epoch_order(n: usize, seed: u64, epoch: u64, shuffle: bool) -> Vec<usize> {
    if !shuffle {
        return (0..n).collect();
    }
    permutation(n, &mut rng_for(seed, Purpose::EpochOrder, epoch, 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_order_is_a_permutation() {
        for n in [0, 1, 2, 7, 1000] {
            let mut p = epoch_order(n, 5, 3, true);
            p.sort_unstable();
            assert_eq!(p, (0..n).collect::<Vec<_>>());
        }
    }

    #[test]
    fn epoch_order_is_a_pure_function_of_seed_and_epoch() {
        assert_eq!(epoch_order(500, 7, 2, true), epoch_order(500, 7, 2, true));
        assert_ne!(epoch_order(500, 7, 2, true), epoch_order(500, 7, 3, true));
        assert_ne!(epoch_order(500, 7, 2, true), epoch_order(500, 8, 2, true));
        assert_ne!(epoch_order(500, 7, 0, true), (0..500).collect::<Vec<_>>());
    }

    #[test]
    fn no_shuffle_keeps_file_order() {
        assert_eq!(epoch_order(5, 7, 9, false), vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn below_stays_in_range_and_reaches_every_value() {
        let mut rng = rng_for(1, Purpose::Augment, 0, 0);
        let mut seen = [0usize; 3];
        for _ in 0..300 {
            seen[below(&mut rng, 3) as usize] += 1;
        }
        assert!(seen.iter().all(|&c| c > 50), "{seen:?}");
        assert_eq!(below(&mut rng, 1), 0);
    }

    #[test]
    fn streams_differ_by_purpose() {
        let a = rng_for(1, Purpose::Augment, 0, 0).next_u64();
        let b = rng_for(1, Purpose::EpochOrder, 0, 0).next_u64();
        assert_ne!(a, b);
    }
}
