//! The GPU backend: WGSL kernels through wgpu (Metal, Vulkan, DX12). This module owns the
//! device, its limits and features, and the errors wgpu reports; `exec` runs a plan;
//! `readback` reads tensors back after steps without waiting for them; kernels are declared
//! by their ops (`Primitive::gpu`) with the types in `kernel`.

mod exec;
pub mod kernel;
mod readback;

use std::sync::{Arc, Mutex};

pub use exec::{GpuExec, eval_once};
pub use kernel::{Bind, Dispatch, KernelArgs, Params, Shader};

/// Why the GPU cannot be used or failed: one screen, for the user.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error("no GPU adapter found (wgpu saw none of Vulkan, Metal, DX12, GL){hint}")]
    NoAdapter { hint: String },
    #[error("the GPU device could not be opened: {0}")]
    Device(String),
    #[error("{0}")]
    Plan(String),
    #[error("the GPU reported an error: {0}")]
    Runtime(String),
    #[error("the GPU device was lost: {0}")]
    Lost(String),
}

/// One adapter as `trainer devices` lists it.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct AdapterSummary {
    pub name: String,
    pub backend: String,
    pub device_type: String,
    pub driver: String,
    pub driver_info: String,
    pub max_storage_buffer_binding_size: u64,
    pub max_buffer_size: u64,
    pub max_compute_workgroups_per_dimension: u32,
    pub max_compute_workgroup_storage_size: u32,
    pub features: Vec<String>,
}

/// An instance over `backends`, unless `WGPU_BACKEND` names others.
fn instance(backends: wgpu::Backends) -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    desc.backends = wgpu::Backends::from_env().unwrap_or(backends);
    wgpu::Instance::new(desc)
}

/// Every adapter wgpu can see (OpenGL included), for `trainer devices`.
pub fn adapters() -> Vec<AdapterSummary> {
    let all = pollster::block_on(
        instance(wgpu::Backends::all()).enumerate_adapters(wgpu::Backends::all()),
    );
    all.iter().map(summary).collect()
}

fn summary(a: &wgpu::Adapter) -> AdapterSummary {
    let info = a.get_info();
    let limits = a.limits();
    let features = a
        .features()
        .iter_names()
        .map(|(name, _)| name.to_string())
        .collect();
    AdapterSummary {
        name: info.name,
        backend: format!("{:?}", info.backend),
        device_type: format!("{:?}", info.device_type),
        driver: info.driver,
        driver_info: info.driver_info,
        max_storage_buffer_binding_size: limits.max_storage_buffer_binding_size,
        max_buffer_size: limits.max_buffer_size,
        max_compute_workgroups_per_dimension: limits.max_compute_workgroups_per_dimension,
        max_compute_workgroup_storage_size: limits.max_compute_workgroup_storage_size,
        features,
    }
}

/// An open device: what every executor on it shares.
pub struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub adapter: AdapterSummary,
    pub limits: wgpu::Limits,
    /// Build kernels with naga's bounds checks (`TRAINER_SHADER_CHECKS=1`; the test suite).
    pub shader_checks: bool,
    /// The first error wgpu reported outside an error scope, and device loss.
    errors: Arc<Mutex<Option<GpuError>>>,
}

