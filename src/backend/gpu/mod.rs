//! The GPU backend: WGSL kernels through wgpu (Metal, Vulkan, DX12). This module owns the
//! device, its limits and features, and the errors wgpu reports; `exec` runs a plan;
//! `readback` reads tensors back after steps without waiting for them; `profile` times each
//! dispatch of a step with timestamp queries (`trainer bench --profile`); `pipeline_cache`
//! builds each kernel's pipeline once per device and keeps the driver's compiled pipelines
//! across processes; kernels are declared by their ops (`Primitive::gpu`) with the types in
//! `kernel`.

mod alloc;
mod error;
mod exec;
mod fault;
mod health;
mod pipeline_cache;
mod profile;
mod readback;
mod submit;

use std::mem::ManuallyDrop;
use std::sync::Arc;
use std::time::Duration;

pub use error::GpuError;
use error::classify;
pub use exec::{GpuExec, eval_once};
pub use health::a_device_hung;
pub use pipeline_cache::{CacheState, PipelineStats};
pub use profile::{DispatchTime, Profile, Timestamps};

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
fn instance(backends: wgpu::Backends) -> Result<wgpu::Instance, GpuError> {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    let chosen = std::env::var("WGPU_BACKEND").ok();
    desc.backends = backends_named(chosen.as_deref())?.unwrap_or(backends);
    Ok(wgpu::Instance::new(desc))
}

/// The names `WGPU_BACKEND` may list (wgpu's, aliases included) and their backends.
const BACKEND_NAMES: &[(&str, wgpu::Backends)] = &[
    ("vulkan", wgpu::Backends::VULKAN),
    ("vk", wgpu::Backends::VULKAN),
    ("metal", wgpu::Backends::METAL),
    ("mtl", wgpu::Backends::METAL),
    ("dx12", wgpu::Backends::DX12),
    ("d3d12", wgpu::Backends::DX12),
    ("gl", wgpu::Backends::GL),
    ("gles", wgpu::Backends::GL),
    ("opengl", wgpu::Backends::GL),
];

/// The backends a `WGPU_BACKEND` value names (a comma-separated list, any case); `None` when
/// it is unset or empty. wgpu itself skips a name it does not know with a log line nobody
/// sees, so a typo would silently mean "no GPU": refuse it here, with did-you-mean.
fn backends_named(value: Option<&str>) -> Result<Option<wgpu::Backends>, GpuError> {
    let Some(value) = value.filter(|v| !v.trim().is_empty()) else {
        return Ok(None);
    };
    let mut backends = wgpu::Backends::empty();
    let names = value.split(',').map(|n| n.trim().to_lowercase());
    for name in names.filter(|n| !n.is_empty()) {
        match BACKEND_NAMES.iter().find(|(n, _)| *n == name) {
            Some((_, b)) => backends |= *b,
            None => {
                let names = BACKEND_NAMES.iter().map(|(n, _)| *n);
                let hint = match crate::diag::did_you_mean(&name, names) {
                    Some(s) => format!("\nhelp: did you mean `{s}`?"),
                    None => String::new(),
                };
                return Err(GpuError::Setting(format!(
                    "WGPU_BACKEND={value}: `{name}` is not a wgpu backend (expected vulkan, \
                     metal, dx12 or gl, or several separated by commas){hint}"
                )));
            }
        }
    }
    Ok(Some(backends))
}

/// Every adapter wgpu can see (OpenGL included), for `trainer devices`.
pub fn adapters() -> Result<Vec<AdapterSummary>, GpuError> {
    let instance = instance(wgpu::Backends::all())?;
    let all = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
    Ok(all.iter().map(summary).collect())
}

