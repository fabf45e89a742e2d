//! The planned CPU executor: the plan's regions allocated once, then each step runs the launches
//! in order over views of them. Everything a launch needs (its buffers' ranges, its input types,
//! its workspace) is laid out in `CpuExec::new`, so a step allocates nothing
//! (tests/cpu_no_alloc.rs).

use std::collections::VecDeque;
use std::ops::Range;

use crate::backend::{Captured, PrepareError};
use crate::config::values::human;
use crate::host_memory::{self, MemoryError};
use crate::kernel::cpu::io::Raw;
use crate::kernel::cpu::{Io, Real};
use crate::ops::OpKind;
use crate::schedule::{Plan, Region, Slot};
use crate::tensor::StepCtx;
use crate::tensor::TensorId;
use crate::tensor::TensorType;

const REGIONS: [Region; 4] = [Region::State, Region::Grads, Region::Inputs, Region::Arena];

fn region_index(r: Region) -> usize {
    REGIONS.iter().position(|&x| x == r).expect("a region")
}

/// One launch as `new` laid it out: its inputs' and outputs' entries in `CpuExec::slots`, its
/// input types in `CpuExec::types`.
struct Prepared {
    ins: Range<usize>,
    outs: Range<usize>,
    types: Range<usize>,
    /// Does an output share memory with an input (in-place, updates)?
    aliased: bool,
    /// Parameters and inputs are fed, not evaluated.
    skip: bool,
}

/// The raw ranges of every launch's buffers, refreshed at the start of each step from
/// `CpuExec::slots` (the pointers of `memory`, which is never resized).
struct Ranges<T>(Vec<Raw<T>>);
// SAFETY: the pointers are only dereferenced inside `CpuExec::step`, under `&mut CpuExec`, which
// owns the memory they point into.
unsafe impl<T: Send> Send for Ranges<T> {}
unsafe impl<T: Sync> Sync for Ranges<T> {}

pub struct CpuExec<T> {
    pub plan: Plan,
    memory: [Vec<T>; 4],
    launches: Vec<Prepared>,
    /// (region index, offset, length) of every launch's inputs then outputs, in launch order.
    slots: Vec<(usize, usize, usize)>,
    ranges: Ranges<T>,
    /// Every launch's input types, in launch order.
    types: Vec<TensorType>,
    /// Workspace shared by the launches (they run one at a time), sized in `new` to the
    /// largest `Eval::scratch` of any launch.
    scratch: Vec<T>,
    /// The State region as `save_state` left it (`train.on_nonfinite = "skip_step"`).
    backup: Vec<T>,
    /// What `capture` copied and `take_captures` has not yet handed out.
    captured: VecDeque<Captured>,
    next_capture: u64,
}

impl<T: Real> CpuExec<T> {
    /// Allocates the plan's memory and initialises parameters from `seed` (graph::init). A
    /// plan larger than the host memory available is refused before anything is allocated
    /// (`PrepareError::DoesNotFit`, with the numbers and what to change).
    pub fn new(plan: Plan, seed: u64) -> Result<CpuExec<T>, PrepareError> {
        let sizes = REGIONS.map(|r| plan.sizes.get(&r).copied().unwrap_or(0));
        let bug = PrepareError::Failed;
        let threads = rayon::current_num_threads();
        let (mut launches, mut slots, mut types) = (Vec::new(), Vec::new(), Vec::new());
        let mut scratch = 0;
        let g = &plan.graph;
        for l in &plan.launches {
            for s in l.inputs.iter().chain(&l.outputs) {
                if s.offset + s.len > sizes[region_index(s.region)] {
                    return Err(bug(format!(
                        "slot {s:?} lies outside its region (planner bug)"
                    )));
                }
            }
            for (j, a) in l.outputs.iter().enumerate() {
                if l.outputs[..j].iter().any(|b| a.overlaps(b)) {
                    return Err(bug(format!(
                        "two outputs of one launch overlap: {a:?} (planner bug)"
                    )));
                }
            }
            let node = &g.dag[l.node];
            let in_types: Vec<&TensorType> = node.inputs.iter().map(|&t| g.ty(t)).collect();
            let at = (slots.len(), types.len());
            slots.extend(
                l.inputs
                    .iter()
                    .chain(&l.outputs)
                    .map(|s| (region_index(s.region), s.offset, s.len)),
            );
            types.extend(in_types.iter().map(|&t| t.clone()));
            let skip = matches!(node.op, OpKind::Parameter(_) | OpKind::Input(_));
            if !skip {
                scratch = scratch.max(node.op.scratch(&in_types, &node.outputs, threads));
            }
            launches.push(Prepared {
                ins: at.0..at.0 + l.inputs.len(),
                outs: at.0 + l.inputs.len()..slots.len(),
                types: at.1..types.len(),
                aliased: l
                    .outputs
                    .iter()
                    .any(|o| l.inputs.iter().any(|i| i.overlaps(o))),
                skip,
            });
        }
        let ranges = Ranges(vec![(std::ptr::null_mut(), 0); slots.len()]);
        let elements = sizes.iter().sum::<usize>().saturating_add(scratch);
        let bytes = (elements as u64).saturating_mul(std::mem::size_of::<T>() as u64);
        let short = |e| refusal::<T>(&plan, &sizes, scratch, e);
        host_memory::check(bytes).map_err(short)?;
        let mut memory: [Vec<T>; 4] = Default::default();
        for (m, &len) in memory.iter_mut().zip(&sizes) {
            *m = host_memory::try_filled(len, T::ZERO).map_err(|e| short(MemoryError::Short(e)))?;
        }
        let scratch =
            host_memory::try_filled(scratch, T::ZERO).map_err(|e| short(MemoryError::Short(e)))?;
        let mut exec = CpuExec {
            plan,
            memory,
            launches,
            slots,
            ranges,
            types,
            scratch,
            backup: Vec::new(),
            captured: VecDeque::new(),
            next_capture: 0,
        };
        for i in 0..exec.plan.graph.params.len() {
            let p = &exec.plan.graph.params[i];
            let values: Vec<T> = p
                .init
                .values(seed, &p.name, p.ty.numel())
                .into_iter()
                .map(|v| T::of(v as f64))
                .collect();
            exec.set_param(i, &values);
        }
        Ok(exec)
    }

