//! Parameter initialisation, deterministic from `run.seed`.
//!
//! The rule: parameter `name` draws from ChaCha8 seeded with `run.seed`, on stream
//! FNV-1a-64(name). A parameter's values therefore depend only on the seed and its own name:
//! adding or removing another layer never changes them, and the stream is portable (ChaCha's
//! output is specified; no platform or crate-version dependent sampler is involved). Uniform
//! draws take the top 24 bits of each u32 (`u = bits · 2⁻²⁴` in [0, 1)); normal draws use the
//! Box–Muller transform of two such uniforms.

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

/// How a parameter starts. PyTorch's defaults: conv and linear weights
/// kaiming_uniform(a = √5), i.e. U(±1/√fan_in), biases U(±1/√fan_in); norm weights 1, biases 0;
/// running mean 0, running var 1; embeddings N(0, 1).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Init {
    Zeros,
    Ones,
    Uniform { bound: f64 },
    Normal { std: f64 },
}

impl Init {
    /// PyTorch's default for conv/linear weights and biases given the fan-in.
    pub fn fan_in_uniform(fan_in: usize) -> Init {
        Init::Uniform {
            bound: 1.0 / (fan_in as f64).sqrt(),
        }
    }

    /// The initial values of parameter `name` under `seed`.
    pub fn values(self, seed: u64, name: &str, numel: usize) -> Vec<f32> {
        match self {
            Init::Zeros => vec![0.0; numel],
            Init::Ones => vec![1.0; numel],
            Init::Uniform { bound } => {
                let mut rng = stream(seed, name);
                (0..numel)
                    .map(|_| ((2.0 * unit(&mut rng) - 1.0) * bound) as f32)
                    .collect()
            }
            Init::Normal { std } => {
                let mut rng = stream(seed, name);
                (0..numel)
                    .map(|_| {
                        let u1 = 1.0 - unit(&mut rng); // (0, 1]: ln is finite
                        let u2 = unit(&mut rng);
                        (std * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
                    })
                    .collect()
            }
        }
    }
}

fn stream(seed: u64, name: &str) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(fnv1a64(name.as_bytes()));
    rng
}

fn unit(rng: &mut ChaCha8Rng) -> f64 {
    (rng.next_u32() >> 8) as f64 / (1u32 << 24) as f64
}

/// FNV-1a, 64-bit: a fixed, documented hash (std's hasher may change between releases).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_and_name_same_values_others_differ() {
        let a = Init::Uniform { bound: 0.5 }.values(7, "fc.weight", 100);
        assert_eq!(a, Init::Uniform { bound: 0.5 }.values(7, "fc.weight", 100));
        assert_ne!(a, Init::Uniform { bound: 0.5 }.values(8, "fc.weight", 100));
        assert_ne!(a, Init::Uniform { bound: 0.5 }.values(7, "fc.bias", 100));
        assert!(a.iter().all(|x| x.abs() <= 0.5));
    }

    #[test]
    fn uniform_and_normal_have_the_right_moments() {
        let n = 200_000;
        let u = Init::Uniform { bound: 1.0 }.values(1, "u", n);
        let mean = u.iter().map(|&x| x as f64).sum::<f64>() / n as f64;
        let var = u.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(
            mean.abs() < 0.01 && (var - 1.0 / 3.0).abs() < 0.01,
            "{mean} {var}"
        );
        let g = Init::Normal { std: 2.0 }.values(1, "g", n);
        let mean = g.iter().map(|&x| x as f64).sum::<f64>() / n as f64;
        let var = g.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(
            mean.abs() < 0.02 && (var - 4.0).abs() < 0.05,
            "{mean} {var}"
        );
    }

    #[test]
    fn fnv_matches_the_published_vector() {
        assert_eq!(fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
    }
}
