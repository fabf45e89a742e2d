//! The planned GPU executor. `GpuExec::new` does all the work a step could repeat: one buffer
//! per memory region (the plan's arena is the GPU memory plan), every pipeline, every bind
//! group, every kernel's parameters in one uniform buffer, and where the step's dispatches are
//! cut into submits (`submit.rs`). `step` then only writes the step's scalars and records the
//! dispatches into one compute pass per submit: it creates no buffer and no bind group.
//!
//! `new` refuses, naming the layer, a tensor above the adapter's
//! `max_storage_buffer_binding_size` and a grid above its workgroup limit (`GpuError::Plan`,
//! exit 2). Kernels follow the binding convention of `kernel::gpu` and are built without
//! naga's bounds checks (`create_shader_module_trusted`, up to 48× faster), so each kernel
//! guards its indices against its `Params`; `TRAINER_SHADER_CHECKS=1` (set by the test script)
//! builds them with checks. `eval_once` and `compare_with_cpu` (mod.rs) run one op on
//! NaN-poisoned outputs for the kernel tests.

use std::collections::BTreeMap;
use std::num::NonZeroU64;
use std::ops::Range;

use super::alloc::{REGIONS, storage_buffer};
use super::fault::Fault;
use super::{Gpu, GpuError, submit};
use crate::backend::Captured;
use crate::kernel::gpu::{Bind, Dispatch, KernelArgs, SCRATCH_ALIGN, workspace};
use crate::ops::OpKind;
use crate::schedule::{Launch, Plan, Region, Slot};
use crate::tensor::StepCtx;
use crate::tensor::TensorId;
use crate::tensor::{TensorType, fmt_shape};

const STEP_BYTES: u64 = 32;

fn region_index(r: Region) -> usize {
    REGIONS.iter().position(|&x| x == r).expect("a region")
}

/// Bind group layouts, created once each; pipelines come from the device's (`Gpu::pipelines`).
pub(super) struct Kernels {
    layouts: BTreeMap<usize, (wgpu::BindGroupLayout, wgpu::PipelineLayout)>,
}

impl Kernels {
    pub(super) fn new() -> Kernels {
        Kernels {
            layouts: BTreeMap::new(),
        }
    }

    /// The layout for `storage` storage bindings after the two uniforms.
    fn layout(
        &mut self,
        gpu: &Gpu,
        storage: usize,
    ) -> &(wgpu::BindGroupLayout, wgpu::PipelineLayout) {
        self.layouts.entry(storage).or_insert_with(|| {
            let uniform = |binding| wgpu::BindGroupLayoutEntry {
                binding,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Uniform,
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            };
            let mut entries = vec![uniform(0), uniform(1)];
            entries.extend((0..storage).map(|k| wgpu::BindGroupLayoutEntry {
                binding: 2 + k as u32,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Storage { read_only: false },
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            }));
            let bgl = gpu
                .device
                .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                    label: None,
                    entries: &entries,
                });
            let pl = gpu
                .device
                .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                    label: None,
                    bind_group_layouts: &[Some(&bgl)],
                    immediate_size: 0,
                });
            (bgl, pl)
        })
    }

    /// The kernel's pipeline: built once per device (`pipeline_cache`), whichever executor
    /// asks first.
    fn pipeline(&mut self, gpu: &Gpu, d: &Dispatch) -> Result<wgpu::ComputePipeline, GpuError> {
        let layout = &self.layout(gpu, d.bindings.len()).1;
        gpu.pipelines
            .get(&gpu.device, &d.shader, layout, gpu.shader_checks)
    }

    fn bind_group(
        &mut self,
        gpu: &Gpu,
        storage: &[wgpu::BufferBinding<'_>],
        params: wgpu::BufferBinding<'_>,
        step: &wgpu::Buffer,
    ) -> wgpu::BindGroup {
        let layout = self.layout(gpu, storage.len()).0.clone();
        let mut entries = vec![
            wgpu::BindGroupEntry {
                binding: 0,
                resource: wgpu::BindingResource::Buffer(params),
            },
            wgpu::BindGroupEntry {
                binding: 1,
                resource: step.as_entire_binding(),
            },
        ];
        entries.extend(
            storage
                .iter()
                .enumerate()
                .map(|(k, b)| wgpu::BindGroupEntry {
                    binding: 2 + k as u32,
                    resource: wgpu::BindingResource::Buffer(b.clone()),
                }),
        );
        gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &layout,
            entries: &entries,
        })
    }
}

