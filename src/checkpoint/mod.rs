//! How a training checkpoint is written and read (when to save is the training loop's call).
//!
//! A checkpoint is a directory `checkpoints/step-000001234/` holding
//! - `model.safetensors`: the weights under PyTorch state_dict names and layouts, F32 (I64 for
//!   tensors marked integer, such as `num_batches_tracked`), so `safetensors.torch.load_file` +
//!   `load_state_dict(strict=True)` accept it;
//! - `optimizer.safetensors`: optimizer state (`<param>.momentum_buffer`, `.exp_avg`, ...), F32;
//! - `state.json`: `TrainState`, everything else a resume needs;
//! - `checksums.json`: the SHA-256 of the three files above, because safetensors has no
//!   checksum and a flipped bit in a weight would otherwise load silently.
//!
//! `store.rs` writes them atomically (see `atomic.rs`), keeps the last few plus the best, and
//! on load falls back past corrupt ones and those the caller's model cannot take; `resolve`
//! here is the one way a path given by a user becomes a checkpoint; `files.rs` reads only
//! regular files; `tensors.rs` is the safetensors encoding.

mod atomic;
mod error;
mod files;
mod store;
mod tensors;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use atomic::{sha256_hex, write_file};
pub use error::CheckpointError;
pub(crate) use files::read_regular;
pub use store::Store;

/// The `state.json` / `checksums.json` format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// File names inside a checkpoint directory.
pub const MODEL_FILE: &str = "model.safetensors";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const STATE_FILE: &str = "state.json";
pub const CHECKSUMS_FILE: &str = "checksums.json";

/// One tensor under its state_dict name. `integer` tensors are stored as I64 (PyTorch's dtype
/// for `num_batches_tracked`); their values must be integers.
#[derive(Clone, Debug, PartialEq)]
pub struct NamedTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
    pub integer: bool,
}

/// Everything besides tensors that a resume needs. Data order, augmentation, dropout and init
/// are pure functions of `seed` and the position, so no RNG state is stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainState {
    /// `FORMAT_VERSION` when written.
    pub format_version: u32,
    /// Optimizer steps done.
    pub step: u64,
    /// Current epoch (0-based).
    pub epoch: u64,
    /// Next batch index within the epoch (the data cursor).
    pub batch_in_epoch: u64,
    /// The run seed.
    pub seed: u64,
    /// SHA-256 hex of config.resolved.toml.
    pub config_hash: String,
    pub best_metric: Option<f64>,
    pub best_epoch: Option<u64>,
    /// Last LR used (informational; the schedule is a pure function of step).
    pub lr: f64,
    pub trainer_version: String,
}

impl Default for TrainState {
    /// The state of a checkpoint that is only weights (a bare .safetensors file): step 0,
    /// nothing known.
    fn default() -> TrainState {
        TrainState {
            format_version: FORMAT_VERSION,
            step: 0,
            epoch: 0,
            batch_in_epoch: 0,
            seed: 0,
            config_hash: String::new(),
            best_metric: None,
            best_epoch: None,
            lr: 0.0,
            trainer_version: String::new(),
        }
    }
}

/// A whole checkpoint in memory.
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    pub weights: Vec<NamedTensor>,
    pub optimizer: Vec<NamedTensor>,
    pub state: TrainState,
    /// Other files kept with the tensors, by file name (a text run's `vocab.json`): written
    /// into the checkpoint directory, listed in checksums.json and verified when loaded.
    pub extra: Vec<(String, Vec<u8>)>,
}

/// checksums.json.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Checksums {
    format_version: u32,
    /// File name → lowercase hex SHA-256.
    sha256: BTreeMap<String, String>,
}

/// What a caller needs of a checkpoint: all of it (resume), or only the weights (eval,
/// predict), so a checkpoint with a damaged optimizer file still evaluates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    Whole,
    Weights,
}