    fn slot(&self, s: Slot) -> &[T] {
        &self.memory[region_index(s.region)][s.offset..s.offset + s.len]
    }
    fn slot_mut(&mut self, s: Slot) -> &mut [T] {
        &mut self.memory[region_index(s.region)][s.offset..s.offset + s.len]
    }

    pub fn param(&self, i: usize) -> &[T] {
        self.slot(self.plan.params[i])
    }
    pub fn set_param(&mut self, i: usize, values: &[T]) {
        self.slot_mut(self.plan.params[i]).copy_from_slice(values);
    }
    /// A tensor that outlives the step: the loss, the logits, a gradient, an input.
    pub fn read(&self, t: TensorId) -> &[T] {
        self.slot(self.plan.slots[&t])
    }
    /// Writes the batch: `values` for the input tensor `t` (features or labels).
    pub fn feed(&mut self, t: TensorId, values: &[T]) -> Result<(), String> {
        let s = self.plan.slots[&t];
        if values.len() != s.len {
            return Err(format!(
                "fed {} values for {} elements",
                values.len(),
                s.len
            ));
        }
        self.slot_mut(s).copy_from_slice(values);
        Ok(())
    }

    /// Copies every parameter and state tensor aside (the buffer is reused step after step).
    pub fn save_state(&mut self) {
        let state = &self.memory[region_index(Region::State)];
        self.backup.clear();
        self.backup.extend_from_slice(state);
    }
    /// Puts back what `save_state` copied: the step since then never happened.
    pub fn restore_state(&mut self) {
        let state = &mut self.memory[region_index(Region::State)];
        if self.backup.len() == state.len() {
            state.copy_from_slice(&self.backup);
        }
    }

    /// Runs every launch of the plan once. Allocates nothing on rayon's threads; see
    /// [`on_pool`] for the calling thread.
    pub fn step(&mut self, ctx: StepCtx) {
        on_pool(|| self.run(ctx, None));
    }

    /// A step that reports each launch's wall time in seconds, by launch index (profiling:
    /// benches/cpu_ops.rs).
    pub fn step_timed(&mut self, ctx: StepCtx, mut report: impl FnMut(usize, f64) + Send) {
        on_pool(|| self.run(ctx, Some(&mut report)));
    }

    fn run(&mut self, ctx: StepCtx, mut report: Option<&mut (dyn FnMut(usize, f64) + Send)>) {
        let bases = self.memory.each_mut().map(|m| m.as_mut_ptr());
        for (r, &(region, offset, len)) in self.ranges.0.iter_mut().zip(&self.slots) {
            // SAFETY: `new` checked every slot lies inside its region's buffer.
            *r = (unsafe { bases[region].add(offset) }, len);
        }
        let g = &self.plan.graph;
        for (i, (l, p)) in self.plan.launches.iter().zip(&self.launches).enumerate() {
            if p.skip {
                continue;
            }
            let t0 = report.is_some().then(std::time::Instant::now);
            let node = &g.dag[l.node];
            // SAFETY: the buffers live in `self.memory`, which `&mut self` borrows for the
            // whole step and which is never resized; the planner gives a launch's outputs
            // ranges disjoint from each other and, unless `aliased`, from its inputs; the
            // scratch is the executor's own.
            let mut io = unsafe {
                Io::from_raw(
                    &self.ranges.0[p.ins.clone()],
                    &self.ranges.0[p.outs.clone()],
                    p.aliased,
                    &self.types[p.types.clone()],
                    &node.outputs,
                    ctx,
                    &mut self.scratch,
                )
            };
            node.op.eval(&mut io);
            if let (Some(report), Some(t0)) = (report.as_mut(), t0) {
                report(i, t0.elapsed().as_secs_f64());
            }
        }
    }
}

