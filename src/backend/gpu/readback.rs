//! Reading a few small tensors (the loss, the logits) back after every step without making the
//! host wait for the step. A blocking read submits a copy and waits for the queue, so the host
//! cannot feed the next batch until the device has finished the step: the device then idles
//! while the host prepares it. Instead, `capture` queues a copy of the tensors into the next
//! row of a host-visible staging buffer behind the step, and nothing waits; a full buffer, or
//! one `flush_captures` closes (a log point), is mapped with `map_async`, whose callback only
//! records the result; `poll_captures` polls the device without blocking and returns the rows
//! of the buffers whose mapping has completed, in capture order; `drain_captures` waits.
//!
//! Staging buffers come from a small pool made on first use and reused: a step creates no
//! buffer. Copies go straight into the MAP_READ buffer (no device-side ring and second copy:
//! the rows are a few bytes per step). Two bounds keep the host from running ahead without
//! limit (every queued step holds a batch in wgpu's staging memory): a capture waits for the
//! step `MAX_AHEAD` back when that one has not finished (the device still has `MAX_AHEAD`
//! steps queued, so it never idles for it), and when every pooled buffer is waiting to be read
//! it waits for the oldest (only a caller that never polls gets there).
//!
//! Sizes: a staging buffer holds at most `MAX_ROWS` (64) steps, fewer where a row is large
//! (`MAX_STAGING_BYTES`), and the pool at most `MAX_STAGING` (8) buffers. Blocking reads
//! (`GpuExec::read`, `read_many`, `params`: a copy, a submit, one wait for the queue) are for
//! checkpoints, evaluation and tests. `GpuExec::blocking_waits` counts every wait for data
//! (reads, drains, an exhausted pool) and `throttle_waits` the `MAX_AHEAD` throttle: a loop
//! that captures and polls keeps the first at 0 between drains. A failed mapping or a lost
//! device is a `GpuError`, never a panic. `CpuExec::capture` copies at once and its polls
//! return the copy: one protocol for both backends (`backend::Exec::capture`).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::{Gpu, GpuError};
use crate::backend::Captured;
use crate::tensor::TensorId;

/// Most steps whose captures the host lets the device owe it.
const MAX_AHEAD: u64 = 4;
/// Most rows (steps) per staging buffer: a readback every this many steps at the latest.
const MAX_ROWS: u64 = 64;
/// Rows per buffer are fewer where a row is large (big logits), to bound the pool's memory.
const MAX_STAGING_BYTES: u64 = 16 << 20;
/// Most staging buffers: enough for one per log point in flight with `MAX_AHEAD` steps.
const MAX_STAGING: usize = 8;

type MapResult = Arc<Mutex<Option<Result<(), wgpu::BufferAsyncError>>>>;

/// Where one captured tensor lives on the device.
struct Source {
    buffer: wgpu::Buffer,
    offset: u64,
    bytes: u64,
}

/// What a capture copies and how rows are laid out (the tensors one after another).
struct Layout {
    tensors: Vec<TensorId>,
    sources: Vec<Source>,
    row_bytes: u64,
    rows: u64,
}

enum Use {
    Free,
    /// Takes the copies of the captures `first..first + rows`.
    Filling,
    /// `map_async` was called; its callback fills this.
    Mapping(MapResult),
}

struct Staging {
    buffer: wgpu::Buffer,
    first: u64,
    rows: u64,
    /// The submission of its last row's copy: waiting for it frees the buffer.
    last_copy: Option<wgpu::SubmissionIndex>,
    state: Use,
}

/// The readback state of one `GpuExec`.
#[derive(Default)]
pub(super) struct Readback {
    layout: Option<Layout>,
    pool: Vec<Staging>,
    filling: Option<usize>,
    /// Pool indices being mapped, oldest rows first.
    mapping: VecDeque<usize>,
    /// Rows read from mapped buffers and not yet handed out.
    ready: VecDeque<Captured>,
    next_seq: u64,
    /// (seq, submission) of the last `MAX_AHEAD + 1` captures' copies.
    recent: VecDeque<(u64, wgpu::SubmissionIndex)>,
    /// Captures whose copy the device has finished (`on_submitted_work_done`).
    done: Arc<AtomicU64>,
    waits: AtomicU64,
    throttles: u64,
}

