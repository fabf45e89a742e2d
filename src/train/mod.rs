//! The training run: the loop (`fit`), its run directory, evaluation, signals.

pub mod evaluate;
pub mod fit;
pub mod run_dir;
pub mod signals;
pub mod inference;
