//! `CheckpointError`: every failure names the file or directory it is about, so a message
//! read in a log says what to look at without a backtrace.

use std::io;
use std::path::PathBuf;

/// What went wrong writing or reading a checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// A file system call failed; `action` is the verb ("writing", "syncing", ...).
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A rename failed (it names both ends).
    #[error("renaming {} to {}: {source}", from.display(), to.display())]
    Rename {
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: io::Error,
    },
    /// `Store::save` failed; `note` says what state the checkpoints directory is left in.
    #[error("{source}; {note}")]
    Save {
        #[source]
        source: Box<CheckpointError>,
        note: String,
    },
    /// A file's SHA-256 differs from the one recorded when it was written.
    #[error(
        "{}: checksum mismatch (expected sha256 {expected}, found {found}): the file is corrupt or truncated",
        path.display()
    )]
    Checksum {
        path: PathBuf,
        expected: String,
        found: String,
    },
    /// checksums.json does not list a file the checkpoint needs.
    #[error("{}: no checksum recorded for {file}", path.display())]
    MissingChecksum { path: PathBuf, file: String },
    /// The file is not a readable safetensors file (bad header, offsets, truncated data).
    #[error("{}: not a valid safetensors file: {source}", path.display())]
    Safetensors {
        path: PathBuf,
        #[source]
        source: safetensors::SafeTensorError,
    },
    /// A tensor's dtype is neither F32 nor I64.
    #[error(
        "{}: tensor `{tensor}` has dtype {dtype}; only F32 and I64 (integer buffers) are supported",
        path.display()
    )]
    Dtype {
        path: PathBuf,
        tensor: String,
        dtype: String,
    },
    /// state.json or checksums.json does not parse.
    #[error("{}: {source}", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// state.json was written by a format this build does not read.
    #[error("{}: format_version {found}, but this build reads version {expected}", path.display())]
    Version {
        path: PathBuf,
        found: u32,
        expected: u32,
    },
    /// The directory name and state.json disagree about the step.
    #[error("{}: state.json says step {state_step}, the directory name says {dir_step}", path.display())]
    StepMismatch {
        path: PathBuf,
        dir_step: u64,
        state_step: u64,
    },
    /// The caller handed `save` a tensor that cannot be written as given.
    #[error("cannot save {file} tensor `{tensor}`: {reason}")]
    InvalidTensor {
        file: &'static str,
        tensor: String,
        reason: String,
    },
    /// The caller handed `save` a training state JSON cannot hold faithfully.
    #[error("cannot save the training state: {0}")]
    InvalidState(String),
    /// `load` was given a path that is neither a checkpoint directory nor a .safetensors file.
    #[error("{}: not a checkpoint directory or a .safetensors file", path.display())]
    NotCheckpoint { path: PathBuf },
    /// A path that must be a file is a directory, a FIFO, a device...: refused before it is
    /// read (a FIFO would block the read forever).
    #[error("{}: is {kind}, not a regular file", path.display())]
    NotRegular { path: PathBuf, kind: &'static str },
    /// A checkpoint that loads (checksums and all) but whose tensors the model cannot take:
    /// `reason` says which are missing, extra or of another shape.
    #[error("{}: {reason}", path.display())]
    DoesNotFit { path: PathBuf, reason: String },
    /// The checkpoints directory holds no checkpoint at all (a fresh run).
    #[error("no checkpoint in {} yet: the run has not saved one", dir.display())]
    NotFound { dir: PathBuf },
    /// Every checkpoint in the directory failed to load; `tried` gives each one's reason
    /// (the `latest` pointer's problem first, then each candidate, newest first).
    #[error("no valid checkpoint in {}; tried:\n{}", dir.display(), tried_lines(tried))]
    NoValid { dir: PathBuf, tried: Vec<String> },
}

/// Lines shown of a `NoValid` list: a run keeping hundreds of checkpoints still gets one screen.
const TRIED_SHOWN: usize = 10;

fn tried_lines(tried: &[String]) -> String {
    let mut lines: Vec<String> = tried
        .iter()
        .take(TRIED_SHOWN)
        .map(|t| format!("  {t}"))
        .collect();
    if tried.len() > TRIED_SHOWN {
        lines.push(format!(
            "  ... and {} more older checkpoints",
            tried.len() - TRIED_SHOWN
        ));
    }
    lines.join("\n")
}

impl CheckpointError {
    /// An `Io` error, for `map_err`.
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| CheckpointError::Io {
            action,
            path,
            source,
        }
    }
}