/// A private directory to use as `XDG_RUNTIME_DIR` when the environment has none that is an
/// absolute path to a directory (headless servers, containers, `sudo`): then the Wayland
/// probes in Mesa's drivers print "error: XDG_RUNTIME_DIR is invalid or not set in the
/// environment" for every adapter they look at (22 lines in one run). The directory is
/// `trainer-runtime-<uid>` under the temp dir, mode 0700, and is used only if it is a real
/// directory of this user that no one else can read (another user could have made it
/// first). `None` when the environment's is fine or no such directory could be had. The
/// binary sets the variable before any thread starts (changing the environment later would
/// race with threads reading it).
#[cfg(unix)]
pub fn private_runtime_dir() -> Option<std::path::PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let current = std::env::var_os("XDG_RUNTIME_DIR").map(std::path::PathBuf::from);
    if current.is_some_and(|d| d.is_absolute() && d.is_dir()) {
        return None;
    }
    // SAFETY: getuid has no preconditions and cannot fail.
    #[allow(unsafe_code)]
    let uid = unsafe { libc::getuid() };
    let dir = std::env::temp_dir().join(format!("trainer-runtime-{uid}"));
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(_) => return None,
    }
    let meta = std::fs::symlink_metadata(&dir).ok()?;
    let private = meta.is_dir() && meta.uid() == uid && meta.mode() & 0o777 == 0o700;
    private.then_some(dir)
}