impl Readback {
    /// Counts one wait of the host for data from the device (see `GpuExec::blocking_waits`).
    pub(super) fn count_wait(&self) {
        self.waits.fetch_add(1, Ordering::Relaxed);
    }

    fn busy(&self) -> bool {
        self.filling.is_some() || !self.mapping.is_empty() || !self.ready.is_empty()
    }

    /// A free staging buffer to fill: from the pool, a new one while the pool is small, or
    /// the oldest being read once it has been.
    fn take_buffer(&mut self, gpu: &Gpu, layout_bytes: u64) -> Result<usize, GpuError> {
        if let Some(i) = self.pool.iter().position(|s| matches!(s.state, Use::Free)) {
            return Ok(i);
        }
        if self.pool.len() < MAX_STAGING {
            self.pool.push(Staging {
                buffer: gpu.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("captures"),
                    size: layout_bytes,
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                }),
                first: 0,
                rows: 0,
                last_copy: None,
                state: Use::Free,
            });
            return Ok(self.pool.len() - 1);
        }
        let oldest = *self.mapping.front().ok_or_else(|| {
            GpuError::Runtime("every readback buffer is in use but none is being read".into())
        })?;
        let index = self.pool[oldest].last_copy.clone();
        self.count_wait();
        match index {
            Some(index) => gpu.wait_until(index)?,
            None => gpu.wait()?,
        }
        self.collect()?;
        match self.pool[oldest].state {
            Use::Free => Ok(oldest),
            _ => Err(GpuError::Runtime(
                "the device finished a readback copy but its buffer never mapped".into(),
            )),
        }
    }

    /// Queues the copy of the layout's tensors into the next row.
    pub(super) fn capture(&mut self, gpu: &Gpu) -> Result<(), GpuError> {
        let (row_bytes, rows) = match &self.layout {
            Some(l) => (l.row_bytes, l.rows),
            None => return Err(GpuError::Plan("capture before its tensors are set".into())),
        };
        let i = match self.filling {
            Some(i) => i,
            None => {
                let i = self.take_buffer(gpu, row_bytes * rows)?;
                let s = &mut self.pool[i];
                (s.first, s.rows, s.state) = (self.next_seq, 0, Use::Filling);
                self.filling = Some(i);
                i
            }
        };
        let layout = self.layout.as_ref().expect("checked above");
        let s = &mut self.pool[i];
        let mut encoder = gpu
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("capture"),
            });
        let mut at = s.rows * row_bytes;
        for src in layout.sources.iter().filter(|src| src.bytes > 0) {
            encoder.copy_buffer_to_buffer(&src.buffer, src.offset, &s.buffer, at, src.bytes);
            at += src.bytes;
        }
        let index = gpu.submit(encoder.finish());
        let (seq, done) = (self.next_seq, self.done.clone());
        gpu.queue.on_submitted_work_done(move || {
            done.fetch_max(seq + 1, Ordering::Relaxed);
        });
        s.rows += 1;
        s.last_copy = Some(index.clone());
        self.next_seq += 1;
        if s.rows == rows {
            self.flush();
        }
        self.recent.push_back((seq, index));
        if self.recent.len() as u64 > MAX_AHEAD + 1 {
            self.recent.pop_front();
        }
        self.throttle(gpu)?;
        gpu.check()
    }

    /// Waits for the capture `MAX_AHEAD` back if the device still owes it.
    fn throttle(&mut self, gpu: &Gpu) -> Result<(), GpuError> {
        let owed = |r: &Readback| r.next_seq - r.done.load(Ordering::Relaxed);
        if owed(self) <= MAX_AHEAD {
            return Ok(());
        }
        gpu.poll()?;
        if owed(self) <= MAX_AHEAD {
            return Ok(());
        }
        let Some((_, index)) = self.recent.front().cloned() else {
            return Ok(());
        };
        self.throttles += 1;
        gpu.wait_until(index)
    }

    /// Maps the buffer being filled, if any: its rows arrive without anyone waiting.
    pub(super) fn flush(&mut self) {
        let Some(i) = self.filling.take() else { return };
        let row_bytes = self.layout.as_ref().map_or(0, |l| l.row_bytes);
        let s = &mut self.pool[i];
        let result: MapResult = Arc::default();
        let sink = result.clone();
        s.buffer
            .map_async(wgpu::MapMode::Read, 0..s.rows * row_bytes, move |r| {
                *sink.lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
            });
        s.state = Use::Mapping(result);
        self.mapping.push_back(i);
    }

    /// Moves the rows of every buffer whose mapping completed, in order, into `ready`.
    fn collect(&mut self) -> Result<(), GpuError> {
        let Some(layout) = &self.layout else {
            return Ok(());
        };
        while let Some(&i) = self.mapping.front() {
            let s = &mut self.pool[i];
            let Use::Mapping(result) = &s.state else {
                return Err(GpuError::Runtime(
                    "a readback buffer lost its mapping".into(),
                ));
            };
            let steps = format!("captured tensors {}..{}", s.first, s.first + s.rows);
            match result.lock().unwrap_or_else(|p| p.into_inner()).take() {
                None => return Ok(()),
                Some(Err(e)) => {
                    return Err(GpuError::Runtime(format!(
                        "reading back the {steps} failed: {e}"
                    )));
                }
                Some(Ok(())) => {}
            }
            let bytes = s.rows * layout.row_bytes;
            let view = s
                .buffer
                .get_mapped_range(0..bytes)
                .map_err(|e| GpuError::Runtime(format!("reading back {steps}: {e}")))?;
            let floats: Vec<f32> = view
                .chunks_exact(4)
                .map(|b| f32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            drop(view);
            s.buffer.unmap();
            let mut at = 0;
            for r in 0..s.rows {
                let values = layout
                    .sources
                    .iter()
                    .map(|src| {
                        let n = (src.bytes / 4) as usize;
                        at += n;
                        floats[at - n..at].to_vec()
                    })
                    .collect();
                self.ready.push_back(Captured {
                    seq: s.first + r,
                    values,
                });
            }
            (s.rows, s.last_copy, s.state) = (0, None, Use::Free);
            self.mapping.pop_front();
        }
        Ok(())
    }
}

