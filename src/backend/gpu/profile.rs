//! Per-dispatch GPU time for `trainer bench --profile`: one step whose every dispatch is
//! bracketed by timestamp writes. With `TIMESTAMP_QUERY_INSIDE_PASSES` the step records the
//! same passes as `GpuExec::step` (one per submit) with a timestamp before and after each
//! dispatch; with only `TIMESTAMP_QUERY` each dispatch gets a pass of its own whose begin and
//! end timestamps bracket it (a pass costs the host time, not the kernel's GPU time). The same
//! dispatches run in the same order on the same memory, so a profiled step computes what a
//! normal one does; its query sets and buffers are made here, never in `step`.

use std::time::Instant;

use super::exec::GpuExec;
use super::{Gpu, GpuError};
use crate::tensor::StepCtx;

/// Two timestamps per dispatch; a query set holds at most this many.
const QUERIES_PER_SET: u32 = wgpu::QUERY_SET_MAX_QUERIES;
const DISPATCHES_PER_SET: usize = QUERIES_PER_SET as usize / 2;
/// Bytes of one query set's resolved timestamps (a multiple of the resolve alignment).
const SET_BYTES: u64 = QUERIES_PER_SET as u64 * wgpu::QUERY_SIZE as u64;

/// Where the timestamps were written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Timestamps {
    /// Between dispatches inside one pass per submit (`TIMESTAMP_QUERY_INSIDE_PASSES`).
    InsidePasses,
    /// At the begin and end of one pass per dispatch (`TIMESTAMP_QUERY` only).
    PassPerDispatch,
}

/// The GPU time of one dispatch.
#[derive(Clone, Debug)]
pub struct DispatchTime {
    /// Index into the plan's launches.
    pub launch: usize,
    /// Bytes of the ranges the dispatch binds.
    pub bytes: u64,
    pub seconds: f64,
}

/// One profiled step: every dispatch in launch order, and the step's wall time.
#[derive(Clone, Debug)]
pub struct Profile {
    pub timestamps: Timestamps,
    pub dispatches: Vec<DispatchTime>,
    /// From the first submit to the end of the wait for the last.
    pub wall_seconds: f64,
}

impl Gpu {
    /// How this device can time dispatches, or the error that names the missing feature.
    pub fn timestamps(&self) -> Result<Timestamps, GpuError> {
        if self
            .features
            .contains(wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES)
        {
            Ok(Timestamps::InsidePasses)
        } else if self.features.contains(wgpu::Features::TIMESTAMP_QUERY) {
            Ok(Timestamps::PassPerDispatch)
        } else {
            Err(GpuError::Plan(format!(
                "the adapter {} ({}) lacks the TIMESTAMP_QUERY feature, which --profile needs to time kernels",
                self.adapter.name, self.adapter.backend
            )))
        }
    }
}

impl GpuExec<'_> {
    /// Runs one step like `step`, each dispatch timed on the GPU. Waits for the device before
    /// and after, so the wall time is this step's alone.
    pub fn profile_step(&self, ctx: StepCtx) -> Result<Profile, GpuError> {
        self.profile_step_with(ctx, self.gpu().timestamps()?)
    }

    /// `profile_step` with timestamps written as `timestamps` says (a pass per dispatch works
    /// wherever TIMESTAMP_QUERY does; tests run both ways on one adapter).
    pub fn profile_step_with(
        &self,
        ctx: StepCtx,
        timestamps: Timestamps,
    ) -> Result<Profile, GpuError> {
        let gpu = self.gpu();
        if gpu.timestamps()? == Timestamps::PassPerDispatch
            && timestamps == Timestamps::InsidePasses
        {
            return Err(GpuError::Plan(format!(
                "the adapter {} lacks TIMESTAMP_QUERY_INSIDE_PASSES",
                gpu.adapter.name
            )));
        }
        let n = self.dispatch_count();
        let sets: Vec<wgpu::QuerySet> = (0..n.div_ceil(DISPATCHES_PER_SET))
            .map(|k| {
                let dispatches = (n - k * DISPATCHES_PER_SET).min(DISPATCHES_PER_SET);
                gpu.device.create_query_set(&wgpu::QuerySetDescriptor {
                    label: Some("profile"),
                    ty: wgpu::QueryType::Timestamp,
                    count: 2 * dispatches as u32,
                })
            })
            .collect();
        let resolved_bytes = SET_BYTES * sets.len().max(1) as u64;
        let resolved = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("profile resolve"),
            size: resolved_bytes,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let staging = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("profile readback"),
            size: resolved_bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        // Query `2i` before dispatch `i`, `2i + 1` after it, in set `i / DISPATCHES_PER_SET`.
        let query = |i: usize| {
            (
                &sets[i / DISPATCHES_PER_SET],
                2 * (i % DISPATCHES_PER_SET) as u32,
            )
        };

        gpu.check()?;
        gpu.wait()?;
        self.begin_step(ctx);
        let started = Instant::now();
        for run in self.submit_runs() {
            let mut encoder = gpu
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("profiled step"),
                });
            match timestamps {
                Timestamps::InsidePasses => {
                    let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: Some("profiled step"),
                        timestamp_writes: None,
                    });
                    for i in run.clone() {
                        let (set, q) = query(i);
                        pass.write_timestamp(set, q);
                        self.record(&mut pass, i);
                        pass.write_timestamp(set, q + 1);
                    }
                }
                Timestamps::PassPerDispatch => {
                    for i in run.clone() {
                        let (set, q) = query(i);
                        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                            label: Some("profiled dispatch"),
                            timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                                query_set: set,
                                beginning_of_pass_write_index: Some(q),
                                end_of_pass_write_index: Some(q + 1),
                            }),
                        });
                        self.record(&mut pass, i);
                    }
                }
            }
            gpu.submit(encoder.finish());
        }
        gpu.wait()?;
        let wall_seconds = started.elapsed().as_secs_f64();

        let mut encoder = gpu
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("profile resolve"),
            });
        for (k, set) in sets.iter().enumerate() {
            let dispatches = (n - k * DISPATCHES_PER_SET).min(DISPATCHES_PER_SET);
            encoder.resolve_query_set(
                set,
                0..2 * dispatches as u32,
                &resolved,
                k as u64 * SET_BYTES,
            );
        }
        encoder.copy_buffer_to_buffer(&resolved, 0, &staging, 0, resolved_bytes);
        gpu.submit(encoder.finish());
        let slice = staging.slice(..);
        slice.map_async(wgpu::MapMode::Read, |_| {});
        gpu.wait()?;
        let ticks: Vec<u64> = {
            let view = slice
                .get_mapped_range()
                .map_err(|e| GpuError::Runtime(format!("reading back timestamps: {e}")))?;
            bytemuck::cast_slice(&view).to_vec()
        };
        staging.unmap();
        // Nanoseconds per tick.
        let period = gpu.queue.get_timestamp_period() as f64;
        let dispatches = self
            .origins
            .iter()
            .enumerate()
            .map(|(i, o)| {
                let at = (i / DISPATCHES_PER_SET) * QUERIES_PER_SET as usize
                    + 2 * (i % DISPATCHES_PER_SET);
                let elapsed = ticks[at + 1].saturating_sub(ticks[at]);
                DispatchTime {
                    launch: o.launch,
                    bytes: o.bytes,
                    seconds: elapsed as f64 * period * 1e-9,
                }
            })
            .collect();
        gpu.check()?;
        Ok(Profile {
            timestamps,
            dispatches,
            wall_seconds,
        })
    }
}