/// Where a prepared dispatch comes from.
pub(super) struct Origin {
    /// Index into the plan's launches.
    pub launch: usize,
    /// Bytes of the ranges it binds.
    pub bytes: u64,
}

/// One prepared dispatch.
struct Prepared {
    pipeline: wgpu::ComputePipeline,
    bind_group: wgpu::BindGroup,
    workgroups: [u32; 3],
}

/// The dispatches of one op, checked: workgroup counts within the adapter's limit.
pub(super) fn dispatches(
    gpu: &Gpu,
    op: &OpKind,
    inputs: &[&TensorType],
    outputs: &[TensorType],
    layer: &str,
) -> Result<Vec<Dispatch>, GpuError> {
    let name = op.primitive().name();
    let ds = op
        .primitive()
        .gpu(&KernelArgs { inputs, outputs })
        .map_err(|e| GpuError::Plan(format!("layer `{layer}` ({name}): {e}")))?;
    let max = gpu.limits.max_compute_workgroups_per_dimension;
    let max_storage = gpu.limits.max_storage_buffers_per_shader_stage as usize;
    for d in &ds {
        if d.bindings.len() > max_storage {
            return Err(GpuError::Plan(format!(
                "layer `{layer}` ({name}): kernel `{}` binds {} storage buffers, above the adapter's {max_storage} per shader stage",
                d.shader.entry,
                d.bindings.len()
            )));
        }
        if d.workgroups.iter().any(|&w| w > max) {
            return Err(GpuError::Plan(format!(
                "layer `{layer}` ({name}): kernel `{}` needs {:?} workgroups, above the adapter's {max} per dimension",
                d.shader.entry, d.workgroups
            )));
        }
        for b in &d.bindings {
            let ok = match *b {
                Bind::In(i) => i < inputs.len(),
                Bind::Out(j) => j < outputs.len(),
                Bind::Scratch { at, len } => at % SCRATCH_ALIGN == 0 && len > 0,
                Bind::Window(w) => {
                    let n = if w.outputs {
                        outputs.len()
                    } else {
                        inputs.len()
                    };
                    w.count > 0
                        && w.members().all(|i| i < n)
                        && (0..w.count).all(|k| w.word(k) < d.params.len())
                }
            };
            if !ok {
                return Err(GpuError::Plan(format!(
                    "layer `{layer}` ({name}): kernel `{}` binds {b:?}, which the op does not have",
                    d.shader.entry
                )));
            }
        }
    }
    Ok(ds)
}

/// The bytes a binding of `len` words covers: whole vec4s (kernel::gpu's binding convention).
/// Slots start 64 words apart (schedule::memory::ALIGN), so the rounding stays in the slot's
/// own reservation.
fn binding_bytes(len: usize) -> u64 {
    len.max(1).next_multiple_of(4) as u64 * 4
}

/// A slot one binding can hold on this adapter, or the error that names `what` and the fix.
fn check_binding(
    slot: &Slot,
    what: impl FnOnce() -> String,
    max_binding: u64,
    layer: &str,
) -> Result<(), GpuError> {
    if binding_bytes(slot.len) <= max_binding {
        return Ok(());
    }
    let what = what();
    Err(GpuError::Plan(format!(
        "layer `{layer}`: {what} takes {}, above the adapter's storage binding limit of {}; lower data.batch_size",
        crate::config::values::human(binding_bytes(slot.len)),
        crate::config::values::human(max_binding)
    )))
}

