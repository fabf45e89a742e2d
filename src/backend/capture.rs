//! What a capture brings back, the same from either backend.

/// The tensors one `Exec::capture` copied, as they were after the step before it.
#[derive(Clone, Debug, PartialEq)]
pub struct Captured {
    /// Which capture this is: 0 for an executor's first, then one more per capture.
    pub seq: u64,
    /// One vector per tensor, in the order `capture` named them.
    pub values: Vec<Vec<f32>>,
}