/// The checkpoint `resolve` settled on.
#[derive(Debug)]
pub struct Found {
    /// The checkpoint directory (or .safetensors file) it came from.
    pub path: PathBuf,
    /// With `Part::Weights` (or from a .safetensors file), `optimizer` is empty and `state` is
    /// `TrainState::default()`.
    pub checkpoint: Checkpoint,
    /// One line for each checkpoint passed over and why (a broken `latest`, a corrupt or
    /// mismatched newer checkpoint): the caller prints them.
    pub warnings: Vec<String>,
}

/// Why a loaded checkpoint cannot be used (it does not fit the model), for `resolve`'s `accept`.
pub type Accept<'a> = dyn FnMut(&Checkpoint) -> Result<(), String> + 'a;

/// The one way resume, eval and predict find a checkpoint. `path` may be
/// - a run directory or its `checkpoints/`: the checkpoint `latest` names, else the newest
///   valid one by step (see `Store::resolve`), each one passed over becoming a warning, and
///   an error listing every candidate and why when none is usable;
/// - one checkpoint directory, or a `.safetensors` file (weights only): exactly that one.
///
/// A checkpoint is usable when its files verify and `accept` takes it (the caller checks that
/// the tensors fit its model), so a checkpoint of another shape is passed over like a
/// corrupt one.
pub fn resolve(path: &Path, part: Part, accept: &mut Accept) -> Result<Found, CheckpointError> {
    let meta = fs::metadata(path).map_err(CheckpointError::io("reading", path))?;
    if !meta.is_dir() {
        let checkpoint = Checkpoint {
            weights: load_weights_file(path)?,
            optimizer: Vec::new(),
            state: TrainState::default(),
            extra: Vec::new(),
        };
        return accepted(path, checkpoint, accept);
    }
    let is_step_dir = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| store::parse_step_dir(n).is_some());
    if is_step_dir || path.join(CHECKSUMS_FILE).exists() {
        return accepted(path, load_one(path, part)?, accept);
    }
    let checkpoints = checkpoints_dir(path);
    if checkpoints.is_dir() {
        return Store::new(&checkpoints, 1).resolve(part, accept);
    }
    if store::looks_like_store(path) {
        return Store::new(path, 1).resolve(part, accept);
    }
    Err(CheckpointError::NotCheckpoint {
        path: path.to_path_buf(),
    })
}

fn accepted(
    path: &Path,
    checkpoint: Checkpoint,
    accept: &mut Accept,
) -> Result<Found, CheckpointError> {
    accept(&checkpoint).map_err(|reason| CheckpointError::DoesNotFit {
        path: path.to_path_buf(),
        reason,
    })?;
    Ok(Found {
        path: path.to_path_buf(),
        checkpoint,
        warnings: Vec::new(),
    })
}

/// Loads whatever `path` stands for (see `resolve`), whole, with no model to check against;
/// the warnings of a fallback are dropped (`resolve` returns them).
pub fn load(path: &Path) -> Result<Checkpoint, CheckpointError> {
    resolve(path, Part::Whole, &mut |_| Ok(())).map(|found| found.checkpoint)
}

/// One checkpoint directory, verified (see `load_dir`), or only its weights.
pub(crate) fn load_one(dir: &Path, part: Part) -> Result<Checkpoint, CheckpointError> {
    match part {
        Part::Whole => load_dir(dir),
        Part::Weights => {
            let sums = read_checksums(dir)?;
            let bytes = read_verified(dir, MODEL_FILE, &sums)?;
            Ok(Checkpoint {
                weights: tensors::decode(&dir.join(MODEL_FILE), &bytes)?,
                optimizer: Vec::new(),
                state: TrainState::default(),
                extra: read_extra(dir, &sums)?,
            })
        }
    }
}

/// A bare tensor file. Inside a checkpoint directory it is verified against the checksum
/// recorded there; a file from elsewhere (say, exported from PyTorch) has none to check.
fn load_weights_file(path: &Path) -> Result<Vec<NamedTensor>, CheckpointError> {
    if path.extension().is_none_or(|e| e != "safetensors") {
        return Err(CheckpointError::NotCheckpoint {
            path: path.to_path_buf(),
        });
    }
    let bytes = files::read_regular(path)?;
    if let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str()))
        && dir.join(CHECKSUMS_FILE).is_file()
    {
        let sums = read_checksums(dir)?;
        if let Some(expected) = sums.sha256.get(name) {
            verify(path, expected, &bytes)?;
        }
    }
    tensors::decode(path, &bytes)
}