impl Readback {
    /// Whether the captures already copy exactly `ts`.
    pub(super) fn copies(&self, ts: &[TensorId]) -> bool {
        self.layout.as_ref().is_some_and(|l| l.tensors == ts)
    }

    /// Sets the tensors captures copy: (buffer, byte offset, byte length) of each of `ts`. A
    /// different set needs a drain first.
    pub(super) fn set_tensors(
        &mut self,
        ts: &[TensorId],
        sources: Vec<(wgpu::Buffer, u64, u64)>,
    ) -> Result<(), GpuError> {
        if self.busy() {
            return Err(GpuError::Plan(
                "capture: a different set of tensors while captures are pending; drain them first"
                    .into(),
            ));
        }
        let sources: Vec<Source> = sources
            .into_iter()
            .map(|(buffer, offset, bytes)| Source {
                buffer,
                offset,
                bytes,
            })
            .collect();
        let row_bytes = sources.iter().map(|s| s.bytes).sum::<u64>().max(4);
        let rows = (MAX_STAGING_BYTES / row_bytes).clamp(1, MAX_ROWS);
        self.pool.clear();
        self.layout = Some(Layout {
            tensors: ts.to_vec(),
            sources,
            row_bytes,
            rows,
        });
        Ok(())
    }

    /// The captures whose values have arrived, oldest first. Never waits.
    pub(super) fn poll(&mut self, gpu: &Gpu) -> Result<Vec<Captured>, GpuError> {
        gpu.poll()?;
        self.collect()?;
        Ok(self.ready.drain(..).collect())
    }

    /// Every capture not yet returned, oldest first: reads back the partial buffer too and
    /// waits for the device (one wait, counted, when anything is outstanding).
    pub(super) fn drain(&mut self, gpu: &Gpu) -> Result<Vec<Captured>, GpuError> {
        self.flush();
        if !self.mapping.is_empty() {
            self.count_wait();
            gpu.wait()?;
            self.collect()?;
            if !self.mapping.is_empty() {
                return Err(GpuError::Runtime(
                    "the device went idle but a readback never completed".into(),
                ));
            }
        }
        Ok(self.ready.drain(..).collect())
    }

    /// Waits of the host for data (`GpuExec::blocking_waits`).
    pub(super) fn waits(&self) -> u64 {
        self.waits.load(Ordering::Relaxed)
    }

    /// Captures that waited for the step `MAX_AHEAD` back (`GpuExec::throttle_waits`).
    pub(super) fn throttles(&self) -> u64 {
        self.throttles
    }
}
