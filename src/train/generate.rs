//! `trainer generate`: autoregressive sampling from a language model's checkpoint. The context
//! (the prompt, then every sampled token) fills the evaluation model's window from the left, and
//! the logits at its last position give the next token; past `block_size` tokens the window keeps
//! the last `block_size`, as nanoGPT's `generate`. Causal attention makes the padding after the
//! context invisible to it. Sampling is a pure function of (checkpoint, prompt, settings, seed).
//!
//! Each token runs the window through the model (no key/value cache yet: a token costs the whole
//! window, not one position).

use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::backend::gpu::Gpu;
use crate::config::{Config, Dataset};
use crate::data::Vocab;
use crate::train::inference::model_at;

/// What to sample.
pub struct Sampling<'a> {
    pub prompt: &'a str,
    pub tokens: usize,
    /// Logits are divided by it; 0 takes the most likely token.
    pub temperature: f64,
    /// Only the k most likely tokens are drawn from; None: all.
    pub top_k: Option<usize>,
    pub seed: u64,
}

#[derive(Debug, Serialize)]
pub struct Generated {
    pub checkpoint: PathBuf,
    pub device: String,
    pub prompt: String,
    /// The sampled continuation (without the prompt).
    pub text: String,
    pub tokens: usize,
    pub seconds: f64,
}

/// The index drawn from `logits` under `s`'s temperature and top-k, with the uniform `u` in
/// [0, 1): ties keep the lower index, and the probabilities are summed in index order.
pub fn sample(logits: &[f32], temperature: f64, top_k: Option<usize>, u: f64) -> usize {
    let argmax = |l: &[f32]| {
        (0..l.len())
            .max_by(|&a, &b| l[a].total_cmp(&l[b]).then(b.cmp(&a)))
            .unwrap_or(0)
    };
    if temperature == 0.0 {
        return argmax(logits);
    }
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    let k = top_k.unwrap_or(logits.len()).clamp(1, logits.len().max(1));
    let mut kept: Vec<usize> = order[..k].to_vec();
    kept.sort_unstable();
    let m = logits[order[0]] as f64;
    let weights: Vec<f64> = kept
        .iter()
        .map(|&i| ((logits[i] as f64 - m) / temperature).exp())
        .collect();
    let total: f64 = weights.iter().sum();
    let mut acc = 0.0;
    for (&i, w) in kept.iter().zip(&weights) {
        acc += w / total;
        if u < acc {
            return i;
        }
    }
    *kept.last().unwrap_or(&0)
}

pub fn generate(
    cfg: &Config,
    gpu: Option<&Gpu>,
    checkpoint: &Path,
    s: &Sampling,
) -> Result<Generated, String> {
    if cfg.data.dataset != Dataset::Text {
        return Err("generate samples text: the config's data must be dataset = \"text\"".into());
    }
    let started = std::time::Instant::now();
    let (mut m, at) = model_at(cfg, gpu, checkpoint, 1)?;
    let vocab = [at.as_path(), checkpoint]
        .iter()
        .find_map(|p| Vocab::load(p).ok())
        .ok_or_else(|| {
            format!(
                "{}: no vocab.json beside the checkpoint (a run of text data writes one)",
                at.display()
            )
        })?;
    if vocab.len() != m.classes {
        return Err(format!(
            "{}: the vocabulary has {} symbols but the model {} logits",
            at.display(),
            vocab.len(),
            m.classes
        ));
    }
    let mut context: Vec<u32> = vocab.encode(s.prompt)?;
    if context.is_empty() {
        // nanoGPT starts from a newline.
        context = vocab.encode("\n").unwrap_or_else(|_| vec![0]);
    }
    let window = cfg.model.input.shape.iter().product::<usize>();
    let mut rng = ChaCha8Rng::seed_from_u64(s.seed);
    let mut out: Vec<u32> = Vec::with_capacity(s.tokens);
    let mut features = vec![0.0f32; window];
    for _ in 0..s.tokens {
        let ctx = &context[context.len().saturating_sub(window)..];
        features.fill(0.0);
        for (f, &id) in features.iter_mut().zip(ctx) {
            *f = id as f32;
        }
        let logits = m.logits(&features)?;
        let last = ctx.len() - 1;
        let row = &logits[last * m.classes..(last + 1) * m.classes];
        let next = sample(row, s.temperature, s.top_k, rng.random::<f64>()) as u32;
        context.push(next);
        out.push(next);
    }
    Ok(Generated {
        checkpoint: at,
        device: m.device(),
        prompt: s.prompt.to_string(),
        text: vocab.decode(&out)?,
        tokens: out.len(),
        seconds: started.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_largest_and_the_lower_index_on_ties() {
        assert_eq!(sample(&[0.1, 2.0, -1.0, 2.0], 0.0, None, 0.5), 1);
    }

    #[test]
    fn top_k_draws_only_from_the_k_largest_in_proportion() {
        let logits = [0.0f32, 3.0, 1.0, 2.5, -4.0];
        // Softmax over {1, 2, 3} at temperature 1, in index order.
        let e = [3.0f64.exp(), 1.0f64.exp(), 2.5f64.exp()];
        let z: f64 = e.iter().sum();
        let (p1, p2) = (e[0] / z, e[1] / z);
        let draw = |u| sample(&logits, 1.0, Some(3), u);
        assert_eq!(draw(0.0), 1);
        assert_eq!(draw(p1 - 1e-9), 1);
        assert_eq!(draw(p1 + 1e-9), 2);
        assert_eq!(draw(p1 + p2 + 1e-9), 3);
        assert_eq!(draw(0.999_999_999), 3);
        // Counting 20,000 draws: each kept token near its probability, the others never.
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut counts = [0usize; 5];
        for _ in 0..20_000 {
            counts[sample(&logits, 1.0, Some(3), rng.random())] += 1;
        }
        assert_eq!(counts[0] + counts[4], 0);
        for (i, p) in [(1, p1), (2, p2), (3, e[2] / z)] {
            let f = counts[i] as f64 / 20_000.0;
            assert!((f - p).abs() < 0.015, "token {i}: {f} vs {p}");
        }
        // A high temperature flattens: token 2 is drawn more often than at 1.
        let hot = (0..20_000)
            .filter(|_| sample(&logits, 5.0, Some(3), rng.random()) == 2)
            .count();
        assert!(hot as f64 / 20_000.0 > p2 + 0.1);
    }
}
