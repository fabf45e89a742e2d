//! Compute pipelines, built once per device and remembered across processes.
//!
//! In a process, a kernel (`Shader`: its source and entry) becomes one shader module and one
//! pipeline, shared by every executor on the device (the training step, the evaluation model,
//! `eval_once`). Across processes, where the adapter has `Features::PIPELINE_CACHE` (Vulkan),
//! the driver's compiled pipelines are saved to a file and handed back to the driver at the
//! next start, so a second run skips the driver's compiler (naga still translates each
//! kernel; that is the part a second start still pays).
//!
//! The file is `<dir>/<wgpu::util::pipeline_cache_key>.pipelines` (Vulkan vendor and device
//! id), where `<dir>` is `TRAINER_CACHE_DIR`, else `$XDG_CACHE_HOME/trainer`, else
//! `~/.cache/trainer`. It holds our header (magic, length, SHA-256 of the rest), then wgpu's
//! data: wgpu's header (adapter, driver version) and the driver's blob (whose own header names
//! the driver build). Whatever is wrong with a file only costs speed, never the run: a file
//! that is truncated or corrupt (our checksum) is not given to the driver; one of another
//! device, driver version or wgpu version wgpu refuses, and we start empty (what wgpu's
//! `fallback` does, but with the reason for the start line). A file above `MAX_FILE` is not loaded either: the driver never forgets an entry, so
//! pipelines of kernels that have since changed would pile up; the next save holds only what
//! this process built.
//!
//! A changed kernel never gets a stale pipeline: the driver keys each cached pipeline by a
//! hash of its SPIR-V and pipeline state (Vulkan's contract for `VkPipelineCache`); the test
//! `a_changed_kernel_is_compiled_anew` checks it with two kernels that differ in one constant.
//!
//! `save` runs when an executor is prepared (`GpuExec::new`): when this process built a
//! pipeline since the last save and the driver's data differs from what the file holds, it
//! writes a temporary file, fsyncs it, renames it over the old one and fsyncs the directory,
//! so a reader sees the old file or the new one, never half of one. A directory that cannot
//! be written costs one warning per process.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use sha2::{Digest, Sha256};

use super::error::{GpuError, classify, error_text};
use crate::kernel::gpu::Shader;

/// The first bytes of our file; a new layout gets a new magic.
const MAGIC: &[u8; 16] = b"trainer-pipes-1\n";
/// Magic, payload length (u64, little-endian), SHA-256 of the payload.
const HEADER: usize = MAGIC.len() + 8 + 32;
/// A larger file is not loaded (see the module doc). A ResNet's pipelines take a few MiB.
const MAX_FILE: u64 = 64 << 20;

/// What happened to the cache file at this start.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum CacheState {
    /// The adapter has no `PIPELINE_CACHE` (Metal, DX12, some Vulkan drivers).
    Unsupported,
    /// No directory to keep it in (none of TRAINER_CACHE_DIR, XDG_CACHE_HOME, HOME is set).
    NoDirectory,
    /// No file yet: this start compiles every pipeline and writes one.
    Empty,
    /// The file was given to the driver.
    Loaded { bytes: u64 },
    /// A file was there but not used, and why; the next save replaces it.
    Ignored { reason: String },
}

/// What building pipelines cost this process, and the cache file's state.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PipelineStats {
    /// Pipelines built (each distinct kernel once).
    pub built: usize,
    /// Seconds in `create_shader_module` (naga: WGSL parse and validation).
    pub module_s: f64,
    /// Seconds in `create_compute_pipeline` (SPIR-V out, the driver's compiler or its cache).
    pub pipeline_s: f64,
    /// Wall seconds building took: less than the two above where kernels were built on
    /// several threads at once (`Pipelines::prebuild`).
    pub wall_s: f64,
    pub cache: CacheState,
    pub file: Option<PathBuf>,
    /// Bytes of the last file this process wrote, if it wrote one.
    pub saved_bytes: Option<u64>,
}