#[cfg(not(unix))]
pub fn private_runtime_dir() -> Option<std::path::PathBuf> {
    None
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

/// The timestamp features `Gpu::new` requests where the adapter has them (`profile`).
const TIMESTAMP_FEATURES: wgpu::Features =
    wgpu::Features::TIMESTAMP_QUERY.union(wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES);
/// Every optional feature `Gpu::new` requests where the adapter has it.
const OPTIONAL_FEATURES: wgpu::Features = TIMESTAMP_FEATURES.union(wgpu::Features::PIPELINE_CACHE);

/// An open device: what every executor on it shares.
pub struct Gpu {
    /// Dropped by hand (`Drop`): not at all once the device hung.
    pub device: ManuallyDrop<wgpu::Device>,
    pub queue: ManuallyDrop<wgpu::Queue>,
    pub adapter: AdapterSummary,
    pub limits: wgpu::Limits,
    /// The optional features the device was opened with (`OPTIONAL_FEATURES` the adapter has,
    /// and `SUBGROUP` where `subgroups` is set).
    pub features: wgpu::Features,
    /// Every kernel's pipeline, built once, and the persistent pipeline cache.
    pub(crate) pipelines: pipeline_cache::Pipelines,
    /// How long `Gpu::new` took (instance, adapter, device, the pipeline cache file).
    pub opened_in: Duration,
    /// Build kernels with naga's bounds checks (`TRAINER_SHADER_CHECKS=1`; the test suite).
    pub shader_checks: bool,
    /// The adapter's subgroup sizes (least, most) where workgroup reductions use subgroup
    /// shuffles (kernels/tree_subgroup.wgsl; `subgroup_sizes`); `None`: the portable tree.
    pub subgroups: Option<[u32; 2]>,
    /// The estimated seconds one submit may take (`TRAINER_GPU_SUBMIT_MS`; see `submit`).
    pub submit_budget: f64,
    /// How long one submit may take before the device counts as hung.
    pub timeout: Duration,
    /// `TRAINER_GPU_FAULT`, a testing hook (`fault`).
    fault: Option<fault::Fault>,
    health: Arc<health::Health>,
}

/// Set to 1 to build workgroup reductions without subgroups (kernels/tree.wgsl) even where
/// the adapter has them: the portable variant every device runs, to compare the two.
const NO_SUBGROUPS: &str = "TRAINER_NO_SUBGROUPS";

/// The subgroup sizes (least, most) kernels/tree_subgroup.wgsl may rely on: where the adapter
/// has `Features::SUBGROUP` and every size it may pick is a power of two from 4 lanes (the
/// file's `TREE_SLOTS`) to 128. `None` elsewhere: reductions take the portable tree.
fn subgroup_sizes(adapter: &wgpu::Adapter) -> Option<[u32; 2]> {
    let info = adapter.get_info();
    let sizes = [info.subgroup_min_size, info.subgroup_max_size];
    let usable = sizes
        .iter()
        .all(|s| s.is_power_of_two() && (4..=128).contains(s));
    (adapter.features().contains(wgpu::Features::SUBGROUP) && usable && sizes[0] <= sizes[1])
        .then_some(sizes)
}

impl Gpu {
    /// Opens the high-performance adapter with its real limits (not WebGPU's defaults);
    /// reductions use subgroups where it has them, unless `TRAINER_NO_SUBGROUPS=1`.
    pub fn new() -> Result<Gpu, GpuError> {
        Gpu::open(std::env::var(NO_SUBGROUPS).is_ok_and(|v| v == "1"))
    }

    /// `Gpu::new`, with `portable` deciding instead of `TRAINER_NO_SUBGROUPS`: true keeps
    /// every kernel off subgroups (tests compare both variants in one process).
    pub fn open(portable: bool) -> Result<Gpu, GpuError> {
        let started = std::time::Instant::now();
        let fault = fault::Fault::from_env()?;
        let timeout = health::timeout_from_env()?;
        let submit_budget = submit::budget_from_env()?;
        // Vulkan, Metal and DX12 (OpenGL only by WGPU_BACKEND=gl: its compute is a fallback
        // of a fallback, and probing it prints windowing-system noise on headless machines).
        let instance = instance(wgpu::Backends::PRIMARY)?;
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
        // Timestamps only where the adapter has them, for `trainer bench --profile` (a normal
        // step writes none); the pipeline cache where it has one (Vulkan).
        let mut features = adapter.features() & OPTIONAL_FEATURES;
        let subgroups = subgroup_sizes(&adapter).filter(|_| !portable);
        if subgroups.is_some() {
            features |= wgpu::Features::SUBGROUP;
        }
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("trainer"),
            required_features: features,
            required_limits: limits.clone(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        }))
        .map_err(|e| GpuError::Device(e.to_string()))?;
        let health = Arc::new(health::Health::default());
        // The default handler panics; keep the first error for the next `check`.
        let sink = health.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| sink.error(&e)));
        let sink = health.clone();
        let hook = fault.map(|f| f.describe());
        device.set_device_lost_callback(move |reason, message| {
            sink.lost(reason, &message, hook.as_deref())
        });
        let pipelines =
            pipeline_cache::Pipelines::open(&device, &adapter.get_info(), subgroups.is_some());
        Ok(Gpu {
            adapter: summary(&adapter),
            device: ManuallyDrop::new(device),
            queue: ManuallyDrop::new(queue),
            limits,
            features,
            pipelines,
            opened_in: started.elapsed(),
            shader_checks: std::env::var("TRAINER_SHADER_CHECKS").is_ok_and(|v| v == "1"),
            subgroups,
            submit_budget,
            timeout,
            fault,
            health,
        })
    }

    /// The device for reports: adapter, backend, and the subgroup sizes where reductions use
    /// subgroups ("NVIDIA H100, Vulkan, subgroups 32").
    pub fn describe(&self) -> String {
        let subgroups = match self.subgroups {
            Some([lo, hi]) if lo == hi => format!(", subgroups {lo}"),
            Some([lo, hi]) => format!(", subgroups {lo}-{hi}"),
            None => String::new(),
        };
        format!("{}, {}{subgroups}", self.adapter.name, self.adapter.backend)
    }

    /// The first error the device reported since the last call, if any; once the device is
    /// lost, that, on every call.
    pub fn check(&self) -> Result<(), GpuError> {
        self.health.check()
    }

    /// Runs `f` inside validation and out-of-memory error scopes.
    pub fn scoped<R>(&self, f: impl FnOnce() -> R) -> Result<R, GpuError> {
        self.scoped_raw(f).map_err(|e| classify(&e, ""))
    }

    /// `scoped`, with wgpu's error as it came (to tell out-of-memory from a refusal).
    pub fn scoped_raw<R>(&self, f: impl FnOnce() -> R) -> Result<R, wgpu::Error> {
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let r = f();
        let v = pollster::block_on(validation.pop());
        let o = pollster::block_on(oom.pop());
        match (o, v) {
            (Some(e), _) | (None, Some(e)) => Err(e),
            (None, None) => Ok(r),
        }
    }

    /// Submits work and remembers it for `wait`'s per-submit deadline.
    pub fn submit(&self, commands: wgpu::CommandBuffer) -> wgpu::SubmissionIndex {
        let index = self.queue.submit([commands]);
        self.health.submitted(index.clone());
        index
    }

    /// Processes finished work (mapping callbacks) without blocking.
    pub(super) fn poll(&self) -> Result<(), GpuError> {
        match health::quiet_panics(|| self.device.poll(wgpu::PollType::Poll)) {
            Ok(Ok(_)) => self.check(),
            Ok(Err(e)) => Err(self.poll_failed("polling the device", Ok(e))),
            Err(panic) => Err(self.poll_failed("polling the device", Err(panic))),
        }
    }

    /// Why a `device.poll` failed: an error the device reported first, or the poll's own
    /// error; a panic inside it means the driver failed the wait, so the device is gone.
    fn poll_failed(&self, what: &str, failure: Result<wgpu::PollError, String>) -> GpuError {
        if let Err(e) = self.check() {
            return e;
        }
        match failure {
            Ok(e) => GpuError::Runtime(format!("{what}{}: {e}", self.health.when())),
            Err(panic) => GpuError::Lost(format!(
                "the GPU device failed{} ({panic})",
                self.health.when()
            )),
        }
    }

    /// Waits for one submission, with `wait`'s deadline and error handling.
    pub(super) fn wait_until(&self, index: wgpu::SubmissionIndex) -> Result<(), GpuError> {
        self.wait_for(Some(index))?;
        self.check()
    }

    /// Notes the training step being submitted, for error messages.
    pub(crate) fn set_step(&self, step: u64) {
        self.health.set_step(step);
    }

    /// Waits until the queue is idle. Each submit made through `submit` gets `timeout` of its
    /// own (a queue of many steps may rightly take long); past it, or once the device is
    /// lost, this returns an error instead of waiting on.
    pub fn wait(&self) -> Result<(), GpuError> {
        // Errors are checked after the wait: a device loss is only reported (by its callback)
        // during a poll, and the errors it caused meanwhile (a buffer it invalidated) must
        // not be reported in its place.
        loop {
            let next = self.health.next_in_flight();
            let last = next.is_none();
            if let Err(e) = self.wait_for(next) {
                self.health.forget_in_flight();
                return Err(e);
            }
            if last {
                return self.check();
            }
        }
    }

    /// Waits for one submission (`None`: the latest that succeeded).
    fn wait_for(&self, index: Option<wgpu::SubmissionIndex>) -> Result<(), GpuError> {
        let specific = index.is_some();
        let poll = wgpu::PollType::Wait {
            submission_index: index,
            timeout: Some(self.timeout),
        };
        match health::quiet_panics(|| self.device.poll(poll)) {
            Ok(Ok(_)) => Ok(()),
            // A submit that failed (on a lost device, say) never completes: wait for what
            // did run; a loss is reported by its callback during that wait.
            Ok(Err(wgpu::PollError::WrongSubmissionIndex(..))) if specific => self.wait_for(None),
            Ok(Err(wgpu::PollError::Timeout)) => {
                self.check()?;
                self.health.set_hung();
                Err(GpuError::Timeout(format!(
                    "the GPU did not finish its work within {} s{}: the device is hung, or far slower than this run expects (TRAINER_GPU_TIMEOUT_SECS sets the limit; TRAINER_GPU_SUBMIT_MS the work per submit)",
                    self.timeout.as_secs_f64(),
                    self.health.when()
                )))
            }
            Ok(Err(e)) => Err(self.poll_failed("waiting", Ok(e))),
            // wgpu panics when the driver fails the wait: the device is gone.
            Err(panic) => Err(self.poll_failed("waiting", Err(panic))),
        }
    }

    /// What building pipelines has cost so far, and whether the pipeline cache was loaded.
    pub fn pipeline_stats(&self) -> PipelineStats {
        self.pipelines.stats()
    }

    /// The testing hook, if set (`fault`).
    pub(crate) fn fault(&self) -> Option<fault::Fault> {
        self.fault
    }
}

