//! How the GPU fails, for the user: one error type with its exit code, and wgpu's errors
//! turned into it.

use crate::backend::PrepareError;

/// Why the GPU cannot be used or failed: one screen, for the user.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error("no GPU adapter found (wgpu saw none of Vulkan, Metal, DX12, GL){hint}")]
    NoAdapter { hint: String },
    #[error("the GPU device could not be opened: {0}")]
    Device(String),
    /// The plan does not fit this device (a tensor above a binding limit, a kernel that does
    /// not build): the config has to change.
    #[error("{0}")]
    Plan(String),
    /// A region of the plan could not be allocated; the whole one-screen report.
    #[error("{0}")]
    OutOfMemory(String),
    #[error("the GPU reported an error: {0}")]
    Runtime(String),
    /// The device is gone (driver reset, unplugged, destroyed); the whole message.
    #[error("{0}")]
    Lost(String),
    #[error("{0}")]
    Timeout(String),
    /// An environment variable that chooses how the GPU opens has a value we do not know
    /// (`WGPU_BACKEND=vulkn`): refused, never ignored.
    #[error("{0}")]
    Setting(String),
}

impl GpuError {
    /// The process exit code: 2 when the config must change for this device (the plan does
    /// not fit, or its memory cannot be allocated: retrying unchanged fails the same way), 1
    /// when the device failed under a plan that fit (lost, hung, an error mid-step).
    pub fn exit_code(&self) -> u8 {
        match self {
            GpuError::NoAdapter { .. }
            | GpuError::Plan(_)
            | GpuError::OutOfMemory(_)
            | GpuError::Setting(_) => 2,
            GpuError::Device(_)
            | GpuError::Runtime(_)
            | GpuError::Lost(_)
            | GpuError::Timeout(_) => 1,
        }
    }
}

/// An error on one line: its kind, then the source chain ("In Device::create_buffer, label =
/// 'Arena': Buffer size ... is greater than ..."). wgpu's own Display is the same chain as a
/// multi-line tree, or just "Out of Memory".
pub(super) fn error_text(e: &wgpu::Error) -> String {
    let mut text = match e {
        wgpu::Error::OutOfMemory { .. } => "out of memory",
        wgpu::Error::Validation { .. } => "validation error",
        wgpu::Error::Internal { .. } => "internal error",
    }
    .to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    text
}

/// An error wgpu raised, for the user; `when` is "" or " after step N was submitted".
pub(super) fn classify(e: &wgpu::Error, when: &str) -> GpuError {
    // One line: the source chain holds what the multi-line `description` says.
    let text = error_text(e);
    match e {
        wgpu::Error::OutOfMemory { .. } => GpuError::Runtime(format!(
            "out of GPU memory{when} ({text}); lower data.batch_size or use train.checkpointing"
        )),
        _ => match when.trim() {
            "" => GpuError::Runtime(text),
            w => GpuError::Runtime(format!("{w}: {text}")),
        },
    }
}

/// A plan the device refused (exit 2) or a device that failed (exit 1).
impl From<GpuError> for PrepareError {
    fn from(e: GpuError) -> PrepareError {
        match e.exit_code() {
            2 => PrepareError::DoesNotFit(e.to_string()),
            _ => PrepareError::Failed(e.to_string()),
        }
    }
}