/// The memory binding `b` stands for, given the slots of the launch's tensors and its
/// workspace, and the `Params` words (index, value) a `Bind::Window` writes: each member's
/// word offset within the window.
fn resolve(
    b: Bind,
    inputs: &[Slot],
    outputs: &[Slot],
    workspace: Option<Slot>,
    layer: &str,
) -> Result<(Slot, Vec<(usize, u32)>), GpuError> {
    match b {
        Bind::In(i) => Ok((inputs[i], Vec::new())),
        Bind::Out(j) => Ok((outputs[j], Vec::new())),
        Bind::Scratch { at, len } => match workspace {
            Some(w) if at + len <= w.len => Ok((
                Slot {
                    offset: w.offset + at,
                    len,
                    ..w
                },
                Vec::new(),
            )),
            _ => Err(GpuError::Plan(format!(
                "layer `{layer}`: a kernel binds workspace words {at}..{} that the plan did not reserve (an internal error)",
                at + len
            ))),
        },
        Bind::Window(w) => {
            let of = if w.outputs { outputs } else { inputs };
            let slots: Vec<Slot> = w.members().map(|i| of[i]).collect();
            let region = slots[0].region;
            if slots.iter().any(|s| s.region != region) {
                return Err(GpuError::Plan(format!(
                    "layer `{layer}`: a multi-tensor kernel binds tensors of several memory regions at once (an internal error; `--set run.fusion=false` plans without it)"
                )));
            }
            // From a storage-aligned offset (256 bytes: WebGPU's largest alignment).
            let start = slots.iter().map(|s| s.offset).min().unwrap_or(0);
            let start = start - start % SCRATCH_ALIGN;
            let end = slots
                .iter()
                .map(|s| s.offset + s.len)
                .max()
                .unwrap_or(start);
            let words = slots
                .iter()
                .enumerate()
                .map(|(k, s)| {
                    let offset = u32::try_from(s.offset - start).map_err(|_| {
                        GpuError::Plan(format!(
                            "layer `{layer}`: a multi-tensor kernel's window spans more than 2^32 elements; `--set run.fusion=false` plans without it"
                        ))
                    })?;
                    Ok((w.word(k), offset))
                })
                .collect::<Result<Vec<_>, GpuError>>()?;
            let slot = Slot {
                region,
                offset: start,
                len: end - start,
            };
            Ok((slot, words))
        }
    }
}

/// [`resolve`] for binding `b` of launch `l`.
fn bound_slot(l: &Launch, b: Bind, layer: &str) -> Result<(Slot, Vec<(usize, u32)>), GpuError> {
    resolve(b, &l.inputs, &l.outputs, l.workspace, layer)
}

/// Uniform offsets must be multiples of this (WebGPU's default and maximum requirement).
const UNIFORM_ALIGN: u64 = 256;

/// Parameters of all dispatches packed into one uniform buffer: (buffer, offset and size of
/// each). Each `Params` is padded to 16 bytes, as WGSL lays out uniform structs.
fn pack_params(gpu: &Gpu, all: &[&[u32]]) -> (wgpu::Buffer, Vec<(u64, u64)>) {
    let mut bytes: Vec<u8> = Vec::new();
    let mut at = Vec::with_capacity(all.len());
    for p in all {
        let offset = bytes.len() as u64;
        let mut words = p.to_vec();
        words.resize(words.len().div_ceil(4).max(1) * 4, 0);
        bytes.extend_from_slice(bytemuck::cast_slice(&words));
        at.push((offset, (words.len() * 4) as u64));
        bytes.resize(bytes.len().next_multiple_of(UNIFORM_ALIGN as usize), 0);
    }
    if bytes.is_empty() {
        bytes.resize(16, 0);
    }
    let buffer = gpu.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("params"),
        size: bytes.len() as u64,
        usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    gpu.queue.write_buffer(&buffer, 0, &bytes);
    (buffer, at)
}

fn step_buffer(gpu: &Gpu) -> wgpu::Buffer {
    gpu.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("step"),
        size: STEP_BYTES,
        usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    })
}

/// kernels/common.wgsl's `Step`.
fn step_bytes(ctx: StepCtx) -> [u32; 8] {
    [
        (ctx.lr as f32).to_bits(),
        ctx.step as u32,
        ctx.seed as u32,
        (ctx.seed >> 32) as u32,
        0,
        0,
        0,
        0,
    ]
}

/// Copies `len` floats from `buffer` at `offset` to the host (blocking: tests, checkpoints).
fn download(
    gpu: &Gpu,
    buffer: &wgpu::Buffer,
    offset: u64,
    len: usize,
) -> Result<Vec<f32>, GpuError> {
    Ok(download_many(gpu, &[(buffer, offset, len)])?.remove(0))
}