impl Drop for Gpu {
    fn drop(&mut self) {
        // Dropping the queue waits for it to drain (wgpu-core's `Queue::drop`), which a hung
        // device never does: leave both to the operating system instead.
        if self.health.hung() {
            return;
        }
        // SAFETY: `self` is being dropped, so neither field is used again, and each is
        // dropped exactly once here.
        #[allow(unsafe_code)]
        unsafe {
            ManuallyDrop::drop(&mut self.queue);
            ManuallyDrop::drop(&mut self.device);
        }
    }
}

/// Runs `op` on the GPU and on the CPU backend (f32) and returns, per output, the norm-wise
/// relative error ‖gpu − cpu‖ / ‖cpu‖ (absolute where ‖cpu‖ is 0; infinite where the GPU left
/// a NaN the CPU did not produce). GPU outputs start NaN-filled. For kernel tests.
pub fn compare_with_cpu(
    gpu: &Gpu,
    op: &crate::ops::OpKind,
    ins: &[(crate::tensor::TensorType, Vec<f32>)],
    ctx: crate::tensor::StepCtx,
) -> Result<Vec<f64>, String> {
    let refs: Vec<(&crate::tensor::TensorType, &[f32])> =
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
            crate::errln!("skipping GPU tests: {e}");
            None
        }
    })
    .as_ref()
}