impl Gpu {
    /// Opens the high-performance adapter with its real limits (not WebGPU's defaults).
    pub fn new() -> Result<Gpu, GpuError> {
        // Vulkan, Metal and DX12 (OpenGL only by WGPU_BACKEND=gl: its compute is a fallback
        // of a fallback, and probing it prints windowing-system noise on headless machines).
        let instance = instance(wgpu::Backends::PRIMARY);
        let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            force_fallback_adapter: false,
            compatible_surface: None,
            apply_limit_buckets: false,
        }))
        .map_err(|_| GpuError::NoAdapter {
            hint: if cfg!(target_os = "linux") {
                "; on Linux install a Vulkan driver (Debian: apt-get install mesa-vulkan-drivers)"
                    .into()
            } else {
                String::new()
            },
        })?;
        let limits = adapter.limits();
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("trainer"),
            required_features: wgpu::Features::empty(),
            required_limits: limits.clone(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        }))
        .map_err(|e| GpuError::Device(e.to_string()))?;
        let errors: Arc<Mutex<Option<GpuError>>> = Arc::new(Mutex::new(None));
        let sink = errors.clone();
        // The default handler panics; keep the first error for the next `check`.
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            let mut slot = sink.lock().unwrap_or_else(|p| p.into_inner());
            if slot.is_none() {
                *slot = Some(classify(&e));
            }
        }));
        let sink = errors.clone();
        device.set_device_lost_callback(move |reason, message| {
            let mut slot = sink.lock().unwrap_or_else(|p| p.into_inner());
            if slot.is_none() && reason != wgpu::DeviceLostReason::Destroyed {
                *slot = Some(GpuError::Lost(format!("{reason:?}: {message}")));
            }
        });
        Ok(Gpu {
            adapter: summary(&adapter),
            device,
            queue,
            limits,
            shader_checks: std::env::var("TRAINER_SHADER_CHECKS").is_ok_and(|v| v == "1"),
            errors,
        })
    }

    /// The first error the device reported since the last call, if any.
    pub fn check(&self) -> Result<(), GpuError> {
        let mut slot = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        match slot.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Runs `f` inside validation and out-of-memory error scopes.
    pub fn scoped<R>(&self, f: impl FnOnce() -> R) -> Result<R, GpuError> {
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let r = f();
        let v = pollster::block_on(validation.pop());
        let o = pollster::block_on(oom.pop());
        match (o, v) {
            (Some(e), _) | (None, Some(e)) => Err(classify(&e)),
            (None, None) => Ok(r),
        }
    }

    /// Waits until the queue is idle.
    pub fn wait(&self) -> Result<(), GpuError> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| GpuError::Runtime(e.to_string()))?;
        self.check()
    }
}

/// wgpu's Display is terse ("Validation Error"): the real text is down the source chain.
fn classify(e: &wgpu::Error) -> GpuError {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    match e {
        wgpu::Error::OutOfMemory { .. } => GpuError::Runtime(format!(
            "out of GPU memory ({text}); lower data.batch_size or use train.checkpointing"
        )),
        wgpu::Error::Validation { description, .. } => {
            GpuError::Runtime(format!("{description} ({text})"))
        }
        _ => GpuError::Runtime(text),
    }
}

/// Runs `op` on the GPU and on the CPU backend (f32) and returns, per output, the norm-wise
/// relative error ‖gpu − cpu‖ / ‖cpu‖ (absolute where ‖cpu‖ is 0; infinite where the GPU left
/// a NaN the CPU did not produce). GPU outputs start NaN-filled. For kernel tests.
pub fn compare_with_cpu(
    gpu: &Gpu,
    op: &crate::ops::OpKind,
    ins: &[(crate::ops::TensorType, Vec<f32>)],
    ctx: crate::backend::cpu::StepCtx,
) -> Result<Vec<f64>, String> {
    let refs: Vec<(&crate::ops::TensorType, &[f32])> =
        ins.iter().map(|(t, v)| (t, v.as_slice())).collect();
    let cpu = crate::backend::cpu::eval_once(op, &refs, ctx)?;
    let got = eval_once(gpu, op, &refs, ctx).map_err(|e| e.to_string())?;
    Ok(cpu
        .iter()
        .zip(&got)
        .map(|(c, g)| {
            let (mut diff, mut norm) = (0.0f64, 0.0f64);
            for (&c, &g) in c.iter().zip(g) {
                if g.is_nan() != c.is_nan() {
                    return f64::INFINITY;
                }
                if c.is_nan() {
                    continue;
                }
                diff += (g as f64 - c as f64).powi(2);
                norm += (c as f64).powi(2);
            }
            if norm == 0.0 {
                diff.sqrt()
            } else {
                (diff / norm).sqrt()
            }
        })
        .collect())
}

/// The test suite's GPU: opened once per process. `None` (with a notice) where no adapter
/// exists, unless `TRAINER_REQUIRE_GPU=1`, which makes that a failure (CI on lavapipe).
pub fn test_gpu() -> Option<&'static Gpu> {
    static GPU: std::sync::OnceLock<Option<Gpu>> = std::sync::OnceLock::new();
    GPU.get_or_init(|| match Gpu::new() {
        Ok(g) => Some(g),
        Err(e) => {
            if std::env::var("TRAINER_REQUIRE_GPU").is_ok_and(|v| v == "1") {
                panic!("TRAINER_REQUIRE_GPU=1 but {e}");
            }
            eprintln!("skipping GPU tests: {e}");
            None
        }
    })
    .as_ref()
}