/// Copies several ranges `(buffer, offset, floats)` to the host with one submit and one wait
/// (the training loop reads the loss and the logits after every step).
fn download_many(
    gpu: &Gpu,
    ranges: &[(&wgpu::Buffer, u64, usize)],
) -> Result<Vec<Vec<f32>>, GpuError> {
    let total: usize = ranges.iter().map(|&(_, _, len)| len.max(1)).sum();
    let staging = gpu.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("readback"),
        size: total as u64 * 4,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut encoder = gpu
        .device
        .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
    let mut at = 0u64;
    for &(buffer, offset, len) in ranges {
        let bytes = len.max(1) as u64 * 4;
        encoder.copy_buffer_to_buffer(buffer, offset, &staging, at, bytes);
        at += bytes;
    }
    gpu.queue.submit([encoder.finish()]);
    let slice = staging.slice(..);
    slice.map_async(wgpu::MapMode::Read, |_| {});
    gpu.wait()?;
    let view = slice
        .get_mapped_range()
        .map_err(|e| GpuError::Runtime(format!("reading back: {e}")))?;
    let all: &[f32] = bytemuck::cast_slice(&view);
    let mut start = 0;
    let values = ranges
        .iter()
        .map(|&(_, _, len)| {
            let v = all[start..start + len].to_vec();
            start += len.max(1);
            v
        })
        .collect();
    drop(view);
    staging.unmap();
    Ok(values)
}

pub struct GpuExec<'g> {
    gpu: &'g Gpu,
    pub plan: Plan,
    regions: Vec<wgpu::Buffer>,
    step: wgpu::Buffer,
    prepared: Vec<Prepared>,
    /// Estimated seconds of each prepared dispatch, and the runs of them submitted together.
    costs: Vec<f64>,
    submits: Vec<Range<usize>>,
    /// Estimated seconds a submit may take (`TRAINER_GPU_SUBMIT_MS`).
    budget: f64,
    /// Where each dispatch comes from: to name a long one's layer, and for `profile`.
    pub(super) origins: Vec<Origin>,
    /// Whether a step was timed to correct `costs` (see `calibrate`).
    calibrated: bool,
    /// Kept alive for the bind groups that point into it.
    _params: wgpu::Buffer,
    /// A copy of the State region (`train.on_nonfinite = "skip_step"`), made on first use.
    backup: Option<wgpu::Buffer>,
    /// Captures read back without waiting, and the wait counter (readback.rs).
    pub(super) readback: super::readback::Readback,
}

