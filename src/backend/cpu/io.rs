//! What one launch sees on the CPU: its input and output buffers, their types, and the step's
//! runtime scalars. The executor builds it from arena ranges the plan proved disjoint; the only
//! aliasing allowed is an in-place elementwise launch, which goes through [`Io::map`].

use std::marker::PhantomData;

use rayon::prelude::*;

use super::Real;
use crate::ops::TensorType;

/// Runtime scalars of one step (uniforms on the GPU): fed to the plan, never baked into it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepCtx {
    /// Learning rate of this step (the schedule's value).
    pub lr: f64,
    /// Optimizer step count, 1 on the first step (Adam's bias correction, SGD's first momentum).
    pub step: u64,
    /// The run's seed; with `step` it keys every random stream (dropout masks).
    pub seed: u64,
}

impl Default for StepCtx {
    fn default() -> StepCtx {
        StepCtx {
            lr: 0.0,
            step: 1,
            seed: 0,
        }
    }
}

pub struct Io<'a, T> {
    ins: Vec<(*const T, usize)>,
    outs: Vec<(*mut T, usize)>,
    /// True when an output may share memory with an input (an in-place launch).
    aliased: bool,
    pub in_types: Vec<&'a TensorType>,
    pub out_types: &'a [TensorType],
    pub ctx: StepCtx,
    _borrow: PhantomData<&'a mut [T]>,
}

// Io holds raw pointers only so that an in-place launch can be expressed; the buffers behind
// them are plain `[T]` owned by the executor for the launch's duration.
unsafe impl<T: Send> Send for Io<'_, T> {}

impl<'a, T: Real> Io<'a, T> {
    /// A launch over separately borrowed buffers (the interpreter, tests).
    pub fn new(
        ins: Vec<&'a [T]>,
        outs: Vec<&'a mut [T]>,
        in_types: Vec<&'a TensorType>,
        out_types: &'a [TensorType],
        ctx: StepCtx,
    ) -> Io<'a, T> {
        Io {
            ins: ins.into_iter().map(|s| (s.as_ptr(), s.len())).collect(),
            outs: outs
                .into_iter()
                .map(|s| (s.as_mut_ptr(), s.len()))
                .collect(),
            aliased: false,
            in_types,
            out_types,
            ctx,
            _borrow: PhantomData,
        }
    }

    /// A launch over raw ranges of the executor's memory.
    ///
    /// # Safety
    /// Every range is valid for the lifetime `'a` and no other reference to it exists while the
    /// `Io` lives. Output ranges are disjoint from each other and from the inputs, except when
    /// `aliased` is set, in which case the op must only use [`Io::map`].
    pub(crate) unsafe fn from_raw(
        ins: Vec<(*const T, usize)>,
        outs: Vec<(*mut T, usize)>,
        aliased: bool,
        in_types: Vec<&'a TensorType>,
        out_types: &'a [TensorType],
        ctx: StepCtx,
    ) -> Io<'a, T> {
        Io {
            ins,
            outs,
            aliased,
            in_types,
            out_types,
            ctx,
            _borrow: PhantomData,
        }
    }

    pub fn in_shape(&self, i: usize) -> &'a [usize] {
        &self.in_types[i].shape
    }
    pub fn out_shape(&self, j: usize) -> &'a [usize] {
        &self.out_types[j].shape
    }
    pub fn inputs(&self) -> usize {
        self.ins.len()
    }

    /// All inputs as shared slices and all outputs as exclusive ones.
    pub fn split(&mut self) -> (Vec<&[T]>, Vec<&mut [T]>) {
        assert!(
            !self.aliased,
            "an in-place launch must go through Io::map (planner bug)"
        );
        // SAFETY: `new` took the slices from disjoint borrows; `from_raw`'s contract makes
        // the ranges disjoint when not aliased, and `&mut self` keeps this the only view.
        unsafe {
            let ins = self
                .ins
                .iter()
                .map(|&(p, n)| std::slice::from_raw_parts(p, n))
                .collect();
            let outs = self
                .outs
                .iter()
                .map(|&(p, n)| std::slice::from_raw_parts_mut(p, n))
                .collect();
            (ins, outs)
        }
    }

    /// Elementwise: every output element `k` is `f(inputs at k)`, each input broadcast (numpy
    /// rules) to output 0's shape. Reads an element's inputs before writing its outputs, so an
    /// output may overwrite an input of the same shape. Runs on every core for large tensors.
    pub fn map<const I: usize, const O: usize>(&mut self, f: impl Fn([T; I]) -> [T; O] + Sync) {
        assert_eq!(self.ins.len(), I, "map arity");
        assert_eq!(self.outs.len(), O, "map outputs");
        let shape = &self.out_types[0].shape;
        let n: usize = shape.iter().product();
        for (j, &(_, len)) in self.outs.iter().enumerate() {
            assert_eq!(len, n, "map output {j} has {len} elements, expected {n}");
        }
        let index: Vec<Broadcast> = self
            .ins
            .iter()
            .zip(&self.in_types)
            .map(|(&(_, len), ty)| Broadcast::new(&ty.shape, shape, len))
            .collect();
        let ins: Vec<SendPtr<T>> = self
            .ins
            .iter()
            .map(|&(p, _)| SendPtr(p as *mut T))
            .collect();
        let outs: Vec<SendPtr<T>> = self.outs.iter().map(|&(p, _)| SendPtr(p)).collect();
        let chunk = 1 << 14;
        let run = |start: usize| {
            let end = (start + chunk).min(n);
            let mut cursors: Vec<Cursor> = index.iter().map(|b| b.cursor(start)).collect();
            for k in start..end {
                let mut x = [T::ZERO; I];
                for (i, c) in cursors.iter_mut().enumerate() {
                    // SAFETY: Broadcast::new checked every offset it yields is < the input's
                    // length; reads go through raw pointers, so aliasing an output is sound.
                    x[i] = unsafe { *ins[i].0.add(c.offset) };
                    c.advance();
                }
                let y = f(x);
                for (j, v) in y.into_iter().enumerate() {
                    // SAFETY: k < n, the length of every output (checked above).
                    unsafe { *outs[j].0.add(k) = v };
                }
            }
        };
        if n > chunk {
            (0..n.div_ceil(chunk))
                .into_par_iter()
                .for_each(|c| run(c * chunk));
        } else if n > 0 {
            run(0);
        }
    }
}

