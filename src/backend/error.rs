//! Why a plan could not be prepared, on either backend.

/// Why a plan could not be prepared on its backend.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// The plan does not fit the device (its memory, its limits): the config must change.
    #[error("{0}")]
    DoesNotFit(String),
    /// The backend failed.
    #[error("{0}")]
    Failed(String),
}

impl PrepareError {
    /// The process exit code: 2 when the config must change, 1 when the backend failed.
    pub fn exit_code(&self) -> u8 {
        match self {
            PrepareError::DoesNotFit(_) => 2,
            PrepareError::Failed(_) => 1,
        }
    }
}