impl<'g> GpuExec<'g> {
    /// Builds everything a step needs and initialises parameters from `seed` (graph::init), the
    /// same values the CPU backend starts from.
    pub fn new(gpu: &'g Gpu, plan: Plan, seed: u64) -> Result<GpuExec<'g>, GpuError> {
        let g = &plan.graph;
        let max_binding = gpu.limits.max_storage_buffer_binding_size;
        let mut all: Vec<(usize, Dispatch)> = Vec::new();
        for (li, l) in plan.launches.iter().enumerate() {
            let node = &g.dag[l.node];
            if matches!(node.op, OpKind::Parameter(_) | OpKind::Input(_)) {
                continue;
            }
            let layer = &g.layers[node.layer].name;
            let in_types: Vec<&TensorType> = node.inputs.iter().map(|&t| g.ty(t)).collect();
            // Before the kernels are planned: their 32-bit indices assume bindable tensors.
            let tensors = l.inputs.iter().zip(&in_types).map(|(s, t)| (s, *t));
            for (slot, ty) in tensors.chain(l.outputs.iter().zip(&node.outputs)) {
                let what = || format!("a tensor of shape {}", fmt_shape(&ty.shape));
                check_binding(slot, what, max_binding, layer)?;
            }
            for mut d in dispatches(gpu, &node.op, &in_types, &node.outputs, layer)? {
                // Tensors were checked above; workspace (and its reservation) and windows here,
                // whose members' offsets go into the kernel's parameters.
                for &b in &d.bindings {
                    let (slot, words) = match b {
                        Bind::Scratch { .. } | Bind::Window(_) => bound_slot(l, b, layer)?,
                        _ => continue,
                    };
                    let what = || match b {
                        Bind::Window(_) => format!(
                            "the tensors kernel `{}` binds at once (a fused launch; `--set run.fusion=false` plans without it)",
                            d.shader.entry
                        ),
                        _ => format!("the workspace of kernel `{}`", d.shader.entry),
                    };
                    check_binding(&slot, what, max_binding, layer)?;
                    for (word, value) in words {
                        d.params[word] = value;
                    }
                }
                all.push((li, d));
            }
        }
        let rate = submit::Rate::for_adapter(&gpu.adapter.device_type);
        let mut kernels_of: BTreeMap<usize, u64> = BTreeMap::new();
        for (li, _) in &all {
            *kernels_of.entry(*li).or_default() += 1;
        }
        let origins: Vec<Origin> = all
            .iter()
            .map(|(li, d)| {
                let l = &plan.launches[*li];
                let bytes: usize = d
                    .bindings
                    .iter()
                    .map(|&b| bound_slot(l, b, "").map_or(0, |(s, _)| s.len))
                    .sum();
                Origin {
                    launch: *li,
                    bytes: bytes as u64 * 4,
                }
            })
            .collect();
        // An op's FLOPs, shared evenly by its dispatches; bytes are what each binds.
        let costs: Vec<f64> = origins
            .iter()
            .map(|o| {
                let node = plan.launches[o.launch].node;
                rate.seconds(g.flops(node) / kernels_of[&o.launch], o.bytes)
            })
            .collect();
        let submits = submit::split(&costs, gpu.submit_budget);
        let regions = super::alloc::regions(gpu, &plan)?;
        let param_words: Vec<&[u32]> = all.iter().map(|(_, d)| d.params.as_slice()).collect();
        let (params, at) = pack_params(gpu, &param_words);
        let step = step_buffer(gpu);
        let mut kernels = Kernels::new();
        let layouts: Vec<wgpu::PipelineLayout> = all
            .iter()
            .map(|(_, d)| kernels.layout(gpu, d.bindings.len()).1.clone())
            .collect();
        let wanted: Vec<_> = all
            .iter()
            .zip(&layouts)
            .map(|((_, d), l)| (&d.shader, l))
            .collect();
        gpu.pipelines
            .prebuild(&gpu.device, &wanted, gpu.shader_checks)?;
        let mut prepared = Vec::with_capacity(all.len());
        for ((li, d), &(offset, size)) in all.iter().zip(&at) {
            let l = &plan.launches[*li];
            let storage: Vec<wgpu::BufferBinding<'_>> = d
                .bindings
                .iter()
                .map(|&b| {
                    // Checked when the dispatches were collected above.
                    let (slot, _) = bound_slot(l, b, "").expect("a checked binding");
                    wgpu::BufferBinding {
                        buffer: &regions[region_index(slot.region)],
                        offset: slot.offset as u64 * 4,
                        size: NonZeroU64::new(binding_bytes(slot.len)),
                    }
                })
                .collect();
            let pipeline = kernels.pipeline(gpu, d)?;
            let uniform = wgpu::BufferBinding {
                buffer: &params,
                offset,
                size: NonZeroU64::new(size),
            };
            let bind_group = gpu.scoped(|| kernels.bind_group(gpu, &storage, uniform, &step))?;
            prepared.push(Prepared {
                pipeline,
                bind_group,
                workgroups: d.workgroups,
            });
        }
        let mut exec = GpuExec {
            gpu,
            plan,
            regions,
            step,
            prepared,
            costs,
            submits,
            budget: gpu.submit_budget,
            origins,
            calibrated: false,
            _params: params,
            backup: None,
            readback: Default::default(),
        };
        for i in 0..exec.plan.graph.params.len() {
            let p = &exec.plan.graph.params[i];
            let values = p.init.values(seed, &p.name, p.ty.numel());
            exec.set_param(i, &values);
        }
        gpu.check()?;
        // The driver's compiled pipelines, for the next process (`pipeline_cache`).
        gpu.pipelines.save();
        Ok(exec)
    }

    /// Queues a copy of `ts` behind the last step without waiting (readback.rs and
    /// `Exec::capture`). The first call sets the tensors; another set needs a drain first.
    pub fn capture(&mut self, ts: &[TensorId]) -> Result<(), GpuError> {
        if !self.readback.copies(ts) {
            let sources = ts
                .iter()
                .map(|&t| {
                    self.source(t).ok_or_else(|| {
                        GpuError::Plan(format!("capture: tensor {t:?} is not kept by the plan"))
                    })
                })
                .collect::<Result<Vec<_>, GpuError>>()?;
            self.readback.set_tensors(ts, sources)?;
        }
        self.readback.capture(self.gpu)
    }

    /// Starts reading back the captures queued so far; does not wait.
    pub fn flush_captures(&mut self) -> Result<(), GpuError> {
        self.readback.flush();
        self.gpu.check()
    }

    /// The captures whose values have arrived, oldest first. Never waits.
    pub fn poll_captures(&mut self) -> Result<Vec<Captured>, GpuError> {
        self.readback.poll(self.gpu)
    }

    /// Every capture not yet returned, oldest first: reads back the partial buffer too and
    /// waits for the device (one wait, counted, when anything is outstanding).
    pub fn drain_captures(&mut self) -> Result<Vec<Captured>, GpuError> {
        self.readback.drain(self.gpu)
    }

    /// How many times the host waited for data from the device: blocking reads (`read`,
    /// `params`), drains, and a capture finding every staging buffer unread. A training loop
    /// that captures and polls keeps it at 0 between drains.
    pub fn blocking_waits(&self) -> u64 {
        self.readback.waits()
    }

    /// How many captures waited for the step `MAX_AHEAD` back (the device had that many
    /// steps queued, so it did not idle).
    pub fn throttle_waits(&self) -> u64 {
        self.readback.throttles()
    }

    /// Where tensor `t` lives: its region's buffer, byte offset and byte length.
    pub(super) fn source(&self, t: TensorId) -> Option<(wgpu::Buffer, u64, u64)> {
        let s = self.plan.slots.get(&t)?;
        let buffer = self.regions[region_index(s.region)].clone();
        Some((buffer, s.offset as u64 * 4, s.len as u64 * 4))
    }

    pub fn adapter(&self) -> &super::AdapterSummary {
        &self.gpu.adapter
    }

    /// Dispatches per step (an op may take several).
    pub fn dispatch_count(&self) -> usize {
        self.prepared.len()
    }

    fn write(&self, s: Slot, values: &[f32]) {
        self.gpu.queue.write_buffer(
            &self.regions[region_index(s.region)],
            s.offset as u64 * 4,
            bytemuck::cast_slice(values),
        );
    }

    pub fn set_param(&mut self, i: usize, values: &[f32]) {
        let s = self.plan.params[i];
        assert_eq!(values.len(), s.len, "parameter {i} has {} elements", s.len);
        self.write(s, values);
    }

    /// Writes the batch: `values` for the input tensor `t` (features or labels).
    pub fn feed(&mut self, t: TensorId, values: &[f32]) -> Result<(), GpuError> {
        let s = self.plan.slots[&t];
        if values.len() != s.len {
            return Err(GpuError::Plan(format!(
                "fed {} values for {} elements",
                values.len(),
                s.len
            )));
        }
        self.write(s, values);
        Ok(())
    }

    /// Copies every parameter and state tensor aside, on the GPU, before the next step.
    pub fn save_state(&mut self) -> Result<(), GpuError> {
        let bytes = self.regions[region_index(Region::State)].size();
        if self.backup.is_none() {
            self.backup = Some(storage_buffer(self.gpu, "state backup", bytes));
        }
        let backup = self.backup.as_ref().expect("made above");
        self.copy(&self.regions[region_index(Region::State)], backup, bytes)
    }
    /// Puts back what `save_state` copied: the steps since then never happened.
    pub fn restore_state(&mut self) -> Result<(), GpuError> {
        let Some(backup) = &self.backup else {
            return Ok(());
        };
        let state = &self.regions[region_index(Region::State)];
        self.copy(backup, state, state.size())
    }
    fn copy(&self, from: &wgpu::Buffer, to: &wgpu::Buffer, bytes: u64) -> Result<(), GpuError> {
        let mut encoder = self
            .gpu
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("state copy"),
            });
        encoder.copy_buffer_to_buffer(from, 0, to, 0, bytes);
        self.gpu.queue.submit([encoder.finish()]);
        self.gpu.check()
    }

    /// Submits per step: runs of dispatches each estimated within the submit budget.
    pub fn submits_per_step(&self) -> usize {
        self.submits.len()
    }

    /// Cuts the step anew for an estimated `seconds` per submit (`f64::INFINITY`: one
    /// submit); `Gpu::submit_budget` is the default.
    pub fn set_submit_budget(&mut self, seconds: f64) {
        self.budget = seconds;
        self.submits = submit::split(&self.costs, seconds);
    }

    /// The plan-time estimates assume a slow GPU, so that no submit can reach the watchdog
    /// before anything was measured; on a fast one they cut a step into many submits for
    /// nothing. The first step cut in several is timed (one wait), every estimate is scaled
    /// by measured / estimated, with a margin of 2, and the step is cut anew. Cuts only end
    /// command buffers: no result changes.
    fn calibrate(&mut self, started: std::time::Instant) -> Result<(), GpuError> {
        self.gpu.wait()?;
        self.calibrated = true;
        let measured = started.elapsed().as_secs_f64();
        let estimated: f64 = self.costs.iter().sum();
        if estimated > 0.0 && measured > 0.0 {
            let scale = 2.0 * measured / estimated;
            for c in &mut self.costs {
                *c *= scale;
            }
            self.submits = submit::split(&self.costs, self.budget);
        }
        // Only now, with measured speed, can a single kernel be said to be too long.
        let layers = &self.plan.graph.layers;
        let dag = &self.plan.graph.dag;
        let long: Vec<(String, f64)> = self
            .costs
            .iter()
            .zip(&self.origins)
            .filter(|&(&c, _)| c > self.budget)
            .map(|(&c, o)| {
                let layer = dag[self.plan.launches[o.launch].node].layer;
                (layers[layer].name.clone(), c)
            })
            .collect();
        submit::warn_long(&long, self.budget);
        Ok(())
    }

    /// Records dispatch `i` into `pass`.
    pub(super) fn record(&self, pass: &mut wgpu::ComputePass<'_>, i: usize) {
        let p = &self.prepared[i];
        pass.set_pipeline(&p.pipeline);
        pass.set_bind_group(0, &p.bind_group, &[]);
        let [x, y, z] = p.workgroups;
        pass.dispatch_workgroups(x, y, z);
    }

    /// The runs of dispatches submitted together (each within the submit budget).
    pub(super) fn submit_runs(&self) -> &[Range<usize>] {
        &self.submits
    }

    /// Writes the step's scalars and notes the step for error messages, before its dispatches.
    pub(super) fn begin_step(&self, ctx: StepCtx) {
        if ctx.step > 0 {
            self.gpu.set_step(ctx.step);
        }
        self.gpu
            .queue
            .write_buffer(&self.step, 0, bytemuck::cast_slice(&step_bytes(ctx)));
    }

    pub(super) fn gpu(&self) -> &'g Gpu {
        self.gpu
    }

    /// Records the plan's launches, one compute pass and submit per run of `submits`, in
    /// order. Does not wait, except to time the first step that is cut (`calibrate`).
    pub fn step(&mut self, ctx: StepCtx) -> Result<(), GpuError> {
        let gpu = self.gpu;
        // A lost device fails every call: stop here rather than queue work that cannot run.
        gpu.check()?;
        self.begin_step(ctx);
        let started = std::time::Instant::now();
        for run in &self.submits {
            let mut encoder = gpu
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("step"),
                });
            {
                let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("step"),
                    timestamp_writes: None,
                });
                for i in run.clone() {
                    self.record(&mut pass, i);
                }
            }
            gpu.submit(encoder.finish());
        }
        if !self.calibrated && self.submits.len() > 1 {
            self.calibrate(started)?;
        }
        match gpu.fault() {
            // Outside any error scope: the uncaptured handler gets it, as it would an
            // out-of-memory error raised by the step.
            Some(Fault::Error(n)) if n == ctx.step => {
                storage_buffer(gpu, "fault", gpu.limits.max_buffer_size.saturating_add(4));
            }
            Some(Fault::Lost(n)) if n == ctx.step => gpu.device.destroy(),
            _ => {}
        }
        gpu.check()
    }

    /// A tensor that outlives the step (blocking: waits for the queue).
    pub fn read(&self, t: TensorId) -> Result<Vec<f32>, GpuError> {
        self.read_slot(self.plan.slots[&t])
    }
    /// Several tensors with one wait for the queue.
    pub fn read_many(&self, ts: &[TensorId]) -> Result<Vec<Vec<f32>>, GpuError> {
        let ranges: Vec<_> = ts
            .iter()
            .map(|t| {
                let s = self.plan.slots[t];
                (
                    &self.regions[region_index(s.region)],
                    s.offset as u64 * 4,
                    s.len,
                )
            })
            .collect();
        self.readback.count_wait();
        download_many(self.gpu, &ranges)
    }
    pub fn param(&self, i: usize) -> Result<Vec<f32>, GpuError> {
        self.read_slot(self.plan.params[i])
    }
    /// Every parameter and state tensor, in `graph.params` order, from one download of the
    /// State region (checkpoints and evaluation read them all at once).
    pub fn params(&self) -> Result<Vec<Vec<f32>>, GpuError> {
        let len = self.plan.sizes.get(&Region::State).copied().unwrap_or(0);
        self.readback.count_wait();
        let state = download(self.gpu, &self.regions[region_index(Region::State)], 0, len)?;
        Ok(self
            .plan
            .params
            .iter()
            .map(|s| state[s.offset..s.offset + s.len].to_vec())
            .collect())
    }
    fn read_slot(&self, s: Slot) -> Result<Vec<f32>, GpuError> {
        self.readback.count_wait();
        download(
            self.gpu,
            &self.regions[region_index(s.region)],
            s.offset as u64 * 4,
            s.len,
        )
    }
}

