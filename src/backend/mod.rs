//! Backends run a plan: the executors. `unsafe` is allowed only where it is needed (the CPU
//! executor's raw views of planned memory, trusted shader modules, the device's drop), each
//! with a scoped allow and a SAFETY comment.

mod capture;
pub mod cpu;
pub mod gpu;

pub use capture::Captured;

use cpu::CpuExec;
use gpu::{Gpu, GpuExec};

use crate::schedule::Plan;
use crate::tensor::{StepCtx, TensorId};

/// A prepared plan on one backend: what the training loop, `eval` and `predict` drive. Both
/// backends take the same feeds and give the same tensors; only where the memory lives differs.
pub enum Exec<'g> {
    Cpu(Box<CpuExec<f32>>),
    Gpu(Box<GpuExec<'g>>),
}

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

impl From<gpu::GpuError> for PrepareError {
    fn from(e: gpu::GpuError) -> PrepareError {
        match e.exit_code() {
            2 => PrepareError::DoesNotFit(e.to_string()),
            _ => PrepareError::Failed(e.to_string()),
        }
    }
}

impl<'g> Exec<'g> {
    /// Prepares `plan` on the GPU when `gpu` is given, else on the CPU; parameters start from
    /// `seed` (graph::init), identically on both.
    pub fn new(gpu: Option<&'g Gpu>, plan: Plan, seed: u64) -> Result<Exec<'g>, PrepareError> {
        Ok(match gpu {
            Some(gpu) => Exec::Gpu(Box::new(GpuExec::new(gpu, plan, seed)?)),
            None => Exec::Cpu(Box::new(
                CpuExec::new(plan, seed).map_err(PrepareError::Failed)?,
            )),
        })
    }

    pub fn plan(&self) -> &Plan {
        match self {
            Exec::Cpu(e) => &e.plan,
            Exec::Gpu(e) => &e.plan,
        }
    }

    pub fn feed(&mut self, t: TensorId, values: &[f32]) -> Result<(), String> {
        match self {
            Exec::Cpu(e) => e.feed(t, values),
            Exec::Gpu(e) => e.feed(t, values).map_err(|e| e.to_string()),
        }
    }

    /// Runs one step. On the GPU it is queued, not waited for; `read` waits, `capture` does not.
    pub fn step(&mut self, ctx: StepCtx) -> Result<(), String> {
        match self {
            Exec::Cpu(e) => {
                e.step(ctx);
                Ok(())
            }
            Exec::Gpu(e) => e.step(ctx).map_err(|e| e.to_string()),
        }
    }

    /// A tensor that outlives the step (the loss, the logits).
    pub fn read(&self, t: TensorId) -> Result<Vec<f32>, String> {
        match self {
            Exec::Cpu(e) => Ok(e.read(t).to_vec()),
            Exec::Gpu(e) => e.read(t).map_err(|e| e.to_string()),
        }
    }

    /// Several tensors at once (on the GPU, one wait instead of one per tensor).
    pub fn read_many(&self, ts: &[TensorId]) -> Result<Vec<Vec<f32>>, String> {
        match self {
            Exec::Cpu(e) => Ok(ts.iter().map(|&t| e.read(t).to_vec()).collect()),
            Exec::Gpu(e) => e.read_many(ts).map_err(|e| e.to_string()),
        }
    }

    /// Keeps `ts` as the step just run left them, to be returned by `poll_captures` or
    /// `drain_captures`, without waiting for the step: on the GPU a copy into a mapped-later
    /// staging buffer is queued behind the step (gpu/readback.rs); on the CPU the values are
    /// copied at once. The first capture fixes the set of tensors; another set needs a drain
    /// first. A capture may wait for the step a few steps back, so that the host never queues
    /// more than a few steps ahead of the device.
    pub fn capture(&mut self, ts: &[TensorId]) -> Result<(), String> {
        match self {
            Exec::Cpu(e) => e.capture(ts),
            Exec::Gpu(e) => e.capture(ts).map_err(|e| e.to_string()),
        }
    }

    /// Starts reading back the captures queued so far, without waiting (a log point). On the
    /// GPU captures are otherwise read back when a staging buffer is full (at most 64 steps).
    pub fn flush_captures(&mut self) -> Result<(), String> {
        match self {
            Exec::Cpu(_) => Ok(()),
            Exec::Gpu(e) => e.flush_captures().map_err(|e| e.to_string()),
        }
    }

    /// The captures whose values have arrived, oldest first; never waits.
    pub fn poll_captures(&mut self) -> Result<Vec<Captured>, String> {
        match self {
            Exec::Cpu(e) => Ok(e.take_captures()),
            Exec::Gpu(e) => e.poll_captures().map_err(|e| e.to_string()),
        }
    }

    /// Every capture not yet returned, oldest first: waits for the device (before validation,
    /// checkpoints and the end of a run, or to know a step's loss before the next).
    pub fn drain_captures(&mut self) -> Result<Vec<Captured>, String> {
        match self {
            Exec::Cpu(e) => Ok(e.take_captures()),
            Exec::Gpu(e) => e.drain_captures().map_err(|e| e.to_string()),
        }
    }

    /// How many times the host has waited for the device to hand data back (reads, drains);
    /// always 0 on the CPU.
    pub fn blocking_waits(&self) -> u64 {
        match self {
            Exec::Cpu(_) => 0,
            Exec::Gpu(e) => e.blocking_waits(),
        }
    }

    /// Every parameter and state tensor, in `plan().graph.params` order.
    pub fn params(&self) -> Result<Vec<Vec<f32>>, String> {
        match self {
            Exec::Cpu(e) => Ok((0..e.plan.params.len())
                .map(|i| e.param(i).to_vec())
                .collect()),
            Exec::Gpu(e) => e.params().map_err(|e| e.to_string()),
        }
    }

    /// Overwrites parameter `i`; the caller checked the length against the graph's type.
    pub fn set_param(&mut self, i: usize, values: &[f32]) -> Result<(), String> {
        let want = self.plan().params[i].len;
        if values.len() != want {
            let name = &self.plan().graph.params[i].name;
            return Err(format!(
                "{name}: {} values for {want} elements",
                values.len()
            ));
        }
        match self {
            Exec::Cpu(e) => e.set_param(i, values),
            Exec::Gpu(e) => e.set_param(i, values),
        }
        Ok(())
    }

    /// Copies every parameter and state tensor aside (on the device; nothing is read back).
    pub fn save_state(&mut self) -> Result<(), String> {
        match self {
            Exec::Cpu(e) => {
                e.save_state();
                Ok(())
            }
            Exec::Gpu(e) => e.save_state().map_err(|e| e.to_string()),
        }
    }

    /// Undoes the steps since `save_state`: weights, running statistics, optimizer moments.
    pub fn restore_state(&mut self) -> Result<(), String> {
        match self {
            Exec::Cpu(e) => {
                e.restore_state();
                Ok(())
            }
            Exec::Gpu(e) => e.restore_state().map_err(|e| e.to_string()),
        }
    }

    /// "cpu" or "gpu (NVIDIA H100, Vulkan)".
    pub fn device(&self) -> String {
        match self {
            Exec::Cpu(_) => format!("cpu ({} threads)", rayon::current_num_threads()),
            Exec::Gpu(e) => format!("gpu ({}, {})", e.adapter().name, e.adapter().backend),
        }
    }
}
