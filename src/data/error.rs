//! `DataError`: every way reading or preparing data can fail, worded for the person who wrote
//! the config. Errors about a file name the file, so a bad download is easy to find.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file or directory the dataset needs is not there.
    #[error("{}: not found; {hint}", path.display())]
    Missing { path: PathBuf, hint: String },
    #[error("{}: cannot read: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is there but its content is not what the format requires.
    #[error("{}: {message}", path.display())]
    Format { path: PathBuf, message: String },
    /// The uncompressed content differs from the dataset's SHA256SUMS.
    #[error(
        "{}: checksum mismatch: SHA256SUMS says {expected}, the uncompressed content has {actual}; \
         the file is damaged or replaced (re-copy it)",
        path.display()
    )]
    Checksum {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    /// The data's per-sample shape differs from the model's input.
    #[error("the model input {model:?} does not match the samples of {source_name} {data:?}")]
    Shape {
        model: Vec<usize>,
        data: Vec<usize>,
        source_name: String,
    },
    /// Settings that do not fit the data (normalize length, crop size, batch size, splits).
    #[error("{0}")]
    Config(String),
}

impl DataError {
    pub(crate) fn format(path: &Path, message: impl Into<String>) -> Self {
        DataError::Format {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }

    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        if source.kind() == std::io::ErrorKind::NotFound {
            return DataError::Missing {
                path: path.to_path_buf(),
                hint: "set data.path to the directory that holds the dataset".into(),
            };
        }
        DataError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
