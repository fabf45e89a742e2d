//! The plan's memory regions as GPU buffers, allocated inside out-of-memory and validation
//! error scopes, so a device that cannot hold the plan gives one screen that says which region,
//! how much, and what to change, rather than an error at some later step.
//!
//! A region above `max_buffer_size` is refused before asking; the others are allocated after
//! every kernel and binding was checked. A refusal names the region and what it holds (State:
//! parameters, statistics, optimizer state; Grads; Inputs: the batch; Arena: activations), the
//! bytes asked, the whole plan per region and the fix (lower `data.batch_size`, or set
//! `train.checkpointing`). It is exit 2, like a tensor above the binding limit: the plan does
//! not fit this device, the config has to change, and a script that retries exit 1 (a device
//! that failed) would fail the same way again. `GpuError::exit_code` is the one place that
//! decides; `fit` (through `backend::PrepareError`) and `bench` use it.

use crate::schedule::{Plan, Region};

use crate::config::values::human;

use super::fault::Fault;
use super::{Gpu, GpuError};

pub(super) const REGIONS: [Region; 4] =
    [Region::State, Region::Grads, Region::Inputs, Region::Arena];

fn holds(r: Region) -> &'static str {
    match r {
        Region::State => "parameters, running statistics and optimizer state",
        Region::Grads => "gradients",
        Region::Inputs => "the batch",
        Region::Arena => "activations and temporaries of one step",
    }
}

const ADVICE: &str = "lower data.batch_size, or set train.checkpointing (\"sqrt\" or \"blocks\") to recompute activations instead of keeping them; `trainer plan` shows where the memory goes";

/// One buffer per region, in `REGIONS` order.
pub(super) fn regions(gpu: &Gpu, plan: &Plan) -> Result<Vec<wgpu::Buffer>, GpuError> {
    let bytes = |r: Region| plan.sizes.get(&r).copied().unwrap_or(0) as u64 * 4;
    let total: u64 = REGIONS.iter().map(|&r| bytes(r)).sum();
    let summary = || {
        let parts: Vec<String> = REGIONS
            .iter()
            .map(|&r| format!("{r:?} {}", human(bytes(r))))
            .collect();
        format!(
            "the plan needs {} on {} ({})",
            human(total),
            gpu.adapter.name,
            parts.join(", ")
        )
    };
    let mut buffers = Vec::with_capacity(REGIONS.len());
    for r in REGIONS {
        let mut ask = bytes(r);
        if ask > gpu.limits.max_buffer_size {
            return Err(GpuError::Plan(format!(
                "the {r:?} region ({}) needs {} but the adapter's largest buffer is {}; {}; {ADVICE}",
                holds(r),
                human(ask),
                human(gpu.limits.max_buffer_size),
                summary()
            )));
        }
        if gpu.fault == Some(Fault::Alloc(r)) {
            ask = gpu.limits.max_buffer_size.saturating_add(4);
        }
        let label = format!("{r:?}");
        match gpu.scoped_raw(|| storage_buffer(gpu, &label, ask)) {
            Ok(b) => buffers.push(b),
            Err(e) => {
                let what = match e {
                    wgpu::Error::OutOfMemory { .. } => "out of GPU memory",
                    _ => "the GPU refused the allocation",
                };
                let injected = match gpu.fault {
                    Some(f @ Fault::Alloc(_)) => format!(" [{}, a testing hook]", f.describe()),
                    _ => String::new(),
                };
                return Err(GpuError::OutOfMemory(format!(
                    "{what}: allocating the {r:?} region ({}), {} asked: {}{injected}\n{}\nto fit: {ADVICE}",
                    holds(r),
                    human(ask),
                    super::error::error_text(&e),
                    summary()
                )));
            }
        }
    }
    Ok(buffers)
}

/// A storage buffer that kernels bind and the host copies to and from.
pub(super) fn storage_buffer(gpu: &Gpu, label: &str, bytes: u64) -> wgpu::Buffer {
    gpu.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        // A zero-sized buffer cannot be bound; every binding is whole vec4s (kernel::gpu).
        size: bytes.max(16).next_multiple_of(16),
        usage: wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_SRC
            | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    })
}