impl PipelineStats {
    /// One line: "61 pipelines in 0.42 s (naga 0.05 s, driver 0.37 s), pipeline cache loaded
    /// (1.2 MiB)".
    pub fn summary(&self) -> String {
        let cache = match &self.cache {
            CacheState::Unsupported => "no pipeline cache on this adapter".to_string(),
            CacheState::NoDirectory => "no pipeline cache (no cache directory)".to_string(),
            CacheState::Empty => "pipeline cache empty".to_string(),
            CacheState::Loaded { bytes } => format!(
                "pipeline cache loaded ({})",
                crate::config::values::human(*bytes)
            ),
            CacheState::Ignored { reason } => format!("pipeline cache ignored: {reason}"),
        };
        format!(
            "{} pipeline{} in {:.2} s (naga {:.2} s, driver {:.2} s), {cache}",
            self.built,
            if self.built == 1 { "" } else { "s" },
            self.wall_s,
            self.module_s,
            self.pipeline_s
        )
    }
}

/// The pipelines of one device and its persistent cache.
pub(crate) struct Pipelines {
    memo: Mutex<Memo>,
    driver: Option<DriverCache>,
    warned: AtomicBool,
    /// Kernels take the subgroup reductions (`Shader::source_for`), fixed for the device.
    subgroups: bool,
}

struct Memo {
    pipelines: BTreeMap<Shader, wgpu::ComputePipeline>,
    stats: PipelineStats,
    /// Pipelines built since the file was loaded or written.
    unsaved: usize,
    /// SHA-256 of the wgpu data the file holds (loaded or written by us).
    on_disk: Option<[u8; 32]>,
}

/// One kernel just built, and what it took.
struct Built {
    pipeline: wgpu::ComputePipeline,
    module_s: f64,
    pipeline_s: f64,
}

struct DriverCache {
    cache: wgpu::PipelineCache,
    file: PathBuf,
}

impl Pipelines {
    /// Opens the cache file of this adapter (if the device has `PIPELINE_CACHE`); never fails.
    /// `subgroups`: build kernels with the subgroup reductions (the device has the feature).
    pub(super) fn open(
        device: &wgpu::Device,
        info: &wgpu::AdapterInfo,
        subgroups: bool,
    ) -> Pipelines {
        let key = wgpu::util::pipeline_cache_key(info);
        Pipelines {
            subgroups,
            ..Pipelines::open_in(device, key, cache_dir())
        }
    }

    /// `open` with the file name (`None`: no cache for this adapter) and directory given.
    fn open_in(device: &wgpu::Device, key: Option<String>, dir: Option<PathBuf>) -> Pipelines {
        let key = key.filter(|_| device.features().contains(wgpu::Features::PIPELINE_CACHE));
        let (driver, cache, on_disk) = match (key, dir) {
            (None, _) => (None, CacheState::Unsupported, None),
            (Some(_), None) => (None, CacheState::NoDirectory, None),
            (Some(key), Some(dir)) => {
                let file = dir.join(format!("{key}.pipelines"));
                let (data, mut state) = read(&file);
                let on_disk = data.as_deref().map(|d| Sha256::digest(d).into());
                let cache = match driver_cache(device, data.as_deref()) {
                    Ok(cache) => Some(cache),
                    Err(refused) => {
                        state = CacheState::Ignored { reason: refused };
                        driver_cache(device, None).ok()
                    }
                };
                let driver = cache.map(|cache| DriverCache { cache, file });
                (driver, state, on_disk)
            }
        };
        Pipelines {
            memo: Mutex::new(Memo {
                pipelines: BTreeMap::new(),
                stats: PipelineStats {
                    built: 0,
                    module_s: 0.0,
                    pipeline_s: 0.0,
                    wall_s: 0.0,
                    cache,
                    file: driver.as_ref().map(|d| d.file.clone()),
                    saved_bytes: None,
                },
                unsaved: 0,
                on_disk,
            }),
            driver,
            warned: AtomicBool::new(false),
            subgroups: false,
        }
    }