/// The test suite's GPUs: `test_gpu`, then, where it reduces through subgroups, a second
/// device on the same adapter with the portable reductions (`Gpu::open(true)`), so kernel tests
/// cover both variants in one run. Empty where there is no GPU (see `test_gpu`).
pub fn test_gpus() -> Vec<&'static Gpu> {
    static PORTABLE: std::sync::OnceLock<Gpu> = std::sync::OnceLock::new();
    let Some(gpu) = test_gpu() else {
        return Vec::new();
    };
    if gpu.subgroups.is_none() {
        return vec![gpu];
    }
    let portable = PORTABLE.get_or_init(|| {
        Gpu::open(true).unwrap_or_else(|e| panic!("the adapter opened once, not twice: {e}"))
    });
    vec![gpu, portable]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wgpu_backend_names_a_list_of_known_backends_or_is_refused() {
        assert_eq!(backends_named(None).unwrap(), None);
        assert_eq!(backends_named(Some(" ")).unwrap(), None);
        assert_eq!(
            backends_named(Some("Vulkan, gl")).unwrap(),
            Some(wgpu::Backends::VULKAN | wgpu::Backends::GL)
        );
        assert_eq!(
            backends_named(Some("dx12,")).unwrap(),
            Some(wgpu::Backends::DX12)
        );
        for (value, bad, hint) in [
            ("vulkn", "vulkn", Some("vulkan")),
            ("metal,dx13", "dx13", Some("dx12")),
            ("cuda", "cuda", None),
        ] {
            let e = backends_named(Some(value)).unwrap_err();
            assert_eq!(e.exit_code(), 2);
            let text = e.to_string();
            assert!(
                text.contains(&format!("`{bad}` is not a wgpu backend")),
                "{text}"
            );
            match hint {
                Some(h) => assert!(text.contains(&format!("did you mean `{h}`?")), "{text}"),
                None => assert!(!text.contains("did you mean"), "{text}"),
            }
        }
    }
}