/// Loads and verifies one checkpoint directory: every file against checksums.json, the state's
/// format version, and the step in the directory name against state.json.
pub(crate) fn load_dir(dir: &Path) -> Result<Checkpoint, CheckpointError> {
    let sums = read_checksums(dir)?;
    let model = read_verified(dir, MODEL_FILE, &sums)?;
    let optimizer = read_verified(dir, OPTIMIZER_FILE, &sums)?;
    let state_bytes = read_verified(dir, STATE_FILE, &sums)?;
    let state_path = dir.join(STATE_FILE);
    let state: TrainState =
        serde_json::from_slice(&state_bytes).map_err(|source| CheckpointError::Json {
            path: state_path.clone(),
            source,
        })?;
    if state.format_version != FORMAT_VERSION {
        return Err(CheckpointError::Version {
            path: state_path,
            found: state.format_version,
            expected: FORMAT_VERSION,
        });
    }
    if let Some(dir_step) = dir
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(store::parse_step_dir)
        && dir_step != state.step
    {
        return Err(CheckpointError::StepMismatch {
            path: state_path,
            dir_step,
            state_step: state.step,
        });
    }
    Ok(Checkpoint {
        weights: tensors::decode(&dir.join(MODEL_FILE), &model)?,
        optimizer: tensors::decode(&dir.join(OPTIMIZER_FILE), &optimizer)?,
        state,
        extra: read_extra(dir, &sums)?,
    })
}

/// The files checksums.json lists besides the tensors and the state, each verified.
fn read_extra(dir: &Path, sums: &Checksums) -> Result<Vec<(String, Vec<u8>)>, CheckpointError> {
    sums.sha256
        .keys()
        .filter(|name| ![MODEL_FILE, OPTIMIZER_FILE, STATE_FILE].contains(&name.as_str()))
        .map(|name| Ok((name.clone(), read_verified(dir, name, sums)?)))
        .collect()
}

fn read_checksums(dir: &Path) -> Result<Checksums, CheckpointError> {
    let path = dir.join(CHECKSUMS_FILE);
    let bytes = files::read_regular(&path)?;
    let sums: Checksums =
        serde_json::from_slice(&bytes).map_err(|source| CheckpointError::Json {
            path: path.clone(),
            source,
        })?;
    if sums.format_version != FORMAT_VERSION {
        return Err(CheckpointError::Version {
            path,
            found: sums.format_version,
            expected: FORMAT_VERSION,
        });
    }
    Ok(sums)
}

/// Reads `dir/file` and checks it against its recorded SHA-256.
fn read_verified(dir: &Path, file: &str, sums: &Checksums) -> Result<Vec<u8>, CheckpointError> {
    let path = dir.join(file);
    let expected = sums
        .sha256
        .get(file)
        .ok_or_else(|| CheckpointError::MissingChecksum {
            path: dir.join(CHECKSUMS_FILE),
            file: file.to_string(),
        })?;
    let bytes = files::read_regular(&path)?;
    verify(&path, expected, &bytes)?;
    Ok(bytes)
}

fn verify(path: &Path, expected: &str, bytes: &[u8]) -> Result<(), CheckpointError> {
    let found = atomic::sha256_hex(bytes);
    if found != expected {
        return Err(CheckpointError::Checksum {
            path: path.to_path_buf(),
            expected: expected.to_string(),
            found,
        });
    }
    Ok(())
}

/// The directory name for a step: `step-000001234` (zero-padded so names sort like steps up
/// to a billion; past that, steps are compared as numbers anyway).
pub fn step_dir_name(step: u64) -> String {
    format!("step-{step:09}")
}

/// Where checkpoints live inside a run directory, by convention.
pub fn checkpoints_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("checkpoints")
}