    fn memo(&self) -> std::sync::MutexGuard<'_, Memo> {
        self.memo.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The pipeline of `shader`, built on first use with `layout` (bindings are matched by
    /// layout entries, and wgpu gives equal layouts one identity, so another executor's
    /// bind groups fit it). `checks`: naga's bounds checks (`Gpu::shader_checks`).
    pub(super) fn get(
        &self,
        device: &wgpu::Device,
        shader: &Shader,
        layout: &wgpu::PipelineLayout,
        checks: bool,
    ) -> Result<wgpu::ComputePipeline, GpuError> {
        if let Some(p) = self.memo().pipelines.get(shader) {
            return Ok(p.clone());
        }
        let started = Instant::now();
        let built = self.build(device, shader, layout, checks)?;
        let pipeline = built.pipeline.clone();
        self.insert(shader, built, started.elapsed().as_secs_f64());
        Ok(pipeline)
    }

    /// Builds the kernels of `wanted` that are not built yet, on all threads at once (drivers
    /// compile in parallel; a first run's start is mostly this), so that `get` finds them.
    pub(super) fn prebuild(
        &self,
        device: &wgpu::Device,
        wanted: &[(&Shader, &wgpu::PipelineLayout)],
        checks: bool,
    ) -> Result<(), GpuError> {
        use rayon::prelude::*;
        let mut missing: Vec<(&Shader, &wgpu::PipelineLayout)> = {
            let memo = self.memo();
            wanted
                .iter()
                .copied()
                .filter(|(s, _)| !memo.pipelines.contains_key(*s))
                .collect()
        };
        missing.sort_by(|a, b| a.0.cmp(b.0));
        missing.dedup_by(|a, b| a.0 == b.0);
        let started = Instant::now();
        let built: Vec<Built> = missing
            .par_iter()
            .map(|&(shader, layout)| self.build(device, shader, layout, checks))
            .collect::<Result<_, _>>()?;
        let wall = started.elapsed().as_secs_f64();
        let n = built.len().max(1) as f64;
        for ((shader, _), b) in missing.iter().zip(built) {
            self.insert(shader, b, wall / n);
        }
        Ok(())
    }

    /// Compiles one kernel (error scopes are per thread in wgpu, so threads may build at once).
    fn build(
        &self,
        device: &wgpu::Device,
        shader: &Shader,
        layout: &wgpu::PipelineLayout,
        checks: bool,
    ) -> Result<Built, GpuError> {
        let cache = self.driver.as_ref().map(|d| &d.cache);
        let oom = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let started = Instant::now();
        let desc = wgpu::ShaderModuleDescriptor {
            label: Some(shader.entry),
            source: wgpu::ShaderSource::Wgsl(shader.source_for(self.subgroups)),
        };
        let module = if checks {
            device.create_shader_module(desc)
        } else {
            // SAFETY: every kernel guards its indices against the sizes in its `Params`,
            // which the executor checked against the bound ranges; the test suite builds every
            // kernel with checks on (TRAINER_SHADER_CHECKS=1). Checks cost up to 48x.
            #[allow(unsafe_code)]
            unsafe {
                device.create_shader_module_trusted(desc, wgpu::ShaderRuntimeChecks::unchecked())
            }
        };
        let modules_done = Instant::now();
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(shader.entry),
            layout: Some(layout),
            module: &module,
            entry_point: Some(shader.entry),
            compilation_options: Default::default(),
            cache,
        });
        let done = Instant::now();
        let v = pollster::block_on(validation.pop());
        let o = pollster::block_on(oom.pop());
        if let Some(e) = o.or(v) {
            return Err(GpuError::Plan(format!(
                "kernel `{}` does not build: {}",
                shader.entry,
                classify(&e, "")
            )));
        }
        Ok(Built {
            pipeline,
            module_s: (modules_done - started).as_secs_f64(),
            pipeline_s: (done - modules_done).as_secs_f64(),
        })
    }

    fn insert(&self, shader: &Shader, b: Built, wall_s: f64) {
        let mut memo = self.memo();
        if memo.pipelines.contains_key(shader) {
            return;
        }
        memo.stats.built += 1;
        memo.stats.module_s += b.module_s;
        memo.stats.pipeline_s += b.pipeline_s;
        memo.stats.wall_s += wall_s;
        memo.unsaved += 1;
        memo.pipelines.insert(shader.clone(), b.pipeline);
    }

    /// Writes the driver's data to the file if this process built pipelines since the last
    /// save and the data differs from the file's (see the module doc). Never fails: a file
    /// that cannot be written is one warning per process.
    pub(super) fn save(&self) {
        let Some(driver) = &self.driver else {
            return;
        };
        let mut memo = self.memo();
        if memo.unsaved == 0 {
            return;
        }
        memo.unsaved = 0;
        let Some(data) = driver.cache.get_data() else {
            return;
        };
        let digest: [u8; 32] = Sha256::digest(&data).into();
        if memo.on_disk == Some(digest) {
            return;
        }
        let bytes = wrap(&data, digest);
        match write_atomic(&driver.file, &bytes) {
            Ok(()) => {
                memo.on_disk = Some(digest);
                memo.stats.saved_bytes = Some(bytes.len() as u64);
            }
            Err(e) if !self.warned.swap(true, Ordering::Relaxed) => crate::errln!(
                "warning: the GPU pipeline cache cannot be written to {}: {e}; the run goes on, but the next start compiles every kernel again (TRAINER_CACHE_DIR chooses the directory)",
                driver.file.display()
            ),
            Err(_) => {}
        }
    }

    pub(crate) fn stats(&self) -> PipelineStats {
        self.memo().stats.clone()
    }
}