#[derive(Clone, Copy)]
struct SendPtr<T>(*mut T);
// SAFETY: parallel chunks of `map` touch disjoint output elements and only read inputs.
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}

/// Maps an index of the output to an offset in a broadcast input.
struct Broadcast {
    /// Output dims and the input's stride along each (0 where broadcast).
    dims: Vec<usize>,
    strides: Vec<usize>,
    kind: BroadcastKind,
}

#[derive(Clone, Copy, PartialEq)]
enum BroadcastKind {
    Same,
    Scalar,
    Strided,
}

struct Cursor<'b> {
    b: &'b Broadcast,
    offset: usize,
    coord: Vec<usize>,
}

impl Broadcast {
    fn new(input: &[usize], out: &[usize], len: usize) -> Broadcast {
        let numel: usize = input.iter().product();
        let total: usize = out.iter().product();
        assert_eq!(numel, len, "input buffer does not match its type");
        if numel == total
            && input
                .iter()
                .filter(|&&d| d != 1)
                .eq(out.iter().filter(|&&d| d != 1))
        {
            return Broadcast {
                dims: vec![],
                strides: vec![],
                kind: BroadcastKind::Same,
            };
        }
        if numel == 1 {
            return Broadcast {
                dims: vec![],
                strides: vec![],
                kind: BroadcastKind::Scalar,
            };
        }
        assert!(input.len() <= out.len(), "broadcast rank");
        let pad = out.len() - input.len();
        let mut strides = vec![0; out.len()];
        let mut s = 1;
        for d in (0..input.len()).rev() {
            let od = out[pad + d];
            assert!(input[d] == od || input[d] == 1, "broadcast shape");
            strides[pad + d] = if input[d] == 1 { 0 } else { s };
            s *= input[d];
        }
        Broadcast {
            dims: out.to_vec(),
            strides,
            kind: BroadcastKind::Strided,
        }
    }

    fn cursor(&self, start: usize) -> Cursor<'_> {
        match self.kind {
            BroadcastKind::Same => Cursor {
                b: self,
                offset: start,
                coord: vec![],
            },
            BroadcastKind::Scalar => Cursor {
                b: self,
                offset: 0,
                coord: vec![],
            },
            BroadcastKind::Strided => {
                let mut coord = vec![0; self.dims.len()];
                let mut rest = start;
                let mut offset = 0;
                for d in (0..self.dims.len()).rev() {
                    coord[d] = rest % self.dims[d];
                    rest /= self.dims[d];
                    offset += coord[d] * self.strides[d];
                }
                Cursor {
                    b: self,
                    offset,
                    coord,
                }
            }
        }
    }
}

impl Cursor<'_> {
    #[inline]
    fn advance(&mut self) {
        match self.b.kind {
            BroadcastKind::Same => self.offset += 1,
            BroadcastKind::Scalar => {}
            BroadcastKind::Strided => {
                for d in (0..self.coord.len()).rev() {
                    self.coord[d] += 1;
                    self.offset += self.b.strides[d];
                    if self.coord[d] < self.b.dims[d] {
                        return;
                    }
                    self.offset -= self.coord[d] * self.b.strides[d];
                    self.coord[d] = 0;
                }
            }
        }
    }
}
