//! The pieces of a training run that surround the step itself: the learning-rate schedule,
//! running and evaluation metrics, the logger (TensorBoard event files and metrics.csv, on its
//! own thread) and the progress display. The training loop that drives them will live here too.

pub mod logger;
pub mod metrics;
pub mod progress;
pub mod schedule;