impl CpuExec<f32> {
    /// Copies `ts` now (a CPU step is finished when `step` returns); `take_captures` returns
    /// them, so the training loop drives both backends the same way.
    pub fn capture(&mut self, ts: &[TensorId]) -> Result<(), String> {
        let values = ts
            .iter()
            .map(|t| match self.plan.slots.get(t) {
                Some(&s) => Ok(self.slot(s).to_vec()),
                None => Err(format!("tensor {t:?} is not kept by the plan")),
            })
            .collect::<Result<_, _>>()?;
        self.captured.push_back(Captured {
            seq: self.next_capture,
            values,
        });
        self.next_capture += 1;
        Ok(())
    }

    /// Every capture not handed out yet, oldest first.
    pub fn take_captures(&mut self) -> Vec<Captured> {
        self.captured.drain(..).collect()
    }
}

/// The error for a plan the host cannot hold: the whole plan per region, what the system has,
/// and what to change (a training plan can also recompute activations).
fn refusal<T>(plan: &Plan, sizes: &[usize; 4], scratch: usize, e: MemoryError) -> PrepareError {
    let shortage = match e {
        MemoryError::Short(s) => s,
        MemoryError::Setting(s) => return PrepareError::DoesNotFit(s),
    };
    let bytes = |n: usize| (n as u64).saturating_mul(std::mem::size_of::<T>() as u64);
    let mut parts: Vec<String> = REGIONS
        .iter()
        .zip(sizes)
        .map(|(r, &n)| format!("{r:?} {} ({})", human(bytes(n)), holds(*r)))
        .collect();
    parts.push(format!("workspace {}", human(bytes(scratch))));
    let training = !plan.graph.grads.is_empty();
    let what = if training {
        "training step"
    } else {
        "evaluation model"
    };
    let fix = if training {
        // The arena is what recomputation shrinks: what is left of the memory after the rest.
        let rest = bytes(sizes.iter().sum::<usize>() - sizes[3] + scratch);
        let budget = match shortage
            .available
            .as_ref()
            .map(|a| a.bytes.saturating_sub(rest))
        {
            Some(b) if b >= 1 << 20 => format!(", or {{ memory_budget = \"{}\" }}", size_text(b)),
            _ => String::new(),
        };
        format!(
            "lower data.batch_size (now {}), or set train.checkpointing (\"sqrt\" or \"blocks\"{budget}) to recompute activations instead of keeping them; `trainer plan` shows where the memory goes",
            plan.graph.batch
        )
    } else {
        format!(
            "lower data.eval_batch_size (now {}; it defaults to data.batch_size)",
            plan.graph.batch
        )
    };
    PrepareError::DoesNotFit(format!(
        "not enough host memory for the {what} at batch {}: {shortage}\nthe plan: {}\nto fit: {fix}",
        plan.graph.batch,
        parts.join(", ")
    ))
}

fn holds(r: Region) -> &'static str {
    match r {
        Region::State => "parameters, statistics, optimizer state",
        Region::Grads => "gradients",
        Region::Inputs => "the batch",
        Region::Arena => "activations",
    }
}

/// A size a config accepts, rounded down: "18.3GiB", "700MiB".
fn size_text(bytes: u64) -> String {
    const GIB: u64 = 1 << 30;
    if bytes >= GIB {
        format!(
            "{:.1}GiB",
            (bytes as f64 / GIB as f64 * 10.0).floor() / 10.0
        )
    } else {
        format!("{}MiB", bytes >> 20)
    }
}

/// Runs `f` on a thread of rayon's pool: the step's launches then fork and join their parallel
/// loops from inside the pool, rather than each handing a job to the pool from outside and
/// sleeping until it is done. From outside, this hands over one job per step; rayon queues it
/// in a crossbeam `Injector`, which allocates a block of 63 slots every 63 jobs, the only
/// allocation of a step (and none when the caller is already on the pool).
pub fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        f()
    } else {
        rayon::scope(|_| f())
    }
}
