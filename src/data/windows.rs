//! `Windows`: the samples of one split of a text, windows of T + 1 consecutive tokens over a
//! shared token list (see `text` for what an epoch and validation read).

use std::sync::Arc;

use super::order::{Purpose, below, rng_for};
use super::vocab::Vocab;

/// The windows of one split of a text: token range `start..end` of `tokens`; window i starts
/// at token `start + i·stride`.
#[derive(Clone)]
pub(crate) struct Windows {
    pub tokens: Arc<Vec<u32>>,
    pub start: usize,
    pub end: usize,
    /// T: input tokens per window (a window holds T + 1).
    pub block: usize,
    /// 1 for training (every offset is a window), T for validation (side by side).
    pub stride: usize,
    /// Windows the split holds.
    pub len: usize,
    /// Windows in one training epoch.
    pub per_epoch: usize,
    /// [T], the sample shape.
    pub shape: Vec<usize>,
    pub vocab: Arc<Vocab>,
}

impl Windows {
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn per_epoch(&self) -> usize {
        self.per_epoch
    }
    pub fn block(&self) -> usize {
        self.block
    }
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    /// The first `k` windows (at most all of them), an epoch of at most `k`.
    pub fn first(&self, k: usize) -> Windows {
        let len = self.len.min(k);
        Windows {
            len,
            per_epoch: self.per_epoch.min(len),
            ..self.clone()
        }
    }
    /// The T input ids of window `i`.
    pub fn input(&self, i: usize) -> &[u32] {
        let s = self.start + i * self.stride;
        &self.tokens[s..s + self.block]
    }
    /// The T label ids of window `i`: each position's next token.
    pub fn labels(&self, i: usize) -> &[u32] {
        let s = self.start + i * self.stride + 1;
        &self.tokens[s..s + self.block]
    }

    /// The windows training epoch `epoch` visits, in order: `per_epoch` uniform draws of a
    /// window (a pure function of (seed, epoch)), or without `shuffle` the side-by-side
    /// windows 0, T, 2T, ... from the start.
    pub fn epoch_starts(&self, seed: u64, epoch: u64, shuffle: bool) -> Vec<usize> {
        if !shuffle {
            return (0..self.per_epoch).map(|i| i * self.block).collect();
        }
        let mut rng = rng_for(seed, Purpose::TextWindows, epoch, 0);
        (0..self.per_epoch)
            .map(|_| below(&mut rng, self.len as u64) as usize)
            .collect()
    }
}