/// Where cache files go: `TRAINER_CACHE_DIR`, else `$XDG_CACHE_HOME/trainer` (an absolute
/// path, as the XDG spec requires), else `~/.cache/trainer`.
fn cache_dir() -> Option<PathBuf> {
    let var = |name| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var("TRAINER_CACHE_DIR")
        .or_else(|| {
            var("XDG_CACHE_HOME")
                .filter(|p| p.is_absolute())
                .map(|p| p.join("trainer"))
        })
        .or_else(|| var("HOME").map(|h| h.join(".cache").join("trainer")))
}

/// The wgpu data in `file`, or why there is none (`Empty` when there is no file).
fn read(file: &Path) -> (Option<Vec<u8>>, CacheState) {
    let ignored = |reason: String| (None, CacheState::Ignored { reason });
    let meta = match std::fs::metadata(file) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (None, CacheState::Empty),
        Err(e) => return ignored(format!("{}: {e}", file.display())),
    };
    if !meta.is_file() {
        return ignored(format!("{} is not a regular file", file.display()));
    }
    if meta.len() > MAX_FILE {
        return ignored(format!(
            "{} is above {} (rebuilt from this run's kernels)",
            file.display(),
            crate::config::values::human(MAX_FILE)
        ));
    }
    let bytes = match std::fs::read(file) {
        Ok(b) => b,
        Err(e) => return ignored(format!("{}: {e}", file.display())),
    };
    match unwrap(&bytes) {
        Some(data) => {
            let len = bytes.len() as u64;
            (Some(data.to_vec()), CacheState::Loaded { bytes: len })
        }
        None => ignored(format!("{} is corrupt", file.display())),
    }
}

/// Our file: `MAGIC`, the payload's length and SHA-256, the payload.
fn wrap(data: &[u8], digest: [u8; 32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + data.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(data.len() as u64).to_le_bytes());
    out.extend_from_slice(&digest);
    out.extend_from_slice(data);
    out
}

/// The payload of a file `wrap` wrote; `None` for anything else (truncated, extended,
/// corrupt, another format).
fn unwrap(bytes: &[u8]) -> Option<&[u8]> {
    let rest = bytes.strip_prefix(MAGIC.as_slice())?;
    let (len, rest) = rest.split_first_chunk::<8>()?;
    let (digest, data) = rest.split_first_chunk::<32>()?;
    let whole = u64::from_le_bytes(*len) == data.len() as u64;
    (whole && Sha256::digest(data).as_slice() == digest).then_some(data)
}

/// The driver's cache, started from `data` if given. `Err` with wgpu's reason when it refuses
/// the data (another device's, another driver version's, another wgpu's); the caller then
/// starts empty, as `fallback: true` would, but knows why.
fn driver_cache(device: &wgpu::Device, data: Option<&[u8]>) -> Result<wgpu::PipelineCache, String> {
    let oom = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
    let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);
    // SAFETY: `data` is what `PipelineCache::get_data` returned in an earlier process (our
    // checksum shows the file is whole and unchanged since we wrote it); wgpu checks its own
    // header (adapter, driver version) and refuses a mismatch, and the driver checks its own
    // (vendor, device, build UUID) and ignores data that is not its own.
    #[allow(unsafe_code)]
    let cache = unsafe {
        device.create_pipeline_cache(&wgpu::PipelineCacheDescriptor {
            label: Some("trainer"),
            data,
            fallback: false,
        })
    };
    let v = pollster::block_on(validation.pop());
    let o = pollster::block_on(oom.pop());
    match o.or(v) {
        Some(e) => Err(error_text(&e)),
        None => Ok(cache),
    }
}

