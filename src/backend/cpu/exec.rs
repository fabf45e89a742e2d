//! The planned CPU executor: the plan's regions allocated once, then each step runs the
//! launches in order over views of them. Nothing is allocated or decided per step (kernels
//! aside that still take scratch space).

use std::collections::VecDeque;

use super::{Io, Real, StepCtx};
use crate::backend::Captured;
use crate::graph::TensorId;
use crate::ops::OpKind;
use crate::schedule::{Plan, Region, Slot};

const REGIONS: [Region; 4] = [Region::State, Region::Grads, Region::Inputs, Region::Arena];

fn region_index(r: Region) -> usize {
    REGIONS.iter().position(|&x| x == r).expect("a region")
}

pub struct CpuExec<T> {
    pub plan: Plan,
    memory: [Vec<T>; 4],
    /// Per launch: does an output share memory with an input (in-place, updates)?
    aliased: Vec<bool>,
    /// The State region as `save_state` left it (`train.on_nonfinite = "skip_step"`).
    backup: Vec<T>,
    /// What `capture` copied and `take_captures` has not yet handed out.
    captured: VecDeque<Captured>,
    next_capture: u64,
}

impl<T: Real> CpuExec<T> {
    /// Allocates the plan's memory and initialises parameters from `seed` (graph::init).
    pub fn new(plan: Plan, seed: u64) -> Result<CpuExec<T>, String> {
        let memory = REGIONS.map(|r| vec![T::ZERO; plan.sizes.get(&r).copied().unwrap_or(0)]);
        let mut aliased = Vec::with_capacity(plan.launches.len());
        for l in &plan.launches {
            for s in l.inputs.iter().chain(&l.outputs) {
                if s.offset + s.len > memory[region_index(s.region)].len() {
                    return Err(format!("slot {s:?} lies outside its region (planner bug)"));
                }
            }
            for (j, a) in l.outputs.iter().enumerate() {
                if l.outputs[..j].iter().any(|b| a.overlaps(b)) {
                    return Err(format!(
                        "two outputs of one launch overlap: {a:?} (planner bug)"
                    ));
                }
            }
            aliased.push(
                l.outputs
                    .iter()
                    .any(|o| l.inputs.iter().any(|i| i.overlaps(o))),
            );
        }
        let mut exec = CpuExec {
            plan,
            memory,
            aliased,
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

    /// Runs every launch of the plan once.
    pub fn step(&mut self, ctx: StepCtx) {
        let bases: Vec<*mut T> = self.memory.iter_mut().map(|m| m.as_mut_ptr()).collect();
        let g = &self.plan.graph;
        for (l, &aliased) in self.plan.launches.iter().zip(&self.aliased) {
            let node = &g.dag[l.node];
            let ptr = |s: &Slot| {
                // SAFETY: `new` checked every slot lies inside its region's buffer.
                unsafe { bases[region_index(s.region)].add(s.offset) }
            };
            let ins = l
                .inputs
                .iter()
                .map(|s| (ptr(s) as *const T, s.len))
                .collect();
            let outs = l.outputs.iter().map(|s| (ptr(s), s.len)).collect();
            let in_types = node.inputs.iter().map(|&t| g.ty(t)).collect();
            // SAFETY: the buffers live in `self.memory`, which `&mut self` borrows for the
            // whole step and which is never resized; the planner gives a launch's outputs
            // ranges disjoint from each other and, unless `aliased`, from its inputs.
            let mut io = unsafe { Io::from_raw(ins, outs, aliased, in_types, &node.outputs, ctx) };
            match &node.op {
                OpKind::Parameter(_) | OpKind::Input(_) => {}
                op => op.eval(&mut io),
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
