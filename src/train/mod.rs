//! The training run: the loop (`fit`) and what surrounds the step itself: the run directory,
//! the learning-rate schedule, running and evaluation metrics, the logger (TensorBoard event
//! files and metrics.csv, on its own thread), the progress display, evaluation and inference
//! with a checkpoint, text generation, and signals.

mod csv;
pub mod decode;
pub mod evaluate;
mod events;
pub mod fit;
pub mod generate;
pub mod inference;
pub mod logger;
pub mod metrics;
pub mod progress;
pub mod run_dir;
pub mod run_lock;
pub mod schedule;
pub mod signals;