/// Evaluates one op on the GPU on fresh memory, outputs NaN-filled first so an element the
/// kernel forgets cannot pass: the GPU twin of `cpu::eval_once`, for kernel tests. Inputs,
/// outputs and workspace share one buffer, each at a storage-aligned offset, and bindings
/// resolve as the executor's do (`Bind::Window` included).
pub fn eval_once(
    gpu: &Gpu,
    op: &OpKind,
    ins: &[(&TensorType, &[f32])],
    ctx: StepCtx,
) -> Result<Vec<Vec<f32>>, GpuError> {
    let types: Vec<&TensorType> = ins.iter().map(|(t, _)| *t).collect();
    let out_types = op.primitive().infer(&types).map_err(GpuError::Plan)?;
    let mut ds = dispatches(gpu, op, &types, &out_types, "eval_once")?;
    let mut memory: Vec<f32> = Vec::new();
    let mut place = |values: &[f32]| {
        let slot = Slot {
            region: Region::Arena,
            offset: memory.len(),
            len: values.len(),
        };
        memory.extend_from_slice(values);
        // At least a word each: an empty tensor is bound as 4 bytes.
        let end = slot.offset + values.len().max(1);
        memory.resize(end.next_multiple_of(SCRATCH_ALIGN), 0.0);
        slot
    };
    let inputs: Vec<Slot> = ins.iter().map(|(_, v)| place(v)).collect();
    let outputs: Vec<Slot> = out_types
        .iter()
        .map(|t| place(&vec![f32::NAN; t.numel()]))
        .collect();
    // Poisoned like the outputs: a kernel that reads workspace it did not write gives NaN.
    let words = workspace(&ds);
    let scratch = (words > 0).then(|| place(&vec![f32::NAN; words]));
    let mut bound: Vec<Vec<Slot>> = Vec::new();
    for d in &mut ds {
        let mut slots = Vec::new();
        for &b in &d.bindings {
            let (slot, words) = resolve(b, &inputs, &outputs, scratch, "eval_once")?;
            for (word, value) in words {
                d.params[word] = value;
            }
            slots.push(slot);
        }
        bound.push(slots);
    }
    let buffer = storage_buffer(gpu, "eval_once", memory.len() as u64 * 4);
    gpu.queue
        .write_buffer(&buffer, 0, bytemuck::cast_slice(&memory));
    let words: Vec<&[u32]> = ds.iter().map(|d| d.params.as_slice()).collect();
    let (params, at) = pack_params(gpu, &words);
    let step = step_buffer(gpu);
    gpu.queue
        .write_buffer(&step, 0, bytemuck::cast_slice(&step_bytes(ctx)));
    let mut kernels = Kernels::new();
    let mut encoder = gpu
        .device
        .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
    let mut groups = Vec::new();
    for ((d, &(offset, size)), slots) in ds.iter().zip(&at).zip(&bound) {
        let storage: Vec<wgpu::BufferBinding<'_>> = slots
            .iter()
            .map(|s| wgpu::BufferBinding {
                buffer: &buffer,
                offset: s.offset as u64 * 4,
                size: NonZeroU64::new(binding_bytes(s.len)),
            })
            .collect();
        let uniform = wgpu::BufferBinding {
            buffer: &params,
            offset,
            size: NonZeroU64::new(size),
        };
        let pipeline = kernels.pipeline(gpu, d)?;
        let bg = gpu.scoped(|| kernels.bind_group(gpu, &storage, uniform, &step))?;
        groups.push((pipeline, bg, d.workgroups));
    }
    {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor::default());
        for (pipeline, bg, [x, y, z]) in &groups {
            pass.set_pipeline(pipeline);
            pass.set_bind_group(0, bg, &[]);
            pass.dispatch_workgroups(*x, *y, *z);
        }
    }
    gpu.queue.submit([encoder.finish()]);
    gpu.check()?;
    let ranges: Vec<_> = outputs
        .iter()
        .map(|s| (&buffer, s.offset as u64 * 4, s.len))
        .collect();
    download_many(gpu, &ranges)
}
