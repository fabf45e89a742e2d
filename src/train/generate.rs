//! `trainer generate`: autoregressive sampling from a language model's checkpoint. Sampling is
//! a pure function of (checkpoint, prompt, settings, seed).
//!
//! With the key/value cache (the default), the decode-step model (train/decode.rs) runs one
//! position per token: each token's keys and values stay on the device, so a token costs one
//! position, not the window. The context (the prompt, then every sampled token) fills positions
//! from 0; a learned position table ends at `block_size`, so when the context no longer fits,
//! the cache is refilled from the last `block_size / 2` tokens at positions 0.. (a context
//! shift: `block_size / 2` positions every `block_size / 2` tokens, one more position per token
//! on average) and sampling goes on. Up to `block_size` tokens this is the uncached model's
//! output (up to float rounding); past it, the window restarts at half its length where the
//! uncached model slides it by one token.
//!
//! Without the cache (`--no-cache`, or a model that has none: no causal attention, not a model
//! of token ids), each token runs the whole window through the evaluation model, nanoGPT's
//! `generate`: the context fills the window from the left, the logits at its last position give
//! the next token, and past `block_size` tokens the window keeps the last `block_size` (causal
//! attention makes the padding after the context invisible to it).
//!
//! The first token's logits from the cache are checked against the full window's: a model that
//! mixes positions other than through causal attention disagrees, and generate then samples
//! without the cache (with a note on stderr).

use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::backend::gpu::Gpu;
use crate::config::{Config, Dataset};
use crate::data::Vocab;
use crate::train::decode::DecodeModel;
use crate::train::evaluate::EvalModel;
use crate::train::inference::weights_for;

/// What to sample.
pub struct Sampling<'a> {
    pub prompt: &'a str,
    pub tokens: usize,
    /// Logits are divided by it; 0 takes the most likely token.
    pub temperature: f64,
    /// Only the k most likely tokens are drawn from; None: all.
    pub top_k: Option<usize>,
    pub seed: u64,
    /// Use the key/value cache where the model has one (false: the whole window every token).
    pub cache: bool,
}

#[derive(Debug, Serialize)]
pub struct Generated {
    pub checkpoint: PathBuf,
    pub device: String,
    pub prompt: String,
    /// The sampled continuation (without the prompt).
    pub text: String,
    pub tokens: usize,
    /// Whether the key/value cache gave the logits.
    pub cached: bool,
    /// Context shifts: times the cache was refilled from the last block_size / 2 tokens.
    pub context_shifts: usize,
    pub seconds: f64,
}

/// The decode-step model with the context it has cached: `context[start..start + filled]` at
/// positions 0.. .
pub struct Cached<'g> {
    pub model: DecodeModel<'g>,
    start: usize,
    filled: usize,
    pub shifts: usize,
}