/// Writes `bytes` to `path` so that a reader sees the old file or the new one, never part of
/// either: a fresh temporary file in the same directory, fsynced, renamed over `path`, then
/// the directory fsynced.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let tmp = dir.join(format!(".{name}.{}.{nanos}.tmp", std::process::id()));
    let written = (|| {
        // create_new: never follow a link or reuse a file someone else made.
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    #[cfg(unix)]
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_must_be_whole_and_unchanged() {
        let data = b"wgpu data".to_vec();
        let file = wrap(&data, Sha256::digest(&data).into());
        assert_eq!(unwrap(&file), Some(data.as_slice()));
        assert_eq!(unwrap(&file[..file.len() - 1]), None, "truncated");
        assert_eq!(unwrap(&[file.as_slice(), b"x"].concat()), None, "extended");
        for at in [0, MAGIC.len(), HEADER - 1, HEADER + 3] {
            let mut bad = file.clone();
            bad[at] ^= 1;
            assert_eq!(unwrap(&bad), None, "byte {at} flipped");
        }
        assert_eq!(unwrap(b""), None);
        assert_eq!(unwrap(&data), None, "wgpu's data without our header");
    }

    #[test]
    fn a_written_file_replaces_the_old_one_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("x.pipelines");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["x.pipelines"]);
    }

    #[test]
    fn a_missing_unreadable_or_foreign_file_is_reported_not_used() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.pipelines");
        assert_eq!(read(&path), (None, CacheState::Empty));
        std::fs::write(&path, b"garbage").unwrap();
        let (data, state) = read(&path);
        assert!(data.is_none());
        assert!(
            matches!(&state, CacheState::Ignored { reason } if reason.ends_with("is corrupt")),
            "{state:?}"
        );
        let (data, state) = read(dir.path());
        assert!(data.is_none());
        assert!(matches!(state, CacheState::Ignored { .. }), "{state:?}");
        std::fs::write(&path, wrap(b"abc", Sha256::digest(b"abc").into())).unwrap();
        let (data, state) = read(&path);
        assert_eq!(data.as_deref(), Some(b"abc".as_slice()));
        assert_eq!(
            state,
            CacheState::Loaded {
                bytes: HEADER as u64 + 3
            }
        );
    }

    use crate::backend::gpu::{Gpu, test_gpu};

    /// A kernel that writes `value` to its one output; every such kernel has the same entry
    /// and label, so only the source tells them apart.
    fn kernel(value: &str) -> Shader {
        Shader {
            source: format!(
                "@group(0) @binding(0) var<storage, read_write> out: array<f32>;\n\
                 @compute @workgroup_size(1)\nfn main() {{ out[0] = {value}; }}\n"
            )
            .into(),
            entry: "main",
        }
    }

    fn layout(gpu: &Gpu) -> (wgpu::BindGroupLayout, wgpu::PipelineLayout) {
        let bgl = gpu
            .device
            .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: None,
                entries: &[wgpu::BindGroupLayoutEntry {
                    binding: 0,
                    visibility: wgpu::ShaderStages::COMPUTE,
                    ty: wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Storage { read_only: false },
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                    count: None,
                }],
            });
        let pl = gpu
            .device
            .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: None,
                bind_group_layouts: &[Some(&bgl)],
                immediate_size: 0,
            });
        (bgl, pl)
    }

    /// Builds `shader` through `pipelines` and runs it: the value it wrote.
    fn run(gpu: &Gpu, pipelines: &Pipelines, shader: &Shader) -> f32 {
        let (bgl, pl) = layout(gpu);
        let pipeline = pipelines
            .get(&gpu.device, shader, &pl, gpu.shader_checks)
            .unwrap();
        let buffer = |usage| {
            gpu.device.create_buffer(&wgpu::BufferDescriptor {
                label: None,
                size: 4,
                usage,
                mapped_at_creation: false,
            })
        };
        let out = buffer(wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC);
        let read = buffer(wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST);
        let group = gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &bgl,
            entries: &[wgpu::BindGroupEntry {
                binding: 0,
                resource: out.as_entire_binding(),
            }],
        });
        let mut encoder = gpu.device.create_command_encoder(&Default::default());
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            pass.set_pipeline(&pipeline);
            pass.set_bind_group(0, &group, &[]);
            pass.dispatch_workgroups(1, 1, 1);
        }
        encoder.copy_buffer_to_buffer(&out, 0, &read, 0, 4);
        gpu.submit(encoder.finish());
        read.slice(..).map_async(wgpu::MapMode::Read, |_| {});
        gpu.wait().unwrap();
        let view = read.slice(..).get_mapped_range().unwrap();
        bytemuck::cast_slice::<u8, f32>(&view)[0]
    }

    fn state(p: &Pipelines) -> CacheState {
        p.stats().cache
    }

    /// Where the driver really caches (NVIDIA, newer Mesa), a kernel whose source changed
    /// must be compiled anew, not served the binary cached under the same entry and layout;
    /// on every Vulkan driver the file goes from empty to loaded, and a corrupt file or one
    /// of another device is ignored.
    #[test]
    fn a_changed_kernel_is_compiled_anew() {
        let Some(gpu) = test_gpu() else { return };
        if !gpu.features.contains(wgpu::Features::PIPELINE_CACHE) {
            crate::errln!("skipping: the adapter has no PIPELINE_CACHE");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let open = || Pipelines::open_in(&gpu.device, Some("k".into()), Some(dir.path().into()));
        let (one, two) = (kernel("1.0"), kernel("2.0"));
        let first = open();
        assert_eq!(state(&first), CacheState::Empty);
        assert_eq!(run(gpu, &first, &one), 1.0);
        first.save();
        let file = dir.path().join("k.pipelines");
        let saved = std::fs::read(&file).unwrap();
        assert_eq!(first.stats().saved_bytes, Some(saved.len() as u64));

        let second = open();
        let loaded = CacheState::Loaded {
            bytes: saved.len() as u64,
        };
        assert_eq!(state(&second), loaded);
        assert_eq!(
            run(gpu, &second, &two),
            2.0,
            "the changed kernel got a stale binary"
        );
        assert_eq!(run(gpu, &second, &one), 1.0);
        assert_eq!(second.stats().built, 2);

        std::fs::write(&file, b"not a cache").unwrap();
        let corrupt = open();
        assert!(
            matches!(state(&corrupt), CacheState::Ignored { reason } if reason.ends_with("is corrupt"))
        );
        assert_eq!(run(gpu, &corrupt, &two), 2.0);
        corrupt.save();
        assert!(
            unwrap(&std::fs::read(&file).unwrap()).is_some(),
            "not rewritten"
        );

        // Well wrapped, but wgpu's header names another device (a byte of the vendor id,
        // after magic, version, ABI, backend and 3 bytes of padding): wgpu refuses it, we
        // start empty, and the refusal must not reach the device's error handler.
        let mut data = unwrap(&saved).unwrap().to_vec();
        data[8 + 4 + 4 + 1 + 3] ^= 0xff;
        std::fs::write(&file, wrap(&data, Sha256::digest(&data).into())).unwrap();
        let foreign = open();
        assert!(
            matches!(state(&foreign), CacheState::Ignored { reason } if reason.contains("different device")),
            "{:?}",
            state(&foreign)
        );
        assert_eq!(run(gpu, &foreign, &one), 1.0);
        gpu.check().unwrap();

        // This device's, from another driver version (wgpu's validation key: the driver
        // version, after the 15-byte adapter key).
        let mut data = unwrap(&saved).unwrap().to_vec();
        data[8 + 4 + 4 + 1 + 15] ^= 0xff;
        std::fs::write(&file, wrap(&data, Sha256::digest(&data).into())).unwrap();
        let outdated = open();
        assert!(
            matches!(state(&outdated), CacheState::Ignored { reason } if reason.contains("out of date")),
            "{:?}",
            state(&outdated)
        );
        assert_eq!(run(gpu, &outdated, &two), 2.0);
        gpu.check().unwrap();
    }
}