impl<'g> Cached<'g> {
    /// A cache for a context that begins with `prompt` tokens: the last `positions` of them.
    pub fn new(model: DecodeModel<'g>, prompt: usize) -> Cached<'g> {
        let start = prompt.saturating_sub(model.positions);
        Cached {
            model,
            start,
            filled: 0,
            shifts: 0,
        }
    }

    /// The first token of the window the cache holds (its position 0).
    pub fn start(&self) -> usize {
        self.start
    }

    /// The logits of the token after `context`, which extends the context of the last call:
    /// the tokens not yet cached run one position each; past the model's positions, the cache
    /// is refilled from the last `positions / 2` tokens first (a context shift).
    pub fn next(&mut self, context: &[u32]) -> Result<Vec<f32>, String> {
        let p = self.model.positions;
        if context.len() - self.start > p {
            self.start = context.len() - (p / 2).max(1);
            self.filled = 0;
            self.shifts += 1;
        }
        while self.start + self.filled < context.len() {
            let token = context[self.start + self.filled];
            self.model.push(token, self.filled)?;
            self.filled += 1;
        }
        self.model.logits()
    }
}

/// The logits of the token after `context` from the whole window (nanoGPT's `generate`): the
/// last `window` tokens from the left, padding after them.
pub fn window_logits(
    m: &mut EvalModel,
    context: &[u32],
    window: usize,
) -> Result<Vec<f32>, String> {
    let ctx = &context[context.len().saturating_sub(window)..];
    let mut features = vec![0.0f32; window];
    for (f, &id) in features.iter_mut().zip(ctx) {
        *f = id as f32;
    }
    let logits = m.logits(&features)?;
    let last = ctx.len().saturating_sub(1);
    Ok(logits[last * m.classes..(last + 1) * m.classes].to_vec())
}

/// ‖a − b‖ / ‖b‖.
pub fn relative_error(a: &[f32], b: &[f32]) -> f64 {
    let (mut diff, mut norm) = (0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        diff += (x as f64 - y as f64).powi(2);
        norm += (y as f64).powi(2);
    }
    if a.len() != b.len() || diff.is_nan() {
        return f64::INFINITY;
    }
    (diff / norm.max(f64::MIN_POSITIVE)).sqrt()
}

/// How far the cache's first logits may be from the full window's before generate stops
/// trusting it (float rounding is ~1e-6).
const CACHE_TOLERANCE: f64 = 1e-3;

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
    let mut full = EvalModel::new(cfg, gpu, 1).map_err(|d| d.message)?;
    let (weights, at) = weights_for(full.params(), checkpoint)?;
    full.load(&weights)
        .map_err(|e| format!("{}: {e}", at.display()))?;
    let vocab = [at.as_path(), checkpoint]
        .iter()
        .find_map(|p| Vocab::load(p).ok())
        .ok_or_else(|| {
            format!(
                "{}: no vocab.json beside the checkpoint (a run of text data writes one)",
                at.display()
            )
        })?;
    if vocab.len() != full.classes {
        return Err(format!(
            "{}: the vocabulary has {} symbols but the model {} logits",
            at.display(),
            vocab.len(),
            full.classes
        ));
    }
    let mut context: Vec<u32> = vocab.encode(s.prompt)?;
    if context.is_empty() {
        // nanoGPT starts from a newline.
        context = vocab.encode("\n").unwrap_or_else(|_| vec![0]);
    }
    let window = cfg.model.input.shape.iter().product::<usize>();
    let mut cache = match s.cache {
        true => match DecodeModel::new(cfg, gpu) {
            Ok(mut m) => {
                m.load(&weights)
                    .map_err(|e| format!("{}: {e}", at.display()))?;
                Some(Cached::new(m, context.len()))
            }
            Err(d) => {
                crate::errln!(
                    "note: no key/value cache for this model ({}); every token runs the whole window",
                    d.message
                );
                None
            }
        },
        false => None,
    };
    let mut rng = ChaCha8Rng::seed_from_u64(s.seed);
    let mut out: Vec<u32> = Vec::with_capacity(s.tokens);
    let mut shifts = 0;
    for n in 0..s.tokens {
        let mut logits = match &mut cache {
            Some(c) => c.next(&context)?,
            None => window_logits(&mut full, &context, window)?,
        };
        if n == 0 && cache.is_some() {
            let want = window_logits(&mut full, &context, window)?;
            let e = relative_error(&logits, &want);
            if e > CACHE_TOLERANCE {
                crate::errln!(
                    "note: the key/value cache's logits differ from the whole window's by {e:.1e} \
                     (the model mixes positions other than through causal attention); \
                     every token runs the whole window"
                );
                cache = None;
                logits = want;
            }
        }
        let next = sample(&logits, s.temperature, s.top_k, rng.random::<f64>()) as u32;
        context.push(next);
        out.push(next);
    }
    if let Some(c) = &cache {
        shifts = c.shifts;
    }
    Ok(Generated {
        checkpoint: at,
        device: full.device(),
        prompt: s.prompt.to_string(),
        text: vocab.decode(&out)?,
        tokens: out.len(),
        cached: cache.is_some(),
        context_shifts: shifts,
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
